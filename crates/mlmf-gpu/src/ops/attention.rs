//! Scaled dot-product attention with a key padding mask, in the layout BERT's projections
//! produce: q f32 `[batch, seq_q, heads * head_dim]`, k and v f32 `[batch, seq_k, heads *
//! head_dim]` (head h is columns `h * head_dim .. (h + 1) * head_dim`, as transformers splits
//! them); the output has q's shape and layout, ready for the output projection (no transposes).
//!
//! `out[b][i][h] = sum_j p[b][h][i][j] v[b][j][h]` with `p = softmax_j(s)` and
//! `s[b][h][i][j] = scale * q[b][i][h] . k[b][j][h]`, `scale` by default `1 / sqrt(head_dim)`.
//! Where `mask[b * seq_k + j] == 0` (a padded key) the score is the f32 minimum instead: what
//! transformers' BERT gets by adding `(1 - mask) * finfo(float32).min`, since the sum rounds to
//! the minimum for any score below 2^103. A batch item whose keys are all padded thus attends
//! uniformly to all of them, as there. The mask is `attention_mask` as a tokenizer returns it
//! (1 attend, 0 padding), `batch * seq_k` values in the caller's memory.
//!
//! GPU: `shaders/attention.wgsl` in three passes recorded in one command encoder: scores (one
//! invocation each) into a scratch `[batch, heads, seq_q, seq_k]`, softmax over its rows (the
//! Softmax family's pass, `softmax::record`) into a second scratch, then the weighted
//! sums (one invocation per output element). Each operand and the scores must fit in one
//! storage binding.
//!
//! [`masked`] is the same family with PyTorch's semantics (`nn.MultiheadAttention` after its
//! projections): key padding, causal and additive masks with `-inf`, the weights returned, and
//! a fused one-pass path whose scores are never stored; its doc gives its bounds.
//!
//! CPU twin: `cpu`, the same three steps in index order. With `eps = f32::EPSILON`,
//! `ds_j = (head_dim + 2) eps |scale| sum_d |q_d k_jd|` (the rounding bound of each score), the
//! softmax bound `dp_j` of [`super::softmax`] and n = seq_k, both stay within
//! `|out - exact| <= 2 sum_j |v_j| (p_j (ds_j + sum_k p_k ds_k) + dp_j) + (n + 1) eps sum_j p_j |v_j|`
//! (the first term carries the score errors through the softmax to first order, doubled for the
//! higher orders; the second is the rounding of the weighted sum). The tests check it in f64.

use super::launch::{self, Place, Reduce};
use super::softmax;
use crate::device::kernels::{Kernel, PipelineKey};
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};
use mlmf_core::DType;
use mlmf_core::{Error, Result};

const OP: &str = "attention";
const WORKGROUP: u32 = 64;

/// Uniform parameters of `attention.wgsl`, fields in WGSL order.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    heads: u32,
    seq_q: u32,
    seq_k: u32,
    head_dim: u32,
    has_mask: u32,
    scale: f32,
    count: u32,
    flags: u32,
    splits: u32,
    split_len: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == Kernel::Attention.params_bytes());

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub seq_q: usize,
    pub seq_k: usize,
    pub head_dim: usize,
}

/// Attention of q over k and v with `heads` heads (see the module doc): a new f32 tensor of q's
/// shape and name on q's device. `mask`: `batch * seq_k` flags, 0 for a padded key, or `None`
/// to attend to every key. `scale`: `None` for `1 / sqrt(head_dim)`. Errors: q, k or v not of
/// rank 3 ([`Error::OpRank`]), not F32 ([`Error::OpDType`]), batches, key lengths or widths that
/// differ, or a mask not `batch * seq_k` long (naming `mask`) ([`Error::ShapeMismatch`]),
/// `heads` 0 or not dividing the width ([`Error::OpArgument`]), tensors on
/// different devices ([`Error::DeviceMismatch`]), an operand or the scores larger than one
/// storage binding ([`Error::DeviceLimit`]).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&[u32]>,
    scale: Option<f32>,
) -> Result<Tensor> {
    let dims = operands(q, k, v, heads)?;
    let (batch, seq_k) = (dims.batch, dims.seq_k);
    if let Some(m) = mask {
        if m.len() as u64 != batch as u64 * seq_k as u64 {
            return Err(Error::ShapeMismatch {
                op: OP,
                left: "mask".to_string(),
                left_shape: vec![m.len()],
                right: k.name().to_string(),
                right_shape: k.shape().dims().to_vec(),
            });
        }
    }
    let scale = scale.unwrap_or(1.0 / (dims.head_dim as f32).sqrt());
    let storage = match launch::place(OP, &[q, k, v])? {
        Place::Cpu(bytes) => Storage::Cpu(launch::f32_bytes(&cpu::attention(
            &launch::f32s(bytes[0]),
            &launch::f32s(bytes[1]),
            &launch::f32s(bytes[2]),
            mask,
            dims,
            scale,
        ))),
        Place::Gpu(gs) => Storage::Gpu(gpu_attention([q, k, v], &gs, mask, dims, scale)?),
    };
    Ok(Tensor::new(
        q.name().to_string(),
        DType::F32,
        q.shape().clone(),
        storage,
    ))
}

/// The sizes of q, k and v, checked: f32 `[batch, seq_q, hidden]`, `[batch, seq_k, hidden]`
/// twice, `heads` dividing `hidden`.
fn operands(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Dims> {
    let expected = "a tensor [batch, seq, heads * head_dim]";
    let [batch, seq_q, hidden] = launch::dims(OP, q, expected)?;
    let [k_batch, seq_k, k_hidden] = launch::dims(OP, k, expected)?;
    let v_dims = launch::dims::<3>(OP, v, expected)?;
    for t in [q, k, v] {
        launch::require_f32(OP, t)?;
    }
    if k_batch != batch || k_hidden != hidden {
        return Err(launch::shape_error(OP, q, k));
    }
    if v_dims != [batch, seq_k, hidden] {
        return Err(launch::shape_error(OP, k, v));
    }
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(Error::OpArgument {
            op: OP,
            argument: "heads",
            value: heads as u64,
            expected: "a positive divisor of the width heads * head_dim",
        });
    }
    Ok(Dims {
        batch,
        heads,
        seq_q,
        seq_k,
        head_dim: hidden / heads,
    })
}

/// The launcher: scores, softmax, weighted sums, recorded one after another into the device's
/// batch; not waited for.
fn gpu_attention(
    [q, k, v]: [&Tensor; 3],
    gs: &[&GpuStorage],
    mask: Option<&[u32]>,
    d: Dims,
    scale: f32,
) -> Result<GpuStorage> {
    let gpu = gs[0].gpu();
    let out = launch::Output::new(gpu, q, q.shape())?;
    let mut encoder = gpu.record(OP);
    let out_elems = q.shape().elem_count();
    let score_elems = (d.batch as u64)
        .checked_mul(d.heads as u64)
        .and_then(|n| n.checked_mul(d.seq_q as u64))
        .and_then(|n| n.checked_mul(d.seq_k as u64))
        .unwrap_or(u64::MAX);
    if out_elems > 0 {
        let u32_of = |v: u64, what: &str| launch::to_u32(q, v, what);
        // Every index in the kernels is u32.
        u32_of(score_elems, "the score count")?;
        u32_of(k.shape().elem_count(), "k's element count")?;
        launch::check_binding(gpu, q, "the scores", score_elems * 4)?;
        let params = Params {
            batch: u32_of(d.batch as u64, "the batch")?,
            heads: u32_of(d.heads as u64, "the head count")?,
            seq_q: u32_of(d.seq_q as u64, "the query length")?,
            seq_k: u32_of(d.seq_k as u64, "the key length")?,
            head_dim: u32_of(d.head_dim as u64, "the head size")?,
            has_mask: u32::from(mask.is_some()),
            scale,
            count: u32_of(score_elems, "the score count")?,
            flags: 0,
            splits: 1,
            split_len: 0,
            _pad: 0,
        };
        let [qb, kb, vb] = [(q, gs[0]), (k, gs[1]), (v, gs[2])]
            .map(|(t, s)| launch::whole(&mut encoder, t, s, t.name()));
        let (qb, kb, vb) = (qb?, kb?, vb?);
        let mask_buf = launch::words_buffer(gpu, "attention mask", mask.unwrap_or(&[]))?;
        let none = launch::scratch(gpu, "attention placeholder", 4)?;
        let scores = launch::scratch(gpu, "attention scores", score_elems * 4)?;
        let probs = launch::scratch(gpu, "attention probabilities", score_elems * 4)?;
        let key =
            |entry| PipelineKey::new(Kernel::Attention, entry).with("WG", f64::from(WORKGROUP));

        if score_elems > 0 {
            let pipeline = gpu.pipeline(&key("attention_scores"))?;
            let group = launch::bind(
                &mut encoder,
                &pipeline,
                "attention scores",
                bytemuck::bytes_of(&params),
                &[&qb, &kb, &none, &mask_buf, &none, &scores],
            )?;
            gpu.dispatch(&mut encoder, &pipeline, &group, score_elems, WORKGROUP);
            let rows = softmax::Rows {
                rows: u32_of(score_elems / d.seq_k as u64, "the score rows")?,
                cols: params.seq_k,
                zero_masked: false,
            };
            softmax::record(
                gpu,
                &mut encoder,
                &scores,
                &probs,
                rows,
                Reduce::for_gpu(gpu),
            )?;
        }
        let pipeline = gpu.pipeline(&key("attention_weighted"))?;
        let params = Params {
            count: u32_of(out_elems, "the output element count")?,
            ..params
        };
        let group = launch::bind(
            &mut encoder,
            &pipeline,
            "attention weighted sums",
            bytemuck::bytes_of(&params),
            &[&probs, &vb, &none, &mask_buf, &none, out.buffer()],
        )?;
        gpu.dispatch(&mut encoder, &pipeline, &group, out_elems, WORKGROUP);
    }
    let storage = out.finish(&mut encoder);
    encoder.finish();
    Ok(storage)
}

/// Which (query, key) pairs a [`masked`] attention leaves out, beyond its key padding mask.
#[derive(Clone, Copy, Debug, Default)]
pub enum AttnMask<'a> {
    /// None.
    #[default]
    None,
    /// Query i sees keys `0..=i` (top-left aligned, as `scaled_dot_product_attention(...,
    /// is_causal=True)` and `nn.Transformer.generate_square_subsequent_mask`).
    Causal,
    /// PyTorch's float `attn_mask`, added to the scores: F32 `[seq_q, seq_k]` (shared by every
    /// batch item and head) or `[batch * heads, seq_q, seq_k]` (item b, head h at `b * heads +
    /// h`), on the device of q. A `-inf` entry leaves the pair out. Other values are added as
    /// they are; keep them finite and above `f32::MIN / 2` (so the sum stays finite).
    Additive(&'a Tensor),
}

/// Which implementation a [`masked`] attention runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttnPath {
    /// Fused when no weights are asked for, three passes when they are.
    #[default]
    Auto,
    /// Scores, softmax, weighted sums (`[batch, heads, seq_q, seq_k]` stored; it must fit one
    /// storage binding).
    ThreePass,
    /// One pass with an online softmax; the scores are never stored. Cannot return weights.
    Fused,
}

/// The options of [`masked`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MaskedOptions<'a> {
    /// `batch * seq_k` flags in PyTorch's convention: `true` for a padded key (left out).
    pub key_padding: Option<&'a [bool]>,
    pub mask: AttnMask<'a>,
    /// `None` for `1 / sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Return the attention weights `[batch, heads, seq_q, seq_k]`.
    pub weights: bool,
    pub path: AttnPath,
}

/// What [`masked`] returns.
#[derive(Debug)]
pub struct Attended {
    /// F32 of q's shape `[batch, seq_q, heads * head_dim]`, named like q.
    pub output: Tensor,
    /// F32 `[batch, heads, seq_q, seq_k]` (named `attn_weights`) when asked for.
    pub weights: Option<Tensor>,
}

/// The masks as both implementations read them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MaskSpec<'a> {
    /// `batch * seq_k` words, nonzero for a padded key.
    pub key_padding: Option<&'a [u32]>,
    pub causal: bool,
    /// The additive mask and whether it is `[batch * heads, seq_q, seq_k]` (else `[seq_q, seq_k]`).
    pub additive: Option<(&'a [f32], bool)>,
}

impl MaskSpec<'_> {
    fn flags(&self) -> u32 {
        let mut f = 0;
        if self.key_padding.is_some() {
            f |= 1;
        }
        if self.causal {
            f |= 2;
        }
        match self.additive {
            Some((_, false)) => f |= 4,
            Some((_, true)) => f |= 8,
            None => {}
        }
        f
    }
}

/// Attention of q over k and v with `heads` heads and PyTorch's masks (`nn.MultiheadAttention`
/// after its projections, `F.scaled_dot_product_attention`): q f32 `[batch, seq_q, heads *
/// head_dim]`, k and v `[batch, seq_k, heads * head_dim]` (head h in columns `h * head_dim ..`).
///
/// A pair is left out (probability exactly 0) where its key is padded, above the diagonal under
/// [`AttnMask::Causal`], or where the additive mask is `-inf`. A query row with every key left
/// out gives zeros in the output and the weights. PyTorch differs there: its softmax over a row
/// of `-inf` gives NaN (what `nn.MultiheadAttention` returns with `need_weights=True`), while
/// `scaled_dot_product_attention`'s math path gives zeros (its `_safe_softmax`, pytorch/pytorch
/// pull request 133882), as flash kernels do; we take the zeros, which keep a padded batch item
/// from poisoning anything computed after it.
///
/// GPU: three passes (`mha_scores`, softmax, `attention_weighted`) or one (`mha_fused`), as
/// [`MaskedOptions::path`] says; the CPU twins are `cpu::masked` and `cpu::fused`. Both
/// paths keep the three-pass bound of the module doc, with each score's `ds_j` widened by
/// `2 eps |s_j|` for the additive mask; the fused path's softmax error is larger, because every
/// rise of the running maximum rescales what was summed before: with n = seq_k and
/// `t_j = s_j - max s`, its `dp_j` is `eps p_j (7n + 4 + 3|t_j| + sum_k p_k (5n + 4 + 3|t_k|))` and its
/// last term `(2n + 4) eps sum_j p_j |v_j|`. (Each `e_j` is exp'd once and rescaled at most n
/// times, each rescale an exp of `m_old - m_new` and a product, `(5 + 3|m_old - m_new|) eps`;
/// the rises sum to at most `|t_j|`, so `e_j` is within `(5n + 4 + 3|t_j|) eps` relative; the
/// sum `l` adds n additions and n rescales, the accumulators the same and the division.) With
/// few query rows the fused path cuts the keys into pieces of about [`MIN_SPLIT_KEYS`] (as
/// flash-decoding does) so that enough invocations run, and merges the pieces' `(m, l, acc)`
/// in order: one more rescale per term and one addition per piece, within the same counts.
///
/// Errors: as [`attention`], plus a key padding mask not `batch * seq_k` long or an additive
/// mask of another shape ([`Error::ShapeMismatch`]), weights asked of the fused path
/// ([`Error::OpArgument`]), the three-pass path's scores larger than one storage binding
/// ([`Error::DeviceLimit`]).
pub fn masked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    options: &MaskedOptions,
) -> Result<Attended> {
    let d = operands(q, k, v, heads)?;
    let (batch, seq_q, seq_k) = (d.batch, d.seq_q, d.seq_k);
    let fused = match options.path {
        AttnPath::Auto => !options.weights,
        AttnPath::ThreePass => false,
        AttnPath::Fused => {
            if options.weights {
                return Err(Error::OpArgument {
                    op: OP,
                    argument: "weights",
                    value: 1,
                    expected: "no weights from the fused path (it never stores them)",
                });
            }
            true
        }
    };
    let key_padding: Option<Vec<u32>> = match options.key_padding {
        Some(m) if m.len() as u64 != batch as u64 * seq_k as u64 => {
            return Err(Error::ShapeMismatch {
                op: OP,
                left: "key_padding_mask".to_string(),
                left_shape: vec![m.len()],
                right: k.name().to_string(),
                right_shape: k.shape().dims().to_vec(),
            })
        }
        Some(m) => Some(m.iter().map(|&p| u32::from(p)).collect()),
        None => None,
    };
    let (causal, additive) = match options.mask {
        AttnMask::None => (false, None),
        AttnMask::Causal => (true, None),
        AttnMask::Additive(m) => {
            launch::require_f32(OP, m)?;
            let per_head = if m.shape().dims() == [seq_q, seq_k] {
                false
            } else if m.shape().dims() == [batch * heads, seq_q, seq_k] {
                true
            } else {
                return Err(launch::shape_error(OP, m, q));
            };
            (false, Some((m, per_head)))
        }
    };
    let scale = options.scale.unwrap_or(1.0 / (d.head_dim as f32).sqrt());
    let mut operands = vec![q, k, v];
    if let Some((m, _)) = additive {
        operands.push(m);
    }
    let weight_shape = launch::f32_shape(q, vec![batch, heads, seq_q, seq_k])?;
    let (out, weights) = match launch::place(OP, &operands)? {
        Place::Cpu(bytes) => {
            let add = bytes.get(3).map(|b| launch::f32s(b));
            let spec = MaskSpec {
                key_padding: key_padding.as_deref(),
                causal,
                additive: add.as_deref().zip(additive.map(|a| a.1)),
            };
            let (qf, kf, vf) = (
                launch::f32s(bytes[0]),
                launch::f32s(bytes[1]),
                launch::f32s(bytes[2]),
            );
            if fused {
                let rows = (d.batch * d.heads * d.seq_q * d.head_dim.div_ceil(FUSED_DIMS)) as u64;
                let pieces = fused_splits(rows, d.seq_k, d.head_dim, CPU_INVOCATIONS);
                let out = cpu::fused(&qf, &kf, &vf, spec, d, scale, pieces);
                (Storage::Cpu(launch::f32_bytes(&out)), None)
            } else {
                let (out, w) = cpu::masked(&qf, &kf, &vf, spec, d, scale);
                let w = options.weights.then(|| Storage::Cpu(launch::f32_bytes(&w)));
                (Storage::Cpu(launch::f32_bytes(&out)), w)
            }
        }
        Place::Gpu(gs) => {
            let launch = MaskedLaunch {
                d,
                scale,
                key_padding: key_padding.as_deref(),
                causal,
                additive: additive.map(|(m, per_head)| (m, gs[3], per_head)),
                fused,
                weights: options.weights,
            };
            let (out, w) = gpu_masked([q, k, v], &gs, &launch, &weight_shape)?;
            (Storage::Gpu(out), w.map(Storage::Gpu))
        }
    };
    Ok(Attended {
        output: Tensor::new(q.name().to_string(), DType::F32, q.shape().clone(), out),
        weights: weights
            .map(|w| Tensor::new("attn_weights".to_string(), DType::F32, weight_shape, w)),
    })
}

struct MaskedLaunch<'a> {
    d: Dims,
    scale: f32,
    key_padding: Option<&'a [u32]>,
    causal: bool,
    additive: Option<(&'a Tensor, &'a GpuStorage, bool)>,
    fused: bool,
    weights: bool,
}

/// The launcher of [`masked`]: one command encoder, submitted, not waited for.
fn gpu_masked(
    [q, k, v]: [&Tensor; 3],
    gs: &[&GpuStorage],
    l: &MaskedLaunch,
    weight_shape: &mlmf_core::Shape,
) -> Result<(GpuStorage, Option<GpuStorage>)> {
    let gpu = gs[0].gpu();
    let d = l.d;
    let out = launch::Output::new(gpu, q, q.shape())?;
    let probs_out = if l.weights {
        Some(launch::Output::new(gpu, q, weight_shape)?)
    } else {
        None
    };
    let mut encoder = gpu.record(OP);
    let out_elems = q.shape().elem_count();
    let score_elems = weight_shape.elem_count();
    let u32_of = |v: u64, what: &str| launch::to_u32(q, v, what);
    let spec = MaskSpec {
        key_padding: l.key_padding,
        causal: l.causal,
        additive: l.additive.map(|(_, _, per_head)| (&[][..], per_head)),
    };
    let chunks = d.head_dim.div_ceil(FUSED_DIMS) as u64;
    let mut params = Params {
        batch: u32_of(d.batch as u64, "the batch")?,
        heads: u32_of(d.heads as u64, "the head count")?,
        seq_q: u32_of(d.seq_q as u64, "the query length")?,
        seq_k: u32_of(d.seq_k as u64, "the key length")?,
        head_dim: u32_of(d.head_dim as u64, "the head size")?,
        has_mask: 0,
        scale: l.scale,
        count: 0,
        flags: spec.flags(),
        splits: 1,
        split_len: 0,
        _pad: 0,
    };
    // Every index in the kernels is u32.
    u32_of(k.shape().elem_count(), "k's element count")?;
    u32_of(out_elems, "the output element count")?;
    if out_elems > 0 {
        let [qb, kb, vb] = [(q, gs[0]), (k, gs[1]), (v, gs[2])]
            .map(|(t, s)| launch::whole(&mut encoder, t, s, t.name()));
        let (qb, kb, vb) = (qb?, kb?, vb?);
        let mask_buf = launch::words_buffer(gpu, "key padding mask", l.key_padding.unwrap_or(&[]))?;
        let none = launch::scratch(gpu, "attention placeholder", 4)?;
        let add_buf = match l.additive {
            Some((m, s, _)) => launch::whole(&mut encoder, m, s, m.name())?,
            None => none.clone(),
        };
        let key =
            |entry| PipelineKey::new(Kernel::Attention, entry).with("WG", f64::from(WORKGROUP));
        if l.fused {
            let rows = d.batch as u64 * d.heads as u64 * d.seq_q as u64;
            let target = match Reduce::for_gpu(gpu) {
                Reduce::PerInvocation => CPU_INVOCATIONS,
                Reduce::Workgroup => GPU_INVOCATIONS,
            };
            let (splits, split_len) = fused_splits(rows * chunks, d.seq_k, d.head_dim, target);
            params.splits = u32_of(splits as u64, "the key pieces")?;
            params.split_len = u32_of(split_len as u64, "the key piece length")?;
            let invocations = (rows * chunks).saturating_mul(splits as u64);
            params.count = u32_of(invocations, "the fused invocation count")?;
            let pipeline = gpu.pipeline(&key("mha_fused"))?;
            let records = if splits > 1 {
                let floats = rows * splits as u64 * (d.head_dim as u64 + 2);
                u32_of(floats, "the partial records")?;
                launch::check_binding(gpu, q, "the partial records", floats * 4)?;
                Some(launch::scratch(
                    gpu,
                    "attention partial records",
                    floats * 4,
                )?)
            } else {
                None
            };
            let group = launch::bind(
                &mut encoder,
                &pipeline,
                "attention fused",
                bytemuck::bytes_of(&params),
                &[
                    &qb,
                    &kb,
                    &vb,
                    &mask_buf,
                    &add_buf,
                    records.as_ref().map_or(out.buffer(), |r| r),
                ],
            )?;
            gpu.dispatch(&mut encoder, &pipeline, &group, invocations, WORKGROUP);
            if let Some(records) = records {
                params.count = u32_of(out_elems, "the output element count")?;
                let pipeline = gpu.pipeline(&key("mha_fused_combine"))?;
                let group = launch::bind(
                    &mut encoder,
                    &pipeline,
                    "attention fused combine",
                    bytemuck::bytes_of(&params),
                    &[&records, &none, &none, &mask_buf, &none, out.buffer()],
                )?;
                gpu.dispatch(&mut encoder, &pipeline, &group, out_elems, WORKGROUP);
            }
        } else {
            u32_of(score_elems, "the score count")?;
            launch::check_binding(gpu, q, "the scores", score_elems * 4)?;
            let scores = launch::scratch(gpu, "attention scores", score_elems * 4)?;
            let scratch_probs;
            let probs = match &probs_out {
                Some(p) => p.buffer(),
                None => {
                    scratch_probs =
                        launch::scratch(gpu, "attention probabilities", score_elems * 4)?;
                    &scratch_probs
                }
            };
            if score_elems > 0 {
                params.count = u32_of(score_elems, "the score count")?;
                let pipeline = gpu.pipeline(&key("mha_scores"))?;
                let group = launch::bind(
                    &mut encoder,
                    &pipeline,
                    "attention masked scores",
                    bytemuck::bytes_of(&params),
                    &[&qb, &kb, &none, &mask_buf, &add_buf, &scores],
                )?;
                gpu.dispatch(&mut encoder, &pipeline, &group, score_elems, WORKGROUP);
                let rows = softmax::Rows {
                    rows: u32_of(score_elems / d.seq_k as u64, "the score rows")?,
                    cols: params.seq_k,
                    zero_masked: true,
                };
                softmax::record(
                    gpu,
                    &mut encoder,
                    &scores,
                    probs,
                    rows,
                    Reduce::for_gpu(gpu),
                )?;
            }
            params.count = u32_of(out_elems, "the output element count")?;
            let pipeline = gpu.pipeline(&key("attention_weighted"))?;
            let group = launch::bind(
                &mut encoder,
                &pipeline,
                "attention weighted sums",
                bytemuck::bytes_of(&params),
                &[probs, &vb, &none, &mask_buf, &none, out.buffer()],
            )?;
            gpu.dispatch(&mut encoder, &pipeline, &group, out_elems, WORKGROUP);
        }
    }
    let storage = out.finish(&mut encoder);
    let weights = probs_out.map(|p| p.finish(&mut encoder));
    encoder.finish();
    Ok((storage, weights))
}

/// Output columns one fused invocation accumulates (the shader's `FUSED_DIMS`).
pub const FUSED_DIMS: usize = 64;

/// The fused path cuts the keys into at most `ceil(seq_k / MIN_SPLIT_KEYS)` pieces.
pub const MIN_SPLIT_KEYS: usize = 64;
/// Invocations the fused path aims for on CPU-based adapters (and the CPU twin, so that both
/// cut the keys alike) and on other GPUs: fewer query rows than this get their keys cut.
const CPU_INVOCATIONS: u64 = 256;
const GPU_INVOCATIONS: u64 = 8192;

/// llvmpipe (lavapipe) ends the loops of an invocation, silently, once all of them together have
/// run 65535 iterations (gallivm's `LP_MAX_TGSI_LOOP_ITERATIONS`, one counter shared by every
/// loop of a shader): a fused invocation past it returned partial sums. One piece of the keys
/// stays within half of it (measured: pieces of 507 keys of 64 columns, which our count puts
/// just under 65535, still failed).
const LOOP_ITERATIONS: usize = 65535 / 2;

/// The most keys one fused invocation takes: each costs one iteration of the key loop,
/// `head_dim` of the score's and up to [`FUSED_DIMS`] of the accumulators'; the query row and
/// the output cost `head_dim + FUSED_DIMS` once.
fn max_piece_keys(head_dim: usize) -> usize {
    let per_key = 1 + head_dim + head_dim.min(FUSED_DIMS);
    (LOOP_ITERATIONS.saturating_sub(head_dim + FUSED_DIMS) / per_key).max(1)
}

/// How the fused path cuts `seq_k` keys for `rows` (query rows times column chunks): `(pieces,
/// keys per piece)`, as many pieces as bring the invocations to `target` but at most
/// `ceil(seq_k / MIN_SPLIT_KEYS)`, and none longer than [`max_piece_keys`]; one piece when the
/// rows alone reach the target and the keys fit. The same cut on every adapter, so that the
/// twin's sums are the GPU's.
pub(crate) fn fused_splits(
    rows: u64,
    seq_k: usize,
    head_dim: usize,
    target: u64,
) -> (usize, usize) {
    let most = seq_k.div_ceil(MIN_SPLIT_KEYS).max(1) as u64;
    let want = target.div_ceil(rows.max(1)).clamp(1, most) as usize;
    let len = seq_k.div_ceil(want).clamp(1, max_piece_keys(head_dim));
    // Pieces of `len` keys; the last may be shorter, none empty.
    (seq_k.div_ceil(len).max(1), len)
}

/// The f32 just above `f32::MIN`: no kept score is below it, so `f32::MIN` marks the masked
/// ones alone (the shader's `ABOVE_LOWEST`).
const ABOVE_LOWEST: f32 = f32::from_bits(0xff7f_fffe);

/// The CPU twin: scores, softmax ([`super::softmax::cpu`]), weighted sums, each in index order.
pub(crate) mod cpu {
    use super::{Dims, MaskSpec, ABOVE_LOWEST};
    use crate::ops::softmax::EXP_FLOOR;

    /// The score of query i against key j of head h in batch item b, or `f32::MIN` where
    /// masked: the shader's `mha_score`, step for step.
    #[allow(clippy::too_many_arguments)]
    fn score(
        q: &[f32],
        k: &[f32],
        m: MaskSpec,
        d: Dims,
        scale: f32,
        (b, h, i, j): (usize, usize, usize, usize),
    ) -> f32 {
        if m.key_padding.is_some_and(|p| p[b * d.seq_k + j] != 0) {
            return f32::MIN;
        }
        if m.causal && j > i {
            return f32::MIN;
        }
        let mut add = 0.0;
        if let Some((a, per_head)) = m.additive {
            let mut at = i * d.seq_k + j;
            if per_head {
                at += (b * d.heads + h) * d.seq_q * d.seq_k;
            }
            if a[at] == f32::NEG_INFINITY {
                return f32::MIN;
            }
            add = a[at];
        }
        let hidden = d.heads * d.head_dim;
        let qrow = &q[(b * d.seq_q + i) * hidden + h * d.head_dim..][..d.head_dim];
        let krow = &k[(b * d.seq_k + j) * hidden + h * d.head_dim..][..d.head_dim];
        let mut s = 0.0f32;
        for (x, y) in qrow.iter().zip(krow) {
            s += x * y;
        }
        (s * scale + add).max(ABOVE_LOWEST)
    }

    /// Whether the slices are as long as `d` and the masks say.
    fn fits(q: &[f32], k: &[f32], v: &[f32], m: MaskSpec, d: Dims) -> bool {
        let hidden = d.heads * d.head_dim;
        let (qn, kn) = (d.batch * d.seq_q * hidden, d.batch * d.seq_k * hidden);
        let add = match m.additive {
            Some((_, true)) => d.batch * d.heads * d.seq_q * d.seq_k,
            Some((_, false)) => d.seq_q * d.seq_k,
            None => 0,
        };
        q.len() >= qn
            && k.len() >= kn
            && v.len() >= kn
            && m.key_padding.is_none_or(|p| p.len() >= d.batch * d.seq_k)
            && m.additive.is_none_or(|(a, _)| a.len() >= add)
    }

    /// The three-pass path with PyTorch's masks ([`super::masked`]): the output `[batch,
    /// seq_q, hidden]` and the weights `[batch, heads, seq_q, seq_k]`. Empty when a slice is
    /// shorter than `d` says.
    pub(crate) fn masked(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        m: MaskSpec,
        d: Dims,
        scale: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        if !fits(q, k, v, m, d) {
            return (Vec::new(), Vec::new());
        }
        let hidden = d.heads * d.head_dim;
        let mut out = vec![0.0f32; d.batch * d.seq_q * hidden];
        let mut weights = Vec::with_capacity(d.batch * d.heads * d.seq_q * d.seq_k);
        let mut scores = vec![0.0f32; d.seq_k];
        for b in 0..d.batch {
            for h in 0..d.heads {
                for i in 0..d.seq_q {
                    for (j, s) in scores.iter_mut().enumerate() {
                        *s = score(q, k, m, d, scale, (b, h, i, j));
                    }
                    let p = crate::ops::softmax::cpu::softmax_zero_masked(&scores, d.seq_k);
                    let orow =
                        &mut out[(b * d.seq_q + i) * hidden + h * d.head_dim..][..d.head_dim];
                    for (e, o) in orow.iter_mut().enumerate() {
                        let mut acc = 0.0f32;
                        for (j, pj) in p.iter().enumerate() {
                            acc += pj * v[(b * d.seq_k + j) * hidden + h * d.head_dim + e];
                        }
                        *o = acc;
                    }
                    weights.extend_from_slice(&p);
                }
            }
        }
        (out, weights)
    }

    /// The fused path ([`super::masked`], the shaders' `mha_fused` and `mha_fused_combine`): per
    /// query row and piece of the keys (`(pieces, keys per piece)` as [`super::fused_splits`]
    /// cuts them),
    /// one pass with a running maximum `m`, sum `l` and accumulators; then, with more than one
    /// piece, the pieces merged in order. Empty when a slice is shorter than `d` says.
    pub(crate) fn fused(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        m: MaskSpec,
        d: Dims,
        scale: f32,
        (splits, len): (usize, usize),
    ) -> Vec<f32> {
        if !fits(q, k, v, m, d) {
            return Vec::new();
        }
        let hidden = d.heads * d.head_dim;
        let splits = splits.max(1);
        let mut out = vec![0.0f32; d.batch * d.seq_q * hidden];
        // (m, l, accumulators) of each piece of one row.
        let mut records: Vec<(f32, f32, Vec<f32>)> = Vec::with_capacity(splits);
        for b in 0..d.batch {
            for h in 0..d.heads {
                for i in 0..d.seq_q {
                    records.clear();
                    for piece in 0..splits {
                        let j0 = (piece * len).min(d.seq_k);
                        let j1 = (j0 + len).min(d.seq_k);
                        let mut acc = vec![0.0f32; d.head_dim];
                        let (mut mx, mut l) = (f32::MIN, 0.0f32);
                        for j in j0..j1 {
                            let s = score(q, k, m, d, scale, (b, h, i, j));
                            if s == f32::MIN {
                                continue;
                            }
                            // The shader's update, without a branch: f is 1 while the
                            // maximum stays, 0 before the first kept key.
                            let m_new = mx.max(s);
                            let f = if l > 0.0 {
                                (mx - m_new).max(EXP_FLOOR).exp()
                            } else {
                                0.0
                            };
                            mx = m_new;
                            let e = (s - mx).max(EXP_FLOOR).exp();
                            l = l * f + e;
                            let vrow =
                                &v[(b * d.seq_k + j) * hidden + h * d.head_dim..][..d.head_dim];
                            for (a, x) in acc.iter_mut().zip(vrow) {
                                *a = *a * f + e * x;
                            }
                        }
                        records.push((mx, l, acc));
                    }
                    let orow =
                        &mut out[(b * d.seq_q + i) * hidden + h * d.head_dim..][..d.head_dim];
                    if splits == 1 {
                        let (_, l, acc) = &records[0];
                        for (o, a) in orow.iter_mut().zip(acc) {
                            *o = if *l > 0.0 { a / l } else { 0.0 };
                        }
                        continue;
                    }
                    let mut mx = f32::MIN;
                    for r in records.iter().filter(|r| r.1 > 0.0) {
                        mx = mx.max(r.0);
                    }
                    for (e, o) in orow.iter_mut().enumerate() {
                        let (mut l, mut acc) = (0.0f32, 0.0f32);
                        for r in records.iter().filter(|r| r.1 > 0.0) {
                            let f = (r.0 - mx).max(EXP_FLOOR).exp();
                            l += r.1 * f;
                            acc += r.2[e] * f;
                        }
                        *o = if l > 0.0 { acc / l } else { 0.0 };
                    }
                }
            }
        }
        out
    }

    /// Attention over q `[batch, seq_q, heads * head_dim]`, k and v `[batch, seq_k, heads *
    /// head_dim]` (see the module doc). Empty when a slice is shorter than `dims` say.
    pub fn attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: Option<&[u32]>,
        d: Dims,
        scale: f32,
    ) -> Vec<f32> {
        let hidden = d.heads * d.head_dim;
        let (qn, kn) = (d.batch * d.seq_q * hidden, d.batch * d.seq_k * hidden);
        if q.len() < qn || k.len() < kn || v.len() < kn {
            return Vec::new();
        }
        if mask.is_some_and(|m| m.len() < d.batch * d.seq_k) {
            return Vec::new();
        }
        let mut out = vec![0.0f32; qn];
        let mut scores = vec![0.0f32; d.seq_k];
        for b in 0..d.batch {
            for h in 0..d.heads {
                for i in 0..d.seq_q {
                    let qrow = &q[(b * d.seq_q + i) * hidden + h * d.head_dim..][..d.head_dim];
                    for (j, s) in scores.iter_mut().enumerate() {
                        if mask.is_some_and(|m| m[b * d.seq_k + j] == 0) {
                            *s = f32::MIN;
                            continue;
                        }
                        let krow = &k[(b * d.seq_k + j) * hidden + h * d.head_dim..][..d.head_dim];
                        let mut acc = 0.0f32;
                        for (a, c) in qrow.iter().zip(krow) {
                            acc += a * c;
                        }
                        *s = acc * scale;
                    }
                    let p = crate::ops::softmax::cpu::softmax(&scores, d.seq_k);
                    let orow =
                        &mut out[(b * d.seq_q + i) * hidden + h * d.head_dim..][..d.head_dim];
                    for (e, o) in orow.iter_mut().enumerate() {
                        let mut acc = 0.0f32;
                        for (j, pj) in p.iter().enumerate() {
                            acc += pj * v[(b * d.seq_k + j) * hidden + h * d.head_dim + e];
                        }
                        *o = acc;
                    }
                }
            }
        }
        out
    }
}
