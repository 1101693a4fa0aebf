//! LoRA adapters on tensors: merged into a weight ([`merge`]), or applied to a batch with several
//! adapters resident at once ([`bgmv`], the batched gathered matrix-vector product of Punica and
//! S-LoRA), with adapters swapped in place ([`write_slot`]). `src/lora/` parses adapter files and
//! builds on these.
//!
//! Merge: `W'[o][i] = round(W[o][i] + scale * sum_k B[o][k] * A[k][i])` for W `[out, in]` (or
//! `[in, out]` with `fan_in_fan_out`, PEFT's Conv1D layout) in F32, F16 or BF16, A f32 `[r, in]`
//! and B f32 `[out, r]`. In f32: the sum over k runs in order 0..r, is then multiplied by scale,
//! then added to W widened to f32 (PEFT: `W + (B @ A) * scaling`), then rounded to W's type,
//! round to nearest even like the half crate and torch.
//!
//! BGMV: for x `[batch, in]` and the base output y = W·x `[batch, out]`, batch row b uses
//! adapter slot `s = rows[b]` of the stacks A `[slots, r_max, in]` and B `[slots, out, r_max]`
//! (smaller ranks zero-padded), or none ([`NO_ADAPTER`]):
//! `Y'[b][o] = (y[b][o] + bias[o]) + scales[s] * sum_k B[s][o][k] * v[b][k]` with
//! `v[b][k] = sum_i A[s][k][i] * x[b][i]`, both sums in index order, in f32 (PEFT's runtime
//! order: the base layer with its bias, then `+ lora_B(lora_A(x)) * scaling`).
//!
//! GPU: `shaders/lora.wgsl`. Merge runs one dispatch per overlap of a page of W with a page of
//! W' (one invocation per f32 element, or per u32 word of two 16-bit elements); BGMV runs two
//! passes in one command encoder, shrink (x to v, a temporary `[batch, r_max]`) then expand.
//! A, B, the stacks, x, y and the bias must each fit in one storage binding (pages of one are
//! gathered into a scratch buffer first); W may span any number of pages.
//!
//! CPU twin: `cpu`, plain loops in the same order. GPU and twin agree bit for bit where the
//! shader compiler does not contract a product and an add into a fused multiply-add (lavapipe
//! does not; the tests check bit equality there). A contracting compiler rounds once where the
//! twin rounds twice; either way, with `eps = f32::EPSILON`, both stay within these bounds of
//! the exact result (the tests check them in f64):
//! merge `|W' - exact| <= (r + 2) eps (|W| + |scale| sum_k |B[o][k] A[k][i]|)`, plus half an ulp
//! of f16 or bf16 for the final rounding; BGMV `|Y' - exact| <= 2 (in + r_max + 3) eps (|y| +
//! |bias| + |scale| sum_k |B[s][o][k]| sum_i |A[s][k][i] x[b][i]|)`. WGSL lets a GPU flush f32
//! subnormals to zero; the twin keeps them, so values below 1.2e-38 may differ (never for f16
//! weights, whose subnormals are normal f32).

use super::launch::{
    bind, check_binding, check_page_bytes, dims, f32_bytes, f32s, place, rank_error, require_f32,
    scratch, shape_error, to_u32, whole, Output, Place,
};
use super::paged;
use crate::device::kernels::{Kernel, PipelineKey};
use crate::device::Fill;
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};
use mlmf_core::DType;
use mlmf_core::{Error, Result};

const MERGE: &str = "lora merge";
const BGMV: &str = "lora bgmv";
const WRITE_SLOT: &str = "lora write_slot";
const WORKGROUP: u32 = 64;

/// The slot index of a batch row that gets only the base output in [`bgmv`].
pub const NO_ADAPTER: u32 = u32::MAX;

/// Uniform parameters of `lora.wgsl`, fields in WGSL order (what each means per entry point is
/// written there).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    in_offset: u32,
    out_offset: u32,
    first: u32,
    inp: u32,
    outp: u32,
    rank: u32,
    flags: u32,
    scale: f32,
    batch: u32,
    slots: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == Kernel::Lora.params_bytes());

/// The merge entry point of `lora.wgsl` for weights of `dtype`.
fn merge_entry(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "lora_merge_f32",
        DType::F16 => "lora_merge_f16",
        DType::BF16 => "lora_merge_bf16",
        _ => return None,
    })
}

/// `W'`, a new tensor of W's dtype, shape and name: W with the adapter `(A, B)` merged in at
/// `scale` (see the module doc for the formula and its order), on the tensors' device. W is
/// `[out, in]`, or `[in, out]` when `fan_in_fan_out` (the delta is then added transposed), in
/// F32, F16 or BF16; A is F32 `[r, in]`, B F32 `[out, r]`. Errors: a tensor not a matrix
/// ([`Error::OpRank`]), W of another type or A, B not F32 ([`Error::OpDType`]), dimensions that
/// do not fit ([`Error::ShapeMismatch`]), tensors on different devices
/// ([`Error::DeviceMismatch`]), bytes that disagree with the shape ([`Error::TensorBytes`]), A or
/// B larger than one storage binding or W with 2^32 elements or more ([`Error::DeviceLimit`]).
pub fn merge(
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f32,
    fan_in_fan_out: bool,
) -> Result<Tensor> {
    let [w0, w1] = dims(
        MERGE,
        w,
        "a matrix [out, in] (or [in, out] with fan_in_fan_out)",
    )?;
    let Some(entry) = merge_entry(w.dtype()) else {
        return Err(Error::OpDType {
            op: MERGE,
            tensor: w.name().to_string(),
            dtype: w.dtype(),
            expected: "F32, F16 or BF16",
        });
    };
    let [rank, a_in] = dims(MERGE, a, "a matrix [r, in]")?;
    let [b_out, b_rank] = dims(MERGE, b, "a matrix [out, r]")?;
    require_f32(MERGE, a)?;
    require_f32(MERGE, b)?;
    let (out, inp) = if fan_in_fan_out { (w1, w0) } else { (w0, w1) };
    if a_in != inp {
        return Err(shape_error(MERGE, w, a));
    }
    if b_out != out {
        return Err(shape_error(MERGE, w, b));
    }
    if b_rank != rank {
        return Err(shape_error(MERGE, a, b));
    }
    for t in [w, a, b] {
        t.check_layout()?;
    }
    let dims = cpu::MergeDims { out, inp, rank };
    let storage = match place(MERGE, &[w, a, b])? {
        Place::Cpu(bytes) => Storage::Cpu(cpu::merge(
            w.dtype(),
            bytes[0],
            &f32s(bytes[1]),
            &f32s(bytes[2]),
            dims,
            scale,
            fan_in_fan_out,
        )),
        Place::Gpu(gs) => Storage::Gpu(gpu_merge(
            [w, a, b],
            [gs[0], gs[1], gs[2]],
            entry,
            dims,
            scale,
            fan_in_fan_out,
        )?),
    };
    Ok(Tensor::new(
        w.name().to_string(),
        w.dtype(),
        w.shape().clone(),
        storage,
    ))
}

/// The launcher of the merge entry points: A and B whole, then one dispatch per overlap of a
/// page of W with a page of W'. Recorded, not waited for (readback waits).
fn gpu_merge(
    [w, a, b]: [&Tensor; 3],
    [ws, a_s, b_s]: [&GpuStorage; 3],
    entry: &'static str,
    dims: cpu::MergeDims,
    scale: f32,
    fan_in_fan_out: bool,
) -> Result<GpuStorage> {
    check_page_bytes(w, ws)?;
    let gpu = ws.gpu();
    let dtype = w.dtype();
    let elems = w.shape().elem_count();
    let unit = GpuStorage::page_unit(gpu, dtype, w.shape());
    let out = GpuStorage::allocate(gpu, w.name(), w.byte_len(), unit, Fill::KERNEL)?;
    if elems == 0 {
        return Ok(out);
    }
    // The kernel indexes W, A and B with u32 element numbers.
    to_u32(w, elems, "W's element count")?;
    let inp = to_u32(w, dims.inp as u64, "the row length")?;
    let outp = to_u32(w, dims.out as u64, "the output size")?;
    let rank = to_u32(a, dims.rank as u64, "the rank")?;
    // Pages hold whole u32 words (`DType::page_unit`), so with 16-bit types every piece starts
    // at an even element and one invocation's word never belongs to two pieces.
    let elem_bytes = dtype.block_bytes();
    let per_invocation = 4 / elem_bytes;

    let key = PipelineKey::new(Kernel::Lora, entry).with("WG", f64::from(WORKGROUP));
    let pipeline = gpu.pipeline(&key)?;
    let mut encoder = gpu.record(MERGE);
    let a_buf = whole(&mut encoder, a, a_s, "LoRA A")?;
    let b_buf = whole(&mut encoder, b, b_s, "LoRA B")?;
    let unused = scratch(gpu, "lora unused", 4)?;
    let (in_page_elems, out_page_elems) =
        (ws.page_bytes() / elem_bytes, out.page_bytes() / elem_bytes);
    for (ip, op, at, end) in paged::spans(elems, in_page_elems, out_page_elems) {
        let params = Params {
            count: to_u32(w, end - at, "a piece's element count")?,
            in_offset: to_u32(w, at - ip * in_page_elems, "an offset in a page")?,
            out_offset: to_u32(w, at - op * out_page_elems, "an offset in a page")?,
            first: to_u32(w, at, "an element index")?,
            inp,
            outp,
            rank,
            flags: u32::from(fan_in_fan_out),
            scale,
            ..Params::default()
        };
        let group = bind(
            &mut encoder,
            &pipeline,
            MERGE,
            bytemuck::bytes_of(&params),
            &[
                ws.page(ip as usize)?,
                &a_buf,
                &b_buf,
                &unused,
                out.page(op as usize)?,
            ],
        )?;
        let invocations = (end - at).div_ceil(per_invocation);
        gpu.dispatch(&mut encoder, &pipeline, &group, invocations, WORKGROUP);
    }
    encoder.finish();
    Ok(out)
}

/// `Y'`, a new F32 `[batch, out]` tensor named like y: the base output `y` with the adapter that
/// `rows[b]` picks for each batch row (or none, [`NO_ADAPTER`]) applied to `x`, and `bias` (F32
/// `[out]`) added to every row; see the module doc for the formula and its order. x is F32
/// `[batch, in]`, y F32 `[batch, out]`, `a_stack` F32 `[slots, r_max, in]`, `b_stack` F32
/// `[slots, out, r_max]`, `scales` one per slot. Runs on the tensors' device. Errors: wrong
/// ranks ([`Error::OpRank`]), a tensor not F32 ([`Error::OpDType`]), dimensions that do not fit,
/// `rows` not one per batch row or `scales` not one per slot ([`Error::ShapeMismatch`], naming
/// `rows` or `scales`), a slot index past the stacks ([`Error::OpIndex`]), tensors on different
/// devices ([`Error::DeviceMismatch`]), an operand larger than one storage binding
/// ([`Error::DeviceLimit`]).
pub fn bgmv(
    y: &Tensor,
    x: &Tensor,
    rows: &[u32],
    a_stack: &Tensor,
    b_stack: &Tensor,
    scales: &[f32],
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let [batch, inp] = dims(BGMV, x, "a matrix [batch, in]")?;
    let [y_batch, out] = dims(BGMV, y, "a matrix [batch, out]")?;
    let [slots, rank, a_in] = dims(BGMV, a_stack, "a stack [slots, r_max, in]")?;
    let [b_slots, b_out, b_rank] = dims(BGMV, b_stack, "a stack [slots, out, r_max]")?;
    let mut all = vec![y, x, a_stack, b_stack];
    if let Some(bias) = bias {
        let [bias_out] = dims(BGMV, bias, "a vector [out]")?;
        if bias_out != out {
            return Err(shape_error(BGMV, y, bias));
        }
        all.push(bias);
    }
    for t in &all {
        require_f32(BGMV, t)?;
    }
    if y_batch != batch {
        return Err(shape_error(BGMV, x, y));
    }
    if a_in != inp {
        return Err(shape_error(BGMV, x, a_stack));
    }
    if b_out != out {
        return Err(shape_error(BGMV, y, b_stack));
    }
    if b_slots != slots || b_rank != rank {
        return Err(shape_error(BGMV, a_stack, b_stack));
    }
    let length = |what: &str, len: usize, t: &Tensor| Error::ShapeMismatch {
        op: BGMV,
        left: what.to_string(),
        left_shape: vec![len],
        right: t.name().to_string(),
        right_shape: t.shape().dims().to_vec(),
    };
    if rows.len() != batch {
        return Err(length("rows", rows.len(), x));
    }
    if scales.len() != slots {
        return Err(length("scales", scales.len(), a_stack));
    }
    if let Some(&bad) = rows
        .iter()
        .find(|&&s| s != NO_ADAPTER && s as usize >= slots)
    {
        return Err(Error::OpIndex {
            op: BGMV,
            what: "adapter slot in rows",
            index: u64::from(bad),
            len: slots as u64,
        });
    }
    for t in &all {
        t.check_layout()?;
    }
    let dims = cpu::BgmvDims {
        batch,
        inp,
        out,
        rank,
    };
    let storage = match place(BGMV, &all)? {
        Place::Cpu(bytes) => {
            let bias = bytes.get(4).map(|b| f32s(b));
            let got = cpu::bgmv(
                &f32s(bytes[0]),
                &f32s(bytes[1]),
                rows,
                &f32s(bytes[2]),
                &f32s(bytes[3]),
                scales,
                bias.as_deref(),
                dims,
            );
            Storage::Cpu(f32_bytes(&got))
        }
        Place::Gpu(gs) => Storage::Gpu(gpu_bgmv(&all, &gs, rows, scales, dims)?),
    };
    Ok(Tensor::new(
        y.name().to_string(),
        DType::F32,
        y.shape().clone(),
        storage,
    ))
}

/// The launcher of shrink and expand: the operands whole, rows, scales and bias in one buffer,
/// shrink into a scratch v, expand into Y' (its page, or a scratch buffer copied into its
/// pages). One command encoder; submitted, not waited for.
fn gpu_bgmv(
    ts: &[&Tensor],
    gs: &[&GpuStorage],
    rows: &[u32],
    scales: &[f32],
    dims: cpu::BgmvDims,
) -> Result<GpuStorage> {
    let (y, x, a_stack, b_stack) = (ts[0], ts[1], ts[2], ts[3]);
    let gpu = gs[0].gpu();
    let out_elems = y.shape().elem_count();
    let out = Output::new(gpu, y, y.shape())?;
    let mut encoder = gpu.record(BGMV);
    if out_elems == 0 {
        return Ok(out.finish(&mut encoder));
    }
    let v_elems = (dims.batch as u64) * (dims.rank as u64);
    check_binding(gpu, y, "the shrunk batch v", v_elems * 4)?;
    let has_bias = ts.len() > 4;
    let aux_words = (dims.batch + scales.len()) as u64 + if has_bias { dims.out as u64 } else { 0 };
    check_binding(gpu, y, "rows, scales and bias", aux_words * 4)?;

    let params = Params {
        inp: to_u32(x, dims.inp as u64, "the row length")?,
        outp: to_u32(y, dims.out as u64, "the output size")?,
        rank: to_u32(a_stack, dims.rank as u64, "the rank")?,
        flags: u32::from(has_bias),
        batch: to_u32(x, dims.batch as u64, "the batch")?,
        slots: to_u32(a_stack, scales.len() as u64, "the slot count")?,
        ..Params::default()
    };
    let y_buf = whole(&mut encoder, y, gs[0], "y")?;
    let x_buf = whole(&mut encoder, x, gs[1], "x")?;
    let a_buf = whole(&mut encoder, a_stack, gs[2], "the A stack")?;
    let b_buf = whole(&mut encoder, b_stack, gs[3], "the B stack")?;
    // rows, then scales' bits, then room for the bias, copied in on the device.
    let mut aux: Vec<u8> = rows
        .iter()
        .copied()
        .chain(scales.iter().map(|s| s.to_bits()))
        .flat_map(|w| w.to_le_bytes())
        .collect();
    aux.resize((aux_words * 4).max(4) as usize, 0);
    let aux_buf = gpu.take_init("lora rows, scales and bias", &aux)?;
    if has_bias {
        let at = ((dims.batch + scales.len()) * 4) as u64;
        for (page, in_page, pos, count) in gs[4].spans(0, gs[4].byte_len()) {
            encoder.copy_buffer_to_buffer(page, in_page, &aux_buf, at + pos, count);
        }
    }
    let v_buf = scratch(gpu, "lora v", v_elems * 4)?;

    if v_elems > 0 {
        let key = PipelineKey::new(Kernel::Lora, "lora_shrink").with("WG", f64::from(WORKGROUP));
        let pipeline = gpu.pipeline(&key)?;
        let params = Params {
            count: to_u32(x, v_elems, "batch * r_max")?,
            ..params
        };
        // Binding 3 is unused by shrink; any buffer fills it.
        let group = bind(
            &mut encoder,
            &pipeline,
            "lora shrink",
            bytemuck::bytes_of(&params),
            &[&x_buf, &a_buf, &b_buf, &aux_buf, &v_buf],
        )?;
        gpu.dispatch(&mut encoder, &pipeline, &group, v_elems, WORKGROUP);
    }
    let key = PipelineKey::new(Kernel::Lora, "lora_expand").with("WG", f64::from(WORKGROUP));
    let pipeline = gpu.pipeline(&key)?;
    let params = Params {
        count: to_u32(y, out_elems, "batch * out")?,
        ..params
    };
    let group = bind(
        &mut encoder,
        &pipeline,
        "lora expand",
        bytemuck::bytes_of(&params),
        &[&y_buf, &v_buf, &b_buf, &aux_buf, out.buffer()],
    )?;
    gpu.dispatch(&mut encoder, &pipeline, &group, out_elems, WORKGROUP);
    let storage = out.finish(&mut encoder);
    encoder.finish();
    Ok(storage)
}

/// Overwrite slot `slot` of the GPU stack `stack` (F32 `[slots, ...]`, e.g. the A or B stack of
/// [`bgmv`]) with `values` in place: how an adapter is swapped in without reallocating the
/// stacks or touching the base weights. The write is queued behind every operation already
/// submitted, so those still see the old values. Errors: `stack` not F32 ([`Error::OpDType`]) or
/// a scalar ([`Error::OpRank`]), `slot` past the stack ([`Error::OpIndex`]), `values` not one
/// slot's element count ([`Error::ShapeMismatch`], naming `values`), `stack` in host memory
/// ([`Error::OpDevice`]: a CPU tensor cannot be changed through `&Tensor`; build a new one).
pub fn write_slot(stack: &Tensor, slot: usize, values: &[f32]) -> Result<()> {
    let Some(&slots) = stack.shape().dims().first() else {
        return Err(rank_error(WRITE_SLOT, stack, "a stack [slots, ...]"));
    };
    require_f32(WRITE_SLOT, stack)?;
    if slot >= slots {
        return Err(Error::OpIndex {
            op: WRITE_SLOT,
            what: "slot",
            index: slot as u64,
            len: slots as u64,
        });
    }
    let slot_elems = stack.shape().elem_count() / slots as u64;
    if values.len() as u64 != slot_elems {
        return Err(Error::ShapeMismatch {
            op: WRITE_SLOT,
            left: "values".into(),
            left_shape: vec![values.len()],
            right: stack.name().to_string(),
            right_shape: stack.shape().dims().to_vec(),
        });
    }
    stack.check_layout()?;
    let Storage::Gpu(g) = stack.storage() else {
        return Err(Error::OpDevice {
            op: WRITE_SLOT,
            tensor: stack.name().to_string(),
            device: stack.device().describe(),
            expected: "a GPU",
        });
    };
    if values.is_empty() {
        return Ok(());
    }
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let pos = slot as u64 * slot_elems * 4;
    // After the commands recorded so far, which may still read the slot's old values.
    for (page, in_page, at, count) in g.spans(pos, bytes.len() as u64) {
        let from = (at - pos) as usize;
        g.gpu()
            .write_after(page, in_page, &bytes[from..from + count as usize]);
    }
    Ok(())
}

/// The CPU twins: plain loops, summing in the order the module doc gives (the GPU's order).
pub(crate) mod cpu {
    use mlmf_core::DType;

    /// The dimensions of a merge: W is `[out, inp]` (or `[inp, out]`), A `[rank, inp]`, B
    /// `[out, rank]`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) struct MergeDims {
        pub(crate) out: usize,
        pub(crate) inp: usize,
        pub(crate) rank: usize,
    }

    /// The dimensions of a BGMV: x is `[batch, inp]`, y `[batch, out]`, the A stack
    /// `[slots, rank, inp]`, the B stack `[slots, out, rank]` (slots is `scales.len()`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) struct BgmvDims {
        pub(crate) batch: usize,
        pub(crate) inp: usize,
        pub(crate) out: usize,
        pub(crate) rank: usize,
    }

    fn widen(dtype: DType, w: &[u8], e: usize) -> f32 {
        match dtype {
            DType::F16 => half::f16::from_le_bytes([w[2 * e], w[2 * e + 1]]).to_f32(),
            DType::BF16 => half::bf16::from_le_bytes([w[2 * e], w[2 * e + 1]]).to_f32(),
            _ => f32::from_le_bytes([w[4 * e], w[4 * e + 1], w[4 * e + 2], w[4 * e + 3]]),
        }
    }

    /// W' (bytes of `dtype`, W's layout) from W (`w`, bytes of `dtype`: F32, F16 or BF16), A and
    /// B: `W + (sum_k B[o][k] * A[k][i]) * scale`, k in order, rounded to `dtype` (round to
    /// nearest even, half's `from_f32`). With `fan_in_fan_out` W is `[inp, out]`. Empty when
    /// `dtype` is another type or a slice is shorter than the dimensions say.
    pub(crate) fn merge(
        dtype: DType,
        w: &[u8],
        a: &[f32],
        b: &[f32],
        dims: MergeDims,
        scale: f32,
        fan_in_fan_out: bool,
    ) -> Vec<u8> {
        let MergeDims { out, inp, rank } = dims;
        let size = match dtype {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            _ => return Vec::new(),
        };
        let elems = out * inp;
        if w.len() < elems * size || a.len() < rank * inp || b.len() < out * rank {
            return Vec::new();
        }
        let mut bytes = Vec::with_capacity(elems * size);
        for e in 0..elems {
            let (o, i) = if fan_in_fan_out {
                (e % out, e / out)
            } else {
                (e / inp, e % inp)
            };
            let mut acc = 0.0f32;
            for k in 0..rank {
                acc += b[o * rank + k] * a[k * inp + i];
            }
            let m = widen(dtype, w, e) + acc * scale;
            match dtype {
                DType::F16 => bytes.extend(half::f16::from_f32(m).to_le_bytes()),
                DType::BF16 => bytes.extend(half::bf16::from_f32(m).to_le_bytes()),
                _ => bytes.extend(m.to_le_bytes()),
            }
        }
        bytes
    }

    /// Y' `[batch, out]`: `(y[b][o] + bias[o]) + scales[s] * sum_k B[s][o][k] * v[b][k]` with
    /// `v[b][k] = sum_i A[s][k][i] * x[b][i]`, s = `rows[b]`, both sums in index order; a row
    /// whose slot is [`NO_ADAPTER`](super::NO_ADAPTER) gets `y + bias` only. Empty when a
    /// slice is shorter than the dimensions say or a slot index is past `scales`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bgmv(
        y: &[f32],
        x: &[f32],
        rows: &[u32],
        a_stack: &[f32],
        b_stack: &[f32],
        scales: &[f32],
        bias: Option<&[f32]>,
        dims: BgmvDims,
    ) -> Vec<f32> {
        let BgmvDims {
            batch,
            inp,
            out,
            rank,
        } = dims;
        let slots = scales.len();
        if y.len() < batch * out
            || x.len() < batch * inp
            || rows.len() < batch
            || a_stack.len() < slots * rank * inp
            || b_stack.len() < slots * out * rank
            || bias.is_some_and(|b| b.len() < out)
            || rows[..batch]
                .iter()
                .any(|&s| s != super::NO_ADAPTER && s as usize >= slots)
        {
            return Vec::new();
        }
        let mut result = y[..batch * out].to_vec();
        let mut v = vec![0.0f32; rank];
        for b in 0..batch {
            let slot = rows[b];
            if slot != super::NO_ADAPTER {
                let s = slot as usize;
                let xb = &x[b * inp..(b + 1) * inp];
                for (k, vk) in v.iter_mut().enumerate() {
                    let a = &a_stack[(s * rank + k) * inp..(s * rank + k + 1) * inp];
                    let mut acc = 0.0f32;
                    for i in 0..inp {
                        acc += a[i] * xb[i];
                    }
                    *vk = acc;
                }
            }
            for o in 0..out {
                let mut t = result[b * out + o];
                if let Some(bias) = bias {
                    t += bias[o];
                }
                if slot != super::NO_ADAPTER {
                    let s = slot as usize;
                    let bo = &b_stack[(s * out + o) * rank..(s * out + o + 1) * rank];
                    let mut acc = 0.0f32;
                    for k in 0..rank {
                        acc += bo[k] * v[k];
                    }
                    t += scales[s] * acc;
                }
                result[b * out + o] = t;
            }
        }
        result
    }
}
