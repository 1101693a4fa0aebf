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

use super::{LoraAdapter, LoraModule, Naming, Replacement};
use crate::error::{Error, Result};
use crate::formats::names::{arch_of, head_counts, needs_qk_permute, permute_rows, NameMap};
use crate::formats::{Format, ModelFile};

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

pub(super) fn bind<'a>(adapter: &'a LoraAdapter, base: &ModelFile) -> Result<Bound<'a>> {
    let mismatch = |problems: Vec<String>| Error::AdapterMismatch {
        adapter: adapter.path.clone(),
        base: base.path().to_path_buf(),
        problems,
    };
    let base_gguf = base.format() == Format::Gguf;
    let base_arch = arch_of(base);
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
                match permute_rows(&module.b, out, n, to_gguf) {
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
