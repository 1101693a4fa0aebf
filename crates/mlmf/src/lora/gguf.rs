//! llama.cpp's GGUF LoRA adapters, as `convert_lora_to_gguf.py` writes them and
//! `llama_adapter_lora_init` reads them: `general.type = "adapter"`, `adapter.type = "lora"`,
//! `adapter.lora.alpha` (f32), `general.architecture`, and for each adapted base tensor `T` a
//! pair `T.lora_a` (`[r, in]`, GGUF `ne = [in, r]`) and `T.lora_b` (`[out, r]`). The converter
//! has already applied llama.cpp's q/k row permutation to `lora_b`, so the pairs are in the GGUF
//! base's row order.
//!
//! Like llama.cpp: the scale is `alpha / r` with `r = lora_b.ne[0]`, or 1 when alpha is 0 or
//! missing; `*_norm.weight` tensors are skipped (llama.cpp does not apply them either); any other
//! tensor name is an error. Adapters of `token_embd.weight` (whose A and B llama.cpp stores
//! swapped) are refused.

use std::collections::BTreeMap;
use std::path::Path;

use super::{LoraAdapter, LoraModule, Naming};
use crate::error::{Error, Result};
use crate::formats::names::Arch;
use crate::formats::{Format, ModelFile, Value};

pub(super) fn is_gguf_adapter(file: &ModelFile) -> bool {
    file.format() == Format::Gguf
        && file.metadata().get("general.type").and_then(Value::as_str) == Some("adapter")
}

pub(super) fn open(path: &Path, file: &ModelFile) -> Result<LoraAdapter> {
    let bad = |reason: String| Error::BadAdapter {
        path: path.to_path_buf(),
        reason,
    };
    let meta = file.metadata();
    let text = |key: &str| meta.get(key).and_then(Value::as_str);
    if text("general.type") != Some("adapter") {
        return Err(bad("general.type is not 'adapter'".into()));
    }
    if text("adapter.type") != Some("lora") {
        return Err(bad(format!(
            "adapter.type is {:?}; only 'lora' adapters are read",
            text("adapter.type")
        )));
    }
    let alpha = match meta.get("adapter.lora.alpha") {
        None => 0.0,
        Some(Value::F32(a)) => *a,
        Some(other) => return Err(bad(format!("adapter.lora.alpha is {other:?}, not an f32"))),
    };
    let arch = match text("general.architecture") {
        Some(a) => Some(Arch::from_gguf(a).ok_or_else(|| {
            bad(format!(
                "general.architecture '{a}' has no name map in mlmf"
            ))
        })?),
        None => None,
    };

    let mut pairs: BTreeMap<&str, [Option<&str>; 2]> = BTreeMap::new();
    for t in file.tensors() {
        let name = t.name.as_str();
        if let Some(base) = name.strip_suffix(".lora_a") {
            pairs.entry(base).or_default()[0] = Some(name);
        } else if let Some(base) = name.strip_suffix(".lora_b") {
            pairs.entry(base).or_default()[1] = Some(name);
        } else if name.ends_with("_norm.weight") {
            continue;
        } else {
            return Err(bad(format!("tensor '{name}' has an unexpected suffix")));
        }
    }
    let mut modules = Vec::with_capacity(pairs.len());
    for (base, pair) in pairs {
        let [Some(a_name), Some(b_name)] = pair else {
            return Err(bad(format!("'{base}': lora_a or lora_b is missing")));
        };
        if base.ends_with("token_embd.weight") {
            return Err(bad(format!(
                "'{base}': adapters of the token embedding are not supported"
            )));
        }
        let (a_dims, a) = super::read_f32(file, a_name)?;
        let (b_dims, b) = super::read_f32(file, b_name)?;
        let (&[rank, in_features], &[out_features, b_rank]) = (&a_dims[..], &b_dims[..]) else {
            return Err(bad(format!(
                "'{base}': lora_a {a_dims:?} and lora_b {b_dims:?} are not matrices"
            )));
        };
        if b_rank != rank {
            return Err(bad(format!(
                "'{base}': lora_a has rank {rank}, lora_b {b_rank} (llama.cpp: \"lora_a tensor is not transposed\")"
            )));
        }
        let scale = if alpha != 0.0 {
            alpha / rank as f32
        } else {
            1.0
        };
        let name = base.strip_suffix(".weight").unwrap_or(base);
        modules.push(LoraModule {
            name: name.to_string(),
            rank,
            in_features,
            out_features,
            a,
            b,
            scale,
        });
    }
    Ok(LoraAdapter {
        path: path.to_path_buf(),
        naming: Naming::Gguf,
        arch,
        fan_in_fan_out: false,
        modules,
        replacements: Vec::new(),
    })
}
