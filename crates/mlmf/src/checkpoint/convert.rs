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
//! [`crate::provenance`] record: the input as parent, `convert`, `name_map` and `cast`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{ChunkSource, GgufWriter, SafetensorsWriter, TensorSource};
use crate::dtype::{DType, Kind};
use crate::error::{Error, Result};
use crate::formats::names::{
    arch_of, head_counts, needs_norm_plus_one, needs_qk_permute, permute_rows, Arch, NameMap,
};
use crate::formats::{Format, Metadata, ModelFile, TensorInfo, Value};
use crate::provenance::{Parent, Provenance, Transform};
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

const KEY_PREFIX: &str = "mlmf.source.";
const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

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
/// tensor is written.
pub fn convert_file(
    input: &ModelFile,
    out: &Path,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(usize, &str),
) -> Result<Vec<Converted>> {
    if let Some(d) = options.dtype {
        if !matches!(d, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::Usage(format!("--dtype {d}: F32, F16 or BF16")));
        }
    }
    let kind = match out.extension().and_then(|e| e.to_str()) {
        Some("gguf") => Format::Gguf,
        Some("safetensors") => Format::Safetensors,
        _ => Format::ShardedSafetensors,
    };
    if out.exists() && !options.force {
        return Err(Error::Usage(format!(
            "{} exists; pass --force to replace it",
            out.display()
        )));
    }
    let arch = options.arch.or_else(|| arch_of(input));
    let map = match (options.map, arch) {
        (None, _) => None,
        (Some(dir), Some(a)) => Some((dir, NameMap::new(a), a)),
        (Some(_), None) => {
            return Err(Error::Usage(
                "--map needs the architecture: no general.architecture, no config.json beside \
                 the input; pass --arch"
                    .into(),
            ))
        }
    };
    let heads = arch.and_then(|a| head_counts(input, a));

    let mut report = Vec::with_capacity(input.tensors().len());
    let mut fixes = Vec::with_capacity(input.tensors().len());
    for info in input.tensors() {
        let (name, fix) = match &map {
            None => (info.name.clone(), Fix::None),
            Some((dir, names, a)) => {
                let (name, hf) = match dir {
                    MapDirection::HfToGguf => {
                        (names.hf_to_gguf(&info.name).into_owned(), info.name.clone())
                    }
                    MapDirection::GgufToHf => {
                        let hf = names.gguf_to_hf(&info.name).into_owned();
                        (hf.clone(), hf)
                    }
                };
                let to_gguf = *dir == MapDirection::HfToGguf;
                let fix = data_fix(*a, &hf, to_gguf, heads, info)?;
                (name, fix)
            }
        };
        let to = match options.dtype {
            Some(d) if is_floating(info.dtype) => d,
            _ => info.dtype,
        };
        let note = match fix {
            Fix::None => None,
            Fix::Permute(n, _) => Some(format!("permuted q/k rows ({n} heads)")),
            Fix::Add(v) if v > 0.0 => Some("norm + 1".to_string()),
            Fix::Add(_) => Some("norm - 1".to_string()),
        };
        fixes.push(fix);
        report.push(Converted {
            from_name: info.name.clone(),
            name,
            from: info.dtype,
            to,
            shape: info.shape.dims().to_vec(),
            note,
        });
    }

    let progress = std::cell::RefCell::new(progress);
    let sources: Vec<ConvertSource> = input
        .tensors()
        .iter()
        .zip(&report)
        .zip(&fixes)
        .enumerate()
        .map(|(index, ((info, row), &fix))| ConvertSource {
            file: input,
            info,
            to: row.to,
            fix,
            index,
            progress: &progress,
        })
        .collect::<Vec<_>>();
    for s in &sources {
        s.out_len()?;
    }
    let provenance = provenance(input, kind, options, arch)?;
    match kind {
        Format::Gguf => {
            let mut metadata = gguf_metadata(input);
            if let (Some((MapDirection::HfToGguf, _, a)), false) =
                (&map, metadata.get("general.architecture").is_some())
            {
                metadata.entries.insert(
                    0,
                    (
                        "general.architecture".into(),
                        Value::String(a.gguf_name().into()),
                    ),
                );
            }
            let mut writer = GgufWriter::new(metadata);
            writer.provenance(provenance);
            for (row, s) in report.iter().zip(&sources) {
                writer.add_tensor(
                    row.name.clone(),
                    row.to,
                    &row.shape,
                    TensorSource::Chunks(s),
                );
            }
            writer.write(out)?;
        }
        _ => {
            let mut writer = SafetensorsWriter::new(safetensors_metadata(input));
            writer.provenance(provenance);
            for (row, s) in report.iter().zip(&sources) {
                writer.add_tensor(
                    row.name.clone(),
                    row.to,
                    &row.shape,
                    TensorSource::Chunks(s),
                );
            }
            if kind == Format::Safetensors {
                writer.write(out)?;
            } else {
                let max = options.max_shard_bytes.unwrap_or(DEFAULT_SHARD_BYTES);
                write_sharded_replacing(&writer, out, max)?;
            }
        }
    }
    Ok(report)
}

/// The record the output carries: the input as parent; convert, name map and cast.
fn provenance(
    input: &ModelFile,
    to: Format,
    options: &ConvertOptions,
    arch: Option<Arch>,
) -> Result<Provenance> {
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
    Ok(Provenance {
        parents: vec![Parent::of(input)?],
        transforms,
    })
}

/// Write shards into a new directory beside `out`, then put it in `out`'s place. The old
/// directory is moved aside before the new one is renamed in, and removed after: an
/// interruption leaves either directory whole (at `out` or beside it), never a mix of shards.
fn write_sharded_replacing(writer: &SafetensorsWriter<'_>, out: &Path, max: u64) -> Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = std::process::id();
    let fresh = parent.join(format!(".{name}.tmp-{id}"));
    let old = parent.join(format!(".{name}.old-{id}"));
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(|e| Error::io(&fresh, e))?;
    }
    if let Err(e) = writer.write_sharded(&fresh, max) {
        let _ = std::fs::remove_dir_all(&fresh);
        return Err(e);
    }
    let had_old = out.exists();
    if had_old {
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&fresh, out).map_err(|e| Error::io(out, e))?;
    if let Ok(dir) = std::fs::File::open(&parent) {
        let _ = dir.sync_all();
    }
    if had_old {
        let path = &old;
        if old.is_dir() {
            std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
        } else {
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
        }
    }
    Ok(())
}

/// Floating-point types the CPU twins can decode (integer tensors keep their type).
fn is_floating(dtype: DType) -> bool {
    match dtype.kind() {
        Kind::Float => crate::ops::convert::supports(dtype),
        Kind::Block => crate::ops::dequant::supports(dtype),
        Kind::Int | Kind::Bool => false,
    }
}

/// What llama.cpp's converter does to the data of the tensor whose Hugging Face name is `hf`.
fn data_fix(
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
        let (n_head, n_kv) = heads.ok_or_else(|| {
            Error::Usage(format!(
                "{}: permuting q/k rows needs the head counts (GGUF attention.head_count or \
                 config.json num_attention_heads)",
                info.name
            ))
        })?;
        let n = if k && n_kv != n_head { n_kv } else { n_head };
        return Ok(Fix::Permute(n, to_gguf));
    }
    if needs_norm_plus_one(arch) && hf.ends_with("norm.weight") {
        return Ok(Fix::Add(if to_gguf { 1.0 } else { -1.0 }));
    }
    Ok(Fix::None)
}

fn gguf_metadata(input: &ModelFile) -> Metadata {
    crate::quantize::carried_metadata(input)
}

/// Safetensors metadata: strings as they are (keys that came from safetensors through GGUF
/// under `mlmf.source.` get their own names back), other GGUF values as JSON text.
fn safetensors_metadata(input: &ModelFile) -> BTreeMap<String, String> {
    input
        .metadata()
        .iter()
        .map(|(k, v)| {
            let key = k.strip_prefix(KEY_PREFIX).unwrap_or(k).to_string();
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_json().to_string(),
            };
            (key, text)
        })
        .collect()
}

type ProgressCell<'p> = std::cell::RefCell<&'p mut dyn FnMut(usize, &str)>;

/// One tensor's output bytes, made when the writer asks for them.
struct ConvertSource<'a, 'p> {
    file: &'a ModelFile,
    info: &'a TensorInfo,
    to: DType,
    fix: Fix,
    index: usize,
    progress: &'a ProgressCell<'p>,
}

impl ConvertSource<'_, '_> {
    fn out_len(&self) -> Result<u64> {
        self.to
            .byte_len(self.info.shape.elem_count())
            .ok_or_else(|| Error::ShapeOverflow {
                path: self.file.path().to_path_buf(),
                tensor: self.info.name.clone(),
                shape: self.info.shape.dims().iter().map(|&d| d as u64).collect(),
            })
    }
}

impl ChunkSource for ConvertSource<'_, '_> {
    fn byte_len(&self) -> u64 {
        self.out_len().unwrap_or(u64::MAX)
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        (self.progress.borrow_mut())(self.index, &self.info.name);
        let info = self.info;
        let src = Source::of(self.file, info);
        let mut scratch = Vec::new();
        let stored = src.chunk(0, info.byte_len() as usize, &mut scratch);
        let bad = |reason: String| Error::BadShape {
            path: self.file.path().to_path_buf(),
            tensor: info.name.clone(),
            reason,
        };
        if self.to == info.dtype && !matches!(self.fix, Fix::Add(_)) {
            return match self.fix {
                Fix::Permute(n, to_gguf) => {
                    let rows = info.shape.dims().first().copied().unwrap_or(1);
                    let permuted = permute_rows(stored, rows, n, to_gguf).ok_or_else(|| {
                        bad(format!(
                            "{rows} rows do not split into {n} heads of even size"
                        ))
                    })?;
                    f(&permuted)
                }
                _ => f(stored),
            };
        }
        let mut values = crate::ops::convert::bytes_to_f32(info.dtype, stored);
        match self.fix {
            Fix::Permute(n, to_gguf) => {
                let rows = info.shape.dims().first().copied().unwrap_or(1);
                values = permute_rows(&values, rows, n, to_gguf).ok_or_else(|| {
                    bad(format!(
                        "{rows} rows do not split into {n} heads of even size"
                    ))
                })?;
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
