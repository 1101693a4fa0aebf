//! BERT encoders (transformers' `BertModel`, eager attention) as sentence embedders, e.g.
//! all-MiniLM-L6-v2: token ids -> embeddings (word + position + token type, LayerNorm) -> N
//! layers of self-attention and a GELU feed-forward, each followed by a residual add and
//! LayerNorm -> the last hidden state; then sentence-transformers' mean pooling over the
//! attention mask and L2 normalisation.
//!
//! Every layer runs on the device of the weights ([`crate::ops`]; the CPU twins on
//! [`Device::Cpu`]); nothing is read back until the last hidden state. Pooling (a few thousand
//! numbers) is done on the host.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::multimodal::preprocess::text::{Encoded, TextTokenizer};
use crate::ops::{attention, elementwise, embedding, matmul, norm};
use crate::Device;
use crate::Tensor;

/// The `config.json` fields the encoder needs; other keys are ignored.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
}

/// transformers' `BertConfig` default.
fn default_layer_norm_eps() -> f32 {
    1e-12
}

/// The keys of `config.json` that select variants; only one of each is implemented.
#[derive(Deserialize)]
struct ConfigFile {
    #[serde(flatten)]
    config: BertConfig,
    hidden_act: Option<String>,
    position_embedding_type: Option<String>,
}

impl BertConfig {
    /// Read `config.json`; `hidden_act` must be `gelu` (the erf form) and the position
    /// embeddings `absolute`, the only ones implemented.
    pub fn open(path: &Path) -> Result<BertConfig> {
        let text = mlmf_core::files::read_regular(path)?;
        let bad = |reason: String| Error::BadModel {
            path: path.to_path_buf(),
            reason,
        };
        let file: ConfigFile = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let act = file.hidden_act.as_deref();
        if act != Some("gelu") {
            return Err(bad(format!(
                "hidden_act {act:?}: only \"gelu\" is implemented"
            )));
        }
        let pos = file
            .position_embedding_type
            .as_deref()
            .unwrap_or("absolute");
        if pos != "absolute" {
            return Err(bad(format!(
                "position_embedding_type {pos}: only absolute is implemented"
            )));
        }
        let config = file.config;
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(bad(format!(
                "hidden_size {} does not split into {} heads",
                config.hidden_size, config.num_attention_heads
            )));
        }
        Ok(config)
    }
}

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// A BERT sentence embedder with its weights on a device.
pub struct BertEmbedder {
    config: BertConfig,
    tokenizer: TextTokenizer,
    device: Device,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
}

/// What [`BertEmbedder::embed`] returns.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// The tokenized batch (ids, mask, word pieces).
    pub encoded: Encoded,
    /// `[batch, len, hidden]`, row-major, padded positions included.
    pub last_hidden_state: Vec<f32>,
    /// `[batch, hidden]`: mean over real tokens, L2-normalised.
    pub sentence_embeddings: Vec<Vec<f32>>,
}

impl BertEmbedder {
    /// Load a sentence-transformers model directory (`config.json`, `tokenizer.json`,
    /// `model.safetensors`) onto `device`.
    pub fn open(dir: impl AsRef<Path>, device: &Device) -> Result<BertEmbedder> {
        let dir = dir.as_ref();
        let config = BertConfig::open(&dir.join("config.json"))?;
        let tokenizer = TextTokenizer::open(dir.join("tokenizer.json"))?;
        let file = ModelFile::open(dir.join("model.safetensors"))?;
        // BertModel checkpoints are saved with or without the `bert.` prefix.
        let prefix = if file
            .tensor("bert.embeddings.word_embeddings.weight")
            .is_ok()
        {
            "bert."
        } else {
            ""
        };
        let load = |name: &str| device.load(&file, &format!("{prefix}{name}"));
        let linear = |name: &str| -> Result<Linear> {
            Ok(Linear {
                weight: load(&format!("{name}.weight"))?,
                bias: load(&format!("{name}.bias"))?,
            })
        };
        let layer_norm = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                weight: load(&format!("{name}.weight"))?,
                bias: load(&format!("{name}.bias"))?,
            })
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                Ok(Layer {
                    query: linear(&format!("{p}.attention.self.query"))?,
                    key: linear(&format!("{p}.attention.self.key"))?,
                    value: linear(&format!("{p}.attention.self.value"))?,
                    attn_out: linear(&format!("{p}.attention.output.dense"))?,
                    attn_norm: layer_norm(&format!("{p}.attention.output.LayerNorm"))?,
                    intermediate: linear(&format!("{p}.intermediate.dense"))?,
                    output: linear(&format!("{p}.output.dense"))?,
                    out_norm: layer_norm(&format!("{p}.output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BertEmbedder {
            word: load("embeddings.word_embeddings.weight")?,
            position: load("embeddings.position_embeddings.weight")?,
            token_type: load("embeddings.token_type_embeddings.weight")?,
            embed_norm: layer_norm("embeddings.LayerNorm")?,
            layers,
            config,
            tokenizer,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Tokenize `texts` (padded to the longest) and embed them.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Embeddings> {
        let encoded = self.tokenizer.encode_batch(texts)?;
        let hidden = self.forward(&encoded)?;
        let last_hidden_state = hidden.to_f32_vec()?;
        let sentence_embeddings = mean_pool_normalize(
            &last_hidden_state,
            &encoded.attention_mask,
            encoded.batch,
            encoded.len,
            self.config.hidden_size,
        );
        Ok(Embeddings {
            encoded,
            last_hidden_state,
            sentence_embeddings,
        })
    }

    /// The last hidden state `[batch, len, hidden]` of a tokenized batch, on the device.
    pub fn forward(&self, encoded: &Encoded) -> Result<Tensor> {
        let c = &self.config;
        let (batch, len, hidden) = (encoded.batch, encoded.len, c.hidden_size);
        if len > c.max_position_embeddings {
            // Position ids run to len - 1; the model has embeddings for fewer.
            return Err(Error::OpIndex {
                op: "BertEmbedder::forward",
                what: "token position",
                index: len as u64 - 1,
                len: c.max_position_embeddings as u64,
            });
        }
        let positions: Vec<u32> = (0..batch).flat_map(|_| 0..len as u32).collect();
        let words = embedding::embedding(&self.word, &encoded.ids)?;
        let pos = embedding::embedding(&self.position, &positions)?;
        let types = embedding::embedding(&self.token_type, &encoded.type_ids)?;
        let x = elementwise::add(&elementwise::add(&words, &pos)?, &types)?;
        let x = layer_norm(&x, &self.embed_norm, c.layer_norm_eps)?;
        let mut x = x.reshape(vec![batch, len, hidden])?;
        for layer in &self.layers {
            let q = linear(&x, &layer.query)?;
            let k = linear(&x, &layer.key)?;
            let v = linear(&x, &layer.value)?;
            let ctx = attention::attention(
                &q,
                &k,
                &v,
                c.num_attention_heads,
                Some(&encoded.attention_mask),
                None,
            )?;
            let a = linear(&ctx, &layer.attn_out)?;
            let x1 = layer_norm(
                &elementwise::add(&a, &x)?,
                &layer.attn_norm,
                c.layer_norm_eps,
            )?;
            let h = elementwise::gelu(&linear(&x1, &layer.intermediate)?)?;
            let o = linear(&h, &layer.output)?;
            x = layer_norm(
                &elementwise::add(&o, &x1)?,
                &layer.out_norm,
                c.layer_norm_eps,
            )?;
        }
        Ok(x)
    }
}

fn linear(x: &Tensor, l: &Linear) -> Result<Tensor> {
    matmul::linear(x, &l.weight, Some(&l.bias))
}

fn layer_norm(x: &Tensor, n: &LayerNorm, eps: f32) -> Result<Tensor> {
    norm::layer_norm(x, &n.weight, &n.bias, eps)
}

/// sentence-transformers' `Pooling(mean)` then `Normalize`: the mean of the hidden states of
/// real tokens, divided by its L2 norm (at least 1e-12, as `F.normalize`). Summed in f64.
pub fn mean_pool_normalize(
    hidden: &[f32],
    mask: &[u32],
    batch: usize,
    len: usize,
    dim: usize,
) -> Vec<Vec<f32>> {
    (0..batch)
        .map(|b| {
            let mut sum = vec![0f64; dim];
            let mut count = 0f64;
            for t in 0..len {
                if mask[b * len + t] == 0 {
                    continue;
                }
                count += 1.0;
                let row = &hidden[(b * len + t) * dim..(b * len + t + 1) * dim];
                for (s, &v) in sum.iter_mut().zip(row) {
                    *s += v as f64;
                }
            }
            // sentence-transformers clamps the token count at 1e-9.
            let mean: Vec<f64> = sum.iter().map(|s| s / count.max(1e-9)).collect();
            let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            mean.iter().map(|v| (v / norm) as f32).collect()
        })
        .collect()
}

/// The directory of the all-MiniLM-L6-v2 files `scripts/fetch_models.py` fetches, under the
/// model cache.
pub fn minilm_dir(models: &Path) -> PathBuf {
    models.join("all-MiniLM-L6-v2")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_ignores_other_keys_and_names_the_file_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let open = |json: &str| {
            std::fs::write(&path, json).unwrap();
            BertConfig::open(&path)
        };
        let good = r#"{"architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 384,
            "intermediate_size": 1536, "max_position_embeddings": 512, "num_attention_heads": 12,
            "num_hidden_layers": 6, "type_vocab_size": 2, "vocab_size": 30522}"#;
        let config = open(good).unwrap();
        assert_eq!((config.hidden_size, config.layer_norm_eps), (384, 1e-12));
        for (bad, expected) in [
            (good.replace("\"hidden_size\"", "\"hidden\""), "hidden_size"),
            (good.replace("384", "-384"), "-384"),
            (good.replace("\"gelu\"", "\"relu\""), "hidden_act"),
            (good.replace("12,", "7,"), "heads"),
            ("{not json".to_string(), "line 1"),
        ] {
            let err = open(&bad).unwrap_err();
            assert!(matches!(err, Error::BadModel { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains("config.json") && text.contains(expected),
                "{text}"
            );
        }
    }
}
