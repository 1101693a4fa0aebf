//! Whisper's text decoder from a CTranslate2 `WhisperSpec` file, as CTranslate2 runs it
//! (`../shared/fixtures/whisper/README.md`, "Model"):
//!
//! 1. `x = embeddings[id] + position_encodings[pos]` (learned positions from 0, no sqrt(d)
//!    scaling: `scale_embeddings` is 0).
//! 2. Each layer, pre-norm: causal self-attention over the positions so far, whose keys and
//!    values stay on the device in a [`KvCache`]; cross-attention of the text over the audio
//!    frames of the encoder output; the FFN with exact-erf GELU. The fused self-attention
//!    `linear_0` (`[Wq; Wk; Wv]`) and cross-attention `linear_1` (`[Wk; Wv]`, applied to the
//!    encoder output once per utterance: [`WhisperDecoder::cross_kv`]) are split at load. q is
//!    not pre-scaled in the file: the scores take `1 / sqrt(64)`, the attention's default.
//! 3. `decoder/layer_norm`, then logits `E x` by the embedding matrix itself (the file's
//!    `decoder/projection/weight` is an alias of `decoder/embeddings/weight`), no bias, through
//!    the matrix-vector kernel [`qmatmul`].
//!
//! Matrices stay f16 on the device and are widened as the kernels read them; the arithmetic is
//! f32 (see `layers.rs`).

use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::ops::attention::{self, AttnMask, MaskedOptions};
use crate::ops::{elementwise, embedding, qmatmul};
use crate::{Device, KvCache, Tensor};

use super::layers::{LayerNorm, Linear, Loader};
use super::{bad, check_spec, scalar, stack_sizes, variable};

const OP: &str = "WhisperDecoder::step";

/// The decoder's sizes, read from the file's shapes and `decoder/num_heads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Width of the transformer (384).
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
    /// Inner width of each feed-forward block (1536).
    pub ffn: usize,
    /// Tokens in the vocabulary, the rows of the embedding matrix (51864).
    pub vocab: usize,
    /// Learned positions (448): the longest sequence, prompt included.
    pub positions: usize,
}

struct Layer {
    self_norm: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    self_out: Linear,
    cross_norm: LayerNorm,
    cross_q: Linear,
    cross_k: Linear,
    cross_v: Linear,
    cross_out: Linear,
    ffn_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// Whisper's decoder with its weights on a device.
pub struct WhisperDecoder {
    config: DecoderConfig,
    device: Device,
    /// `[vocab, d]`, the token embeddings and (transposed) the output projection.
    embeddings: Tensor,
    positions: Tensor,
    layers: Vec<Layer>,
    norm: LayerNorm,
}

/// The cross-attention keys and values of one utterance's encoder output, one pair per layer:
/// computed once, read by every decoding step.
pub struct CrossKv {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
}

/// What one [`WhisperDecoder::step`] gives.
pub struct Step {
    /// F32 `[1, n, vocab]`: the raw logits (nothing suppressed) after each fed token.
    pub logits: Tensor,
    /// When asked for: the last layer's cross-attention weights, F32 `[1, heads, n, frames]`.
    pub cross_attention: Option<Tensor>,
}

impl WhisperDecoder {
    /// The decoder of a CTranslate2 Whisper file (or any file with its variable names) on
    /// `device`. Errors: as [`super::WhisperEncoder::load`].
    pub fn load(file: &ModelFile, device: &Device) -> Result<WhisperDecoder> {
        check_spec(file)?;
        let emb = variable(file, "decoder/embeddings/weight", &[None, None])?;
        let (vocab, d) = (emb.shape.dims()[0], emb.shape.dims()[1]);
        let pos = variable(
            file,
            "decoder/position_encodings/encodings",
            &[None, Some(d)],
        )?;
        let positions = pos.shape.dims()[0];
        let (heads, ffn, layers) = stack_sizes(file, "decoder", d)?;
        // The settings this implementation follows; a file that asks for others is refused
        // rather than run wrongly.
        for (name, want) in [
            ("decoder/scale_embeddings", 0),
            ("decoder/pre_norm", 1),
            ("decoder/activation", 3),
            ("decoder/alibi", 0),
        ] {
            if let Ok(v) = scalar(file, name) {
                if v != want {
                    return Err(bad(
                        file,
                        format!("{name} is {v}; only {want} is supported"),
                    ));
                }
            }
        }
        let config = DecoderConfig {
            d_model: d,
            heads,
            layers,
            ffn,
            vocab,
            positions,
        };
        let l = Loader { file, device };
        let layers = (0..layers)
            .map(|i| {
                let p = format!("decoder/layer_{i}");
                let [q, k, v] = l.linears(&format!("{p}/self_attention/linear_0"), 3 * d, d)?;
                let [cross_k, cross_v] = l.linears(&format!("{p}/attention/linear_1"), 2 * d, d)?;
                Ok(Layer {
                    self_norm: l.layer_norm(&format!("{p}/self_attention/layer_norm"), d)?,
                    q,
                    k,
                    v,
                    self_out: l.linear(&format!("{p}/self_attention/linear_1"), d, d)?,
                    cross_norm: l.layer_norm(&format!("{p}/attention/layer_norm"), d)?,
                    cross_q: l.linear(&format!("{p}/attention/linear_0"), d, d)?,
                    cross_k,
                    cross_v,
                    cross_out: l.linear(&format!("{p}/attention/linear_2"), d, d)?,
                    ffn_norm: l.layer_norm(&format!("{p}/ffn/layer_norm"), d)?,
                    fc1: l.linear(&format!("{p}/ffn/linear_0"), ffn, d)?,
                    fc2: l.linear(&format!("{p}/ffn/linear_1"), d, ffn)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embeddings = l.matrix("decoder/embeddings/weight", vocab, d)?;
        let positions = l.matrix("decoder/position_encodings/encodings", positions, d)?;
        Ok(WhisperDecoder {
            embeddings,
            positions,
            layers,
            norm: l.layer_norm("decoder/layer_norm", d)?,
            config,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty self-attention cache for one sequence of up to [`DecoderConfig::positions`]
    /// tokens, on the decoder's device.
    pub fn new_cache(&self) -> Result<KvCache> {
        let c = &self.config;
        KvCache::new(
            &self.device,
            "decoder self-attention",
            c.layers,
            c.positions,
            c.d_model,
        )
    }

    /// The cross-attention keys and values of every layer for the encoder output of one
    /// window, `[1, frames, d_model]` (what [`super::WhisperEncoder::forward`] gives for one
    /// window). Errors: another shape ([`Error::ShapeMismatch`]), another device, the ops'.
    pub fn cross_kv(&self, encoder_out: &Tensor) -> Result<CrossKv> {
        let d = self.config.d_model;
        if !matches!(encoder_out.shape().dims(), &[1, _, w] if w == d) {
            return Err(Error::ShapeMismatch {
                op: "WhisperDecoder::cross_kv",
                left: encoder_out.name().to_string(),
                left_shape: encoder_out.shape().dims().to_vec(),
                right: "one window's encoder output".to_string(),
                right_shape: vec![1, 1500, d],
            });
        }
        let mut keys = Vec::with_capacity(self.layers.len());
        let mut values = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            keys.push(layer.cross_k.forward(encoder_out)?);
            values.push(layer.cross_v.forward(encoder_out)?);
        }
        Ok(CrossKv { keys, values })
    }

    /// Feed `ids` at the next positions of `cache` (which they are appended to) and return the
    /// logits after each, with the last layer's cross-attention weights when `attention` is set.
    /// Several ids at once are attended causally among themselves (a prompt); the usual step is
    /// one id. Errors: no ids ([`Error::OpArgument`]), an id past the vocabulary or a position
    /// past [`DecoderConfig::positions`] ([`Error::OpIndex`]), a cache or cross keys of another
    /// decoder, the ops' errors.
    pub fn step(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        cross: &CrossKv,
        attention: bool,
    ) -> Result<Step> {
        let c = &self.config;
        let n = ids.len();
        let offset = cache.len(0);
        if n == 0 {
            return Err(Error::OpArgument {
                op: OP,
                argument: "ids",
                value: 0,
                expected: "at least one token id",
            });
        }
        if offset + n > c.positions {
            return Err(Error::OpIndex {
                op: OP,
                what: "position",
                index: (offset + n - 1) as u64,
                len: c.positions as u64,
            });
        }
        if cross.keys.len() != self.layers.len() {
            return Err(Error::OpIndex {
                op: OP,
                what: "cross-attention layer",
                index: cross.keys.len() as u64,
                len: self.layers.len() as u64,
            });
        }
        let pos: Vec<u32> = (offset..offset + n).map(|p| p as u32).collect();
        let x = elementwise::add(
            &embedding::embedding(&self.embeddings, ids)?,
            &embedding::embedding(&self.positions, &pos)?,
        )?;
        let mut x = x.reshape(vec![1, n, c.d_model])?;
        // Query i (position offset + i) sees keys 0..=offset + i: nothing to hide for one
        // query, top-left causal from an empty cache, an explicit mask otherwise.
        let additive = if n > 1 && offset > 0 {
            let width = offset + n;
            let mask: Vec<f32> = (0..n)
                .flat_map(|i| {
                    (0..width).map(move |j| {
                        if j <= offset + i {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            Some(Tensor::from_f32("causal mask", vec![n, width], &mask)?.to_device(&self.device)?)
        } else {
            None
        };
        let mask = match (&additive, n) {
            (Some(m), _) => AttnMask::Additive(m),
            (None, 1) => AttnMask::None,
            (None, _) => AttnMask::Causal,
        };
        let mut weights = None;
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.self_norm.forward(&x)?;
            let (q, k, v) = (
                layer.q.forward(&h)?,
                layer.k.forward(&h)?,
                layer.v.forward(&h)?,
            );
            let (keys, values) = cache.append(i, &k, &v)?;
            let options = MaskedOptions {
                mask,
                ..MaskedOptions::default()
            };
            let a = attention::masked(&q, &keys, &values, c.heads, &options)?.output;
            x = elementwise::add(&x, &layer.self_out.forward(&a)?)?;

            let h = layer.cross_norm.forward(&x)?;
            let q = layer.cross_q.forward(&h)?;
            let options = MaskedOptions {
                weights: attention && i == last,
                ..MaskedOptions::default()
            };
            let out = attention::masked(&q, &cross.keys[i], &cross.values[i], c.heads, &options)?;
            if out.weights.is_some() {
                weights = out.weights;
            }
            x = elementwise::add(&x, &layer.cross_out.forward(&out.output)?)?;

            let h = layer.ffn_norm.forward(&x)?;
            let h = elementwise::gelu(&layer.fc1.forward(&h)?)?;
            x = elementwise::add(&x, &layer.fc2.forward(&h)?)?;
        }
        let h = self.norm.forward(&x)?.reshape(vec![n, c.d_model])?;
        // The matrix-vector kernel: with one row per step, the tiled matmul would compute a
        // whole tile of rows for it (it measured slower on lavapipe for this 51864 x 384 product).
        let logits = qmatmul::matmul(&self.embeddings, &h)?.reshape(vec![1, n, c.vocab])?;
        Ok(Step {
            logits,
            cross_attention: weights,
        })
    }
}
