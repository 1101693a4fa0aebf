//! Converting a model file between safetensors (single or sharded), GGUF and PyTorch (read only),
//! streamed one tensor at a time.
//!
//! Optionally, tensor names are mapped between Hugging Face and GGUF conventions
//! ([`NameMap`]) with what llama.cpp's converter does to the data on the way: the q/k row
//! permutation of Llama and Mistral ([`permute_rows`]) and Gemma's `norm.weight + 1`, undone in
//! the other direction. Optionally, every floating-point tensor (quantized ones included, decoded
//! by the CPU twins) is converted to F32, F16 or BF16 (rounded to nearest even); integer tensors
//! stay as they are. Everything else is copied byte for byte.
//!
//! Metadata is kept: GGUF to GGUF as it is; safetensors `__metadata__` into GGUF under
//! `mlmf.source.*` (as `mlmf quantize` does) and back out under its own keys; other GGUF values
//! into safetensors as JSON text. The output's format follows its name: `.gguf`, `.safetensors`,
//! or anything else a directory of Hugging Face shards. The output carries a
//! [`crate::provenance`] record (the input as parent, `convert`, `name_map` and `cast`) unless
//! [`ConvertOptions::no_provenance`] is set.

use std::path::Path;

use super::rewrite::{self, Output, Progress, Rewrite};
use super::ChunkSource;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::names::{
    arch_of, head_counts, needs_norm_plus_one, needs_qk_permute, permute_rows, Arch, NameMap,
};
use crate::formats::{Format, ModelFile, TensorInfo, Value};
use crate::provenance::Transform;
use crate::Source;

/// Which way tensor names are mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapDirection {
    HfToGguf,
    GgufToHf,
}

/// Options of [`convert_file`].
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    pub map: Option<MapDirection>,
    /// The architecture for the name map; found from `general.architecture` or the
    /// `config.json` beside a Hugging Face input when not given.
    pub arch: Option<Arch>,
    /// F32, F16 or BF16 for every floating-point tensor.
    pub dtype: Option<DType>,
    /// Largest shard of a sharded output, in bytes of tensor data (default 5 GB, as
    /// `transformers`' `save_pretrained`).
    pub max_shard_bytes: Option<u64>,
    /// Replace an existing output.
    pub force: bool,
    /// Write no provenance record (`mlmf.provenance`); a record carried in the input's
    /// metadata is dropped too. Without a record and without other changes, a GGUF rewritten
    /// as GGUF is the same file byte for byte.
    pub no_provenance: bool,
}

/// One row of [`convert_file`]'s report.
#[derive(Clone, Debug)]
pub struct Converted {
    pub from_name: String,
    pub name: String,
    pub from: DType,
    pub to: DType,
    pub shape: Vec<usize>,
    /// What was done to the data besides a dtype change: `permuted q/k rows (n heads)`,
    /// `norm + 1`, `norm - 1`.
    pub note: Option<String>,
}

/// What happens to one tensor's data.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fix {
    None,
    /// Permute rows with this many heads, towards GGUF (`true`) or back.
    Permute(usize, bool),
    /// Add this to every value (Gemma's norms).
    Add(f32),
}

/// Convert `input` into `out` (see the module documentation). `progress` is called before each
/// tensor is written. An existing `out` is refused with [`Error::OutputExists`] unless
/// `options.force` is set.
pub fn convert_file(
    input: &ModelFile,
    out: &Path,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<Converted>> {
    if let Some(dtype) = options.dtype {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::UnsupportedCast { dtype });
        }
    }
    let format = rewrite::format_of(out);
    if out.exists() && !options.force {
        return Err(Error::OutputExists {
            path: out.to_path_buf(),
        });
    }
    let arch = options.arch.or_else(|| arch_of(input));
    let map = match (options.map, arch) {
        (None, _) => None,
        (Some(dir), Some(a)) => Some((dir, NameMap::new(a), a)),
        (Some(_), None) => {
            return Err(Error::UnknownArchitecture {
                path: input.path().to_path_buf(),
            })
        }
    };
    let heads = arch.and_then(|a| head_counts(input, a));

    let mut report = Vec::with_capacity(input.tensors().len());
    let mut outputs = Vec::with_capacity(input.tensors().len());
    for info in input.tensors() {
        let (name, fix) = match &map {
            None => (info.name.clone(), Fix::None),
            Some((dir, names, a)) => {
                let to_gguf = *dir == MapDirection::HfToGguf;
                let (name, hf) = if to_gguf {
                    (names.hf_to_gguf(&info.name).into_owned(), info.name.clone())
                } else {
                    let hf = names.gguf_to_hf(&info.name).into_owned();
                    (hf.clone(), hf)
                };
                (name, data_fix(input, *a, &hf, to_gguf, heads, info)?)
            }
        };
        let to = match options.dtype {
            Some(d) if rewrite::decodable(info.dtype) => d,
            _ => info.dtype,
        };
        let note = match fix {
            Fix::None => None,
            Fix::Permute(n, _) => Some(format!("permuted q/k rows ({n} heads)")),
            Fix::Add(v) if v > 0.0 => Some("norm + 1".to_string()),
            Fix::Add(_) => Some("norm - 1".to_string()),
        };
        outputs.push(if to == info.dtype && fix == Fix::None {
            Output::stored(name.clone(), input, info)?
        } else {
            Output {
                name: name.clone(),
                dtype: to,
                shape: info.shape.dims().to_vec(),
                source: Box::new(ConvertSource {
                    file: input,
                    info,
                    to,
                    fix,
                    len: rewrite::out_len(input, info, to)?,
                }),
            }
        });
        report.push(Converted {
            from_name: info.name.clone(),
            name,
            from: info.dtype,
            to,
            shape: info.shape.dims().to_vec(),
            note,
        });
    }

    let mut gguf_keys = Vec::new();
    if let Some((MapDirection::HfToGguf, _, a)) = &map {
        gguf_keys.push(("general.architecture", Value::String(a.gguf_name().into())));
    }
    Rewrite {
        provenance: !options.no_provenance,
        input,
        format,
        transforms: transforms(input, format, options, arch),
        gguf_keys,
        max_shard_bytes: options.max_shard_bytes,
    }
    .write(&outputs, out, progress)?;
    Ok(report)
}

/// What the output's provenance record says was done: convert, name map and cast.
fn transforms(
    input: &ModelFile,
    to: Format,
    options: &ConvertOptions,
    arch: Option<Arch>,
) -> Vec<Transform> {
    let mut transforms = vec![Transform::Convert {
        from: input.format().name().to_string(),
        to: to.name().to_string(),
    }];
    if let (Some(dir), Some(a)) = (options.map, arch) {
        let map = match dir {
            MapDirection::HfToGguf => "hf-to-gguf",
            MapDirection::GgufToHf => "gguf-to-hf",
        };
        transforms.push(Transform::NameMap {
            map: format!("{map} ({})", a.gguf_name()),
        });
    }
    if let Some(d) = options.dtype {
        transforms.push(Transform::Cast {
            dtype: d.name().to_string(),
        });
    }
    transforms
}

/// What llama.cpp's converter does to the data of the tensor whose Hugging Face name is `hf`.
fn data_fix(
    file: &ModelFile,
    arch: Arch,
    hf: &str,
    to_gguf: bool,
    heads: Option<(usize, usize)>,
    info: &TensorInfo,
) -> Result<Fix> {
    let qk = ["self_attn.q_proj.weight", "self_attn.q_proj.bias"]
        .iter()
        .any(|s| hf.ends_with(s));
    let k = ["self_attn.k_proj.weight", "self_attn.k_proj.bias"]
        .iter()
        .any(|s| hf.ends_with(s));
    if needs_qk_permute(arch) && (qk || k) {
        let (n_head, n_kv) = heads.ok_or_else(|| Error::BadModel {
            path: file.path().to_path_buf(),
            reason: format!(
                "tensor '{}': permuting q/k rows needs the head counts (GGUF \
                 attention.head_count or config.json num_attention_heads)",
                info.name
            ),
        })?;
        let n = if k && n_kv != n_head { n_kv } else { n_head };
        return Ok(Fix::Permute(n, to_gguf));
    }
    if needs_norm_plus_one(arch) && hf.ends_with("norm.weight") {
        return Ok(Fix::Add(if to_gguf { 1.0 } else { -1.0 }));
    }
    Ok(Fix::None)
}

/// One tensor's output bytes, made when the writer asks for them.
struct ConvertSource<'a> {
    file: &'a ModelFile,
    info: &'a TensorInfo,
    to: DType,
    fix: Fix,
    len: u64,
}

impl ChunkSource for ConvertSource<'_> {
    fn byte_len(&self) -> u64 {
        self.len
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let info = self.info;
        let mut scratch = Vec::new();
        let stored_len = rewrite::out_len(self.file, info, info.dtype)? as usize;
        let src = Source::of(self.file, info);
        let stored = src.chunk(0, stored_len, &mut scratch);
        let bad = |reason: String| Error::BadShape {
            path: self.file.path().to_path_buf(),
            tensor: info.name.clone(),
            reason,
        };
        let rows = info.shape.dims().first().copied().unwrap_or(1);
        let uneven = |n| {
            bad(format!(
                "{rows} rows do not split into {n} heads of even size"
            ))
        };
        if let (Fix::Permute(n, to_gguf), true) = (self.fix, self.to == info.dtype) {
            return f(&permute_rows(stored, rows, n, to_gguf).ok_or_else(|| uneven(n))?);
        }
        let mut values = crate::ops::convert::bytes_to_f32(info.dtype, stored);
        match self.fix {
            Fix::Permute(n, to_gguf) => {
                values = permute_rows(&values, rows, n, to_gguf).ok_or_else(|| uneven(n))?;
            }
            Fix::Add(v) => values.iter_mut().for_each(|x| *x += v),
            Fix::None => {}
        }
        let bytes: Vec<u8> = match self.to {
            DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            DType::BF16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            other => {
                return Err(bad(format!(
                    "cannot change {} data (norm + 1) in {other}",
                    info.dtype
                )))
            }
        };
        f(&bytes)
    }
}
