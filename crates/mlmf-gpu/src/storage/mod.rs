//! A tensor's bytes on a GPU: pages of wgpu buffers, each at most one storage binding, split
//! at whole blocks (or whole rows) so kernels can work page by page; and the two ways bytes move
//! between them and the host (`upload`, `readback`).

pub(crate) mod readback;
mod upload;

pub(crate) use upload::Uploader;

use mlmf_core::{DType, Error, Result, Shape};

use std::sync::Arc;

use crate::device::{Block, Fill, Gpu, Kind};

/// Queue a write of `bytes` at `offset` of `buffer`, the last partial word padded with zeros
/// (queue writes move whole words).
pub(crate) fn write_padded(queue: &wgpu::Queue, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
    let whole = bytes.len() - bytes.len() % 4;
    queue.write_buffer(buffer, offset, &bytes[..whole]);
    if whole < bytes.len() {
        let mut tail = [0u8; 4];
        tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
        queue.write_buffer(buffer, offset + whole as u64, &tail);
    }
}

/// A tensor's bytes in GPU buffers. Page `i` holds bytes `i * page_bytes ..` of the tensor;
/// every page but the last is exactly `page_bytes` long, which is a multiple of the dtype's
/// block size and of 4, so no block straddles two pages.
pub struct GpuStorage {
    gpu: Gpu,
    /// Shared with [`GpuStorage::prefix`] views; back to the pool when the last one drops.
    pages: Vec<Arc<Block>>,
    page_bytes: u64,
    byte_len: u64,
}

impl GpuStorage {
    /// Where GPU pages of this tensor are split: at whole rows when rows are small enough
    /// (at most 1/16 of a page), else at whole blocks.
    pub(crate) fn page_unit(gpu: &Gpu, dtype: DType, shape: &Shape) -> u64 {
        dtype.row_page_unit(shape.row_len() as u64, gpu.page_bytes() / 16)
    }

    /// Pages for `len` bytes, split at multiples of `unit` bytes, from the pool, to be filled as
    /// `fill` says: their contents are undefined until then.
    pub(crate) fn allocate(
        gpu: &Gpu,
        name: &str,
        len: u64,
        unit: u64,
        fill: Fill,
    ) -> Result<GpuStorage> {
        let limit = gpu.page_bytes();
        let page_bytes = limit - limit % unit;
        if page_bytes == 0 {
            return Err(Error::DeviceLimit {
                tensor: name.to_string(),
                bytes: len,
                reason: format!("one block of {unit} bytes exceeds the page size {limit}"),
            });
        }
        let count = len.div_ceil(page_bytes);
        let pages = (0..count)
            .map(|i| {
                let n = page_bytes.min(len - i * page_bytes);
                let label = format!("{name} page {i}");
                gpu.take(Kind::Storage, n, &label, fill)
                    .map(Arc::new)
                    .map_err(|e| match e {
                        // Name the tensor and its whole size, not the page.
                        Error::OutOfMemory { reason, .. } => Error::OutOfMemory {
                            tensor: name.to_string(),
                            bytes: len,
                            reason,
                        },
                        e => e,
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GpuStorage {
            gpu: gpu.clone(),
            pages,
            page_bytes,
            byte_len: len,
        })
    }

    /// New pages holding `bytes` from host memory. The queue writes them before the next
    /// submission, so ops recorded after this see them; nothing waits. (Loads from a file go
    /// through the [`Uploader`]'s bounded staging instead.)
    pub(crate) fn from_bytes(gpu: &Gpu, name: &str, bytes: &[u8], unit: u64) -> Result<Self> {
        let len = bytes.len() as u64;
        let out = GpuStorage::allocate(gpu, name, len, unit, Fill::Queue)?;
        for (page, in_page, at, count) in out.spans(0, len.next_multiple_of(4)) {
            let end = (at + count).min(len);
            write_padded(
                gpu.wgpu_queue(),
                page,
                in_page,
                &bytes[at as usize..end as usize],
            );
        }
        Ok(out)
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The pages' buffers. Each may be larger than its share of the tensor (the pool rounds
    /// sizes up); the tensor's bytes start at offset 0 of each.
    pub fn pages(&self) -> Vec<&wgpu::Buffer> {
        self.pages.iter().map(|p| &***p).collect()
    }

    /// The pages as pool blocks, for launchers that keep one alive past a borrow.
    pub(crate) fn blocks(&self) -> &[Arc<Block>] {
        &self.pages
    }

    /// Bytes of device memory the pages take (the pool's bucket sizes; pages shared with a
    /// [`GpuStorage::prefix`] view count in both).
    pub fn device_bytes(&self) -> u64 {
        self.pages.iter().map(|p| p.size()).sum()
    }

    pub fn page_count(&self) -> usize {
        self.pages.len()
    }

    /// Bytes of the tensor in page `i` (the last may be short), padded to a multiple of 4.
    fn page_len(&self, i: usize) -> u64 {
        let start = i as u64 * self.page_bytes;
        self.page_bytes
            .min(self.byte_len.saturating_sub(start))
            .next_multiple_of(4)
    }

    /// Page `i`, or [`Error::Gpu`]: launchers ask only for pages their page arithmetic says
    /// exist.
    pub(crate) fn page(&self, i: usize) -> Result<&wgpu::Buffer> {
        self.pages.get(i).map(|p| &***p).ok_or_else(|| Error::Gpu {
            during: "binding a page".into(),
            reason: format!("page {i} of {} does not exist", self.pages.len()),
        })
    }

    pub fn page_bytes(&self) -> u64 {
        self.page_bytes
    }

    pub fn byte_len(&self) -> u64 {
        self.byte_len
    }

    /// Split the byte range `pos..pos + len` (a multiple of 4, padded past the end at most to
    /// the next multiple of 4) into `(page, offset in page, tensor offset, count)` pieces.
    pub(crate) fn spans(&self, pos: u64, len: u64) -> Vec<(&wgpu::Buffer, u64, u64, u64)> {
        let mut out = Vec::new();
        let end = pos + len;
        let mut at = pos;
        while at < end {
            let page = (at / self.page_bytes) as usize;
            let in_page = at - page as u64 * self.page_bytes;
            let page_size = self.page_len(page);
            let count = (page_size - in_page).min(end - at);
            out.push((&**self.pages[page], in_page, at, count));
            at += count;
        }
        out
    }

    /// The first `len` bytes (at most [`GpuStorage::byte_len`]) as storage of their own that
    /// shares these pages: no copy. Kernels submitted later see writes made to either.
    pub(crate) fn prefix(&self, len: u64) -> GpuStorage {
        let len = len.min(self.byte_len);
        let pages = len.div_ceil(self.page_bytes).max(1) as usize;
        GpuStorage {
            gpu: self.gpu.clone(),
            pages: self.pages[..pages.min(self.pages.len())].to_vec(),
            page_bytes: self.page_bytes,
            byte_len: len,
        }
    }

    /// Record a device-side copy of all of `src` (on the same device) into these pages at byte
    /// `at`. The caller checks that `at + src.byte_len()` fits and that both are multiples of 4.
    pub(crate) fn write_from(&self, at: u64, src: &GpuStorage) {
        let mut encoder = self.gpu.record("mlmf write rows");
        for (src_page, src_off, pos, count) in src.spans(0, src.byte_len) {
            for (dst_page, dst_off, dst_at, n) in self.spans(at + pos, count) {
                let from = src_off + (dst_at - at - pos);
                encoder.copy_buffer_to_buffer(src_page, from, dst_page, dst_off, n);
            }
        }
        encoder.finish();
    }

    /// Record zeroing every page (pool buffers come with undefined contents).
    pub(crate) fn clear(&self) {
        let mut encoder = self.gpu.record("mlmf clear");
        for (i, page) in self.pages.iter().enumerate() {
            encoder.clear_buffer(page, 0, Some(self.page_len(i)));
        }
        encoder.finish();
    }

    /// Whether `other` lives on the same wgpu device.
    pub(crate) fn same_device(&self, other: &GpuStorage) -> bool {
        std::sync::Arc::ptr_eq(&self.gpu.inner, &other.gpu.inner)
    }

    /// A copy on `gpu`: a device-side copy on the same device, chunk by chunk through host
    /// memory between different devices.
    pub(crate) fn copy_to(&self, gpu: &Gpu, name: &str, unit: u64) -> Result<GpuStorage> {
        // Filled by a copy in the batch, or (between devices) by queue writes.
        let fill = match std::sync::Arc::ptr_eq(&self.gpu.inner, &gpu.inner) {
            true => Fill::Commands { whole: true },
            false => Fill::Queue,
        };
        let out = GpuStorage::allocate(gpu, name, self.byte_len, unit, fill)?;
        if std::sync::Arc::ptr_eq(&self.gpu.inner, &gpu.inner) && out.page_bytes == self.page_bytes
        {
            let mut encoder = gpu.record("mlmf copy");
            for (i, (src, dst)) in self.pages.iter().zip(&out.pages).enumerate() {
                encoder.copy_buffer_to_buffer(src, 0, dst, 0, self.page_len(i));
            }
            // Recorded in the batch: later ops are ordered after it; nothing to wait for.
            encoder.finish();
            return Ok(out);
        } else {
            readback::for_each_chunk(self, |pos, chunk| {
                let mut padded = chunk.to_vec();
                padded.resize(chunk.len().next_multiple_of(4), 0);
                for (page, page_off, at, count) in out.spans(pos, padded.len() as u64) {
                    let from = (at - pos) as usize;
                    gpu.write_after(page, page_off, &padded[from..from + count as usize]);
                }
                gpu.wait("copy between devices")
            })?;
        }
        gpu.wait("copy")?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::GpuOptions;

    /// Debug builds fill pool buffers for kernels with 0xFF (NaN as f32) so a kernel that relies
    /// on zeroed outputs fails its tests; `clear` zeroes.
    #[test]
    fn pool_buffers_come_poisoned_in_debug_builds() {
        let gpu = crate::Gpu::new(&GpuOptions::default()).unwrap();
        let s =
            GpuStorage::allocate(&gpu, "poisoned", 64, 4, Fill::Commands { whole: false }).unwrap();
        let mut bytes = Vec::new();
        readback::for_each_chunk(&s, |_, b| {
            bytes.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        if cfg!(debug_assertions) && std::env::var_os("MLMF_POOL_POISON").is_none() {
            assert_eq!(bytes, vec![0xFF; 64]);
        }
        s.clear();
        bytes.clear();
        readback::for_each_chunk(&s, |_, b| {
            bytes.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(bytes, vec![0; 64]);
    }
}
