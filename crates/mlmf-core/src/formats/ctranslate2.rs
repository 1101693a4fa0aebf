//! CTranslate2 model files (`model.bin`), as `src/models/model.cc` reads them and
//! `python/ctranslate2/specs/model_spec.py` writes them (binary version 6 today):
//!
//! ```text
//! u32 binary_version                  1..=6
//! str spec name, u32 spec revision    (version >= 2)
//! u32 num_variables, then per variable:
//!   str name, u8 rank, u32 dims[rank],
//!   u8 dtype (>= 4: type id 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16; below: item size 4/2/1),
//!   u32 num_bytes (>= 4; below: element count), u8 data[num_bytes]
//! u32 num_aliases, then per alias: str alias, str target   (version >= 3)
//! str = u16 n (counting a terminating NUL), n bytes
//! ```
//!
//! Nothing is aligned: a variable's data starts right after its byte count, so f16 tensors lie
//! at odd offsets. Views are byte slices (`&[u8]`); readers decode them with `from_le_bytes`,
//! never by casting the pointer. Aliases are listed in the metadata ([`KEY_ALIASES`]) and not as
//! tensors (the bytes are stored once); [`super::ModelFile::tensor`] finds an alias's target by
//! the alias's name, as CTranslate2's `register_variable_alias` makes both names find one
//! variable.

use std::collections::HashSet;
use std::path::Path;

use super::reader::ByteReader;
use super::{Format, Metadata, Parsed, TensorInfo, Value};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;

/// CTranslate2's `current_binary_version` (`include/ctranslate2/models/model.h`).
pub const MAX_BINARY_VERSION: u32 = 6;

/// Metadata keys of a parsed file.
pub const KEY_BINARY_VERSION: &str = "ctranslate2.binary_version";
pub const KEY_SPEC: &str = "ctranslate2.spec";
pub const KEY_SPEC_REVISION: &str = "ctranslate2.spec_revision";
/// The aliases in file order, each a two-string array `[alias, target]`.
pub const KEY_ALIASES: &str = "ctranslate2.aliases";

/// Smallest variable record: a name of one byte (its NUL) with its u16 length, rank, dtype and
/// byte count, no dims and no data.
const MIN_VARIABLE_BYTES: u64 = 2 + 1 + 1 + 1 + 4;
/// Smallest alias record: two strings of one byte each.
const MIN_ALIAS_BYTES: u64 = 2 * (2 + 1);

/// CTranslate2's `DataType` ids (`include/ctranslate2/types.h`), binary version >= 4.
fn dtype_of_id(id: u8) -> Option<DType> {
    Some(match id {
        0 => DType::F32,
        1 => DType::I8,
        2 => DType::I16,
        3 => DType::I32,
        4 => DType::F16,
        5 => DType::BF16,
        _ => return None,
    })
}

/// Before version 4 the byte is an item size (`get_dtype_from_item_size`).
fn dtype_of_item_size(size: u8) -> Option<DType> {
    Some(match size {
        4 => DType::F32,
        2 => DType::I16,
        1 => DType::I8,
        _ => return None,
    })
}

/// CTranslate2's name of a dtype (`dtype_name` in `src/types.cc`), or `None` for one a
/// CTranslate2 file cannot hold.
pub fn ct2_name(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "float32",
        DType::I8 => "int8",
        DType::I16 => "int16",
        DType::I32 => "int32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => return None,
    })
}

/// Whether the first bytes look like a CTranslate2 model: a binary version 1..=6, then (from
/// version 2) the spec name's length and its first characters, an identifier; for version 1,
/// the variable count and the first name's length and characters. `head` may be short (a
/// truncated file is still recognised from its version and whatever follows).
pub fn detect(head: &[u8]) -> bool {
    let Some(version) = head
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    else {
        return false;
    };
    if !(1..=MAX_BINARY_VERSION).contains(&version) {
        return false;
    }
    // A version-1 file starts with the variable count; skip it.
    let text_at = if version == 1 { 8 } else { 4 };
    let Some(len) = head.get(text_at..text_at + 2) else {
        // Too short to say more; the parser reports where it ends.
        return true;
    };
    let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
    if len < 2 {
        return false;
    }
    let text = &head[(text_at + 2).min(head.len())..];
    // The name's characters (before its NUL) that `head` holds.
    let chars = &text[..text.len().min(len - 1)];
    let ok_char = |c: &u8| {
        if version == 1 {
            c.is_ascii_graphic()
        } else {
            c.is_ascii_alphanumeric() || *c == b'_'
        }
    };
    if !chars.iter().all(ok_char) {
        return false;
    }
    // The NUL, if it is inside `head`.
    text.get(len - 1).is_none_or(|&c| c == 0)
}

/// Parse a CTranslate2 `model.bin`. Every count and length is checked against the bytes that
/// remain before it sizes anything; trailing bytes after the aliases are an error.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let mut r = ByteReader::new(bytes, path);
    let version = r.u32("binary version")?;
    if !(1..=MAX_BINARY_VERSION).contains(&version) {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            format: "CTranslate2 binary",
            version: version.into(),
        });
    }
    let mut metadata = Metadata::default();
    metadata
        .entries
        .push((KEY_BINARY_VERSION.to_string(), Value::U32(version)));
    if version >= 2 {
        let spec = string(&mut r, "spec name")?;
        let revision = r.u32("spec revision")?;
        metadata
            .entries
            .push((KEY_SPEC.to_string(), Value::String(spec.to_string())));
        metadata
            .entries
            .push((KEY_SPEC_REVISION.to_string(), Value::U32(revision)));
    }

    let count_at = r.pos();
    let count = r.u32("variable count")?;
    let count = r.check_count(count.into(), MIN_VARIABLE_BYTES, "variable count", count_at)?;
    let mut tensors = Vec::with_capacity(count);
    for _ in 0..count {
        tensors.push(variable(&mut r, version)?);
    }

    if version >= 3 {
        let mut names: HashSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        let count_at = r.pos();
        let count = r.u32("alias count")?;
        let count = r.check_count(count.into(), MIN_ALIAS_BYTES, "alias count", count_at)?;
        let mut aliases = Vec::with_capacity(count);
        for _ in 0..count {
            let at = r.pos();
            let alias = string(&mut r, "alias name")?;
            let target = string(&mut r, "alias target")?;
            // Like `register_variable_alias`: the target may be a variable or an earlier alias.
            if !names.contains(target) {
                return Err(Error::BadAlias {
                    path: path.to_path_buf(),
                    alias: alias.to_string(),
                    target: target.to_string(),
                    offset: at as u64,
                });
            }
            if !names.insert(alias) {
                return Err(Error::DuplicateTensor {
                    path: path.to_path_buf(),
                    tensor: alias.to_string(),
                });
            }
            aliases.push(Value::Array(vec![
                Value::String(alias.to_string()),
                Value::String(target.to_string()),
            ]));
        }
        metadata
            .entries
            .push((KEY_ALIASES.to_string(), Value::Array(aliases)));
    }

    if r.remaining() != 0 {
        return Err(Error::DataNotCovered {
            path: path.to_path_buf(),
            offset: r.pos() as u64,
        });
    }
    Ok(Parsed {
        format: Format::CTranslate2,
        version: Some(version.into()),
        tensors,
        metadata,
    })
}

/// One variable record; the reader is left after its data.
fn variable(r: &mut ByteReader<'_>, version: u32) -> Result<TensorInfo> {
    let path = r.path();
    let record_at = r.pos();
    let name = string(r, "variable name")?.to_string();
    let what = |field: &str| format!("variable '{name}' {field}");
    let rank = r.u8(&what("rank"))?;
    // At most 255 dims, each read before it is stored: no unchecked allocation.
    let mut dims = Vec::with_capacity(usize::from(rank));
    for _ in 0..rank {
        dims.push(u64::from(r.u32(&what("dimension"))?));
    }
    let dtype_at = r.pos();
    let code = r.u8(&what("dtype"))?;
    let dtype = if version >= 4 {
        dtype_of_id(code)
    } else {
        dtype_of_item_size(code)
    };
    let Some(dtype) = dtype else {
        let kind = if version >= 4 { "type id" } else { "item size" };
        return Err(Error::UnknownDType {
            path: path.to_path_buf(),
            tensor: name,
            dtype: format!("CTranslate2 {kind} {code} at offset {dtype_at}"),
        });
    };
    let shape = Shape::from_u64(&dims);
    let Some((shape, expected)) =
        shape.and_then(|s| Some((s.clone(), dtype.byte_len(s.elem_count())?)))
    else {
        return Err(Error::BadVariable {
            path: path.to_path_buf(),
            tensor: name,
            offset: record_at as u64,
            reason: format!(
                "dims {dims:?} of {} hold more bytes than fit in 64 bits",
                dtype.name()
            ),
        });
    };
    let len_at = r.pos();
    let stored = u64::from(r.u32(&what("byte count"))?);
    // Before version 4 the field counts elements.
    let found = if version >= 4 {
        Some(stored)
    } else {
        stored.checked_mul(dtype.block_bytes())
    };
    if found != Some(expected) {
        let unit = if version >= 4 { "bytes" } else { "elements" };
        return Err(Error::BadVariable {
            path: path.to_path_buf(),
            tensor: name,
            offset: len_at as u64,
            reason: format!(
                "byte count field says {stored} {unit}, but dims {dims:?} of {} need {expected} bytes",
                dtype.name()
            ),
        });
    }
    let start = r.pos() as u64;
    r.take(expected, &what("data"))?;
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        file: 0,
        range: start..start + expected,
        strides: None,
    })
}

/// A CTranslate2 string: u16 length counting the terminating NUL, the UTF-8 text, the NUL.
fn string<'a>(r: &mut ByteReader<'a>, what: &str) -> Result<&'a str> {
    let at = r.pos();
    let len = r.u16(what)?;
    if len == 0 {
        // `consume<std::string>` refuses it too: the length counts the NUL.
        return Err(Error::BadHeader {
            path: r.path().to_path_buf(),
            offset: at as u64,
            reason: format!("{what}: length 0, but the length counts a terminating NUL"),
        });
    }
    let text = r.str(u64::from(len) - 1, what)?;
    let nul_at = r.pos();
    if r.u8(what)? != 0 {
        return Err(Error::BadHeader {
            path: r.path().to_path_buf(),
            offset: nul_at as u64,
            reason: format!("{what} '{text}' does not end with a NUL byte"),
        });
    }
    Ok(text)
}

/// The spec a parsed CTranslate2 file was written from (`WhisperSpec`, `TransformerSpec`), or
/// `None` for a version-1 file, which has none.
pub fn spec(metadata: &Metadata) -> Option<&str> {
    metadata.get(KEY_SPEC).and_then(Value::as_str)
}

/// The aliases of a parsed CTranslate2 file's metadata, `(alias, target)` in file order.
pub fn aliases(metadata: &Metadata) -> Vec<(&str, &str)> {
    let Some(Value::Array(items)) = metadata.get(KEY_ALIASES) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(t)] => Some((a.as_str(), t.as_str())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Refuse a model file unless it is a CTranslate2 file of `expected` spec.
pub fn expect_spec(file: &super::ModelFile, expected: &str) -> Result<()> {
    let found = if file.format() == Format::CTranslate2 {
        spec(file.metadata()).unwrap_or("(none: binary version 1)")
    } else {
        file.format().name()
    };
    if found == expected {
        return Ok(());
    }
    Err(Error::WrongSpec {
        path: file.path().to_path_buf(),
        expected: expected.to_string(),
        found: found.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_headers_of_each_version() {
        assert!(detect(b"\x06\x00\x00\x00\x0c\x00WhisperSpec\x00"));
        assert!(detect(b"\x06\x00\x00\x00\x0c\x00Whisp"));
        assert!(detect(b"\x01\x00\x00\x00\x02\x00\x00\x00\x04\x00a/b\x00"));
        assert!(!detect(b"\x07\x00\x00\x00\x0c\x00WhisperSpec\x00"));
        assert!(!detect(b"\x06\x00\x00\x00\x0c\x00Whis{er"));
        assert!(!detect(b"\x06\x00\x00\x00\x00\x00"));
        assert!(!detect(b"\x06\x00"));
    }
}
