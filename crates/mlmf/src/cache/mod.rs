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

pub mod sim;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{Device, Error, ModelFile, Result, Tensor, TensorInfo};

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

/// One load in flight; other requests of its key wait here for it.
#[derive(Default)]
struct Slot {
    /// `Some` when the load ended: the tensor, or `None` when it failed (each waiter then tries
    /// itself, and gets its own error).
    done: Mutex<Option<Option<Arc<Tensor>>>>,
    cv: Condvar,
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

impl Slot {
    fn finish(&self, result: Option<Arc<Tensor>>) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        self.cv.notify_all();
    }

    fn wait(&self) -> Option<Arc<Tensor>> {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(result) = done.as_ref() {
                return result.clone();
            }
            done = self.cv.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Ends a load in flight however the leader leaves (an error, or a panic in a custom
/// transform): the key's slot is removed and its waiters woken.
struct Leader<'a> {
    inner: &'a Inner,
    key: &'a Key,
    slot: Arc<Slot>,
    result: Option<Arc<Tensor>>,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.inner.lock().loading.remove(self.key);
        self.slot.finish(self.result.take());
    }
}

/// Room reserved for a load; released when dropped (and the waiters for room woken).
struct Reservation<'a> {
    inner: &'a Inner,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let mut s = self.inner.lock();
            s.reserved -= self.bytes;
            drop(s);
            self.inner.changed.notify_all();
        }
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

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while the lock was held (a custom transform runs outside it) leaves
        // consistent maps behind; go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn over_budget(&self, tensor: &str, bytes: u64, reason: String) -> Error {
        Error::CacheBudget {
            tensor: tensor.to_string(),
            bytes,
            budget_bytes: self.budget,
            reason,
        }
    }

    /// The tensor under `transform`: resident, revived from a caller's clone, waited for, or
    /// loaded here. `pin` pins it; `warm` does not count a hit.
    fn fetch(
        &self,
        file: &Arc<ModelFile>,
        tensor: &str,
        transform: &Transform,
        pin: bool,
        warm: bool,
    ) -> Result<Arc<Tensor>> {
        let info = file.tensor(tensor)?;
        let key = key(file, tensor, transform);
        // A tensor another request loaded, kept while this one registers it.
        let mut _keep: Option<Arc<Tensor>> = None;
        loop {
            let mut s = self.lock();
            s.tick += 1;
            let tick = s.tick;
            if let Some(e) = s.entries.get_mut(&key) {
                e.last_used = tick;
                e.pinned |= pin;
                let t = e.tensor.clone();
                if !warm {
                    s.stats.hits += 1;
                }
                return Ok(t);
            }
            // Evicted while a caller held it: take it back rather than load a second copy (it
            // is counted already).
            if let Some(i) = s.held.iter().position(|h| h.key == key) {
                let h = s.held.swap_remove(i);
                if let Some(t) = h.tensor.upgrade() {
                    s.entries.insert(
                        key,
                        Entry {
                            tensor: t.clone(),
                            bytes: h.bytes,
                            last_used: tick,
                            pinned: pin,
                        },
                    );
                    if !warm {
                        s.stats.hits += 1;
                    }
                    return Ok(t);
                }
                continue;
            }
            if let Some(slot) = s.loading.get(&key).cloned() {
                drop(s);
                _keep = slot.wait();
                continue;
            }
            let slot = Arc::new(Slot::default());
            s.loading.insert(key.clone(), slot.clone());
            drop(s);
            let mut leader = Leader {
                inner: self,
                key: &key,
                slot,
                result: None,
            };
            let t = self.load(file, info, transform, &key, pin)?;
            leader.result = Some(t.clone());
            return Ok(t);
        }
    }

    /// [`TensorCache::get_many`]: hits at once, the missing keys no other request is loading
    /// in one batch led here, then the rest (in flight elsewhere, held, repeated) one by one.
    fn fetch_many<S: AsRef<str>>(
        &self,
        file: &Arc<ModelFile>,
        names: &[S],
    ) -> Result<Vec<Arc<Tensor>>> {
        let infos = names
            .iter()
            .map(|n| file.tensor(n.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let keys: Vec<Key> = names
            .iter()
            .map(|n| key(file, n.as_ref(), &Transform::Stored))
            .collect();
        let mut out: Vec<Option<Arc<Tensor>>> = vec![None; names.len()];
        let mut ticks = vec![0; names.len()];
        let mut lead = Vec::new();
        let mut slots = Vec::new();
        {
            let mut s = self.lock();
            for (i, k) in keys.iter().enumerate() {
                s.tick += 1;
                let tick = s.tick;
                ticks[i] = tick;
                if let Some(e) = s.entries.get_mut(k) {
                    e.last_used = tick;
                    out[i] = Some(e.tensor.clone());
                    s.stats.hits += 1;
                    continue;
                }
                let elsewhere = s.loading.contains_key(k)
                    || s.held.iter().any(|h| h.key == *k)
                    || lead.iter().any(|&j: &usize| keys[j] == *k);
                if !elsewhere {
                    let slot = Arc::new(Slot::default());
                    s.loading.insert(k.clone(), slot.clone());
                    lead.push(i);
                    slots.push(slot);
                }
            }
        }
        let mut leaders: Vec<Leader<'_>> = lead
            .iter()
            .zip(slots)
            .map(|(&i, slot)| Leader {
                inner: self,
                key: &keys[i],
                slot,
                result: None,
            })
            .collect();
        if !lead.is_empty() {
            let loaded = self.load_batch(file, &infos, &keys, &lead, &ticks)?;
            for ((&i, t), leader) in lead.iter().zip(loaded).zip(leaders.iter_mut()) {
                leader.result = Some(t.clone());
                out[i] = Some(t);
            }
        }
        drop(leaders);
        let mut all = Vec::with_capacity(out.len());
        for (i, t) in out.into_iter().enumerate() {
            all.push(match t {
                Some(t) => t,
                None => self.fetch(file, names[i].as_ref(), &Transform::Stored, false, false)?,
            });
        }
        Ok(all)
    }

    /// Reserve room, load, transform and admit one tensor (the caller leads its key's flight).
    fn load(
        &self,
        file: &ModelFile,
        info: &TensorInfo,
        transform: &Transform,
        key: &Key,
        pin: bool,
    ) -> Result<Arc<Tensor>> {
        let raw = info.byte_len();
        let out = match transform {
            Transform::Dequantize => info.shape.elem_count().saturating_mul(4),
            _ => raw,
        };
        if raw.max(out) > self.budget {
            return Err(self.over_budget(
                &info.name,
                raw.max(out),
                "larger than the whole budget".into(),
            ));
        }
        // The tensor's own bytes, a lower bound of its pages (the pool rounds each up by at most
        // 1/8): an upper bound would evict too early under a tight budget. The admitted size is
        // exact, and admission evicts more where rounding needs it.
        let need = if matches!(transform, Transform::Dequantize) {
            raw.saturating_add(out)
        } else {
            raw
        };
        let reservation = self.reserve(&info.name, raw, need)?;
        let start = Instant::now();
        let tensor = self.retrying(&info.name, raw, || {
            self.load_once(file, &info.name, transform)
        })?;
        let seconds = start.elapsed().as_secs_f64();
        let tensor = Arc::new(tensor);
        let mut dropped = Vec::new();
        let admitted = self.admit_all(reservation, raw, seconds, &mut dropped, |s, dropped| {
            self.admit(s, key, &tensor, pin, None, dropped)
        });
        drop(dropped);
        admitted.map(|()| tensor)
    }

    /// Load the leading keys `lead` of `infos` together and admit them.
    fn load_batch(
        &self,
        file: &ModelFile,
        infos: &[&TensorInfo],
        keys: &[Key],
        lead: &[usize],
        ticks: &[u64],
    ) -> Result<Vec<Arc<Tensor>>> {
        let names: Vec<&str> = lead.iter().map(|&i| infos[i].name.as_str()).collect();
        let first = names.first().copied().unwrap_or_default();
        let mut need = 0u64;
        for &i in lead {
            let bytes = infos[i].byte_len();
            if bytes > self.budget {
                return Err(self.over_budget(
                    &infos[i].name,
                    bytes,
                    "larger than the whole budget".into(),
                ));
            }
            need = need.saturating_add(bytes);
        }
        if need > self.budget {
            return Err(self.over_budget(
                first,
                need,
                format!(
                    "{} tensors requested together (this one and {} more) take more than the \
                     whole budget",
                    names.len(),
                    names.len() - 1
                ),
            ));
        }
        let reservation = self.reserve(first, need, need)?;
        let start = Instant::now();
        let tensors = self.retrying(first, need, || self.device.load_list(file, &names))?;
        let seconds = start.elapsed().as_secs_f64();
        let tensors: Vec<Arc<Tensor>> = tensors.into_iter().map(Arc::new).collect();
        let mut dropped = Vec::new();
        let admitted = self.admit_all(reservation, need, seconds, &mut dropped, |s, dropped| {
            for (&i, t) in lead.iter().zip(&tensors) {
                self.admit(s, &keys[i], t, false, Some(ticks[i]), dropped)?;
            }
            Ok(())
        });
        drop(dropped);
        admitted.map(|()| tensors)
    }

    /// Release `reservation` and count a load of `raw` bytes, then run `admit` under the lock.
    fn admit_all(
        &self,
        mut reservation: Reservation<'_>,
        raw: u64,
        seconds: f64,
        dropped: &mut Vec<Arc<Tensor>>,
        admit: impl FnOnce(&mut State, &mut Vec<Arc<Tensor>>) -> Result<()>,
    ) -> Result<()> {
        let mut s = self.lock();
        s.reserved -= reservation.bytes;
        reservation.bytes = 0;
        s.stats.bytes_loaded += raw;
        s.stats.load_seconds += seconds;
        let admitted = admit(&mut s, dropped);
        drop(s);
        self.changed.notify_all();
        admitted
    }

    /// Enter a loaded tensor (counted as a miss), evicting least recently used entries while it
    /// does not fit. Evicted tensors go to `dropped`, to be dropped after the lock. `asked`: when
    /// it was asked for (a batch keeps the order of its list), else now.
    fn admit(
        &self,
        s: &mut State,
        key: &Key,
        tensor: &Arc<Tensor>,
        pin: bool,
        asked: Option<u64>,
        dropped: &mut Vec<Arc<Tensor>>,
    ) -> Result<()> {
        s.stats.misses += 1;
        let bytes = tensor.resident_bytes();
        loop {
            if s.resident().saturating_add(bytes) <= self.budget {
                s.tick += 1;
                let tick = asked.unwrap_or(s.tick);
                s.entries.insert(
                    key.clone(),
                    Entry {
                        tensor: tensor.clone(),
                        bytes,
                        last_used: tick,
                        pinned: pin,
                    },
                );
                s.note_peak();
                return Ok(());
            }
            match s.victim() {
                Some(k) => dropped.extend(s.evict(&k)),
                None => return Err(self.over_budget(tensor.name(), bytes, s.why_full())),
            }
        }
    }

    /// Reserve `need` bytes of the budget, evicting least recently used entries; waits while
    /// other loads hold reservations that may make room when they end.
    fn reserve(&self, tensor: &str, bytes: u64, need: u64) -> Result<Reservation<'_>> {
        let mut s = self.lock();
        loop {
            if s.resident().saturating_add(need) <= self.budget {
                s.reserved += need;
                s.note_peak();
                return Ok(Reservation {
                    inner: self,
                    bytes: need,
                });
            }
            if let Some(k) = s.victim() {
                let t = s.evict(&k);
                drop(s);
                drop(t);
                s = self.lock();
                continue;
            }
            if s.reserved > 0 {
                // Other loads in flight end soon, and their entries may be evictable then. The
                // timeout also notices callers dropping evicted tensors, which signal nothing.
                s = self
                    .changed
                    .wait_timeout(s, Duration::from_millis(20))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            return Err(self.over_budget(tensor, bytes, s.why_full()));
        }
    }

    /// Run a load, evicting and retrying while the device is out of memory.
    fn retrying<T>(
        &self,
        tensor: &str,
        bytes: u64,
        mut load: impl FnMut() -> Result<T>,
    ) -> Result<T> {
        loop {
            match load() {
                Err(Error::OutOfMemory { reason, .. }) => {
                    let mut s = self.lock();
                    let victim = s.victim().and_then(|k| s.evict(&k));
                    let why = s.why_full();
                    drop(s);
                    let Some(victim) = victim else {
                        return Err(self.over_budget(
                            tensor,
                            bytes,
                            format!("the device is out of memory ({reason}); {why}"),
                        ));
                    };
                    drop(victim);
                    if let Device::Gpu(g) = &self.device {
                        g.empty_cache();
                    }
                }
                other => return other,
            }
        }
    }

    fn load_once(&self, file: &ModelFile, tensor: &str, transform: &Transform) -> Result<Tensor> {
        let raw = self.device.load(file, tensor)?;
        match transform {
            Transform::Stored => Ok(raw),
            Transform::Dequantize => crate::ops::convert::to_f32(&raw),
            Transform::Custom { apply, .. } => apply(raw),
        }
    }
}
