//! The `MultiModal` pipeline (`mlmf::multimodal::pipeline`) with real encoders on the GPU
//! (lavapipe in CI): text (all-MiniLM-L6-v2), image (MobileNetV2 from the PNG), video
//! (MobileNetV2 over two frames, averaged) and a plugged-in audio encoder (a log-mel averaged over
//! time, standing in for Whisper), joined by attention-gated fusion. Checked against independent
//! values: the text features against sentence-transformers' embeddings in the fixture, the image
//! features through the classifier (f64 on the host) against torchvision's logits, the video
//! features against the f64 mean of the frames' features, the fused output and modality weights
//! against the gate's formula in f64 on the host; and no readback between encoders and fusion
//! on one device ([`mlmf::Gpu::readbacks`]), one per moved feature tensor across two devices of
//! one adapter.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use mlmf::fusion::gate::AttentionGate;
use mlmf::models::bert::BertEmbedder;
use mlmf::models::mobilenet_v2::MobileNetV2;
use mlmf::multimodal::pipeline::{
    Encoder, Fusion, ImageEncoder, Input, Modality, MultiModal, TextEncoder, VideoEncoder,
};
use mlmf::ops::matmul::{self, MatmulOptions};
use mlmf::ops::mel;
use mlmf::{DType, Device, Gpu, ModelFile, Result, SafetensorsWriter, Tensor, TensorSource};

const E: usize = 16;

fn gpu_of(d: &Device) -> &Gpu {
    match d {
        Device::Gpu(g) => g,
        Device::Cpu => panic!("not a GPU"),
    }
}

fn values(file: &ModelFile, key: &str) -> Vec<f32> {
    Device::Cpu.load(file, key).unwrap().to_f32_vec().unwrap()
}

/// A stand-in audio encoder: Whisper's log-mel (80 bands) of 16 kHz samples averaged over its
/// 3000 frames, `[1, 80]`, on its device.
struct MelMean {
    device: Device,
}

impl Encoder for MelMean {
    fn device(&self) -> &Device {
        &self.device
    }

    fn encode(&self, input: &Input) -> Result<Tensor> {
        let Input::Audio {
            samples,
            rate: 16000,
        } = input
        else {
            panic!("MelMean takes 16 kHz audio");
        };
        let m = mel::log_mel(samples, 80, &self.device)?; // [1, 80, 3000]
        let ones = Tensor::from_f32("mean", vec![3000, 1], &[1.0 / 3000.0; 3000])?
            .to_device(&self.device)?;
        matmul::matmul(&m, &ones, MatmulOptions::default())?.reshape(vec![1, 80])
    }
}

/// A gate state dict (no prefix) with projections from `widths` to E, small random weights.
fn gate_file(dir: &Path, widths: &[(&str, usize)]) -> ModelFile {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut seed = 500;
    let mut add = |name: String, dims: Vec<usize>| {
        let n = dims.iter().product();
        seed += 1;
        let v: Vec<u8> = common::random_f32(n, seed)
            .iter()
            .flat_map(|x| (x * 0.05).to_le_bytes())
            .collect();
        tensors.push((name, dims, v));
    };
    for (m, w) in widths {
        add(format!("{m}.weight"), vec![E, *w]);
        add(format!("{m}.bias"), vec![E]);
    }
    add("score.weight".into(), vec![E, E]);
    add("score.bias".into(), vec![E]);
    add("context".into(), vec![E]);
    let mut w = SafetensorsWriter::new(BTreeMap::new());
    for (n, dims, bytes) in &tensors {
        w.add_tensor(n.clone(), DType::F32, dims, TensorSource::Bytes(bytes));
    }
    let path = dir.join("gate.safetensors");
    w.write(&path).unwrap();
    ModelFile::open(path).unwrap()
}

/// The gate's formula in f64: (output [E], modality weights [M]) for one batch row.
fn gate_reference(file: &ModelFile, names: &[&str], x: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
    let linear = |w: &[f32], b: &[f32], x: &[f64]| -> Vec<f64> {
        (0..b.len())
            .map(|o| {
                let row = &w[o * x.len()..(o + 1) * x.len()];
                row.iter()
                    .zip(x)
                    .map(|(w, x)| f64::from(*w) * x)
                    .sum::<f64>()
                    + f64::from(b[o])
            })
            .collect()
    };
    let (sw, sb, ctx) = (
        values(file, "score.weight"),
        values(file, "score.bias"),
        values(file, "context"),
    );
    let h: Vec<Vec<f64>> = names
        .iter()
        .zip(x)
        .map(|(m, x)| {
            let x: Vec<f64> = x.iter().map(|v| f64::from(*v)).collect();
            linear(
                &values(file, &format!("{m}.weight")),
                &values(file, &format!("{m}.bias")),
                &x,
            )
        })
        .collect();
    let s: Vec<f64> = h
        .iter()
        .map(|h| {
            linear(&sw, &sb, h)
                .iter()
                .zip(&ctx)
                .map(|(v, c)| v.tanh() * f64::from(*c))
                .sum()
        })
        .collect();
    let max = s.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
    let a: Vec<f64> = e.iter().map(|v| v / e.iter().sum::<f64>()).collect();
    let out = (0..E)
        .map(|i| h.iter().zip(&a).map(|(h, a)| a * h[i]).sum())
        .collect();
    (out, a)
}

fn assert_close(what: &str, got: &[f32], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((f64::from(*g) - w).abs()));
    eprintln!("{what}: max abs error {err:e}");
    assert!(
        err <= rel * scale,
        "{what}: max abs error {err:e} > {:e}",
        rel * scale
    );
}

#[test]
fn four_modalities_fused_on_one_gpu_without_readback() {
    let gpu = Device::gpu().expect("a GPU adapter (lavapipe in CI)");
    let dir = tempfile::tempdir().unwrap();
    let names = ["text", "image", "audio", "video"];
    let file = gate_file(
        dir.path(),
        &[
            ("text", 384),
            ("image", 1280),
            ("audio", 80),
            ("video", 1280),
        ],
    );
    let gate = AttentionGate::load_modalities(&file, "", &names, &gpu).unwrap();
    let bert = BertEmbedder::open(common::models_dir().join("all-MiniLM-L6-v2"), &gpu).unwrap();
    let pth = ModelFile::open(common::model(common::MOBILENET)).unwrap();
    let pipeline = MultiModal::new(Fusion::AttentionGate(gate), gpu.clone())
        .encoder(Modality::Text, TextEncoder::new(bert))
        .encoder(
            Modality::Image,
            ImageEncoder::new(MobileNetV2::load(&pth, &gpu).unwrap()),
        )
        .encoder(
            Modality::Audio,
            MelMean {
                device: gpu.clone(),
            },
        )
        .encoder(
            Modality::Video,
            VideoEncoder::new(MobileNetV2::load(&pth, &gpu).unwrap()),
        );
    assert_eq!(
        pipeline.modalities(),
        [
            Modality::Text,
            Modality::Image,
            Modality::Audio,
            Modality::Video
        ]
    );

    // Inputs: the fixture's first MiniLM sentence; chelsea.png; a second of a 440 Hz tone; two
    // frames, the fixture's preprocessed chelsea and coffee.
    let minilm = common::fixtures().join("models/minilm");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(minilm.join("info.json")).unwrap()).unwrap();
    let sentence = info["sentences"][0].as_str().unwrap().to_string();
    let png = common::fixtures().join("preprocess/image/chelsea.png");
    let tone: Vec<f32> = (0..16000)
        .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / 16000.0).sin() * 0.5)
        .collect();
    let frame = |name: &str| {
        let f = ModelFile::open(
            common::fixtures().join(format!("preprocess/image/{name}.expected.safetensors")),
        )
        .unwrap();
        values(&f, "imagenet")
    };
    let (chelsea, coffee) = (frame("chelsea"), frame("coffee"));
    let frames = Tensor::from_f32(
        "frames",
        vec![2, 3, 224, 224],
        &[chelsea.clone(), coffee.clone()].concat(),
    )
    .unwrap();

    let before = gpu_of(&gpu).readbacks();
    let out = pipeline
        .run(vec![
            (Modality::Video, Input::Video(frames)),
            (Modality::Text, Input::Text(vec![sentence])),
            (
                Modality::Audio,
                Input::Audio {
                    samples: tone,
                    rate: 16000,
                },
            ),
            (Modality::Image, Input::ImageFiles(vec![png])),
        ])
        .unwrap();
    assert_eq!(
        gpu_of(&gpu).readbacks(),
        before,
        "nothing is read back between the encoders and the fusion"
    );
    assert!(out.fused.iter().all(|(_, t)| t.device().same_as(&gpu)));

    let features: Vec<Vec<f32>> = out
        .features
        .iter()
        .map(|(_, t)| t.to_f32_vec().unwrap())
        .collect();
    assert!(gpu_of(&gpu).readbacks() > before, "the counter counts");
    let dims: Vec<Vec<usize>> = out
        .features
        .iter()
        .map(|(_, t)| t.shape().dims().to_vec())
        .collect();
    assert_eq!(
        dims,
        [vec![1, 384], vec![1, 1280], vec![1, 80], vec![1, 1280]]
    );

    // Text: sentence-transformers' embedding of sentence 0 (the fixture's bar).
    let expected = ModelFile::open(minilm.join("expected.safetensors")).unwrap();
    let want: Vec<f64> = values(&expected, "sentence_embedding")[..384]
        .iter()
        .map(|v| f64::from(*v))
        .collect();
    assert_close("text features", &features[0], &want, 1e-4);

    // Image: the classifier applied in f64 to the features gives torchvision's logits.
    let (cw, cb) = (
        values(&pth, "classifier.1.weight"),
        values(&pth, "classifier.1.bias"),
    );
    let logits: Vec<f64> = (0..1000)
        .map(|o| {
            cw[o * 1280..(o + 1) * 1280]
                .iter()
                .zip(&features[1])
                .map(|(w, x)| f64::from(*w) * f64::from(*x))
                .sum::<f64>()
                + f64::from(cb[o])
        })
        .collect();
    let torch =
        ModelFile::open(common::fixtures().join("models/mobilenetv2/chelsea.safetensors")).unwrap();
    let want: Vec<f64> = values(&torch, "logits")
        .iter()
        .map(|v| f64::from(*v))
        .collect();
    let err = logits
        .iter()
        .zip(&want)
        .fold(0f64, |m, (g, w)| m.max((g - w).abs()));
    assert!(
        err <= 1e-3,
        "image features through the classifier: logits max abs {err}"
    );

    // Video: the mean of the two frames' features.
    let image = ImageEncoder::new(MobileNetV2::load(&pth, &gpu).unwrap());
    let per_frame = |v: &[f32]| {
        let t = Tensor::from_f32("frame", vec![1, 3, 224, 224], v).unwrap();
        image
            .encode(&Input::Image(t))
            .unwrap()
            .to_f32_vec()
            .unwrap()
    };
    let (a, b) = (per_frame(&chelsea), per_frame(&coffee));
    let mean: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (f64::from(*x) + f64::from(*y)) / 2.0)
        .collect();
    assert_close("video features", &features[3], &mean, 1e-5);

    // Fusion: the gate's formula on the features.
    let (want_out, want_a) = gate_reference(&file, &names, &features);
    let got = out.get("output").unwrap().to_f32_vec().unwrap();
    assert_close("fused output", &got, &want_out, 1e-5);
    let got = out.get("modality_weights").unwrap().to_f32_vec().unwrap();
    assert_close("modality weights", &got, &want_a, 1e-5);
}

#[test]
fn encoders_on_two_devices_of_one_adapter() {
    let (a, b) = (Device::gpu().unwrap(), Device::gpu().unwrap());
    assert!(!a.same_as(&b) && a.same_as(&a.clone()));
    let dir = tempfile::tempdir().unwrap();
    let file = gate_file(dir.path(), &[("text", 384), ("image", 1280)]);
    let build = |text_on: &Device, image_on: &Device| {
        let gate = AttentionGate::load_modalities(&file, "", &["text", "image"], &a).unwrap();
        let bert =
            BertEmbedder::open(common::models_dir().join("all-MiniLM-L6-v2"), text_on).unwrap();
        let pth = ModelFile::open(common::model(common::MOBILENET)).unwrap();
        MultiModal::new(Fusion::AttentionGate(gate), a.clone())
            .encoder(Modality::Text, TextEncoder::new(bert))
            .encoder(
                Modality::Image,
                ImageEncoder::new(MobileNetV2::load(&pth, image_on).unwrap()),
            )
    };
    let png = common::fixtures().join("preprocess/image/coffee.png");
    let inputs = || {
        vec![
            (Modality::Text, Input::Text(vec!["a cup of coffee".into()])),
            (Modality::Image, Input::ImageFiles(vec![png.clone()])),
        ]
    };
    let split = build(&a, &b);
    let (ra, rb) = (gpu_of(&a).readbacks(), gpu_of(&b).readbacks());
    let out = split.run(inputs()).unwrap();
    assert_eq!(gpu_of(&a).readbacks(), ra, "text and fusion share device a");
    assert_eq!(gpu_of(&b).readbacks(), rb + 1, "b's features cross once");
    assert!(out.features[1].1.device().same_as(&b));
    let split_out = out.get("output").unwrap().to_f32_vec().unwrap();

    let joined = build(&a, &a).run(inputs()).unwrap();
    let joined_out = joined.get("output").unwrap().to_f32_vec().unwrap();
    let want: Vec<f64> = joined_out.iter().map(|v| f64::from(*v)).collect();
    // The same kernels on the same adapter: the same numbers.
    assert_close("two devices against one", &split_out, &want, 0.0);
}

/// The file inputs go through each modality's preprocessing: a video file sampled (uniform, one
/// frame: index 6 of the 12 of clip.apng) gives the features of the fixture's frame_6 (Pillow's
/// decode) preprocessed as an image; an audio file gives the fixture's samples (ffmpeg's decode)
/// at the file's rate.
#[test]
fn file_inputs_are_preprocessed_by_modality() {
    use mlmf::multimodal::video::sample::Sampling;
    use mlmf::multimodal::ImagePreprocess;

    let gpu = Device::gpu().expect("a GPU adapter (lavapipe in CI)");
    let pth = ModelFile::open(common::model(common::MOBILENET)).unwrap();
    let video = common::fixtures().join("media/video");
    let frames = ModelFile::open(video.join("clip.apng.frames.safetensors")).unwrap();
    let info = frames.tensor("frame_6").unwrap();
    let [h, w, 3] = info.shape.dims()[..] else {
        panic!("frame_6 is [H, W, 3]")
    };
    let rgb = image::RgbImage::from_raw(w as u32, h as u32, frames.bytes(info).to_vec()).unwrap();
    let x = ImagePreprocess::imagenet().apply(&rgb).unwrap();
    let dims = [&[1][..], x.shape().dims()].concat();
    let x = x.reshape(dims).unwrap();
    let image = ImageEncoder::new(MobileNetV2::load(&pth, &gpu).unwrap())
        .encode(&Input::Image(x))
        .unwrap();
    let clip = VideoEncoder::new(MobileNetV2::load(&pth, &gpu).unwrap())
        .encode(&Input::VideoFile {
            path: video.join("clip.apng"),
            sampling: Sampling::Uniform { num: 1 },
        })
        .unwrap();
    assert_eq!(clip.shape().dims(), [1, 1280]);
    assert_eq!(clip.to_f32_vec().unwrap(), image.to_f32_vec().unwrap());

    let audio = common::fixtures().join("media/audio");
    let Input::Audio { samples, rate } = Input::audio_file(audio.join("jfk.flac")).unwrap() else {
        panic!("an audio file is Input::Audio")
    };
    assert_eq!(rate, 16000);
    let expected = ModelFile::open(audio.join("jfk.flac.samples.safetensors")).unwrap();
    assert_eq!(samples, values(&expected, "samples"));
}
