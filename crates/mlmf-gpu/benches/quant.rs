//! Per GGUF type, in the same run: dequantization throughput (GB/s of f32 output) and fused
//! matrix-vector throughput (GB/s of quantized weights read), for the GPU kernel, its CPU twin
//! and gguf-py's numpy decoding of the same bytes (followed by numpy's `W @ x` for the product).
//!
//! `cargo bench --bench quant` (numbers in BENCHMARKS.md). gguf-py runs through
//! `scripts/bench_gguf_py.py` with `$MLMF_PYTHON` (the venv `scripts/test.sh` makes); the
//! script times only its own decoding loop, not Python's start-up.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mlmf_core::{DType, ModelFile};
use mlmf_gpu::Device;

/// Products per wait in the batched mat-vec timing.
const BURST: usize = 16;

/// Elements per benchmark tensor: 2^22 (16 MiB of f32 output).
const ELEMENTS: usize = 1 << 22;

const TYPES: [DType; 15] = [
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::MXFP4,
    DType::TQ1_0,
    DType::TQ2_0,
];

/// The i-quants on grids, which the fixture lacks: random blocks with finite scales.
const IQ_TYPES: [DType; 7] = [
    DType::IQ2_XXS,
    DType::IQ2_XS,
    DType::IQ2_S,
    DType::IQ3_XXS,
    DType::IQ3_S,
    DType::IQ1_S,
    DType::IQ1_M,
];

/// Real quantized blocks: the fixture's `<type>.quant` (8 rows of 1024) repeated. The fixture
/// lacks MXFP4, TQ1_0 and TQ2_0: for those, its Q8_0 input (the same 8 rows of 1024 values)
/// quantized by `mlmf_core::quant` (byte-identical to gguf-py's quantizer, tests/quantize.rs);
/// for [`IQ_TYPES`], which mlmf does not quantize, [`random_blocks`].
fn blocks(expected: &ModelFile, dtype: DType) -> Vec<u8> {
    if IQ_TYPES.contains(&dtype) {
        return random_blocks(dtype);
    }
    let copies = ELEMENTS / (8 * 1024);
    if let Ok(info) = expected.tensor(&format!("{}.quant", dtype.name())) {
        return expected.bytes(info).repeat(copies);
    }
    let input = expected.tensor("Q8_0.input").expect("fixture tensor");
    let values: Vec<f32> = expected
        .bytes(input)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let one = mlmf_core::quant::quantize(dtype, &values, 1024).expect("quantize");
    one.repeat(copies)
}

/// ELEMENTS elements of `dtype` (an i-quant) as xorshift bytes, each block's f16 scale made
/// finite as tests/data/block_types.py does (IQ1_M's d lies in the top nibbles of its last
/// four u16, its exponent's top bit in bit 6 of byte 55; the others' d is bytes 0..2).
fn random_blocks(dtype: DType) -> Vec<u8> {
    let size = dtype.block_bytes() as usize;
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes: Vec<u8> = (0..ELEMENTS / dtype.block_elems() as usize * size)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    for block in bytes.chunks_exact_mut(size) {
        let (high, at) = if dtype == DType::IQ1_M {
            ((block[53] >> 4) | (block[55] & 0xf0), 55)
        } else {
            (block[1], 1)
        };
        if high & 0x7c == 0x7c {
            block[at] &= !0x40;
        }
    }
    bytes
}

/// Rows of the matrix-vector product's W (ELEMENTS / ROWS columns).
const ROWS: usize = 4096;

/// gguf-py decoding `iters` times (followed by `W @ x` when `rows` is given); returns its own
/// timing of the loop.
fn gguf_py(dtype: DType, file: &Path, iters: u64, rows: Option<usize>) -> Duration {
    let mut args = vec![
        dtype.name().to_string(),
        file.display().to_string(),
        ELEMENTS.to_string(),
        iters.to_string(),
    ];
    args.extend(rows.map(|r| r.to_string()));
    let out = Command::new(common::python())
        .arg(common::workspace_dir().join("scripts/bench_gguf_py.py"))
        .args(&args)
        .output()
        .expect("run scripts/bench_gguf_py.py (run scripts/test.sh first to make the venv)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    Duration::from_secs_f64(v["seconds"].as_f64().expect("seconds"))
}

fn dequant(c: &mut Criterion) {
    let expected = ModelFile::open(common::fixtures().join("quant/expected.safetensors"))
        .expect("fixtures beside the checkout");
    let gpu = Device::gpu().expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    let dir = tempfile::tempdir().expect("temp dir");
    for dtype in TYPES.into_iter().chain(IQ_TYPES) {
        let bytes = blocks(&expected, dtype);
        let raw = dir.path().join(format!("{}.bin", dtype.name()));
        std::fs::write(&raw, &bytes).expect("write blocks");
        let shape = mlmf_core::Shape::new(vec![ELEMENTS / 1024, 1024]).expect("shape");
        let on_cpu =
            mlmf_gpu::Tensor::from_bytes("w", dtype, shape, bytes.clone()).expect("tensor");
        let on_gpu = on_cpu.to_device(&gpu).expect("upload");

        let mut group = c.benchmark_group(format!("dequant/{}", dtype.name()));
        group.throughput(Throughput::Bytes((ELEMENTS * 4) as u64));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(3));
        group.bench_function("gpu", |b| {
            b.iter(|| {
                let out = mlmf_gpu::ops::convert::to_f32(&on_gpu).expect("dequant");
                gpu.sync().expect("sync");
                out
            })
        });
        group.bench_function("cpu_twin", |b| {
            b.iter(|| mlmf_gpu::ops::convert::to_f32(&on_cpu).expect("dequant"))
        });
        group.bench_function("gguf_py", |b| {
            b.iter_custom(|iters| gguf_py(dtype, &raw, iters, None))
        });
        group.finish();

        // y = W x with W [ROWS, ELEMENTS / ROWS], read straight from its blocks.
        let cols = ELEMENTS / ROWS;
        let w_shape = mlmf_core::Shape::new(vec![ROWS, cols]).expect("shape");
        let w_cpu =
            mlmf_gpu::Tensor::from_bytes("w", dtype, w_shape, bytes.clone()).expect("tensor");
        let w_gpu = w_cpu.to_device(&gpu).expect("upload");
        let x: Vec<f32> = (0..cols).map(|i| (i % 7) as f32 - 3.0).collect();
        let x_cpu = mlmf_gpu::Tensor::from_f32("x", vec![cols], &x).expect("x");
        let x_gpu = x_cpu.to_device(&gpu).expect("upload x");
        let mut group = c.benchmark_group(format!("matvec/{}", dtype.name()));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(3));
        group.bench_function("gpu", |b| {
            b.iter(|| {
                let y = mlmf_gpu::ops::qmatmul::matmul(&w_gpu, &x_gpu).expect("matmul");
                gpu.sync().expect("sync");
                y
            })
        });
        // As a forward pass or ggml's batched graphs run them: BURST products recorded into the
        // device's batch, one wait; the time is per product.
        group.bench_function(format!("gpu_batched_{BURST}"), |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    let ys: Vec<_> = (0..BURST)
                        .map(|_| mlmf_gpu::ops::qmatmul::matmul(&w_gpu, &x_gpu).expect("matmul"))
                        .collect();
                    gpu.sync().expect("sync");
                    drop(ys);
                }
                start.elapsed() / BURST as u32
            })
        });
        group.bench_function("cpu_twin", |b| {
            b.iter(|| mlmf_gpu::ops::qmatmul::matmul(&w_cpu, &x_cpu).expect("matmul"))
        });
        group.bench_function("gguf_py", |b| {
            b.iter_custom(|iters| gguf_py(dtype, &raw, iters, Some(ROWS)))
        });
        group.finish();
    }
}

criterion_group!(benches, dequant);
criterion_main!(benches);
