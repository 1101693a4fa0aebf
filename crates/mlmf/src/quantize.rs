//! Quantizing a whole model file into a GGUF file, the way llama.cpp's `llama-quantize` picks
//! tensors: weight matrices are quantized; 1-D tensors (norms, biases) and tensors the user names
//! with `keep` stay as they are. A matrix whose rows are not whole blocks of the requested type
//! falls back to a compatible type by llama-quantize's rule ([`fallback`]); where that rule has
//! no entry (the 32-element types), the matrix stays as it is.
//!
//! Streaming: each tensor is converted and quantized a few rows at a time while the GGUF writer
//! asks for its bytes, so host memory holds one chunk of rows, not the model.

use std::path::Path;

use regex::Regex;

use crate::checkpoint::rewrite::{self, Output, Rewrite};
use crate::checkpoint::{ChunkSource, Progress};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::{Format, ModelFile, TensorInfo, Value};
use crate::provenance::Transform;
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
    /// The requested type, when the rows could not hold it and `to` is its [`fallback`].
    pub fell_back_from: Option<DType>,
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
        DType::TQ1_0 => 36,
        DType::TQ2_0 => 37,
        // MXFP4 has only MXFP4_MOE (38), a mix (experts MXFP4, the rest Q8_0): no uniform type.
        _ => return None,
    })
}

/// The type llama-quantize writes instead of `dtype` for a matrix whose rows are not whole
/// blocks of `dtype` (llama.cpp `llama-quant.cpp`, "incompatible tensor shapes": ternary types to
/// Q4_0, the 2- and 3-bit types to IQ4_NL, Q4_K/Q5_K/Q6_K to Q5_0/Q5_1/Q8_0), or F16 when the
/// rows do not hold that one either. `None` where llama-quantize has no rule (it stops there;
/// mlmf keeps the tensor as it is instead).
pub fn fallback(dtype: DType, row_len: u64) -> Option<DType> {
    let to = match dtype {
        DType::TQ1_0 | DType::TQ2_0 => DType::Q4_0,
        DType::IQ2_XXS
        | DType::IQ2_XS
        | DType::IQ2_S
        | DType::IQ3_XXS
        | DType::IQ3_S
        | DType::IQ1_S
        | DType::IQ1_M
        | DType::Q2_K
        | DType::Q3_K
        | DType::IQ4_XS => DType::IQ4_NL,
        DType::Q4_K => DType::Q5_0,
        DType::Q5_K => DType::Q5_1,
        DType::Q6_K => DType::Q8_0,
        _ => return None,
    };
    Some(if row_len.is_multiple_of(to.block_elems()) {
        to
    } else {
        DType::F16
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
            let row_len = t.shape.row_len() as u64;
            let fits = row_len.is_multiple_of(options.dtype.block_elems());
            let fell_back = (!fits).then(|| fallback(options.dtype, row_len)).flatten();
            let kept = if options.keep.iter().any(|r| r.is_match(&t.name)) {
                Some("--keep")
            } else if t.shape.rank() == 0 {
                Some("scalar")
            } else if t.shape.rank() < 2 {
                Some("1-D")
            } else if !rewrite::decodable(t.dtype) {
                Some("not a float tensor")
            } else if !fits && fell_back.is_none() {
                Some("row length is not a whole number of blocks")
            } else {
                None
            };
            let (to, fell_back_from) = match (kept, fell_back) {
                (Some(_), _) => (t.dtype, None),
                (None, Some(to)) => (to, Some(options.dtype)),
                (None, None) => (options.dtype, None),
            };
            Ok(Planned {
                name: t.name.clone(),
                from: t.dtype,
                to,
                shape: t.shape.dims().to_vec(),
                bytes_in: t.byte_len(),
                bytes_out: rewrite::out_len(file, t, to)?,
                kept,
                fell_back_from,
            })
        })
        .collect()
}

/// Quantize `file` into a GGUF file at `out` (written atomically). `progress` is called before
/// each tensor's bytes are written, with its index in the plan. The output carries a
/// [`crate::provenance`] record: parent `file`, transform `quantize {dtype}`.
pub fn quantize_file(
    file: &ModelFile,
    out: &Path,
    options: &QuantizeOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<Planned>> {
    let plan = plan(file, options)?;
    let outputs = file
        .tensors()
        .iter()
        .zip(&plan)
        .map(|(info, p)| {
            if p.to == p.from {
                return Output::stored(p.name.clone(), file, info);
            }
            Ok(Output {
                name: p.name.clone(),
                dtype: p.to,
                shape: p.shape.clone(),
                source: Box::new(Quantized {
                    file,
                    info,
                    to: p.to,
                    len: p.bytes_out,
                }),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut gguf_keys = Vec::new();
    if let Some(ft) = file_type(options.dtype) {
        gguf_keys.push(("general.file_type", Value::U32(ft)));
    }
    gguf_keys.push(("general.quantization_version", Value::U32(2)));
    Rewrite {
        provenance: true,
        input: file,
        format: Format::Gguf,
        transforms: vec![Transform::Quantize {
            dtype: options.dtype.name().to_string(),
        }],
        gguf_keys,
        max_shard_bytes: None,
    }
    .write(&outputs, out, progress)?;
    Ok(plan)
}

/// One tensor quantized a chunk of rows at a time when the writer asks for its bytes.
struct Quantized<'a> {
    file: &'a ModelFile,
    info: &'a TensorInfo,
    to: DType,
    len: u64,
}

impl ChunkSource for Quantized<'_> {
    fn byte_len(&self) -> u64 {
        self.len
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let (info, to) = (self.info, self.to);
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
            let values = crate::ops::convert::bytes_to_f32(info.dtype, bytes);
            let out =
                mlmf_core::quant::quantize(to, &values, row_len).map_err(|e| Error::BadShape {
                    path: self.file.path().to_path_buf(),
                    tensor: info.name.clone(),
                    reason: format!("cannot quantize to {to}: {e}"),
                })?;
            f(&out)?;
            row += n;
        }
        Ok(())
    }
}
