//! `mlmf fusion KIND --weights W --inputs I [--device gpu|cpu] -o OUT`, run as a user would, on
//! the fixtures of ../shared/fixtures/fusion (torch's outputs): every output key within
//! `1e-5 * max(1, max|expected|)`; a state dict without the `weights.` prefix; and the
//! non-zero exits, with a message naming the tensor, for a missing weight, a missing input, a
//! wrong-shaped input and a wrong-shaped weight.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mlmf::{DType, Device, ModelFile, SafetensorsWriter, TensorSource};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlmf"))
        .args(args)
        .output()
        .unwrap()
}

fn fixture(name: &str) -> PathBuf {
    common::fixtures().join("fusion").join(name)
}

fn values(file: &ModelFile, key: &str) -> (Vec<usize>, Vec<f32>) {
    let t = Device::Cpu.load(file, key).unwrap();
    (t.shape().dims().to_vec(), t.to_f32_vec().unwrap())
}

fn assert_outputs(what: &str, out: &Path, expected: &Path, keys: &[&str]) {
    let (got, want) = (
        ModelFile::open(out).unwrap(),
        ModelFile::open(expected).unwrap(),
    );
    let mut names: Vec<&str> = got.tensors().iter().map(|t| t.name.as_str()).collect();
    names.sort();
    let mut sorted = keys.to_vec();
    sorted.sort();
    assert_eq!(names, sorted, "{what}: keys");
    for key in keys {
        let ((gd, g), (wd, w)) = (values(&got, key), values(&want, key));
        assert_eq!(gd, wd, "{what}: {key} shape");
        let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = g
            .iter()
            .zip(&w)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-5 * scale, "{what}: {key}: max abs error {err:e}");
    }
}

#[test]
fn fusion_kinds_match_the_fixtures_on_gpu_and_cpu() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, file, keys) in [
        (
            "cross-attention",
            "cross_attention.safetensors",
            &["output", "attn_weights"][..],
        ),
        ("middle", "middle.safetensors", &["output"][..]),
        ("early", "early.safetensors", &["output"][..]),
        ("late", "late.safetensors", &["fused_logits", "probs"][..]),
        (
            "attention-gate",
            "attention_gate.safetensors",
            &["output", "modality_weights"][..],
        ),
    ] {
        for device in ["gpu", "cpu"] {
            let f = fixture(file);
            let out = dir.path().join(format!("{kind}-{device}.safetensors"));
            let args = [
                "fusion",
                kind,
                "--weights",
                f.to_str().unwrap(),
                "--inputs",
                f.to_str().unwrap(),
                "--device",
                device,
                // The fixtures' attention modules have 4 heads (info.json); the others ignore it.
                "--heads",
                "4",
                "-o",
                out.to_str().unwrap(),
            ];
            let o = run(&args);
            assert!(
                o.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert_outputs(&format!("{kind} on {device}"), &out, &f, keys);
        }
    }
}

/// The tensors of fixture `name` whose names pass `keep`, renamed by `rename`, and those of
/// `extra` (name, dims, values), written to `dir/out`.
fn write_from(
    dir: &Path,
    out: &str,
    name: &str,
    keep: impl Fn(&str) -> Option<String>,
    extra: &[(&str, Vec<usize>)],
) -> PathBuf {
    let file = ModelFile::open(fixture(name)).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for info in file.tensors() {
        if let Some(new) = keep(&info.name) {
            let (dims, v) = values(&file, &info.name);
            tensors.push((new, dims, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
        }
    }
    for (n, dims) in extra {
        let count: usize = dims.iter().product();
        let bytes = (0..count)
            .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
            .collect();
        tensors.push((n.to_string(), dims.clone(), bytes));
    }
    let mut w = SafetensorsWriter::new(BTreeMap::new());
    for (n, dims, bytes) in &tensors {
        w.add_tensor(n.clone(), DType::F32, dims, TensorSource::Bytes(bytes));
    }
    let path = dir.join(out);
    w.write(&path).unwrap();
    path
}

fn fusion(kind: &str, weights: &Path, inputs: &Path, out: &Path) -> Output {
    run(&[
        "fusion",
        kind,
        "--weights",
        weights.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--device",
        "cpu",
        "-o",
        out.to_str().unwrap(),
    ])
}

#[test]
fn a_bare_state_dict_and_separate_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let weights = write_from(
        dir.path(),
        "w.safetensors",
        "early.safetensors",
        |n| n.strip_prefix("weights.").map(str::to_string),
        &[],
    );
    let inputs = write_from(
        dir.path(),
        "i.safetensors",
        "early.safetensors",
        |n| n.starts_with("input.").then(|| n.to_string()),
        &[],
    );
    let out = dir.path().join("out.safetensors");
    let o = fusion("early", &weights, &inputs, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_outputs("bare", &out, &fixture("early.safetensors"), &["output"]);
}

/// The command fails, without writing OUT, and says `needle` on standard error.
fn assert_fails(o: &Output, out: &Path, needle: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "succeeded; stderr: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    assert!(!out.exists(), "{} was written", out.display());
}

#[test]
fn bad_state_dicts_and_inputs_fail_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let gate = fixture("attention_gate.safetensors");

    let no_bias = write_from(
        dir.path(),
        "no_bias.safetensors",
        "attention_gate.safetensors",
        |n| (n != "weights.image.bias").then(|| n.to_string()),
        &[],
    );
    let o = fusion("attention-gate", &no_bias, &gate, &out);
    assert_fails(&o, &out, "'weights.image.bias'");

    let no_input = write_from(
        dir.path(),
        "no_input.safetensors",
        "attention_gate.safetensors",
        |n| (n != "input.image").then(|| n.to_string()),
        &[],
    );
    let o = fusion("attention-gate", &gate, &no_input, &out);
    assert_fails(&o, &out, "'input.image'");

    let wide_audio = write_from(
        dir.path(),
        "wide_audio.safetensors",
        "attention_gate.safetensors",
        |n| (n != "input.audio").then(|| n.to_string()),
        &[("input.audio", vec![2, 41])],
    );
    let o = fusion("attention-gate", &gate, &wide_audio, &out);
    assert_fails(&o, &out, "'input.audio' [2, 41]");

    let late = fixture("late.safetensors");
    let bad_weights = write_from(
        dir.path(),
        "bad_weights.safetensors",
        "late.safetensors",
        |n| (n != "weights.modality_weights").then(|| n.to_string()),
        &[("weights.modality_weights", vec![2, 3])],
    );
    let o = fusion("late", &bad_weights, &late, &out);
    assert_fails(&o, &out, "'weights.modality_weights'");

    let early = fixture("early.safetensors");
    let o = fusion("early", &early, &wide_audio, &out);
    assert_fails(&o, &out, "input.audio");

    let o = fusion("cross-attention", &early, &early, &out);
    assert_fails(&o, &out, "--heads");

    let cross = fixture("cross_attention.safetensors");
    let no_k = write_from(
        dir.path(),
        "no_k.safetensors",
        "cross_attention.safetensors",
        |n| (n.starts_with("weights.") && n != "weights.k_proj_weight").then(|| n.to_string()),
        &[],
    );
    let args = |w: &Path, i: &Path| {
        let mut a: Vec<String> = ["fusion", "cross-attention", "--heads", "4", "--weights"]
            .map(String::from)
            .to_vec();
        a.push(w.display().to_string());
        a.push("--inputs".into());
        a.push(i.display().to_string());
        a.push("-o".into());
        a.push(out.display().to_string());
        a
    };
    let o = Command::new(env!("CARGO_BIN_EXE_mlmf"))
        .args(args(&no_k, &cross))
        .output()
        .unwrap();
    assert_fails(&o, &out, "k_proj_weight");
    // A mask stored as F32 (write_from widens every tensor) is refused by name.
    let f32_mask = write_from(
        dir.path(),
        "f32_mask.safetensors",
        "cross_attention.safetensors",
        |n| (!n.starts_with("weights.")).then(|| n.to_string()),
        &[],
    );
    let o = Command::new(env!("CARGO_BIN_EXE_mlmf"))
        .args(args(&cross, &f32_mask))
        .output()
        .unwrap();
    assert_fails(&o, &out, "'key_padding_mask'");
    let o = run(&[
        "fusion",
        "sideways",
        "--weights",
        "w",
        "--inputs",
        "i",
        "-o",
        "o",
    ]);
    assert_fails(&o, Path::new("o"), "attention-gate");
}
