//! The load path of [`TensorCache`](super::TensorCache): single flight (one [`Slot`] per key in
//! flight), reservations of the budget before a load, admission by exact size with least recently
//! used eviction, and evict-and-retry when the device is out of memory.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{key, Entry, Inner, Key, State, Transform};
use crate::{Device, Error, ModelFile, Result, Tensor, TensorInfo};

/// One load in flight; other requests of its key wait here for it.
#[derive(Default)]
pub(super) struct Slot {
    /// `Some` when the load ended: the tensor, or `None` when it failed (each waiter then tries
    /// itself, and gets its own error).
    done: Mutex<Option<Option<Arc<Tensor>>>>,
    cv: Condvar,
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

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
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
    pub(super) fn fetch(
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
    pub(super) fn fetch_many<S: AsRef<str>>(
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
