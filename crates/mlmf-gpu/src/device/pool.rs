//! The caching allocator: every device buffer mlmf makes (tensor pages, scratch, kernel
//! parameters, staging) comes from here, and a dropped one goes back to a free list keyed by its
//! usage and size bucket instead of to the driver, so a model's second forward pass allocates
//! nothing. The pattern is PyTorch's CUDA caching allocator and cubecl's memory pools, cut down
//! to what wgpu allows: a buffer cannot be split into bindable slices without every kernel taking
//! offsets, so each request gets a whole buffer whose size is rounded up to a bucket (at most
//! 1/8 larger than asked), and a free buffer is reused only for a request of its bucket.
//!
//! The one hazard of reuse is a buffer dropped while commands that use it are recorded but not
//! yet submitted: a `write_buffer` into it runs at the next submission, before those commands
//! read it. So a buffer released while the device's batch has unsubmitted commands is retired:
//! it may be handed out again within the batch only to be filled by commands recorded after it
//! ([`Fill::Commands`]: kernel outputs, scratch, device copies, upload copies submitted after the
//! batch), which the command order and wgpu's barriers put after the earlier readers; it joins
//! the free lists, which serve [`Fill::Queue`] too, when the batch is submitted
//! ([`Pool::reclaim`]).
//!
//! Reused buffers are not zeroed. Kernels write every byte of their outputs; debug builds fill
//! each buffer handed out from the free lists or the driver for a kernel with 0xFF bytes (NaN as
//! f32) so a kernel that relies on zeros fails its tests (`MLMF_POOL_POISON=0` or `1`
//! overrides). A buffer reused within its batch is not filled (a write would land too early):
//! it holds what an earlier op left, not zeros either.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use mlmf_core::{Error, Result};

/// What a buffer is for. Only buffers of one kind are interchangeable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// Tensor pages and scratch: storage, copy source and destination.
    Storage,
    /// Kernel parameters.
    Uniform,
    /// Host-mapped for reading back.
    ReadStaging,
    /// Host-mapped for uploading.
    WriteStaging,
}

impl Kind {
    fn usage(self) -> wgpu::BufferUsages {
        use wgpu::BufferUsages as U;
        match self {
            Kind::Storage => U::STORAGE | U::COPY_SRC | U::COPY_DST,
            Kind::Uniform => U::UNIFORM | U::COPY_DST,
            Kind::ReadStaging => U::MAP_READ | U::COPY_DST,
            Kind::WriteStaging => U::MAP_WRITE | U::COPY_SRC,
        }
    }
}

/// How a buffer handed out gets its contents, which decides where it may come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Commands recorded in the batch after it is handed out, or submitted after the batch.
    /// `whole`: they write every byte (no poisoning needed).
    Commands { whole: bool },
    /// `queue.write_buffer` (or mapping), which runs before the batch's unsubmitted commands.
    Queue,
}

impl Fill {
    /// A kernel's output or scratch, which the kernel writes where it needs to.
    pub(crate) const KERNEL: Fill = Fill::Commands { whole: false };
}

/// Bytes a request of `bytes` is rounded up to: a multiple of 256 below 2 KiB, above that a
/// multiple of 1/8 of the largest power of two not above it.
pub(crate) fn bucket(bytes: u64) -> u64 {
    let bytes = bytes.max(4);
    if bytes <= 2048 {
        return bytes.next_multiple_of(256);
    }
    let step = (1u64 << (63 - bytes.leading_zeros())) / 8;
    bytes.next_multiple_of(step)
}

/// The allocator's accounting for one device ([`crate::Gpu::memory`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes of buffers handed out and not yet dropped (bucket sizes).
    pub in_use_bytes: u64,
    /// Bytes of dropped buffers kept for reuse (including those waiting for their batch).
    pub cached_bytes: u64,
    /// The most `in_use_bytes` has been.
    pub peak_in_use_bytes: u64,
    /// The most `in_use_bytes + cached_bytes` (what the driver holds for us) has been.
    pub peak_reserved_bytes: u64,
    /// Buffers asked of the driver.
    pub allocations: u64,
    /// Requests met from the free lists.
    pub reuses: u64,
    /// Buffers given back to the driver (dropped with the pool off, trimmed, or emptied).
    pub releases: u64,
    /// The limit set with [`crate::GpuOptions::memory_limit`], if any.
    pub limit_bytes: Option<u64>,
}

impl std::fmt::Display for MemoryStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes in use, {} cached, peak {} in use / {} reserved, {} allocations, {} reuses, \
             {} releases",
            self.in_use_bytes,
            self.cached_bytes,
            self.peak_in_use_bytes,
            self.peak_reserved_bytes,
            self.allocations,
            self.reuses,
            self.releases
        )
    }
}

#[derive(Default)]
struct State {
    /// By creation number, lowest first: a repeated forward pass starts from the same free
    /// buffers and asks for the same sizes in the same order, so it gets the same buffer for
    /// each activation, and the bind groups cached over them serve again. (A stack or a queue
    /// would hand them out permuted on every pass.)
    free: HashMap<(Kind, u64), BTreeMap<u64, wgpu::Buffer>>,
    /// Released while the batch had unsubmitted commands, by creation number.
    retired: HashMap<(Kind, u64), BTreeMap<u64, wgpu::Buffer>>,
    /// Buffers made so far, numbering them.
    made: u64,
    /// Whether the device's batch may hold unsubmitted commands.
    pending: bool,
    stats: MemoryStats,
    /// Requests so far, and the one to refuse (a test hook).
    requests: u64,
    fail_request: Option<u64>,
}

/// What a bind group binds: its layout, the parameter block's binding size, and its buffers
/// in binding order (handles kept, so a buffer's identity cannot be reused while cached).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct BindKey {
    pub layout: wgpu::BindGroupLayout,
    pub size: u64,
    pub buffers: Vec<wgpu::Buffer>,
}

/// Cached bind groups before the cache is cleared and starts again: a forward pass of MiniLM
/// or MobileNetV2 binds about a hundred.
const BIND_GROUPS: usize = 4096;

/// One device's pool.
pub(crate) struct Pool {
    state: Mutex<State>,
    /// Bind groups over pool buffers. They hold their buffers, so [`trim`] (which destroys
    /// buffers) clears them.
    bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
    /// Off (`MLMF_POOL=off`): every request is a new buffer and every drop frees it, as before
    /// the pool, for side-by-side benchmarks.
    pub(crate) enabled: bool,
    poison: bool,
    limit: Option<u64>,
}

/// A buffer from the pool; dropping it gives it back.
pub(crate) struct Block {
    buffer: Option<wgpu::Buffer>,
    /// Its creation number.
    id: u64,
    kind: Kind,
    size: u64,
    pool: Arc<Pool>,
}

impl std::ops::Deref for Block {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        self.buffer
            .as_ref()
            .expect("a block holds its buffer until dropped")
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            self.pool.release(self.kind, self.size, self.id, buffer);
        }
    }
}

/// 64 KiB of 0xFF for poisoning.
static POISON: [u8; 1 << 16] = [0xFF; 1 << 16];

impl Pool {
    pub(crate) fn new(enabled: bool, poison: bool, limit: Option<u64>) -> Pool {
        Pool {
            state: Mutex::new(State {
                stats: MemoryStats {
                    limit_bytes: limit,
                    ..Default::default()
                },
                ..Default::default()
            }),
            bind_groups: Default::default(),
            enabled,
            poison,
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while the lock was held leaves plain counters behind; go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of at least `bytes` for `kind`, from the buffers retired in this batch (storage
    /// filled by commands), the free lists or the driver. `label` names it in errors and in the
    /// driver's debug output.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn take(
        self: &Arc<Self>,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        kind: Kind,
        bytes: u64,
        label: &str,
        fill: Fill,
    ) -> Result<(Block, bool)> {
        let size = if self.enabled {
            bucket(bytes)
        } else {
            bytes.next_multiple_of(4).max(4)
        };
        let oom = |reason: String| Error::OutOfMemory {
            tensor: label.to_string(),
            bytes,
            reason,
        };
        let reused = {
            let mut s = self.lock();
            s.requests += 1;
            if s.fail_request == Some(s.requests) {
                s.fail_request = None;
                return Err(oom("allocation refused by the test hook".into()));
            }
            let in_batch = kind == Kind::Storage && matches!(fill, Fill::Commands { .. });
            let retired = match in_batch {
                true => s
                    .retired
                    .get_mut(&(kind, size))
                    .and_then(BTreeMap::pop_first),
                false => None,
            };
            let from_batch = retired.is_some();
            let reused =
                retired.or_else(|| s.free.get_mut(&(kind, size)).and_then(BTreeMap::pop_first));
            if reused.is_some() {
                s.stats.cached_bytes -= size;
                s.stats.reuses += 1;
            } else if let Some(limit) = self.limit {
                // Over the limit: give cached buffers back to the driver first.
                if s.stats.in_use_bytes + s.stats.cached_bytes + size > limit {
                    self.trim(&mut s);
                }
                if s.stats.in_use_bytes + s.stats.cached_bytes + size > limit {
                    return Err(oom(format!(
                        "{} bytes in use and {} cached leave no room for {size} under the \
                         device's limit of {limit}",
                        s.stats.in_use_bytes, s.stats.cached_bytes
                    )));
                }
            }
            s.stats.in_use_bytes += size;
            let reserved = s.stats.in_use_bytes + s.stats.cached_bytes;
            s.stats.peak_in_use_bytes = s.stats.peak_in_use_bytes.max(s.stats.in_use_bytes);
            s.stats.peak_reserved_bytes = s.stats.peak_reserved_bytes.max(reserved);
            (reused, from_batch)
        };
        let (reused, from_batch) = reused;
        let fresh = reused.is_none();
        let (id, buffer) = match reused {
            Some(b) => b,
            None => {
                let create = || {
                    let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
                    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(label),
                        size,
                        usage: kind.usage(),
                        mapped_at_creation: false,
                    });
                    match pollster::block_on(scope.pop()) {
                        Some(e) => Err(e),
                        None => Ok(buffer),
                    }
                };
                // Refused by the driver: give the cached buffers back and try once more (as
                // PyTorch's caching allocator does when cudaMalloc fails).
                let buffer = match create() {
                    Ok(b) => Ok(b),
                    Err(_) => {
                        self.trim(&mut self.lock());
                        create()
                    }
                };
                let buffer = match buffer {
                    Ok(b) => b,
                    Err(e) => {
                        self.lock().stats.in_use_bytes -= size;
                        return Err(oom(format!("out of device memory: {e}")));
                    }
                };
                let mut s = self.lock();
                s.stats.allocations += 1;
                s.made += 1;
                (s.made, buffer)
            }
        };
        if self.poison && fill == Fill::KERNEL && !from_batch {
            let mut at = 0;
            while at < size {
                let n = (size - at).min(POISON.len() as u64);
                queue.write_buffer(&buffer, at, &POISON[..n as usize]);
                at += n;
            }
        }
        let block = Block {
            buffer: Some(buffer),
            id,
            kind,
            size,
            pool: self.clone(),
        };
        Ok((block, fresh))
    }

    fn release(&self, kind: Kind, size: u64, id: u64, buffer: wgpu::Buffer) {
        let mut s = self.lock();
        s.stats.in_use_bytes -= size;
        if !self.enabled {
            // Dropped, not destroyed: commands recorded but not yet submitted may still use it,
            // and wgpu frees it after them.
            s.stats.releases += 1;
            drop(s);
            drop(buffer);
            return;
        }
        s.stats.cached_bytes += size;
        if s.pending {
            s.retired
                .entry((kind, size))
                .or_default()
                .insert(id, buffer);
        } else {
            s.free.entry((kind, size)).or_default().insert(id, buffer);
        }
    }

    /// The batch is about to take commands: buffers released from now on wait for it.
    pub(crate) fn set_pending(&self) {
        self.lock().pending = true;
    }

    /// The batch was submitted: what was retired meanwhile may be handed out again.
    pub(crate) fn reclaim(&self) {
        let mut s = self.lock();
        s.pending = false;
        let retired = std::mem::take(&mut s.retired);
        for (key, list) in retired {
            s.free.entry(key).or_default().extend(list);
        }
    }

    /// Give every free buffer back to the driver (retired ones stay until their batch is
    /// submitted).
    pub(crate) fn empty(&self) {
        self.trim(&mut self.lock());
    }

    /// Destroy every free buffer, and forget the bind groups, which may hold them.
    fn trim(&self, s: &mut State) {
        self.bind_groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for (_, list) in s.free.drain() {
            for buffer in list.into_values() {
                s.stats.cached_bytes -= buffer.size();
                s.stats.releases += 1;
                buffer.destroy();
            }
        }
    }

    pub(crate) fn bind_group(&self, key: &BindKey) -> Option<wgpu::BindGroup> {
        let groups = self.bind_groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.get(key).cloned()
    }

    pub(crate) fn keep_bind_group(&self, key: BindKey, group: wgpu::BindGroup) {
        let mut groups = self.bind_groups.lock().unwrap_or_else(|e| e.into_inner());
        if groups.len() >= BIND_GROUPS {
            groups.clear();
        }
        groups.insert(key, group);
    }

    /// Start the peaks again from what is held now.
    pub(crate) fn reset_peaks(&self) {
        let mut s = self.lock();
        s.stats.peak_in_use_bytes = s.stats.in_use_bytes;
        s.stats.peak_reserved_bytes = s.stats.in_use_bytes + s.stats.cached_bytes;
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        self.lock().stats
    }

    /// Refuse the `n`-th request from now (1: the next) as out of memory.
    pub(crate) fn fail_request(&self, n: u64) {
        let mut s = self.lock();
        s.fail_request = Some(s.requests + n.max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn buckets_round_up_by_at_most_an_eighth() {
        assert_eq!(bucket(0), 256);
        assert_eq!(bucket(4), 256);
        assert_eq!(bucket(257), 512);
        assert_eq!(bucket(2048), 2048);
        assert_eq!(bucket(2049), 2304);
        assert_eq!(bucket(1 << 20), 1 << 20);
        assert_eq!(bucket((1 << 20) + 1), (1 << 20) + (1 << 17));
        for bytes in [
            3000u64,
            70_000,
            1_500_000,
            16 << 20,
            (16 << 20) + 3,
            1 << 33,
        ] {
            let b = bucket(bytes);
            assert!(b >= bytes && b - bytes <= bytes / 8, "{bytes} -> {b}");
        }
    }
}
