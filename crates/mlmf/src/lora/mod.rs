//! LoRA adapters: read (PEFT directories and llama.cpp GGUF adapters), matched to a base model
//! file in either naming, merged into its weights (and taken out again), or applied at run time
//! with several adapters resident at once.
//!
//! ```no_run
//! use mlmf::lora::{LoraAdapter, MergeOptions};
//! use mlmf::{Device, ModelFile};
//! let base = ModelFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let adapter = LoraAdapter::open("my-peft-adapter/")?;
//! let bound = adapter.bind(&base)?;
//! let device = Device::gpu()?;
//! for target in bound.targets() {
//!     let merged = mlmf::lora::merge_target(&device, &base, target, &MergeOptions::default())?;
//!     println!("{} -> {}", target.tensor, merged.dtype());
//! }
//! # Ok::<(), mlmf::Error>(())
//! ```
//!
//! Each adapted module `M` adds `s · B·A` to the base weight `W` of `M`: `A` is `[r, in]`, `B` is
//! `[out, r]`, and `s` is the adapter's scale (PEFT: `lora_alpha / r`, or `lora_alpha / sqrt(r)`
//! with rsLoRA; llama.cpp: `adapter.lora.alpha / r`) times the user's multiplier.
//!
//! The arithmetic is in [`crate::ops::lora`] (GPU kernels and their CPU twins).

mod bind;
mod file;
mod gguf;
mod merge;
mod peft;
mod runtime;

pub use bind::{Bound, Target};
pub use file::{merge_file, Action, MergedTensor};
pub use merge::{merge_target, MergeOptions, MergedWeights, QuantizedMerge};
pub use runtime::{AdapterId, AdapterSet};

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::formats::names::Arch;
use crate::formats::ModelFile;
use crate::provenance::{self, Sha256Hash};
use crate::Device;
use crate::Tensor;

/// Which naming an adapter's module names follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// Hugging Face `transformers` names (`model.layers.0.self_attn.q_proj`): PEFT adapters.
    HuggingFace,
    /// llama.cpp's GGUF names (`blk.0.attn_q`): GGUF adapters.
    Gguf,
}

/// One adapted module: `W += scale · B·A`.
#[derive(Clone, Debug)]
pub struct LoraModule {
    /// The module's name in the adapter's naming, without `.weight`:
    /// `model.layers.0.self_attn.q_proj` (PEFT) or `blk.0.attn_q` (GGUF).
    pub name: String,
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// `[rank, in_features]`, row-major, in f32 whatever the file stored.
    pub a: Vec<f32>,
    /// `[out_features, rank]`, row-major, in f32.
    pub b: Vec<f32>,
    /// The adapter's own scale (before any user multiplier).
    pub scale: f32,
}

/// A whole tensor an adapter replaces (PEFT's `modules_to_save`, or biases trained with
/// `bias="all"`).
#[derive(Debug)]
pub struct Replacement {
    /// The tensor's name in the adapter's naming (`lm_head.weight`).
    pub name: String,
    pub tensor: Tensor,
}

/// A LoRA adapter read into host memory (adapters are small: rank x (in + out) per module).
#[derive(Debug)]
pub struct LoraAdapter {
    path: PathBuf,
    naming: Naming,
    /// `general.architecture` of a GGUF adapter.
    arch: Option<Arch>,
    /// PEFT's `fan_in_fan_out`: the base weights are stored `[in, out]` (GPT-2's `Conv1D`).
    fan_in_fan_out: bool,
    modules: Vec<LoraModule>,
    replacements: Vec<Replacement>,
}

impl LoraAdapter {
    /// Read a PEFT adapter (a directory with `adapter_config.json`, or that file) or a llama.cpp
    /// GGUF adapter file. Config fields that change the result are honoured or refused with
    /// [`Error::BadAdapter`].
    pub fn open(path: impl AsRef<Path>) -> Result<LoraAdapter> {
        let path = path.as_ref();
        if peft::is_peft(path) {
            return peft::open(path);
        }
        if path.is_dir() {
            return Err(Error::BadAdapter {
                path: path.to_path_buf(),
                reason: "a directory without adapter_config.json".into(),
            });
        }
        let file = ModelFile::open(path)?;
        if gguf::is_gguf_adapter(&file) {
            return gguf::open(path, &file);
        }
        Err(Error::BadAdapter {
            path: path.to_path_buf(),
            reason: format!(
                "a {} file that is not a GGUF adapter (general.type = \"adapter\"); \
                 a PEFT adapter is a directory with adapter_config.json",
                file.format().name()
            ),
        })
    }

    /// The directory (PEFT) or file (GGUF) the adapter came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn naming(&self) -> Naming {
        self.naming
    }

    pub fn fan_in_fan_out(&self) -> bool {
        self.fan_in_fan_out
    }

    pub fn modules(&self) -> &[LoraModule] {
        &self.modules
    }

    pub fn replacements(&self) -> &[Replacement] {
        &self.replacements
    }

    /// Match the adapter to `base`: see [`Bound`].
    pub fn bind(&self, base: &ModelFile) -> Result<Bound<'_>> {
        bind::bind(self, base)
    }
}

/// The hash a merge's provenance record names `adapter` by (`adapter_hash` of a `lora_merge`
/// transform). For a PEFT adapter, `sha256(C || S)` where `C` is the 32-byte content hash
/// ([`provenance::content_hash`]) of its tensor file (`adapter_model.safetensors` or `.bin`) and
/// `S` the sha256 of the bytes of `adapter_config.json` (which holds `lora_alpha`, `r` and the
/// other settings that change the result); for a GGUF adapter, the sha256 of the whole file (its
/// settings are metadata, which the content hash leaves out).
pub fn adapter_hash(adapter: &LoraAdapter) -> Result<Sha256Hash> {
    let read = |path: &Path| mlmf_core::files::read_regular(path);
    match adapter.naming {
        Naming::HuggingFace => {
            let (config, weights) = peft::files(&adapter.path)?;
            let tensors = provenance::content_hash(&ModelFile::open(&weights)?)?;
            let config = Sha256Hash::of(&read(&config)?);
            Ok(Sha256Hash::of(&[tensors.0, config.0].concat()))
        }
        // Adapters are small (rank x (in + out) per module): read whole.
        Naming::Gguf => Ok(Sha256Hash::of(&read(&adapter.path)?)),
    }
}

/// A tensor of `file` as f32 values with its dims, converted on the host.
fn read_f32(file: &ModelFile, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let t = Device::Cpu.load(file, name)?;
    let dims = t.shape().dims().to_vec();
    let f = crate::ops::convert::to_f32(&t)?;
    let bytes = f.to_bytes()?;
    let values = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((dims, values))
}
