//! Streaming a tensor from the memory map into GPU buffers through a bounded staging window.
//!
//! Two staging buffers of `staging_half` bytes each take turns: while the device copies one into
//! the tensor's pages, the CPU fills the other. Host memory in use is the two halves, whatever
//! the model size; no tensor is ever copied whole into a `Vec`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::gpu::Gpu;
use super::source::Source;
use crate::error::{Error, Result};
use crate::tensor::GpuStorage;

struct Slot {
    buffer: wgpu::Buffer,
    /// Set by the map callback once the buffer is writable again.
    mapped: Arc<AtomicBool>,
}

/// The staging ring. Reused across the tensors of one load call.
pub(crate) struct Uploader {
    gpu: Gpu,
    slots: [Slot; 2],
    next: usize,
    scratch: Vec<u8>,
}

impl Uploader {
    pub fn new(gpu: &Gpu) -> Uploader {
        let make = |i: usize| Slot {
            buffer: gpu.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("mlmf upload staging {i}")),
                size: gpu.inner.staging_half,
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            }),
            mapped: Arc::new(AtomicBool::new(true)),
        };
        Uploader {
            gpu: gpu.clone(),
            slots: [make(0), make(1)],
            next: 0,
            scratch: Vec::new(),
        }
    }

    /// Copy `len` bytes from `src` into newly made pages for a tensor called `name`.
    pub fn upload(
        &mut self,
        name: &str,
        src: &Source<'_>,
        len: u64,
        unit: u64,
    ) -> Result<GpuStorage> {
        let storage = GpuStorage::allocate(&self.gpu, name, len, unit)?;
        let half = self.gpu.inner.staging_half;
        let mut pos = 0u64;
        while pos < len {
            let n = half.min(len - pos);
            let padded = n.next_multiple_of(4);
            let slot_index = self.next;
            self.next ^= 1;
            self.wait_mapped(slot_index)?;
            let slot = &self.slots[slot_index];
            {
                let mut view = slot
                    .buffer
                    .get_mapped_range_mut(0..padded)
                    .map_err(|e| gpu_err(name, e.to_string()))?;
                let bytes = src.chunk(pos as usize, n as usize, &mut self.scratch);
                view.slice(..n as usize).copy_from_slice(bytes);
                view.slice(n as usize..).fill(0);
            }
            slot.buffer.unmap();
            let mut encoder =
                self.gpu
                    .inner
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("mlmf upload"),
                    });
            for (page, page_off, src_off, count) in storage.spans(pos, padded) {
                encoder.copy_buffer_to_buffer(&slot.buffer, src_off - pos, page, page_off, count);
            }
            self.gpu.inner.queue.submit([encoder.finish()]);
            slot.mapped.store(false, Ordering::Release);
            let flag = slot.mapped.clone();
            slot.buffer.map_async(wgpu::MapMode::Write, .., move |r| {
                flag.store(r.is_ok(), Ordering::Release);
            });
            pos += n;
        }
        Ok(storage)
    }

    fn wait_mapped(&self, i: usize) -> Result<()> {
        if self.slots[i].mapped.load(Ordering::Acquire) {
            return Ok(());
        }
        self.gpu.wait("upload")?;
        if self.slots[i].mapped.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(gpu_err(
                "staging",
                "staging buffer could not be mapped again".into(),
            ))
        }
    }

    /// Wait until every copy issued so far has landed.
    pub fn finish(&self) -> Result<()> {
        self.gpu.wait("upload")
    }
}

fn gpu_err(name: &str, reason: String) -> Error {
    Error::Gpu {
        during: format!("upload of '{name}'"),
        reason,
    }
}
