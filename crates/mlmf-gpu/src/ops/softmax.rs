//! Softmax over the last axis of an f32 tensor of any rank >= 1, numerically stable as
//! `torch.softmax(x, -1)`: `y[k] = exp(x[k] - m) / sum_j exp(x[j] - m)` with `m` the row's
//! maximum, so rows of large values (1e4 and beyond) do not overflow. Each exponent `x[k] - m`
//! is clamped below at -200 (where exp is 0 in f32 anyway) so masked entries holding the f32
//! minimum stay finite on the GPU; see `shaders/softmax.wgsl`. Rows may be of any length.
//!
//! Infinities: WGSL leaves their arithmetic indeterminate, so on a GPU an input should be
//! finite (write `f32::MIN` for an entry to ignore, as [`super::attention`] does). The CPU twin
//! follows IEEE: `-inf` entries get 0, and a row with no finite maximum gives NaN, as torch.
//!
//! GPU: one workgroup per row (workgroup max and sum), or one invocation per row on CPU-based
//! adapters ([`Reduce`]); `record` is the pass [`super::attention`] reuses (with rows of only
//! masked entries set to zeros for its PyTorch-style masks).
//!
//! CPU twin: `cpu`, in index order. With `eps = f32::EPSILON`, `t_k = x[k] - m`, `p` the exact
//! result and n = cols, both stay within
//! `|y_k - p_k| <= eps p_k (n + 8 + 3 |t_k| + sum_j p_j (4 + 3 |t_j|)) + f32::MIN_POSITIVE`
//! (the tests check it in f64). Derivation: the subtraction and exp (WGSL: 3 + 2|t| ulp) give
//! each e_k a relative error of at most (4 + 3|t_k|) eps; the n-term sum adds n eps and the
//! p-weighted errors of its terms; the division (2.5 ulp) adds 3 eps; the last term allows a GPU
//! to flush subnormal results to zero.

use super::launch::{self, Place, Reduce};
use crate::device::kernels::{Kernel, PipelineKey};
use crate::device::Gpu;
use crate::device::Recording;
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};
use mlmf_core::DType;
use mlmf_core::Result;

const OP: &str = "softmax";
const WORKGROUP: u32 = 64;

/// Below this an exponent is clamped (the kernel's `EXP_FLOOR`).
pub const EXP_FLOOR: f32 = -200.0;

/// Uniform parameters of `softmax.wgsl`, fields in WGSL order.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == Kernel::Softmax.params_bytes());

/// Softmax of `x` over its last axis (see the module doc): a new f32 tensor of x's shape and
/// name on x's device. Errors: x a scalar ([`mlmf_core::Error::OpRank`]), x not F32
/// ([`mlmf_core::Error::OpDType`]), x larger than one storage binding ([`mlmf_core::Error::DeviceLimit`]).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    softmax_with(x, None)
}

/// [`softmax`] with the GPU's way of reducing a row chosen by the caller; `None` chooses by the
/// adapter. Ignored on the CPU.
pub fn softmax_with(x: &Tensor, reduce: Option<Reduce>) -> Result<Tensor> {
    let Some(&cols) = x.shape().dims().last() else {
        return Err(launch::rank_error(OP, x, "a tensor of rank 1 or more"));
    };
    launch::require_f32(OP, x)?;
    let rows = if cols == 0 {
        0
    } else {
        x.shape().elem_count() / cols as u64
    };
    let storage = match launch::place(OP, &[x])? {
        Place::Cpu(bytes) => Storage::Cpu(launch::f32_bytes(&cpu::softmax(
            &launch::f32s(bytes[0]),
            cols,
        ))),
        Place::Gpu(gs) => {
            let gpu = gs[0].gpu();
            let out = launch::Output::new(gpu, x, x.shape())?;
            let mut encoder = gpu.record(OP);
            if rows > 0 {
                launch::to_u32(x, x.shape().elem_count(), "the element count")?;
                let input = launch::whole(&mut encoder, x, gs[0], x.name())?;
                let reduce = reduce.unwrap_or_else(|| Reduce::for_gpu(gpu));
                let (rows, cols) = (
                    launch::to_u32(x, rows, "the row count")?,
                    launch::to_u32(x, cols as u64, "the row length")?,
                );
                let rows = Rows {
                    rows,
                    cols,
                    zero_masked: false,
                };
                record(gpu, &mut encoder, &input, out.buffer(), rows, reduce)?;
            }
            let storage: GpuStorage = out.finish(&mut encoder);
            encoder.finish();
            Storage::Gpu(storage)
        }
    };
    Ok(Tensor::new(
        x.name().to_string(),
        DType::F32,
        x.shape().clone(),
        storage,
    ))
}

/// The rows [`record`] turns into probabilities.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rows {
    pub rows: u32,
    pub cols: u32,
    /// A row whose maximum is the f32 minimum (every entry masked, as attention's `mha_scores`
    /// writes them) becomes all zeros ([`cpu::softmax_zero_masked`]) instead of uniform.
    pub zero_masked: bool,
}

/// Record a softmax of `rows.rows` rows of `rows.cols` f32 from `input` into `output`
/// (distinct buffers, `rows * cols` elements each) in `encoder`.
pub(crate) fn record(
    gpu: &Gpu,
    encoder: &mut Recording<'_>,
    input: &wgpu::Buffer,
    output: &wgpu::Buffer,
    Rows {
        rows,
        cols,
        zero_masked,
    }: Rows,
    reduce: Reduce,
) -> Result<()> {
    let key = PipelineKey::new(Kernel::Softmax, "softmax")
        .with("WG", f64::from(WORKGROUP))
        .with("ROW_PER_INVOCATION", reduce.flag())
        .with("ZERO_MASKED_ROWS", f64::from(u8::from(zero_masked)));
    let pipeline = gpu.pipeline(&key)?;
    let params = Params {
        rows,
        cols,
        _pad: [0; 2],
    };
    let group = launch::bind(
        encoder,
        &pipeline,
        OP,
        bytemuck::bytes_of(&params),
        &[input, output],
    )?;
    let invocations = reduce.invocations(u64::from(rows), WORKGROUP);
    gpu.dispatch(encoder, &pipeline, &group, invocations, WORKGROUP);
    Ok(())
}

/// The CPU twin: per row, the maximum, then the exponentials and their sum, then the quotients,
/// each in index order.
pub(crate) mod cpu {
    use super::EXP_FLOOR;

    /// Softmax of the rows of `x` (`cols` long each; a partial last row is dropped).
    pub fn softmax(x: &[f32], cols: usize) -> Vec<f32> {
        softmax_rows(x, cols, false)
    }

    /// [`softmax`], except that a row whose maximum is `f32::MIN` (every entry masked) becomes
    /// all zeros: the kernel's `ZERO_MASKED_ROWS`.
    pub fn softmax_zero_masked(x: &[f32], cols: usize) -> Vec<f32> {
        softmax_rows(x, cols, true)
    }

    fn softmax_rows(x: &[f32], cols: usize, zero_masked: bool) -> Vec<f32> {
        let mut y = Vec::with_capacity(x.len());
        if cols == 0 {
            return y;
        }
        for row in x.chunks_exact(cols) {
            let mut m = row[0];
            for &v in &row[1..] {
                m = m.max(v);
            }
            let start = y.len();
            let mut s = 0.0f32;
            for &v in row {
                let t = v - m;
                // Not f32::max: a NaN exponent (a row with no finite maximum) must stay NaN.
                let e = (if t < EXP_FLOOR { EXP_FLOOR } else { t }).exp();
                y.push(e);
                s += e;
            }
            let empty = zero_masked && m == f32::MIN;
            for e in &mut y[start..] {
                *e = if empty { 0.0 } else { *e / s };
            }
        }
        y
    }
}
