//! Attention-gated fusion: each modality projected to a common width E, scored against a learned
//! context vector, the scores turned into weights over the modalities by a softmax, and the
//! projections summed with those weights:
//!
//! ```text
//! h_m = proj_m(x_m)                      nn.Linear(d_m, E), state dict names "{modality}.weight/bias"
//! s_m = tanh(score(h_m)) . context       score: nn.Linear(E, E), context: [E]
//! a   = softmax over m of s              [batch, M], returned as the modality weights
//! out = sum_m a_m h_m                    [batch, E]
//! ```
//!
//! On the GPU: `ops::matmul::linear` for the projections, `ops::elementwise::tanh`,
//! `ops::matmul::matmul` for the dot with the context, `ops::fusion::concat` to put the M scores
//! side by side, `ops::softmax`, and `ops::fusion::weighted_sum` with one weight per row and
//! modality; the CPU twins on [`Device::Cpu`].

use super::{check_batch, count_error, weight, weight_dims, Linear, MODALITIES};
use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::ops::matmul::{self, MatmulOptions};
use crate::ops::{elementwise, fusion, softmax};
use crate::{Device, Tensor};

const OP: &str = "AttentionGate";

/// Attention-gated fusion with its weights on a device.
pub struct AttentionGate {
    names: Vec<String>,
    projs: Vec<Linear>,
    score: Linear,
    /// `[E, 1]`, so the dot with each row is a matrix product.
    context: Tensor,
}

/// What [`AttentionGate::forward`] returns, on the inputs' device.
pub struct GateOutput {
    /// `[batch, E]`.
    pub output: Tensor,
    /// `[batch, M]`: the softmax over the modalities, in input order.
    pub modality_weights: Tensor,
}

impl AttentionGate {
    /// [`AttentionGate::load_modalities`] with the fixtures' modalities, text, image, audio.
    pub fn load(file: &ModelFile, prefix: &str, device: &Device) -> Result<AttentionGate> {
        AttentionGate::load_modalities(file, prefix, &MODALITIES, device)
    }

    /// Read `{prefix}context` `[E]`, `{prefix}score.weight` `[E, E]` and `.bias` `[E]`, and for
    /// each of `modalities` (in the order [`AttentionGate::forward`] takes the inputs)
    /// `{prefix}{modality}.weight` `[E, d_m]` and `.bias` `[E]` onto `device`. Errors: a weight
    /// missing ([`Error::TensorNotFound`]) or of another shape or a non-float dtype
    /// ([`Error::BadShape`]), naming it.
    pub fn load_modalities(
        file: &ModelFile,
        prefix: &str,
        modalities: &[&str],
        device: &Device,
    ) -> Result<AttentionGate> {
        let dims = weight_dims(file, prefix, "context")?;
        let [e] = dims[..] else {
            return Err(Error::BadShape {
                path: file.path().to_path_buf(),
                tensor: format!("{prefix}context"),
                reason: format!("shape {dims:?}; expected a vector [E]"),
            });
        };
        let context = weight(file, prefix, "context", &[e], device)?.reshape(vec![e, 1])?;
        let score = Linear::load(file, prefix, "score", Some(e), Some(e), device)?;
        let projs = modalities
            .iter()
            .map(|m| Linear::load(file, prefix, m, Some(e), None, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(AttentionGate {
            names: modalities.iter().map(|m| m.to_string()).collect(),
            projs,
            score,
            context,
        })
    }

    /// The modalities, in input order.
    pub fn modalities(&self) -> &[String] {
        &self.names
    }

    /// The common width E.
    pub fn embed_dim(&self) -> usize {
        self.score.out_features()
    }

    /// The fused features and the modality weights of pooled features `[batch, d_m]`, one per
    /// modality in [`AttentionGate::modalities`]' order, on their device (that of the weights).
    /// Errors: another number of inputs ([`Error::OpArgument`]), an input not of rank 2
    /// ([`Error::OpRank`]), batches that differ or a width that is not its projection's
    /// ([`Error::ShapeMismatch`], naming the input and the weight), and the ops' errors.
    pub fn forward(&self, inputs: &[&Tensor]) -> Result<GateOutput> {
        check_batch(OP, inputs)?;
        if inputs.len() != self.projs.len() {
            return Err(count_error(OP, inputs.len(), "one tensor per modality"));
        }
        let h = inputs
            .iter()
            .zip(&self.projs)
            .map(|(x, p)| p.forward(x))
            .collect::<Result<Vec<_>>>()?;
        let scores = h
            .iter()
            .map(|h| {
                let t = elementwise::tanh(&self.score.forward(h)?)?;
                matmul::matmul(&t, &self.context, MatmulOptions::default())
            })
            .collect::<Result<Vec<_>>>()?;
        let scores: Vec<&Tensor> = scores.iter().collect();
        let modality_weights = softmax::softmax(&fusion::concat(&scores)?)?;
        let h: Vec<&Tensor> = h.iter().collect();
        let output = fusion::weighted_sum(&h, &modality_weights)?;
        Ok(GateOutput {
            output,
            modality_weights,
        })
    }
}
