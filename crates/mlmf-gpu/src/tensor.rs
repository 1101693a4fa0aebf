//! Tensors. A tensor's bytes live on a device: in GPU buffers (split into pages
//! when larger than one storage binding) or in host memory for the CPU device.

use std::fmt;

use mlmf_core::{DType, Error, Result, Shape};

use crate::device::Device;
use crate::storage::{readback, GpuStorage};

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

    /// Memory the tensor holds on its device: the host bytes, or the GPU pages as the pool sized
    /// them (each rounded up to its size bucket). What a memory budget counts.
    pub fn resident_bytes(&self) -> u64 {
        match &self.storage {
            Storage::Cpu(bytes) => bytes.len() as u64,
            Storage::Gpu(g) => g.device_bytes(),
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
            Storage::Gpu(g) => Device::Gpu(g.gpu().clone()),
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
            if g.pages().len() > 1 && shape.row_len() != self.shape.row_len() {
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
                Storage::Cpu(bytes) => Storage::Gpu(GpuStorage::from_bytes(
                    gpu,
                    &self.name,
                    bytes,
                    GpuStorage::page_unit(gpu, self.dtype, &self.shape),
                )?),
                Storage::Gpu(g) => Storage::Gpu(g.copy_to(
                    gpu,
                    &self.name,
                    GpuStorage::page_unit(gpu, self.dtype, &self.shape),
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
            Storage::Gpu(g) => format!("gpu, {} page(s)", g.pages().len()),
        };
        write!(
            f,
            "Tensor({} {} {} on {place})",
            self.name, self.dtype, self.shape
        )
    }
}
