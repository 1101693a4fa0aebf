//! Element-wise arithmetic and activations on F32 tensors: [`add`], [`mul`] (of two tensors of
//! one shape, or with the smaller one's shape a trailing part of the other's, like a bias `[n]`
//! over `[..., n]`), [`scale`] by a scalar, and the activations [`gelu`] (torch's default, with
//! erf), [`gelu_tanh`] (torch's `approximate="tanh"`), [`relu6`] and [`tanh`]. Each returns a new F32
//! tensor on the operands' device.
//!
//! GPU: `shaders/elementwise.wgsl`, one dispatch per page of the result. The operand that is
//! broadcast is gathered into one buffer when it spans pages, so it must fit in one storage
//! binding ([`Error::DeviceLimit`] otherwise); everything else may span any number of pages.
//!
//! CPU twin: `cpu`, the same formulas in the same order. add, mul, scale and relu6 are one
//! correctly rounded operation, so GPU and twin agree bit for bit (WGSL lets a GPU flush
//! subnormals to zero, and leaves `min`/`max` of NaN and of zeros of both signs open: relu6 of
//! NaN is NaN in the twin, as in torch, and unspecified on a GPU; relu6(-0) may be +0 there). erf is Norbert Juffa's f32 `erff` (minimax polynomials, with
//! fused multiply-adds), within 1.2e-7 relative of the exact erf with a correctly rounded exp,
//! which the twin has; WGSL's exp may be off by `3 + 2|x|` ulp, which adds at most about 1e-7
//! absolute for `|x| > 0.93` (see the shader). tanh is `1 - 2 / (exp(2u) + 1)`, exact to about
//! 2 ulp of 1 absolute, so gelu_tanh is accurate to about `|x| * 2^-23` absolute; the tests check
//! both gelus against an f64 reference with these bounds.

use crate::device::kernels::{Kernel, PipelineKey};
use crate::device::Fill;
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};
use mlmf_core::DType;
#[cfg(doc)]
use mlmf_core::Error;
use mlmf_core::Result;

use super::launch::{
    bind, check_binding, f32_bytes, f32s, place, require_f32, shape_error, to_u32, whole, Place,
};

const WORKGROUP: u32 = 64;
const ELEMS_PER_INVOCATION: u32 = 16;
/// `flags` bit: b repeats with period `b_len`.
const BROADCAST: u32 = 1;

/// Uniform parameters of `elementwise.wgsl`, fields in WGSL order.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    a_offset: u32,
    b_offset: u32,
    out_offset: u32,
    b_len: u32,
    flags: u32,
    factor: f32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == Kernel::Elementwise.params_bytes());

/// An element-wise operation, its entry point and its name in errors.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Unary(cpu::Unary),
    Binary(cpu::Binary),
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Binary(cpu::Binary::Add) => "add",
            Op::Binary(cpu::Binary::Mul) => "mul",
            Op::Unary(cpu::Unary::Scale(_)) => "scale",
            Op::Unary(cpu::Unary::Gelu) => "gelu",
            Op::Unary(cpu::Unary::GeluTanh) => "gelu_tanh",
            Op::Unary(cpu::Unary::Relu6) => "relu6",
            Op::Unary(cpu::Unary::Tanh) => "tanh",
        }
    }
}

/// `a + b`, element by element. The shapes are equal, or one's is a trailing part of the other's
/// (that operand repeats over the other's leading dimensions, like a bias `[n]` over
/// `[batch, n]`); the result has the larger shape and is named like the larger operand. Errors:
/// an operand not F32 ([`Error::OpDType`]), shapes that are neither ([`Error::ShapeMismatch`]),
/// operands on different devices ([`Error::DeviceMismatch`]), bytes that disagree with the shape
/// ([`Error::TensorBytes`]), a repeated operand larger than one storage binding or a page of
/// 2^32 elements ([`Error::DeviceLimit`]).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(cpu::Binary::Add, a, b)
}

/// `a * b`, element by element, with [`add`]'s shapes and errors.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(cpu::Binary::Mul, a, b)
}

/// `x * factor` for every element. Errors: x not F32 ([`Error::OpDType`]), bytes that disagree
/// with the shape ([`Error::TensorBytes`]).
pub fn scale(x: &Tensor, factor: f32) -> Result<Tensor> {
    unary(cpu::Unary::Scale(factor), x)
}

/// `x / 2 * (1 + erf(x / sqrt(2)))`, torch's default `gelu` (accuracy in the module doc); the
/// errors of [`scale`].
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    unary(cpu::Unary::Gelu, x)
}

/// `x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x³)))`, torch's `gelu(approximate="tanh")`
/// (GPT-2's); the errors of [`scale`].
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    unary(cpu::Unary::GeluTanh, x)
}

/// `min(max(x, 0), 6)`, torch's `relu6` (MobileNetV2's activation); the errors of [`scale`].
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    unary(cpu::Unary::Relu6, x)
}

/// `tanh(x)` as `1 - 2 / (exp(2x) + 1)` (accuracy in the module doc; never NaN for a finite or
/// infinite x); the errors of [`scale`].
pub fn tanh(x: &Tensor) -> Result<Tensor> {
    unary(cpu::Unary::Tanh, x)
}

fn unary(f: cpu::Unary, x: &Tensor) -> Result<Tensor> {
    let op = Op::Unary(f);
    require_f32(op.name(), x)?;
    let storage = match x.storage() {
        Storage::Cpu(bytes) => Storage::Cpu(f32_bytes(&cpu::unary(f, &f32s(bytes)))),
        Storage::Gpu(g) => Storage::Gpu(launch(op, x, g, None)?),
    };
    Ok(Tensor::new(
        x.name().to_string(),
        DType::F32,
        x.shape().clone(),
        storage,
    ))
}

fn binary(f: cpu::Binary, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let op = Op::Binary(f);
    require_f32(op.name(), a)?;
    require_f32(op.name(), b)?;
    let (ad, bd) = (a.shape().dims(), b.shape().dims());
    // The larger operand first; both ops commute, so the result is the same either way.
    let (big, small) = if bd.len() > ad.len() { (b, a) } else { (a, b) };
    if !big.shape().dims().ends_with(small.shape().dims()) {
        return Err(shape_error(op.name(), a, b));
    }
    let storage = match place(op.name(), &[big, small])? {
        Place::Cpu(bytes) => {
            let (x, y) = (f32s(bytes[0]), f32s(bytes[1]));
            Storage::Cpu(f32_bytes(&cpu::binary(f, &x, &y)))
        }
        Place::Gpu(gs) => Storage::Gpu(launch(op, big, gs[0], Some((small, gs[1])))?),
    };
    Ok(Tensor::new(
        big.name().to_string(),
        DType::F32,
        big.shape().clone(),
        storage,
    ))
}

/// The launcher: one dispatch per overlap of a page of `a` with a page of the result. `b` is
/// bound page by page beside `a` when it has a's shape and paging, else whole. Recorded, not
/// waited for (readback waits).
fn launch(
    op: Op,
    a: &Tensor,
    ga: &GpuStorage,
    b: Option<(&Tensor, &GpuStorage)>,
) -> Result<GpuStorage> {
    let gpu = ga.gpu();
    let elems = a.shape().elem_count();
    let unit = GpuStorage::page_unit(gpu, DType::F32, a.shape());
    let out = GpuStorage::allocate(gpu, a.name(), elems * 4, unit, Fill::KERNEL)?;
    if elems == 0 {
        return Ok(out);
    }
    let key = PipelineKey::new(Kernel::Elementwise, op.name())
        .with("WG", f64::from(WORKGROUP))
        .with("EPT", f64::from(ELEMS_PER_INVOCATION));
    let pipeline = gpu.pipeline(&key)?;
    let mut encoder = gpu.record(op.name());
    // b beside a page by page, or whole (a repeated operand, or one paged differently).
    let paired = b.is_some_and(|(bt, gb)| {
        bt.shape() == a.shape() && gb.page_bytes() == ga.page_bytes() && gb.pages().len() > 1
    });
    let (b_whole, b_len) = match b {
        Some((bt, gb)) if !paired => {
            check_binding(gpu, bt, "the repeated operand", gb.byte_len())?;
            (
                Some(whole(&mut encoder, bt, gb, "the repeated operand")?),
                to_u32(bt, bt.shape().elem_count(), "the element count")?,
            )
        }
        _ => (None, 0),
    };
    let broadcast = b.is_some_and(|(bt, _)| bt.shape() != a.shape());
    if broadcast && b_len == 0 {
        // A repeated operand with no elements can only repeat over a result with none.
        return Ok(out);
    }
    let (in_page, out_page) = (ga.page_bytes() / 4, out.page_bytes() / 4);
    for (ip, op_page, at, end) in super::paged::spans(elems, in_page, out_page) {
        let a_page = ga.page(ip as usize)?;
        let b_buf = match (&b_whole, b) {
            (Some(buf), _) => buf,
            (None, Some((_, gb))) => gb.page(ip as usize)?,
            (None, None) => a_page,
        };
        let a_offset = at - ip * in_page;
        let params = Params {
            count: to_u32(a, end - at, "a piece's element count")?,
            a_offset: to_u32(a, a_offset, "an offset in a page")?,
            b_offset: match (&b_whole, broadcast) {
                (_, true) => (at % u64::from(b_len)) as u32,
                (Some(_), false) => to_u32(a, at, "an element index")?,
                (None, false) => to_u32(a, a_offset, "an offset in a page")?,
            },
            out_offset: to_u32(a, at - op_page * out_page, "an offset in a page")?,
            b_len,
            flags: if broadcast { BROADCAST } else { 0 },
            factor: match op {
                Op::Unary(cpu::Unary::Scale(f)) => f,
                _ => 0.0,
            },
            _pad: 0,
        };
        let group = bind(
            &mut encoder,
            &pipeline,
            op.name(),
            bytemuck::bytes_of(&params),
            &[a_page, b_buf, out.page(op_page as usize)?],
        )?;
        let invocations = (end - at).div_ceil(u64::from(ELEMS_PER_INVOCATION));
        gpu.dispatch(&mut encoder, &pipeline, &group, invocations, WORKGROUP);
    }
    encoder.finish();
    Ok(out)
}

/// The CPU twins: the shader's formulas, in its order, with `mul_add` where it uses `fma`.
pub(crate) mod cpu {
    /// A function of one element.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(crate) enum Unary {
        Scale(f32),
        Gelu,
        GeluTanh,
        Relu6,
        Tanh,
    }

    /// A function of two elements.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Binary {
        Add,
        Mul,
    }

    /// erf in f32, Norbert Juffa's `erff` (the shader's `erf_f32`): within 1.2e-7 relative of
    /// the exact erf (the tests check it against an f64 series).
    pub(crate) fn erf(x: f32) -> f32 {
        let t = x.abs();
        let s = x * x;
        if t > 0.927_734_4 {
            let mut r = (-1.728_534_7e-5f32).mul_add(t, 3.831_971_3e-4);
            let u = (-3.883_964_4e-3f32).mul_add(t, 2.425_462_2e-2);
            r = r.mul_add(s, u);
            r = r.mul_add(t, -1.067_778_8e-1);
            r = r.mul_add(t, -6.348_467e-1);
            r = r.mul_add(t, -1.287_175_1e-1);
            r = r.mul_add(t, -t);
            let e = 1.0 - r.exp();
            return if x < 0.0 { -e } else { e };
        }
        let mut r = -5.967_617e-4f32;
        r = r.mul_add(s, 4.991_194_2e-3);
        r = r.mul_add(s, -2.676_813_5e-2);
        r = r.mul_add(s, 1.128_199_3e-1);
        r = r.mul_add(s, -3.761_253_4e-1);
        r = r.mul_add(s, 1.283_791_7e-1);
        r.mul_add(x, x)
    }

    /// `1 - 2 / (exp(2u) + 1)`, the shader's `tanh_f32`.
    fn tanh(u: f32) -> f32 {
        1.0 - 2.0 / ((2.0 * u).exp() + 1.0)
    }

    fn apply(f: Unary, x: f32) -> f32 {
        match f {
            Unary::Scale(factor) => x * factor,
            Unary::Gelu => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
            Unary::GeluTanh => {
                let u = 0.797_884_6 * (x + 0.044715 * x * x * x);
                0.5 * x * (1.0 + tanh(u))
            }
            // NaN stays NaN, as in torch (f32::clamp would keep it too; max/min would not).
            Unary::Relu6 => x.clamp(0.0, 6.0),
            Unary::Tanh => tanh(x),
        }
    }

    pub(crate) fn unary(f: Unary, x: &[f32]) -> Vec<f32> {
        x.iter().map(|&v| apply(f, v)).collect()
    }

    /// `f(a[i], b[i % b.len()])`: b repeats over a (b empty gives an empty result).
    pub(crate) fn binary(f: Binary, a: &[f32], b: &[f32]) -> Vec<f32> {
        if b.is_empty() {
            return Vec::new();
        }
        a.iter()
            .enumerate()
            .map(|(i, &x)| {
                let y = b[i % b.len()];
                match f {
                    Binary::Add => x + y,
                    Binary::Mul => x * y,
                }
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "../../../../tests/common/erf.rs"]
mod erf;

#[cfg(test)]
mod tests {
    use super::erf;

    #[test]
    fn erf_twin_within_its_bound() {
        let mut worst = 0.0f64;
        for i in -120_000..=120_000 {
            let x = i as f32 * 5e-5;
            let e = erf::erf64(f64::from(x));
            let got = f64::from(super::cpu::erf(x));
            if e != 0.0 {
                worst = worst.max((got - e).abs() / e.abs());
            }
        }
        // Juffa's bound (1 ulp with a correctly rounded exp): 2^-23 relative.
        assert!(worst <= 1.2e-7, "worst relative error {worst:e}");
        assert_eq!(super::cpu::erf(10.0), 1.0);
        assert_eq!(super::cpu::erf(-10.0), -1.0);
        assert_eq!(super::cpu::erf(0.0), 0.0);
    }
}
