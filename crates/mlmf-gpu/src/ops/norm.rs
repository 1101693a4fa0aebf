//! Normalisation over the last axis of an f32 tensor of any rank >= 1, each row (the last
//! dimension, `cols` long) on its own:
//!
//! - [`layer_norm`]: `y = (x - mean) / sqrt(var + eps) * weight + bias`, `var` the biased
//!   variance `mean((x - mean)^2)`, as `torch.nn.functional.layer_norm` (BERT's LayerNorm);
//! - [`rms_norm`]: `y = x / sqrt(mean(x^2) + eps) * weight`, as LLaMA's RMSNorm.
//!
//! `weight` and `bias` are f32 `[cols]`; the result is a new f32 tensor of x's shape and name on
//! x's device.
//!
//! GPU: `shaders/norm.wgsl`, one workgroup per row with workgroup reductions, or one invocation
//! per row on CPU-based adapters ([`Reduce`]). The mean is taken first and the variance from the
//! deviations (two passes), so rows with a large common offset keep their precision.
//!
//! CPU twin: `cpu`, the same two passes in index order. With `eps = f32::EPSILON`,
//! `r = 1 / sqrt(var + eps_norm)` and n = cols, both stay within these bounds of the exact
//! result (the tests check them in f64; `n eps` covers the worst-case rounding of an n-term sum
//! in any order, the constant the few roundings and WGSL's 2-ulp `inverseSqrt` after it):
//! layer norm `|y - exact| <= (n + 16) eps (|w| r (mean|x| + |x - mean|) + |b|)`; RMS norm
//! `|y - exact| <= (n + 16) eps |x w| r`.

use super::launch::{self, Place, Reduce};
use crate::device::kernels::{Kernel, PipelineKey};
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};
use mlmf_core::DType;
use mlmf_core::Result;

const LAYER_NORM: &str = "layer_norm";
const RMS_NORM: &str = "rms_norm";
const WORKGROUP: u32 = 64;

/// Uniform parameters of `norm.wgsl`, fields in WGSL order.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == Kernel::Norm.params_bytes());

/// Layer normalisation of `x` over its last axis (see the module doc). Errors: x a scalar, or
/// weight or bias not a vector ([`mlmf_core::Error::OpRank`]), a tensor not F32
/// ([`mlmf_core::Error::OpDType`]), weight or bias not `cols` long ([`mlmf_core::Error::ShapeMismatch`]),
/// tensors on different devices ([`mlmf_core::Error::DeviceMismatch`]), an operand larger than one
/// storage binding ([`mlmf_core::Error::DeviceLimit`]).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    layer_norm_with(x, weight, bias, eps, None)
}

/// [`layer_norm`] with the GPU's way of reducing a row chosen by the caller; `None` chooses by
/// the adapter. Ignored on the CPU.
pub fn layer_norm_with(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
    reduce: Option<Reduce>,
) -> Result<Tensor> {
    norm(LAYER_NORM, x, weight, Some(bias), eps, reduce)
}

/// RMS normalisation of `x` over its last axis (see the module doc). Errors as [`layer_norm`].
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    rms_norm_with(x, weight, eps, None)
}

/// [`rms_norm`] with the GPU's way of reducing a row chosen by the caller.
pub fn rms_norm_with(
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
    reduce: Option<Reduce>,
) -> Result<Tensor> {
    norm(RMS_NORM, x, weight, None, eps, reduce)
}

fn norm(
    op: &'static str,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f32,
    reduce: Option<Reduce>,
) -> Result<Tensor> {
    let Some(&cols) = x.shape().dims().last() else {
        return Err(launch::rank_error(op, x, "a tensor of rank 1 or more"));
    };
    let mut all = vec![x, weight];
    all.extend(bias);
    for t in &all {
        launch::require_f32(op, t)?;
    }
    for t in &all[1..] {
        let [n] = launch::dims(op, t, "a vector [cols]")?;
        if n != cols {
            return Err(launch::shape_error(op, x, t));
        }
    }
    let rows = if cols == 0 {
        0
    } else {
        x.shape().elem_count() / cols as u64
    };
    let storage = match launch::place(op, &all)? {
        Place::Cpu(bytes) => {
            let (xs, w) = (launch::f32s(bytes[0]), launch::f32s(bytes[1]));
            let y = match bytes.get(2) {
                Some(b) => cpu::layer_norm(&xs, &w, &launch::f32s(b), cols, eps),
                None => cpu::rms_norm(&xs, &w, cols, eps),
            };
            Storage::Cpu(launch::f32_bytes(&y))
        }
        Place::Gpu(gs) => Storage::Gpu(gpu_norm(op, &all, &gs, rows, cols, eps, reduce)?),
    };
    Ok(Tensor::new(
        x.name().to_string(),
        DType::F32,
        x.shape().clone(),
        storage,
    ))
}

/// The launcher: operands whole, one dispatch over every row. Recorded, not waited for.
fn gpu_norm(
    op: &'static str,
    ts: &[&Tensor],
    gs: &[&GpuStorage],
    rows: u64,
    cols: usize,
    eps: f32,
    reduce: Option<Reduce>,
) -> Result<GpuStorage> {
    let x = ts[0];
    let gpu = gs[0].gpu();
    let out = launch::Output::new(gpu, x, x.shape())?;
    let mut encoder = gpu.record(op);
    if rows > 0 {
        // The kernel indexes elements with u32.
        launch::to_u32(x, x.shape().elem_count(), "the element count")?;
        let reduce = reduce.unwrap_or_else(|| Reduce::for_gpu(gpu));
        let params = Params {
            rows: launch::to_u32(x, rows, "the row count")?,
            cols: launch::to_u32(x, cols as u64, "the row length")?,
            eps,
            _pad: 0,
        };
        let key = PipelineKey::new(Kernel::Norm, op)
            .with("WG", f64::from(WORKGROUP))
            .with("ROW_PER_INVOCATION", reduce.flag());
        let pipeline = gpu.pipeline(&key)?;
        let bufs = launch::wholes(&mut encoder, ts, gs)?;
        // rms_norm has no bias: its binding holds the weight again.
        let bias = bufs.get(2).unwrap_or(&bufs[1]);
        let group = launch::bind(
            &mut encoder,
            &pipeline,
            op,
            bytemuck::bytes_of(&params),
            &[&bufs[0], &bufs[1], bias, out.buffer()],
        )?;
        let invocations = reduce.invocations(rows, WORKGROUP);
        gpu.dispatch(&mut encoder, &pipeline, &group, invocations, WORKGROUP);
    }
    let storage = out.finish(&mut encoder);
    encoder.finish();
    Ok(storage)
}

/// The CPU twin: per row, plain loops in index order.
pub(crate) mod cpu {
    /// Layer norm of the rows of `x` (`cols` long each; a partial last row is dropped).
    pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], cols: usize, eps: f32) -> Vec<f32> {
        let mut y = Vec::with_capacity(x.len());
        if cols == 0 {
            return y;
        }
        for row in x.chunks_exact(cols) {
            let mut s = 0.0f32;
            for v in row {
                s += v;
            }
            let mean = s / cols as f32;
            let mut q = 0.0f32;
            for v in row {
                let d = v - mean;
                q += d * d;
            }
            let inv = 1.0 / (q / cols as f32 + eps).sqrt();
            for ((v, w), b) in row.iter().zip(weight).zip(bias) {
                y.push((v - mean) * inv * w + b);
            }
        }
        y
    }

    /// RMS norm of the rows of `x` (`cols` long each; a partial last row is dropped).
    pub fn rms_norm(x: &[f32], weight: &[f32], cols: usize, eps: f32) -> Vec<f32> {
        let mut y = Vec::with_capacity(x.len());
        if cols == 0 {
            return y;
        }
        for row in x.chunks_exact(cols) {
            let mut q = 0.0f32;
            for v in row {
                q += v * v;
            }
            let inv = 1.0 / (q / cols as f32 + eps).sqrt();
            for (v, w) in row.iter().zip(weight) {
                y.push(v * inv * w);
            }
        }
        y
    }
}
