//! `fusion::attention::MultiheadAttention` and `fusion::middle::Middle` against the fixtures
//! torch computed (`../shared/fixtures/fusion/{cross_attention,middle}.safetensors`, README
//! section `fusion/`): every output within `1e-5 * max(1, max|expected|)`, on the GPU and the
//! CPU twins; and the loaders' typed errors.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{assert_lora_close, f32s, fixtures, random_f32};
use mlmf::fusion::attention::{ForwardOptions, MultiheadAttention};
use mlmf::fusion::middle::Middle;
use mlmf::ops::attention::AttnPath;
use mlmf::{Device, Error, ModelFile, Tensor};

fn fixture(name: &str) -> PathBuf {
    fixtures().join("fusion").join(name)
}

/// Every tensor of a safetensors file: (dims, bytes).
fn tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn input(t: &HashMap<String, (Vec<usize>, Vec<u8>)>, name: &str, device: &Device) -> Tensor {
    let (dims, bytes) = &t[name];
    Tensor::from_f32(name, dims.clone(), &f32s(bytes))
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn padding(t: &HashMap<String, (Vec<usize>, Vec<u8>)>) -> Vec<bool> {
    t["key_padding_mask"].1.iter().map(|&b| b != 0).collect()
}

fn devices() -> Vec<Device> {
    vec![Device::gpu().unwrap(), Device::Cpu]
}

#[test]
fn cross_attention_matches_torch() {
    let path = fixture("cross_attention.safetensors");
    let t = tensors(&path);
    let file = ModelFile::open(&path).unwrap();
    let expected_out = f32s(&t["output"].1);
    let expected_w = f32s(&t["attn_weights"].1);
    let mask = padding(&t);
    assert!(mask.iter().any(|&p| p), "the fixture pads some keys");
    for device in devices() {
        let what = device.describe();
        let mha = MultiheadAttention::load(&file, "weights.", 4, &device).unwrap();
        assert_eq!(
            (mha.embed_dim(), mha.kdim(), mha.vdim(), mha.num_heads()),
            (64, 48, 40, 4)
        );
        let (q, k, v) = (
            input(&t, "query", &device),
            input(&t, "key", &device),
            input(&t, "value", &device),
        );
        let options = ForwardOptions {
            key_padding_mask: Some(&mask),
            need_weights: true,
            ..Default::default()
        };
        let out = mha.forward(&q, &k, &v, &options).unwrap();
        assert_eq!(out.output.shape().dims(), &[2, 7, 64]);
        let w = out.attn_weights.unwrap();
        assert_eq!(w.shape().dims(), &[2, 4, 7, 13]);
        assert_lora_close(
            &format!("{what} output (three-pass)"),
            &out.output.to_f32_vec().unwrap(),
            &expected_out,
        );
        assert_lora_close(
            &format!("{what} attn_weights"),
            &w.to_f32_vec().unwrap(),
            &expected_w,
        );

        // Without weights: the fused kernel.
        let fused = mha
            .forward(
                &q,
                &k,
                &v,
                &ForwardOptions {
                    need_weights: false,
                    ..options
                },
            )
            .unwrap();
        assert!(fused.attn_weights.is_none());
        assert_lora_close(
            &format!("{what} output (fused)"),
            &fused.output.to_f32_vec().unwrap(),
            &expected_out,
        );
        // Forcing the three-pass path without weights gives the same output.
        let three = mha
            .forward(
                &q,
                &k,
                &v,
                &ForwardOptions {
                    need_weights: false,
                    path: AttnPath::ThreePass,
                    ..options
                },
            )
            .unwrap();
        assert_lora_close(
            &format!("{what} output (three-pass, no weights)"),
            &three.output.to_f32_vec().unwrap(),
            &expected_out,
        );

        // average_attn_weights: the mean over heads of the fixture's per-head weights.
        let avg = mha
            .forward(
                &q,
                &k,
                &v,
                &ForwardOptions {
                    average_attn_weights: true,
                    ..options
                },
            )
            .unwrap()
            .attn_weights
            .unwrap();
        assert_eq!(avg.shape().dims(), &[2, 7, 13]);
        let mut mean = vec![0.0f32; 2 * 7 * 13];
        for b in 0..2 {
            for at in 0..7 * 13 {
                let s: f64 = (0..4)
                    .map(|h| f64::from(expected_w[(b * 4 + h) * 91 + at]))
                    .sum();
                mean[b * 91 + at] = (s / 4.0) as f32;
            }
        }
        assert_lora_close(
            &format!("{what} averaged weights"),
            &avg.to_f32_vec().unwrap(),
            &mean,
        );
    }
}

#[test]
fn middle_fusion_matches_torch() {
    let path = fixture("middle.safetensors");
    let t = tensors(&path);
    let file = ModelFile::open(&path).unwrap();
    let expected = f32s(&t["output"].1);
    let mask = padding(&t);
    for device in devices() {
        let block = Middle::load(&file, "weights.", 4, &device).unwrap();
        let out = block
            .forward(
                &input(&t, "x", &device),
                &input(&t, "memory", &device),
                Some(&mask),
            )
            .unwrap();
        assert_eq!(out.shape().dims(), &[2, 7, 64]);
        assert_lora_close(
            &format!("middle on {}", device.describe()),
            &out.to_f32_vec().unwrap(),
            &expected,
        );
    }
}

/// Writes `tensors` (F32) as a safetensors file in `dir`.
fn write(dir: &Path, name: &str, tensors: &[(String, Vec<usize>, Vec<u8>)]) -> PathBuf {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, dims, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, dims.clone(), bytes)
                    .unwrap();
            (n.clone(), view)
        })
        .collect();
    let path = dir.join(name);
    safetensors::tensor::serialize_to_file(views, None, &path).unwrap();
    path
}

#[test]
fn missing_or_misshapen_weights_are_typed_errors() {
    let t = tensors(&fixture("cross_attention.safetensors"));
    let weights: Vec<(String, Vec<usize>, Vec<u8>)> = t
        .iter()
        .filter(|(n, _)| n.starts_with("weights."))
        .map(|(n, (d, b))| (n.clone(), d.clone(), b.clone()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for gone in [
        "weights.k_proj_weight",
        "weights.out_proj.weight",
        "weights.q_proj_weight",
    ] {
        let kept: Vec<_> = weights.iter().filter(|w| w.0 != gone).cloned().collect();
        let file = ModelFile::open(write(dir.path(), "missing.safetensors", &kept)).unwrap();
        let r = MultiheadAttention::load(&file, "weights.", 4, &Device::Cpu);
        assert!(
            matches!(r, Err(Error::TensorNotFound { ref tensor, .. }) if tensor == gone),
            "{gone}: {:?}",
            r.err()
        );
    }
    for (bad, dims) in [
        ("weights.in_proj_bias", vec![191]),
        ("weights.v_proj_weight", vec![40, 64]),
        ("weights.q_proj_weight", vec![64, 48]),
    ] {
        let changed: Vec<_> = weights
            .iter()
            .map(|w| {
                if w.0 == bad {
                    let n: usize = dims.iter().product();
                    (w.0.clone(), dims.clone(), vec![0u8; n * 4])
                } else {
                    w.clone()
                }
            })
            .collect();
        let file = ModelFile::open(write(dir.path(), "shape.safetensors", &changed)).unwrap();
        let r = MultiheadAttention::load(&file, "weights.", 4, &Device::Cpu);
        assert!(
            matches!(r, Err(Error::BadShape { ref tensor, .. }) if tensor == bad),
            "{bad}: {:?}",
            r.err()
        );
    }
    // Heads that do not divide E.
    let file = ModelFile::open(fixture("cross_attention.safetensors")).unwrap();
    let r = MultiheadAttention::load(&file, "weights.", 5, &Device::Cpu);
    assert!(matches!(r, Err(Error::BadModel { .. })), "{:?}", r.err());
    // The middle block names its own missing weights.
    let t = tensors(&fixture("middle.safetensors"));
    let kept: Vec<_> = t
        .iter()
        .filter(|(n, _)| n.starts_with("weights.") && *n != "weights.ln_kv.bias")
        .map(|(n, (d, b))| (n.clone(), d.clone(), b.clone()))
        .collect();
    let file = ModelFile::open(write(dir.path(), "middle.safetensors", &kept)).unwrap();
    let r = Middle::load(&file, "weights.", 4, &Device::Cpu);
    assert!(
        matches!(r, Err(Error::TensorNotFound { ref tensor, .. }) if tensor == "weights.ln_kv.bias"),
        "{:?}",
        r.err()
    );
}

/// A packed `in_proj_weight` (kdim = vdim = E) is split into q, k, v rows in that order: the
/// same results as the three weights stored apart.
#[test]
fn packed_in_proj_equals_separate_weights() {
    let e = 16;
    let bytes = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let w = random_f32(3 * e * e, 300);
    let b = random_f32(3 * e, 301);
    let wo = random_f32(e * e, 302);
    let bo = random_f32(e, 303);
    let common = vec![
        ("in_proj_bias".to_string(), vec![3 * e], bytes(b)),
        ("out_proj.weight".to_string(), vec![e, e], bytes(wo)),
        ("out_proj.bias".to_string(), vec![e], bytes(bo)),
    ];
    let mut packed = common.clone();
    packed.push((
        "in_proj_weight".to_string(),
        vec![3 * e, e],
        bytes(w.clone()),
    ));
    let mut apart = common;
    for (i, n) in ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
        .iter()
        .enumerate()
    {
        apart.push((
            n.to_string(),
            vec![e, e],
            bytes(w[i * e * e..(i + 1) * e * e].to_vec()),
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let packed = ModelFile::open(write(dir.path(), "packed.safetensors", &packed)).unwrap();
    let apart = ModelFile::open(write(dir.path(), "apart.safetensors", &apart)).unwrap();
    let x = Tensor::from_f32("x", vec![2, 5, e], &random_f32(2 * 5 * e, 304)).unwrap();
    let m = Tensor::from_f32("m", vec![2, 6, e], &random_f32(2 * 6 * e, 305)).unwrap();
    let run = |file: &ModelFile| {
        let mha = MultiheadAttention::load(file, "", 2, &Device::Cpu).unwrap();
        let o = mha
            .forward(
                &x,
                &m,
                &m,
                &ForwardOptions {
                    need_weights: true,
                    ..Default::default()
                },
            )
            .unwrap();
        (
            o.output.to_f32_vec().unwrap(),
            o.attn_weights.unwrap().to_f32_vec().unwrap(),
        )
    };
    let (a, b) = (run(&packed), run(&apart));
    assert_eq!(a, b);
    assert!(a.0.iter().any(|&v| v != 0.0));
}
