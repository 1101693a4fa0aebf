//! BERT encoders (transformers' `BertModel`, eager attention) as sentence embedders, e.g.
//! all-MiniLM-L6-v2: token ids -> embeddings (word + position + token type, LayerNorm) -> N
//! layers of self-attention and a GELU feed-forward, each followed by a residual add and
//! LayerNorm -> the last hidden state; then sentence-transformers' mean pooling over the
//! attention mask and L2 normalisation.
//!
//! Every layer runs on the device of the weights ([`crate::ops`]; the CPU twins on
//! [`Device::Cpu`]); nothing is read back until the last hidden state. Pooling (a few thousand
//! numbers) is done on the host.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::multimodal::preprocess::text::{Encoded, TextTokenizer};
use crate::ops::{attention, elementwise, embedding, matmul, norm};
use crate::shard::{agreed, load_part, Comm, Part, Plan};
use crate::Device;
use crate::Slice;
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

/// The weights of a BERT encoder on one device: all of them ([`BertEmbedder`]), or one rank's
/// rows and columns of them ([`BertShard`]).
struct Weights {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl Weights {
    /// Gather the weights by their names in the file (without the optional `bert.` prefix);
    /// `load` gives the tensor, or the part of it, this device holds.
    fn gather(config: &BertConfig, load: &dyn Fn(&str) -> Result<Tensor>) -> Result<Weights> {
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
        Ok(Weights {
            word: load("embeddings.word_embeddings.weight")?,
            position: load("embeddings.position_embeddings.weight")?,
            token_type: load("embeddings.token_type_embeddings.weight")?,
            embed_norm: layer_norm("embeddings.LayerNorm")?,
            layers,
        })
    }
}

/// A BERT sentence embedder with its weights on a device.
pub struct BertEmbedder {
    config: BertConfig,
    tokenizer: TextTokenizer,
    device: Device,
    weights: Weights,
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

impl Embeddings {
    fn pool(encoded: Encoded, hidden: &Tensor, dim: usize) -> Result<Embeddings> {
        let last_hidden_state = hidden.to_f32_vec()?;
        let sentence_embeddings = mean_pool_normalize(
            &last_hidden_state,
            &encoded.attention_mask,
            encoded.batch,
            encoded.len,
            dim,
        );
        Ok(Embeddings {
            encoded,
            last_hidden_state,
            sentence_embeddings,
        })
    }
}

impl BertEmbedder {
    /// Load a sentence-transformers model directory (`config.json`, `tokenizer.json`,
    /// `model.safetensors`) onto `device`.
    pub fn open(dir: impl AsRef<Path>, device: &Device) -> Result<BertEmbedder> {
        let dir = dir.as_ref();
        let config = BertConfig::open(&dir.join("config.json"))?;
        let tokenizer = TextTokenizer::open(dir.join("tokenizer.json"))?;
        let file = ModelFile::open(dir.join("model.safetensors"))?;
        let prefix = name_prefix(&file);
        let load = |name: &str| device.load(&file, &format!("{prefix}{name}"));
        Ok(BertEmbedder {
            weights: Weights::gather(&config, &load)?,
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
        Embeddings::pool(encoded, &hidden, self.config.hidden_size)
    }

    /// The last hidden state `[batch, len, hidden]` of a tokenized batch, on the device.
    pub fn forward(&self, encoded: &Encoded) -> Result<Tensor> {
        encode(
            &self.config,
            &self.weights,
            self.config.num_attention_heads,
            encoded,
            &Parallel::None,
        )
    }
}

/// One rank's share of a tensor-parallel BERT encoder (Megatron's split, as
/// [`Split::Row`](crate::shard::Split::Row) plans it): the query, key and value rows of its
/// attention heads and the attention output's matching columns, its rows of the feed-forward up
/// matrix and the down matrix's matching columns, its rows of the word embeddings; norms, the
/// position and token-type embeddings and the biases after the column-split matrices whole.
///
/// Every rank of a group runs [`BertShard::forward`] on the same batch; the column-split
/// products and the word embeddings are summed over the group with
/// [`Comm::all_reduce_sum`] on host buffers (in rank order, so every rank gets the same bits),
/// the bias added once after the sum, and the residuals and norms computed on every rank.
/// Every rank ends with the same last hidden state.
pub struct BertShard {
    config: BertConfig,
    tokenizer: TextTokenizer,
    device: Device,
    weights: Weights,
    /// Attention heads this rank computes.
    heads: usize,
    /// Rows of the word embeddings this rank holds.
    vocab: Range<usize>,
    rank: usize,
    size: usize,
    bytes_read: u64,
}

impl BertShard {
    /// Load rank `comm.rank()`'s parts of `plan` (a row split of `dir`'s `model.safetensors`
    /// for `comm.size()` devices) onto `device`, reading from the file only their bytes. Every
    /// rank calls it; a rank that fails (a missing file, a plan that does not fit) makes every
    /// rank return [`Error::RankFailed`].
    pub fn load(
        dir: impl AsRef<Path>,
        device: &Device,
        plan: &Plan,
        comm: &dyn Comm,
    ) -> Result<BertShard> {
        let shard = BertShard::load_local(dir.as_ref(), device, plan, comm.rank(), comm.size());
        agreed(comm, "BertShard::load", shard)
    }

    fn load_local(
        dir: &Path,
        device: &Device,
        plan: &Plan,
        rank: usize,
        size: usize,
    ) -> Result<BertShard> {
        let config = BertConfig::open(&dir.join("config.json"))?;
        let tokenizer = TextTokenizer::open(dir.join("tokenizer.json"))?;
        let path = dir.join("model.safetensors");
        let file = ModelFile::open(&path)?;
        let bad = |reason: String| Error::BadPlan {
            reason: format!("{}: {reason}", path.display()),
        };
        if plan.split != "row" || plan.devices.len() != size {
            return Err(bad(format!(
                "BertShard needs a row split for {size} ranks, not a {} split for {}",
                plan.split,
                plan.devices.len()
            )));
        }
        let mine = plan
            .device(rank)
            .ok_or_else(|| bad(format!("no part for rank {rank}")))?;
        let loaded = load_part(device, &file, mine)?;
        let bytes_read = loaded.bytes_read;
        let prefix = name_prefix(&file);
        let missing = |full: &str| bad(format!("rank {rank} holds no part of '{full}'"));
        let mut parts: HashMap<String, (Part, Vec<usize>)> = HashMap::new();
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (p, t) in loaded.parts {
            parts.insert(p.name.clone(), (p.clone(), t.shape().dims().to_vec()));
            tensors.insert(p.name, t);
        }
        let tensors = RefCell::new(tensors);
        let load = |name: &str| {
            let full = format!("{prefix}{name}");
            tensors
                .borrow_mut()
                .remove(&full)
                .ok_or_else(|| missing(&full))
        };
        let weights = Weights::gather(&config, &load)?;
        let part = |name: &str| {
            let full = format!("{prefix}{name}");
            parts.get(&full).ok_or_else(|| missing(&full))
        };
        // The rows each matrix pair shares must be the same on both sides, and whole heads.
        let span = |name: &str, rows: bool| -> Result<Range<usize>> {
            let (p, dims) = part(name)?;
            match (&p.slice, rows) {
                (Slice::Rows(r), true) | (Slice::Cols(r), false) => Ok(r.clone()),
                (Slice::Whole, true) => Ok(0..dims.first().copied().unwrap_or(0)),
                (Slice::Whole, false) => Ok(0..dims.get(1).copied().unwrap_or(0)),
                (other, _) => Err(bad(format!("'{}' is split as {other}", p.name))),
            }
        };
        let head_dim = config.hidden_size / config.num_attention_heads;
        let mut heads = None;
        for i in 0..config.num_hidden_layers {
            let l = format!("encoder.layer.{i}");
            let q = span(&format!("{l}.attention.self.query.weight"), true)?;
            for (name, rows) in [
                ("attention.self.query.bias", true),
                ("attention.self.key.weight", true),
                ("attention.self.key.bias", true),
                ("attention.self.value.weight", true),
                ("attention.self.value.bias", true),
                ("attention.output.dense.weight", false),
            ] {
                if span(&format!("{l}.{name}"), rows)? != q {
                    return Err(bad(format!(
                        "{l}.{name} is not split at the query rows {q:?} on rank {rank}"
                    )));
                }
            }
            if q.start % head_dim != 0 || q.len() % head_dim != 0 {
                return Err(bad(format!(
                    "{l}: rows {q:?} cut a head of {head_dim} on rank {rank}"
                )));
            }
            if *heads.get_or_insert(q.len() / head_dim) != q.len() / head_dim {
                return Err(bad(format!("{l}: a different head count on rank {rank}")));
            }
            let up = span(&format!("{l}.intermediate.dense.weight"), true)?;
            if span(&format!("{l}.intermediate.dense.bias"), true)? != up
                || span(&format!("{l}.output.dense.weight"), false)? != up
            {
                return Err(bad(format!(
                    "{l}: the feed-forward is not split at rows {up:?} on both sides on rank {rank}"
                )));
            }
            for name in ["attention.output.dense.bias", "output.dense.bias"] {
                let (p, _) = part(&format!("{l}.{name}"))?;
                if p.slice != Slice::Whole {
                    return Err(bad(format!(
                        "the bias after a column split, '{}', is split",
                        p.name
                    )));
                }
            }
        }
        for name in [
            "embeddings.position_embeddings.weight",
            "embeddings.token_type_embeddings.weight",
        ] {
            let (p, _) = part(name)?;
            if p.slice != Slice::Whole {
                return Err(bad(format!("'{}' must be whole on every rank", p.name)));
            }
        }
        let vocab = span("embeddings.word_embeddings.weight", true)?;
        check_tiling(plan, &file).map_err(bad)?;
        Ok(BertShard {
            heads: heads.unwrap_or(config.num_attention_heads),
            vocab,
            config,
            tokenizer,
            device: device.clone(),
            weights,
            rank,
            size,
            bytes_read,
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

    /// The attention heads this rank computes.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// The rows of the word embeddings this rank holds.
    pub fn vocab(&self) -> Range<usize> {
        self.vocab.clone()
    }

    /// Bytes this rank read from the file.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Tokenize `texts` and embed them on every rank of `comm`, as [`BertEmbedder::embed`].
    pub fn embed<S: AsRef<str>>(&self, comm: &dyn Comm, texts: &[S]) -> Result<Embeddings> {
        let encoded = agreed(comm, "tokenize", self.tokenizer.encode_batch(texts))?;
        let hidden = self.forward(comm, &encoded)?;
        agreed(
            comm,
            "pool",
            Embeddings::pool(encoded, &hidden, self.config.hidden_size),
        )
    }

    /// The last hidden state `[batch, len, hidden]` on this rank's device, the same on every
    /// rank. Every rank of `comm` (the group the plan was loaded for) calls it with the same
    /// batch.
    pub fn forward(&self, comm: &dyn Comm, encoded: &Encoded) -> Result<Tensor> {
        if (comm.rank(), comm.size()) != (self.rank, self.size) {
            return Err(Error::Distributed {
                during: "BertShard::forward".into(),
                reason: format!(
                    "loaded as rank {} of {}, called as rank {} of {}",
                    self.rank,
                    self.size,
                    comm.rank(),
                    comm.size()
                ),
            });
        }
        encode(
            &self.config,
            &self.weights,
            self.heads,
            encoded,
            &Parallel::Tensor {
                comm,
                device: &self.device,
                vocab: self.vocab.clone(),
            },
        )
    }
}

/// Every split pair of the plan covers its whole dimension once over the devices, in order:
/// otherwise the sums would silently miss or double some rows.
fn check_tiling(plan: &Plan, file: &ModelFile) -> std::result::Result<(), String> {
    for info in file.tensors() {
        let name = &info.name;
        let mut next = 0;
        let mut split = false;
        for d in &plan.devices {
            for p in d.tensors.iter().filter(|p| &p.name == name) {
                match &p.slice {
                    Slice::Rows(r) | Slice::Cols(r) => {
                        split = true;
                        if r.start != next {
                            return Err(format!(
                                "'{name}' on device {}: {r:?} does not follow {next}",
                                d.device
                            ));
                        }
                        next = r.end;
                    }
                    Slice::Whole => {}
                }
            }
        }
        let dim = |i: usize| info.shape.dims().get(i).copied().unwrap_or(0);
        let whole = plan
            .devices
            .iter()
            .flat_map(|d| &d.tensors)
            .find(|p| &p.name == name)
            .map(|p| match p.slice {
                Slice::Cols(_) => dim(1),
                _ => dim(0),
            });
        if split && whole != Some(next) {
            return Err(format!("'{name}' is split only up to {next}"));
        }
        if !split
            && !plan
                .devices
                .iter()
                .all(|d| d.tensors.iter().any(|p| &p.name == name))
        {
            return Err(format!("'{name}' is neither split nor on every device"));
        }
    }
    Ok(())
}

/// BertModel checkpoints are saved with or without the `bert.` prefix.
fn name_prefix(file: &ModelFile) -> &'static str {
    if file
        .tensor("bert.embeddings.word_embeddings.weight")
        .is_ok()
    {
        "bert."
    } else {
        ""
    }
}

/// The encoder's forward pass, shared by one device ([`Parallel::None`]) and a tensor-parallel
/// rank ([`Parallel::Tensor`]), which runs `heads` of the attention heads and its rows of the
/// feed-forward, with `parallel` making the column-split products whole.
fn encode(
    c: &BertConfig,
    w: &Weights,
    heads: usize,
    encoded: &Encoded,
    parallel: &Parallel,
) -> Result<Tensor> {
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
    let words = parallel.words(&w.word, &encoded.ids)?;
    let mut x = parallel.step("embeddings", || {
        let positions: Vec<u32> = (0..batch).flat_map(|_| 0..len as u32).collect();
        let pos = embedding::embedding(&w.position, &positions)?;
        let types = embedding::embedding(&w.token_type, &encoded.type_ids)?;
        let x = elementwise::add(&elementwise::add(&words, &pos)?, &types)?;
        layer_norm(&x, &w.embed_norm, c.layer_norm_eps)?.reshape(vec![batch, len, hidden])
    })?;
    for layer in &w.layers {
        let a = parallel.project("attention", &layer.attn_out, || {
            let q = linear(&x, &layer.query)?;
            let k = linear(&x, &layer.key)?;
            let v = linear(&x, &layer.value)?;
            attention::attention(&q, &k, &v, heads, Some(&encoded.attention_mask), None)
        })?;
        let x1 = parallel.step("attention residual", || {
            layer_norm(
                &elementwise::add(&a, &x)?,
                &layer.attn_norm,
                c.layer_norm_eps,
            )
        })?;
        let o = parallel.project("feed-forward", &layer.output, || {
            elementwise::gelu(&linear(&x1, &layer.intermediate)?)
        })?;
        x = parallel.step("feed-forward residual", || {
            layer_norm(
                &elementwise::add(&o, &x1)?,
                &layer.out_norm,
                c.layer_norm_eps,
            )
        })?;
    }
    Ok(x)
}

/// What makes one device's products whole.
enum Parallel<'a> {
    /// One device holds every weight whole: nothing to add up.
    None,
    /// A tensor-parallel rank: the attention output and feed-forward down matrices hold only
    /// the columns of this rank's heads and feed-forward rows, and the word embeddings only the
    /// rows `vocab`; their products are summed over `comm`. Every local step is agreed on, so
    /// a rank that fails makes every rank return the same error instead of leaving the others
    /// waiting in the next sum.
    Tensor {
        comm: &'a dyn Comm,
        device: &'a Device,
        vocab: Range<usize>,
    },
}

impl Parallel<'_> {
    /// A step every rank computes alike (replicated weights).
    fn step(&self, during: &str, f: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        match self {
            Parallel::None => f(),
            Parallel::Tensor { comm, .. } => agreed(*comm, during, f()),
        }
    }

    /// `l` applied to what `input` computes: on one device the fused `x · Wᵀ + b`; on a rank,
    /// its partial product summed over the ranks (on the host, in rank order), then the bias once.
    fn project(
        &self,
        during: &str,
        l: &Linear,
        input: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        match self {
            Parallel::None => linear(&input()?, l),
            Parallel::Tensor { comm, device, .. } => {
                let partial = input().and_then(|x| {
                    let y = matmul::linear(&x, &l.weight, None)?;
                    Ok((y.shape().dims().to_vec(), y.to_f32_vec()?))
                });
                let (dims, mut values) = agreed(*comm, during, partial)?;
                comm.all_reduce_sum(&mut values)?;
                agreed(*comm, during, upload(device, during, dims, &values))
                    .and_then(|sum| elementwise::add(&sum, &l.bias))
            }
        }
    }

    /// The word embeddings of `ids`: on a rank, its vocabulary rows looked up, every other
    /// token's row zero, summed over the ranks.
    fn words(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        match self {
            Parallel::None => embedding::embedding(table, ids),
            Parallel::Tensor {
                comm,
                device,
                vocab,
            } => {
                const DURING: &str = "word embeddings";
                let dim = table.shape().dims().get(1).copied().unwrap_or(0);
                let local = (|| {
                    let mine = |id: &u32| vocab.contains(&(*id as usize));
                    // Tokens outside the rank's rows look up its first row, then are zeroed.
                    let local: Vec<u32> = ids
                        .iter()
                        .map(|id| {
                            if mine(id) {
                                *id - vocab.start as u32
                            } else {
                                0
                            }
                        })
                        .collect();
                    let mut values = embedding::embedding(table, &local)?.to_f32_vec()?;
                    for (row, id) in values.chunks_mut(dim.max(1)).zip(ids) {
                        if !mine(id) {
                            row.fill(0.0);
                        }
                    }
                    Ok(values)
                })();
                let mut values = agreed(*comm, DURING, local)?;
                comm.all_reduce_sum(&mut values)?;
                agreed(
                    *comm,
                    DURING,
                    upload(device, DURING, vec![ids.len(), dim], &values),
                )
            }
        }
    }
}

fn upload(device: &Device, during: &str, dims: Vec<usize>, values: &[f32]) -> Result<Tensor> {
    Tensor::from_f32(during, dims, values)?.to_device(device)
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
