//! Whisper tiny.en (`models::whisper::Whisper`, the CTranslate2 files of `whisper-tiny.en-ct2` in
//! the model cache) on jfk.wav (11 s), on the GPU adapter (lavapipe where there is no GPU) and
//! on the CPU twins, beside faster-whisper 1.2.1 (CTranslate2 4.8.5 on the CPU, float32, 2
//! threads, greedy) on the same files in the same run, in parts:
//!
//! - `encode`: `Whisper::encode` of the 30-s window (log-mel included), until the device has
//!   finished; faster-whisper: `encode` of its features (`features`, its numpy log-mel, is
//!   printed apart so the two can be added).
//! - `decode`: greedy decoding from one fixed encoder output (`Whisper::decode`; faster-whisper:
//!   `generate` with the same prompt, suppression and `max_length=448`).
//! - `transcribe`: the whole file (`Whisper::transcribe_file`; faster-whisper: `transcribe` with
//!   its segments consumed; both decode the WAV). mlmf's time to first token is
//!   `Transcript::timing.first_token` of those runs; faster-whisper's, its `first_token` part
//!   (log-mel + encode + one decoding step).
//!
//! Every part is also printed as a real-time factor: seconds of compute per second of audio,
//! the mean over all the runs criterion made (warm-up included). faster-whisper runs in
//! `scripts/bench_whisper_fw.py --serve`, one process with the model loaded once, timed in its
//! own loop, with the python of `scripts/faster_whisper_venv.sh` (`$MLMF_FW_PYTHON`, else
//! `<model cache>/faster-whisper-venv/bin/python`); without that venv its columns are left out,
//! with a line saying why. `MLMF_BENCH_NO_CPU=1` leaves out the CPU twins.
//!
//! `bash scripts/faster_whisper_venv.sh && cargo bench -p mlmf --bench whisper` (numbers in
//! BENCHMARKS.md).

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use mlmf::models::whisper::{TranscribeOptions, Whisper};
use mlmf::Device;

/// The python of the faster-whisper venv: `$MLMF_FW_PYTHON`, else where
/// `scripts/faster_whisper_venv.sh` makes it by default.
fn fw_python() -> PathBuf {
    std::env::var_os("MLMF_FW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::models_dir().join("faster-whisper-venv/bin/python"))
}

/// A running `scripts/bench_whisper_fw.py --serve`: model loaded once, each part timed on
/// request.
struct FasterWhisper {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The script's first line: every part timed once after its warm-up, the text, versions.
    summary: serde_json::Value,
}

impl FasterWhisper {
    fn start(file: &Path, model: &Path) -> Result<FasterWhisper, String> {
        let python = fw_python();
        if !python.is_file() {
            return Err(format!(
                "{} not found (run `bash scripts/faster_whisper_venv.sh`, or set MLMF_FW_PYTHON)",
                python.display()
            ));
        }
        let mut child = Command::new(&python)
            .arg(common::workspace_dir().join("scripts/bench_whisper_fw.py"))
            .arg(file)
            .arg("1")
            .arg("--model")
            .arg(model)
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {}: {e}", python.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("no pipes to the script".into());
        };
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        let summary: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("bench_whisper_fw.py failed (see its stderr above)".into());
            }
        };
        Ok(FasterWhisper {
            child,
            stdin,
            stdout,
            summary,
        })
    }

    /// The script's own time for `iters` runs of `part`.
    fn time(&mut self, part: &str, iters: u64) -> Duration {
        writeln!(self.stdin, "{part} {iters}").expect("write to the script");
        self.stdin.flush().expect("write to the script");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read from the script");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json from the script");
        assert_eq!(v["part"], part);
        assert_eq!(v["iters"], iters);
        Duration::from_secs_f64(v["seconds"].as_f64().expect("seconds"))
    }
}

impl Drop for FasterWhisper {
    fn drop(&mut self) {
        // It may be in the middle of a timing; it holds nothing that needs a clean exit.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every run one column made, warm-up included.
#[derive(Default)]
struct Tally {
    runs: u64,
    total: Duration,
}

impl Tally {
    fn add(&mut self, runs: u64, time: Duration) -> Duration {
        self.runs += runs;
        self.total += time;
        time
    }

    fn mean(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.total.as_secs_f64() / self.runs as f64)
    }
}

/// One row of the summary: mean seconds per run of each part.
#[derive(Default)]
struct Row {
    encode: Tally,
    decode: Tally,
    first_token: Tally,
    /// The decoder's first step alone (`Decoded::first_token`; faster-whisper's
    /// `first_token_decode`).
    first_step: Tally,
    transcribe: Tally,
    tokens: usize,
    text: String,
}

fn cell(seconds: Option<f64>, audio: f64) -> String {
    match seconds {
        Some(s) => format!("{:>8.3} s (RTF {:>6.3})", s, s / audio),
        None => format!("{:>22}", "-"),
    }
}

fn whisper(c: &mut Criterion) {
    let file = common::fixtures().join("preprocess/audio/jfk.wav");
    let dir = common::models_dir().join("whisper-tiny.en-ct2");
    assert!(
        dir.join("model.bin").is_file(),
        "{} is missing: run `python3 scripts/fetch_models.py` first",
        dir.display()
    );
    let audio = mlmf::multimodal::decode_audio(&file).expect("decode jfk.wav");
    assert_eq!(audio.sample_rate, 16_000, "jfk.wav is 16 kHz");
    let window = audio.mono();
    let seconds = window.len() as f64 / 16_000.0;
    let options = TranscribeOptions::default();

    let gpu = Device::gpu().expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    let mut devices = vec![("mlmf_gpu", gpu)];
    if std::env::var("MLMF_BENCH_NO_CPU").is_err() {
        devices.push(("mlmf_cpu_twin", Device::Cpu));
    }
    let models: Vec<(&str, Whisper)> = devices
        .iter()
        .map(|(label, device)| {
            let started = Instant::now();
            let model = Whisper::load(&dir, device).expect("load whisper-tiny.en-ct2");
            println!(
                "{label}: {} (loaded in {:.2} s)",
                device.describe(),
                started.elapsed().as_secs_f64()
            );
            (*label, model)
        })
        .collect();
    let mut rows: Vec<Row> = models.iter().map(|_| Row::default()).collect();

    let mut fw = match FasterWhisper::start(&file, &dir) {
        Ok(fw) => {
            let s = &fw.summary;
            let ms = |part: &str| s["per_run"][part].as_f64().unwrap_or(f64::NAN) * 1e3;
            println!(
                "faster_whisper: faster-whisper {}, ctranslate2 {}, cpu, float32, {} threads; \
                 one run each after a warm-up: features {:.1} ms, encode {:.1} ms, decode {:.1} \
                 ms ({} tokens), first token {:.1} ms (its decoding step alone {:.1} ms), \
                 transcribe {:.1} ms",
                s["faster_whisper"],
                s["ctranslate2"],
                s["cpu_threads"],
                ms("features"),
                ms("encode"),
                ms("decode"),
                s["n_tokens"],
                ms("first_token"),
                ms("first_token_decode"),
                ms("transcribe"),
            );
            Some(fw)
        }
        Err(why) => {
            println!("faster_whisper left out: {why}");
            None
        }
    };
    let mut fw_row = Row::default();
    let mut fw_features = Tally::default();

    let configure = |group: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>| {
        // The CPU twins take seconds per run: ten runs per column, one each.
        group.sample_size(10);
        group.sampling_mode(SamplingMode::Flat);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(3));
    };

    let mut group = c.benchmark_group("whisper_tiny_en_jfk/encode");
    configure(&mut group);
    for ((label, model), row) in models.iter().zip(rows.iter_mut()) {
        group.bench_function(*label, |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    let out = model.encode(&window).expect("encode");
                    model.device().sync().expect("sync");
                    drop(out);
                }
                row.encode.add(iters, started.elapsed())
            })
        });
    }
    if let Some(fw) = fw.as_mut() {
        group.bench_function("faster_whisper", |b| {
            b.iter_custom(|iters| fw_row.encode.add(iters, fw.time("encode", iters)))
        });
        fw_features.add(3, fw.time("features", 3));
    }
    group.finish();

    let mut group = c.benchmark_group("whisper_tiny_en_jfk/decode");
    configure(&mut group);
    for ((label, model), row) in models.iter().zip(rows.iter_mut()) {
        let encoded = model.encode(&window).expect("encode");
        if let Device::Gpu(g) = model.device() {
            // What each part asks of the GPU: issue 15's per-launch overhead, counted.
            let before = g.stats();
            let again = model.encode(&window).expect("encode");
            model.device().sync().expect("sync");
            drop(again);
            let encode = g.stats().since(&before);
            let before = g.stats();
            let steps = model
                .decode(&encoded, &options)
                .expect("decode")
                .tokens
                .len()
                + 1;
            let decode = g.stats().since(&before);
            println!("{label} encode: {encode}");
            println!("{label} decode: {decode}");
            println!(
                "{label} decode: {steps} steps, {:.0} dispatches and {:.0} submissions per step",
                decode.dispatches as f64 / steps as f64,
                decode.submits as f64 / steps as f64
            );
        }
        group.bench_function(*label, |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                let mut first_step = Duration::ZERO;
                for _ in 0..iters {
                    first_step += model
                        .decode(&encoded, &options)
                        .expect("decode")
                        .first_token;
                }
                let elapsed = started.elapsed();
                row.first_step.add(iters, first_step);
                row.decode.add(iters, elapsed)
            })
        });
    }
    if let Some(fw) = fw.as_mut() {
        group.bench_function("faster_whisper", |b| {
            b.iter_custom(|iters| fw_row.decode.add(iters, fw.time("decode", iters)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("whisper_tiny_en_jfk/transcribe");
    configure(&mut group);
    for ((label, model), row) in models.iter().zip(rows.iter_mut()) {
        group.bench_function(*label, |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let transcript = model.transcribe_file(&file, &options).expect("transcribe");
                    elapsed += started.elapsed();
                    row.first_token.add(1, transcript.timing.first_token);
                    row.tokens = transcript.tokens.len();
                    row.text = transcript.text;
                }
                row.transcribe.add(iters, elapsed)
            })
        });
    }
    if let Some(fw) = fw.as_mut() {
        group.bench_function("faster_whisper", |b| {
            b.iter_custom(|iters| fw_row.transcribe.add(iters, fw.time("transcribe", iters)))
        });
        fw_row.first_token.add(5, fw.time("first_token", 5));
        fw_row.first_step.add(5, fw.time("first_token_decode", 5));
        fw_row.tokens = fw.summary["n_tokens"].as_u64().unwrap_or(0) as usize;
        fw_row.text = fw.summary["text"].as_str().unwrap_or("?").to_string();
    }
    group.finish();

    // Rows that ran (a criterion filter may leave some out), faster-whisper last.
    let mut labelled: Vec<(&str, &Row)> = models.iter().map(|(l, _)| *l).zip(&rows).collect();
    if fw.is_some() {
        labelled.push(("faster_whisper", &fw_row));
    }
    labelled.retain(|(_, row)| row.encode.runs + row.decode.runs + row.transcribe.runs > 0);
    if labelled.is_empty() {
        return;
    }
    println!(
        "\nwhisper tiny.en, jfk.wav ({seconds:.2} s of audio): mean per run over every run \
         above (warm-up included); RTF = seconds of compute per second of audio"
    );
    println!(
        "{:<16} {:>22} {:>22} {:>22} {:>22}  tokens",
        "", "encode", "decode", "first token", "transcribe"
    );
    for (label, row) in &labelled {
        println!(
            "{label:<16} {} {} {} {}  {}",
            cell(row.encode.mean(), seconds),
            cell(row.decode.mean(), seconds),
            cell(row.first_token.mean(), seconds),
            cell(row.transcribe.mean(), seconds),
            row.tokens
        );
    }
    for (label, row) in &labelled {
        if let Some(s) = row.first_step.mean() {
            println!("{label}: decoder's first step alone {:.1} ms", s * 1e3);
        }
    }
    if fw.is_some() {
        println!(
            "faster_whisper's encode excludes its log-mel ({:.1} ms per run, numpy); mlmf's \
             includes it",
            fw_features.mean().unwrap_or(f64::NAN) * 1e3
        );
    }
    if let Some(fw_total) = fw_row.transcribe.mean() {
        for ((label, _), row) in models.iter().zip(&rows) {
            if let Some(total) = row.transcribe.mean() {
                println!(
                    "{label}: transcribe {:.2}x faster-whisper's time (target: within 3x)",
                    total / fw_total
                );
            }
        }
    }
    for (label, row) in &labelled {
        if !row.text.is_empty() {
            println!("{label}: {:?}", row.text);
        }
    }
}

criterion_group!(benches, whisper);
criterion_main!(benches);
