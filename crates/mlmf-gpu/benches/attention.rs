//! Attention at Whisper's decoder shapes (cross-attention of Lq 1, 64 and 448 queries over
//! Lk 1500 audio frames, 6 heads of 64) and a video shape (Lq 16 over Lk 4096 patches): the
//! fused online-softmax kernel beside the three-pass path on the GPU, and the CPU twins, in the
//! same run: `cargo bench -p mlmf-gpu --bench attention`. Inputs are on the device already; the
//! time runs until the device has finished (no readback). Throughput counts `4 * B * H * Lq *
//! Lk * head_dim` floating-point operations (the two products), so criterion's `elem/s` reads
//! as FLOP/s.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mlmf_gpu::ops::attention::{self, AttnPath, MaskedOptions};
use mlmf_gpu::{Device, Tensor};

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

fn tensor(device: &Device, name: &str, dims: Vec<usize>, seed: u64) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_f32(name, dims, &values(n, seed))
        .and_then(|t| t.to_device(device))
        .expect("upload")
}

fn attention_paths(c: &mut Criterion) {
    let gpu = Device::gpu().expect("a GPU adapter");
    let cpu_twin = std::env::var("MLMF_BENCH_NO_CPU").is_err();
    let (heads, head_dim) = (6, 64);
    let hidden = heads * head_dim;
    for (name, seq_q, seq_k) in [
        ("whisper_lq1", 1, 1500),
        ("whisper_lq64", 64, 1500),
        ("whisper_lq448", 448, 1500),
        ("video_lq16_lk4096", 16, 4096),
    ] {
        let flops = 4 * heads as u64 * seq_q as u64 * seq_k as u64 * head_dim as u64;
        let mut group = c.benchmark_group(format!("attention/{name}"));
        group.throughput(Throughput::Elements(flops));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(3));
        let mut devices = vec![("gpu", gpu.clone())];
        if cpu_twin {
            devices.push(("cpu_twin", Device::Cpu));
        }
        for (place, device) in devices {
            let q = tensor(&device, "q", vec![1, seq_q, hidden], 1);
            let k = tensor(&device, "k", vec![1, seq_k, hidden], 2);
            let v = tensor(&device, "v", vec![1, seq_k, hidden], 3);
            for (path_name, path) in [
                ("three_pass", AttnPath::ThreePass),
                ("fused", AttnPath::Fused),
            ] {
                let options = MaskedOptions {
                    path,
                    ..Default::default()
                };
                group.bench_function(format!("{place}/{path_name}"), |b| {
                    b.iter(|| {
                        let out =
                            attention::masked(&q, &k, &v, heads, &options).expect("attention");
                        device.sync().expect("sync");
                        out
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, attention_paths);
criterion_main!(benches);
