//! The device's batch: the commands ops have recorded and not yet handed to the queue, and the
//! kernel parameters they read. An op records into the batch ([`Gpu::record`]) and returns; the
//! batch goes to the queue as one submission when something needs its results on the host (a
//! readback, a wait), when something else is submitted (an upload's copies, which must run after
//! it), or every [`FLUSH_DISPATCHES`] dispatches so the device starts on a long forward pass
//! while the host records the rest. ggml's backends batch a graph the same way.
//!
//! Parameters go into 64 KiB uniform blocks, each dispatch's at its own 256-byte-aligned offset,
//! written with one `write_buffer` per block just before the submission: no buffer per dispatch.
//!
//! With the pool off (`MLMF_POOL=off`) every op is its own submission with a fresh uniform
//! buffer per dispatch, as before issue 15, for side-by-side benchmarks.

use std::sync::MutexGuard;

use super::pool::{Block, Fill, Kind};
use super::Gpu;
use mlmf_core::Result;

/// Dispatches after which a batch is submitted without waiting for a readback.
pub(crate) const FLUSH_DISPATCHES: u32 = 64;

/// Bytes of one uniform block.
const UNIFORM_BLOCK: u64 = 64 << 10;

#[derive(Default)]
pub(crate) struct Batch {
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: u32,
    /// Uniform blocks of this batch with their contents; the last one is being filled.
    uniforms: Vec<(Block, Vec<u8>)>,
}

/// One op's recording into the device's batch. It dereferences to the batch's command encoder;
/// [`Recording::finish`] ends it. Holding one locks the batch: an op must not submit, wait or
/// read back while it holds one.
pub(crate) struct Recording<'a> {
    gpu: &'a Gpu,
    batch: MutexGuard<'a, Batch>,
}

/// Where one dispatch's parameters are bound from: `size` bytes at `offset` of `buffer`. With
/// the pool on the offset is dynamic (given at dispatch; the bind group binds offset 0).
pub(crate) struct Params {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
    pub dynamic: bool,
}

impl Params {
    /// The binding as the bind group holds it.
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: if self.dynamic { 0 } else { self.offset },
            size: std::num::NonZeroU64::new(self.size),
        })
    }
}

impl Gpu {
    /// Start recording an op into the batch.
    pub(crate) fn record(&self, label: &str) -> Recording<'_> {
        let mut batch = self.lock_batch(label);
        RECORDING.with(|r| r.set(self.address()));
        if batch.encoder.is_none() {
            self.inner.pool.set_pending();
            batch.encoder = Some(
                self.inner
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) }),
            );
        }
        Recording { gpu: self, batch }
    }

    /// The batch's lock. Submitting, waiting or starting another recording on a thread that
    /// holds a recording of this device would wait for this lock forever; debug builds say so.
    fn lock_batch(&self, what: &str) -> MutexGuard<'_, Batch> {
        debug_assert!(
            RECORDING.with(std::cell::Cell::get) != self.address(),
            "{what} while this thread holds a recording of the same device"
        );
        self.inner.batch.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn address(&self) -> usize {
        std::sync::Arc::as_ptr(&self.inner) as usize
    }

    /// Submit the batch if it holds anything.
    pub(crate) fn flush(&self) {
        let mut batch = self.lock_batch("a flush");
        if batch.encoder.is_some() {
            self.submit_batch(&mut batch, Vec::new());
        }
    }

    /// Submit the batch, then `extra` after it, as one submission.
    pub(crate) fn flush_with(&self, extra: Vec<wgpu::CommandBuffer>) {
        let mut batch = self.lock_batch("a submission");
        self.submit_batch(&mut batch, extra);
    }

    fn submit_batch(&self, batch: &mut Batch, extra: Vec<wgpu::CommandBuffer>) {
        let mut buffers = Vec::with_capacity(extra.len() + 1);
        if let Some(encoder) = batch.encoder.take() {
            for (block, bytes) in &batch.uniforms {
                self.inner.queue.write_buffer(block, 0, bytes);
            }
            buffers.push(encoder.finish());
        }
        buffers.extend(extra);
        self.inner.counters.submit();
        self.inner.queue.submit(buffers);
        batch.dispatches = 0;
        // The blocks go back to the pool as retired: they are reused only after this
        // submission's commands, which read them, are ahead of whatever uses them next.
        batch.uniforms.clear();
        self.inner.pool.reclaim();
    }
}

impl Recording<'_> {
    /// Parameters for one dispatch.
    pub(crate) fn params(&mut self, label: &str, bytes: &[u8]) -> Result<Params> {
        let gpu = self.gpu;
        gpu.count(super::Event::Uniform);
        let size = (bytes.len() as u64).next_multiple_of(16).max(16);
        if !gpu.inner.pool.enabled {
            let block = gpu.take(Kind::Uniform, size, label, Fill::Queue)?;
            let mut padded = bytes.to_vec();
            padded.resize(size as usize, 0);
            gpu.inner.queue.write_buffer(&block, 0, &padded);
            return Ok(Params {
                buffer: (*block).clone(),
                offset: 0,
                size,
                dynamic: false,
            });
        }
        let align = u64::from(gpu.inner.limits.min_uniform_buffer_offset_alignment).max(16);
        let fits =
            |b: &(Block, Vec<u8>)| (b.1.len() as u64).next_multiple_of(align) + size <= b.0.size();
        if !self.batch.uniforms.last().is_some_and(fits) {
            let block = gpu.take(
                Kind::Uniform,
                UNIFORM_BLOCK.max(size),
                "mlmf parameters",
                Fill::Queue,
            )?;
            self.batch.uniforms.push((block, Vec::new()));
        }
        let (block, shadow) = self
            .batch
            .uniforms
            .last_mut()
            .expect("a uniform block was just made");
        let offset = (shadow.len() as u64).next_multiple_of(align);
        shadow.resize(offset as usize, 0);
        shadow.extend_from_slice(bytes);
        shadow.resize((offset + size) as usize, 0);
        Ok(Params {
            buffer: (**block).clone(),
            offset,
            size,
            dynamic: true,
        })
    }

    pub(crate) fn gpu(&self) -> &Gpu {
        self.gpu
    }

    pub(crate) fn dispatched(&mut self) {
        self.batch.dispatches += 1;
    }

    /// End the op: submit now with the pool off or when the batch is long, else leave it for
    /// the next flush.
    pub(crate) fn finish(mut self) {
        if !self.gpu.inner.pool.enabled || self.batch.dispatches >= FLUSH_DISPATCHES {
            self.gpu.submit_batch(&mut self.batch, Vec::new());
        }
    }

    /// End the op and submit the batch now.
    pub(crate) fn submit(mut self) {
        self.gpu.submit_batch(&mut self.batch, Vec::new());
    }
}

thread_local! {
    /// The device whose recording this thread holds, by address (0: none), for the debug
    /// check in [`Gpu::record`].
    static RECORDING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        RECORDING.with(|r| r.set(0));
    }
}

impl std::ops::Deref for Recording<'_> {
    type Target = wgpu::CommandEncoder;
    fn deref(&self) -> &wgpu::CommandEncoder {
        self.batch
            .encoder
            .as_ref()
            .expect("a recording has an encoder")
    }
}

impl std::ops::DerefMut for Recording<'_> {
    fn deref_mut(&mut self) -> &mut wgpu::CommandEncoder {
        self.batch
            .encoder
            .as_mut()
            .expect("a recording has an encoder")
    }
}
