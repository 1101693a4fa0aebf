//! 2-D convolution and global average pooling over f32 NCHW tensors, what torchvision's
//! MobileNetV2 is made of:
//!
//! - [`conv2d`]: `torch.nn.functional.conv2d(x, weight, bias, stride, padding, 1, groups)`: x
//!   `[n, c_in, h, w]`, weight `[c_out, c_in / groups, kh, kw]`, bias `[c_out]` or none,
//!   symmetric zero padding, dilation 1; output `[n, c_out, (h + 2 pad - kh) / stride + 1,
//!   (w + 2 pad - kw) / stride + 1]`. `groups == c_in == c_out` is a depthwise convolution.
//!   Each output is `bias + sum over (channel, ky, kx) in index order`.
//! - [`conv1d`]: `torch.nn.functional.conv1d(x, weight, bias, stride, padding)` with one group:
//!   x `[n, c_in, l]`, weight `[c_out, c_in, k]`, output `[n, c_out, (l + 2 pad - k) / stride +
//!   1]`, or `[n, l_out, c_out]` with [`Conv1d::channels_last`] (Whisper's encoder: its
//!   transformer takes `[frames, d_model]`). It is the 2-D convolution of x as `[n, c_in, 1, l]`
//!   with weight `[c_out, c_in, 1, k]`, padded along the width only, so it runs on the same
//!   kernels and twin (no family of its own): the same sums in the same order, the same bound.
//! - [`avg_pool_global`]: `adaptive_avg_pool2d(x, 1)` flattened: `[n, c, h, w]` to `[n, c]`,
//!   the sum of each plane in index order divided by `h * w`.
//!
//! GPU: `shaders/conv.wgsl`: `conv2d_rows`, eight adjacent outputs of a row per invocation with
//! each kernel row's inputs loaded once for them, or `conv2d`, one output per invocation, when a
//! row of eight outputs spans more than 24 input columns (strides above 3 for a 3x3 kernel). On
//! lavapipe `conv2d_rows` ran MobileNetV2's stem 1.7x-1.9x and a depthwise layer 2.3x-2.5x
//! faster than `conv2d` (the `timings` test in tests/kernels_nn.rs, kernels alternated). 1x1
//! convolutions with stride 1, no padding and one group (pointwise: `W [c_out, c_in] · x [c_in,
//! h * w]` per image, most of MobileNetV2's work) run on the tiled matrix product of
//! [`matmul`] with a per-row bias: the same products summed in the same order,
//! then the bias, so the result is the same; on lavapipe that ran the pointwise layers of
//! `timings` 2x-4.5x faster than the one-pixel kernels it replaced. Every operand and the output
//! must fit in one storage binding.
//!
//! CPU twin: `cpu`, the same sums in the same order. With `eps = f32::EPSILON` and K =
//! `c_in / groups * kh * kw` terms, both stay within `(K + 2) eps (sum |w x| + |bias|)` of the
//! exact convolution and `(h w + 2) eps mean|x|` of the exact average (worst-case rounding of a
//! K-term sum in order, one more for the bias or the division); the tests check it in f64.

use super::launch::{self, Place};
use super::matmul::{self, BiasIndex};
use crate::device::kernels::{Kernel, PipelineKey};
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};
use mlmf_core::DType;
use mlmf_core::Shape;
use mlmf_core::{Error, Result};

const CONV: &str = "conv2d";
const CONV1D: &str = "conv1d";
const POOL: &str = "avg_pool_global";
const WORKGROUP: u32 = 64;
/// Outputs along a row per invocation of `conv2d_rows`, and the most input columns one kernel row
/// of them may span (the shader's `ROW_BLOCK`, `MAX_SPAN`; 8 ran 1.4x-2x faster than 4 on
/// lavapipe).
const ROW_BLOCK: usize = 8;
const MAX_SPAN: usize = 24;

/// Uniform parameters of `conv.wgsl`, fields in WGSL order.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    groups: u32,
    has_bias: u32,
    count: u32,
    pad_h: u32,
    channels_last: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == Kernel::Conv.params_bytes());

/// Stride, padding and groups of a [`conv2d`]; the default is torch's (1, 0, 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub stride: usize,
    /// Zero rows and columns added on every side.
    pub padding: usize,
    pub groups: usize,
}

impl Default for Conv2d {
    fn default() -> Self {
        Conv2d {
            stride: 1,
            padding: 0,
            groups: 1,
        }
    }
}

/// Stride and padding of a [`conv1d`]; the default is torch's (1, 0), output channels first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conv1d {
    pub stride: usize,
    /// Zeros added at both ends.
    pub padding: usize,
    /// Store the output `[n, l_out, c_out]` instead of `[n, c_out, l_out]`.
    pub channels_last: bool,
}

/// The sizes of one convolution, input and output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvDims {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

/// The convolution of `x` with `weight` (and `bias`) as `torch.nn.functional.conv2d` (see the
/// module doc): a new f32 tensor named like x on x's device. Errors: x or weight not of rank 4,
/// bias not a vector ([`Error::OpRank`]), a tensor not F32 ([`Error::OpDType`]), a stride or
/// group count of 0 ([`Error::OpArgument`]), channels that do not fit the groups or the weight,
/// a bias not `c_out` long, or a kernel larger than the padded input
/// ([`Error::ShapeMismatch`]), tensors on different devices ([`Error::DeviceMismatch`]), an
/// operand or the output larger than one storage binding ([`Error::DeviceLimit`]).
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, conv: Conv2d) -> Result<Tensor> {
    let [n, c_in, h, w] = launch::dims(CONV, x, "a tensor [n, c, h, w]")?;
    let [c_out, cin_g, kh, kw] =
        launch::dims(CONV, weight, "a weight [c_out, c_in / groups, kh, kw]")?;
    let mut all = vec![x, weight];
    if let Some(b) = bias {
        let [len] = launch::dims(CONV, b, "a vector [c_out]")?;
        if len != c_out {
            return Err(launch::shape_error(CONV, weight, b));
        }
        all.push(b);
    }
    for t in &all {
        launch::require_f32(CONV, t)?;
    }
    let argument = |argument, value: usize| Error::OpArgument {
        op: CONV,
        argument,
        value: value as u64,
        expected: "a positive integer",
    };
    if conv.stride == 0 {
        return Err(argument("stride", 0));
    }
    if conv.groups == 0 {
        return Err(argument("groups", 0));
    }
    let g = conv.groups;
    if !c_in.is_multiple_of(g) || !c_out.is_multiple_of(g) || cin_g * g != c_in {
        return Err(launch::shape_error(CONV, x, weight));
    }
    let (ph, pw) = (
        h.checked_add(2 * conv.padding),
        w.checked_add(2 * conv.padding),
    );
    let (Some(ph), Some(pw)) = (ph, pw) else {
        return Err(argument("padding", conv.padding));
    };
    if ph < kh || pw < kw {
        return Err(launch::shape_error(CONV, x, weight));
    }
    let d = ConvDims {
        n,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        oh: (ph - kh) / conv.stride + 1,
        ow: (pw - kw) / conv.stride + 1,
        stride: conv.stride,
        padding: conv.padding,
        groups: g,
    };
    let out_shape = launch::f32_shape(x, vec![n, c_out, d.oh, d.ow])?;
    let layout = Layout {
        pad_h: d.padding,
        channels_last: false,
    };
    run(CONV, &all, d, layout, out_shape)
}

/// The 1-D convolution of `x` `[n, c_in, l]` with `weight` `[c_out, c_in, k]` (and `bias`
/// `[c_out]`) as `torch.nn.functional.conv1d` with one group (see the module doc): a new f32
/// tensor named like x on x's device. Errors: x or weight not of rank 3, bias not a vector
/// ([`Error::OpRank`]), a tensor not F32 ([`Error::OpDType`]), a stride of 0
/// ([`Error::OpArgument`]), channels that differ between x and the weight, a bias not `c_out`
/// long, or a kernel longer than the padded input ([`Error::ShapeMismatch`]), tensors on
/// different devices ([`Error::DeviceMismatch`]), an operand or the output larger than one
/// storage binding ([`Error::DeviceLimit`]).
pub fn conv1d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, conv: Conv1d) -> Result<Tensor> {
    let [n, c_in, l] = launch::dims(CONV1D, x, "a tensor [n, c, l]")?;
    let [c_out, w_in, k] = launch::dims(CONV1D, weight, "a weight [c_out, c_in, k]")?;
    let mut all = vec![x, weight];
    if let Some(b) = bias {
        let [len] = launch::dims(CONV1D, b, "a vector [c_out]")?;
        if len != c_out {
            return Err(launch::shape_error(CONV1D, weight, b));
        }
        all.push(b);
    }
    for t in &all {
        launch::require_f32(CONV1D, t)?;
    }
    if conv.stride == 0 {
        return Err(Error::OpArgument {
            op: CONV1D,
            argument: "stride",
            value: 0,
            expected: "a positive integer",
        });
    }
    let Some(padded) = l.checked_add(2 * conv.padding) else {
        return Err(Error::OpArgument {
            op: CONV1D,
            argument: "padding",
            value: conv.padding as u64,
            expected: "a padding that fits the length",
        });
    };
    if w_in != c_in || padded < k {
        return Err(launch::shape_error(CONV1D, x, weight));
    }
    let ow = (padded - k) / conv.stride + 1;
    let d = ConvDims {
        n,
        c_in,
        h: 1,
        w: l,
        c_out,
        kh: 1,
        kw: k,
        oh: 1,
        ow,
        stride: conv.stride,
        padding: conv.padding,
        groups: 1,
    };
    let dims = if conv.channels_last {
        vec![n, ow, c_out]
    } else {
        vec![n, c_out, ow]
    };
    let out_shape = launch::f32_shape(x, dims)?;
    let layout = Layout {
        pad_h: 0,
        channels_last: conv.channels_last,
    };
    run(CONV1D, &all, d, layout, out_shape)
}

/// The row padding and output order of one convolution, beyond [`ConvDims`] (whose `padding`
/// is the columns').
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pad_h: usize,
    channels_last: bool,
}

/// A checked convolution on its operands' device.
fn run(
    op: &'static str,
    all: &[&Tensor],
    d: ConvDims,
    layout: Layout,
    out_shape: Shape,
) -> Result<Tensor> {
    let x = all[0];
    let storage = match launch::place(op, all)? {
        Place::Cpu(bytes) => {
            let b = bytes.get(2).map(|b| launch::f32s(b));
            Storage::Cpu(launch::f32_bytes(&cpu::conv(
                &launch::f32s(bytes[0]),
                &launch::f32s(bytes[1]),
                b.as_deref(),
                d,
                layout,
            )))
        }
        Place::Gpu(gs) => Storage::Gpu(gpu_conv(all, &gs, d, layout, &out_shape)?),
    };
    Ok(Tensor::new(
        x.name().to_string(),
        DType::F32,
        out_shape,
        storage,
    ))
}

/// The parameters `conv.wgsl` takes for `d`, every size checked to fit in u32.
fn params(x: &Tensor, d: &ConvDims, layout: Layout, has_bias: bool, count: u64) -> Result<Params> {
    let u = |v: usize, what: &str| launch::to_u32(x, v as u64, what);
    Ok(Params {
        n: u(d.n, "the batch")?,
        c_in: u(d.c_in, "the input channels")?,
        h: u(d.h, "the height")?,
        w: u(d.w, "the width")?,
        c_out: u(d.c_out, "the output channels")?,
        oh: u(d.oh, "the output height")?,
        ow: u(d.ow, "the output width")?,
        kh: u(d.kh, "the kernel height")?,
        kw: u(d.kw, "the kernel width")?,
        stride: u(d.stride, "the stride")?,
        pad: u(d.padding, "the padding")?,
        groups: u(d.groups, "the groups")?,
        has_bias: u32::from(has_bias),
        count: launch::to_u32(x, count, "the invocation count")?,
        pad_h: u(layout.pad_h, "the padding")?,
        channels_last: u32::from(layout.channels_last),
    })
}

/// The launcher: operands whole, one dispatch. Recorded, not waited for.
fn gpu_conv(
    ts: &[&Tensor],
    gs: &[&GpuStorage],
    d: ConvDims,
    layout: Layout,
    out_shape: &Shape,
) -> Result<GpuStorage> {
    let x = ts[0];
    let gpu = gs[0].gpu();
    let pointwise = d.kh == 1 && d.kw == 1 && d.stride == 1 && d.padding == 0;
    if pointwise && layout.pad_h == 0 && d.groups == 1 && !layout.channels_last {
        // Per image, C [c_out, h w] = W [c_out, c_in] · x [c_in, h w] + bias per row; the
        // weights serve every image.
        let plane = d.h * d.w;
        let dims = matmul::Dims {
            batch: d.n,
            m: d.c_out,
            n: plane,
            k: d.c_in,
            a_batch_stride: 0,
            b_batch_stride: d.c_in * plane,
            trans_a: false,
            trans_b: false,
        };
        let mut operands = vec![ts[1], x];
        let mut storages = vec![gs[1], gs[0]];
        operands.extend(ts.get(2));
        storages.extend(gs.get(2));
        return matmul::gpu_matmul(&operands, &storages, dims, out_shape, BiasIndex::Row);
    }
    let out = launch::Output::new(gpu, x, out_shape)?;
    let mut encoder = gpu.record(CONV);
    let elems = out_shape.elem_count();
    if elems > 0 {
        // The kernel indexes x and the output with u32.
        launch::to_u32(x, x.shape().elem_count(), "the input element count")?;
        launch::to_u32(x, elems, "the output element count")?;
        let span = (ROW_BLOCK - 1) * d.stride + d.kw;
        let (key, count) = if span <= MAX_SPAN {
            let key = PipelineKey::new(Kernel::Conv, "conv2d_rows")
                .with("KW", d.kw as f64)
                .with("STRIDE", d.stride as f64);
            (key, (elems / d.ow as u64) * d.ow.div_ceil(ROW_BLOCK) as u64)
        } else {
            (PipelineKey::new(Kernel::Conv, "conv2d"), elems)
        };
        let key = key.with("WG", f64::from(WORKGROUP));
        let p = params(x, &d, layout, ts.len() > 2, count)?;
        let pipeline = gpu.pipeline(&key)?;
        let bufs = launch::wholes(&mut encoder, ts, gs)?;
        // No bias: its binding holds the weights again, unread.
        let bias = bufs.get(2).unwrap_or(&bufs[1]);
        let group = launch::bind(
            &mut encoder,
            &pipeline,
            CONV,
            bytemuck::bytes_of(&p),
            &[&bufs[0], &bufs[1], bias, out.buffer()],
        )?;
        gpu.dispatch(&mut encoder, &pipeline, &group, count, WORKGROUP);
    }
    let storage = out.finish(&mut encoder);
    encoder.finish();
    Ok(storage)
}

/// Global average pooling of x `[n, c, h, w]` to `[n, c]` (see the module doc), a new f32
/// tensor named like x on x's device. Errors: x not of rank 4 ([`Error::OpRank`]) or not F32
/// ([`Error::OpDType`]), planes of no elements ([`Error::OpArgument`]), x or the output larger
/// than one storage binding ([`Error::DeviceLimit`]).
pub fn avg_pool_global(x: &Tensor) -> Result<Tensor> {
    let [n, c, h, w] = launch::dims(POOL, x, "a tensor [n, c, h, w]")?;
    launch::require_f32(POOL, x)?;
    if h == 0 || w == 0 {
        // An empty plane has no mean (torch gives NaN, WGSL leaves 0 / 0 indeterminate).
        return Err(Error::OpArgument {
            op: POOL,
            argument: "h * w",
            value: 0,
            expected: "planes of at least one element",
        });
    }
    let out_shape = launch::f32_shape(x, vec![n, c])?;
    let storage = match launch::place(POOL, &[x])? {
        Place::Cpu(bytes) => Storage::Cpu(launch::f32_bytes(&cpu::avg_pool_global(
            &launch::f32s(bytes[0]),
            h * w,
        ))),
        Place::Gpu(gs) => {
            let gpu = gs[0].gpu();
            let out = launch::Output::new(gpu, x, &out_shape)?;
            let mut encoder = gpu.record(POOL);
            let planes = out_shape.elem_count();
            if planes > 0 {
                launch::to_u32(x, x.shape().elem_count(), "the element count")?;
                let d = ConvDims {
                    n,
                    c_in: c,
                    h,
                    w,
                    c_out: c,
                    kh: 1,
                    kw: 1,
                    oh: 1,
                    ow: 1,
                    stride: 1,
                    padding: 0,
                    groups: 1,
                };
                let layout = Layout {
                    pad_h: 0,
                    channels_last: false,
                };
                let p = params(x, &d, layout, false, planes)?;
                let key =
                    PipelineKey::new(Kernel::Conv, "avg_pool").with("WG", f64::from(WORKGROUP));
                let pipeline = gpu.pipeline(&key)?;
                let input = launch::whole(&mut encoder, x, gs[0], x.name())?;
                let group = launch::bind(
                    &mut encoder,
                    &pipeline,
                    POOL,
                    bytemuck::bytes_of(&p),
                    &[&input, &input, &input, out.buffer()],
                )?;
                gpu.dispatch(&mut encoder, &pipeline, &group, planes, WORKGROUP);
            }
            let storage = out.finish(&mut encoder);
            encoder.finish();
            Storage::Gpu(storage)
        }
    };
    Ok(Tensor::new(
        x.name().to_string(),
        DType::F32,
        out_shape,
        storage,
    ))
}

/// The CPU twin: plain loops in the kernels' order.
pub(crate) mod cpu {
    use super::{ConvDims, Layout};

    /// The convolution of x `[n, c_in, h, w]` with weight `[c_out, c_in / groups, kh, kw]` and
    /// `bias` (see the module doc), `layout.pad_h` rows and `d.padding` columns of padding, the
    /// output in `[n, oh, ow, c_out]` order when `layout.channels_last`. Empty when a slice is
    /// shorter than `d` says.
    pub fn conv(
        x: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        d: ConvDims,
        layout: Layout,
    ) -> Vec<f32> {
        let cin_g = d.c_in / d.groups.max(1);
        let cout_g = d.c_out / d.groups.max(1);
        if x.len() < d.n * d.c_in * d.h * d.w
            || weight.len() < d.c_out * cin_g * d.kh * d.kw
            || bias.is_some_and(|b| b.len() < d.c_out)
        {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(d.n * d.c_out * d.oh * d.ow);
        for n in 0..d.n {
            for o in 0..d.c_out {
                let g = o / cout_g.max(1);
                for oy in 0..d.oh {
                    for ox in 0..d.ow {
                        let mut s = 0.0f32;
                        for c in 0..cin_g {
                            let plane = &x[(n * d.c_in + g * cin_g + c) * d.h * d.w..];
                            let wk = &weight[(o * cin_g + c) * d.kh * d.kw..];
                            for ky in 0..d.kh {
                                // Rows and columns outside the input are the zero padding.
                                let Some(iy) = (oy * d.stride + ky)
                                    .checked_sub(layout.pad_h)
                                    .filter(|&iy| iy < d.h)
                                else {
                                    continue;
                                };
                                for kx in 0..d.kw {
                                    let Some(ix) = (ox * d.stride + kx)
                                        .checked_sub(d.padding)
                                        .filter(|&ix| ix < d.w)
                                    else {
                                        continue;
                                    };
                                    s += wk[ky * d.kw + kx] * plane[iy * d.w + ix];
                                }
                            }
                        }
                        if let Some(b) = bias {
                            s += b[o];
                        }
                        out.push(s);
                    }
                }
            }
        }
        if layout.channels_last {
            // [n, c_out, oh * ow] to [n, oh * ow, c_out].
            let plane = d.oh * d.ow;
            let mut t = vec![0f32; out.len()];
            for (i, v) in out.iter().enumerate() {
                let (p, o, n) = (i % plane, i / plane % d.c_out, i / plane / d.c_out);
                t[(n * plane + p) * d.c_out + o] = *v;
            }
            return t;
        }
        out
    }

    /// The mean of each plane of `plane` elements of x, in order.
    pub fn avg_pool_global(x: &[f32], plane: usize) -> Vec<f32> {
        x.chunks_exact(plane.max(1))
            .map(|p| {
                let mut s = 0.0f32;
                for v in p {
                    s += v;
                }
                s / plane as f32
            })
            .collect()
    }
}
