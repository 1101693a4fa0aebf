//! Whisper's log-mel spectrogram of one 30 s window (80 bands), the GPU kernel beside its CPU
//! twin, in the same run: `cargo bench -p mlmf-gpu --bench mel`. The input is 30 s of a
//! deterministic chirp-like signal; the time includes building the padded window and the DFT
//! table on the host and, for the GPU, the upload and waiting for the result (not the readback).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use mlmf_gpu::ops::mel::{self, WINDOW_SAMPLES};
use mlmf_gpu::Device;

fn log_mel(c: &mut Criterion) {
    let samples: Vec<f32> = (0..WINDOW_SAMPLES)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            0.5 * (t * (200.0 + 50.0 * t) * std::f32::consts::TAU).sin()
        })
        .collect();
    let gpu = Device::gpu().expect("a GPU adapter");
    let mut group = c.benchmark_group(format!("log_mel_30s/{}", gpu.describe()));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("gpu", |b| {
        b.iter(|| {
            let out = mel::log_mel(&samples, 80, &gpu).expect("log-mel");
            gpu.sync().expect("sync");
            out
        })
    });
    group.bench_function("cpu_twin", |b| {
        b.iter(|| mel::log_mel(&samples, 80, &Device::Cpu).expect("log-mel"))
    });
    group.finish();
}

criterion_group!(benches, log_mel);
criterion_main!(benches);
