//! Streaming tensors from the memory map into GPU buffers through a bounded staging window.
//!
//! Two staging buffers of `staging_half` bytes each take turns: the CPU packs tensor bytes into
//! one (several small tensors share a fill) while the device copies the other into the tensors'
//! pages. Host memory in use is the two halves, whatever the model size; no tensor is ever
//! copied whole into a `Vec`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device::{Block, Fill, Gpu, Kind};
use crate::storage::GpuStorage;
use mlmf_core::Source;
use mlmf_core::{Error, Result};

/// `get_mapped_range_mut` offsets must be multiples of 8 (wgpu's MAP_ALIGNMENT).
const MAP_ALIGN: u64 = 8;

struct Slot {
    buffer: Block,
    /// Set by the map callback once the buffer is writable again.
    mapped: Arc<AtomicBool>,
    /// Bytes of the slot filled so far.
    used: u64,
    /// Copies to issue when the slot is flushed: (page, offset in page, offset in slot, bytes).
    copies: Vec<(wgpu::Buffer, u64, u64, u64)>,
}

/// The staging ring. Reused across the tensors of one load call; call [`Uploader::finish`]
/// before using what it uploaded.
pub(crate) struct Uploader {
    gpu: Gpu,
    slots: [Slot; 2],
    current: usize,
    scratch: Vec<u8>,
}

impl Uploader {
    /// A ring for uploading about `total` bytes: each half is the device's staging half, or
    /// less when the whole upload is smaller (small loads then map and fault less memory).
    pub fn new(gpu: &Gpu, total: u64) -> Result<Uploader> {
        let half = gpu
            .inner
            .staging_half
            .min(total.next_multiple_of(256))
            .max(256);
        let make = |i: usize| -> Result<Slot> {
            let buffer = gpu.take(
                Kind::WriteStaging,
                half,
                &format!("mlmf upload staging {i}"),
                Fill::Queue,
            )?;
            // Pool buffers come unmapped: map for writing; `wait_mapped` waits for it.
            let mapped = Arc::new(AtomicBool::new(false));
            let flag = mapped.clone();
            buffer.map_async(wgpu::MapMode::Write, .., move |r| {
                flag.store(r.is_ok(), Ordering::Release);
            });
            Ok(Slot {
                buffer,
                mapped,
                used: 0,
                copies: Vec::new(),
            })
        };
        Ok(Uploader {
            gpu: gpu.clone(),
            slots: [make(0)?, make(1)?],
            current: 0,
            scratch: Vec::new(),
        })
    }

    /// Queue `len` bytes from `src` into newly made pages for a tensor called `name`, calling
    /// `copied(n)` after each chunk of `n` bytes is staged. The bytes have landed once
    /// [`Uploader::finish`] returns.
    pub fn upload(
        &mut self,
        name: &str,
        src: &Source<'_>,
        len: u64,
        unit: u64,
        copied: &mut dyn FnMut(u64),
    ) -> Result<GpuStorage> {
        let storage =
            GpuStorage::allocate(&self.gpu, name, len, unit, Fill::Commands { whole: true })?;
        let half = self.slots[0].buffer.size();
        let mut pos = 0u64;
        while pos < len {
            if self.slots[self.current].used == half {
                self.flush()?;
            }
            self.wait_mapped(self.current)?;
            let slot = &mut self.slots[self.current];
            let at = slot.used;
            // Whole 4-byte words (copies move words), and not past the end of the tensor
            // except for the padding of its last word.
            let n = (half - at).min(len - pos);
            let n = if pos + n < len { n - n % 4 } else { n };
            let padded = n.next_multiple_of(4);
            {
                let mut view = slot
                    .buffer
                    .get_mapped_range_mut(at..at + padded)
                    .map_err(|e| gpu_err(name, e.to_string()))?;
                let bytes = src.chunk(pos as usize, n as usize, &mut self.scratch);
                view.slice(..n as usize).copy_from_slice(bytes);
                view.slice(n as usize..).fill(0);
            }
            for (page, page_off, tensor_off, count) in storage.spans(pos, padded) {
                slot.copies
                    .push((page.clone(), page_off, at + (tensor_off - pos), count));
            }
            slot.used = (at + padded).next_multiple_of(MAP_ALIGN).min(half);
            pos += n;
            copied(n);
        }
        Ok(storage)
    }

    /// Send the current slot's copies to the device and switch to the other slot.
    fn flush(&mut self) -> Result<()> {
        let slot = &mut self.slots[self.current];
        if slot.copies.is_empty() {
            return Ok(());
        }
        slot.buffer.unmap();
        let mut encoder =
            self.gpu
                .inner
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("mlmf upload"),
                });
        for (page, page_off, slot_off, count) in slot.copies.drain(..) {
            encoder.copy_buffer_to_buffer(&slot.buffer, slot_off, &page, page_off, count);
        }
        self.gpu.submit([encoder.finish()]);
        slot.used = 0;
        slot.mapped.store(false, Ordering::Release);
        let flag = slot.mapped.clone();
        slot.buffer.map_async(wgpu::MapMode::Write, .., move |r| {
            flag.store(r.is_ok(), Ordering::Release);
        });
        self.current ^= 1;
        Ok(())
    }

    fn wait_mapped(&self, i: usize) -> Result<()> {
        if self.settle_mapping(i)? {
            Ok(())
        } else {
            Err(gpu_err(
                "staging",
                "staging buffer could not be mapped again".into(),
            ))
        }
    }

    /// Wait for slot `i`'s mapping; whether it is mapped. When several threads load at once,
    /// another thread's poll may have taken the mapping's callback and not yet run it when ours
    /// returns, so a slot still unmapped after a wait is given a while (polling again) before
    /// its mapping counts as failed.
    fn settle_mapping(&self, i: usize) -> Result<bool> {
        let mapped = || self.slots[i].mapped.load(Ordering::Acquire);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mapped() {
            self.gpu.wait("upload")?;
            if mapped() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(mapped())
    }

    /// Send what is pending and wait until every copy has landed.
    pub fn finish(&mut self) -> Result<()> {
        self.flush()?;
        self.gpu.wait("upload")
    }
}

impl Drop for Uploader {
    /// Back to the pool unmapped, as the pool hands buffers out. A slot still being mapped
    /// (an upload abandoned on an error) is waited for first.
    fn drop(&mut self) {
        for i in 0..self.slots.len() {
            if matches!(self.settle_mapping(i), Ok(true)) {
                self.slots[i].buffer.unmap();
            }
        }
    }
}

fn gpu_err(name: &str, reason: String) -> Error {
    Error::Gpu {
        during: format!("upload of '{name}'"),
        reason,
    }
}
