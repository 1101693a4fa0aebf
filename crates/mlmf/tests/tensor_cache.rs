//! The budgeted tensor cache (`mlmf::TensorCache`) on real model files: LRU eviction order,
//! pinning, background warming, single flight, tensors held past their eviction, the budget
//! checked against the allocator's own accounting (`Gpu::memory`) after every operation, bytes
//! of every returned tensor against the file's (the `safetensors` crate for safetensors files),
//! evict-and-retry when the device refuses memory, the CPU device, and a stress run of 8 threads.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::Duration;

use mlmf::cache::Transform;
use mlmf::{DType, Device, Error, Gpu, GpuOptions, ModelFile, Tensor, TensorCache};

const Q: &str = "encoder.layer.0.attention.self.query.weight";
const K: &str = "encoder.layer.0.attention.self.key.weight";
const V: &str = "encoder.layer.0.attention.self.value.weight";
const O: &str = "encoder.layer.0.attention.output.dense.weight";
/// Bytes of each of Q, K, V, O: f32 [384, 384]. The pool's bucket of this size is the size
/// itself (a multiple of 1/8 of 2^19), which `w_on` checks.
const W: u64 = 384 * 384 * 4;
const WORDS: &str = "embeddings.word_embeddings.weight";

fn minilm() -> Arc<ModelFile> {
    Arc::new(ModelFile::open(common::model(common::MINILM)).unwrap())
}

/// A fresh GPU device, so its allocator's accounting is the cache's alone.
fn fresh_gpu(options: &GpuOptions) -> (Device, Gpu) {
    let device = Device::gpu_with(options).expect("a GPU adapter (lavapipe in CI)");
    let Device::Gpu(gpu) = &device else {
        unreachable!()
    };
    let gpu = gpu.clone();
    (device, gpu)
}

/// The bytes of every tensor of a safetensors file, read by the `safetensors` crate.
struct Oracle {
    bytes: Vec<u8>,
}

impl Oracle {
    fn new(file: &ModelFile) -> Oracle {
        Oracle {
            bytes: std::fs::read(file.path()).unwrap(),
        }
    }

    fn tensor(&self, name: &str) -> Vec<u8> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        st.tensor(name).unwrap().data().to_vec()
    }
}

/// The file's own bytes of a contiguous tensor (GGUF, PyTorch): the span the parser found.
fn file_bytes(file: &ModelFile, name: &str) -> Vec<u8> {
    let info = file.tensor(name).unwrap();
    assert!(info.strides.is_none(), "{name} is a strided view");
    file.bytes(info).to_vec()
}

/// The budget holds by the cache's count and by the allocator's: what the device has handed
/// out is at most what it held before the cache (`base`) plus the budget. Every tensor the
/// tests hold came from the cache, so the budget counts it.
fn check_budget(cache: &TensorCache, gpu: Option<(&Gpu, u64)>) {
    let s = cache.stats();
    assert!(
        s.resident_bytes <= s.budget_bytes && s.peak_resident_bytes <= s.budget_bytes,
        "cache over budget: {s:?}"
    );
    if let Some((gpu, base)) = gpu {
        let m = gpu.memory();
        assert!(
            m.in_use_bytes <= base + s.budget_bytes,
            "device holds {} bytes in use, budget {} (+{base} before the cache)",
            m.in_use_bytes,
            s.budget_bytes
        );
    }
}

/// Run `f` on another thread; fail if it has not finished after `secs` (a deadlock).
fn with_watchdog(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => handle.join().unwrap(),
        // The thread panicked: its panic is the failure.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(e) = handle.join() {
                std::panic::resume_unwind(e)
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("no progress after {secs} s: deadlock"),
    }
}

fn w_on(t: &Tensor) {
    assert_eq!(
        t.resident_bytes(),
        W,
        "{t:?}: the pool rounded the test's size"
    );
}

#[test]
fn evicts_least_recently_used_first() {
    let file = minilm();
    let oracle = Oracle::new(&file);
    let (device, gpu) = fresh_gpu(&GpuOptions::default());
    let base = gpu.memory().in_use_bytes;
    let cache = TensorCache::new(&device, 3 * W);
    let get = |name: &str| {
        let t = cache.get(&file, name).unwrap();
        w_on(&t);
        assert_eq!(t.to_bytes().unwrap(), oracle.tensor(name), "{name}");
        drop(t);
        check_budget(&cache, Some((&gpu, base)));
    };
    get(Q);
    get(K);
    get(V);
    get(Q); // Q is now the most recent; K the least.
    get(O);
    let resident = |names: &[&str]| {
        names
            .iter()
            .map(|n| cache.contains(&file, n))
            .collect::<Vec<_>>()
    };
    assert_eq!(resident(&[Q, K, V, O]), vec![true, false, true, true]);
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.evictions), (1, 4, 1));
    assert_eq!(s.resident_bytes, 3 * W);
    assert_eq!(s.bytes_loaded, 4 * W);
    assert_eq!(
        s.resident_by_model,
        vec![(file.path().to_path_buf(), 3 * W)]
    );
    get(V);
    get(K); // Q (used before O and V) goes.
    assert_eq!(resident(&[Q, K, V, O]), vec![false, true, true, true]);
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.evictions), (2, 5, 2));
    assert_eq!(s.peak_resident_bytes, 3 * W);
}

#[test]
fn pinned_tensors_stay_and_a_full_budget_is_a_typed_error() {
    let file = minilm();
    let (device, gpu) = fresh_gpu(&GpuOptions::default());
    let base = gpu.memory().in_use_bytes;
    let cache = TensorCache::new(&device, 2 * W);
    drop(cache.pin(&file, Q).unwrap());
    drop(cache.get(&file, K).unwrap());
    drop(cache.get(&file, V).unwrap()); // K goes, not the older Q.
    check_budget(&cache, Some((&gpu, base)));
    assert!(cache.contains(&file, Q) && cache.contains(&file, V) && !cache.contains(&file, K));
    drop(cache.pin(&file, V).unwrap());
    match cache.get(&file, O) {
        Err(Error::CacheBudget {
            tensor,
            bytes,
            budget_bytes,
            reason,
        }) => {
            assert_eq!((tensor.as_str(), bytes, budget_bytes), (O, W, 2 * W));
            assert!(reason.contains("pinned"), "{reason}");
        }
        other => panic!("expected CacheBudget, got {other:?}"),
    }
    check_budget(&cache, Some((&gpu, base)));
    assert!(cache.unpin(&file, Q));
    assert!(!cache.unpin(&file, Q));
    drop(cache.get(&file, O).unwrap()); // Q, unpinned, goes.
    assert!(!cache.contains(&file, Q) && cache.contains(&file, V) && cache.contains(&file, O));
    check_budget(&cache, Some((&gpu, base)));

    // A whole model does not fit: the error names a tensor, and the call's pins are undone
    // (V, pinned before, stays pinned).
    assert!(matches!(
        cache.pin_model(&file),
        Err(Error::CacheBudget { .. })
    ));
    check_budget(&cache, Some((&gpu, base)));
    assert!(cache.unpin(&file, V));
    cache.evict_model(&file);
    assert_eq!(cache.stats().resident_bytes, 0);
    // evict_model drops unpinned entries and keeps pinned ones.
    drop(cache.pin(&file, K).unwrap());
    drop(cache.get(&file, V).unwrap());
    assert_eq!(cache.evict_model(&file), 1);
    assert!(cache.contains(&file, K) && !cache.contains(&file, V));
    cache.unpin_model(&file);
    assert_eq!(cache.evict_model(&file), 1);
    assert_eq!(cache.stats().resident_bytes, 0);
    check_budget(&cache, Some((&gpu, base)));
}

#[test]
fn a_tensor_larger_than_the_budget_is_a_typed_error() {
    let file = minilm();
    let cache = TensorCache::new(&Device::Cpu, 1_000_000);
    let words = file.tensor(WORDS).unwrap().byte_len();
    match cache.get(&file, WORDS) {
        Err(Error::CacheBudget {
            tensor,
            bytes,
            budget_bytes,
            ..
        }) => assert_eq!(
            (tensor.as_str(), bytes, budget_bytes),
            (WORDS, words, 1_000_000)
        ),
        other => panic!("expected CacheBudget, got {other:?}"),
    }
    assert!(matches!(
        cache.get(&file, "no.such.tensor"),
        Err(Error::TensorNotFound { .. })
    ));
    assert_eq!(cache.stats().misses, 0);
}

/// `get_many`: resident tensors are hits, the missing ones load together and enter the LRU order
/// in the order asked; a group larger than the budget is a typed error.
#[test]
fn get_many_loads_the_missing_together() {
    let file = minilm();
    let oracle = Oracle::new(&file);
    let (device, gpu) = fresh_gpu(&GpuOptions::default());
    let base = gpu.memory().in_use_bytes;
    let cache = TensorCache::new(&device, 3 * W);
    drop(cache.get(&file, V).unwrap());
    let got = cache.get_many(&file, &[Q, K, V]).unwrap();
    for (t, name) in got.iter().zip([Q, K, V]) {
        assert_eq!(t.name(), name);
        assert_eq!(t.to_bytes().unwrap(), oracle.tensor(name), "{name}");
    }
    drop(got);
    check_budget(&cache, Some((&gpu, base)));
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.bytes_loaded), (1, 3, 3 * W));
    // LRU order now Q, K, V (V was touched after Q and K were asked for, in list order).
    drop(cache.get_many(&file, &[O]).unwrap());
    assert!(!cache.contains(&file, Q) && cache.contains(&file, K) && cache.contains(&file, O));
    check_budget(&cache, Some((&gpu, base)));
    match cache.get_many(&file, &[Q, V, O, K]) {
        Err(Error::CacheBudget {
            bytes,
            budget_bytes,
            ..
        }) => {
            assert_eq!((bytes, budget_bytes), (W, 3 * W))
        }
        other => panic!("expected CacheBudget, got {other:?}"),
    }
    check_budget(&cache, Some((&gpu, base)));
}

#[test]
fn concurrent_gets_of_one_tensor_load_it_once() {
    let file = minilm();
    let oracle = Oracle::new(&file);
    let (device, gpu) = fresh_gpu(&GpuOptions::default());
    let base = gpu.memory().in_use_bytes;
    let cache = TensorCache::new(&device, 100_000_000);
    let applied = Arc::new(AtomicUsize::new(0));
    let count = applied.clone();
    let double = Transform::Custom {
        key: "count".into(),
        apply: Arc::new(move |t: Tensor| {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(t)
        }),
    };
    let barrier = Arc::new(Barrier::new(8));
    let got: Vec<(Arc<Tensor>, Arc<Tensor>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (cache, file, barrier, double) =
                    (cache.clone(), file.clone(), barrier.clone(), double.clone());
                s.spawn(move || {
                    barrier.wait();
                    let a = cache.get(&file, WORDS).unwrap();
                    let b = cache.get_with(&file, Q, double).unwrap();
                    (a, b)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (a, b) in &got {
        assert!(Arc::ptr_eq(a, &got[0].0) && Arc::ptr_eq(b, &got[0].1));
    }
    let s = cache.stats();
    assert_eq!((s.misses, s.hits), (2, 14), "{s:?}");
    assert_eq!(applied.load(Ordering::SeqCst), 1);
    assert_eq!(got[0].0.to_bytes().unwrap(), oracle.tensor(WORDS));
    assert_eq!(got[0].1.to_bytes().unwrap(), oracle.tensor(Q));
    check_budget(&cache, Some((&gpu, base)));
}

#[test]
fn warming_loads_in_the_background_once() {
    let file = minilm();
    let oracle = Oracle::new(&file);
    let (device, gpu) = fresh_gpu(&GpuOptions::default());
    let base = gpu.memory().in_use_bytes;
    let cache = TensorCache::new(&device, 10 * W);
    let names: Vec<String> = [Q, K, V].map(String::from).to_vec();
    cache.warm(&file, &names).unwrap();
    // Waits for the warm load of K (or finds it resident) instead of loading it again.
    let k = cache.get(&file, K).unwrap();
    cache.wait_warm();
    check_budget(&cache, Some((&gpu, base)));
    let s = cache.stats();
    // One load each: K was loaded by the warm thread (the get a hit) or by the get (the warm
    // job then found it resident).
    assert_eq!((s.misses, s.warm_errors), (3, 0), "{s:?}");
    assert!(s.hits <= 1, "{s:?}");
    assert_eq!(k.to_bytes().unwrap(), oracle.tensor(K));
    for name in [Q, V] {
        assert!(cache.contains(&file, name));
        assert_eq!(
            cache.get(&file, name).unwrap().to_bytes().unwrap(),
            oracle.tensor(name)
        );
    }
    assert_eq!(cache.stats().misses, 3);
    assert!(matches!(
        cache.warm(&file, &["no.such.tensor".to_string()]),
        Err(Error::TensorNotFound { .. })
    ));

    // A warm load that cannot finish (its transform waits for the test) blocks no `get` of
    // another tensor; the watchdog fails the test if it does.
    let (open, gate) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(gate));
    let blocked = Transform::Custom {
        key: "gated".into(),
        apply: Arc::new(move |t: Tensor| {
            gate.lock().unwrap().recv().unwrap();
            Ok(t)
        }),
    };
    cache
        .warm_with(&file, &[O.to_string()], blocked.clone())
        .unwrap();
    let (c, f) = (cache.clone(), file.clone());
    with_watchdog(120, move || {
        let t = c
            .get(&f, "encoder.layer.1.attention.self.query.weight")
            .unwrap();
        assert_eq!(t.dtype(), DType::F32);
    });
    open.send(()).unwrap();
    cache.wait_warm();
    let misses = cache.stats().misses;
    drop(cache.get_with(&file, O, blocked).unwrap()); // resident: no new load
    assert_eq!(cache.stats().misses, misses);
    assert_eq!(misses, 5);
    check_budget(&cache, Some((&gpu, base)));
}

#[test]
fn a_held_tensor_outlives_its_eviction_and_is_counted() {
    let file = minilm();
    let oracle = Oracle::new(&file);
    let (device, gpu) = fresh_gpu(&GpuOptions::default());
    let base = gpu.memory().in_use_bytes;
    let cache = TensorCache::new(&device, 2 * W);
    let q = cache.get(&file, Q).unwrap();
    assert_eq!(cache.evict_model(&file), 1);
    assert!(!cache.contains(&file, Q));
    let s = cache.stats();
    assert_eq!((s.evictions, s.resident_bytes), (1, W));
    check_budget(&cache, Some((&gpu, base)));
    assert_eq!(q.to_bytes().unwrap(), oracle.tensor(Q));

    // Asked for again while held: the same tensor comes back, without a load.
    let again = cache.get(&file, Q).unwrap();
    assert!(Arc::ptr_eq(&q, &again));
    assert_eq!(cache.stats().misses, 1);
    drop(again);
    assert_eq!(cache.evict_model(&file), 1);

    // Q (held) and K fill the budget; V evicts K, which nobody holds, and not Q.
    drop(cache.get(&file, K).unwrap());
    drop(cache.get(&file, V).unwrap());
    assert!(!cache.contains(&file, K) && cache.contains(&file, V));
    assert_eq!(cache.stats().resident_bytes, 2 * W);
    check_budget(&cache, Some((&gpu, base)));
    // Holding V too leaves nothing to evict.
    let v = cache.get(&file, V).unwrap();
    match cache.get(&file, O) {
        Err(Error::CacheBudget { reason, .. }) => {
            assert!(reason.contains("held by callers"), "{reason}")
        }
        other => panic!("expected CacheBudget, got {other:?}"),
    }
    assert_eq!(q.to_bytes().unwrap(), oracle.tensor(Q));
    drop((q, v));
    assert_eq!(cache.stats().resident_bytes, W);
    drop(cache.get(&file, O).unwrap());
    check_budget(&cache, Some((&gpu, base)));
}

/// Every tensor of MiniLM in a seeded order with repeats, under a 2 MB budget: the budget
/// holds after every call by both counts, every returned tensor is the file's, and the
/// tensors larger than the budget are typed errors naming them.
#[test]
fn budget_holds_after_every_call_and_bytes_are_the_files() {
    let file = minilm();
    let oracle = Oracle::new(&file);
    let (device, gpu) = fresh_gpu(&GpuOptions::default());
    let base = gpu.memory().in_use_bytes;
    let budget = 2_000_000;
    let cache = TensorCache::new(&device, budget);
    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    let mut s = 7u64;
    let mut held: Option<Arc<Tensor>> = None;
    let (mut ok, mut refused) = (0, 0);
    for i in 0..160 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let name = names[(s % names.len() as u64) as usize];
        let bytes = file.tensor(name).unwrap().byte_len();
        match cache.get(&file, name) {
            Ok(t) => {
                assert_eq!(t.to_bytes().unwrap(), oracle.tensor(name), "{name}");
                ok += 1;
                // Every third tensor is kept until the next call.
                held = (i % 3 == 0).then_some(t);
            }
            Err(Error::CacheBudget {
                tensor,
                bytes: b,
                budget_bytes,
                ..
            }) => {
                assert!(bytes > budget, "{name} ({bytes} bytes) refused");
                assert_eq!((tensor.as_str(), b, budget_bytes), (name, bytes, budget));
                refused += 1;
            }
            Err(e) => panic!("{name}: {e}"),
        }
        check_budget(&cache, Some((&gpu, base)));
    }
    drop(held);
    let st = cache.stats();
    assert!(ok > 100 && refused > 0 && st.evictions > 0, "{st:?}");
    assert_eq!(st.hits + st.misses, ok);
}

#[test]
fn transforms_are_part_of_the_key() {
    let file = Arc::new(ModelFile::open(common::model(common::SMOLLM2)).unwrap());
    let name = "blk.0.attn_q.weight";
    let info = file.tensor(name).unwrap().clone();
    assert_eq!(info.dtype, DType::Q4_1);
    let (device, _gpu) = fresh_gpu(&GpuOptions::default());
    let cache = TensorCache::new(&device, 10_000_000);
    let stored = cache.get(&file, name).unwrap();
    let f32s = cache.get_with(&file, name, Transform::Dequantize).unwrap();
    assert_eq!(stored.to_bytes().unwrap(), file_bytes(&file, name));
    assert_eq!((f32s.dtype(), f32s.shape()), (DType::F32, &info.shape));
    // The CPU decoder (checked against gguf-py in the dequant tests) on the file's bytes.
    let expected = mlmf::ops::convert::bytes_to_f32(DType::Q4_1, file.bytes(&info));
    let got: Vec<f32> = f32s
        .to_bytes()
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, expected);
    let again = cache.get_with(&file, name, Transform::Dequantize).unwrap();
    assert!(Arc::ptr_eq(&again, &f32s) && !Arc::ptr_eq(&again, &stored));
    let s = cache.stats();
    assert_eq!((s.misses, s.hits), (2, 1));
    assert_eq!(
        s.resident_bytes,
        stored.resident_bytes() + f32s.resident_bytes()
    );
}

/// The device refuses an allocation (the test hook): the cache evicts its least recently used
/// entry, empties the pool's cache and loads again; with nothing to evict the refusal is a
/// typed error naming the tensor.
#[test]
fn out_of_memory_evicts_and_retries() {
    let file = minilm();
    let oracle = Oracle::new(&file);
    let (device, gpu) = fresh_gpu(&GpuOptions::default());
    let base = gpu.memory().in_use_bytes;
    let cache = TensorCache::new(&device, 100_000_000);
    drop(cache.get(&file, Q).unwrap());
    drop(cache.get(&file, K).unwrap());
    gpu.fail_allocation(1);
    let v = cache.get(&file, V).unwrap();
    assert_eq!(v.to_bytes().unwrap(), oracle.tensor(V));
    assert_eq!(cache.stats().evictions, 1);
    assert!(!cache.contains(&file, Q) && cache.contains(&file, K));
    check_budget(&cache, Some((&gpu, base)));

    let empty = TensorCache::new(&device, 100_000_000);
    gpu.fail_allocation(1);
    match empty.get(&file, O) {
        Err(Error::CacheBudget {
            tensor,
            bytes,
            budget_bytes,
            reason,
        }) => {
            assert_eq!((tensor.as_str(), bytes, budget_bytes), (O, W, 100_000_000));
            assert!(reason.contains("out of memory"), "{reason}");
        }
        other => panic!("expected CacheBudget, got {other:?}"),
    }
}

/// A device with a memory limit of 4 tensors: the staging buffers of a load and the tensors
/// already cached pass it on the third load, which evicts and retries; a limit below one tensor
/// is a typed error.
#[test]
fn a_device_memory_limit_evicts_and_retries() {
    let file = minilm();
    let oracle = Oracle::new(&file);
    let (device, gpu) = fresh_gpu(&GpuOptions {
        memory_limit: Some(4 * W),
        ..Default::default()
    });
    let cache = TensorCache::new(&device, 100_000_000);
    for name in [Q, K, V, O] {
        let t = cache.get(&file, name).unwrap();
        assert_eq!(t.to_bytes().unwrap(), oracle.tensor(name), "{name}");
        let m = gpu.memory();
        assert!(m.in_use_bytes + m.cached_bytes <= 4 * W, "{m}");
    }
    let s = cache.stats();
    assert!(s.evictions >= 1 && s.misses == 4, "{s:?}");

    let (tiny, _) = fresh_gpu(&GpuOptions {
        memory_limit: Some(W / 2),
        ..Default::default()
    });
    let cache = TensorCache::new(&tiny, 100_000_000);
    assert!(matches!(
        cache.get(&file, Q),
        Err(Error::CacheBudget { tensor, .. }) if tensor == Q
    ));
}

#[test]
fn the_cpu_device_has_the_same_api() {
    let file = minilm();
    let oracle = Oracle::new(&file);
    let cache = TensorCache::new(&Device::Cpu, 2 * W);
    for name in [Q, K, V] {
        let t = cache.get(&file, name).unwrap();
        assert!(!t.device().is_gpu());
        assert_eq!(t.to_bytes().unwrap(), oracle.tensor(name));
        check_budget(&cache, None);
    }
    assert!(!cache.contains(&file, Q));
    drop(cache.pin(&file, K).unwrap());
    cache.warm(&file, &[O.to_string()]).unwrap();
    cache.wait_warm();
    assert!(cache.contains(&file, K) && cache.contains(&file, O) && !cache.contains(&file, V));
    let s = cache.stats();
    assert_eq!((s.misses, s.evictions, s.resident_bytes), (4, 2, 2 * W));
}

/// 8 threads issue seeded random gets, `get_many`s, pins (of tensors up to 1 MB, undone a few
/// calls later), and warms (a few tensors, or a whole model) over three real models, with a budget below
/// their sum, and keep the last tensor they got until their next call. Under a watchdog: every
/// call succeeds (the budget leaves room for what the threads hold and pin), the cache never
/// passes its budget, every tensor up to 3 MB is compared with the file's bytes (the larger
/// ones once each), and afterwards the device holds no more than the budget.
#[test]
fn stress_eight_threads_over_three_models() {
    let files: Vec<Arc<ModelFile>> = [common::MINILM, common::MOBILENET, common::SMOLLM2]
        .iter()
        .map(|m| Arc::new(ModelFile::open(common::model(m)).unwrap()))
        .collect();
    let total: u64 = files.iter().map(|f| f.data_bytes()).sum();
    let budget = 160_000_000;
    assert!(
        budget < total,
        "the budget must be below the models' {total} bytes"
    );
    let (device, gpu) = fresh_gpu(&GpuOptions::default());
    let base = gpu.memory().in_use_bytes;
    let cache = TensorCache::new(&device, budget);
    let checked_large = Arc::new(Mutex::new(HashSet::new()));
    let (c, fs, large) = (cache.clone(), files.clone(), checked_large.clone());
    with_watchdog(600, move || {
        std::thread::scope(|s| {
            for thread in 0..8u64 {
                let (cache, files, large) = (c.clone(), fs.clone(), large.clone());
                s.spawn(move || worker(thread, &cache, &files, &large));
            }
        });
        c.wait_warm();
    });
    check_budget(&cache, Some((&gpu, base)));
    let s = cache.stats();
    assert_eq!(s.warm_errors, 0, "{s:?}");
    assert!(s.evictions > 0 && s.hits > 0, "{s:?}");
    assert!(!checked_large.lock().unwrap().is_empty());
}

fn worker(
    thread: u64,
    cache: &TensorCache,
    files: &[Arc<ModelFile>],
    large: &Mutex<HashSet<(usize, String)>>,
) {
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ (thread + 1);
    let mut next = move |n: usize| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % n as u64) as usize
    };
    let mut held: Option<Arc<Tensor>> = None;
    let mut pins: Vec<(usize, String)> = Vec::new();
    for op in 0..120 {
        let f = next(files.len());
        let file = &files[f];
        let name = file.tensors()[next(file.tensors().len())].name.clone();
        match next(10) {
            0 => {
                if op % 2 == 0 {
                    cache.warm_model(file).unwrap();
                } else {
                    let names: Vec<String> = (0..3)
                        .map(|_| file.tensors()[next(file.tensors().len())].name.clone())
                        .collect();
                    cache.warm(file, &names).unwrap();
                }
            }
            3 => {
                // Up to three tensors of at most 4 MB together (repeats go one by one).
                let names: Vec<String> = (0..3)
                    .map(|_| file.tensors()[next(file.tensors().len())].name.clone())
                    .filter(|n| file.tensor(n).unwrap().byte_len() <= 4 << 20)
                    .collect();
                let got = cache
                    .get_many(file, &names)
                    .unwrap_or_else(|e| panic!("thread {thread} op {op}: {e}"));
                for (t, n) in got.iter().zip(&names) {
                    check_tensor(file, n, t, large, f);
                }
            }
            1 | 2 if file.tensor(&name).unwrap().byte_len() <= 1 << 20 => {
                let t = cache.pin(file, &name).unwrap();
                check_tensor(file, &name, &t, large, f);
                pins.push((f, name));
            }
            _ => {
                let t = cache
                    .get(file, &name)
                    .unwrap_or_else(|e| panic!("thread {thread} op {op}: {e}"));
                check_tensor(file, &name, &t, large, f);
                held = Some(t);
            }
        }
        if pins.len() > 2 {
            let (f, name) = pins.remove(0);
            cache.unpin(&files[f], &name);
        }
        let st = cache.stats();
        assert!(st.resident_bytes <= st.budget_bytes, "{st:?}");
        assert!(st.peak_resident_bytes <= st.budget_bytes, "{st:?}");
    }
    drop(held);
    for (f, name) in pins {
        cache.unpin(&files[f], &name);
    }
}

fn check_tensor(
    file: &ModelFile,
    name: &str,
    t: &Tensor,
    large: &Mutex<HashSet<(usize, String)>>,
    f: usize,
) {
    assert_eq!(t.name(), name);
    if t.byte_len() > 3 << 20 && !large.lock().unwrap().insert((f, name.to_string())) {
        return;
    }
    assert_eq!(t.to_bytes().unwrap(), file_bytes(file, name), "{name}");
}
