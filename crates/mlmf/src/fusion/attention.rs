//! Cross-modal attention with PyTorch's `nn.MultiheadAttention` semantics (`batch_first=True`),
//! its weights read by name from a state dict.
//!
//! `out = out_proj(attention(q_proj(query), k_proj(key), v_proj(value)))` with `num_heads`
//! heads of `embed_dim / num_heads` columns, each projection `x · Wᵀ + b`. The weights are
//! either packed (`in_proj_weight [3E, E]`, rows q, k, v, when kdim = vdim = E) or separate
//! (`q_proj_weight [E, E]`, `k_proj_weight [E, kdim]`, `v_proj_weight [E, vdim]`), with
//! `in_proj_bias [3E]` (q, k, v in that order) and `out_proj.weight [E, E]`, `out_proj.bias
//! [E]`; the biases may be absent together (`bias=False`). `bias_k`/`bias_v` (`add_bias_kv`)
//! are not implemented and refused.
//!
//! The projections run through [`crate::ops::matmul::linear`] (bias fused), the attention through
//! [`crate::ops::attention::masked`]: PyTorch's key padding mask (`true` = padded key, ignored), a
//! causal or additive `attn_mask`, the per-head weights `[B, H, Lq, Lk]` or their mean over the
//! heads (`average_attn_weights`). Without weights the fused (flash-style) kernel runs and the
//! scores are never stored; with weights, the three-pass path. A query row whose keys are all
//! masked gives zeros where PyTorch's `need_weights=True` path gives NaN (see
//! [`crate::ops::attention::masked`]).
//!
//! ```no_run
//! use mlmf::fusion::attention::{ForwardOptions, MultiheadAttention};
//! use mlmf::{Device, ModelFile, Tensor};
//! let device = Device::gpu()?;
//! let file = ModelFile::open("cross_attention.safetensors")?;
//! let mha = MultiheadAttention::load(&file, "weights.", 4, &device)?;
//! let q = Tensor::from_f32("query", vec![1, 2, 64], &[0.0; 128])?.to_device(&device)?;
//! let kv = Tensor::from_f32("key", vec![1, 3, 48], &[0.0; 144])?.to_device(&device)?;
//! let v = Tensor::from_f32("value", vec![1, 3, 40], &[0.0; 120])?.to_device(&device)?;
//! let padded = [false, false, true];
//! let out = mha.forward(&q, &kv, &v, &ForwardOptions {
//!     key_padding_mask: Some(&padded),
//!     need_weights: true,
//!     ..Default::default()
//! })?;
//! let output: Vec<f32> = out.output.to_f32_vec()?; // [1, 2, 64]
//! let weights: Vec<f32> = out.attn_weights.unwrap().to_f32_vec()?; // [1, 4, 2, 3]
//! # Ok::<(), mlmf::Error>(())
//! ```

use super::{f32_tensor, weight_dims, weight_values};
use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::ops::attention::{self, AttnMask, AttnPath, MaskedOptions};
use crate::ops::{elementwise, matmul};
use crate::{Device, Tensor};

/// What [`MultiheadAttention::forward`] does besides attending.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOptions<'a> {
    /// `batch * len_k` flags, `true` for a padded key (PyTorch's `key_padding_mask`).
    pub key_padding_mask: Option<&'a [bool]>,
    /// PyTorch's `attn_mask` (additive float `[Lq, Lk]` or `[B * H, Lq, Lk]`) or `is_causal`.
    pub attn_mask: AttnMask<'a>,
    /// Return the attention weights.
    pub need_weights: bool,
    /// With weights: their mean over the heads `[B, Lq, Lk]` instead of `[B, H, Lq, Lk]`
    /// (PyTorch's default is `true`; the fixture's weights are per head).
    pub average_attn_weights: bool,
    /// Which attention kernel runs; [`AttnPath::Auto`] is fused without weights.
    pub path: AttnPath,
}

/// What [`MultiheadAttention::forward`] returns, on the inputs' device (read back with
/// [`Tensor::to_f32_vec`]).
#[derive(Debug)]
pub struct MhaOutput {
    /// F32 `[B, Lq, E]`.
    pub output: Tensor,
    /// F32 `[B, H, Lq, Lk]`, or `[B, Lq, Lk]` averaged, when asked for.
    pub attn_weights: Option<Tensor>,
}

/// One projection: `x · Wᵀ + b`.
pub(crate) struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        matmul::linear(x, &self.weight, self.bias.as_ref())
    }
}

/// `nn.MultiheadAttention` with its weights on a device.
pub struct MultiheadAttention {
    embed_dim: usize,
    kdim: usize,
    vdim: usize,
    num_heads: usize,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl MultiheadAttention {
    /// Read `{prefix}in_proj_weight` (or `{prefix}q_proj_weight`, `k_proj_weight`,
    /// `v_proj_weight`), `{prefix}in_proj_bias`, `{prefix}out_proj.weight`,
    /// `{prefix}out_proj.bias` from `file` onto `device` as F32 (F16 and BF16 are widened), with
    /// `num_heads` heads. E, kdim and vdim come from the weights. Errors: a weight missing
    /// ([`Error::TensorNotFound`]), of another shape or a dtype that is not F32, F16 or BF16
    /// ([`Error::BadShape`], naming the tensor), `bias_k`/`bias_v` present or `num_heads` not
    /// dividing E ([`Error::BadModel`]).
    pub fn load(
        file: &ModelFile,
        prefix: &str,
        num_heads: usize,
        device: &Device,
    ) -> Result<MultiheadAttention> {
        let name = |n: &str| format!("{prefix}{n}");
        let bad_model = |reason: String| Error::BadModel {
            path: file.path().to_path_buf(),
            reason,
        };
        for n in ["bias_k", "bias_v"] {
            if file.tensor(&name(n)).is_ok() {
                return Err(bad_model(format!(
                    "{}: add_bias_kv is not implemented",
                    name(n)
                )));
            }
        }
        let out_w = name("out_proj.weight");
        let e = *weight_dims(file, "", &out_w)?.first().unwrap_or(&0);
        if e == 0 || num_heads == 0 || !e.is_multiple_of(num_heads) {
            return Err(bad_model(format!(
                "{out_w}: embed_dim {e} does not split into {num_heads} heads"
            )));
        }
        let packed = name("in_proj_weight");
        let (wq, wk, wv, kdim, vdim) = if file.tensor(&packed).is_ok() {
            let w = weight_values(file, "", &packed, &[3 * e, e])?;
            let (q, rest) = w.split_at(e * e);
            let (k, v) = rest.split_at(e * e);
            (q.to_vec(), k.to_vec(), v.to_vec(), e, e)
        } else {
            let kn = name("k_proj_weight");
            let vn = name("v_proj_weight");
            let kdim = *weight_dims(file, "", &kn)?.get(1).unwrap_or(&0);
            let vdim = *weight_dims(file, "", &vn)?.get(1).unwrap_or(&0);
            (
                weight_values(file, "", &name("q_proj_weight"), &[e, e])?,
                weight_values(file, "", &kn, &[e, kdim])?,
                weight_values(file, "", &vn, &[e, vdim])?,
                kdim,
                vdim,
            )
        };
        let bias = name("in_proj_bias");
        let (bq, bk, bv) = if file.tensor(&bias).is_ok() {
            let b = weight_values(file, "", &bias, &[3 * e])?;
            (
                Some(b[..e].to_vec()),
                Some(b[e..2 * e].to_vec()),
                Some(b[2 * e..].to_vec()),
            )
        } else {
            (None, None, None)
        };
        let out_b = name("out_proj.bias");
        let bo = if file.tensor(&out_b).is_ok() {
            Some(weight_values(file, "", &out_b, &[e])?)
        } else {
            None
        };
        let wo = weight_values(file, "", &out_w, &[e, e])?;
        let linear = |n: &str, w: &[f32], cols: usize, b: Option<Vec<f32>>| -> Result<Linear> {
            Ok(Linear {
                weight: f32_tensor(&name(n), vec![e, cols], w, device)?,
                bias: b
                    .map(|b| f32_tensor(&format!("{}.bias", name(n)), vec![e], &b, device))
                    .transpose()?,
            })
        };
        Ok(MultiheadAttention {
            embed_dim: e,
            kdim,
            vdim,
            num_heads,
            q: linear("q_proj", &wq, e, bq)?,
            k: linear("k_proj", &wk, kdim, bk)?,
            v: linear("v_proj", &wv, vdim, bv)?,
            out: linear("out_proj", &wo, e, bo)?,
        })
    }

    pub fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    pub fn kdim(&self) -> usize {
        self.kdim
    }

    pub fn vdim(&self) -> usize {
        self.vdim
    }

    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// Attend from `query` F32 `[B, Lq, E]` over `key` `[B, Lk, kdim]` and `value` `[B, Lk,
    /// vdim]` (all on the weights' device). Errors: inputs whose widths or batches do not fit
    /// the weights or each other ([`Error::ShapeMismatch`]) or not of rank 3
    /// ([`Error::OpRank`]), masks of the wrong size ([`Error::ShapeMismatch`]), and the errors
    /// of [`crate::ops::attention::masked`].
    pub fn forward(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        options: &ForwardOptions,
    ) -> Result<MhaOutput> {
        let expected = "a tensor [batch, len, width]";
        for t in [query, key, value] {
            if t.shape().rank() != 3 {
                return Err(Error::OpRank {
                    op: "MultiheadAttention",
                    tensor: t.name().to_string(),
                    shape: t.shape().dims().to_vec(),
                    expected,
                });
            }
        }
        let q = self.q.forward(query)?;
        let k = self.k.forward(key)?;
        let v = self.v.forward(value)?;
        let attended = attention::masked(
            &q,
            &k,
            &v,
            self.num_heads,
            &MaskedOptions {
                key_padding: options.key_padding_mask,
                mask: options.attn_mask,
                scale: None,
                weights: options.need_weights,
                path: options.path,
            },
        )?;
        let output = self.out.forward(&attended.output)?;
        let attn_weights = match attended.weights {
            Some(w) if options.average_attn_weights => Some(head_mean(w, self.num_heads)?),
            w => w,
        };
        Ok(MhaOutput {
            output,
            attn_weights,
        })
    }
}

/// The mean over the heads of weights `[B, H, Lq, Lk]`: `[B, Lq, Lk]`, on their device (a
/// product with a row of ones, then `1 / H`).
fn head_mean(w: Tensor, heads: usize) -> Result<Tensor> {
    let &[b, h, lq, lk] = w.shape().dims() else {
        return Err(Error::OpRank {
            op: "MultiheadAttention",
            tensor: w.name().to_string(),
            shape: w.shape().dims().to_vec(),
            expected: "weights [batch, heads, len_q, len_k]",
        });
    };
    let device = w.device();
    let w = w.reshape(vec![b, h, lq * lk])?;
    let ones = f32_tensor("ones", vec![1, heads], &vec![1.0; heads], &device)?;
    let sum = matmul::matmul(&ones, &w, Default::default())?;
    let mean = elementwise::scale(&sum, 1.0 / heads as f32)?;
    mean.reshape(vec![b, lq, lk])
}
