//! Audio decode + mix to mono + resample to 16 kHz (what a speech model's input needs), mlmf
//! (`decode_audio`: symphonia; `resample`: its own Kaiser windowed sinc) beside Python's
//! soundfile (libsndfile) + python-soxr on the same files in the same run, through
//! `scripts/bench_audio_py.py` (its own loop only, without start-up; left out, with a line saying
//! why, when `$MLMF_PYTHON` cannot import soundfile and soxr).
//!
//! `cargo bench -p mlmf --bench audio` (numbers, as multiples of real time, in BENCHMARKS.md).

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use mlmf::multimodal::{decode_audio, resample};

const FILES: [&str; 4] = ["jfk_stereo_44k_s24.wav", "jfk.flac", "jfk.mp3", "jfk.ogg"];

/// soundfile + soxr's time for `iters` runs on `path`, or why it cannot run.
fn python(path: &Path, iters: u64) -> Result<Duration, String> {
    let out = Command::new(common::python())
        .arg(common::workspace_dir().join("scripts/bench_audio_py.py"))
        .arg(path)
        .arg(iters.to_string())
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

fn decode_resample(c: &mut Criterion) {
    let dir = common::fixtures().join("media/audio");
    let mut group = c.benchmark_group("decode_resample_16k");
    group.sample_size(20);
    for name in FILES {
        let path = dir.join(name);
        let audio = decode_audio(&path).expect("decode");
        println!(
            "{name}: {} Hz, {} channel(s), {:.3} s of audio",
            audio.sample_rate,
            audio.num_channels(),
            audio.len() as f64 / f64::from(audio.sample_rate)
        );
        group.bench_function(format!("{name}/mlmf"), |b| {
            b.iter(|| {
                let audio = decode_audio(&path).expect("decode");
                resample(&audio.mono(), audio.sample_rate, 16_000).expect("resample")
            })
        });
        match python(&path, 1) {
            Ok(_) => {
                group.bench_function(format!("{name}/soundfile_soxr"), |b| {
                    b.iter_custom(|iters| python(&path, iters).expect("bench_audio_py.py"))
                });
            }
            Err(why) => println!("{name}: soundfile + soxr left out: {why}"),
        }
    }
    group.finish();
}

criterion_group!(benches, decode_resample);
criterion_main!(benches);
