//! Frame extraction, frames per second, in the same run:
//!
//! - `mlmf`: [`mlmf::multimodal::video::open_video`] and every frame to RGB8 (MP4 only with
//!   `--features video`);
//! - `ffmpeg_cli`: `ffmpeg -loglevel error -i FILE -fps_mode passthrough -f rawvideo -pix_fmt
//!   rgb24 -` as a subprocess, its output read and dropped (process start included). Skipped
//!   with a note when no `ffmpeg` command is installed;
//! - `ffmpeg_cli_1_frame`: the same command with `-frames:v 1`, i.e. what starting ffmpeg and
//!   opening the file cost, to be subtracted from `ffmpeg_cli` for its decoding rate.
//!
//! `cargo bench -p mlmf --features video --bench frames` (numbers in BENCHMARKS.md).

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mlmf::multimodal::video::open_video;

fn decode_all(path: &Path) -> u64 {
    let mut source = open_video(path).expect("open");
    let mut n = 0;
    while let Some(frame) = source.next_frame().expect("frame") {
        std::hint::black_box(&frame.rgb);
        n += 1;
    }
    n
}

fn ffmpeg_cli(path: &Path, limit: &[&str]) -> u64 {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-i"])
        .arg(path)
        .args(limit)
        .args([
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("ffmpeg");
    assert!(out.status.success());
    out.stdout.len() as u64
}

fn has_ffmpeg() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn bench(c: &mut Criterion) {
    let dir = common::fixtures().join("media/video");
    let mut files = vec![("newtonscradle.gif", 36u64)];
    if cfg!(feature = "video") {
        files.insert(0, ("realshort.mp4", 36));
    } else {
        eprintln!("frames: realshort.mp4 needs `--features video`; GIF only");
    }
    let ffmpeg = has_ffmpeg();
    if !ffmpeg {
        eprintln!("frames: no ffmpeg command; the baseline is skipped");
    }
    for (name, frames) in files {
        let path = dir.join(name);
        assert_eq!(decode_all(&path), frames);
        let mut group = c.benchmark_group(format!("frames/{name}"));
        group.throughput(Throughput::Elements(frames));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(3));
        group.bench_function("mlmf", |b| b.iter(|| decode_all(&path)));
        if ffmpeg {
            group.bench_function("ffmpeg_cli", |b| b.iter(|| ffmpeg_cli(&path, &[])));
            group.bench_function("ffmpeg_cli_1_frame", |b| {
                b.iter(|| ffmpeg_cli(&path, &["-frames:v", "1"]))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
