//! Cross-modal attention and the four fusion strategies, each a module loaded from a PyTorch
//! state dict by name, running on the tensors' `Device` (GPU kernels, or their CPU twins).
//!
//! - [`early::EarlyFusion`]: pooled features concatenated in modality order, then a linear
//!   projection;
//! - [`late::LateFusion`]: `fused_logits = sum_m w_m * logits_m`, `probs = softmax(fused_logits)`;
//! - [`gate::AttentionGate`]: per-modality projections, tanh scores against a context vector,
//!   softmax over the modalities, the weighted sum of the projections (the weights returned);
//! - [`middle`] and [`attention`]: a pre-norm cross-attention block and PyTorch's
//!   `nn.MultiheadAttention`.
//!
//! Weights are read by name under a prefix (`"weights."` in the fixtures, `""` for a bare state
//! dict); a missing one is [`Error::TensorNotFound`], one of another shape or dtype
//! [`Error::BadShape`], both naming the file and the tensor.

pub mod attention;
pub mod early;
pub mod gate;
pub mod heatmap;
pub mod late;
pub mod middle;

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::ops::{convert, matmul};
use crate::{DType, Device, Tensor};

/// The fusion strategies, by the names the `mlmf fusion` command takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FusionKind {
    /// `nn.MultiheadAttention` from one modality's sequence to another's.
    CrossAttention,
    /// A pre-norm cross-attention block with an MLP ([`middle`]).
    Middle,
    /// [`early::EarlyFusion`].
    Early,
    /// [`late::LateFusion`].
    Late,
    /// [`gate::AttentionGate`].
    AttentionGate,
}

impl FusionKind {
    pub const ALL: [FusionKind; 5] = [
        FusionKind::CrossAttention,
        FusionKind::Middle,
        FusionKind::Early,
        FusionKind::Late,
        FusionKind::AttentionGate,
    ];

    /// The name on the command line: `cross-attention`, `middle`, `early`, `late`,
    /// `attention-gate`.
    pub fn name(self) -> &'static str {
        match self {
            FusionKind::CrossAttention => "cross-attention",
            FusionKind::Middle => "middle",
            FusionKind::Early => "early",
            FusionKind::Late => "late",
            FusionKind::AttentionGate => "attention-gate",
        }
    }
}

impl fmt::Display for FusionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FusionKind {
    type Err = String;

    /// One of [`FusionKind::name`]'s names; otherwise a message listing them.
    fn from_str(s: &str) -> std::result::Result<FusionKind, String> {
        FusionKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = FusionKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown fusion kind '{s}'; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// The modalities of the fixtures' early, late and attention-gated fusion, in their order.
pub const MODALITIES: [&str; 3] = ["text", "image", "audio"];

/// The dims of `{prefix}{name}` in `file`, or [`Error::TensorNotFound`] naming it.
pub(crate) fn weight_dims(file: &ModelFile, prefix: &str, name: &str) -> Result<Vec<usize>> {
    Ok(file
        .tensor(&format!("{prefix}{name}"))?
        .shape
        .dims()
        .to_vec())
}

/// The values of `{prefix}{name}` of `file` as f32 (F16 and BF16 are widened exactly), after
/// checking that its shape is `dims`: [`Error::TensorNotFound`] when it is missing,
/// [`Error::BadShape`] for another shape or a dtype that is not a float, naming the tensor.
pub(crate) fn weight_values(
    file: &ModelFile,
    prefix: &str,
    name: &str,
    dims: &[usize],
) -> Result<Vec<f32>> {
    let full = format!("{prefix}{name}");
    let info = file.tensor(&full)?;
    let bad = |reason: String| Error::BadShape {
        path: file.path().to_path_buf(),
        tensor: full.clone(),
        reason,
    };
    if info.shape.dims() != dims {
        return Err(bad(format!(
            "shape {:?}; expected {dims:?}",
            info.shape.dims()
        )));
    }
    if !matches!(info.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(bad(format!(
            "dtype {}; expected F32, F16 or BF16",
            info.dtype
        )));
    }
    let host = Device::Cpu.load(file, &full)?;
    Ok(convert::bytes_to_f32(info.dtype, &host.to_bytes()?))
}

/// [`weight_values`] as an F32 tensor on `device`.
pub(crate) fn weight(
    file: &ModelFile,
    prefix: &str,
    name: &str,
    dims: &[usize],
    device: &Device,
) -> Result<Tensor> {
    let values = weight_values(file, prefix, name, dims)?;
    f32_tensor(&format!("{prefix}{name}"), dims.to_vec(), &values, device)
}

/// `values` as an F32 tensor named `name` on `device`.
pub(crate) fn f32_tensor(
    name: &str,
    dims: Vec<usize>,
    values: &[f32],
    device: &Device,
) -> Result<Tensor> {
    Tensor::from_f32(name, dims, values)?.to_device(device)
}

/// An `nn.Linear` with its bias: `y = x · Wᵀ + b`, W `[out, in]`.
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl Linear {
    /// `{prefix}{name}.weight` `[out, in]` and `{prefix}{name}.bias` `[out]`; `in_features`
    /// `None` takes the weight's own.
    pub(crate) fn load(
        file: &ModelFile,
        prefix: &str,
        name: &str,
        out_features: Option<usize>,
        in_features: Option<usize>,
        device: &Device,
    ) -> Result<Linear> {
        let w_name = format!("{name}.weight");
        let found = weight_dims(file, prefix, &w_name)?;
        let [o, i] = found[..] else {
            return Err(Error::BadShape {
                path: file.path().to_path_buf(),
                tensor: format!("{prefix}{w_name}"),
                reason: format!("shape {found:?}; expected a matrix [out, in]"),
            });
        };
        let (o, i) = (out_features.unwrap_or(o), in_features.unwrap_or(i));
        Ok(Linear {
            weight: weight(file, prefix, &w_name, &[o, i], device)?,
            bias: weight(file, prefix, &format!("{name}.bias"), &[o], device)?,
        })
    }

    pub(crate) fn out_features(&self) -> usize {
        self.weight.shape().dims()[0]
    }

    pub(crate) fn in_features(&self) -> usize {
        self.weight.shape().dims()[1]
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        matmul::linear(x, &self.weight, Some(&self.bias))
    }
}

/// Inputs `[batch, width]` F32 on one device, as the modules take them, or
/// [`Error::OpRank`] / [`Error::ShapeMismatch`] naming the one that is not.
pub(crate) fn check_batch(op: &'static str, inputs: &[&Tensor]) -> Result<usize> {
    let Some(first) = inputs.first() else {
        return Err(Error::OpArgument {
            op,
            argument: "inputs",
            value: 0,
            expected: "one tensor per modality",
        });
    };
    for x in inputs {
        if x.shape().rank() != 2 {
            return Err(Error::OpRank {
                op,
                tensor: x.name().to_string(),
                shape: x.shape().dims().to_vec(),
                expected: "pooled features [batch, width]",
            });
        }
        if x.shape().dims()[0] != first.shape().dims()[0] {
            return Err(Error::ShapeMismatch {
                op,
                left: first.name().to_string(),
                left_shape: first.shape().dims().to_vec(),
                right: x.name().to_string(),
                right_shape: x.shape().dims().to_vec(),
            });
        }
    }
    Ok(first.shape().dims()[0])
}

/// [`Error::OpArgument`] for `found` inputs where the module has `expected`.
pub(crate) fn count_error(op: &'static str, found: usize, expected: &'static str) -> Error {
    Error::OpArgument {
        op,
        argument: "inputs",
        value: found as u64,
        expected,
    }
}
