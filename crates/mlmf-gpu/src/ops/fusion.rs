//! The two operations the fusion modules need beside matmul, softmax and the element-wise ops:
//! [`concat()`] (F32 tensors joined along their last axis, like `torch.cat(xs, -1)`) and
//! [`weighted_sum`] over modalities (`sum_m w_m * x_m`, with one weight per modality shared by
//! every row, or one per row and modality). Each returns a new F32 tensor on the operands'
//! device.
//!
//! GPU: `shaders/fusion.wgsl`, one dispatch per input, in order, into one output; operands in
//! several pages are gathered first, so each operand and the output must fit in one storage
//! binding ([`Error::DeviceLimit`] otherwise).
//!
//! CPU twin: `cpu`. concat copies, so GPU and twin agree bit for bit. The weighted sum is
//! `((w_0 x_0 + w_1 x_1) + w_2 x_2) + ...`, each product and sum rounded to f32, in modality
//! order on both; a GPU compiler that contracts a product and a sum into a fused multiply-add
//! only rounds less (lavapipe does not contract, so there the two agree bit for bit).

use super::launch::{
    bind, f32_bytes, f32_shape, f32s, place, rank_error, require_f32, shape_error, to_u32, whole,
    Output, Place,
};
use crate::device::kernels::{Kernel, PipelineKey};
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};
use mlmf_core::{DType, Error, Result};

const WORKGROUP: u32 = 64;
/// `flags` bit of `weighted_sum`: add to the output instead of writing it.
const ACCUMULATE: u32 = 1;

/// Uniform parameters of `fusion.wgsl`, fields in WGSL order.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    out_cols: u32,
    col_offset: u32,
    m: u32,
    w_stride: u32,
    flags: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == Kernel::Fusion.params_bytes());

/// `xs` joined along the last axis: every input is `[..., n_i]` with the same leading
/// dimensions, the result `[..., sum n_i]`, named like the first input. Errors: no input
/// ([`Error::OpArgument`]), an input not F32 ([`Error::OpDType`]), a scalar
/// ([`Error::OpRank`]), leading dimensions that differ ([`Error::ShapeMismatch`]), inputs on
/// different devices ([`Error::DeviceMismatch`]), an operand or the result larger than one
/// storage binding or of 2^32 elements or more ([`Error::DeviceLimit`]).
pub fn concat(xs: &[&Tensor]) -> Result<Tensor> {
    const OP: &str = "concat";
    let first = *xs.first().ok_or(Error::OpArgument {
        op: OP,
        argument: "inputs",
        value: 0,
        expected: "at least one tensor",
    })?;
    let mut widths = Vec::with_capacity(xs.len());
    for &x in xs {
        require_f32(OP, x)?;
        let Some((&n, lead)) = x.shape().dims().split_last() else {
            return Err(rank_error(OP, x, "a tensor of rank 1 or more"));
        };
        if lead != &first.shape().dims()[..first.shape().rank() - 1] {
            return Err(shape_error(OP, first, x));
        }
        widths.push(n);
    }
    let total: usize = widths.iter().sum();
    let mut dims = first.shape().dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = total;
    }
    let shape = f32_shape(first, dims)?;
    let rows = xs[0].shape().dims()[..first.shape().rank() - 1]
        .iter()
        .product::<usize>();
    let storage = match place(OP, xs)? {
        Place::Cpu(bytes) => {
            let parts: Vec<Vec<f32>> = bytes.iter().map(|b| f32s(b)).collect();
            Storage::Cpu(f32_bytes(&cpu::concat(&parts, &widths, rows)))
        }
        Place::Gpu(gs) => {
            let gpu = gs[0].gpu();
            let out = Output::new(gpu, first, &shape)?;
            let mut encoder = gpu.record(OP);
            let out_cols = to_u32(first, total as u64, "the concatenated width")?;
            to_u32(first, shape.elem_count(), "the element count")?;
            let pipeline = gpu.pipeline(
                &PipelineKey::new(Kernel::Fusion, "concat").with("WG", f64::from(WORKGROUP)),
            )?;
            let mut offset = 0u32;
            for ((&x, g), &n) in xs.iter().zip(&gs).zip(&widths) {
                let elems = x.shape().elem_count();
                if elems > 0 {
                    let buf = whole(&mut encoder, x, g, x.name())?;
                    let params = Params {
                        rows: to_u32(x, rows as u64, "the row count")?,
                        cols: to_u32(x, n as u64, "the row length")?,
                        out_cols,
                        col_offset: offset,
                        ..Params::default()
                    };
                    let group = bind(
                        &mut encoder,
                        &pipeline,
                        OP,
                        bytemuck::bytes_of(&params),
                        &[&buf, &buf, out.buffer()],
                    )?;
                    gpu.dispatch(&mut encoder, &pipeline, &group, elems, WORKGROUP);
                }
                offset += n as u32;
            }
            let storage: GpuStorage = out.finish(&mut encoder);
            encoder.finish();
            Storage::Gpu(storage)
        }
    };
    Ok(Tensor::new(
        first.name().to_string(),
        DType::F32,
        shape,
        storage,
    ))
}

/// `sum_m w_m * xs[m]`: the inputs have one shape `[..., n]`; the weights are `[M]` (one per
/// input, shared by every row) or `[..., M]` (the inputs' leading dimensions, one weight per row
/// and input, as attention over modalities gives), M = `xs.len()`. The sum runs in input order
/// (module doc); the result has the inputs' shape and the first one's name. Errors: no input
/// ([`Error::OpArgument`]), an operand not F32 ([`Error::OpDType`]), a scalar input
/// ([`Error::OpRank`]), inputs of different shapes or weights of neither shape
/// ([`Error::ShapeMismatch`]), operands on different devices ([`Error::DeviceMismatch`]), an
/// operand larger than one storage binding or of 2^32 elements or more ([`Error::DeviceLimit`]).
pub fn weighted_sum(xs: &[&Tensor], weights: &Tensor) -> Result<Tensor> {
    const OP: &str = "weighted_sum";
    let first = *xs.first().ok_or(Error::OpArgument {
        op: OP,
        argument: "inputs",
        value: 0,
        expected: "at least one tensor",
    })?;
    require_f32(OP, weights)?;
    for &x in xs {
        require_f32(OP, x)?;
        if x.shape().rank() == 0 {
            return Err(rank_error(OP, x, "a tensor of rank 1 or more"));
        }
        if x.shape() != first.shape() {
            return Err(shape_error(OP, first, x));
        }
    }
    let dims = first.shape().dims();
    let (cols, lead) = (dims[dims.len() - 1], &dims[..dims.len() - 1]);
    let rows = lead.iter().product::<usize>();
    let m = xs.len();
    let per_row = match weights.shape().dims().split_last() {
        Some((&wm, [])) if wm == m => false,
        Some((&wm, wl)) if wm == m && wl == lead => true,
        _ => return Err(shape_error(OP, first, weights)),
    };
    let mut operands = xs.to_vec();
    operands.push(weights);
    let storage = match place(OP, &operands)? {
        Place::Cpu(bytes) => {
            let parts: Vec<Vec<f32>> = bytes[..m].iter().map(|b| f32s(b)).collect();
            let w = f32s(bytes[m]);
            let stride = if per_row { m } else { 0 };
            Storage::Cpu(f32_bytes(&cpu::weighted_sum(&parts, &w, stride, cols)))
        }
        Place::Gpu(gs) => {
            let gpu = gs[0].gpu();
            let out = Output::new(gpu, first, first.shape())?;
            let mut encoder = gpu.record(OP);
            let elems = first.shape().elem_count();
            to_u32(first, elems, "the element count")?;
            to_u32(weights, weights.shape().elem_count(), "the element count")?;
            if elems > 0 {
                let pipeline = gpu.pipeline(
                    &PipelineKey::new(Kernel::Fusion, "weighted_sum")
                        .with("WG", f64::from(WORKGROUP)),
                )?;
                let w_buf = whole(&mut encoder, weights, gs[m], weights.name())?;
                for (i, (&x, g)) in xs.iter().zip(&gs[..m]).enumerate() {
                    let buf = whole(&mut encoder, x, g, x.name())?;
                    let params = Params {
                        rows: to_u32(x, rows as u64, "the row count")?,
                        cols: to_u32(x, cols as u64, "the row length")?,
                        m: i as u32,
                        w_stride: if per_row { m as u32 } else { 0 },
                        flags: if i == 0 { 0 } else { ACCUMULATE },
                        ..Params::default()
                    };
                    let group = bind(
                        &mut encoder,
                        &pipeline,
                        OP,
                        bytemuck::bytes_of(&params),
                        &[&buf, &w_buf, out.buffer()],
                    )?;
                    gpu.dispatch(&mut encoder, &pipeline, &group, elems, WORKGROUP);
                }
            }
            let storage: GpuStorage = out.finish(&mut encoder);
            encoder.finish();
            Storage::Gpu(storage)
        }
    };
    Ok(Tensor::new(
        first.name().to_string(),
        DType::F32,
        first.shape().clone(),
        storage,
    ))
}

/// The CPU twins, in the shader's order.
pub(crate) mod cpu {
    /// `parts[i]` (`rows` rows of `widths[i]`) side by side, row by row.
    pub fn concat(parts: &[Vec<f32>], widths: &[usize], rows: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows * widths.iter().sum::<usize>());
        for r in 0..rows {
            for (p, &n) in parts.iter().zip(widths) {
                out.extend_from_slice(&p[r * n..(r + 1) * n]);
            }
        }
        out
    }

    /// `sum_m w[r * w_stride + m] * parts[m][i]`, r = i / cols, summed from m = 0.
    pub fn weighted_sum(parts: &[Vec<f32>], w: &[f32], w_stride: usize, cols: usize) -> Vec<f32> {
        let Some(first) = parts.first() else {
            return Vec::new();
        };
        let mut out = vec![0f32; first.len()];
        for (m, p) in parts.iter().enumerate() {
            for (i, (o, &x)) in out.iter_mut().zip(p).enumerate() {
                let term = w[(i / cols.max(1)) * w_stride + m] * x;
                *o = if m == 0 { term } else { *o + term };
            }
        }
        out
    }
}
