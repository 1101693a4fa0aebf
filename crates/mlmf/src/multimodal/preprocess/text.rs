//! Text to token ids with a Hugging Face `tokenizer.json`, through the `tokenizers` crate (the
//! library transformers' fast tokenizers are built on), so ids match transformers exactly.
//!
//! A batch is padded to its longest sequence with the tokenizer's pad token (as
//! `padding=True` does in transformers), whatever fixed padding `tokenizer.json` asks for;
//! truncation follows `tokenizer.json` (all-MiniLM-L6-v2's truncates at 128).

use std::path::{Path, PathBuf};

use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer};

use crate::error::{Error, Result};

/// A tokenizer read from a `tokenizer.json`.
pub struct TextTokenizer {
    path: PathBuf,
    inner: Tokenizer,
}

/// A tokenized batch, row-major `[batch, len]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub batch: usize,
    pub len: usize,
    pub ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Each sequence's token strings (padding included), for inspection.
    pub tokens: Vec<Vec<String>>,
}

impl TextTokenizer {
    pub fn open(path: impl AsRef<Path>) -> Result<TextTokenizer> {
        let path = path.as_ref().to_path_buf();
        // Read here rather than by `from_file`, so a FIFO is refused instead of waited on.
        let bytes = mlmf_core::files::read_regular(&path)?;
        let mut inner = Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let pad = inner.get_padding().cloned().unwrap_or_default();
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..pad
        }));
        Ok(TextTokenizer { path, inner })
    }

    /// Tokenize `texts` with special tokens (`[CLS] ... [SEP]` for BERT), padded to the longest.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<Encoded> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        let len = encodings.first().map_or(0, |e| e.len());
        let mut out = Encoded {
            batch: encodings.len(),
            len,
            ids: Vec::with_capacity(encodings.len() * len),
            attention_mask: Vec::with_capacity(encodings.len() * len),
            type_ids: Vec::with_capacity(encodings.len() * len),
            tokens: Vec::with_capacity(encodings.len()),
        };
        for e in &encodings {
            out.ids.extend_from_slice(e.get_ids());
            out.attention_mask.extend_from_slice(e.get_attention_mask());
            out.type_ids.extend_from_slice(e.get_type_ids());
            out.tokens.push(e.get_tokens().to_vec());
        }
        Ok(out)
    }
}
