//! Whisper's log-mel spectrogram of one 30 s window (80 bands), the GPU kernel beside its CPU
//! twin and beside faster-whisper 1.2.1's numpy `FeatureExtractor` (the fixture's generator,
//! vendored unmodified, through `scripts/mel_faster_whisper.py --bench`: its own loop only,
//! without start-up; left out, with a line saying why, when `$MLMF_PYTHON` cannot run it), in
//! the same run: `cargo bench -p mlmf-gpu --bench mel`. The input is 30 s of a deterministic
//! chirp-like signal (the script makes the same one); the time includes building the padded
//! window and the tables on the host and, for the GPU, the upload and waiting for the result
//! (not the readback).

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use mlmf_gpu::ops::mel::{self, WINDOW_SAMPLES};
use mlmf_gpu::Device;

/// faster-whisper's extractor's time for `iters` windows, or why it cannot run.
fn numpy(iters: u64) -> Result<Duration, String> {
    let out = Command::new(common::python())
        .arg(common::workspace_dir().join("scripts/mel_faster_whisper.py"))
        .args(["--bench", &iters.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    v["seconds"]
        .as_f64()
        .map(Duration::from_secs_f64)
        .ok_or_else(|| "no seconds in the output".to_string())
}

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
    match numpy(1) {
        Ok(_) => {
            group.bench_function("faster_whisper_numpy", |b| {
                b.iter_custom(|iters| numpy(iters).expect("mel_faster_whisper.py"))
            });
        }
        Err(why) => println!("faster-whisper's numpy extractor left out: {why}"),
    }
    group.finish();
}

criterion_group!(benches, log_mel);
criterion_main!(benches);
