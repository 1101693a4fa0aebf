//! The GPU device: a wgpu device and queue opened with the adapter's own limits.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::adapter;
use super::batch::Batch;
use super::pipeline_cache::{self, DiskCache};
use super::pool::{Block, Fill, Kind, MemoryStats, Pool};
use super::stats::{Counters, Event, GpuStats};
use mlmf_core::{Error, Result};

/// Tuning knobs for a GPU device. The defaults suit real use; tests shrink them to exercise
/// paging and the staging ring on small tensors.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Upper bound on one page (one wgpu buffer) of a tensor. The device's storage binding
    /// limit is used when it is smaller.
    pub max_page_bytes: Option<u64>,
    /// Host memory for upload and readback staging, split into two halves so the CPU fills
    /// one while the device copies the other.
    pub staging_bytes: u64,
    /// Refuse allocations that would take the buffers mlmf holds on the device (in use and
    /// cached) past this many bytes, as if the device had no more memory. `None`: only the
    /// driver refuses.
    pub memory_limit: Option<u64>,
    /// The caching allocator and batched submission (see `pool.rs`, `batch.rs`). `None`: on
    /// unless `MLMF_POOL=off`.
    pub pool: Option<bool>,
    /// Which adapter, as an index into [`crate::adapters`]'s list, overriding `MLMF_ADAPTER`
    /// (a device set opens one device on each adapter with it).
    pub adapter: Option<usize>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            max_page_bytes: None,
            staging_bytes: 32 << 20,
            memory_limit: None,
            pool: None,
            adapter: None,
        }
    }
}

/// A GPU device. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Gpu {
    pub(crate) inner: Arc<GpuInner>,
}

pub(crate) struct GpuInner {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Bytes per page: at most the storage binding limit, a multiple of 256.
    pub page_bytes: u64,
    /// Bytes in each of the two staging halves, a multiple of 256.
    pub staging_half: u64,
    pub pipelines: super::kernels::PipelineCache,
    /// wgpu's on-disk pipeline cache, where the adapter offers one and it is not turned off.
    pub disk_cache: Option<DiskCache>,
    /// The first error wgpu reported outside an error scope. wgpu's default is to panic; we
    /// keep it and return it as `Error::Gpu` at the next wait instead.
    pub uncaptured: Arc<Mutex<Option<String>>>,
    /// What the device has been asked to do ([`Gpu::stats`]).
    pub counters: Counters,
    /// Where every buffer comes from and goes back to.
    pub pool: Arc<Pool>,
    /// Commands recorded and not yet submitted.
    pub batch: Mutex<Batch>,
}

impl Gpu {
    /// The chosen adapter's device, with its pipeline cache where `MLMF_PIPELINE_CACHE`
    /// allows (see `pipeline_cache.rs`).
    pub fn new(options: &GpuOptions) -> Result<Gpu> {
        Gpu::open(options, pipeline_cache::dir_from_env().as_deref())
    }

    /// Like [`Gpu::new`] with the pipeline cache kept in `cache_dir` (`None`: no cache).
    pub(crate) fn open(options: &GpuOptions, cache_dir: Option<&Path>) -> Result<Gpu> {
        let (_instance, adapters, backends) = adapter::available()?;
        let adapter = adapter::choose(adapters, backends, options.adapter)?;
        let info = adapter.get_info();
        // Ask for everything the adapter offers, not wgpu's conservative defaults: real models
        // need buffers far above the default 256 MiB.
        let limits = adapter.limits();
        let mut wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        wanted.set(wgpu::Features::PIPELINE_CACHE, cache_dir.is_some());
        let features = adapter.features() & wanted;
        let desc = wgpu::DeviceDescriptor {
            label: Some("mlmf"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            Error::RequestDevice(format!("{} ({:?}): {e}", info.name, info.backend))
        })?;

        let uncaptured = Arc::new(Mutex::new(None));
        {
            let slot = uncaptured.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut first) = slot.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }));
        }
        let binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let mut page_bytes = options.max_page_bytes.map_or(binding, |m| m.min(binding));
        page_bytes -= page_bytes % 256;
        let staging_half = (options.staging_bytes / 2).max(256);
        let staging_half = staging_half - staging_half % 256;
        if page_bytes == 0 {
            return Err(Error::RequestDevice(format!(
                "{}: storage binding limit {binding} is too small",
                info.name
            )));
        }
        let disk_cache = cache_dir.and_then(|dir| DiskCache::open(&device, &info, dir));
        Ok(Gpu {
            inner: Arc::new(GpuInner {
                device,
                queue,
                info,
                limits,
                features,
                page_bytes,
                staging_half,
                pipelines: Default::default(),
                disk_cache,
                uncaptured,
                counters: Default::default(),
                pool: Arc::new(Pool::new(
                    options.pool.unwrap_or_else(|| env_flag("MLMF_POOL", true)),
                    env_flag("MLMF_POOL_POISON", cfg!(debug_assertions)),
                    options.memory_limit,
                )),
                batch: Default::default(),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.info.name
    }

    pub fn backend(&self) -> wgpu::Backend {
        self.inner.info.backend
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    pub fn has_shader_f16(&self) -> bool {
        self.inner.features.contains(wgpu::Features::SHADER_F16)
    }

    /// Largest page (one buffer) a tensor is split into.
    pub fn page_bytes(&self) -> u64 {
        self.inner.page_bytes
    }

    /// How many times a tensor (or part of one) has been read back from this device to the
    /// host, for tests that check work stays on the device (a copy to another device through
    /// the host counts).
    pub fn readbacks(&self) -> u64 {
        self.inner.counters.readbacks()
    }

    /// Buffers, bind groups, dispatches, submissions, waits and readbacks so far (see
    /// [`GpuStats`]).
    pub fn stats(&self) -> GpuStats {
        self.inner.counters.snapshot()
    }

    /// A buffer of at least `bytes` for `kind` from the pool; new device buffers are counted.
    /// `fill`: how its contents will be written (see `pool.rs`).
    pub(crate) fn take(&self, kind: Kind, bytes: u64, label: &str, fill: Fill) -> Result<Block> {
        let (block, fresh) = self.inner.pool.take(
            &self.inner.device,
            &self.inner.queue,
            kind,
            bytes,
            label,
            fill,
        )?;
        if fresh {
            self.inner.counters.buffer(block.size());
        }
        Ok(block)
    }

    /// A storage buffer from the pool holding `bytes` (padded to a multiple of 4).
    pub(crate) fn take_init(&self, label: &str, bytes: &[u8]) -> Result<Block> {
        let block = self.take(Kind::Storage, bytes.len() as u64, label, Fill::Queue)?;
        crate::storage::write_padded(&self.inner.queue, &block, 0, bytes);
        Ok(block)
    }

    /// Hand `command_buffers` to the queue after the batch (none and an empty batch: flush
    /// staged writes), counted.
    pub(crate) fn submit(&self, command_buffers: impl IntoIterator<Item = wgpu::CommandBuffer>) {
        self.flush_with(command_buffers.into_iter().collect());
    }

    /// Write `bytes` into `buffer` at `offset` after every command recorded so far (a plain
    /// `write_buffer` would run before the batch's unsubmitted commands).
    pub(crate) fn write_after(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        self.flush_with(Vec::new());
        self.inner.queue.write_buffer(buffer, offset, bytes);
        self.flush_with(Vec::new());
    }

    /// The caching allocator's accounting (see [`MemoryStats`]).
    pub fn memory(&self) -> MemoryStats {
        self.inner.pool.stats()
    }

    /// Start [`MemoryStats`]' peaks again from what is held now (as PyTorch's
    /// `reset_peak_memory_stats`).
    pub fn reset_peak_memory(&self) {
        self.inner.pool.reset_peaks();
    }

    /// Give the buffers the pool keeps for reuse back to the driver.
    pub fn empty_cache(&self) {
        self.flush_with(Vec::new());
        self.inner.pool.empty();
    }

    /// A test hook: refuse the `n`-th buffer request from now (1: the next) as if the device
    /// were out of memory.
    #[doc(hidden)]
    pub fn fail_allocation(&self, n: u64) {
        self.inner.pool.fail_request(n);
    }

    /// What the driver's allocator reports holding, where the backend offers a report (Vulkan
    /// and DX12 through gpu-allocator): `(allocated, reserved)` bytes.
    pub fn allocator_report(&self) -> Option<(u64, u64)> {
        self.inner
            .device
            .generate_allocator_report()
            .map(|r| (r.total_allocated_bytes, r.total_reserved_bytes))
    }

    /// Count one event (a bind group, a dispatch, a readback).
    pub(crate) fn count(&self, event: Event) {
        self.inner.counters.count(event);
    }

    /// Whether `other` is this very device (clones share it; two `Gpu::new` of one adapter are
    /// two devices).
    pub fn same_device(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub fn wgpu_device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    pub fn wgpu_queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// Block until all submitted work is done; report any error wgpu raised meanwhile.
    pub(crate) fn wait(&self, during: &str) -> Result<()> {
        let gpu_err = |reason: String| Error::Gpu {
            during: during.to_string(),
            reason,
        };
        self.flush();
        self.count(Event::Wait);
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| gpu_err(e.to_string()))?;
        match self.inner.uncaptured.lock().ok().and_then(|mut e| e.take()) {
            Some(reason) => Err(gpu_err(reason)),
            None => Ok(()),
        }
    }
}

/// `name` as a switch: `0`, `off`, `false` or `no` turn it off, anything else on; unset gives
/// `default`.
fn env_flag(name: &str, default: bool) -> bool {
    match std::env::var(name) {
        Ok(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "off" | "false" | "no"
        ),
        Err(_) => default,
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Gpu({} on {:?})",
            self.inner.info.name, self.inner.info.backend
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncaptured_wgpu_errors_are_returned_not_panicked() {
        let gpu = Gpu::new(&GpuOptions::default()).unwrap();
        // MAP_READ together with MAP_WRITE is invalid: wgpu reports it outside any scope.
        let _bad = gpu.wgpu_device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("invalid on purpose"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::MAP_WRITE,
            mapped_at_creation: false,
        });
        let err = gpu.wait("test").unwrap_err();
        assert!(
            matches!(err, Error::Gpu { ref reason, .. } if reason.contains("invalid on purpose")),
            "{err}"
        );
        // Reported once; the device goes on working.
        gpu.wait("test").unwrap();
    }
}
