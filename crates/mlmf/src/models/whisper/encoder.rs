//! Whisper's audio encoder from a CTranslate2 `WhisperSpec` file, as CTranslate2 runs it
//! (`../shared/fixtures/whisper/README.md`, "Model"):
//!
//! 1. `x = GELU(conv1(mel))`, kernel 3, stride 1, padding 1: `[mels, 3000]` to `[d, 3000]`;
//!    `x = GELU(conv2(x))`, kernel 3, stride 2, padding 1, stored channels last: `[1500, d]`
//!    ([`conv::conv1d`]). GELU is the exact erf form ([`elementwise::gelu`]); the tanh form is
//!    3.2e-2 off the reference.
//! 2. `+ encoder/position_encodings/encodings` (the sinusoids as the file stores them).
//! 3. Each layer, pre-norm: `x += W_o Attn(LN(x))`, `x += FFN(LN(x))`, FFN =
//!    `linear_1(GELU(linear_0(h)))`, LayerNorm epsilon 1e-5 with biased variance. The fused
//!    `self_attention/linear_0` (`[Wq; Wk; Wv]`, bias `[bq; 0; bv]`) is split into its three
//!    row blocks at load; q is not pre-scaled in the file, so the scores take `1 / sqrt(64)` at
//!    run time (the attention's default scale). Heads are consecutive blocks of `d / heads`.
//!    Attention takes [`attention::masked`]'s three-pass path (see the note in `forward`).
//! 4. The final `encoder/layer_norm`.
//!
//! Weights are widened to f32 on the host at load (exact: every f16 is an f32) and kept in f32 on
//! the device; all arithmetic is f32. Everything runs on the device of the weights (the CPU
//! twins on [`Device::Cpu`]); nothing is read back.

use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::ops::attention::{self, MaskedOptions};
use crate::ops::conv::{self, Conv1d};
use crate::ops::{elementwise, matmul, norm};
use crate::Device;
use crate::Tensor;

use super::{bad, check_spec, scalar, values, variable};

const OP: &str = "WhisperEncoder::forward";
/// CTranslate2's LayerNorm epsilon when the norm has a beta and config.json names none.
const LAYER_NORM_EPS: f32 = 1e-5;
/// The convolutions' kernel width and padding.
const KERNEL: usize = 3;

/// The encoder's sizes, read from the file's shapes and `encoder/num_heads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Mel bands of the input (80 for tiny.en).
    pub mels: usize,
    /// Width of the transformer (384).
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
    /// Inner width of each feed-forward block (1536).
    pub ffn: usize,
    /// Output frames, the rows of the position encodings (1500): the input has twice as many.
    pub positions: usize,
}

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
}

struct Layer {
    attn_norm: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ffn_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// Whisper's encoder with its weights on a device.
pub struct WhisperEncoder {
    config: EncoderConfig,
    device: Device,
    conv1: Linear,
    conv2: Linear,
    positions: Tensor,
    layers: Vec<Layer>,
    norm: LayerNorm,
}

/// Loads checked variables as f32 tensors on one device.
struct Loader<'f> {
    file: &'f ModelFile,
    device: &'f Device,
}

impl Loader<'_> {
    fn tensor(&self, name: &str, dims: &[usize]) -> Result<Tensor> {
        let want: Vec<Option<usize>> = dims.iter().map(|&d| Some(d)).collect();
        let info = variable(self.file, name, &want)?;
        Tensor::from_f32(name, dims.to_vec(), &values(self.file, info)?)?.to_device(self.device)
    }

    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            weight: self.tensor(&format!("{name}/weight"), &[out, inp])?,
            bias: self.tensor(&format!("{name}/bias"), &[out])?,
        })
    }

    fn conv(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            weight: self.tensor(&format!("{name}/weight"), &[out, inp, KERNEL])?,
            bias: self.tensor(&format!("{name}/bias"), &[out])?,
        })
    }

    fn layer_norm(&self, name: &str, d: usize) -> Result<LayerNorm> {
        Ok(LayerNorm {
            gamma: self.tensor(&format!("{name}/gamma"), &[d])?,
            beta: self.tensor(&format!("{name}/beta"), &[d])?,
        })
    }

    /// The fused `[Wq; Wk; Wv]` projection split into its three row blocks.
    fn qkv(&self, name: &str, d: usize) -> Result<[Linear; 3]> {
        let w_name = format!("{name}/weight");
        let b_name = format!("{name}/bias");
        let w = values(
            self.file,
            variable(self.file, &w_name, &[Some(3 * d), Some(d)])?,
        )?;
        let b = values(self.file, variable(self.file, &b_name, &[Some(3 * d)])?)?;
        let part = |i: usize, what: &str| -> Result<Linear> {
            let weight = Tensor::from_f32(
                &format!("{w_name}[{what}]"),
                vec![d, d],
                &w[i * d * d..(i + 1) * d * d],
            )?;
            let bias = Tensor::from_f32(
                &format!("{b_name}[{what}]"),
                vec![d],
                &b[i * d..(i + 1) * d],
            )?;
            Ok(Linear {
                weight: weight.to_device(self.device)?,
                bias: bias.to_device(self.device)?,
            })
        };
        Ok([part(0, "q")?, part(1, "k")?, part(2, "v")?])
    }
}

impl WhisperEncoder {
    /// The encoder of a CTranslate2 Whisper file (or any file with its variable names) on
    /// `device`. Errors: a file of another CTranslate2 spec, a variable of the wrong shape or
    /// dtype, a head count that does not divide the width ([`Error::BadModel`]), a missing
    /// variable ([`Error::TensorNotFound`]), and the device's errors.
    pub fn load(file: &ModelFile, device: &Device) -> Result<WhisperEncoder> {
        check_spec(file)?;
        let conv1 = variable(file, "encoder/conv1/weight", &[None, None, Some(KERNEL)])?;
        let (d, mels) = (conv1.shape.dims()[0], conv1.shape.dims()[1]);
        let pos = variable(
            file,
            "encoder/position_encodings/encodings",
            &[None, Some(d)],
        )?;
        let positions = pos.shape.dims()[0];
        let heads = scalar(file, "encoder/num_heads")?;
        let heads = usize::try_from(heads)
            .ok()
            .filter(|&h| h > 0 && d.is_multiple_of(h))
            .ok_or_else(|| {
                bad(
                    file,
                    format!("encoder/num_heads {heads} does not divide {d}"),
                )
            })?;
        let fc1 = variable(
            file,
            "encoder/layer_0/ffn/linear_0/weight",
            &[None, Some(d)],
        )?;
        let ffn = fc1.shape.dims()[0];
        let layers = (0..)
            .take_while(|i| {
                file.tensor(&format!("encoder/layer_{i}/self_attention/linear_0/weight"))
                    .is_ok()
            })
            .count();
        let config = EncoderConfig {
            mels,
            d_model: d,
            heads,
            layers,
            ffn,
            positions,
        };
        let l = Loader { file, device };
        let layers = (0..layers)
            .map(|i| {
                let p = format!("encoder/layer_{i}");
                let [q, k, v] = l.qkv(&format!("{p}/self_attention/linear_0"), d)?;
                Ok(Layer {
                    attn_norm: l.layer_norm(&format!("{p}/self_attention/layer_norm"), d)?,
                    q,
                    k,
                    v,
                    out: l.linear(&format!("{p}/self_attention/linear_1"), d, d)?,
                    ffn_norm: l.layer_norm(&format!("{p}/ffn/layer_norm"), d)?,
                    fc1: l.linear(&format!("{p}/ffn/linear_0"), ffn, d)?,
                    fc2: l.linear(&format!("{p}/ffn/linear_1"), d, ffn)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(WhisperEncoder {
            conv1: l.conv("encoder/conv1", d, mels)?,
            conv2: l.conv("encoder/conv2", d, d)?,
            positions: l.tensor("encoder/position_encodings/encodings", &[positions, d])?,
            layers,
            norm: l.layer_norm("encoder/layer_norm", d)?,
            config,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The encoder output `[windows, positions, d_model]` of log-mel windows `[windows, mels,
    /// 2 * positions]` (what [`crate::ops::mel::log_mel`] gives: `[windows, 80, 3000]`), on the
    /// encoder's device. Errors: a mel of another shape ([`Error::ShapeMismatch`] or
    /// [`Error::OpRank`]), a mel on another device, and the ops' errors.
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let dims = mel.shape().dims();
        let frames = 2 * c.positions;
        if dims.len() != 3 {
            return Err(Error::OpRank {
                op: OP,
                tensor: mel.name().to_string(),
                shape: dims.to_vec(),
                expected: "a log-mel [windows, mels, frames]",
            });
        }
        if dims[1] != c.mels || dims[2] != frames {
            return Err(Error::ShapeMismatch {
                op: OP,
                left: mel.name().to_string(),
                left_shape: dims.to_vec(),
                right: "the encoder's input".to_string(),
                right_shape: vec![dims[0], c.mels, frames],
            });
        }
        let x = conv::conv1d(
            mel,
            &self.conv1.weight,
            Some(&self.conv1.bias),
            Conv1d {
                stride: 1,
                padding: 1,
                channels_last: false,
            },
        )?;
        let x = elementwise::gelu(&x)?;
        let x = conv::conv1d(
            &x,
            &self.conv2.weight,
            Some(&self.conv2.bias),
            Conv1d {
                stride: 2,
                padding: 1,
                channels_last: true,
            },
        )?;
        let x = elementwise::gelu(&x)?;
        let mut x = elementwise::add(&x, &self.positions)?;
        for layer in &self.layers {
            let h = layer_norm(&x, &layer.attn_norm)?;
            let (q, k, v) = (
                linear(&h, &layer.q)?,
                linear(&h, &layer.k)?,
                linear(&h, &layer.v)?,
            );
            // The default scale, 1 / sqrt(head_dim): q is not pre-scaled in the file. No weights
            // asked for, so the fused path: the 1500 x 1500 scores per head are never stored.
            let a = attention::masked(&q, &k, &v, c.heads, &MaskedOptions::default())?.output;
            x = elementwise::add(&x, &linear(&a, &layer.out)?)?;
            let h = layer_norm(&x, &layer.ffn_norm)?;
            let h = elementwise::gelu(&linear(&h, &layer.fc1)?)?;
            x = elementwise::add(&x, &linear(&h, &layer.fc2)?)?;
        }
        layer_norm(&x, &self.norm)
    }
}

fn linear(x: &Tensor, l: &Linear) -> Result<Tensor> {
    matmul::linear(x, &l.weight, Some(&l.bias))
}

fn layer_norm(x: &Tensor, n: &LayerNorm) -> Result<Tensor> {
    norm::layer_norm(x, &n.gamma, &n.beta, LAYER_NORM_EPS)
}
