//! Late fusion: each modality's logits weighted by a learned weight per modality and summed,
//! then a softmax over the classes: `fused_logits = sum_m w_m * logits_m`,
//! `probs = softmax(fused_logits, -1)`, with `w` the state dict's `modality_weights` `[M]`
//! (text, image, audio in the fixtures).
//!
//! On the GPU: the weighted sum is `ops::fusion::weighted_sum` (one dispatch per modality,
//! summed in modality order), the softmax `ops::softmax`; the CPU twins on [`Device::Cpu`].

use super::{check_batch, count_error, weight, weight_dims};
use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::ops::{fusion, softmax};
use crate::{Device, Tensor};

const OP: &str = "LateFusion";

/// Late fusion with its modality weights on a device.
pub struct LateFusion {
    weights: Tensor,
}

/// What [`LateFusion::forward`] returns, on the inputs' device.
pub struct LateOutput {
    /// `[batch, classes]`.
    pub fused_logits: Tensor,
    /// `[batch, classes]`, each row summing to 1.
    pub probs: Tensor,
}

impl LateFusion {
    /// Read `{prefix}modality_weights` `[M]` onto `device`. Errors: missing
    /// ([`Error::TensorNotFound`]), not a vector or not a float ([`Error::BadShape`]).
    pub fn load(file: &ModelFile, prefix: &str, device: &Device) -> Result<LateFusion> {
        let name = "modality_weights";
        let dims = weight_dims(file, prefix, name)?;
        if dims.len() != 1 || dims[0] == 0 {
            return Err(Error::BadShape {
                path: file.path().to_path_buf(),
                tensor: format!("{prefix}{name}"),
                reason: format!("shape {dims:?}; expected [modalities]"),
            });
        }
        Ok(LateFusion {
            weights: weight(file, prefix, name, &dims, device)?,
        })
    }

    /// Late fusion with the given weights `[M]` (F32, on the device the inputs will be on), e.g.
    /// a photo's class probabilities weighting its class embeddings. Errors: not a vector
    /// ([`Error::OpRank`]).
    pub fn new(weights: Tensor) -> Result<LateFusion> {
        if weights.shape().rank() != 1 {
            return Err(Error::OpRank {
                op: OP,
                tensor: weights.name().to_string(),
                shape: weights.shape().dims().to_vec(),
                expected: "one weight per modality [M]",
            });
        }
        Ok(LateFusion { weights })
    }

    /// The number of modalities M.
    pub fn modalities(&self) -> usize {
        self.weights.shape().dims()[0]
    }

    /// `sum_m w_m * logits[m]` `[batch, n]` for M inputs of one shape `[batch, n]`, without the
    /// softmax (the demo fuses embeddings with it). Errors: another number of inputs
    /// ([`Error::OpArgument`]), inputs not of rank 2 ([`Error::OpRank`]) or of different shapes
    /// ([`Error::ShapeMismatch`]), and the ops' errors.
    pub fn fuse(&self, logits: &[&Tensor]) -> Result<Tensor> {
        check_batch(OP, logits)?;
        if logits.len() != self.modalities() {
            return Err(count_error(
                OP,
                logits.len(),
                "one tensor per modality weight",
            ));
        }
        fusion::weighted_sum(logits, &self.weights)
    }

    /// [`LateFusion::fuse`], then the softmax over the last axis.
    pub fn forward(&self, logits: &[&Tensor]) -> Result<LateOutput> {
        let fused_logits = self.fuse(logits)?;
        let probs = softmax::softmax(&fused_logits)?;
        Ok(LateOutput {
            fused_logits,
            probs,
        })
    }
}
