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
    let dims = Dims {
        batch,
        heads,
        seq_q,
        seq_k,
        head_dim: hidden / heads,
    };
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

/// The launcher: scores, softmax, weighted sums in one command encoder. Submitted, not waited
/// for.
fn gpu_attention(
    [q, k, v]: [&Tensor; 3],
    gs: &[&GpuStorage],
    mask: Option<&[u32]>,
    d: Dims,
    scale: f32,
) -> Result<GpuStorage> {
    let gpu = gs[0].gpu();
    let out = launch::Output::new(gpu, q, q.shape())?;
    let mut encoder = gpu
        .wgpu_device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(OP) });
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
        };
        let [qb, kb, vb] = [(q, gs[0]), (k, gs[1]), (v, gs[2])]
            .map(|(t, s)| launch::whole(&mut encoder, t, s, t.name()));
        let (qb, kb, vb) = (qb?, kb?, vb?);
        let mask_buf = launch::words_buffer(gpu, "attention mask", mask.unwrap_or(&[]));
        let scores = launch::scratch(gpu, "attention scores", score_elems * 4);
        let probs = launch::scratch(gpu, "attention probabilities", score_elems * 4);
        let key =
            |entry| PipelineKey::new(Kernel::Attention, entry).with("WG", f64::from(WORKGROUP));

        if score_elems > 0 {
            let pipeline = gpu.pipeline(&key("attention_scores"))?;
            let group = launch::bind(
                gpu,
                &pipeline,
                "attention scores",
                bytemuck::bytes_of(&params),
                &[&qb, &kb, &mask_buf, &scores],
            );
            gpu.dispatch(&mut encoder, &pipeline, &group, score_elems, WORKGROUP);
            softmax::record(
                gpu,
                &mut encoder,
                &scores,
                &probs,
                u32_of(score_elems / d.seq_k as u64, "the score rows")?,
                params.seq_k,
                Reduce::for_gpu(gpu),
            )?;
        }
        let pipeline = gpu.pipeline(&key("attention_weighted"))?;
        let params = Params {
            count: u32_of(out_elems, "the output element count")?,
            ..params
        };
        let group = launch::bind(
            gpu,
            &pipeline,
            "attention weighted sums",
            bytemuck::bytes_of(&params),
            &[&probs, &vb, &mask_buf, out.buffer()],
        );
        gpu.dispatch(&mut encoder, &pipeline, &group, out_elems, WORKGROUP);
    }
    let storage = out.finish(&mut encoder);
    gpu.wgpu_queue().submit([encoder.finish()]);
    Ok(storage)
}

/// The CPU twin: scores, softmax ([`super::softmax::cpu`]), weighted sums, each in index order.
pub(crate) mod cpu {
    use super::Dims;

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
