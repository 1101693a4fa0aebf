//! Tensors and shapes. A tensor's bytes live on a device: in GPU buffers (split into pages
//! when larger than one storage binding) or in host memory for the CPU device.

use std::fmt;

use crate::device::{readback, Device, Gpu};
use crate::dtype::DType;
use crate::error::{Error, Result};

/// Dimensions in numpy/PyTorch order: slowest first, the row length last.
/// The element count is checked against overflow when the shape is made, so it never wraps.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: Vec<usize>,
    elems: u64,
}

impl Shape {
    /// `None` when the product of `dims` does not fit in 64 bits (or in `usize`).
    pub fn new(dims: Vec<usize>) -> Option<Shape> {
        let mut elems: u64 = 1;
        for &d in &dims {
            elems = elems.checked_mul(u64::try_from(d).ok()?)?;
        }
        usize::try_from(elems).ok()?;
        Some(Shape { dims, elems })
    }

    /// Like [`Shape::new`] for dimensions that came from a file as `u64`.
    pub fn from_u64(dims: &[u64]) -> Option<Shape> {
        let dims = dims
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<Vec<_>>>()?;
        Shape::new(dims)
    }

    pub fn scalar() -> Shape {
        Shape {
            dims: Vec::new(),
            elems: 1,
        }
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    pub fn elem_count(&self) -> u64 {
        self.elems
    }

    /// Length of the last (fastest) dimension; 1 for a scalar.
    pub fn row_len(&self) -> usize {
        self.dims.last().copied().unwrap_or(1)
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims)
    }
}

/// A tensor on a device.
pub struct Tensor {
    name: String,
    dtype: DType,
    shape: Shape,
    storage: Storage,
}

/// Where a tensor's bytes are.
pub enum Storage {
    Cpu(Vec<u8>),
    Gpu(GpuStorage),
}

impl Tensor {
    pub(crate) fn new(name: String, dtype: DType, shape: Shape, storage: Storage) -> Tensor {
        Tensor {
            name,
            dtype,
            shape,
            storage,
        }
    }

    /// A tensor in host memory (the CPU device) from bytes in `dtype`'s layout: little-endian
    /// numbers, or GGUF blocks for quantized types, row after row. Move it to a GPU with
    /// [`Tensor::to_device`].
    pub fn from_bytes(
        name: impl Into<String>,
        dtype: DType,
        shape: Shape,
        bytes: Vec<u8>,
    ) -> Result<Tensor> {
        let t = Tensor::new(name.into(), dtype, shape, Storage::Cpu(bytes));
        t.check_layout()?;
        Ok(t)
    }

    /// A tensor of f32 `values` shaped `dims`, in host memory (move it with
    /// [`Tensor::to_device`]). Errors: `values` is not `dims`' element count
    /// ([`Error::TensorBytes`]).
    pub fn from_f32(name: &str, dims: Vec<usize>, values: &[f32]) -> Result<Tensor> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape = Shape::new(dims.clone()).ok_or_else(|| Error::TensorBytes {
            tensor: name.to_string(),
            dtype: DType::F32.to_string(),
            shape: dims,
            expected: u64::MAX,
            found: bytes.len() as u64,
        })?;
        Tensor::from_bytes(name, DType::F32, shape, bytes)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Bytes of the tensor in its dtype's layout (blocks for quantized types).
    pub fn byte_len(&self) -> u64 {
        match &self.storage {
            Storage::Cpu(bytes) => bytes.len() as u64,
            Storage::Gpu(g) => g.byte_len(),
        }
    }

    /// Check that the bytes are whole blocks that fit the shape: each row (the last dimension)
    /// is a whole number of the dtype's blocks, and the byte length is what the dtype's block
    /// geometry gives for the element count. Kernels rely on this before they index pages.
    pub fn check_layout(&self) -> Result<()> {
        let block_elems = self.dtype.block_elems();
        let row_len = self.shape.row_len() as u64;
        if !row_len.is_multiple_of(block_elems) {
            return Err(Error::PartialBlock {
                tensor: self.name.clone(),
                dtype: self.dtype.to_string(),
                row_len,
                block_elems,
            });
        }
        let expected = self.dtype.byte_len(self.shape.elem_count());
        if expected != Some(self.byte_len()) {
            return Err(Error::TensorBytes {
                tensor: self.name.clone(),
                dtype: self.dtype.to_string(),
                shape: self.shape.dims().to_vec(),
                expected: expected.unwrap_or(u64::MAX),
                found: self.byte_len(),
            });
        }
        Ok(())
    }

    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Gpu(g) => Device::Gpu(g.gpu.clone()),
        }
    }

    /// Visit the tensor's bytes in order, in bounded chunks (GPU readback goes through the
    /// device's staging window; CPU tensors are handed over in one piece).
    pub fn for_each_chunk(&self, mut f: impl FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        match &self.storage {
            Storage::Cpu(bytes) => f(0, bytes),
            Storage::Gpu(g) => readback::for_each_chunk(g, f),
        }
    }

    /// All bytes in host memory. Meant for small tensors and tests; large ones should use
    /// [`Tensor::for_each_chunk`].
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.byte_len() as usize);
        self.for_each_chunk(|_, chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }

    /// Where GPU pages of this tensor are split: at whole rows when rows are small enough
    /// (at most 1/16 of a page), else at whole blocks.
    pub(crate) fn page_unit_on(gpu: &Gpu, dtype: DType, shape: &Shape) -> u64 {
        dtype.row_page_unit(shape.row_len() as u64, gpu.page_bytes() / 16)
    }

    /// The values as f32 in host memory (converted or decoded first where the dtype is not F32,
    /// on the tensor's device). Meant for outputs and small tensors.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let converted;
        let t = if self.dtype == DType::F32 {
            self
        } else {
            converted = crate::ops::convert::to_f32(self)?;
            &converted
        };
        let mut out = Vec::with_capacity(t.shape.elem_count() as usize);
        t.for_each_chunk(|_, chunk| {
            out.extend(
                chunk
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            Ok(())
        })?;
        Ok(out)
    }

    /// The same bytes viewed with another shape of the same element count (no copy). On a GPU,
    /// pages are split where the shape's rows allow, so a tensor in several pages keeps its
    /// shape unless the new rows are the same length. Errors: another element count
    /// ([`Error::TensorBytes`]), a multi-page GPU tensor with other rows ([`Error::DeviceLimit`]).
    pub fn reshape(self, dims: Vec<usize>) -> Result<Tensor> {
        let new = Shape::new(dims.clone());
        let Some(shape) = new
            .clone()
            .filter(|s| s.elem_count() == self.shape.elem_count())
        else {
            return Err(Error::TensorBytes {
                tensor: self.name.clone(),
                dtype: self.dtype.to_string(),
                shape: dims,
                expected: new
                    .and_then(|s| self.dtype.byte_len(s.elem_count()))
                    .unwrap_or(u64::MAX),
                found: self.byte_len(),
            });
        };
        if let Storage::Gpu(g) = &self.storage {
            if g.pages.len() > 1 && shape.row_len() != self.shape.row_len() {
                return Err(Error::DeviceLimit {
                    tensor: self.name.clone(),
                    bytes: self.byte_len(),
                    reason: "a tensor in several pages keeps its row length when reshaped".into(),
                });
            }
        }
        Ok(Tensor { shape, ..self })
    }

    /// A copy of this tensor on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        let storage = match device {
            Device::Cpu => Storage::Cpu(self.to_bytes()?),
            Device::Gpu(gpu) => match &self.storage {
                Storage::Cpu(bytes) => {
                    let src = crate::device::source::Source::Contiguous(bytes);
                    let mut up = crate::device::upload::Uploader::new(gpu, bytes.len() as u64);
                    let storage = up.upload(
                        &self.name,
                        &src,
                        bytes.len() as u64,
                        Tensor::page_unit_on(gpu, self.dtype, &self.shape),
                    )?;
                    up.finish()?;
                    Storage::Gpu(storage)
                }
                Storage::Gpu(g) => Storage::Gpu(g.copy_to(
                    gpu,
                    &self.name,
                    Tensor::page_unit_on(gpu, self.dtype, &self.shape),
                )?),
            },
        };
        Ok(Tensor::new(
            self.name.clone(),
            self.dtype,
            self.shape.clone(),
            storage,
        ))
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match &self.storage {
            Storage::Cpu(_) => "cpu".to_string(),
            Storage::Gpu(g) => format!("gpu, {} page(s)", g.pages.len()),
        };
        write!(
            f,
            "Tensor({} {} {} on {place})",
            self.name, self.dtype, self.shape
        )
    }
}

/// A tensor's bytes in GPU buffers. Page `i` holds bytes `i * page_bytes ..` of the tensor;
/// every page but the last is exactly `page_bytes` long, which is a multiple of the dtype's
/// block size and of 4, so no block straddles two pages.
pub struct GpuStorage {
    gpu: Gpu,
    pages: Vec<wgpu::Buffer>,
    page_bytes: u64,
    byte_len: u64,
}

impl GpuStorage {
    /// Empty pages for `len` bytes, split at multiples of `unit` bytes.
    pub(crate) fn allocate(gpu: &Gpu, name: &str, len: u64, unit: u64) -> Result<GpuStorage> {
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
        // Running out of device memory is an error to return, not a panic.
        let scope = gpu
            .inner
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let pages = (0..count)
            .map(|i| {
                let n = page_bytes.min(len - i * page_bytes);
                gpu.inner.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{name} page {i}")),
                    size: n.next_multiple_of(4),
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::DeviceLimit {
                tensor: name.to_string(),
                bytes: len,
                reason: format!("out of device memory: {e}"),
            });
        }
        Ok(GpuStorage {
            gpu: gpu.clone(),
            pages,
            page_bytes,
            byte_len: len,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn pages(&self) -> &[wgpu::Buffer] {
        &self.pages
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
            let page_size = self.pages[page].size();
            let count = (page_size - in_page).min(end - at);
            out.push((&self.pages[page], in_page, at, count));
            at += count;
        }
        out
    }

    /// A copy on `gpu`: a device-side copy on the same device, chunk by chunk through host
    /// memory between different devices.
    fn copy_to(&self, gpu: &Gpu, name: &str, unit: u64) -> Result<GpuStorage> {
        let out = GpuStorage::allocate(gpu, name, self.byte_len, unit)?;
        if std::sync::Arc::ptr_eq(&self.gpu.inner, &gpu.inner) && out.page_bytes == self.page_bytes
        {
            let mut encoder =
                gpu.inner
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("mlmf copy"),
                    });
            for (src, dst) in self.pages.iter().zip(&out.pages) {
                encoder.copy_buffer_to_buffer(src, 0, dst, 0, src.size());
            }
            gpu.inner.queue.submit([encoder.finish()]);
        } else {
            readback::for_each_chunk(self, |pos, chunk| {
                let mut padded = chunk.to_vec();
                padded.resize(chunk.len().next_multiple_of(4), 0);
                for (page, page_off, at, count) in out.spans(pos, padded.len() as u64) {
                    let from = (at - pos) as usize;
                    gpu.inner.queue.write_buffer(
                        page,
                        page_off,
                        &padded[from..from + count as usize],
                    );
                }
                gpu.inner.queue.submit([]);
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

    #[test]
    fn element_count_is_checked() {
        assert_eq!(Shape::new(vec![2, 3, 4]).unwrap().elem_count(), 24);
        assert_eq!(Shape::new(vec![]).unwrap().elem_count(), 1);
        assert_eq!(Shape::new(vec![0, 7]).unwrap().elem_count(), 0);
        assert!(Shape::from_u64(&[1 << 33, 1 << 33]).is_none());
        assert!(Shape::from_u64(&[u64::MAX, 2]).is_none());
    }
}
