//! Tensor name maps between Hugging Face and GGUF (llama.cpp) conventions.
//!
//! A [`NameMap`] translates names in both directions for one [`Arch`]:
//!
//! ```
//! use mlmf_core::formats::names::{Arch, NameMap};
//! let map = NameMap::new(Arch::Llama);
//! assert_eq!(map.hf_to_gguf("model.layers.12.self_attn.q_proj.weight"), "blk.12.attn_q.weight");
//! assert_eq!(map.gguf_to_hf("output_norm.weight"), "model.norm.weight");
//! // A name the tables do not know passes through unchanged; it never fails a load.
//! assert_eq!(map.hf_to_gguf("my.adapter.weight"), "my.adapter.weight");
//! ```
//!
//! # Where the tables come from
//!
//! They are transcribed from llama.cpp's own converter, not written from memory:
//! `gguf-py/gguf/constants.py` (`TENSOR_NAMES`, the GGUF names, and `MODEL_TENSORS`, which tensor
//! kinds each architecture has), `gguf-py/gguf/tensor_mapping.py` (`TensorNameMap`, the Hugging
//! Face names of each kind) and the per-model classes of `convert_hf_to_gguf.py` (now split into
//! `conversion/{llama,qwen,gemma,phi,bert}.py`) for what a model class skips or renames. Only the
//! Hugging Face `transformers` spellings are listed (`model.layers.{N}...`), not the other
//! checkpoint layouts `tensor_mapping.py` also accepts (Meta's `layers.{N}.attention.wq`, ...).
//!
//! Like llama.cpp's `TensorNameMap.get_name(.., try_suffixes=(".weight", ".bias"))`, the tables
//! hold name stems; a `.weight` or `.bias` suffix is carried across unchanged. `{N}` stands for
//! the block (layer) number, any count of decimal digits, copied verbatim.
//!
//! Every table is a bijection, so for every entry `gguf_to_hf(hf_to_gguf(x)) == x` and back.
//!
//! # What the tables do not cover
//!
//! - Tensors llama.cpp drops when converting have no GGUF name and pass through:
//!   `*.rotary_emb.inv_freq` (every model), `lm_head.weight` for Gemma and Gemma 2 (tied to the
//!   embeddings; llama.cpp skips it), and for BERT `embeddings.position_ids` and
//!   `pooler.dense.{weight,bias}` ("we are only using BERT for embeddings so we don't need the
//!   pooling layer") and the `cls.predictions.*` / `cls.seq_relationship.*` pre-training heads.
//! - Tensors llama.cpp generates from `config.json` have no Hugging Face name and pass through:
//!   `rope_freqs.weight` (Llama 3 rope scaling) and `rope_factors_{long,short}.weight` (Phi-3).
//! - Mixture-of-experts tensors: llama.cpp stacks the per-expert matrices
//!   (`model.layers.{N}.block_sparse_moe.experts.{E}.w1.weight`, ...) into one
//!   `blk.{N}.ffn_gate_exps.weight`; that is a many-to-one merge, not a rename. The router can be
//!   named with a user [`Rule`].
//! - Wrapper prefixes of other model classes are not stripped, except BERT's `bert.` (see
//!   [`NameMap::hf_to_gguf`]): e.g. the `language_model.` of `Gemma3ForConditionalGeneration`
//!   checkpoints. The Gemma 3 table covers `Gemma3ForCausalLM` names.
//!
//! # Names map; data may not
//!
//! A name that maps does not promise the same bytes. llama.cpp changes some tensors' data while
//! converting, and a loader must undo or redo that:
//!
//! - **q/k row permutation** ([`needs_qk_permute`]): llama.cpp's `LlamaModel` (registered for
//!   `LlamaForCausalLM`, `MistralForCausalLM` and `MixtralForCausalLM`) has `undo_permute = True`
//!   and reorders the rows of `q_proj` and `k_proj` (weights and biases) from Hugging Face's
//!   rotate-half RoPE layout to GGML's interleaved one:
//!   `w.reshape(n_head, 2, rows / n_head / 2, ...).swapaxes(1, 2).reshape(w.shape)`, with
//!   `n_head = num_key_value_heads` for `k_proj`. So `blk.{N}.attn_q.weight` holds the rows of
//!   `model.layers.{N}.self_attn.q_proj.weight` in another order. Qwen2, Gemma and Phi-3 run
//!   NEOX-style RoPE in llama.cpp and are not permuted; BERT has no RoPE.
//! - **Gemma norms** ([`needs_norm_plus_one`]): Gemma's RMSNorm multiplies by `1 + weight`;
//!   llama.cpp's `GemmaModel`, `Gemma2Model` and `Gemma3Model` store `weight + 1` for every
//!   tensor whose Hugging Face name ends in `norm.weight`.
//! - **Gemma 3 embeddings**: llama.cpp drops the out-of-vocabulary rows of
//!   `model.embed_tokens.weight`, so `token_embd.weight` can have fewer rows.
//! - **Phi-3 fused tensors** keep their fused layout: `self_attn.qkv_proj` is `attn_qkv` and
//!   `mlp.gate_up_proj` (gate rows, then up rows) is `ffn_up`; llama.cpp splits them at run time.
//!
//! Applying these data transforms is not done here.
//!
//! # User rules
//!
//! [`NameMap::with_rule`] adds a [`Rule`], tried before the tables, in the order added; the first
//! rule that matches gives the answer. Rules work in both directions.

use std::borrow::Cow;

use crate::error::{Error, Result};

/// A model architecture whose tensor names the tables cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Llama,
    /// Mistral 7B-style dense models. llama.cpp converts them as `llama` (same names, same q/k
    /// permutation), so a GGUF file never says `mistral`.
    Mistral,
    Qwen2,
    Gemma,
    Gemma2,
    Gemma3,
    Phi3,
    Bert,
}

impl Arch {
    /// Every architecture, in declaration order.
    pub const ALL: [Arch; 8] = [
        Arch::Llama,
        Arch::Mistral,
        Arch::Qwen2,
        Arch::Gemma,
        Arch::Gemma2,
        Arch::Gemma3,
        Arch::Phi3,
        Arch::Bert,
    ];

    /// The architecture of a GGUF file's `general.architecture` value (`llama`, `qwen2`, `gemma`,
    /// `gemma2`, `gemma3`, `phi3`, `bert`). `None` for any other value.
    pub fn from_gguf(architecture: &str) -> Option<Arch> {
        Some(match architecture {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma" => Arch::Gemma,
            "gemma2" => Arch::Gemma2,
            "gemma3" => Arch::Gemma3,
            "phi3" => Arch::Phi3,
            "bert" => Arch::Bert,
            _ => return None,
        })
    }

    /// The architecture of a Hugging Face `config.json` `model_type` (`llama`, `mistral`,
    /// `gemma3_text`, ...) or of one of its `architectures` class names (`LlamaForCausalLM`,
    /// `BertModel`, ...). `None` for any other value.
    pub fn from_hf(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" | "LlamaForCausalLM" | "LlamaModel" => Arch::Llama,
            "mistral" | "MistralForCausalLM" | "MistralModel" => Arch::Mistral,
            "qwen2" | "Qwen2ForCausalLM" | "Qwen2Model" => Arch::Qwen2,
            "gemma" | "GemmaForCausalLM" | "GemmaModel" => Arch::Gemma,
            "gemma2" | "Gemma2ForCausalLM" | "Gemma2Model" => Arch::Gemma2,
            "gemma3" | "gemma3_text" | "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration" => {
                Arch::Gemma3
            }
            "phi3" | "Phi3ForCausalLM" | "Phi3Model" => Arch::Phi3,
            "bert"
            | "BertModel"
            | "BertForMaskedLM"
            | "BertForPreTraining"
            | "BertForSequenceClassification" => Arch::Bert,
            _ => return None,
        })
    }

    /// The architecture of a parsed Hugging Face `config.json`: the first of its `architectures`
    /// that [`Arch::from_hf`] knows, else its `model_type`.
    pub fn from_hf_config(config: &serde_json::Value) -> Option<Arch> {
        let classes = config.get("architectures").and_then(|a| a.as_array());
        classes
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
            .find_map(Arch::from_hf)
            .or_else(|| config.get("model_type")?.as_str().and_then(Arch::from_hf))
    }

    /// The `general.architecture` value llama.cpp writes for this architecture.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama | Arch::Mistral => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma => "gemma",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
            Arch::Phi3 => "phi3",
            Arch::Bert => "bert",
        }
    }

    /// The table for this architecture, as the groups of entries it is made of.
    fn table(self) -> &'static [&'static [Entry]] {
        match self {
            Arch::Llama | Arch::Mistral | Arch::Qwen2 => {
                &[DECODER_IO, LM_HEAD, PRE_NORMS, ATTN, MLP]
            }
            Arch::Gemma => &[DECODER_IO, PRE_NORMS, ATTN, MLP],
            Arch::Gemma2 => &[DECODER_IO, SANDWICH_NORMS, ATTN, MLP],
            Arch::Gemma3 => &[DECODER_IO, LM_HEAD, SANDWICH_NORMS, ATTN, QK_NORMS, MLP],
            Arch::Phi3 => &[DECODER_IO, LM_HEAD, PRE_NORMS, ATTN, PHI3_FUSED],
            Arch::Bert => &[BERT],
        }
    }
}

/// Whether llama.cpp permutes the rows of `q_proj`/`k_proj` (weights and biases) when it
/// converts this architecture, so the GGUF `attn_q`/`attn_k` data differs in row order from the
/// Hugging Face tensor of the same mapped name. True for Llama and Mistral (`LlamaModel.permute`
/// in `convert_hf_to_gguf.py`); see the module documentation for the formula.
pub fn needs_qk_permute(arch: Arch) -> bool {
    matches!(arch, Arch::Llama | Arch::Mistral)
}

/// llama.cpp's `LlamaModel.permute` (see the module documentation) applied to the rows of `data`
/// (`rows` rows of equal length, any element type: f32 values, or a row's raw bytes), or undone:
/// `reshape(n_head, 2, rows / n_head / 2, -1).swapaxes(1, 2)`, so Hugging Face row
/// `h·2·half + s·half + i` becomes GGUF row `h·2·half + 2·i + s`. `None` when the rows do not
/// split into `n_head` heads of even size.
pub fn permute_rows<T: Copy + Default>(
    data: &[T],
    rows: usize,
    n_head: usize,
    to_gguf: bool,
) -> Option<Vec<T>> {
    if n_head == 0
        || rows == 0
        || !rows.is_multiple_of(2 * n_head)
        || !data.len().is_multiple_of(rows)
    {
        return None;
    }
    let cols = data.len() / rows;
    let half = rows / n_head / 2;
    let mut out = vec![T::default(); data.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for i in 0..half {
                let hf = h * 2 * half + s * half + i;
                let gguf = h * 2 * half + 2 * i + s;
                let (from, to) = if to_gguf { (hf, gguf) } else { (gguf, hf) };
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&data[from * cols..(from + 1) * cols]);
            }
        }
    }
    Some(out)
}

/// The architecture of a model file: its `general.architecture` (GGUF), else the
/// `config.json` beside it (Hugging Face).
pub fn arch_of(file: &crate::ModelFile) -> Option<Arch> {
    if file.format() == crate::Format::Gguf {
        let a = file.metadata().get("general.architecture")?.as_str()?;
        return Arch::from_gguf(a);
    }
    Arch::from_hf_config(&hf_config(file)?)
}

/// `(n_head, n_head_kv)` for [`permute_rows`]: `{arch}.attention.head_count{,_kv}` of a GGUF
/// file, else `num_attention_heads` / `num_key_value_heads` of the `config.json` beside it.
pub fn head_counts(file: &crate::ModelFile, arch: Arch) -> Option<(usize, usize)> {
    let (n, kv) = if file.format() == crate::Format::Gguf {
        let key = |k: &str| format!("{}.attention.{k}", arch.gguf_name());
        let meta = file.metadata();
        let n = meta.get(&key("head_count"))?.as_u64()?;
        (n, meta.get(&key("head_count_kv")).and_then(|v| v.as_u64()))
    } else {
        let config = hf_config(file)?;
        let n = config.get("num_attention_heads")?.as_u64()?;
        (
            n,
            config.get("num_key_value_heads").and_then(|v| v.as_u64()),
        )
    };
    Some((n as usize, kv.unwrap_or(n) as usize))
}

/// The parsed `config.json` beside a Hugging Face model file, if there is a readable one.
fn hf_config(file: &crate::ModelFile) -> Option<serde_json::Value> {
    let path = file.path();
    let dir = if path.is_dir() { path } else { path.parent()? };
    let text = crate::files::read_regular_to_string(&dir.join("config.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether llama.cpp stores `weight + 1` for this architecture's normalisation weights (every
/// tensor whose Hugging Face name ends in `norm.weight`). True for Gemma, Gemma 2 and Gemma 3.
pub fn needs_norm_plus_one(arch: Arch) -> bool {
    matches!(arch, Arch::Gemma | Arch::Gemma2 | Arch::Gemma3)
}

// ---- the tables ----------------------------------------------------------------------------
//
// One entry: (Hugging Face stem, GGUF stem). The comment on each names llama.cpp's
// `MODEL_TENSOR` kind, so an entry can be checked against `constants.py` and `tensor_mapping.py`.

type Entry = (&'static str, &'static str);

/// Embeddings and final norm of the decoder-only models.
const DECODER_IO: &[Entry] = &[
    ("model.embed_tokens", "token_embd"), // TOKEN_EMBD
    ("model.norm", "output_norm"),        // OUTPUT_NORM
];

/// The output projection, where llama.cpp keeps it (not Gemma, Gemma 2: they skip `lm_head`).
const LM_HEAD: &[Entry] = &[
    ("lm_head", "output"), // OUTPUT
];

/// Pre-norm blocks (Llama, Mistral, Qwen2, Gemma, Phi-3).
const PRE_NORMS: &[Entry] = &[
    ("model.layers.{N}.input_layernorm", "blk.{N}.attn_norm"), // ATTN_NORM
    (
        "model.layers.{N}.post_attention_layernorm",
        "blk.{N}.ffn_norm",
    ), // FFN_NORM
];

/// Gemma 2 and 3: a norm before and after both attention and MLP. Their `MODEL_TENSORS` have
/// ATTN_POST_NORM and FFN_PRE_NORM instead of FFN_NORM, so `post_attention_layernorm` is the
/// *post-attention* norm here, not the FFN norm it is in Llama.
const SANDWICH_NORMS: &[Entry] = &[
    ("model.layers.{N}.input_layernorm", "blk.{N}.attn_norm"), // ATTN_NORM
    (
        "model.layers.{N}.post_attention_layernorm",
        "blk.{N}.post_attention_norm",
    ), // ATTN_POST_NORM
    (
        "model.layers.{N}.pre_feedforward_layernorm",
        "blk.{N}.ffn_norm",
    ), // FFN_PRE_NORM
    (
        "model.layers.{N}.post_feedforward_layernorm",
        "blk.{N}.post_ffw_norm",
    ), // FFN_POST_NORM
];

const ATTN: &[Entry] = &[
    ("model.layers.{N}.self_attn.q_proj", "blk.{N}.attn_q"), // ATTN_Q
    ("model.layers.{N}.self_attn.k_proj", "blk.{N}.attn_k"), // ATTN_K
    ("model.layers.{N}.self_attn.v_proj", "blk.{N}.attn_v"), // ATTN_V
    ("model.layers.{N}.self_attn.o_proj", "blk.{N}.attn_output"), // ATTN_OUT
];

/// Gemma 3's per-head RMSNorm on queries and keys.
const QK_NORMS: &[Entry] = &[
    ("model.layers.{N}.self_attn.q_norm", "blk.{N}.attn_q_norm"), // ATTN_Q_NORM
    ("model.layers.{N}.self_attn.k_norm", "blk.{N}.attn_k_norm"), // ATTN_K_NORM
];

const MLP: &[Entry] = &[
    ("model.layers.{N}.mlp.gate_proj", "blk.{N}.ffn_gate"), // FFN_GATE
    ("model.layers.{N}.mlp.up_proj", "blk.{N}.ffn_up"),     // FFN_UP
    ("model.layers.{N}.mlp.down_proj", "blk.{N}.ffn_down"), // FFN_DOWN
];

/// Phi-3: fused QKV and fused gate+up (PHI3 has no FFN_GATE kind; the fused tensor is FFN_UP).
const PHI3_FUSED: &[Entry] = &[
    ("model.layers.{N}.self_attn.qkv_proj", "blk.{N}.attn_qkv"), // ATTN_QKV
    ("model.layers.{N}.mlp.gate_up_proj", "blk.{N}.ffn_up"),     // FFN_UP
    ("model.layers.{N}.mlp.down_proj", "blk.{N}.ffn_down"),      // FFN_DOWN
];

/// BERT as `BertModel` names it (llama.cpp strips a `bert.` prefix first; see
/// [`NameMap::hf_to_gguf`]).
const BERT: &[Entry] = &[
    ("embeddings.word_embeddings", "token_embd"), // TOKEN_EMBD
    ("embeddings.token_type_embeddings", "token_types"), // TOKEN_TYPES
    ("embeddings.position_embeddings", "position_embd"), // POS_EMBD
    ("embeddings.LayerNorm", "token_embd_norm"),  // TOKEN_EMBD_NORM
    ("encoder.layer.{N}.attention.self.query", "blk.{N}.attn_q"), // ATTN_Q
    ("encoder.layer.{N}.attention.self.key", "blk.{N}.attn_k"), // ATTN_K
    ("encoder.layer.{N}.attention.self.value", "blk.{N}.attn_v"), // ATTN_V
    (
        "encoder.layer.{N}.attention.output.dense",
        "blk.{N}.attn_output",
    ), // ATTN_OUT
    (
        "encoder.layer.{N}.attention.output.LayerNorm",
        "blk.{N}.attn_output_norm",
    ), // ATTN_OUT_NORM
    ("encoder.layer.{N}.intermediate.dense", "blk.{N}.ffn_up"), // FFN_UP
    ("encoder.layer.{N}.output.dense", "blk.{N}.ffn_down"), // FFN_DOWN
    (
        "encoder.layer.{N}.output.LayerNorm",
        "blk.{N}.layer_output_norm",
    ), // LAYER_OUT_NORM
    ("classifier.dense", "cls"),                  // CLS (RoBERTa-style classification head)
    ("classifier.out_proj", "cls.output"),        // CLS_OUT
];

/// The suffixes carried across a table lookup, like llama.cpp's `try_suffixes`.
const SUFFIXES: [&str; 2] = [".weight", ".bias"];

// ---- user rules ----------------------------------------------------------------------------

/// A user rule: one Hugging Face name and one GGUF name that map to each other, checked before
/// the built-in tables in both directions. What a rule gives is the answer: the tables are not
/// applied to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    hf: String,
    gguf: String,
    kind: RuleKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RuleKind {
    /// Whole names, with `{N}`-style placeholders.
    Pattern,
    /// A literal prefix; the rest of the name is kept as it is.
    Prefix,
}

impl Rule {
    /// A rule between two whole-name patterns, e.g.
    /// `Rule::new("model.layers.{N}.block_sparse_moe.gate.weight", "blk.{N}.ffn_gate_inp.weight")`.
    ///
    /// A placeholder is a name in braces (`{N}`, `{E}`) and matches one or more decimal digits,
    /// which are copied verbatim to the other side; a placeholder used twice on one side must
    /// match the same digits both times. Everything else, `.weight` included, must match
    /// literally. Both sides must use the same placeholders; a placeholder may not be followed
    /// directly by another one or by a digit (the match would be ambiguous).
    pub fn new(hf: impl Into<String>, gguf: impl Into<String>) -> Result<Rule> {
        let (hf, gguf) = (hf.into(), gguf.into());
        let hf_names =
            placeholders(&hf).map_err(|r| rule_error(&hf, &gguf, &format!("hf side: {r}")))?;
        let gguf_names =
            placeholders(&gguf).map_err(|r| rule_error(&hf, &gguf, &format!("gguf side: {r}")))?;
        if hf_names != gguf_names {
            return Err(rule_error(
                &hf,
                &gguf,
                &format!(
                    "the two sides use different placeholders ({hf_names:?} and {gguf_names:?})"
                ),
            ));
        }
        Ok(Rule {
            hf,
            gguf,
            kind: RuleKind::Pattern,
        })
    }

    /// A literal prefix replacement: a Hugging Face name that starts with `hf` maps to `gguf`
    /// followed by the rest of the name, and a GGUF name that starts with `gguf` maps back.
    /// Braces are literal here. E.g. `Rule::prefix("vision_tower.", "v.")`.
    pub fn prefix(hf: impl Into<String>, gguf: impl Into<String>) -> Result<Rule> {
        let (hf, gguf) = (hf.into(), gguf.into());
        if hf.is_empty() && gguf.is_empty() {
            return Err(rule_error(&hf, &gguf, "both prefixes are empty"));
        }
        Ok(Rule {
            hf,
            gguf,
            kind: RuleKind::Prefix,
        })
    }

    fn apply(&self, name: &str, dir: Dir) -> Option<String> {
        let (from, to) = dir.pick(&self.hf, &self.gguf);
        match self.kind {
            RuleKind::Prefix => name.strip_prefix(from).map(|rest| format!("{to}{rest}")),
            RuleKind::Pattern => {
                let mut caps = Vec::new();
                match_pattern(from, name, &mut caps).then(|| render(to, &caps))
            }
        }
    }
}

fn rule_error(hf: &str, gguf: &str, reason: &str) -> Error {
    Error::BadNameRule {
        hf: hf.to_string(),
        gguf: gguf.to_string(),
        reason: reason.to_string(),
    }
}

// ---- the map -------------------------------------------------------------------------------

/// Tensor names of one architecture, Hugging Face to GGUF and back. See the module docs.
#[derive(Clone, Debug)]
pub struct NameMap {
    arch: Arch,
    rules: Vec<Rule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    HfToGguf,
    GgufToHf,
}

impl Dir {
    fn pick<'a>(self, hf: &'a str, gguf: &'a str) -> (&'a str, &'a str) {
        match self {
            Dir::HfToGguf => (hf, gguf),
            Dir::GgufToHf => (gguf, hf),
        }
    }
}

impl NameMap {
    /// The built-in tables for `arch`, with no user rules.
    pub fn new(arch: Arch) -> NameMap {
        NameMap {
            arch,
            rules: Vec::new(),
        }
    }

    /// Add a user rule, tried before the tables and after the rules added earlier.
    pub fn with_rule(mut self, rule: Rule) -> NameMap {
        self.rules.push(rule);
        self
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The GGUF name of a Hugging Face tensor name; the name itself if nothing maps it.
    ///
    /// For BERT this also accepts what llama.cpp's converter normalises before mapping: a
    /// `bert.` prefix (`BertForMaskedLM` and friends) and TensorFlow-era `.gamma`/`.beta`
    /// suffixes for `.weight`/`.bias`. These are one-way: [`NameMap::gguf_to_hf`] gives the
    /// plain `BertModel` name.
    pub fn hf_to_gguf<'a>(&self, name: &'a str) -> Cow<'a, str> {
        self.map(name, Dir::HfToGguf)
            .map_or(Cow::Borrowed(name), Cow::Owned)
    }

    /// The Hugging Face name of a GGUF tensor name; the name itself if nothing maps it.
    pub fn gguf_to_hf<'a>(&self, name: &'a str) -> Cow<'a, str> {
        self.map(name, Dir::GgufToHf)
            .map_or(Cow::Borrowed(name), Cow::Owned)
    }

    fn map(&self, name: &str, dir: Dir) -> Option<String> {
        if let Some(out) = self.rules.iter().find_map(|r| r.apply(name, dir)) {
            return Some(out);
        }
        let table = self.arch.table();
        if let Some(out) = lookup(table, name, dir) {
            return Some(out);
        }
        if dir == Dir::HfToGguf && self.arch == Arch::Bert {
            return lookup(table, &bert_normalize(name)?, dir);
        }
        None
    }
}

/// What llama.cpp's `BertModel.filter_tensors` renames before mapping; `None` if nothing.
fn bert_normalize(name: &str) -> Option<String> {
    let stripped = name.strip_prefix("bert.").unwrap_or(name);
    let out = if let Some(stem) = stripped.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = stripped.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        stripped.to_string()
    };
    (out != name).then_some(out)
}

/// Look `name` up in a table: first as it is, then with a `.weight` or `.bias` suffix set aside
/// and put back on the result.
fn lookup(table: &[&[Entry]], name: &str, dir: Dir) -> Option<String> {
    let stems = std::iter::once((name, "")).chain(
        SUFFIXES
            .iter()
            .filter_map(|s| Some((name.strip_suffix(s)?, *s))),
    );
    let mut caps = Vec::new();
    for (stem, suffix) in stems {
        for &(hf, gguf) in table.iter().copied().flatten() {
            let (from, to) = dir.pick(hf, gguf);
            if match_pattern(from, stem, &mut caps) {
                let mut out = render(to, &caps);
                out.push_str(suffix);
                return Some(out);
            }
        }
    }
    None
}

// ---- patterns ------------------------------------------------------------------------------

/// Placeholder values found by [`match_pattern`]: (placeholder name, digits).
type Captures<'p, 'n> = Vec<(&'p str, &'n str)>;

/// Whether `name` matches `pattern` as a whole. A `{X}` placeholder matches the longest run of
/// one or more ASCII digits there (patterns are checked by [`placeholders`] so that the longest
/// run is the only possible one); the digits are recorded in `caps`.
fn match_pattern<'p, 'n>(pattern: &'p str, name: &'n str, caps: &mut Captures<'p, 'n>) -> bool {
    caps.clear();
    let (mut pat, mut rest) = (pattern, name);
    while let Some(open) = pat.find('{') {
        let Some(tail) = rest.strip_prefix(&pat[..open]) else {
            return false;
        };
        let Some(close) = pat[open..].find('}') else {
            return false;
        };
        let key = &pat[open + 1..open + close];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        let value = &tail[..digits];
        match caps.iter().find(|(k, _)| *k == key) {
            Some((_, seen)) if *seen != value => return false,
            Some(_) => {}
            None => caps.push((key, value)),
        }
        pat = &pat[open + close + 1..];
        rest = &tail[digits..];
    }
    rest == pat
}

/// `pattern` with each `{X}` replaced by its captured digits.
fn render(pattern: &str, caps: &Captures<'_, '_>) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut pat = pattern;
    while let Some(open) = pat.find('{') {
        out.push_str(&pat[..open]);
        let Some(close) = pat[open..].find('}') else {
            break;
        };
        let key = &pat[open + 1..open + close];
        match caps.iter().find(|(k, _)| *k == key) {
            Some((_, value)) => out.push_str(value),
            // Unreachable for checked patterns; keep the text rather than panic.
            None => out.push_str(&pat[open..=open + close]),
        }
        pat = &pat[open + close + 1..];
    }
    out.push_str(pat);
    out
}

/// The sorted, distinct placeholder names of a pattern, or why the pattern is not valid.
fn placeholders(pattern: &str) -> Result<Vec<&str>, String> {
    if pattern.is_empty() {
        return Err("empty pattern".into());
    }
    let mut names = Vec::new();
    let mut pat = pattern;
    while let Some(open) = pat.find(['{', '}']) {
        if pat.as_bytes()[open] == b'}' {
            return Err(format!("'}}' without '{{' in '{pattern}'"));
        }
        let Some(close) = pat[open..].find('}') else {
            return Err(format!("'{{' without '}}' in '{pattern}'"));
        };
        let key = &pat[open + 1..open + close];
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "placeholder '{{{key}}}' is not a name of letters, digits and '_'"
            ));
        }
        pat = &pat[open + close + 1..];
        match pat.bytes().next() {
            Some(b'{') => return Err(format!("placeholders follow each other in '{pattern}'")),
            Some(b) if b.is_ascii_digit() => {
                return Err(format!(
                    "placeholder '{{{key}}}' is followed by a digit in '{pattern}'"
                ))
            }
            _ => {}
        }
        names.push(key);
    }
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn entries(arch: Arch) -> impl Iterator<Item = Entry> {
        arch.table().iter().copied().flatten().copied()
    }

    /// `pattern` with every placeholder set to `n`.
    fn at(pattern: &str, n: &str) -> String {
        render(pattern, &vec![("N", n)])
    }

    #[test]
    fn every_table_pattern_is_valid_with_the_same_placeholders_on_both_sides() {
        for arch in Arch::ALL {
            for (hf, gguf) in entries(arch) {
                let (h, g) = (placeholders(hf).unwrap(), placeholders(gguf).unwrap());
                assert_eq!(h, g, "{arch:?}: {hf} <-> {gguf}");
                assert!(h.is_empty() || h == ["N"], "{arch:?}: {hf}");
            }
        }
    }

    #[test]
    fn every_table_is_a_bijection() {
        for arch in Arch::ALL {
            let (mut hf_seen, mut gguf_seen) = (HashSet::new(), HashSet::new());
            for (hf, gguf) in entries(arch) {
                assert!(hf_seen.insert(hf), "{arch:?}: HF name {hf} listed twice");
                assert!(
                    gguf_seen.insert(gguf),
                    "{arch:?}: GGUF name {gguf} listed twice"
                );
            }
        }
    }

    #[test]
    fn round_trip_every_entry_of_every_arch() {
        for arch in Arch::ALL {
            let map = NameMap::new(arch);
            for (hf, gguf) in entries(arch) {
                for n in ["0", "7", "31", "123"] {
                    for suffix in ["", ".weight", ".bias"] {
                        let h = format!("{}{suffix}", at(hf, n));
                        let g = format!("{}{suffix}", at(gguf, n));
                        assert_eq!(map.hf_to_gguf(&h), g, "{arch:?}");
                        assert_eq!(map.gguf_to_hf(&g), h, "{arch:?}");
                        assert_eq!(map.gguf_to_hf(&map.hf_to_gguf(&h)), h, "{arch:?}");
                        assert_eq!(map.hf_to_gguf(&map.gguf_to_hf(&g)), g, "{arch:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn names_already_in_the_target_convention_pass_through() {
        // No HF pattern matches a GGUF name of the same table and vice versa, so a map can be
        // applied to a file without knowing which convention it uses.
        for arch in Arch::ALL {
            let map = NameMap::new(arch);
            for (hf, gguf) in entries(arch) {
                let g = format!("{}.weight", at(gguf, "3"));
                let h = format!("{}.weight", at(hf, "3"));
                assert_eq!(map.hf_to_gguf(&g), g, "{arch:?}");
                assert_eq!(map.gguf_to_hf(&h), h, "{arch:?}");
            }
        }
    }

    #[test]
    fn llama_names() {
        let map = NameMap::new(Arch::Llama);
        let pairs = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            (
                "model.layers.0.input_layernorm.weight",
                "blk.0.attn_norm.weight",
            ),
            (
                "model.layers.0.self_attn.q_proj.weight",
                "blk.0.attn_q.weight",
            ),
            (
                "model.layers.1.self_attn.k_proj.weight",
                "blk.1.attn_k.weight",
            ),
            (
                "model.layers.2.self_attn.v_proj.weight",
                "blk.2.attn_v.weight",
            ),
            (
                "model.layers.3.self_attn.o_proj.weight",
                "blk.3.attn_output.weight",
            ),
            (
                "model.layers.4.post_attention_layernorm.weight",
                "blk.4.ffn_norm.weight",
            ),
            (
                "model.layers.5.mlp.gate_proj.weight",
                "blk.5.ffn_gate.weight",
            ),
            ("model.layers.6.mlp.up_proj.weight", "blk.6.ffn_up.weight"),
            (
                "model.layers.29.mlp.down_proj.weight",
                "blk.29.ffn_down.weight",
            ),
        ];
        for (hf, gguf) in pairs {
            assert_eq!(map.hf_to_gguf(hf), gguf);
            assert_eq!(map.gguf_to_hf(gguf), hf);
        }
        // Generated by the converter, no HF counterpart; dropped by the converter, no GGUF one.
        assert_eq!(map.gguf_to_hf("rope_freqs.weight"), "rope_freqs.weight");
        let inv_freq = "model.layers.0.self_attn.rotary_emb.inv_freq";
        assert_eq!(map.hf_to_gguf(inv_freq), inv_freq);
    }

    #[test]
    fn qwen2_biases_map() {
        let map = NameMap::new(Arch::Qwen2);
        assert_eq!(
            map.hf_to_gguf("model.layers.3.self_attn.k_proj.bias"),
            "blk.3.attn_k.bias"
        );
        assert_eq!(
            map.gguf_to_hf("blk.3.attn_v.bias"),
            "model.layers.3.self_attn.v_proj.bias"
        );
    }

    #[test]
    fn post_attention_layernorm_depends_on_the_arch() {
        let name = "model.layers.2.post_attention_layernorm.weight";
        assert_eq!(
            NameMap::new(Arch::Gemma).hf_to_gguf(name),
            "blk.2.ffn_norm.weight"
        );
        for arch in [Arch::Gemma2, Arch::Gemma3] {
            let map = NameMap::new(arch);
            assert_eq!(map.hf_to_gguf(name), "blk.2.post_attention_norm.weight");
            assert_eq!(
                map.hf_to_gguf("model.layers.2.pre_feedforward_layernorm.weight"),
                "blk.2.ffn_norm.weight"
            );
            assert_eq!(
                map.gguf_to_hf("blk.2.post_ffw_norm.weight"),
                "model.layers.2.post_feedforward_layernorm.weight"
            );
        }
        let g3 = NameMap::new(Arch::Gemma3);
        assert_eq!(
            g3.gguf_to_hf("blk.0.attn_q_norm.weight"),
            "model.layers.0.self_attn.q_norm.weight"
        );
        // Gemma 3 has a q/k norm; Gemma 2 does not, so the name passes through there.
        let q_norm = "blk.0.attn_q_norm.weight";
        assert_eq!(NameMap::new(Arch::Gemma2).gguf_to_hf(q_norm), q_norm);
    }

    #[test]
    fn gemma_and_gemma2_have_no_output_tensor() {
        for arch in [Arch::Gemma, Arch::Gemma2] {
            let map = NameMap::new(arch);
            assert_eq!(map.hf_to_gguf("lm_head.weight"), "lm_head.weight");
            assert_eq!(map.gguf_to_hf("output.weight"), "output.weight");
        }
        assert_eq!(
            NameMap::new(Arch::Gemma3).hf_to_gguf("lm_head.weight"),
            "output.weight"
        );
    }

    #[test]
    fn phi3_fused_tensors() {
        let map = NameMap::new(Arch::Phi3);
        assert_eq!(
            map.hf_to_gguf("model.layers.7.self_attn.qkv_proj.weight"),
            "blk.7.attn_qkv.weight"
        );
        assert_eq!(
            map.gguf_to_hf("blk.7.ffn_up.weight"),
            "model.layers.7.mlp.gate_up_proj.weight"
        );
        assert_eq!(
            map.gguf_to_hf("rope_factors_long.weight"),
            "rope_factors_long.weight"
        );
    }

    #[test]
    fn bert_names_and_converter_normalisations() {
        let map = NameMap::new(Arch::Bert);
        let pairs = [
            ("embeddings.word_embeddings.weight", "token_embd.weight"),
            (
                "embeddings.position_embeddings.weight",
                "position_embd.weight",
            ),
            (
                "embeddings.token_type_embeddings.weight",
                "token_types.weight",
            ),
            ("embeddings.LayerNorm.bias", "token_embd_norm.bias"),
            (
                "encoder.layer.10.attention.self.query.weight",
                "blk.10.attn_q.weight",
            ),
            (
                "encoder.layer.0.attention.output.LayerNorm.weight",
                "blk.0.attn_output_norm.weight",
            ),
            (
                "encoder.layer.0.intermediate.dense.bias",
                "blk.0.ffn_up.bias",
            ),
            (
                "encoder.layer.0.output.dense.weight",
                "blk.0.ffn_down.weight",
            ),
            (
                "encoder.layer.0.output.LayerNorm.weight",
                "blk.0.layer_output_norm.weight",
            ),
        ];
        for (hf, gguf) in pairs {
            assert_eq!(map.hf_to_gguf(hf), gguf);
            assert_eq!(map.gguf_to_hf(gguf), hf);
        }
        // One way, as llama.cpp's converter does it.
        assert_eq!(
            map.hf_to_gguf("bert.encoder.layer.1.attention.self.key.bias"),
            "blk.1.attn_k.bias"
        );
        assert_eq!(
            map.hf_to_gguf("bert.embeddings.LayerNorm.gamma"),
            "token_embd_norm.weight"
        );
        assert_eq!(
            map.hf_to_gguf("bert.pooler.dense.weight"),
            "bert.pooler.dense.weight"
        );
        // The bert. prefix is only stripped for BERT.
        let llama = NameMap::new(Arch::Llama);
        assert_eq!(
            llama.hf_to_gguf("bert.model.norm.weight"),
            "bert.model.norm.weight"
        );
    }

    #[test]
    fn unknown_names_pass_through_both_ways_borrowed() {
        for arch in Arch::ALL {
            let map = NameMap::new(arch);
            for name in [
                "",
                "weight",
                ".weight",
                "blk..attn_q.weight",
                "blk.x.attn_q.weight",
                "blk.-1.attn_q.weight",
                "model.layers..self_attn.q_proj.weight",
                "model.layers.1a.self_attn.q_proj.weight",
                "model.layers.0.self_attn.q_proj.weight.extra",
                "xmodel.embed_tokens.weight",
                "model.embed_tokens.weightx",
                "model.layers.0.block_sparse_moe.experts.3.w1.weight",
                "vision_tower.blocks.0.attn.qkv.weight",
                "blk.0.attn_q.scale",
                "blk.٣.attn_q.weight",
            ] {
                assert!(
                    matches!(map.hf_to_gguf(name), Cow::Borrowed(n) if n == name),
                    "{arch:?} {name}"
                );
                assert!(
                    matches!(map.gguf_to_hf(name), Cow::Borrowed(n) if n == name),
                    "{arch:?} {name}"
                );
            }
        }
    }

    #[test]
    fn multi_digit_layers_are_copied_verbatim() {
        let map = NameMap::new(Arch::Llama);
        assert_eq!(
            map.hf_to_gguf("model.layers.1234.mlp.up_proj.weight"),
            "blk.1234.ffn_up.weight"
        );
        assert_eq!(
            map.gguf_to_hf("blk.99.attn_norm.weight"),
            "model.layers.99.input_layernorm.weight"
        );
        // Leading zeros survive the round trip rather than being normalised away.
        assert_eq!(
            map.hf_to_gguf("model.layers.007.mlp.up_proj.weight"),
            "blk.007.ffn_up.weight"
        );
        let huge = format!("model.layers.{}.mlp.up_proj.weight", "9".repeat(40));
        assert_eq!(map.gguf_to_hf(&map.hf_to_gguf(&huge)), huge);
    }

    #[test]
    fn a_user_rule_overrides_the_table_in_both_directions() {
        let rule = Rule::new(
            "model.layers.{N}.self_attn.q_proj.weight",
            "blk.{N}.attn_q_custom.weight",
        )
        .unwrap();
        let map = NameMap::new(Arch::Llama).with_rule(rule);
        assert_eq!(
            map.hf_to_gguf("model.layers.12.self_attn.q_proj.weight"),
            "blk.12.attn_q_custom.weight"
        );
        assert_eq!(
            map.gguf_to_hf("blk.12.attn_q_custom.weight"),
            "model.layers.12.self_attn.q_proj.weight"
        );
        // The bias is not covered by the rule, so the table still maps it.
        assert_eq!(
            map.hf_to_gguf("model.layers.12.self_attn.q_proj.bias"),
            "blk.12.attn_q.bias"
        );
    }

    #[test]
    fn moe_router_rule_from_the_issue() {
        let rule = Rule::new(
            "model.layers.{N}.block_sparse_moe.gate.weight",
            "blk.{N}.ffn_gate_inp.weight",
        )
        .unwrap();
        let map = NameMap::new(Arch::Mistral).with_rule(rule);
        assert_eq!(
            map.hf_to_gguf("model.layers.31.block_sparse_moe.gate.weight"),
            "blk.31.ffn_gate_inp.weight"
        );
        assert_eq!(
            map.gguf_to_hf("blk.105.ffn_gate_inp.weight"),
            "model.layers.105.block_sparse_moe.gate.weight"
        );
        // A rule is exact: no suffix juggling.
        let bias = "model.layers.1.block_sparse_moe.gate.bias";
        assert_eq!(map.hf_to_gguf(bias), bias);
    }

    #[test]
    fn rules_apply_in_order_and_several_placeholders_work() {
        let experts = Rule::new(
            "model.layers.{N}.block_sparse_moe.experts.{E}.w1.weight",
            "blk.{N}.expert.{E}.gate.weight",
        )
        .unwrap();
        let first = Rule::prefix("model.layers.0.", "first.").unwrap();
        let map = NameMap::new(Arch::Llama)
            .with_rule(first)
            .with_rule(experts);
        let hf = "model.layers.12.block_sparse_moe.experts.7.w1.weight";
        assert_eq!(map.hf_to_gguf(hf), "blk.12.expert.7.gate.weight");
        assert_eq!(map.gguf_to_hf("blk.12.expert.7.gate.weight"), hf);
        // The earlier prefix rule wins over the later rule and over the table.
        let l0 = "model.layers.0.block_sparse_moe.experts.7.w1.weight";
        assert_eq!(
            map.hf_to_gguf(l0),
            "first.block_sparse_moe.experts.7.w1.weight"
        );
        assert_eq!(
            map.gguf_to_hf("first.block_sparse_moe.experts.7.w1.weight"),
            l0
        );
        assert_eq!(
            map.hf_to_gguf("model.layers.0.mlp.up_proj.weight"),
            "first.mlp.up_proj.weight"
        );
        assert_eq!(
            map.hf_to_gguf("model.layers.1.mlp.up_proj.weight"),
            "blk.1.ffn_up.weight"
        );
    }

    #[test]
    fn a_placeholder_used_twice_must_match_the_same_digits() {
        let rule = Rule::new("a.{N}.b.{N}", "x.{N}").unwrap();
        let map = NameMap::new(Arch::Llama).with_rule(rule);
        assert_eq!(map.hf_to_gguf("a.3.b.3"), "x.3");
        assert_eq!(map.hf_to_gguf("a.3.b.4"), "a.3.b.4");
        assert_eq!(map.gguf_to_hf("x.12"), "a.12.b.12");
    }

    #[test]
    fn bad_rules_are_usage_errors() {
        let bad = [
            ("", "x"),
            ("a.{N}", ""),
            ("a.{N}.b", "x.b"),
            ("a.{N}.b", "x.{M}.b"),
            ("a.{N", "x.{N}"),
            ("a.N}", "x.N}"),
            ("a.{}.b", "x.{}.b"),
            ("a.{N-1}", "x.{N-1}"),
            ("a.{N}{M}", "x.{N}.{M}"),
            ("a.{N}0", "x.{N}"),
        ];
        for (hf, gguf) in bad {
            let err = Rule::new(hf, gguf).unwrap_err();
            assert!(
                matches!(err, Error::BadNameRule { .. }),
                "{hf} <-> {gguf}: {err}"
            );
        }
        assert!(matches!(
            Rule::prefix("", ""),
            Err(Error::BadNameRule { .. })
        ));
        assert!(Rule::prefix("", "v.").is_ok());
    }

    #[test]
    fn arch_detection() {
        for arch in Arch::ALL {
            assert_eq!(
                Arch::from_gguf(arch.gguf_name()).map(|a| a.gguf_name()),
                Some(arch.gguf_name())
            );
        }
        assert_eq!(Arch::from_gguf("llama"), Some(Arch::Llama));
        assert_eq!(Arch::from_gguf("mistral3"), None);
        assert_eq!(Arch::from_hf("MistralForCausalLM"), Some(Arch::Mistral));
        assert_eq!(Arch::from_hf("gemma3_text"), Some(Arch::Gemma3));
        assert_eq!(Arch::from_hf("t5"), None);
        let minilm = serde_json::json!({"architectures": ["BertModel"], "model_type": "bert"});
        assert_eq!(Arch::from_hf_config(&minilm), Some(Arch::Bert));
        let only_type = serde_json::json!({"model_type": "qwen2"});
        assert_eq!(Arch::from_hf_config(&only_type), Some(Arch::Qwen2));
        let unknown_class = serde_json::json!({"architectures": ["Foo"], "model_type": "phi3"});
        assert_eq!(Arch::from_hf_config(&unknown_class), Some(Arch::Phi3));
        assert_eq!(Arch::from_hf_config(&serde_json::json!({})), None);
    }

    #[test]
    fn data_layout_flags() {
        let permuted: Vec<Arch> = Arch::ALL
            .into_iter()
            .filter(|&a| needs_qk_permute(a))
            .collect();
        assert_eq!(permuted, [Arch::Llama, Arch::Mistral]);
        let plus_one: Vec<Arch> = Arch::ALL
            .into_iter()
            .filter(|&a| needs_norm_plus_one(a))
            .collect();
        assert_eq!(plus_one, [Arch::Gemma, Arch::Gemma2, Arch::Gemma3]);
    }

    /// The tensor names of the two real GGUF files, from the oracle fixtures (written by gguf-py),
    /// so the tables are checked against real files before the GGUF reader lands.
    fn fixture_names(file: &str) -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/models/gguf")
            .join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let tensors = json["tensors"].as_object().expect("a 'tensors' object");
        tensors.keys().cloned().collect()
    }

    fn check_gguf_names(names: &[String], arch: Arch, expected: &[(&str, &str)]) {
        let map = NameMap::new(arch);
        let mut seen = HashSet::new();
        for name in names {
            let hf = map.gguf_to_hf(name);
            assert_ne!(hf, name.as_str(), "{arch:?}: {name} has no HF name");
            assert!(
                hf.starts_with("model.") || hf == "lm_head.weight",
                "{name} -> {hf}"
            );
            assert_eq!(map.hf_to_gguf(&hf), name.as_str());
            assert!(
                seen.insert(hf.into_owned()),
                "two GGUF names map to one HF name"
            );
        }
        for (gguf, hf) in expected {
            assert!(names.iter().any(|n| n == gguf), "{gguf} is not in the file");
            assert_eq!(map.gguf_to_hf(gguf), *hf);
        }
    }

    #[test]
    fn smollm2_fixture_names_map_to_hf_and_back() {
        let names = fixture_names("smollm2.tensor_digests.json");
        assert_eq!(names.len(), 272);
        check_gguf_names(
            &names,
            Arch::Llama,
            &[
                ("token_embd.weight", "model.embed_tokens.weight"),
                ("output_norm.weight", "model.norm.weight"),
                (
                    "blk.0.attn_q.weight",
                    "model.layers.0.self_attn.q_proj.weight",
                ),
                (
                    "blk.12.ffn_norm.weight",
                    "model.layers.12.post_attention_layernorm.weight",
                ),
                (
                    "blk.29.ffn_down.weight",
                    "model.layers.29.mlp.down_proj.weight",
                ),
            ],
        );
    }

    #[test]
    fn gemma3_fixture_names_map_to_hf_and_back() {
        let names = fixture_names("gemma3.tensor_digests.json");
        assert_eq!(names.len(), 236);
        check_gguf_names(
            &names,
            Arch::Gemma3,
            &[
                ("token_embd.weight", "model.embed_tokens.weight"),
                ("output_norm.weight", "model.norm.weight"),
                (
                    "blk.0.attn_k_norm.weight",
                    "model.layers.0.self_attn.k_norm.weight",
                ),
                (
                    "blk.5.ffn_norm.weight",
                    "model.layers.5.pre_feedforward_layernorm.weight",
                ),
                (
                    "blk.5.post_attention_norm.weight",
                    "model.layers.5.post_attention_layernorm.weight",
                ),
                (
                    "blk.17.post_ffw_norm.weight",
                    "model.layers.17.post_feedforward_layernorm.weight",
                ),
            ],
        );
    }

    #[test]
    fn permutation_matches_llama_cpp_and_inverts() {
        // 2 heads of 4 rows, one column holding the Hugging Face row index. numpy:
        // np.arange(8).reshape(2, 2, 2).swapaxes(1, 2).reshape(8) = [0, 2, 1, 3, 4, 6, 5, 7].
        let b: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let g = permute_rows(&b, 8, 2, true).unwrap();
        assert_eq!(g, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        let wide: Vec<u8> = (0..24 * 3).map(|i| i as u8).collect();
        let there = permute_rows(&wide, 24, 3, true).unwrap();
        assert_ne!(there, wide);
        assert_eq!(permute_rows(&there, 24, 3, false).unwrap(), wide);
        assert!(permute_rows(&b, 8, 3, true).is_none());
    }
}
