//! LoRA, in the same run:
//!
//! - merge: a rank-16 adapter over every q/k/v/o projection of SmolLM2 (30 layers x 4 = 120
//!   matrices, 26.5 M weights), `W + s·B·A` on weights already decoded to f32 and resident: the
//!   GPU kernel, its CPU twin, and PEFT's merge arithmetic (`W + (B @ A) * scaling`) in numpy
//!   float32 through `scripts/bench_lora_numpy.py` (PyTorch is not in the bench venv). Also the
//!   whole path from the Q4_1 file (load, decode, merge, F16 out) on GPU and CPU.
//! - runtime: the adapter part of a batch of 32 rows mixing 4 resident rank-16 adapters and the
//!   base on SmolLM2's `blk.0.attn_q` (576 x 576): one batched gathered launch (BGMV) against one
//!   launch per adapter, each over the rows of its adapter.
//!
//! `cargo bench --bench lora` (numbers in BENCHMARKS.md).

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mlmf::lora::{LoraAdapter, MergeOptions};
use mlmf::ops::lora::NO_ADAPTER;
use mlmf::{DType, Device, ModelFile, Tensor};

const RANK: usize = 16;
const PROJECTIONS: [(&str, &str); 4] = [
    ("q_proj", "attn_q"),
    ("k_proj", "attn_k"),
    ("v_proj", "attn_v"),
    ("o_proj", "attn_output"),
];

fn smollm2() -> ModelFile {
    ModelFile::open(common::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf"))
        .expect("SmolLM2 (run python3 scripts/fetch_models.py)")
}

/// Deterministic values in [-0.05, 0.05).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

/// A rank-16 PEFT adapter over every q/k/v/o projection of `base`, written into `dir`.
fn write_adapter(dir: &std::path::Path, base: &ModelFile) {
    let layers = base
        .metadata()
        .get("llama.block_count")
        .and_then(|v| v.as_u64())
        .expect("block_count") as usize;
    let mut tensors = Vec::new();
    for layer in 0..layers {
        for (hf, gguf) in PROJECTIONS {
            let info = base
                .tensor(&format!("blk.{layer}.{gguf}.weight"))
                .expect("tensor");
            let &[out, inp] = info.shape.dims() else {
                panic!("not a matrix")
            };
            let module = format!("base_model.model.model.layers.{layer}.self_attn.{hf}");
            let seed = (layer * 4 + tensors.len()) as u64;
            for (kind, dims) in [("lora_A", vec![RANK, inp]), ("lora_B", vec![out, RANK])] {
                let n = dims.iter().product();
                let bytes: Vec<u8> = values(n, seed * 2 + 1)
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                tensors.push((format!("{module}.{kind}.weight"), dims, bytes));
            }
        }
    }
    let mut writer = mlmf::SafetensorsWriter::new(Default::default());
    for (name, dims, bytes) in &tensors {
        writer.add_tensor(name.clone(), DType::F32, dims, bytes);
    }
    writer
        .write(dir.join("adapter_model.safetensors"))
        .expect("write adapter");
    let config = serde_json::json!({"peft_type": "LORA", "r": RANK, "lora_alpha": 32,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]});
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).expect("config");
}

fn numpy_merge(iters: u64) -> Duration {
    let out = Command::new(common::python())
        .arg(common::workspace_dir().join("scripts/bench_lora_numpy.py"))
        .arg(common::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf"))
        .arg(RANK.to_string())
        .arg(iters.to_string())
        .output()
        .expect("run scripts/bench_lora_numpy.py (run scripts/test.sh first to make the venv)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["targets"], 120);
    Duration::from_secs_f64(v["seconds"].as_f64().expect("seconds"))
}

fn merge(c: &mut Criterion) {
    let base = smollm2();
    let dir = tempfile::tempdir().expect("temp dir");
    write_adapter(dir.path(), &base);
    let adapter = LoraAdapter::open(dir.path()).expect("adapter");
    let bound = adapter.bind(&base).expect("bind");
    assert_eq!(bound.targets().len(), 120);
    let gpu = Device::gpu().expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    let weights: usize = bound
        .targets()
        .iter()
        .map(|t| t.module.out_features * t.module.in_features)
        .sum();

    // Resident f32 weights and the adapter's matrices, on each device.
    let resident = |device: &Device| -> Vec<(Tensor, Tensor, Tensor, f32)> {
        bound
            .targets()
            .iter()
            .map(|t| {
                let m = t.module;
                let w = mlmf::ops::convert::to_f32(&device.load(&base, &t.tensor).expect("load"))
                    .expect("decode");
                let a = Tensor::from_f32("a", vec![m.rank, m.in_features], &m.a).expect("a");
                let b = Tensor::from_f32("b", vec![m.out_features, m.rank], &t.b).expect("b");
                (
                    w,
                    a.to_device(device).expect("a"),
                    b.to_device(device).expect("b"),
                    m.scale,
                )
            })
            .collect()
    };
    let on_gpu = resident(&gpu);
    let on_cpu = resident(&Device::Cpu);

    let mut group = c.benchmark_group("lora_merge/smollm2_qkvo_r16");
    group.throughput(Throughput::Elements(weights as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    let run = |set: &[(Tensor, Tensor, Tensor, f32)], device: &Device| {
        for (w, a, b, s) in set {
            let merged = mlmf::ops::lora::merge(w, a, b, *s, false).expect("merge");
            drop(merged);
        }
        device.sync().expect("sync");
    };
    group.bench_function("gpu", |bench| bench.iter(|| run(&on_gpu, &gpu)));
    group.bench_function("cpu_twin", |bench| {
        bench.iter(|| run(&on_cpu, &Device::Cpu))
    });
    group.bench_function("numpy_peft_arithmetic", |bench| {
        bench.iter_custom(numpy_merge)
    });
    group.finish();

    let mut group = c.benchmark_group("lora_merge_from_file/smollm2_qkvo_r16_q4_1_to_f16");
    group.throughput(Throughput::Elements(weights as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for (label, device) in [("gpu", gpu.clone()), ("cpu_twin", Device::Cpu)] {
        group.bench_function(label, |bench| {
            bench.iter(|| {
                for t in bound.targets() {
                    let merged =
                        mlmf::lora::merge_target(&device, &base, t, &MergeOptions::default())
                            .expect("merge");
                    drop(merged);
                }
                device.sync().expect("sync");
            })
        });
    }
    group.finish();
}

fn runtime(c: &mut Criterion) {
    let base = smollm2();
    let gpu = Device::gpu().expect("a GPU adapter");
    let w = gpu.load(&base, "blk.0.attn_q.weight").expect("load");
    let &[out, inp] = w.shape().dims() else {
        panic!("not a matrix")
    };
    let (slots, batch) = (4usize, 32usize);
    let stack = |name: &str, dims: Vec<usize>, seed: u64| {
        let n = dims.iter().product();
        Tensor::from_f32(name, dims, &values(n, seed))
            .expect("stack")
            .to_device(&gpu)
            .expect("upload")
    };
    let a = stack("a", vec![slots, RANK, inp], 7);
    let b = stack("b", vec![slots, out, RANK], 8);
    let scales = vec![2.0f32; slots];
    let x = stack("x", vec![batch, inp], 9);
    let y = mlmf::ops::qmatmul::matmul(&w, &x).expect("base");
    // Row i: adapter i % 5, where 4 means the base alone.
    let rows: Vec<u32> = (0..batch as u32)
        .map(|i| if i % 5 == 4 { NO_ADAPTER } else { i % 5 })
        .collect();

    let mut group = c.benchmark_group("lora_runtime/smollm2_attn_q_batch32_4x_r16");
    group.throughput(Throughput::Elements(batch as u64));
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("bgmv_one_launch", |bench| {
        bench.iter(|| {
            let out = mlmf::ops::lora::bgmv(&y, &x, &rows, &a, &b, &scales, None).expect("bgmv");
            gpu.sync().expect("sync");
            out
        })
    });
    group.bench_function("one_launch_per_adapter", |bench| {
        bench.iter(|| {
            let mut acc = None;
            for s in 0..slots as u32 {
                let mine: Vec<u32> = rows
                    .iter()
                    .map(|&r| if r == s { s } else { NO_ADAPTER })
                    .collect();
                let prev = acc.as_ref().unwrap_or(&y);
                let next =
                    mlmf::ops::lora::bgmv(prev, &x, &mine, &a, &b, &scales, None).expect("bgmv");
                acc = Some(next);
            }
            gpu.sync().expect("sync");
            acc
        })
    });
    group.finish();
}

criterion_group!(benches, merge, runtime);
criterion_main!(benches);
