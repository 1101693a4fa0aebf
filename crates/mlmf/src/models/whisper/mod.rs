//! OpenAI's Whisper as faster-whisper users have it on disk: a CTranslate2 `model.bin` (spec
//! `WhisperSpec`), read through [`crate::ModelFile`]. The model's facts (fused projections,
//! scales, epsilon, GELU) are in `../shared/fixtures/whisper/README.md`; each part's module doc
//! says which it relies on: the audio encoder ([`encoder`]), the text decoder ([`decoder`]) and
//! greedy transcription ([`Whisper`]).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::formats::{ModelFile, TensorInfo};
use crate::DType;

pub mod decoder;
pub mod encoder;
mod layers;
mod transcribe;

pub use decoder::{CrossKv, DecoderConfig, Step, WhisperDecoder};
pub use encoder::{EncoderConfig, WhisperEncoder};
pub use transcribe::{
    CrossAttention, Decoded, Timing, TranscribeOptions, Transcript, Whisper, SAMPLE_RATE,
};

/// The spec name a CTranslate2 Whisper model carries.
pub const SPEC: &str = "WhisperSpec";

/// The directory of Whisper tiny.en in CTranslate2's format (`model.bin`, `config.json`,
/// `tokenizer.json`, `vocabulary.txt`) that `scripts/fetch_models.py` fetches, under the model
/// cache.
pub fn tiny_en_dir(models: &Path) -> PathBuf {
    models.join("whisper-tiny.en-ct2")
}

fn bad(file: &ModelFile, reason: String) -> Error {
    Error::BadModel {
        path: file.path().to_path_buf(),
        reason,
    }
}

/// The file's CTranslate2 spec must be Whisper's, where the file records one (a safetensors
/// file of the same variables has none, and is taken as it is).
pub(crate) fn check_spec(file: &ModelFile) -> Result<()> {
    match file.metadata().get(crate::formats::ctranslate2::KEY_SPEC) {
        None => Ok(()),
        Some(v) if v.as_str() == Some(SPEC) => Ok(()),
        Some(v) => Err(bad(file, format!("spec {v:?}: expected {SPEC}"))),
    }
}

/// The variable `name`, which must have shape `dims` (`None`: any extent there) and a float
/// dtype, and be stored contiguously.
pub(crate) fn variable<'f>(
    file: &'f ModelFile,
    name: &str,
    dims: &[Option<usize>],
) -> Result<&'f TensorInfo> {
    let info = file.tensor(name)?;
    let shape = info.shape.dims();
    let fits = shape.len() == dims.len()
        && shape
            .iter()
            .zip(dims)
            .all(|(&s, d)| d.is_none_or(|d| d == s));
    if !fits {
        let want: Vec<String> = dims
            .iter()
            .map(|d| d.map_or("_".to_string(), |d| d.to_string()))
            .collect();
        return Err(bad(
            file,
            format!("{name}: shape {shape:?}, expected [{}]", want.join(", ")),
        ));
    }
    if !matches!(info.dtype, DType::F32 | DType::F16 | DType::BF16) || info.strides.is_some() {
        return Err(bad(
            file,
            format!(
                "{name}: {} (strided: {}), expected contiguous f32, f16 or bf16",
                info.dtype,
                info.strides.is_some()
            ),
        ));
    }
    Ok(info)
}

/// The values of a checked [`variable`], widened to f32 (exactly: every f16 and bf16 is an f32).
pub(crate) fn values(file: &ModelFile, info: &TensorInfo) -> Result<Vec<f32>> {
    let bytes = file.bytes(info);
    let count = info.shape.elem_count();
    if info.dtype.byte_len(count) != Some(bytes.len() as u64) {
        return Err(bad(
            file,
            format!(
                "{}: {} bytes for {count} elements of {}",
                info.name,
                bytes.len(),
                info.dtype
            ),
        ));
    }
    Ok(crate::ops::convert::bytes_to_f32(info.dtype, bytes))
}

/// An integer scalar of the spec (`encoder/num_heads`): rank 0 or one element, i8, i16 or i32.
pub(crate) fn scalar(file: &ModelFile, name: &str) -> Result<i64> {
    let info = file.tensor(name)?;
    let b = file.bytes(info);
    let v = match (info.shape.elem_count(), info.dtype, b) {
        (1, DType::I8, &[a]) => i64::from(a as i8),
        (1, DType::I16, &[a, c]) => i64::from(i16::from_le_bytes([a, c])),
        (1, DType::I32, &[a, c, d, e]) => i64::from(i32::from_le_bytes([a, c, d, e])),
        _ => {
            return Err(bad(
                file,
                format!(
                    "{name}: {} {:?}, expected an integer scalar",
                    info.dtype,
                    info.shape.dims()
                ),
            ))
        }
    };
    Ok(v)
}
