//! Tensor indexes of models too large to keep here, built from their published shapes, so
//! plans (and the README's scaling table) can be computed for them by the same code as for real
//! files. Nothing is loaded from them: their byte ranges point into no file.

use crate::{DType, Error, Result, Shape, TensorInfo};

/// The shapes of a Llama-style decoder, as its `config.json` gives them.
struct Llama {
    vocab: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
}

/// Llama 3 70B (meta-llama/Meta-Llama-3-70B's config.json).
const LLAMA_70B: Llama = Llama {
    vocab: 128256,
    hidden: 8192,
    layers: 80,
    heads: 64,
    kv_heads: 8,
    ffn: 28672,
};

/// Llama 3 8B (meta-llama/Meta-Llama-3-8B's config.json).
const LLAMA_8B: Llama = Llama {
    vocab: 128256,
    hidden: 4096,
    layers: 32,
    heads: 32,
    kv_heads: 8,
    ffn: 14336,
};

/// The models [`index`] knows.
pub const MODELS: [&str; 2] = ["llama-70b", "llama-8b"];

/// The GGUF tensor index of `model` (one of [`MODELS`]) with every matrix in `dtype` and the
/// norms in F32, laid out back to back in GGUF's order, and its (query, key-value) head counts.
pub fn index(model: &str, dtype: DType) -> Result<(Vec<TensorInfo>, (usize, usize))> {
    let m = match model {
        "llama-70b" => LLAMA_70B,
        "llama-8b" => LLAMA_8B,
        _ => {
            return Err(Error::BadPlan {
                reason: format!("no synthetic model '{model}'; known: {}", MODELS.join(", ")),
            })
        }
    };
    let hd = m.hidden / m.heads;
    let mut shapes: Vec<(String, Vec<usize>, DType)> = vec![
        ("token_embd.weight".into(), vec![m.vocab, m.hidden], dtype),
        ("output_norm.weight".into(), vec![m.hidden], DType::F32),
        ("output.weight".into(), vec![m.vocab, m.hidden], dtype),
    ];
    for l in 0..m.layers {
        let b = |s: &str| format!("blk.{l}.{s}.weight");
        shapes.extend([
            (b("attn_norm"), vec![m.hidden], DType::F32),
            (b("attn_q"), vec![m.heads * hd, m.hidden], dtype),
            (b("attn_k"), vec![m.kv_heads * hd, m.hidden], dtype),
            (b("attn_v"), vec![m.kv_heads * hd, m.hidden], dtype),
            (b("attn_output"), vec![m.hidden, m.heads * hd], dtype),
            (b("ffn_norm"), vec![m.hidden], DType::F32),
            (b("ffn_gate"), vec![m.ffn, m.hidden], dtype),
            (b("ffn_up"), vec![m.ffn, m.hidden], dtype),
            (b("ffn_down"), vec![m.hidden, m.ffn], dtype),
        ]);
    }
    let mut at = 0u64;
    let mut out = Vec::with_capacity(shapes.len());
    for (name, dims, dtype) in shapes {
        let shape = Shape::new(dims).ok_or_else(|| Error::BadPlan {
            reason: format!("{name}: shape overflows"),
        })?;
        let len = dtype
            .byte_len(shape.elem_count())
            .ok_or_else(|| Error::BadPlan {
                reason: format!("{name}: {shape} is not whole {} blocks", dtype.name()),
            })?;
        out.push(TensorInfo {
            name,
            dtype,
            shape,
            file: 0,
            range: at..at + len,
            strides: None,
        });
        at = (at + len).next_multiple_of(32);
    }
    Ok((out, (m.heads, m.kv_heads)))
}
