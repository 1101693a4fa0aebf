//! Real models end to end on the GPU (lavapipe in CI) and on the CPU twins, against
//! ../shared/fixtures/models: all-MiniLM-L6-v2 (transformers' BertModel + sentence-transformers
//! pooling) and torchvision's MobileNetV2 (from its .pth, batch norm folded at load time).

#[path = "../../../tests/common/mod.rs"]
mod common;

use mlmf::models::bert::BertEmbedder;
use mlmf::models::mobilenet_v2::MobileNetV2;
use mlmf::multimodal::ImagePreprocess;
use mlmf::{Device, ModelFile, Tensor};

fn devices() -> Vec<Device> {
    vec![
        Device::gpu().expect("a GPU adapter (lavapipe in CI)"),
        Device::Cpu,
    ]
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_bytes()
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn file_f32s(file: &ModelFile, name: &str) -> Vec<f32> {
    f32s(&Device::Cpu.load(file, name).unwrap())
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn minilm_matches_transformers_on_gpu_and_cpu() {
    let dir = common::fixtures().join("models/minilm");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("info.json")).unwrap()).unwrap();
    let sentences: Vec<&str> = info["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let expected = ModelFile::open(dir.join("expected.safetensors")).unwrap();
    let hidden_exp = file_f32s(&expected, "last_hidden_state");
    let pooled_exp = file_f32s(&expected, "sentence_embedding");
    let model_dir = common::models_dir().join("all-MiniLM-L6-v2");
    for device in devices() {
        let model = BertEmbedder::open(&model_dir, &device).unwrap();
        let out = model.embed(&sentences).unwrap();
        let (len, dim) = (out.encoded.len, 384);
        assert_eq!((out.encoded.batch, len), (4, 16));
        let what = device.describe();
        // Hidden states on real tokens only.
        for b in 0..4 {
            for t in 0..len {
                if out.encoded.attention_mask[b * len + t] == 0 {
                    continue;
                }
                let at = (b * len + t) * dim;
                let (got, want) = (
                    &out.last_hidden_state[at..at + dim],
                    &hidden_exp[at..at + dim],
                );
                let err = max_abs(got, want);
                assert!(err <= 1e-4, "{what}: sentence {b} token {t}: max abs {err}");
                let cos = cosine(got, want);
                assert!(cos > 0.9999, "{what}: sentence {b} token {t}: cosine {cos}");
            }
        }
        for (b, got) in out.sentence_embeddings.iter().enumerate() {
            let want = &pooled_exp[b * dim..(b + 1) * dim];
            let err = max_abs(got, want);
            assert!(err <= 1e-4, "{what}: embedding {b}: max abs {err}");
            assert!(cosine(got, want) > 0.9999, "{what}: embedding {b}");
        }
    }
}

fn top5(logits: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx.truncate(5);
    idx
}

fn expected_top5(file: &ModelFile) -> Vec<usize> {
    let t = Device::Cpu.load(file, "top5").unwrap();
    t.to_bytes()
        .unwrap()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect()
}

#[test]
fn mobilenet_v2_matches_torchvision_on_the_fixture_inputs() {
    let file = ModelFile::open(common::model(common::MOBILENET)).unwrap();
    for device in devices() {
        let model = MobileNetV2::load(&file, &device).unwrap();
        assert_eq!(model.load_transforms().len(), 52, "one fold per batch norm");
        for name in ["chelsea", "coffee"] {
            let input_file = ModelFile::open(
                common::fixtures().join(format!("preprocess/image/{name}.expected.safetensors")),
            )
            .unwrap();
            let x = Device::Cpu
                .load(&input_file, "imagenet")
                .unwrap()
                .reshape(vec![1, 3, 224, 224])
                .unwrap();
            let logits = f32s(&model.forward(&x).unwrap());
            let expected = ModelFile::open(
                common::fixtures().join(format!("models/mobilenetv2/{name}.safetensors")),
            )
            .unwrap();
            let want = file_f32s(&expected, "logits");
            let err = max_abs(&logits, &want);
            let what = format!("{name} on {}", device.describe());
            assert!(err <= 1e-3, "{what}: logits max abs {err}");
            assert_eq!(top5(&logits), expected_top5(&expected), "{what}");
        }
    }
}

#[test]
fn mobilenet_v2_top5_from_the_png_end_to_end() {
    let file = ModelFile::open(common::model(common::MOBILENET)).unwrap();
    let gpu = Device::gpu().unwrap();
    let model = MobileNetV2::load(&file, &gpu).unwrap();
    for name in ["chelsea", "coffee"] {
        let png = common::fixtures().join(format!("preprocess/image/{name}.png"));
        let x = ImagePreprocess::imagenet()
            .load(&png)
            .unwrap()
            .reshape(vec![1, 3, 224, 224])
            .unwrap();
        let logits = f32s(&model.forward(&x).unwrap());
        let expected = ModelFile::open(
            common::fixtures().join(format!("models/mobilenetv2/{name}.safetensors")),
        )
        .unwrap();
        assert_eq!(top5(&logits), expected_top5(&expected), "{name}");
    }
}
