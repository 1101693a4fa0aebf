//! One whole-file rewrite, the pipeline under [`crate::quant::quantize_file`],
//! [`super::convert_file`] and [`crate::lora::merge_file`]. Each of them plans its output tensors
//! (name, dtype, shape, and a [`ChunkSource`] that makes the bytes when the writer asks for them,
//! so one tensor at a time passes through host memory); this module writes them with the writer
//! the output names, carries the input's metadata over, records provenance (the input as parent,
//! the caller's transforms) and reports progress in bytes.
//!
//! Metadata is kept: into GGUF, GGUF key/values as they are and other formats' string metadata
//! under `mlmf.source.*` (GGUF readers expect `general.*` keys to mean what llama.cpp says, which
//! a safetensors `__metadata__` does not promise); into safetensors, strings as they are (keys
//! under `mlmf.source.` get their own names back) and other GGUF values as JSON text.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{ChunkSource, GgufWriter, SafetensorsWriter, TensorSource};
use crate::dtype::{DType, Kind};
use crate::error::{Error, Result};
use crate::formats::gguf::SCALARS_KEY;
use crate::formats::{Format, Metadata, ModelFile, TensorInfo, Value};
use crate::provenance::{self, Parent, Provenance, Transform};

/// Where metadata from a non-GGUF input goes in a GGUF output.
const SOURCE_PREFIX: &str = "mlmf.source.";
/// Largest shard of a sharded output by default, in bytes of tensor data (`transformers`'
/// `save_pretrained` default).
const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

/// How far a rewrite is, reported when the writer reaches each tensor.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// The tensor's index in the report the rewrite returns.
    pub index: usize,
    /// Its name in the output.
    pub name: &'a str,
    /// Bytes of tensor data written before this tensor.
    pub done: u64,
    /// Bytes of tensor data of the whole output.
    pub total: u64,
}

/// What a rewrite writes to `path`, by its name: `.gguf`, `.safetensors`, anything else a
/// directory of shards.
pub(crate) fn format_of(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("gguf") => Format::Gguf,
        Some("safetensors") => Format::Safetensors,
        _ => Format::ShardedSafetensors,
    }
}

/// One output tensor and where its bytes come from.
pub(crate) struct Output<'a> {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub source: Box<dyn ChunkSource + 'a>,
}

impl<'a> Output<'a> {
    /// `info` copied as the file stores it (a strided view gathered), under `name`.
    pub fn stored(name: String, file: &'a ModelFile, info: &'a TensorInfo) -> Result<Output<'a>> {
        // Checked here so that an impossible byte count is an error before anything is written.
        out_len(file, info, info.dtype)?;
        Ok(Output {
            name,
            dtype: info.dtype,
            shape: info.shape.dims().to_vec(),
            source: Box::new(TensorSource::File(file, info)),
        })
    }
}

/// A whole-file rewrite of `input` (see the module documentation).
pub(crate) struct Rewrite<'a> {
    pub input: &'a ModelFile,
    /// GGUF, safetensors or sharded safetensors.
    pub format: Format,
    /// Whether the output gets a provenance record. Without one, a record carried in the
    /// input's metadata is dropped too: it describes the input, not the output.
    pub provenance: bool,
    /// What the output's provenance record says was done to the input.
    pub transforms: Vec<Transform>,
    /// Keys a GGUF output gets besides the carried metadata: each replaces a carried key of its
    /// name where that key is, and otherwise comes before the carried keys, in this order.
    pub gguf_keys: Vec<(&'static str, Value)>,
    /// Largest shard of a sharded output, in bytes of tensor data.
    pub max_shard_bytes: Option<u64>,
}

impl Rewrite<'_> {
    /// Write `tensors` to `out`, atomically (a shard directory is put in place whole, replacing
    /// any directory there). `progress` is called before each tensor's bytes are written.
    pub fn write(
        &self,
        tensors: &[Output<'_>],
        out: &Path,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<()> {
        let provenance = if self.provenance {
            Some(Provenance {
                parents: vec![Parent::of(self.input)?],
                transforms: self.transforms.clone(),
            })
        } else {
            None
        };
        let total = tensors
            .iter()
            .fold(0u64, |n, t| n.saturating_add(t.source.byte_len()));
        let progress = RefCell::new(progress);
        let mut done = 0u64;
        let counted: Vec<Counted> = tensors
            .iter()
            .enumerate()
            .map(|(index, output)| {
                let at = done;
                done = done.saturating_add(output.source.byte_len());
                Counted {
                    output,
                    at: Progress {
                        index,
                        name: &output.name,
                        done: at,
                        total,
                    },
                    progress: &progress,
                }
            })
            .collect();
        if self.format == Format::Gguf {
            let mut writer = GgufWriter::new(self.gguf_metadata());
            if let Some(p) = provenance {
                writer.provenance(p);
            }
            for c in &counted {
                let t = c.output;
                writer.add_tensor(t.name.clone(), t.dtype, &t.shape, TensorSource::Chunks(c));
            }
            return writer.write(out);
        }
        let mut writer = SafetensorsWriter::new(self.safetensors_metadata());
        if let Some(p) = provenance {
            writer.provenance(p);
        }
        for c in &counted {
            let t = c.output;
            writer.add_tensor(t.name.clone(), t.dtype, &t.shape, TensorSource::Chunks(c));
        }
        if self.format == Format::Safetensors {
            return writer.write(out);
        }
        let max = self.max_shard_bytes.unwrap_or(DEFAULT_SHARD_BYTES);
        write_sharded_replacing(&writer, out, max)
    }

    fn gguf_metadata(&self) -> Metadata {
        let input = self.input;
        let mut carried = Metadata::default();
        for (k, v) in input.metadata().iter() {
            if !self.provenance && k == provenance::KEY {
                continue;
            }
            if input.format() == Format::Gguf {
                carried.entries.push((k.to_string(), v.clone()));
            } else if let Value::String(s) = v {
                carried
                    .entries
                    .push((format!("{SOURCE_PREFIX}{k}"), Value::String(s.clone())));
            }
        }
        let mut first = Vec::new();
        for (key, value) in &self.gguf_keys {
            match carried.entries.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1 = value.clone(),
                None => first.push((key.to_string(), value.clone())),
            }
        }
        carried.entries.splice(0..0, first);
        carried
    }

    fn safetensors_metadata(&self) -> BTreeMap<String, String> {
        self.input
            .metadata()
            .iter()
            // Safetensors holds 0-d tensors as they are: GGUF's list of them has no use there.
            .filter(|(k, _)| *k != SCALARS_KEY && (self.provenance || *k != provenance::KEY))
            .map(|(k, v)| {
                let key = k.strip_prefix(SOURCE_PREFIX).unwrap_or(k).to_string();
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_json().to_string(),
                };
                (key, text)
            })
            .collect()
    }
}

/// An output that reports progress when the writer reaches it.
struct Counted<'a, 'p> {
    output: &'a Output<'a>,
    at: Progress<'a>,
    progress: &'a RefCell<&'p mut dyn FnMut(Progress<'_>)>,
}

impl ChunkSource for Counted<'_, '_> {
    fn byte_len(&self) -> u64 {
        self.output.source.byte_len()
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        (self.progress.borrow_mut())(self.at);
        self.output.source.for_each_chunk(f)
    }
}

/// Bytes of `info`'s elements in `dtype`, row-major.
pub(crate) fn out_len(file: &ModelFile, info: &TensorInfo, dtype: DType) -> Result<u64> {
    dtype
        .byte_len(info.shape.elem_count())
        .ok_or_else(|| Error::ShapeOverflow {
            path: file.path().to_path_buf(),
            tensor: info.name.clone(),
            shape: info.shape.dims().iter().map(|&d| d as u64).collect(),
        })
}

/// Whether a tensor of `dtype` holds real numbers the CPU twins can decode to f32.
pub(crate) fn decodable(dtype: DType) -> bool {
    match dtype.kind() {
        Kind::Float => crate::ops::convert::supports(dtype),
        Kind::Block => crate::ops::dequant::supports(dtype),
        Kind::Int | Kind::Bool => false,
    }
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
    // `out` is moved aside and removed below: never a device node or FIFO.
    mlmf_core::files::check_replaceable(out)?;
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
    mlmf_core::files::check_replaceable(out)?;
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
