//! The tensor cache on a workload of three models (all-MiniLM-L6-v2, MobileNetV2, SmolLM2-135M
//! Q4_1): the seeded requests of `mlmf cache-sim` (`mlmf::cache::sim`: one in five a whole
//! model, the rest single tensors skewed towards the front of each file), replayed
//!
//! - through a `TensorCache` with a budget of half the three models' bytes,
//! - through a `TensorCache` with no budget to speak of (`u64::MAX`),
//! - without a cache: every request loads its tensors from the file again,
//!
//! on the GPU adapter and on the CPU device, in one run. Each iteration replays the whole
//! workload from an empty cache (a session of the application), so the cached columns include
//! their first loads. Criterion's "elements" are requests: its throughput is requests per second.
//! Before timing, each cached variant's hits, misses and evictions are printed.
//!
//! `cargo bench --bench cache`; `MLMF_BENCH_CACHE_REQUESTS` (default 100) and
//! `MLMF_BENCH_CACHE_SEED` (default 1) change the workload.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mlmf::cache::sim;
use mlmf::{Device, ModelFile, TensorCache};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench(c: &mut Criterion) {
    let files: Vec<Arc<ModelFile>> = [common::MINILM, common::MOBILENET, common::SMOLLM2]
        .iter()
        .map(|m| Arc::new(ModelFile::open(common::model(m)).expect("open")))
        .collect();
    let total: u64 = files.iter().map(|f| f.data_bytes()).sum();
    let half = total / 2;
    let count = env_u64("MLMF_BENCH_CACHE_REQUESTS", 100) as usize;
    let seed = env_u64("MLMF_BENCH_CACHE_SEED", 1);
    let requests = sim::workload(&files, count, seed);
    let gpu = Device::gpu().expect("a GPU adapter (lavapipe in CI)");
    // What reloading every request reads: each whole model's bytes, each single tensor's.
    let reload_bytes: u64 = requests
        .iter()
        .map(|r| match r {
            sim::Request::Model { file } => files[*file].data_bytes(),
            sim::Request::Tensor { file, tensor } => {
                files[*file].tensor(tensor).expect("tensor").byte_len()
            }
        })
        .sum();
    println!(
        "cache workload: {count} requests (seed {seed}), {} whole-model; models {total} bytes, \
         half budget {half}; reloading every request reads {reload_bytes} bytes",
        requests
            .iter()
            .filter(|r| matches!(r, sim::Request::Model { .. }))
            .count()
    );

    let mut group = c.benchmark_group(format!("cache/three_models_{count}_requests"));
    group.throughput(Throughput::Elements(count as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for (label, device) in [("gpu", &gpu), ("cpu", &Device::Cpu)] {
        for (name, budget) in [("half_budget", half), ("unbounded", u64::MAX)] {
            let r =
                sim::replay(&TensorCache::new(device, budget), &files, &requests).expect("replay");
            let s = &r.stats;
            println!(
                "{label}/{name}: {} tensors handed out, {} hits, {} misses, {} evictions, {} \
                 bytes loaded, peak resident {}",
                r.tensors, s.hits, s.misses, s.evictions, s.bytes_loaded, s.peak_resident_bytes
            );
            group.bench_function(format!("{label}/{name}"), |b| {
                b.iter(|| {
                    sim::replay(&TensorCache::new(device, budget), &files, &requests)
                        .expect("replay")
                })
            });
        }
        group.bench_function(format!("{label}/reload_every_request"), |b| {
            b.iter(|| sim::replay_uncached(device, &files, &requests).expect("replay"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
