//! Shared paths for integration tests: the oracle fixtures beside the checkout and the real model
//! files fetched by `scripts/fetch_models.py`. A missing file fails the test with the command that
//! fetches it; tests never pass by skipping.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `../shared/fixtures`, beside the checkout.
pub fn fixtures() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
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
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_gguf.py");
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

/// Whether `device`'s shader compiler contracts a product and a sum into one fused multiply-add
/// (NVIDIA's Vulkan compiler does; lavapipe's does not). WGSL allows either, and a fused step
/// rounds once where the CPU twin rounds twice, so where it does, tests compare GPU results with
/// the twin within the error bound of the f64 reference instead of bit for bit.
///
/// Probed with a two-term product `-(1 + 2^-11) * 1 + (1 + 2^-12) * (1 + 2^-12)`: the second
/// product is `1 + 2^-11 + 2^-24`, which rounds (to even) to `1 + 2^-11`, so the sum is 0 when
/// each step is rounded and `2^-24` when the last multiply-add is fused.
pub fn fuses_multiply_add(device: &mlmf::Device) -> bool {
    use mlmf::ops::matmul::{matmul, MatmulOptions};
    use mlmf::Tensor;
    let (u, v) = (1.0 + 2f32.powi(-11), 1.0 + 2f32.powi(-12));
    let a = Tensor::from_f32("a", vec![1, 2], &[-u, v]).unwrap();
    let b = Tensor::from_f32("b", vec![2, 1], &[1.0, v]).unwrap();
    let (a, b) = (a.to_device(device).unwrap(), b.to_device(device).unwrap());
    let c = matmul(&a, &b, MatmulOptions::default())
        .unwrap()
        .to_f32_vec()
        .unwrap();
    match c[0] {
        0.0 => false,
        x if x == 2f32.powi(-24) => true,
        x => panic!("multiply-add probe gave {x:e}, neither 0 nor 2^-24"),
    }
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
