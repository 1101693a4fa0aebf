//! What the launchers share: operand checks with typed errors, the operands' common device, each
//! GPU operand in one storage binding (its only page, or its pages gathered into a scratch
//! buffer), an f32 output written through one binding and copied into its pages when it has
//! several, bind groups, and how a row reduction is spread over invocations ([`Reduce`]).
//!
//! Kernels that index whole tensors, not pages (norm, softmax, embedding's output, attention,
//! conv, matmul, LoRA's BGMV) take an operand or output larger than one storage binding as
//! [`Error::DeviceLimit`].

use std::sync::Arc;

use crate::device::kernels::Pipeline;
use crate::device::{BindKey, Block, Event, Fill, Gpu, Kind, Recording};
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};
use mlmf_core::DType;
use mlmf_core::Shape;
use mlmf_core::{Error, Result};

pub(crate) fn rank_error(op: &'static str, t: &Tensor, expected: &'static str) -> Error {
    Error::OpRank {
        op,
        tensor: t.name().to_string(),
        shape: t.shape().dims().to_vec(),
        expected,
    }
}

pub(crate) fn shape_error(op: &'static str, left: &Tensor, right: &Tensor) -> Error {
    Error::ShapeMismatch {
        op,
        left: left.name().to_string(),
        left_shape: left.shape().dims().to_vec(),
        right: right.name().to_string(),
        right_shape: right.shape().dims().to_vec(),
    }
}

/// `t` is F32 with bytes that fit its shape.
pub(crate) fn require_f32(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::OpDType {
            op,
            tensor: t.name().to_string(),
            dtype: t.dtype(),
            expected: "F32",
        });
    }
    t.check_layout()
}

/// The dimensions of a tensor of rank `N`, or [`Error::OpRank`].
pub(crate) fn dims<const N: usize>(
    op: &'static str,
    t: &Tensor,
    expected: &'static str,
) -> Result<[usize; N]> {
    <[usize; N]>::try_from(t.shape().dims()).map_err(|_| rank_error(op, t, expected))
}

/// An f32 output shape whose byte count fits in 64 bits, or [`Error::DeviceLimit`] naming `t`.
pub(crate) fn f32_shape(t: &Tensor, dims: Vec<usize>) -> Result<Shape> {
    Shape::new(dims.clone())
        .filter(|s| DType::F32.byte_len(s.elem_count()).is_some())
        .ok_or_else(|| Error::DeviceLimit {
            tensor: t.name().to_string(),
            bytes: t.byte_len(),
            reason: format!("an f32 output of shape {dims:?} overflows 64 bits"),
        })
}

/// Where every operand of an op lives: all in host memory, or all on one GPU.
pub(crate) enum Place<'a> {
    Cpu(Vec<&'a [u8]>),
    Gpu(Vec<&'a GpuStorage>),
}

/// The operands' common device, or [`Error::DeviceMismatch`] naming the first operand that is
/// elsewhere than `ts[0]`. `ts` is not empty.
pub(crate) fn place<'a>(op: &'static str, ts: &[&'a Tensor]) -> Result<Place<'a>> {
    let first = ts[0];
    let mismatch = |other: &Tensor| Error::DeviceMismatch {
        op,
        left: first.name().to_string(),
        left_device: first.device().describe(),
        right: other.name().to_string(),
        right_device: other.device().describe(),
    };
    match first.storage() {
        Storage::Cpu(_) => ts
            .iter()
            .map(|t| match t.storage() {
                Storage::Cpu(b) => Ok(b.as_slice()),
                Storage::Gpu(_) => Err(mismatch(t)),
            })
            .collect::<Result<_>>()
            .map(Place::Cpu),
        Storage::Gpu(g0) => ts
            .iter()
            .map(|t| match t.storage() {
                Storage::Gpu(g) if Arc::ptr_eq(&g.gpu().inner, &g0.gpu().inner) => Ok(g),
                _ => Err(mismatch(t)),
            })
            .collect::<Result<_>>()
            .map(Place::Gpu),
    }
}

pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `v` as a kernel's u32 parameter, or [`Error::DeviceLimit`] naming `t`.
pub(crate) fn to_u32(t: &Tensor, v: u64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::DeviceLimit {
        tensor: t.name().to_string(),
        bytes: t.byte_len(),
        reason: format!("{what} ({v}) does not fit in 32 bits"),
    })
}

/// Kernels that address bytes of a page of `t` (stored in `src`) with u32: its pages must be
/// smaller than 4 GiB, or [`Error::DeviceLimit`].
pub(crate) fn check_page_bytes(t: &Tensor, src: &GpuStorage) -> Result<()> {
    if src.page_bytes() > u64::from(u32::MAX) {
        return Err(Error::DeviceLimit {
            tensor: t.name().to_string(),
            bytes: t.byte_len(),
            reason: format!(
                "pages of {} bytes are too large for 32-bit byte offsets",
                src.page_bytes()
            ),
        });
    }
    Ok(())
}

/// The largest buffer one storage binding may hold on `gpu`.
fn binding_limit(gpu: &Gpu) -> u64 {
    gpu.limits()
        .max_storage_buffer_binding_size
        .min(gpu.limits().max_buffer_size)
}

/// `bytes` for `what` of tensor `t` fit in one storage binding, or [`Error::DeviceLimit`].
pub(crate) fn check_binding(gpu: &Gpu, t: &Tensor, what: &str, bytes: u64) -> Result<()> {
    let binding = binding_limit(gpu);
    if bytes > binding {
        return Err(Error::DeviceLimit {
            tensor: t.name().to_string(),
            bytes: t.byte_len(),
            reason: format!(
                "{what} takes {bytes} bytes, more than one storage binding ({binding})"
            ),
        });
    }
    Ok(())
}

/// A storage buffer of at least 4 bytes from the pool (no binding may be empty); its contents
/// are undefined.
pub(crate) fn scratch(gpu: &Gpu, label: &str, bytes: u64) -> Result<Arc<Block>> {
    gpu.take(Kind::Storage, bytes, label, Fill::KERNEL)
        .map(Arc::new)
}

/// A read-only storage buffer holding `words`.
pub(crate) fn words_buffer(gpu: &Gpu, label: &str, words: &[u32]) -> Result<Arc<Block>> {
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.resize(bytes.len().max(4), 0);
    gpu.take_init(label, &bytes).map(Arc::new)
}

/// All of `t` (stored in `s`) in one buffer: its only page, or its pages gathered into a scratch
/// buffer by copies recorded in `encoder`.
pub(crate) fn whole(
    encoder: &mut wgpu::CommandEncoder,
    t: &Tensor,
    s: &GpuStorage,
    what: &str,
) -> Result<Arc<Block>> {
    if let [page] = s.blocks() {
        return Ok(page.clone());
    }
    let len = s.byte_len().next_multiple_of(4);
    check_binding(s.gpu(), t, what, len)?;
    let buf = scratch(s.gpu(), what, len)?;
    for (page, in_page, at, count) in s.spans(0, len) {
        encoder.copy_buffer_to_buffer(page, in_page, &buf, at, count);
    }
    Ok(buf)
}

/// Each of `ts` (stored in `gs`) whole, in order (see [`whole`]).
pub(crate) fn wholes(
    encoder: &mut wgpu::CommandEncoder,
    ts: &[&Tensor],
    gs: &[&GpuStorage],
) -> Result<Vec<Arc<Block>>> {
    ts.iter()
        .zip(gs)
        .map(|(t, s)| whole(encoder, t, s, t.name()))
        .collect()
}

/// A new f32 tensor's pages and the one buffer kernels write it through: its only page, or a
/// scratch buffer that [`Output::finish`] copies into the pages. Kernels write every element.
pub(crate) struct Output {
    storage: GpuStorage,
    buf: Arc<Block>,
    direct: bool,
    bytes: u64,
}

impl Output {
    pub(crate) fn new(gpu: &Gpu, t: &Tensor, shape: &Shape) -> Result<Output> {
        let bytes = shape.elem_count() * 4;
        check_binding(gpu, t, "the output", bytes)?;
        let unit = GpuStorage::page_unit(gpu, DType::F32, shape);
        let storage = GpuStorage::allocate(gpu, t.name(), bytes, unit, Fill::KERNEL)?;
        let direct = storage.page_count() == 1;
        let buf = match storage.blocks() {
            [page] => page.clone(),
            _ => scratch(gpu, "output", bytes)?,
        };
        Ok(Output {
            storage,
            buf,
            direct,
            bytes,
        })
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buf
    }

    /// Record the copies into the pages (when there are several) and hand the pages over.
    pub(crate) fn finish(self, encoder: &mut wgpu::CommandEncoder) -> GpuStorage {
        if !self.direct {
            for (page, in_page, at, count) in self.storage.spans(0, self.bytes) {
                encoder.copy_buffer_to_buffer(&self.buf, at, page, in_page, count);
            }
        }
        self.storage
    }
}

/// A bind group and the dynamic offset of its parameters, if any.
pub(crate) struct Bound {
    pub(crate) group: wgpu::BindGroup,
    offset: Option<u32>,
}

impl Bound {
    pub(crate) fn offsets(&self) -> &[u32] {
        self.offset.as_slice()
    }
}

/// The bind group of one dispatch: the uniform `params` at binding 0 (a slice of the batch's
/// parameter block), then `buffers` in binding order from 1, then for the families that read
/// weight blocks the i-quant tables. With the pool on, a bind group over the same buffers is
/// made once and reused (the pool keeps them, and hands out the same ones again in a repeated
/// forward pass).
pub(crate) fn bind(
    rec: &mut Recording<'_>,
    pipeline: &Pipeline,
    label: &str,
    params: &[u8],
    buffers: &[&wgpu::Buffer],
) -> Result<Bound> {
    let uniform = rec.params(label, params)?;
    let gpu = rec.gpu();
    let all: Vec<&wgpu::Buffer> = buffers.iter().copied().chain(&pipeline.grids).collect();
    let make = || {
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.binding(),
        }];
        for (i, buf) in all.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: buf.as_entire_binding(),
            });
        }
        gpu.count(Event::BindGroup);
        gpu.wgpu_device()
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &pipeline.layout,
                entries: &entries,
            })
    };
    if !uniform.dynamic {
        return Ok(Bound {
            group: make(),
            offset: None,
        });
    }
    let offset = Some(uniform.offset as u32);
    let key = BindKey {
        layout: pipeline.layout.clone(),
        size: uniform.size,
        buffers: std::iter::once(&uniform.buffer)
            .chain(all.iter().copied())
            .cloned()
            .collect(),
    };
    if let Some(group) = gpu.inner.pool.bind_group(&key) {
        return Ok(Bound { group, offset });
    }
    let group = make();
    gpu.inner.pool.keep_bind_group(key, group.clone());
    Ok(Bound { group, offset })
}

/// How a reduction over a row is spread over a GPU's invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// A workgroup per row, partial results combined in workgroup memory (real GPUs).
    Workgroup,
    /// An invocation per row, no barriers (CPU-based adapters such as lavapipe, which run a
    /// workgroup's invocations as SIMD lanes and pay for each barrier by switching between
    /// them; see qmatmul's `Reduce`).
    PerInvocation,
}

impl Reduce {
    /// The choice for `gpu`: per invocation on CPU-type adapters, per workgroup elsewhere.
    pub(crate) fn for_gpu(gpu: &Gpu) -> Reduce {
        if gpu.inner.info.device_type == wgpu::DeviceType::Cpu {
            Reduce::PerInvocation
        } else {
            Reduce::Workgroup
        }
    }

    /// The kernels' `ROW_PER_INVOCATION` override.
    pub(crate) fn flag(self) -> f64 {
        match self {
            Reduce::Workgroup => 0.0,
            Reduce::PerInvocation => 1.0,
        }
    }

    /// Invocations to dispatch for `rows` rows with workgroups of `wg`.
    pub(crate) fn invocations(self, rows: u64, wg: u32) -> u64 {
        match self {
            Reduce::Workgroup => rows * u64::from(wg),
            Reduce::PerInvocation => rows,
        }
    }
}
