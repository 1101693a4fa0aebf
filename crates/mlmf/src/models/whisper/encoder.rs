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
use crate::ops::elementwise;
use crate::Device;
use crate::Tensor;

use super::layers::{LayerNorm, Linear, Loader};
use super::{bad, check_spec, scalar, variable};

const OP: &str = "WhisperEncoder::forward";
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
    conv1: Conv,
    conv2: Conv,
    positions: Tensor,
    layers: Vec<Layer>,
    norm: LayerNorm,
}

/// A conv1d layer: weight `[out, in, KERNEL]` and bias, in f32 (the conv kernels' only dtype).
struct Conv {
    weight: Tensor,
    bias: Tensor,
}

impl Conv {
    fn load(l: &Loader, name: &str, out: usize, inp: usize) -> Result<Conv> {
        Ok(Conv {
            weight: l.f32(&format!("{name}/weight"), &[out, inp, KERNEL])?,
            bias: l.f32(&format!("{name}/bias"), &[out])?,
        })
    }

    fn forward(&self, x: &Tensor, stride: usize, channels_last: bool) -> Result<Tensor> {
        let conv = Conv1d {
            stride,
            padding: 1,
            channels_last,
        };
        conv::conv1d(x, &self.weight, Some(&self.bias), conv)
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
                let [q, k, v] = l.linears(&format!("{p}/self_attention/linear_0"), 3 * d, d)?;
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
            conv1: Conv::load(&l, "encoder/conv1", d, mels)?,
            conv2: Conv::load(&l, "encoder/conv2", d, d)?,
            positions: l.f32("encoder/position_encodings/encodings", &[positions, d])?,
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
        let x = elementwise::gelu(&self.conv1.forward(mel, 1, false)?)?;
        let x = elementwise::gelu(&self.conv2.forward(&x, 2, true)?)?;
        let mut x = elementwise::add(&x, &self.positions)?;
        for layer in &self.layers {
            let h = layer.attn_norm.forward(&x)?;
            let (q, k, v) = (
                layer.q.forward(&h)?,
                layer.k.forward(&h)?,
                layer.v.forward(&h)?,
            );
            // The default scale, 1 / sqrt(head_dim): q is not pre-scaled in the file. No weights
            // asked for, so the fused path: the 1500 x 1500 scores per head are never stored.
            let a = attention::masked(&q, &k, &v, c.heads, &MaskedOptions::default())?.output;
            x = elementwise::add(&x, &layer.out.forward(&a)?)?;
            let h = layer.ffn_norm.forward(&x)?;
            let h = elementwise::gelu(&layer.fc1.forward(&h)?)?;
            x = elementwise::add(&x, &layer.fc2.forward(&h)?)?;
        }
        self.norm.forward(&x)
    }
}
