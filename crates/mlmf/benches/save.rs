//! Saving real models, in the same run, GB/s of tensor data written (every writer fsyncs):
//!
//! - `mlmf_from_mmap`: every tensor of the file straight from its memory map through
//!   [`mlmf::SafetensorsWriter`] (or [`mlmf::GgufWriter`] for the GGUF models, whose blocks
//!   safetensors has no dtype for; atomic: temporary file, fsync, rename, fsync of the directory);
//! - `mlmf_from_gpu`: the same tensors loaded on the GPU first (not timed), read back chunk by
//!   chunk while writing;
//! - `python_safetensors`: Python `safetensors.numpy.save_file` of the same tensors
//!   (`scripts/bench_save_py.py`; GGUF blocks as uint8 arrays), then `os.fsync`;
//! - `file_copy`: `std::fs::copy` of the model file, then fsync.
//!
//! And hashing, GB/s of the file: `mlmf_content_hash` ([`mlmf::provenance::content_hash`], what
//! `mlmf verify` computes: sha256 of every tensor straight from the memory map) beside the
//! `sha256sum` command on the same file (page cache warm for both).
//!
//! `cargo bench --bench save` (numbers in BENCHMARKS.md).

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mlmf::{Device, Format, GgufWriter, ModelFile, SafetensorsWriter, TensorSource};

const MODELS: [&str; 3] = [
    "all-MiniLM-L6-v2/model.safetensors",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma-3-270m-q4_k_m.gguf",
];

fn python_save(model: &Path, out: &Path, iters: u64) -> Duration {
    let result = Command::new(common::python())
        .arg(common::workspace_dir().join("scripts/bench_save_py.py"))
        .arg(model)
        .arg(out)
        .arg(iters.to_string())
        .output()
        .expect("run scripts/bench_save_py.py (run scripts/test.sh first to make the venv)");
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&result.stdout).expect("json");
    Duration::from_secs_f64(v["seconds"].as_f64().expect("seconds"))
}

/// Write `file`'s tensors from `sources` at `out`, in `file`'s format (GGUF blocks have no
/// safetensors dtype).
fn save(file: &ModelFile, sources: Vec<TensorSource<'_>>, out: &Path) {
    if file.format() == Format::Gguf {
        let mut writer = GgufWriter::new(file.metadata().clone());
        for (t, s) in file.tensors().iter().zip(sources) {
            writer.add_tensor(t.name.clone(), t.dtype, t.shape.dims(), s);
        }
        writer.write(out).expect("save");
    } else {
        let mut writer = SafetensorsWriter::new(Default::default());
        for (t, s) in file.tensors().iter().zip(sources) {
            writer.add_tensor(t.name.clone(), t.dtype, t.shape.dims(), s);
        }
        writer.write(out).expect("save");
    }
}

fn bench(c: &mut Criterion) {
    let gpu = Device::gpu().expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("temp dir");
    for name in MODELS {
        let path: PathBuf = common::models_dir().join(name);
        let file = ModelFile::open(&path).expect("model (run python3 scripts/fetch_models.py)");
        let out = dir.path().join(if file.format() == Format::Gguf {
            "out.gguf"
        } else {
            "out.safetensors"
        });
        let py_out = dir.path().join("py.safetensors");
        let bytes = file.data_bytes();
        let on_gpu = gpu.load_all(&file).expect("load");

        let label = name.split('/').next().unwrap_or(name);
        let mut group = c.benchmark_group(format!("save/{label}"));
        group.throughput(Throughput::Bytes(bytes));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(5));
        group.bench_function("mlmf_from_mmap", |b| {
            b.iter(|| {
                let sources = file
                    .tensors()
                    .iter()
                    .map(|t| TensorSource::Bytes(file.bytes(t)))
                    .collect();
                save(&file, sources, &out)
            })
        });
        group.bench_function("mlmf_from_gpu", |b| {
            b.iter(|| {
                let sources = on_gpu.iter().map(TensorSource::Tensor).collect();
                save(&file, sources, &out)
            })
        });
        group.bench_function("python_safetensors", |b| {
            b.iter_custom(|iters| python_save(&path, &py_out, iters))
        });
        let copy = dir.path().join("copy.bin");
        group.bench_function("file_copy", |b| {
            b.iter(|| {
                std::fs::copy(&path, &copy).expect("copy");
                std::fs::File::open(&copy)
                    .and_then(|f| f.sync_all())
                    .expect("fsync");
            })
        });
        group.finish();

        let mut group = c.benchmark_group(format!("hash/{label}"));
        group.throughput(Throughput::Bytes(
            std::fs::metadata(&path).expect("size").len(),
        ));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(5));
        group.bench_function("mlmf_content_hash", |b| {
            b.iter(|| mlmf::provenance::content_hash(&file).expect("hash"))
        });
        group.bench_function("sha256sum", |b| {
            b.iter(|| {
                let out = Command::new("sha256sum")
                    .arg(&path)
                    .output()
                    .expect("sha256sum");
                assert!(out.status.success());
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
