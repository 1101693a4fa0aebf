//! Early fusion: the pooled features of each modality concatenated in modality order (text,
//! image, audio in the fixtures), then one linear projection:
//! `output = proj(concat(x_text, x_image, x_audio))`, `proj` an `nn.Linear` `[out, sum d_m]`.
//!
//! On the GPU: the concatenation is `ops::fusion::concat` (one dispatch per modality into one
//! buffer), the projection `ops::matmul::linear` with its fused bias; the CPU twins on
//! [`Device::Cpu`].
//!
//! ```no_run
//! use mlmf::fusion::early::EarlyFusion;
//! use mlmf::{Device, ModelFile, Tensor};
//! let device = Device::gpu()?;
//! let file = ModelFile::open("early.safetensors")?;
//! let early = EarlyFusion::load(&file, "weights.", &device)?;
//! let text = Tensor::from_f32("text", vec![1, 64], &[0.0; 64])?.to_device(&device)?;
//! let image = Tensor::from_f32("image", vec![1, 48], &[0.0; 48])?.to_device(&device)?;
//! let audio = Tensor::from_f32("audio", vec![1, 40], &[0.0; 40])?.to_device(&device)?;
//! let fused = early.forward(&[&text, &image, &audio])?; // [1, 64]
//! # Ok::<(), mlmf::Error>(())
//! ```

use super::{check_batch, Linear};
use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::ops::fusion;
use crate::{Device, Tensor};

const OP: &str = "EarlyFusion";

/// Early fusion with its projection on a device.
pub struct EarlyFusion {
    proj: Linear,
}

impl EarlyFusion {
    /// Read `{prefix}proj.weight` `[out, in]` and `{prefix}proj.bias` `[out]` onto `device`.
    /// Errors: a weight missing ([`Error::TensorNotFound`]) or of another shape or a non-float
    /// dtype ([`Error::BadShape`]), naming it.
    pub fn load(file: &ModelFile, prefix: &str, device: &Device) -> Result<EarlyFusion> {
        Ok(EarlyFusion {
            proj: Linear::load(file, prefix, "proj", None, None, device)?,
        })
    }

    /// The width of the concatenated features the projection takes.
    pub fn in_features(&self) -> usize {
        self.proj.in_features()
    }

    pub fn out_features(&self) -> usize {
        self.proj.out_features()
    }

    /// `proj(concat(inputs))` `[batch, out]` for pooled features `[batch, d_m]` in modality
    /// order, on their device (that of the weights). Errors: no input ([`Error::OpArgument`]),
    /// an input not of rank 2 ([`Error::OpRank`]), batches that differ or widths that do not add
    /// up to [`EarlyFusion::in_features`] ([`Error::ShapeMismatch`], naming the inputs), and the
    /// ops' errors (an input on another device: [`Error::DeviceMismatch`]).
    pub fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let batch = check_batch(OP, inputs)?;
        let width: usize = inputs.iter().map(|x| x.shape().dims()[1]).sum();
        if width != self.in_features() {
            let names: Vec<&str> = inputs.iter().map(|x| x.name()).collect();
            return Err(Error::ShapeMismatch {
                op: OP,
                left: self.proj.weight.name().to_string(),
                left_shape: self.proj.weight.shape().dims().to_vec(),
                right: format!("concat({})", names.join(", ")),
                right_shape: vec![batch, width],
            });
        }
        self.proj.forward(&fusion::concat(inputs)?)
    }
}
