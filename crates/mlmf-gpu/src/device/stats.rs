//! What a GPU device has been asked to do: device buffers created (and their bytes), kernel
//! parameter sets, bind groups, compute dispatches, queue submissions, waits and readbacks: the
//! first thing to look at when a forward pass is slower than its arithmetic. Before issue 15
//! every op made its output and parameter buffers fresh and submitted on its own; with the pool
//! and the batch (`pool.rs`, `batch.rs`) a repeated forward pass creates no buffers and submits
//! once per 64 dispatches or readback.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts since the device was made ([`crate::Gpu::stats`]); [`GpuStats::since`] gives what
/// happened between two snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuStats {
    /// Device buffers asked of the driver (the pool's misses): tensor pages, scratch and output
    /// buffers, parameter blocks, staging buffers.
    pub buffers: u64,
    /// Their sizes, summed.
    pub buffer_bytes: u64,
    /// Kernel parameter sets written, one per dispatch (with the pool on they share 64 KiB
    /// blocks; off, each is a buffer of its own and counts in `buffers` too).
    pub uniforms: u64,
    pub bind_groups: u64,
    pub dispatches: u64,
    /// Queue submissions (an empty one, which only flushes staged writes, counts too).
    pub submits: u64,
    /// Times the host blocked until the device was idle.
    pub waits: u64,
    /// Tensors (or parts of one) read back to the host.
    pub readbacks: u64,
}

impl GpuStats {
    /// What happened after `earlier` (a snapshot of the same device) up to this one; a count
    /// that went down (snapshots swapped, or of two devices) gives 0.
    pub fn since(&self, earlier: &GpuStats) -> GpuStats {
        GpuStats {
            buffers: self.buffers.saturating_sub(earlier.buffers),
            buffer_bytes: self.buffer_bytes.saturating_sub(earlier.buffer_bytes),
            uniforms: self.uniforms.saturating_sub(earlier.uniforms),
            bind_groups: self.bind_groups.saturating_sub(earlier.bind_groups),
            dispatches: self.dispatches.saturating_sub(earlier.dispatches),
            submits: self.submits.saturating_sub(earlier.submits),
            waits: self.waits.saturating_sub(earlier.waits),
            readbacks: self.readbacks.saturating_sub(earlier.readbacks),
        }
    }
}

/// One line: `N buffers (B bytes), U parameter sets, G bind groups, D dispatches, S
/// submissions, W waits, R readbacks`.
impl std::fmt::Display for GpuStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} buffers ({} bytes), {} parameter sets, {} bind groups, {} dispatches, {} \
             submissions, {} waits, {} readbacks",
            self.buffers,
            self.buffer_bytes,
            self.uniforms,
            self.bind_groups,
            self.dispatches,
            self.submits,
            self.waits,
            self.readbacks
        )
    }
}

/// The live counters of one device.
#[derive(Default)]
pub(crate) struct Counters {
    buffers: AtomicU64,
    buffer_bytes: AtomicU64,
    uniforms: AtomicU64,
    bind_groups: AtomicU64,
    dispatches: AtomicU64,
    submits: AtomicU64,
    waits: AtomicU64,
    readbacks: AtomicU64,
}

/// Which counter an event adds to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Event {
    Uniform,
    BindGroup,
    Dispatch,
    Wait,
    Readback,
}

impl Counters {
    pub(crate) fn buffer(&self, bytes: u64) {
        self.buffers.fetch_add(1, Ordering::Relaxed);
        self.buffer_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn submit(&self) {
        self.submits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count(&self, event: Event) {
        let counter = match event {
            Event::Uniform => &self.uniforms,
            Event::BindGroup => &self.bind_groups,
            Event::Dispatch => &self.dispatches,
            Event::Wait => &self.waits,
            Event::Readback => &self.readbacks,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn readbacks(&self) -> u64 {
        self.readbacks.load(Ordering::Relaxed)
    }

    pub(crate) fn snapshot(&self) -> GpuStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GpuStats {
            buffers: get(&self.buffers),
            buffer_bytes: get(&self.buffer_bytes),
            uniforms: get(&self.uniforms),
            bind_groups: get(&self.bind_groups),
            dispatches: get(&self.dispatches),
            submits: get(&self.submits),
            waits: get(&self.waits),
            readbacks: get(&self.readbacks),
        }
    }
}
