//! Opens each real model file the fetch script brings (GGUF, safetensors, both PyTorch layouts),
//! prints what is in it, and streams every tensor onto the GPU.
//!
//! Run with `bash scripts/demo.sh`, or `cargo run --release --example load_models [FILE...]`.

use std::path::PathBuf;
use std::time::Instant;

use mlmf::{Device, ModelFile};

fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MLMF_MODELS") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("mlmf")
}

fn main() -> mlmf::Result<()> {
    let mut files: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if files.is_empty() {
        let dir = models_dir();
        files = [
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "gemma-3-270m-q4_k_m.gguf",
            "all-MiniLM-L6-v2/model.safetensors",
            "mobilenet_v2-b0353104.pth",
            "pocketnet-v3_fold0.pt",
        ]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    }
    let device = Device::gpu()?;
    println!("device: {}\n", device.describe());
    for path in files {
        let file = ModelFile::open(&path)?;
        let mut by_dtype = std::collections::BTreeMap::new();
        for t in file.tensors() {
            *by_dtype.entry(t.dtype.name()).or_insert(0usize) += 1;
        }
        let arch = file
            .metadata()
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .map(|a| format!(", architecture {a}"))
            .unwrap_or_default();
        println!("{} ({}{arch})", path.display(), file.format());
        println!(
            "  {} tensors, {:.1} MiB, dtypes {by_dtype:?}",
            file.tensors().len(),
            file.data_bytes() as f64 / 1048576.0
        );
        let largest = file.tensors().iter().max_by_key(|t| t.byte_len());
        if let Some(t) = largest {
            println!("  largest: {} {} {}", t.name, t.dtype, t.shape);
        }
        let start = Instant::now();
        let tensors = device.load_all(&file)?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "  loaded {} tensors onto the GPU in {:.3} s ({:.2} GB/s)\n",
            tensors.len(),
            secs,
            file.data_bytes() as f64 / secs / 1e9
        );
    }
    Ok(())
}
