//! Quantizing a whole model file into a GGUF file, the way llama.cpp's `llama-quantize` picks
//! tensors: weight matrices are quantized; 1-D tensors (norms, biases), tensors whose rows are
//! not whole blocks, and tensors the user names with `keep` stay as they are.
//!
//! Streaming: each tensor is converted and quantized a few rows at a time while the GGUF writer
//! asks for its bytes, so host memory holds one chunk of rows, not the model.

use std::path::Path;

use regex::Regex;

use crate::checkpoint::{ChunkSource, GgufWriter, TensorSource};
use crate::dtype::{DType, Kind};
use crate::error::{Error, Result};
use crate::formats::{Format, Metadata, ModelFile, TensorInfo, Value};
use crate::provenance::{Parent, Provenance, Transform};
use crate::Source;

/// Input rows converted per step, in f32 bytes.
const CHUNK_BYTES: usize = 8 << 20;

/// What happens to each tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub name: String,
    pub from: DType,
    pub to: DType,
    pub shape: Vec<usize>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Why the tensor is kept as it is, when it is.
    pub kept: Option<&'static str>,
}

/// Options of [`quantize_file`].
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub dtype: DType,
    /// Tensors whose names match any of these stay as they are.
    pub keep: Vec<Regex>,
}

/// llama.cpp's `LLAMA_FTYPE_MOSTLY_*` for a file quantized uniformly to `dtype` (the `_S`
/// variant for K-quants, which quantize every matrix to the same type).
fn file_type(dtype: DType) -> Option<u32> {
    Some(match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q8_0 => 7,
        DType::Q5_0 => 8,
        DType::Q5_1 => 9,
        DType::Q2_K => 10,
        DType::Q3_K => 11,
        DType::Q4_K => 14,
        DType::Q5_K => 16,
        DType::Q6_K => 18,
        DType::IQ4_NL => 25,
        DType::IQ4_XS => 30,
        DType::BF16 => 32,
        _ => return None,
    })
}

/// Decide, for every tensor of `file`, what it becomes.
pub fn plan(file: &ModelFile, options: &QuantizeOptions) -> Result<Vec<Planned>> {
    if !mlmf_core::quant::supports(options.dtype) {
        return Err(Error::UnsupportedQuant {
            dtype: options.dtype,
        });
    }
    file.tensors()
        .iter()
        .map(|t| {
            let kept = if options.keep.iter().any(|r| r.is_match(&t.name)) {
                Some("--keep")
            } else if t.shape.rank() < 2 {
                Some("1-D")
            } else if !can_read(t.dtype) {
                Some("not a float tensor")
            } else if !(t.shape.row_len() as u64).is_multiple_of(options.dtype.block_elems()) {
                Some("row length is not a whole number of blocks")
            } else {
                None
            };
            let to = if kept.is_some() {
                t.dtype
            } else {
                options.dtype
            };
            let bytes_out =
                to.byte_len(t.shape.elem_count())
                    .ok_or_else(|| Error::ShapeOverflow {
                        path: file.path().to_path_buf(),
                        tensor: t.name.clone(),
                        shape: t.shape.dims().iter().map(|&d| d as u64).collect(),
                    })?;
            Ok(Planned {
                name: t.name.clone(),
                from: t.dtype,
                to,
                shape: t.shape.dims().to_vec(),
                bytes_in: t.byte_len(),
                bytes_out,
                kept,
            })
        })
        .collect()
}

/// Whether a tensor of `dtype` holds real numbers this crate can read as f32 on the CPU.
fn can_read(dtype: DType) -> bool {
    match dtype.kind() {
        Kind::Float => crate::ops::convert::supports(dtype),
        Kind::Block => crate::ops::dequant::supports(dtype),
        Kind::Int | Kind::Bool => false,
    }
}

/// Quantize `file` into a GGUF file at `out` (written atomically). `progress` is called before
/// each tensor's bytes are written, with its index in the plan. The output carries a
/// [`crate::provenance`] record: parent `file`, transform `quantize {dtype}`.
pub fn quantize_file(
    file: &ModelFile,
    out: &Path,
    options: &QuantizeOptions,
    progress: &mut dyn FnMut(usize, &Planned),
) -> Result<Vec<Planned>> {
    let plan = plan(file, options)?;
    let provenance = Provenance {
        parents: vec![Parent::of(file)?],
        transforms: vec![Transform::Quantize {
            dtype: options.dtype.name().to_string(),
        }],
    };
    let mut metadata = carried_metadata(file);
    if let Some(ft) = file_type(options.dtype) {
        set(&mut metadata, "general.file_type", Value::U32(ft));
    }
    set(&mut metadata, "general.quantization_version", Value::U32(2));
    let progress = std::cell::RefCell::new(progress);
    let sources: Vec<QuantSource> = file
        .tensors()
        .iter()
        .zip(&plan)
        .enumerate()
        .map(|(index, (info, planned))| QuantSource {
            file,
            info,
            planned,
            index,
            progress: &progress,
        })
        .collect();
    let mut writer = GgufWriter::new(metadata);
    writer.provenance(provenance);
    for (p, s) in plan.iter().zip(&sources) {
        writer.add_tensor(p.name.clone(), p.to, &p.shape, TensorSource::Chunks(s));
    }
    writer.write(out)?;
    Ok(plan)
}

/// Metadata worth keeping: GGUF key/values as they are; for other formats their string
/// metadata under `mlmf.source.` (GGUF readers expect `general.*` keys to mean what llama.cpp
/// says, which a safetensors `__metadata__` does not promise).
pub(crate) fn carried_metadata(file: &ModelFile) -> Metadata {
    let mut out = Metadata::default();
    for (k, v) in file.metadata().iter() {
        if file.format() == Format::Gguf {
            out.entries.push((k.to_string(), v.clone()));
        } else if let Value::String(s) = v {
            out.entries
                .push((format!("mlmf.source.{k}"), Value::String(s.clone())));
        }
    }
    out
}

fn set(meta: &mut Metadata, key: &str, value: Value) {
    match meta.entries.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => meta.entries.push((key.to_string(), value)),
    }
}

/// The caller's progress callback, shared by every tensor's source.
type ProgressCell<'p> = std::cell::RefCell<&'p mut dyn FnMut(usize, &Planned)>;

/// One tensor's output bytes, produced a chunk of rows at a time when the writer asks.
struct QuantSource<'a, 'p> {
    file: &'a ModelFile,
    info: &'a TensorInfo,
    planned: &'a Planned,
    index: usize,
    progress: &'a ProgressCell<'p>,
}

impl ChunkSource for QuantSource<'_, '_> {
    fn byte_len(&self) -> u64 {
        self.planned.bytes_out
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        (self.progress.borrow_mut())(self.index, self.planned);
        let (info, to) = (self.info, self.planned.to);
        if to == info.dtype && info.is_contiguous() {
            return f(self.file.bytes(info));
        }
        let src = Source::of(self.file, info);
        let row_len = info.shape.row_len().max(1);
        let rows = (info.shape.elem_count() / row_len as u64) as usize;
        // Whole blocks per row is checked by the reader (GGUF) or holds for plain types.
        let row_bytes = info.dtype.byte_len(row_len as u64).unwrap_or(0) as usize;
        let rows_per_chunk = (CHUNK_BYTES / (row_len * 4)).max(1);
        let mut scratch = Vec::new();
        let mut row = 0;
        while row < rows {
            let n = rows_per_chunk.min(rows - row);
            let bytes = src.chunk(row * row_bytes, n * row_bytes, &mut scratch);
            if to == info.dtype {
                f(bytes)?;
            } else {
                let values = to_f32(info.dtype, bytes);
                let out = mlmf_core::quant::quantize(to, &values, row_len).map_err(|e| {
                    Error::BadShape {
                        path: self.file.path().to_path_buf(),
                        tensor: info.name.clone(),
                        reason: format!("cannot quantize to {to}: {e}"),
                    }
                })?;
                f(&out)?;
            }
            row += n;
        }
        Ok(())
    }
}

/// CPU decoding of stored bytes to f32.
fn to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    crate::ops::convert::bytes_to_f32(dtype, bytes)
}
