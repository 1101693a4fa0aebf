//! A tensor cache with a byte budget over one device: tensors of several model files are loaded
//! on demand from their memory maps (the streaming loader, [`Device::load`]), kept while there is
//! room, and the least recently used unpinned ones are evicted to make room for new ones.
//!
//! - The cost of an entry is [`Tensor::resident_bytes`]: the GPU pages as the device's pool sized
//!   them, or the host bytes on the CPU device. The budget counts the cached entries, tensors
//!   evicted while a caller still holds them (a returned [`Arc<Tensor>`] stays valid after
//!   eviction and is counted until its last clone drops), and room reserved by loads in flight.
//!   Before a load the cache reserves the tensor's bytes (plus the f32 result's for
//!   [`Transform::Dequantize`]), evicting as needed, and it admits the result by its exact size,
//!   evicting more if the pool's rounding needs it; so the budget holds after every call (while
//!   a load runs, the device also holds its staging buffers and up to 1/8 of rounding). A
//!   [`Transform::Custom`] is counted from its result: while it runs, the device holds its input
//!   and its output.
//! - Concurrent requests of one key load it once (single flight); the cache's lock is never held
//!   while loading. [`TensorCache::warm`] loads in a background thread;
//!   [`TensorCache::get_many`] loads the missing tensors of a list in one streaming load.
//! - Eviction is least recently used, so a model streamed through a budget smaller than itself
//!   evicts its own earlier tensors (BENCHMARKS.md, "Tensor cache", measures what that costs).
//! - A load the device refuses ([`Error::OutOfMemory`]: the device, or its
//!   [`GpuOptions::memory_limit`](crate::GpuOptions::memory_limit)) evicts the least recently used
//!   unpinned entry, gives the pool's cached free buffers back to the driver
//!   ([`Gpu::empty_cache`](crate::Gpu::empty_cache)) and tries again; with nothing left to evict
//!   it is [`Error::CacheBudget`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use mlmf::{Device, ModelFile, TensorCache};
//! let cache = TensorCache::new(&Device::gpu()?, 500_000_000);
//! let file = Arc::new(ModelFile::open("model.safetensors")?);
//! let w = cache.get(&file, "embeddings.word_embeddings.weight")?;
//! println!("{w:?}; {:?}", cache.stats());
//! # Ok::<(), mlmf::Error>(())
//! ```

mod load;
pub mod sim;

use load::Slot;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex, Weak};

use serde::Serialize;

use crate::{Device, Error, ModelFile, Result, Tensor};

/// What is done to a tensor after loading it; part of the cache key.
#[derive(Clone)]
pub enum Transform {
    /// The tensor as the file stores it.
    Stored,
    /// Converted to f32 on the device ([`ops::convert::to_f32`](crate::ops::convert::to_f32):
    /// GGML blocks dequantized, other numbers converted).
    Dequantize,
    /// Any function of the loaded tensor, e.g. a LoRA merge; `key` names it in the cache key, so
    /// two functions must not share a key.
    Custom {
        key: String,
        apply: Arc<dyn Fn(Tensor) -> Result<Tensor> + Send + Sync>,
    },
}

impl fmt::Debug for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transform::Stored => write!(f, "Stored"),
            Transform::Dequantize => write!(f, "Dequantize"),
            Transform::Custom { key, .. } => write!(f, "Custom({key:?})"),
        }
    }
}

impl Transform {
    fn key(&self) -> TransformKey {
        match self {
            Transform::Stored => TransformKey::Stored,
            Transform::Dequantize => TransformKey::Dequantize,
            Transform::Custom { key, .. } => TransformKey::Custom(key.clone()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum TransformKey {
    Stored,
    Dequantize,
    Custom(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    path: PathBuf,
    tensor: String,
    transform: TransformKey,
}

/// What the cache has done so far, for an application to show.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CacheStats {
    /// Requests met by a resident tensor (or by a load another request had started).
    pub hits: u64,
    /// Loads from a file (background warming included).
    pub misses: u64,
    /// Entries dropped from the cache to make room, or by [`TensorCache::evict_model`].
    pub evictions: u64,
    /// Bytes read from files by those loads (the tensors' own bytes).
    pub bytes_loaded: u64,
    /// Wall time spent in those loads (transforms included), summed over threads.
    pub load_seconds: f64,
    /// Background loads that failed (the error is dropped; a later `get` reports it).
    pub warm_errors: u64,
    /// What the budget counts now: entries, evicted tensors still held by callers, and room
    /// reserved by loads in flight.
    pub resident_bytes: u64,
    /// The most `resident_bytes` has been.
    pub peak_resident_bytes: u64,
    pub budget_bytes: u64,
    /// Resident bytes (entries and held evicted tensors) per model file, by path.
    pub resident_by_model: Vec<(PathBuf, u64)>,
}

/// A budgeted cache of tensors on one device. Cheap to clone (clones share the cache); `Send`
/// and `Sync`.
#[derive(Clone)]
pub struct TensorCache {
    inner: Arc<Inner>,
}

// Shared across threads by design; a field that broke this would fail here.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<TensorCache>();
};

struct Inner {
    device: Device,
    budget: u64,
    state: Mutex<State>,
    /// Signalled when a reservation is released or a warm job ends.
    changed: Condvar,
    /// The background loader, started by the first `warm`.
    warmer: Mutex<Option<mpsc::Sender<Job>>>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    /// Evicted while a caller held them: counted until the last clone drops.
    held: Vec<Held>,
    loading: HashMap<Key, Arc<Slot>>,
    reserved: u64,
    tick: u64,
    warming: u64,
    stats: CacheStats,
}

struct Entry {
    tensor: Arc<Tensor>,
    bytes: u64,
    last_used: u64,
    pinned: bool,
}

struct Held {
    key: Key,
    tensor: Weak<Tensor>,
    bytes: u64,
}

struct Job {
    file: Arc<ModelFile>,
    tensor: String,
    transform: Transform,
}

impl State {
    /// Bytes the budget counts now; forgets held tensors whose last clone dropped.
    fn resident(&mut self) -> u64 {
        self.held.retain(|h| h.tensor.strong_count() > 0);
        let entries: u64 = self.entries.values().map(|e| e.bytes).sum();
        let held: u64 = self.held.iter().map(|h| h.bytes).sum();
        entries + held + self.reserved
    }

    fn note_peak(&mut self) {
        let r = self.resident();
        self.stats.peak_resident_bytes = self.stats.peak_resident_bytes.max(r);
    }

    /// The least recently used entry whose eviction frees memory: unpinned, and held by no caller
    /// (evicting a held one would free nothing). Only the cache can clone an entry's `Arc`, under
    /// this lock, so a count of 1 stays 1 while the lock is held.
    fn victim(&self) -> Option<Key> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.pinned && Arc::strong_count(&e.tensor) == 1)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(k, _)| k.clone())
    }

    /// Remove `key`'s entry; the tensor is returned so the caller drops it after the lock.
    fn evict(&mut self, key: &Key) -> Option<Arc<Tensor>> {
        let e = self.entries.remove(key)?;
        self.stats.evictions += 1;
        if Arc::strong_count(&e.tensor) > 1 {
            self.held.push(Held {
                key: key.clone(),
                tensor: Arc::downgrade(&e.tensor),
                bytes: e.bytes,
            });
        }
        Some(e.tensor)
    }

    /// Why nothing more can be evicted, for [`Error::CacheBudget`].
    fn why_full(&self) -> String {
        let pinned: u64 = self
            .entries
            .values()
            .filter(|e| e.pinned)
            .map(|e| e.bytes)
            .sum();
        let held: u64 = self
            .entries
            .values()
            .filter(|e| !e.pinned)
            .map(|e| e.bytes)
            .sum::<u64>()
            + self.held.iter().map(|h| h.bytes).sum::<u64>();
        format!(
            "nothing left to evict: {pinned} bytes pinned, {held} bytes held by callers, {} bytes \
             reserved by loads in flight",
            self.reserved
        )
    }
}

impl TensorCache {
    /// A cache of at most `budget_bytes` on `device` (device memory on a GPU, host memory on the
    /// CPU).
    pub fn new(device: &Device, budget_bytes: u64) -> TensorCache {
        TensorCache {
            inner: Arc::new(Inner {
                device: device.clone(),
                budget: budget_bytes,
                state: Mutex::new(State {
                    stats: CacheStats {
                        budget_bytes,
                        ..Default::default()
                    },
                    ..Default::default()
                }),
                changed: Condvar::new(),
                warmer: Mutex::new(None),
            }),
        }
    }

    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    pub fn budget_bytes(&self) -> u64 {
        self.inner.budget
    }

    /// The tensor as stored, resident or loaded now. Errors: no such tensor
    /// ([`Error::TensorNotFound`](crate::Error) and the like from [`ModelFile::tensor`]), no room
    /// ([`Error::CacheBudget`]), and the loader's errors.
    pub fn get(&self, file: &Arc<ModelFile>, tensor: &str) -> Result<Arc<Tensor>> {
        self.inner
            .fetch(file, tensor, &Transform::Stored, false, false)
    }

    /// The tensor after `transform`, cached under the transform's key.
    pub fn get_with(
        &self,
        file: &Arc<ModelFile>,
        tensor: &str,
        transform: Transform,
    ) -> Result<Arc<Tensor>> {
        self.inner.fetch(file, tensor, &transform, false, false)
    }

    /// Several tensors of one file, as stored, in the order given: the resident ones at once,
    /// the missing ones together in one streaming load ([`Device::load_list`]: one staging ring
    /// and one wait on a GPU instead of one per tensor). All of them are held at once, so their
    /// bytes together must fit the budget beside what is pinned and held
    /// ([`Error::CacheBudget`] otherwise); stream a larger model in groups.
    pub fn get_many<S: AsRef<str>>(
        &self,
        file: &Arc<ModelFile>,
        names: &[S],
    ) -> Result<Vec<Arc<Tensor>>> {
        self.inner.fetch_many(file, names)
    }

    /// Like [`TensorCache::get`], and keep the tensor until [`TensorCache::unpin`]: pinned
    /// entries are never evicted, and count against the budget.
    pub fn pin(&self, file: &Arc<ModelFile>, tensor: &str) -> Result<Arc<Tensor>> {
        self.pin_with(file, tensor, Transform::Stored)
    }

    pub fn pin_with(
        &self,
        file: &Arc<ModelFile>,
        tensor: &str,
        transform: Transform,
    ) -> Result<Arc<Tensor>> {
        self.inner.fetch(file, tensor, &transform, true, false)
    }

    /// Let the tensor be evicted again. Returns whether it was pinned.
    pub fn unpin(&self, file: &ModelFile, tensor: &str) -> bool {
        self.unpin_with(file, tensor, &Transform::Stored)
    }

    pub fn unpin_with(&self, file: &ModelFile, tensor: &str, transform: &Transform) -> bool {
        let key = key(file, tensor, transform);
        let mut s = self.inner.lock();
        match s.entries.get_mut(&key) {
            Some(e) if e.pinned => {
                e.pinned = false;
                true
            }
            _ => false,
        }
    }

    /// Whether the tensor (as stored) is resident now.
    pub fn contains(&self, file: &ModelFile, tensor: &str) -> bool {
        let key = key(file, tensor, &Transform::Stored);
        self.inner.lock().entries.contains_key(&key)
    }

    /// Load `names` (as stored) in a background thread, in order, without blocking `get`s; a
    /// `get` of a tensor being warmed waits for that load instead of loading it again. Errors
    /// (at once): a name the file does not have. Load errors are counted in
    /// [`CacheStats::warm_errors`].
    pub fn warm(&self, file: &Arc<ModelFile>, names: &[String]) -> Result<()> {
        self.warm_with(file, names, Transform::Stored)
    }

    /// Like [`TensorCache::warm`], each tensor after `transform`.
    pub fn warm_with(
        &self,
        file: &Arc<ModelFile>,
        names: &[String],
        transform: Transform,
    ) -> Result<()> {
        for name in names {
            file.tensor(name)?;
        }
        let mut warmer = self.inner.warmer.lock().unwrap_or_else(|e| e.into_inner());
        if warmer.is_none() {
            *warmer = Some(spawn_warmer(Arc::downgrade(&self.inner))?);
        }
        let Some(tx) = warmer.as_ref() else {
            return Ok(());
        };
        for name in names {
            self.inner.lock().warming += 1;
            let job = Job {
                file: file.clone(),
                tensor: name.clone(),
                transform: transform.clone(),
            };
            if tx.send(job).is_err() {
                // The thread is gone (it only ends with the cache); nothing will run the job.
                self.inner.lock().warming -= 1;
            }
        }
        Ok(())
    }

    /// Wait until every tensor handed to [`TensorCache::warm`] so far has been loaded (or has
    /// failed).
    pub fn wait_warm(&self) {
        let mut s = self.inner.lock();
        while s.warming > 0 {
            s = self
                .inner
                .changed
                .wait(s)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Load and pin every tensor of the file. Errors: what [`TensorCache::pin`] reports for the
    /// first tensor that fails; the tensors this call pinned are unpinned again then.
    pub fn pin_model(&self, file: &Arc<ModelFile>) -> Result<()> {
        let mut pinned_here = Vec::new();
        for info in file.tensors() {
            let was = self.is_pinned(file, &info.name);
            if let Err(e) = self.pin(file, &info.name) {
                for name in pinned_here {
                    self.unpin(file, name);
                }
                return Err(e);
            }
            if !was {
                pinned_here.push(info.name.as_str());
            }
        }
        Ok(())
    }

    /// Unpin every tensor of the file (every transform).
    pub fn unpin_model(&self, file: &ModelFile) {
        let mut s = self.inner.lock();
        for (k, e) in s.entries.iter_mut() {
            if k.path == file.path() {
                e.pinned = false;
            }
        }
    }

    /// Warm every tensor of the file, in file order (see [`TensorCache::warm`]).
    pub fn warm_model(&self, file: &Arc<ModelFile>) -> Result<()> {
        let names: Vec<String> = file.tensors().iter().map(|t| t.name.clone()).collect();
        self.warm(file, &names)
    }

    /// Drop the file's unpinned entries (every transform); returns how many. Pinned ones stay
    /// until unpinned (then they are evicted like any other). A tensor a caller still holds
    /// stays valid and counted until dropped.
    pub fn evict_model(&self, file: &ModelFile) -> usize {
        let mut s = self.inner.lock();
        let keys: Vec<Key> = s
            .entries
            .iter()
            .filter(|(k, e)| k.path == file.path() && !e.pinned)
            .map(|(k, _)| k.clone())
            .collect();
        let dropped: Vec<_> = keys.iter().filter_map(|k| s.evict(k)).collect();
        drop(s);
        dropped.len()
    }

    pub fn stats(&self) -> CacheStats {
        let mut s = self.inner.lock();
        let resident = s.resident();
        let mut by_model: HashMap<PathBuf, u64> = HashMap::new();
        for (k, e) in &s.entries {
            *by_model.entry(k.path.clone()).or_default() += e.bytes;
        }
        for h in &s.held {
            *by_model.entry(h.key.path.clone()).or_default() += h.bytes;
        }
        let mut resident_by_model: Vec<(PathBuf, u64)> = by_model.into_iter().collect();
        resident_by_model.sort();
        CacheStats {
            resident_bytes: resident,
            resident_by_model,
            ..s.stats.clone()
        }
    }

    fn is_pinned(&self, file: &ModelFile, tensor: &str) -> bool {
        let key = key(file, tensor, &Transform::Stored);
        self.inner
            .lock()
            .entries
            .get(&key)
            .is_some_and(|e| e.pinned)
    }
}

impl fmt::Debug for TensorCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TensorCache({} bytes on {})",
            self.inner.budget,
            self.inner.device.describe()
        )
    }
}

fn key(file: &ModelFile, tensor: &str, transform: &Transform) -> Key {
    Key {
        path: file.path().to_path_buf(),
        tensor: tensor.to_string(),
        transform: transform.key(),
    }
}

fn spawn_warmer(inner: Weak<Inner>) -> Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("mlmf-cache-warm".into())
        .spawn(move || {
            // Ends when every clone of the cache has dropped (the sender with it).
            for job in rx {
                let Some(inner) = inner.upgrade() else { break };
                let ok = inner
                    .fetch(&job.file, &job.tensor, &job.transform, false, true)
                    .is_ok();
                let mut s = inner.lock();
                s.warming -= 1;
                if !ok {
                    s.stats.warm_errors += 1;
                }
                drop(s);
                inner.changed.notify_all();
            }
        })
        .map_err(|source| Error::Io {
            path: PathBuf::from("<mlmf-cache-warm thread>"),
            source,
        })?;
    Ok(tx)
}
