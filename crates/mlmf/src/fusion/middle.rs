//! Middle fusion: a pre-norm cross-attention block in which one modality's tokens `x` attend to
//! another's `memory`, then a GELU MLP, each with a residual:
//!
//! ```text
//! x = x + attn(ln_q(x), ln_kv(memory), ln_kv(memory))
//! x = x + fc2(gelu_erf(fc1(ln_mlp(x))))
//! ```
//!
//! Weights by name under a prefix: `attn.*` (an [`nn.MultiheadAttention`](MultiheadAttention)
//! with kdim = vdim = the memory's width), `ln_q`, `ln_kv`, `ln_mlp` (`.weight`, `.bias`,
//! LayerNorm with eps 1e-5 unless given), `fc1`, `fc2` (`.weight`, `.bias`). Every step runs on
//! the weights' device: [`crate::ops::norm::layer_norm`], [`crate::ops::matmul::linear`],
//! [`crate::ops::elementwise::gelu`] (the erf form, torch's default), the attention's fused
//! kernel (no weights are needed here).

use super::attention::{ForwardOptions, MultiheadAttention};
use super::{f32_tensor, weight_values};
use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::ops::{elementwise, matmul, norm};
use crate::{Device, Tensor};

/// PyTorch's `nn.LayerNorm` default.
pub const LAYER_NORM_EPS: f32 = 1e-5;

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

/// The middle-fusion block with its weights on a device.
pub struct Middle {
    attn: MultiheadAttention,
    ln_q: LayerNorm,
    ln_kv: LayerNorm,
    ln_mlp: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    eps: f32,
}

impl Middle {
    /// Read the block under `prefix` (e.g. `"weights."`) from `file` onto `device`, attention
    /// with `num_heads` heads, LayerNorm eps 1e-5. Errors: as [`MultiheadAttention::load`]; a
    /// missing weight ([`Error::TensorNotFound`]) or one of the wrong shape or dtype
    /// ([`Error::BadShape`]), each naming the tensor; an attention whose kdim and vdim differ
    /// ([`Error::BadModel`]).
    pub fn load(
        file: &ModelFile,
        prefix: &str,
        num_heads: usize,
        device: &Device,
    ) -> Result<Middle> {
        Middle::load_with_eps(file, prefix, num_heads, LAYER_NORM_EPS, device)
    }

    /// [`Middle::load`] with another LayerNorm eps.
    pub fn load_with_eps(
        file: &ModelFile,
        prefix: &str,
        num_heads: usize,
        eps: f32,
        device: &Device,
    ) -> Result<Middle> {
        let attn = MultiheadAttention::load(file, &format!("{prefix}attn."), num_heads, device)?;
        let (e, m) = (attn.embed_dim(), attn.kdim());
        if attn.vdim() != m {
            return Err(Error::BadModel {
                path: file.path().to_path_buf(),
                reason: format!(
                    "{prefix}attn: kdim {m} and vdim {} differ; the block attends to one memory",
                    attn.vdim()
                ),
            });
        }
        let vector = |n: String, len: usize| -> Result<Tensor> {
            f32_tensor(&n, vec![len], &weight_values(file, "", &n, &[len])?, device)
        };
        let layer_norm = |n: &str, len: usize| -> Result<LayerNorm> {
            Ok(LayerNorm {
                weight: vector(format!("{prefix}{n}.weight"), len)?,
                bias: vector(format!("{prefix}{n}.bias"), len)?,
            })
        };
        let fc1_name = format!("{prefix}fc1.weight");
        let hidden = *file.tensor(&fc1_name)?.shape.dims().first().unwrap_or(&0);
        let linear = |n: &str, out: usize, inp: usize| -> Result<Linear> {
            let w = format!("{prefix}{n}.weight");
            Ok(Linear {
                weight: f32_tensor(
                    &w,
                    vec![out, inp],
                    &weight_values(file, "", &w, &[out, inp])?,
                    device,
                )?,
                bias: vector(format!("{prefix}{n}.bias"), out)?,
            })
        };
        Ok(Middle {
            ln_q: layer_norm("ln_q", e)?,
            ln_kv: layer_norm("ln_kv", m)?,
            ln_mlp: layer_norm("ln_mlp", e)?,
            fc1: linear("fc1", hidden, e)?,
            fc2: linear("fc2", e, hidden)?,
            attn,
            eps,
        })
    }

    /// The attention inside the block.
    pub fn attention(&self) -> &MultiheadAttention {
        &self.attn
    }

    /// The block over `x` F32 `[B, Lq, E]` attending to `memory` `[B, Lk, M]`, keys of
    /// `memory` padded where `key_padding_mask` (`B * Lk` flags, PyTorch's convention) is
    /// `true`: F32 `[B, Lq, E]` on the weights' device. Errors: those of the ops it runs
    /// (shapes that do not fit: [`Error::ShapeMismatch`]).
    pub fn forward(
        &self,
        x: &Tensor,
        memory: &Tensor,
        key_padding_mask: Option<&[bool]>,
    ) -> Result<Tensor> {
        let ln = |t: &Tensor, n: &LayerNorm| norm::layer_norm(t, &n.weight, &n.bias, self.eps);
        let q = ln(x, &self.ln_q)?;
        let kv = ln(memory, &self.ln_kv)?;
        let a = self.attn.forward(
            &q,
            &kv,
            &kv,
            &ForwardOptions {
                key_padding_mask,
                ..Default::default()
            },
        )?;
        let x = elementwise::add(x, &a.output)?;
        let h = matmul::linear(
            &ln(&x, &self.ln_mlp)?,
            &self.fc1.weight,
            Some(&self.fc1.bias),
        )?;
        let h = elementwise::gelu(&h)?;
        let y = matmul::linear(&h, &self.fc2.weight, Some(&self.fc2.bias))?;
        elementwise::add(&x, &y)
    }
}
