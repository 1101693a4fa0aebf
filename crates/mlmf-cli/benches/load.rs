//! Load throughput: every tensor of each real model file into GPU buffers, beside a plain memcpy
//! of the same bytes into a fresh host buffer, in the same run. Memory is measured by
//! `mlmf bench-load FILE`, one fresh process per file, since allocations of earlier loads in
//! this process would blur it.
//!
//! `cargo bench --bench load` (numbers in BENCHMARKS.md).

// The binary's own measurement code (`mlmf bench-load`), shared rather than copied.
#[allow(dead_code)]
#[path = "../src/bench.rs"]
mod bench;
#[allow(dead_code)]
#[path = "../src/memory.rs"]
mod memory;

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mlmf::{Device, ModelFile};

fn models_dir() -> PathBuf {
    std::env::var_os("MLMF_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/mlmf")
        })
}

const FILES: [&str; 4] = [
    "all-MiniLM-L6-v2/model.safetensors",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma-3-270m-q4_k_m.gguf",
    "mobilenet_v2-b0353104.pth",
];

fn load(c: &mut Criterion) {
    let device =
        Device::gpu().expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    for name in FILES {
        let path = models_dir().join(name);
        let file = ModelFile::open(&path)
            .unwrap_or_else(|e| panic!("{e} (run python3 scripts/fetch_models.py)"));
        let mut group = c.benchmark_group(format!("load/{name}"));
        group.throughput(Throughput::Bytes(file.data_bytes()));
        group.sample_size(10);
        group.bench_function("gpu", |b| {
            b.iter(|| bench::load_once(&file, &device).expect("load"))
        });
        group.bench_function("memcpy_fresh", |b| b.iter(|| bench::memcpy_once(&file)));
        let mut dst = vec![1u8; file.data_bytes() as usize];
        group.bench_function("memcpy_warm", |b| {
            b.iter(|| bench::memcpy_warm(&file, &mut dst))
        });
        group.finish();
    }
}

criterion_group!(benches, load);
criterion_main!(benches);
