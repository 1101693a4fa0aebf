//! Kernels that real models are built from, and the models themselves, in one run.
//!
//! - matmul: `ops::matmul` in GFLOP/s (criterion's "elements" are floating-point operations,
//!   2·m·k·n per product) on square f32 products of 256, 512 and 1024, and a MiniLM-like
//!   `nn.Linear` shape, x `[128, 384]` times Wᵀ with W `[1536, 384]` (the feed-forward input of
//!   all-MiniLM-L6-v2 at 128 tokens): the GPU kernel (operands resident, the result left on the
//!   device and waited for), its CPU twin, and numpy's float32 `@` through
//!   `scripts/bench_matmul_numpy.py` (its own loop only, without start-up).
//!
//! - models: all-MiniLM-L6-v2 sentences per second (the fixture's four sentences per batch,
//!   tokenization to pooled embeddings) and MobileNetV2 images per second (one preprocessed
//!   224x224 image, forward to logits), on the GPU adapter and on the CPU twins, and beside
//!   PyTorch (`scripts/bench_models_torch.py`: transformers' BertModel and torchvision's
//!   mobilenet_v2 on the same weights and input) on the CPU, and on CUDA where there is one, when
//!   `$MLMF_PYTHON` can import torch; otherwise those columns are left out, with a line saying why.
//!
//! `cargo bench --bench models` (`-- matmul` or `-- models` for one part).

#[path = "../../../tests/common/mod.rs"]
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
        .arg(common::workspace_dir().join("scripts/bench_matmul_numpy.py"))
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
            if device.is_gpu() {
                // Four products recorded into the batch, one wait (as ggml's batched graphs):
                // the time is per product.
                group.bench_function(BenchmarkId::new("gpu_batched_4", label), |bench| {
                    bench.iter_custom(|iters| {
                        let start = std::time::Instant::now();
                        for _ in 0..iters {
                            let cs: Vec<_> = (0..4)
                                .map(|_| mlmf::ops::matmul::matmul(&a, &b, options).expect("mm"))
                                .collect();
                            device.sync().expect("sync");
                            drop(cs);
                        }
                        start.elapsed() / 4
                    })
                });
            }
        }
        group.bench_function(BenchmarkId::new("numpy_f32", label), |bench| {
            bench.iter_custom(|iters| numpy_matmul(m, k, n, trans_b, iters))
        });
    }
    group.finish();
}

/// A running `scripts/bench_models_torch.py`: the model loaded once, then timed for each count of
/// iterations written to its stdin.
struct Torch {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Torch {
    /// Start the script on `args` and wait until its model is loaded; `Err` says why PyTorch
    /// cannot run here.
    fn start(args: &[String]) -> Result<Torch, String> {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = Command::new(common::python())
            .arg(common::workspace_dir().join("scripts/bench_models_torch.py"))
            .args(args)
            .args(if args[0] == "minilm" {
                &SENTENCES[..]
            } else {
                &[]
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {}: {e}", common::python().display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("no pipes to the script".into());
        };
        let mut stdout = std::io::BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|_| format!("bench_models_torch.py {args:?} failed (see its stderr)"))?;
        if let Some(why) = v["unavailable"].as_str() {
            let _ = child.wait();
            return Err(why.to_string());
        }
        Ok(Torch {
            child,
            stdin,
            stdout,
        })
    }

    /// The script's own time for `iters` iterations, and its line describing what ran them.
    fn time(&mut self, iters: u64) -> (Duration, String) {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{iters}").expect("write to the script");
        self.stdin.flush().expect("write to the script");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read from the script");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json from the script");
        assert_eq!(v["iters"], iters);
        let text = |key: &str| v[key].as_str().unwrap_or("?").to_string();
        let info = format!(
            "pytorch {} on {}: torch {}, {} threads",
            text("model"),
            text("device"),
            text("torch"),
            v["threads"]
        );
        let seconds = v["seconds"].as_f64().expect("seconds");
        (Duration::from_secs_f64(seconds), info)
    }
}

impl Drop for Torch {
    fn drop(&mut self) {
        // The script may be in the middle of a timing; it holds nothing that needs a clean exit.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PyTorch columns for one model: `torch_<device>` for each device where the script runs.
fn torch_columns(
    group: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    args: impl Fn(&str) -> Vec<String>,
) {
    for device in ["cpu", "cuda"] {
        let args = args(device);
        match Torch::start(&args) {
            Ok(mut torch) => {
                eprintln!("{}", torch.time(1).1);
                group.bench_function(format!("torch_{device}"), |b| {
                    b.iter_custom(|iters| torch.time(iters).0)
                });
            }
            Err(why) => eprintln!("pytorch {} on {device} left out: {why}", args[0]),
        }
    }
}

const SENTENCES: [&str; 4] = [
    "A man is playing a guitar on the street.",
    "The quick brown fox jumps over the lazy dog.",
    "GPU kernels decode quantized weights straight from the file.",
    "Hello, world! How are you today?",
];

/// What the first run of `f` and a repeated one ask of the GPU (buffers, bind groups,
/// dispatches, submissions, waits), printed before the timings: issue 15's per-launch overhead,
/// counted, with the pool on and off.
fn print_launches(gpu: &Device, what: &str, f: impl Fn()) {
    let Device::Gpu(g) = gpu else { return };
    // Only this model's buffers: what an earlier model left cached goes back to the driver.
    g.empty_cache();
    g.reset_peak_memory();
    for run in ["first", "second", "third"] {
        let before = g.stats();
        f();
        println!("{what} on the GPU, {run}: {}", g.stats().since(&before));
    }
    println!("{what}: memory after three forwards {}", g.memory());
}

/// The default GPU and the same adapter with the pool and batch off (as `MLMF_POOL=off`), for
/// side-by-side timings in one run.
fn gpus() -> [(&'static str, Device); 2] {
    let gpu = |pool| {
        Device::gpu_with(&mlmf::GpuOptions {
            pool: Some(pool),
            ..Default::default()
        })
        .expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)")
    };
    [("gpu", gpu(true)), ("gpu_pool_off", gpu(false))]
}

fn models(c: &mut Criterion) {
    use mlmf::models::{bert::BertEmbedder, cache_dir, mobilenet_v2::MobileNetV2};
    let [gpu, gpu_off] = gpus();
    let devices = [gpu, gpu_off, ("cpu_twin", Device::Cpu)];
    let mut group = c.benchmark_group("models/minilm_4_sentences");
    group.throughput(Throughput::Elements(SENTENCES.len() as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for (label, device) in devices.clone() {
        let model = BertEmbedder::open(cache_dir().join("all-MiniLM-L6-v2"), &device)
            .expect("all-MiniLM-L6-v2 (run python3 scripts/fetch_models.py)");
        print_launches(
            &device,
            &format!("MiniLM, one batch of 4 sentences ({label})"),
            || {
                model.embed(&SENTENCES).expect("embed");
            },
        );
        group.bench_function(label, |b| {
            b.iter(|| model.embed(&SENTENCES).expect("embed"))
        });
    }
    let dir = cache_dir().join("all-MiniLM-L6-v2");
    torch_columns(&mut group, |device| {
        vec!["minilm".into(), dir.display().to_string(), device.into()]
    });
    group.finish();

    let file = mlmf::ModelFile::open(cache_dir().join("mobilenet_v2-b0353104.pth"))
        .expect("MobileNetV2 (run python3 scripts/fetch_models.py)");
    let x = mlmf::multimodal::ImagePreprocess::imagenet()
        .load(cache_dir().join("skimage-data/chelsea.png"))
        .expect("chelsea.png")
        .reshape(vec![1, 3, 224, 224])
        .expect("reshape");
    let mut group = c.benchmark_group("models/mobilenet_v2_1_image");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for (label, device) in devices {
        let model = MobileNetV2::load(&file, &device).expect("load");
        print_launches(
            &device,
            &format!("MobileNetV2, one image to logits ({label})"),
            || {
                model
                    .forward(&x)
                    .expect("forward")
                    .to_f32_vec()
                    .expect("logits");
            },
        );
        group.bench_function(label, |b| {
            b.iter(|| {
                model
                    .forward(&x)
                    .expect("forward")
                    .to_f32_vec()
                    .expect("logits")
            })
        });
    }
    let input = tempfile::NamedTempFile::new().expect("temp file");
    let bytes: Vec<u8> = x
        .to_f32_vec()
        .expect("input")
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(input.path(), bytes).expect("write input");
    let pth = cache_dir().join("mobilenet_v2-b0353104.pth");
    torch_columns(&mut group, |device| {
        vec![
            "mobilenet".into(),
            pth.display().to_string(),
            input.path().display().to_string(),
            device.into(),
        ]
    });
    group.finish();
}

criterion_group!(benches, matmul, models);
criterion_main!(benches);
