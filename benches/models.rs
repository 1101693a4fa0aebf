//! Kernels that real models are built from, and (later) the models themselves, in one run.
//!
//! - matmul: `ops::matmul` in GFLOP/s (criterion's "elements" are floating-point operations,
//!   2·m·k·n per product) on square f32 products of 256, 512 and 1024, and a MiniLM-like
//!   `nn.Linear` shape, x `[128, 384]` times Wᵀ with W `[1536, 384]` (the feed-forward input of
//!   all-MiniLM-L6-v2 at 128 tokens): the GPU kernel (operands resident, the result left on the
//!   device and waited for), its CPU twin, and numpy's float32 `@` through
//!   `scripts/bench_matmul_numpy.py` (its own loop only, without start-up).
//!
//! `cargo bench --bench models -- matmul`.

mod common;

use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mlmf::ops::matmul::MatmulOptions;
use mlmf::{Device, Tensor};

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
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

/// numpy's time for `iters` products of this shape.
fn numpy_matmul(m: usize, k: usize, n: usize, trans_b: bool, iters: u64) -> Duration {
    let out = Command::new(common::python())
        .arg(common::manifest_dir().join("scripts/bench_matmul_numpy.py"))
        .args([m, k, n, usize::from(trans_b)].map(|v| v.to_string()))
        .arg(iters.to_string())
        .output()
        .expect("run scripts/bench_matmul_numpy.py (run scripts/test.sh first to make the venv)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["iters"], iters);
    Duration::from_secs_f64(v["seconds"].as_f64().expect("seconds"))
}

fn matmul(c: &mut Criterion) {
    let gpu = Device::gpu().expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    // (label, m, k, n, B transposed)
    let shapes = [
        ("square_256", 256, 256, 256, false),
        ("square_512", 512, 512, 512, false),
        ("square_1024", 1024, 1024, 1024, false),
        ("minilm_ffn_128x384_by_1536x384t", 128, 384, 1536, true),
    ];
    let mut group = c.benchmark_group("matmul");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    for (label, m, k, n, trans_b) in shapes {
        group.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        let b_dims = if trans_b { vec![n, k] } else { vec![k, n] };
        let a = Tensor::from_f32("a", vec![m, k], &values(m * k, 1)).expect("a");
        let b = Tensor::from_f32("b", b_dims, &values(k * n, 2)).expect("b");
        let options = MatmulOptions {
            trans_b,
            ..Default::default()
        };
        for (name, device) in [("gpu", &gpu), ("cpu_twin", &Device::Cpu)] {
            let (a, b) = (
                a.to_device(device).expect("a"),
                b.to_device(device).expect("b"),
            );
            group.bench_function(BenchmarkId::new(name, label), |bench| {
                bench.iter(|| {
                    let c = mlmf::ops::matmul::matmul(&a, &b, options).expect("matmul");
                    device.sync().expect("sync");
                    c
                })
            });
        }
        group.bench_function(BenchmarkId::new("numpy_f32", label), |bench| {
            bench.iter_custom(|iters| numpy_matmul(m, k, n, trans_b, iters))
        });
    }
    group.finish();
}

criterion_group!(benches, matmul);
criterion_main!(benches);
