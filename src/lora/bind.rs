//! Matching an adapter's modules to the tensors of a base file.
//!
//! The adapter's names are translated into the base's naming when the two differ (a PEFT adapter,
//! trained on the Hugging Face model, applied to the GGUF file of the same model, or a GGUF
//! adapter applied to Hugging Face safetensors) through [`NameMap`]. For the architectures whose
//! q/k projections llama.cpp permutes ([`needs_qk_permute`]), the rows of `B` are permuted the
//! same way (`(B·A)` permuted by rows is `(P·B)·A`), with the head counts from the GGUF base's
//! metadata or the Hugging Face `config.json` beside a safetensors base.
//!
//! Every module must land on a base tensor of the right shape; all offenders are listed in one
//! [`Error::AdapterMismatch`].

use std::borrow::Cow;
use std::path::Path;

use super::{LoraAdapter, LoraModule, Naming, Replacement};
use crate::error::{Error, Result};
use crate::formats::names::{needs_qk_permute, Arch, NameMap};
use crate::formats::{Format, ModelFile, Value};

/// One adapter module matched to its base tensor.
#[derive(Debug)]
pub struct Target<'a> {
    pub module: &'a LoraModule,
    /// The base tensor's name.
    pub tensor: String,
    /// `B` in the base's row order: the module's own, or permuted for llama.cpp's q/k layout.
    pub b: Cow<'a, [f32]>,
    /// The base weight is `[in, out]` (PEFT's `fan_in_fan_out`), so the update goes in transposed.
    pub fan_in_fan_out: bool,
}

/// An adapter matched to a base file: [`Target`]s for the low-rank updates, and the tensors the
/// adapter replaces whole, by base name.
#[derive(Debug)]
pub struct Bound<'a> {
    adapter: &'a LoraAdapter,
    targets: Vec<Target<'a>>,
    replacements: Vec<(String, &'a Replacement)>,
}

impl<'a> Bound<'a> {
    pub fn adapter(&self) -> &'a LoraAdapter {
        self.adapter
    }

    pub fn targets(&self) -> &[Target<'a>] {
        &self.targets
    }

    /// The target for base tensor `name`, if the adapter changes it by a low-rank update.
    pub fn target(&self, name: &str) -> Option<&Target<'a>> {
        self.targets.iter().find(|t| t.tensor == name)
    }

    /// `(base tensor name, replacement)` for each tensor the adapter replaces whole.
    pub fn replacements(&self) -> &[(String, &'a Replacement)] {
        &self.replacements
    }

    /// The replacement for base tensor `name`, if any.
    pub fn replacement(&self, name: &str) -> Option<&'a Replacement> {
        self.replacements
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, r)| r)
    }
}

/// How names cross from the adapter's naming into the base's.
enum Crossing {
    Same,
    HfToGguf(NameMap),
    GgufToHf(NameMap),
}

/// Head counts for llama.cpp's q/k permutation: `(n_head, n_head_kv)`.
type Heads = Option<(usize, usize)>;

pub(super) fn bind<'a>(adapter: &'a LoraAdapter, base: &ModelFile) -> Result<Bound<'a>> {
    let mismatch = |problems: Vec<String>| Error::AdapterMismatch {
        adapter: adapter.path.clone(),
        base: base.path().to_path_buf(),
        problems,
    };
    let base_gguf = base.format() == Format::Gguf;
    let base_arch = if base_gguf {
        base.metadata()
            .get("general.architecture")
            .and_then(Value::as_str)
            .and_then(Arch::from_gguf)
    } else {
        hf_config(base.path())
            .as_ref()
            .and_then(Arch::from_hf_config)
    };
    if let (Some(a), Some(b), true) = (adapter.arch, base_arch, base_gguf) {
        if a.gguf_name() != b.gguf_name() {
            return Err(mismatch(vec![format!(
                "the adapter is for {}, the base is {}",
                a.gguf_name(),
                b.gguf_name()
            )]));
        }
    }
    let arch = adapter.arch.or(base_arch);
    let crossing = match (adapter.naming, base_gguf) {
        (Naming::HuggingFace, false) | (Naming::Gguf, true) => Crossing::Same,
        (naming, _) => {
            let Some(arch) = arch else {
                return Err(mismatch(vec![format!(
                    "the adapter uses {} names and the base does not, and the architecture is \
                     unknown (no general.architecture, no config.json beside the base)",
                    if naming == Naming::Gguf {
                        "GGUF"
                    } else {
                        "Hugging Face"
                    }
                )]));
            };
            if naming == Naming::HuggingFace {
                Crossing::HfToGguf(NameMap::new(arch))
            } else {
                Crossing::GgufToHf(NameMap::new(arch))
            }
        }
    };
    let permutes = !matches!(crossing, Crossing::Same) && arch.is_some_and(needs_qk_permute);
    let heads = match arch {
        Some(a) if permutes => head_counts(base, a),
        _ => None,
    };

    let to_base = |name: &str| -> String {
        match &crossing {
            Crossing::Same => name.to_string(),
            Crossing::HfToGguf(map) => map.hf_to_gguf(name).into_owned(),
            Crossing::GgufToHf(map) => map.gguf_to_hf(name).into_owned(),
        }
    };
    let mut problems = Vec::new();
    let mut targets = Vec::with_capacity(adapter.modules.len());
    for module in &adapter.modules {
        let adapter_name = format!("{}.weight", module.name);
        let tensor = to_base(&adapter_name);
        let Ok(info) = base.tensor(&tensor) else {
            problems.push(format!("{adapter_name}: no tensor '{tensor}' in the base"));
            continue;
        };
        let (out, inp) = (module.out_features, module.in_features);
        let want = if adapter.fan_in_fan_out {
            [inp, out]
        } else {
            [out, inp]
        };
        if info.shape.dims() != want {
            problems.push(format!(
                "{adapter_name}: the update is {want:?}, base tensor '{tensor}' is {:?}",
                info.shape.dims()
            ));
            continue;
        }
        let qk = permutes
            .then(|| qk_kind(&crossing, &adapter_name, &tensor))
            .flatten();
        let b = match qk {
            None => Cow::Borrowed(&module.b[..]),
            Some(kind) => {
                let Some((n_head, n_head_kv)) = heads else {
                    problems.push(format!(
                        "{adapter_name}: llama.cpp permutes the rows of this projection, and the \
                         head counts are unknown (no attention.head_count in the GGUF base, no \
                         config.json beside the base)"
                    ));
                    continue;
                };
                let n = match kind {
                    Qk::Q => n_head,
                    Qk::K if n_head_kv != n_head => n_head_kv,
                    Qk::K => n_head,
                };
                let to_gguf = matches!(crossing, Crossing::HfToGguf(_));
                match permute_rows(&module.b, out, module.rank, n, to_gguf) {
                    Some(b) => Cow::Owned(b),
                    None => {
                        problems.push(format!(
                            "{adapter_name}: {out} rows do not split into {n} heads of even size"
                        ));
                        continue;
                    }
                }
            }
        };
        targets.push(Target {
            module,
            tensor,
            b,
            fan_in_fan_out: adapter.fan_in_fan_out,
        });
    }
    let mut replacements = Vec::with_capacity(adapter.replacements.len());
    for r in &adapter.replacements {
        let tensor = to_base(&r.name);
        match base.tensor(&tensor) {
            Err(_) => problems.push(format!("{}: no tensor '{tensor}' in the base", r.name)),
            Ok(info) if info.shape != *r.tensor.shape() => problems.push(format!(
                "{}: the replacement is {:?}, base tensor '{tensor}' is {:?}",
                r.name,
                r.tensor.shape().dims(),
                info.shape.dims()
            )),
            Ok(_) => replacements.push((tensor, r)),
        }
    }
    if !problems.is_empty() {
        return Err(mismatch(problems));
    }
    Ok(Bound {
        adapter,
        targets,
        replacements,
    })
}

enum Qk {
    Q,
    K,
}

/// Whether this module is a q or k projection (named in Hugging Face terms on either side of the
/// crossing).
fn qk_kind(crossing: &Crossing, adapter_name: &str, base_name: &str) -> Option<Qk> {
    let hf = match crossing {
        Crossing::Same => return None,
        Crossing::HfToGguf(_) => adapter_name,
        Crossing::GgufToHf(_) => base_name,
    };
    if hf.ends_with("self_attn.q_proj.weight") {
        Some(Qk::Q)
    } else if hf.ends_with("self_attn.k_proj.weight") {
        Some(Qk::K)
    } else {
        None
    }
}

/// The `config.json` beside a Hugging Face base file, if there is a readable one.
fn hf_config(base: &Path) -> Option<serde_json::Value> {
    let dir = if base.is_dir() { base } else { base.parent()? };
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// `(n_head, n_head_kv)` from the GGUF base's metadata or the `config.json` beside a Hugging
/// Face base.
fn head_counts(base: &ModelFile, arch: Arch) -> Heads {
    if base.format() == Format::Gguf {
        let key = |k: &str| format!("{}.attention.{k}", arch.gguf_name());
        let meta = base.metadata();
        let n_head = meta.get(&key("head_count"))?.as_u64()? as usize;
        let n_kv = meta
            .get(&key("head_count_kv"))
            .and_then(Value::as_u64)
            .map_or(n_head, |n| n as usize);
        return Some((n_head, n_kv));
    }
    let config = hf_config(base.path())?;
    let n_head = config.get("num_attention_heads")?.as_u64()? as usize;
    let n_kv = config
        .get("num_key_value_heads")
        .and_then(serde_json::Value::as_u64)
        .map_or(n_head, |n| n as usize);
    Some((n_head, n_kv))
}

/// llama.cpp's `LlamaModel.permute` applied to the rows of `b` (`[rows, cols]`), or undone:
/// `reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2)`, so Hugging Face row
/// `h·2·half + s·half + i` becomes GGUF row `h·2·half + 2·i + s`. `None` when the rows do not
/// split into `n_head` heads of even size.
pub(crate) fn permute_rows(
    b: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
    to_gguf: bool,
) -> Option<Vec<f32>> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) || b.len() != rows * cols {
        return None;
    }
    let half = rows / n_head / 2;
    let mut out = vec![0.0; b.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for i in 0..half {
                let hf = h * 2 * half + s * half + i;
                let gguf = h * 2 * half + 2 * i + s;
                let (from, to) = if to_gguf { (hf, gguf) } else { (gguf, hf) };
                out[to * cols..(to + 1) * cols].copy_from_slice(&b[from * cols..(from + 1) * cols]);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_llama_cpp_and_inverts() {
        // 2 heads of 4 rows, one column holding the Hugging Face row index. numpy:
        // np.arange(8).reshape(2, 2, 2).swapaxes(1, 2).reshape(8) = [0, 2, 1, 3, 4, 6, 5, 7].
        let b: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let g = permute_rows(&b, 8, 1, 2, true).unwrap();
        assert_eq!(g, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        let wide: Vec<f32> = (0..24 * 3).map(|i| i as f32).collect();
        let there = permute_rows(&wide, 24, 3, 3, true).unwrap();
        assert_ne!(there, wide);
        assert_eq!(permute_rows(&there, 24, 3, 3, false).unwrap(), wide);
        assert!(permute_rows(&b, 8, 1, 3, true).is_none());
    }
}
