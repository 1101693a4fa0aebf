//! Whisper's audio encoder from a CTranslate2 `WhisperSpec` file, as CTranslate2 runs it
//! (`../shared/fixtures/whisper/README.md`, "Model"):
//!
//! 1. `x = GELU(conv1(mel))`, kernel 3, stride 1, padding 1: `[mels, 3000]` to `[d, 3000]`;
//!    `x = GELU(conv2(x))`, kernel 3, stride 2, padding 1, stored channels last: `[1500, d]`
//!    ([`conv::conv1d`]). GELU is the exact erf form ([`elementwise::gelu`]); the tanh form is
//!    3.2e-2 off the reference.
//! 2. `+ encoder/position_encodings/encodings` (the sinusoids as the file stores them).
//! 3. Each layer, pre-norm: `x += W_o Attn(LN(x))`, `x += FFN(LN(x))`, FFN =
//!    `linear_1(GELU(linear_0(h)))`, LayerNorm epsilon 1e-5 with biased variance. Heads are
//!    consecutive blocks of `d / heads` features, so the fused `self_attention/linear_0`
//!    (`[Wq; Wk; Wv]`, bias `[bq; 0; bv]`) is cut at load into one q, k and v projection per
//!    head, each giving that head's `[frames, 64]` contiguous. q is not pre-scaled in the
//!    file: it is multiplied by `1 / sqrt(64)` at run time (a power of two, so exactly what
//!    CTranslate2's scaled product gives). Each head's attention is then two matrix products
//!    and a softmax over the stored `[frames, frames]` scores (see `attend`), and the heads
//!    are joined in order before the output projection.
//! 4. The final `encoder/layer_norm`.
//!
//! Matrices stay in the file's dtype on the device (`layers.rs`); all arithmetic is f32.
//! Everything runs on the device of the weights (the CPU twins on [`Device::Cpu`]); nothing is
//! read back.

use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::ops::conv::{self, Conv1d};
use crate::ops::matmul::{self, MatmulOptions};
use crate::ops::{elementwise, fusion, softmax};
use crate::Device;
use crate::Tensor;

use super::layers::{LayerNorm, Linear, Loader};
use super::{check_spec, stack_sizes, variable};

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

/// One head's projections: `[head_dim, d]` row blocks of the fused `[Wq; Wk; Wv]`.
struct Head {
    q: Linear,
    k: Linear,
    v: Linear,
}

struct Layer {
    attn_norm: LayerNorm,
    heads: Vec<Head>,
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
        let (heads, ffn, layers) = stack_sizes(file, "encoder", d)?;
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
                let qkv = format!("{p}/self_attention/linear_0");
                let mut blocks = l.linear_blocks(&qkv, 3 * d, d, 3 * heads)?;
                let v = blocks.split_off(2 * heads);
                let k = blocks.split_off(heads);
                let heads = blocks
                    .into_iter()
                    .zip(k)
                    .zip(v)
                    .map(|((q, k), v)| Head { q, k, v })
                    .collect();
                Ok(Layer {
                    attn_norm: l.layer_norm(&format!("{p}/self_attention/layer_norm"), d)?,
                    heads,
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
            let scale = 1.0 / ((c.d_model / c.heads) as f32).sqrt();
            let heads = layer
                .heads
                .iter()
                .map(|head| attend(&h, head, scale))
                .collect::<Result<Vec<_>>>()?;
            let a = fusion::concat(&heads.iter().collect::<Vec<_>>())?;
            x = elementwise::add(&x, &layer.out.forward(&a)?)?;
            let h = layer.ffn_norm.forward(&x)?;
            let h = elementwise::gelu(&layer.fc1.forward(&h)?)?;
            x = elementwise::add(&x, &layer.fc2.forward(&h)?)?;
        }
        self.norm.forward(&x)
    }
}

/// One head's self-attention of `h` `[windows, frames, d]`: `softmax(scale q k^T) v`, as
/// `[windows, frames, head_dim]`. Through the tiled matmul rather than
/// [`crate::ops::attention::masked`]: on lavapipe its fused path took several times longer for
/// these 1500 x 1500 scores than the two products and the softmax (BENCHMARKS.md, Whisper),
/// while the stored scores are only `frames^2` f32 per window (9 MB).
fn attend(h: &Tensor, head: &Head, scale: f32) -> Result<Tensor> {
    let q = elementwise::scale(&head.q.forward(h)?, scale)?;
    let k = head.k.forward(h)?;
    let v = head.v.forward(h)?;
    let transposed = MatmulOptions {
        trans_b: true,
        ..MatmulOptions::default()
    };
    let scores = matmul::matmul(&q, &k, transposed)?;
    let p = softmax::softmax(&scores)?;
    matmul::matmul(&p, &v, MatmulOptions::default())
}
