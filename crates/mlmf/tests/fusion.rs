//! Early, late and attention-gated fusion (`mlmf::fusion`) on the GPU (lavapipe in CI) and on
//! the CPU twins, against torch's outputs in ../shared/fixtures/fusion: every output within
//! `1e-5 * max(1, max|expected|)` (the fixture README's bar); and the typed errors for a state
//! dict missing a weight, a weight of the wrong shape, and inputs of the wrong shape.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mlmf::fusion::early::EarlyFusion;
use mlmf::fusion::gate::AttentionGate;
use mlmf::fusion::late::LateFusion;
use mlmf::{DType, Device, Error, ModelFile, SafetensorsWriter, Tensor, TensorSource};

fn devices() -> Vec<Device> {
    vec![
        Device::gpu().expect("a GPU adapter (lavapipe in CI)"),
        Device::Cpu,
    ]
}

fn fixture(name: &str) -> ModelFile {
    ModelFile::open(common::fixtures().join("fusion").join(name)).unwrap()
}

fn input(file: &ModelFile, name: &str, device: &Device) -> Tensor {
    Device::Cpu
        .load(file, name)
        .unwrap()
        .to_device(device)
        .unwrap()
}

/// `got` within the fixture's bar of the fixture's `key`, shapes equal.
fn assert_close(what: &str, got: &Tensor, file: &ModelFile, key: &str) {
    let want = Device::Cpu.load(file, key).unwrap();
    assert_eq!(got.shape(), want.shape(), "{what}: {key} shape");
    let (got, want) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    eprintln!(
        "{what}: {key}: max abs error {err:e} (bar {:e})",
        1e-5 * scale
    );
    assert!(
        err <= 1e-5 * scale,
        "{what}: {key}: max abs error {err:e} > {:e}",
        1e-5 * scale
    );
}

#[test]
fn early_fusion_matches_torch() {
    let file = fixture("early.safetensors");
    for device in devices() {
        let early = EarlyFusion::load(&file, "weights.", &device).unwrap();
        assert_eq!((early.in_features(), early.out_features()), (152, 64));
        let xs: Vec<Tensor> = ["input.text", "input.image", "input.audio"]
            .iter()
            .map(|k| input(&file, k, &device))
            .collect();
        let out = early.forward(&[&xs[0], &xs[1], &xs[2]]).unwrap();
        assert_eq!(out.device().is_gpu(), device.is_gpu());
        assert_close(&device.describe(), &out, &file, "output");
    }
}

#[test]
fn late_fusion_matches_torch() {
    let file = fixture("late.safetensors");
    for device in devices() {
        let late = LateFusion::load(&file, "weights.", &device).unwrap();
        assert_eq!(late.modalities(), 3);
        let xs: Vec<Tensor> = ["input.text", "input.image", "input.audio"]
            .iter()
            .map(|k| input(&file, k, &device))
            .collect();
        let out = late.forward(&[&xs[0], &xs[1], &xs[2]]).unwrap();
        let what = device.describe();
        assert_close(&what, &out.fused_logits, &file, "fused_logits");
        assert_close(&what, &out.probs, &file, "probs");
    }
}

#[test]
fn attention_gate_matches_torch() {
    let file = fixture("attention_gate.safetensors");
    for device in devices() {
        let gate = AttentionGate::load(&file, "weights.", &device).unwrap();
        assert_eq!(gate.modalities(), ["text", "image", "audio"]);
        assert_eq!(gate.embed_dim(), 64);
        let xs: Vec<Tensor> = ["input.text", "input.image", "input.audio"]
            .iter()
            .map(|k| input(&file, k, &device))
            .collect();
        let out = gate.forward(&[&xs[0], &xs[1], &xs[2]]).unwrap();
        let what = device.describe();
        assert_close(&what, &out.output, &file, "output");
        assert_close(&what, &out.modality_weights, &file, "modality_weights");
    }
}

/// A copy of fixture `name` in `dir` with `drop` left out and `replace` (name, dims, values)
/// written instead of the fixture's tensor of that name.
fn altered(
    dir: &Path,
    name: &str,
    drop: Option<&str>,
    replace: Option<(&str, Vec<usize>)>,
) -> PathBuf {
    let file = fixture(name);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for info in file.tensors() {
        if Some(info.name.as_str()) == drop {
            continue;
        }
        match &replace {
            Some((r, dims)) if *r == info.name => {
                let n: usize = dims.iter().product();
                let bytes = (0..n)
                    .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
                    .collect();
                tensors.push((info.name.clone(), dims.clone(), bytes));
            }
            _ => {
                let t = Device::Cpu.load(&file, &info.name).unwrap();
                let dims = t.shape().dims().to_vec();
                tensors.push((info.name.clone(), dims, t.to_bytes().unwrap()));
            }
        }
    }
    let mut w = SafetensorsWriter::new(BTreeMap::new());
    for (n, dims, bytes) in &tensors {
        w.add_tensor(n.clone(), DType::F32, dims, TensorSource::Bytes(bytes));
    }
    let path = dir.join(name);
    w.write(&path).unwrap();
    path
}

#[test]
fn missing_or_misshapen_weights_are_typed_errors_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::Cpu;
    let open = |p: PathBuf| ModelFile::open(p).unwrap();

    let f = open(altered(
        dir.path(),
        "early.safetensors",
        Some("weights.proj.bias"),
        None,
    ));
    let err = EarlyFusion::load(&f, "weights.", &device).err().unwrap();
    assert!(
        matches!(&err, Error::TensorNotFound { tensor, .. } if tensor == "weights.proj.bias"),
        "{err}"
    );
    let f = open(altered(
        dir.path(),
        "late.safetensors",
        None,
        Some(("weights.modality_weights", vec![3, 1])),
    ));
    let err = LateFusion::load(&f, "weights.", &device).err().unwrap();
    assert!(
        matches!(&err, Error::BadShape { tensor, .. } if tensor == "weights.modality_weights"),
        "{err}"
    );
    let f = open(altered(
        dir.path(),
        "attention_gate.safetensors",
        None,
        Some(("weights.image.bias", vec![63])),
    ));
    let err = AttentionGate::load(&f, "weights.", &device).err().unwrap();
    assert!(
        matches!(&err, Error::BadShape { tensor, .. } if tensor == "weights.image.bias"),
        "{err}"
    );
    assert!(err.to_string().contains("[63]"), "{err}");
    let f = open(altered(
        dir.path(),
        "attention_gate.safetensors",
        None,
        Some(("weights.score.weight", vec![64, 40])),
    ));
    let err = AttentionGate::load(&f, "weights.", &device).err().unwrap();
    assert!(
        matches!(&err, Error::BadShape { tensor, .. } if tensor == "weights.score.weight"),
        "{err}"
    );
    let f = open(altered(
        dir.path(),
        "attention_gate.safetensors",
        Some("weights.audio.weight"),
        None,
    ));
    let err = AttentionGate::load(&f, "weights.", &device).err().unwrap();
    assert!(
        matches!(&err, Error::TensorNotFound { tensor, .. } if tensor == "weights.audio.weight"),
        "{err}"
    );
}

#[test]
fn misshapen_inputs_are_typed_errors_naming_the_input() {
    let device = Device::Cpu;
    let t = |name: &str, dims: Vec<usize>| {
        let n = dims.iter().product();
        Tensor::from_f32(name, dims, &vec![0.5; n]).unwrap()
    };
    let (text, image) = (t("input.text", vec![2, 64]), t("input.image", vec![2, 48]));

    let gate =
        AttentionGate::load(&fixture("attention_gate.safetensors"), "weights.", &device).unwrap();
    let bad = t("input.audio", vec![2, 41]);
    let err = gate.forward(&[&text, &image, &bad]).err().unwrap();
    assert!(
        matches!(&err, Error::ShapeMismatch { left, right, .. }
            if left == "input.audio" && right == "weights.audio.weight"),
        "{err}"
    );
    let err = gate.forward(&[&text, &image]).err().unwrap();
    assert!(matches!(err, Error::OpArgument { value: 2, .. }), "{err}");
    let other_batch = t("input.audio", vec![3, 40]);
    let err = gate.forward(&[&text, &image, &other_batch]).err().unwrap();
    assert!(
        matches!(&err, Error::ShapeMismatch { right, .. } if right == "input.audio"),
        "{err}"
    );

    let early = EarlyFusion::load(&fixture("early.safetensors"), "weights.", &device).unwrap();
    let err = early.forward(&[&text, &image, &bad]).err().unwrap();
    assert!(
        matches!(&err, Error::ShapeMismatch { right, right_shape, .. }
            if right.contains("input.audio") && right_shape == &[2, 153]),
        "{err}"
    );
    let rank3 = t("input.image", vec![2, 1, 48]);
    let err = early.forward(&[&text, &rank3]).err().unwrap();
    assert!(
        matches!(&err, Error::OpRank { tensor, .. } if tensor == "input.image"),
        "{err}"
    );

    let late = LateFusion::load(&fixture("late.safetensors"), "weights.", &device).unwrap();
    let (a, b) = (t("input.text", vec![2, 10]), t("input.image", vec![2, 10]));
    let c = t("input.audio", vec![2, 9]);
    let err = late.forward(&[&a, &b, &c]).err().unwrap();
    assert!(
        matches!(&err, Error::ShapeMismatch { right, .. } if right == "input.audio"),
        "{err}"
    );
}
