//! GGUF (llama.cpp) files: header, typed metadata, tensor index.
//!
//! Layout, all little-endian (ggml `docs/gguf.md`; readers: ggml `src/gguf.cpp`
//! `gguf_init_from_file_impl`, gguf-py `gguf_reader.py`):
//!
//! ```text
//! "GGUF"  u32 version  u64 tensor_count  u64 kv_count
//! kv_count x   { string key, u32 value type, value }
//! tensor_count x { string name, u32 n_dims, n_dims x u64 ne, u32 ggml type, u64 offset }
//! padding to the alignment, then the data section; each offset is relative to its start
//! ```
//!
//! A string is a u64 byte length and UTF-8 bytes, without a terminating zero. `ne` lists the
//! dimensions fastest first; [`TensorInfo::shape`] holds them reversed (numpy order).
//!
//! The file is untrusted: every count and length is checked against the bytes that remain
//! before anything is allocated for it, and every tensor's data range against the file.

use std::collections::HashSet;
use std::path::Path;

use super::reader::ByteReader;
use super::{Format, Metadata, Parsed, TensorInfo, Value};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;

pub const MAGIC: &[u8; 4] = b"GGUF";

/// Versions read here. v1 stored counts and lengths as u32; llama.cpp and gguf-py
/// (`READER_SUPPORTED_VERSIONS = [2, 3]`) refuse it too. v3 differs from v2 only in allowing
/// big-endian files, which we recognise by their byte-swapped version number and refuse.
pub const SUPPORTED_VERSIONS: [u32; 2] = [2, 3];

/// Metadata key that sets the data alignment (`GGUF_KEY_GENERAL_ALIGNMENT`).
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Alignment when the file does not set one (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// Deepest nesting of metadata arrays accepted (an array of arrays of strings is depth 2).
/// The spec and gguf-py allow arrays of arrays; llama.cpp's `gguf.cpp` refuses them outright (an
/// ARRAY element type falls into its "invalid GGUF type" branch). We accept a few levels, and
/// the cap keeps the recursion over a hostile file shallow.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Fewest bytes a key/value pair can take: key length, value type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;

/// Metadata key mlmf writes listing the tensors that were 0-d (scalars): GGUF stores them as
/// ggml does, with one dimension of 1 (`ne = [1]`), and this key lets a reader give them their
/// shape `[]` back. Our reader does so for each listed tensor whose stored shape is `[1]`.
/// A string array of tensor names.
pub const SCALARS_KEY: &str = "mlmf.scalar_tensors";

/// Fewest bytes a tensor info can take: name length, n_dims, type, offset (a 0-d tensor, as
/// gguf-py writes a numpy scalar, has no `ne`).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// Offset of `tensor_count` in the header, for errors about it.
const TENSOR_COUNT_OFFSET: usize = 8;

/// Read the header, metadata and tensor index of a GGUF file held in `bytes`.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let mut r = ByteReader::new(bytes, path);
    let magic: [u8; 4] = r.array("magic")?;
    if &magic != MAGIC {
        return Err(Error::BadHeader {
            path: path.to_path_buf(),
            offset: 0,
            reason: format!("magic {magic:02x?} is not \"GGUF\""),
        });
    }
    let version = r.u32("version")?;
    check_version(path, version)?;
    let tensor_count = r.u64("tensor count")?;
    let kv_at = r.pos();
    let kv_count = r.u64("metadata key/value count")?;
    let kv_count = r.check_count(kv_count, MIN_KV_BYTES, "metadata key/value count", kv_at)?;

    let metadata = read_metadata(&mut r, kv_count)?;
    let alignment = alignment(path, &metadata)?;

    let tensor_count = r.check_count(
        tensor_count,
        MIN_TENSOR_INFO_BYTES,
        "tensor count",
        TENSOR_COUNT_OFFSET,
    )?;
    let mut entries = Vec::with_capacity(tensor_count);
    let mut names = HashSet::with_capacity(tensor_count);
    for _ in 0..tensor_count {
        let entry = read_tensor_info(&mut r)?;
        if !names.insert(entry.name) {
            return Err(Error::DuplicateTensor {
                path: path.to_path_buf(),
                tensor: entry.name.to_string(),
            });
        }
        entries.push(entry);
    }

    // The data section starts at the next multiple of the alignment; `r.pos()` is at most the
    // file length and the alignment at most 2^31, so this cannot overflow.
    let data_start = (r.pos() as u64).next_multiple_of(alignment);
    let mut tensors = locate(path, entries, data_start, alignment, bytes.len() as u64)?;
    restore_scalars(&mut tensors, &metadata);
    Ok(Parsed {
        format: Format::Gguf,
        version: Some(version.into()),
        tensors,
        metadata,
    })
}

fn check_version(path: &Path, version: u32) -> Result<()> {
    if SUPPORTED_VERSIONS.contains(&version) {
        return Ok(());
    }
    // A big-endian file stores 3 as 0x03000000. llama.cpp spots these by the low 16 bits being
    // zero; we name the version the file meant.
    let swapped = version.swap_bytes();
    let (format, version) = if (1..=3).contains(&swapped) {
        ("big-endian GGUF", swapped)
    } else {
        ("GGUF", version)
    };
    Err(Error::UnsupportedVersion {
        path: path.to_path_buf(),
        format,
        version: version.into(),
    })
}

/// A GGUF string: u64 length, then UTF-8 bytes, borrowed from the file.
fn read_string<'a>(r: &mut ByteReader<'a>, what: &str) -> Result<&'a str> {
    let at = r.pos();
    let len = r.u64(what)?;
    let len = r.check_count(len, 1, what, at)?;
    r.str(len as u64, what)
}

// ---- metadata ------------------------------------------------------------------------------

/// GGUF metadata value types (`enum gguf_type`), by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Fewest bytes one value takes: a string needs its length, an array its element type and
    /// count. Array counts are checked against this before the array is allocated.
    fn min_bytes(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 4 + 8,
        }
    }
}

fn read_metadata(r: &mut ByteReader<'_>, count: usize) -> Result<Metadata> {
    let mut entries: Vec<(String, Value)> = Vec::with_capacity(count);
    let mut keys = HashSet::with_capacity(count);
    for _ in 0..count {
        let key = read_string(r, "metadata key")?;
        // llama.cpp rejects a file that repeats a key; a later value must not silently win.
        if !keys.insert(key) {
            return Err(Error::BadMetadata {
                path: r.path().to_path_buf(),
                key: key.to_string(),
                reason: "the key appears twice".into(),
            });
        }
        let value = read_value_type(r, key)
            .and_then(|ty| read_value(r, ty, key, 0))
            .map_err(|e| naming_key(e, key))?;
        entries.push((key.to_string(), value));
    }
    Ok(Metadata { entries })
}

fn read_value_type(r: &mut ByteReader<'_>, key: &str) -> Result<ValueType> {
    let at = r.pos();
    let id = r.u32("metadata value type")?;
    ValueType::from_id(id).ok_or_else(|| Error::UnknownValueType {
        path: r.path().to_path_buf(),
        key: key.to_string(),
        type_id: id,
        offset: at as u64,
    })
}

/// One value of type `ty`. `depth` counts the arrays around it.
fn read_value(r: &mut ByteReader<'_>, ty: ValueType, key: &str, depth: usize) -> Result<Value> {
    const WHAT: &str = "metadata value";
    Ok(match ty {
        ValueType::U8 => Value::U8(r.u8(WHAT)?),
        ValueType::I8 => Value::I8(i8::from_le_bytes(r.array(WHAT)?)),
        ValueType::U16 => Value::U16(r.u16(WHAT)?),
        ValueType::I16 => Value::I16(i16::from_le_bytes(r.array(WHAT)?)),
        ValueType::U32 => Value::U32(r.u32(WHAT)?),
        ValueType::I32 => Value::I32(r.i32(WHAT)?),
        ValueType::F32 => Value::F32(f32::from_le_bytes(r.array(WHAT)?)),
        ValueType::U64 => Value::U64(r.u64(WHAT)?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(r.array(WHAT)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(r.array(WHAT)?)),
        // The spec: "1-byte value where 0 is false and 1 is true. Anything else is invalid".
        ValueType::Bool => {
            let at = r.pos();
            match r.u8(WHAT)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(bad_metadata(
                        r,
                        key,
                        format!("bool at offset {at} is {b}, not 0 or 1"),
                    ))
                }
            }
        }
        ValueType::String => Value::String(read_string(r, "metadata string")?.to_string()),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(bad_metadata(
                    r,
                    key,
                    format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"),
                ));
            }
            let elem = read_value_type(r, key)?;
            let at = r.pos();
            let count = r.u64("metadata array length")?;
            let count = r.check_count(count, elem.min_bytes(), "metadata array length", at)?;
            // Each `Value` is larger than its encoding (up to 32x for u8 arrays), but the count
            // is bounded by the file size, so the allocation is too.
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push(read_value(r, elem, key, depth + 1)?);
            }
            Value::Array(items)
        }
    })
}

fn bad_metadata(r: &ByteReader<'_>, key: &str, reason: String) -> Error {
    Error::BadMetadata {
        path: r.path().to_path_buf(),
        key: key.to_string(),
        reason,
    }
}

/// Put the key into a low-level read error, so the message says which value was bad.
fn naming_key(err: Error, key: &str) -> Error {
    let named = |what: String| format!("{what} of '{key}'");
    match err {
        Error::Truncated {
            path,
            what,
            offset,
            needed,
            available,
        } => Error::Truncated {
            path,
            what: named(what),
            offset,
            needed,
            available,
        },
        Error::LengthOutOfRange {
            path,
            what,
            offset,
            value,
            limit,
        } => Error::LengthOutOfRange {
            path,
            what: named(what),
            offset,
            value,
            limit,
        },
        Error::BadUtf8 { path, what, offset } => Error::BadUtf8 {
            path,
            what: named(what),
            offset,
        },
        other => other,
    }
}

/// The data alignment: `general.alignment` if present, which must be a u32 power of two (as
/// llama.cpp's `gguf_get_val_u32` and gguf-py's reader require), else [`DEFAULT_ALIGNMENT`].
fn alignment(path: &Path, meta: &Metadata) -> Result<u64> {
    match meta.get(ALIGNMENT_KEY) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some(v) => Err(Error::BadMetadata {
            path: path.to_path_buf(),
            key: ALIGNMENT_KEY.into(),
            reason: format!("must be a nonzero power of two stored as u32, found {v:?}"),
        }),
    }
}

// ---- tensor index -----------------------------------------------------------------------------

/// Give the tensors [`SCALARS_KEY`] lists their 0-d shape back. Names are data: a key of
/// another type, or a listed name that is not a `[1]` tensor here, changes nothing.
fn restore_scalars(tensors: &mut [TensorInfo], metadata: &Metadata) {
    let Some(Value::Array(names)) = metadata.get(SCALARS_KEY) else {
        return;
    };
    let names: HashSet<&str> = names.iter().filter_map(Value::as_str).collect();
    for t in tensors {
        if t.shape.dims() == [1] && names.contains(t.name.as_str()) {
            t.shape = Shape::scalar();
        }
    }
}

/// A tensor info record, checked on its own; its offset is checked by [`locate`].
struct Entry<'a> {
    name: &'a str,
    dtype: DType,
    shape: Shape,
    byte_len: u64,
    /// As stored: relative to the data section.
    offset: u64,
}

fn read_tensor_info<'a>(r: &mut ByteReader<'a>) -> Result<Entry<'a>> {
    let path = r.path();
    let name = read_string(r, "tensor name")?;
    let bad_shape = |reason: String| Error::BadShape {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        reason,
    };
    let n_dims = r.u32("tensor dimension count")?;
    // As llama.cpp's `gguf_init_from_file_impl`: only more than GGML_MAX_DIMS is refused. 0 is
    // a scalar (gguf-py writes a numpy 0-d array so; ggml reads it as ne = [1, 1, 1, 1]).
    if n_dims > MAX_DIMS {
        return Err(bad_shape(format!(
            "{n_dims} dimensions; GGUF allows at most {MAX_DIMS} (GGML_MAX_DIMS)"
        )));
    }
    let mut ne = [0u64; MAX_DIMS as usize];
    let ne = &mut ne[..n_dims as usize];
    for d in ne.iter_mut() {
        *d = r.u64("tensor dimension")?;
    }
    let type_id = r.u32("tensor type")?;
    let offset = r.u64("tensor data offset")?;

    // Unknown ids are errors; known types the engine cannot compute yet (Q8_K, ...) are
    // listed like any other, so their bytes can still be read and copied.
    let dtype = DType::from_ggml_id(type_id).ok_or_else(|| Error::UnknownDType {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        dtype: format!("ggml type id {type_id}"),
    })?;
    let dims: Vec<u64> = ne.iter().rev().copied().collect();
    let overflow = || Error::ShapeOverflow {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        shape: dims.clone(),
    };
    // ggml counts elements in int64_t, so llama.cpp refuses more than i64::MAX of them.
    let shape = Shape::from_u64(&dims)
        .filter(|s| s.elem_count() <= i64::MAX as u64)
        .ok_or_else(overflow)?;
    // Blocks never straddle rows: each row is ne[0] / block_elems whole blocks. A scalar's row
    // is its one element.
    let block = dtype.block_elems();
    let row = ne.first().copied().unwrap_or(1);
    if row % block != 0 {
        return Err(bad_shape(format!(
            "row length {row} (ne[0]) is not a multiple of the {dtype} block size {block}"
        )));
    }
    let byte_len = dtype.byte_len(shape.elem_count()).ok_or_else(overflow)?;
    Ok(Entry {
        name,
        dtype,
        shape,
        byte_len,
        offset,
    })
}

/// Turn entries into tensor infos with absolute byte ranges, checking that each offset is
/// aligned, each range lies in the file and no two ranges overlap. Gaps are allowed: writers
/// pad every tensor to the alignment. The file's order is kept.
fn locate(
    path: &Path,
    entries: Vec<Entry<'_>>,
    data_start: u64,
    alignment: u64,
    file_len: u64,
) -> Result<Vec<TensorInfo>> {
    let data_len = file_len.saturating_sub(data_start);
    let mut tensors = Vec::with_capacity(entries.len());
    for e in entries {
        if e.offset % alignment != 0 {
            return Err(Error::Misaligned {
                path: path.to_path_buf(),
                tensor: e.name.to_string(),
                offset: e.offset,
                alignment,
            });
        }
        let end = e
            .offset
            .checked_add(e.byte_len)
            .filter(|&end| end <= data_len);
        let Some(end) = end else {
            return Err(Error::TensorOutOfBounds {
                path: path.to_path_buf(),
                tensor: e.name.to_string(),
                start: e.offset,
                end: e.offset.saturating_add(e.byte_len),
                len: data_len,
            });
        };
        // `end <= data_len = file_len - data_start`, so neither sum overflows.
        tensors.push(TensorInfo {
            name: e.name.to_string(),
            dtype: e.dtype,
            shape: e.shape,
            file: 0,
            range: data_start + e.offset..data_start + end,
            strides: None,
        });
    }

    let mut by_start: Vec<&TensorInfo> = tensors.iter().collect();
    by_start.sort_by_key(|t| (t.range.start, t.range.end));
    for pair in by_start.windows(2) {
        let (first, second) = (pair[0], pair[1]);
        if second.range.start < first.range.end {
            return Err(Error::OverlappingTensors {
                path: path.to_path_buf(),
                first: first.name.clone(),
                second: second.name.clone(),
                offset: second.range.start,
            });
        }
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    // gguf_type ids.
    const U8: u32 = 0;
    const I8: u32 = 1;
    const U16: u32 = 2;
    const I16: u32 = 3;
    const U32: u32 = 4;
    const I32: u32 = 5;
    const F32: u32 = 6;
    const BOOL: u32 = 7;
    const STRING: u32 = 8;
    const ARRAY: u32 = 9;
    const U64: u32 = 10;
    const I64: u32 = 11;
    const F64: u32 = 12;

    // ggml_type ids.
    const GGML_F32: u32 = 0;
    const GGML_Q4_0: u32 = 2;
    const GGML_IQ2_XXS: u32 = 16;
    const GGML_I8: u32 = 24;

    /// A GGUF string: u64 length, then the bytes.
    fn gstr(s: &[u8]) -> Vec<u8> {
        let mut out = (s.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(s);
        out
    }

    /// An array value (after the ARRAY type id): element type, count, encoded elements.
    fn garray(elem_type: u32, items: &[Vec<u8>]) -> Vec<u8> {
        let mut out = elem_type.to_le_bytes().to_vec();
        out.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for item in items {
            out.extend_from_slice(item);
        }
        out
    }

    /// Writes a GGUF file field by field, as the spec lays it out.
    struct Gguf {
        version: u32,
        n_kv: u64,
        kvs: Vec<u8>,
        n_tensors: u64,
        infos: Vec<u8>,
        /// Padding written before the data section.
        alignment: usize,
        data: Vec<u8>,
    }

    impl Gguf {
        fn new() -> Gguf {
            Gguf {
                version: 3,
                n_kv: 0,
                kvs: Vec::new(),
                n_tensors: 0,
                infos: Vec::new(),
                alignment: 32,
                data: Vec::new(),
            }
        }

        /// A key/value pair given as raw bytes.
        fn kv_raw(mut self, raw: &[u8]) -> Gguf {
            self.kvs.extend_from_slice(raw);
            self.n_kv += 1;
            self
        }

        fn kv(self, key: &[u8], type_id: u32, value: &[u8]) -> Gguf {
            self.kv_raw(&[gstr(key), type_id.to_le_bytes().to_vec(), value.to_vec()].concat())
        }

        fn kv_str(self, key: &str, value: &str) -> Gguf {
            self.kv(key.as_bytes(), STRING, &gstr(value.as_bytes()))
        }

        fn kv_u32(self, key: &str, value: u32) -> Gguf {
            self.kv(key.as_bytes(), U32, &value.to_le_bytes())
        }

        /// A tensor info record; n_dims is `ne.len()`.
        fn tensor(mut self, name: &[u8], ne: &[u64], ggml_type: u32, offset: u64) -> Gguf {
            self.infos.extend_from_slice(&gstr(name));
            self.infos
                .extend_from_slice(&(ne.len() as u32).to_le_bytes());
            for d in ne {
                self.infos.extend_from_slice(&d.to_le_bytes());
            }
            self.infos.extend_from_slice(&ggml_type.to_le_bytes());
            self.infos.extend_from_slice(&offset.to_le_bytes());
            self.n_tensors += 1;
            self
        }

        /// `len` bytes of data, each its index mod 251, so ranges can be told apart.
        fn data(mut self, len: usize) -> Gguf {
            self.data = (0..len).map(|i| (i % 251) as u8).collect();
            self
        }

        fn header_len(&self) -> usize {
            4 + 4 + 8 + 8 + self.kvs.len() + self.infos.len()
        }

        fn data_start(&self) -> usize {
            self.header_len().next_multiple_of(self.alignment)
        }

        fn build(&self) -> Vec<u8> {
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(&self.version.to_le_bytes());
            out.extend_from_slice(&self.n_tensors.to_le_bytes());
            out.extend_from_slice(&self.n_kv.to_le_bytes());
            out.extend_from_slice(&self.kvs);
            out.extend_from_slice(&self.infos);
            if !self.data.is_empty() {
                out.resize(self.data_start(), 0);
                out.extend_from_slice(&self.data);
            }
            out
        }
    }

    fn open(bytes: &[u8]) -> Result<Parsed> {
        parse(bytes, Path::new("x.gguf"))
    }

    /// A small valid file: strings, a nested array, an F32 and a Q4_0 tensor, the last tensor
    /// ending exactly at the end of the file.
    fn small() -> Gguf {
        let tokens = garray(STRING, &[gstr(b"<s>"), gstr(b"hi")]);
        let nested = garray(ARRAY, &[garray(U8, &[vec![1], vec![2]]), garray(U8, &[])]);
        Gguf::new()
            .kv_str("general.architecture", "llama")
            .kv_u32("general.alignment", 32)
            .kv(b"tokenizer.ggml.tokens", ARRAY, &tokens)
            .kv(b"nested", ARRAY, &nested)
            .tensor(b"a", &[4], GGML_F32, 0)
            .tensor(b"b", &[32, 2], GGML_Q4_0, 32)
            .data(32 + 2 * 18)
    }

    #[test]
    fn reads_a_small_file() {
        let g = small();
        let bytes = g.build();
        let parsed = open(&bytes).unwrap();
        assert_eq!(parsed.format, Format::Gguf);
        assert_eq!(parsed.version, Some(3));
        let keys: Vec<&str> = parsed.metadata.iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "general.architecture",
                "general.alignment",
                "tokenizer.ggml.tokens",
                "nested"
            ]
        );
        assert_eq!(
            parsed
                .metadata
                .get("general.architecture")
                .and_then(Value::as_str),
            Some("llama")
        );
        assert_eq!(
            parsed.metadata.get("tokenizer.ggml.tokens"),
            Some(&Value::Array(vec![
                Value::String("<s>".into()),
                Value::String("hi".into())
            ]))
        );

        let start = g.data_start() as u64;
        assert_eq!(start % 32, 0);
        let [a, b] = &parsed.tensors[..] else {
            panic!("expected two tensors, got {:?}", parsed.tensors)
        };
        assert_eq!(
            (a.name.as_str(), a.dtype, a.shape.dims()),
            ("a", DType::F32, &[4][..])
        );
        assert_eq!(a.range, start..start + 16);
        // ne = [32, 2] is numpy [2, 32]; two rows of one 18-byte block each.
        assert_eq!(
            (b.name.as_str(), b.dtype, b.shape.dims()),
            ("b", DType::Q4_0, &[2, 32][..])
        );
        assert_eq!(b.range, start + 32..start + 68);
        assert_eq!(b.range.end, bytes.len() as u64);
        assert_eq!((b.file, b.strides.clone()), (0, None));
        assert_eq!(
            &bytes[b.range.start as usize..b.range.end as usize],
            &g.data[32..]
        );
    }

    #[test]
    fn version_2_is_read() {
        let mut g = small();
        g.version = 2;
        assert_eq!(open(&g.build()).unwrap().version, Some(2));
    }

    #[test]
    fn file_without_tensors_or_padding() {
        let bytes = Gguf::new().kv_str("general.name", "empty").build();
        let parsed = open(&bytes).unwrap();
        assert!(parsed.tensors.is_empty());
        assert_eq!(parsed.metadata.len(), 1);
    }

    #[test]
    fn tensors_keep_file_order() {
        let bytes = Gguf::new()
            .tensor(b"second", &[8], GGML_F32, 32)
            .tensor(b"first", &[8], GGML_F32, 0)
            .data(64)
            .build();
        let names: Vec<String> = open(&bytes)
            .unwrap()
            .tensors
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["second", "first"]);
    }

    #[test]
    fn every_value_type() {
        let bytes = Gguf::new()
            .kv(b"u8", U8, &[200])
            .kv(b"i8", I8, &[0xff])
            .kv(b"u16", U16, &60000u16.to_le_bytes())
            .kv(b"i16", I16, &(-2i16).to_le_bytes())
            .kv(b"u32", U32, &4_000_000_000u32.to_le_bytes())
            .kv(b"i32", I32, &(-3i32).to_le_bytes())
            .kv(b"f32", F32, &1.5f32.to_le_bytes())
            .kv(b"bool", BOOL, &[1])
            .kv(b"string", STRING, &gstr("héllo".as_bytes()))
            .kv(
                b"array",
                ARRAY,
                &garray(I32, &[7i32.to_le_bytes().to_vec()]),
            )
            .kv(b"u64", U64, &u64::MAX.to_le_bytes())
            .kv(b"i64", I64, &i64::MIN.to_le_bytes())
            .kv(b"f64", F64, &(-0.25f64).to_le_bytes())
            .build();
        let parsed = open(&bytes).unwrap();
        let values: Vec<&Value> = parsed.metadata.iter().map(|(_, v)| v).collect();
        assert_eq!(
            values,
            [
                &Value::U8(200),
                &Value::I8(-1),
                &Value::U16(60000),
                &Value::I16(-2),
                &Value::U32(4_000_000_000),
                &Value::I32(-3),
                &Value::F32(1.5),
                &Value::Bool(true),
                &Value::String("héllo".into()),
                &Value::Array(vec![Value::I32(7)]),
                &Value::U64(u64::MAX),
                &Value::I64(i64::MIN),
                &Value::F64(-0.25),
            ]
        );
    }

    #[test]
    fn nested_arrays() {
        let inner1 = garray(STRING, &[gstr(b"a"), gstr(b"bc")]);
        let inner2 = garray(STRING, &[gstr(b"d")]);
        let bytes = Gguf::new()
            .kv(b"merges", ARRAY, &garray(ARRAY, &[inner1, inner2]))
            .build();
        let parsed = open(&bytes).unwrap();
        let s = |x: &str| Value::String(x.into());
        assert_eq!(
            parsed.metadata.get("merges"),
            Some(&Value::Array(vec![
                Value::Array(vec![s("a"), s("bc")]),
                Value::Array(vec![s("d")]),
            ]))
        );
    }

    /// `depth` arrays, each holding the next; the innermost holds one u8.
    fn nested(depth: usize) -> Vec<u8> {
        let mut value = garray(U8, &[vec![9]]);
        for _ in 1..depth {
            value = garray(ARRAY, &[value]);
        }
        value
    }

    #[test]
    fn array_nesting_is_capped() {
        let ok = Gguf::new()
            .kv(b"deep", ARRAY, &nested(MAX_ARRAY_DEPTH))
            .build();
        assert!(open(&ok).is_ok());
        let deep = Gguf::new()
            .kv(b"deep", ARRAY, &nested(MAX_ARRAY_DEPTH + 1))
            .build();
        assert!(matches!(open(&deep), Err(Error::BadMetadata { key, .. }) if key == "deep"));
    }

    #[test]
    fn truncated_file() {
        let g = small();
        let bytes = g.build();
        // Every prefix fails, none panics. Cut inside the header the reader runs out of bytes
        // (Truncated), or a length or count claims more than is left (LengthOutOfRange); cut in
        // the padding or the data, a tensor lies past the end.
        for len in 0..bytes.len() {
            let result = open(&bytes[..len]);
            if len < g.header_len() {
                assert!(
                    matches!(
                        result,
                        Err(Error::Truncated { .. } | Error::LengthOutOfRange { .. })
                    ),
                    "prefix of {len} bytes: {result:?}"
                );
            } else {
                assert!(
                    matches!(result, Err(Error::TensorOutOfBounds { .. })),
                    "prefix of {len} bytes: {result:?}"
                );
            }
        }
        // Named cut points: inside the magic, the version and the kv count, then inside the
        // last tensor info (its type and offset), where the byte counts checked up front (two
        // tensor infos of at least 32 bytes) still fit.
        for len in [2, 6, 20] {
            assert!(matches!(open(&bytes[..len]), Err(Error::Truncated { .. })));
        }
        let end = g.header_len();
        for (len, field) in [(end - 10, "tensor type"), (end - 3, "tensor data offset")] {
            assert!(
                matches!(open(&bytes[..len]), Err(Error::Truncated { what, .. }) if what == field),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn no_byte_change_panics() {
        let bytes = small().build();
        for i in 0..bytes.len() {
            for v in [
                0x00,
                0x01,
                0x09,
                0x20,
                0x7f,
                0x80,
                0xff,
                bytes[i].wrapping_add(1),
            ] {
                let mut copy = bytes.clone();
                copy[i] = v;
                let _ = open(&copy);
            }
        }
    }

    #[test]
    fn bad_magic() {
        let mut bytes = small().build();
        bytes[3] = b'G';
        assert!(matches!(
            open(&bytes),
            Err(Error::BadHeader { offset: 0, .. })
        ));
    }

    #[test]
    fn version_1_and_future_versions() {
        for v in [0, 1, 4] {
            let mut g = small();
            g.version = v;
            assert!(
                matches!(open(&g.build()), Err(Error::UnsupportedVersion { version, format: "GGUF", .. }) if version == u64::from(v)),
                "version {v}"
            );
        }
    }

    #[test]
    fn byte_swapped_version() {
        let mut g = small();
        g.version = 3u32.swap_bytes();
        let err = open(&g.build()).unwrap_err();
        assert!(matches!(
            err,
            Error::UnsupportedVersion {
                version: 3,
                format: "big-endian GGUF",
                ..
            }
        ));
        assert!(
            err.to_string().contains("big-endian GGUF version 3"),
            "{err}"
        );
    }

    #[test]
    fn huge_counts() {
        let mut g = small();
        g.n_kv = u64::MAX;
        assert!(matches!(
            open(&g.build()),
            Err(Error::LengthOutOfRange { offset: 16, .. })
        ));
        let mut g = small();
        g.n_tensors = 1 << 62;
        assert!(matches!(
            open(&g.build()),
            Err(Error::LengthOutOfRange { offset: 8, value, .. }) if value == 1 << 62
        ));
    }

    #[test]
    fn string_length_2_pow_62() {
        let huge = (1u64 << 62).to_le_bytes();
        // In a value, in a key, in a tensor name.
        let value = Gguf::new().kv(b"k", STRING, &huge).build();
        let key = Gguf::new()
            .kv_raw(&[&huge[..], b"k", &[0; 8]].concat())
            .build();
        let mut name = Gguf::new().data(32);
        name.infos = [&huge[..], b"t"].concat();
        name.n_tensors = 1;
        for bytes in [value, key, name.build()] {
            assert!(matches!(
                open(&bytes),
                Err(Error::LengthOutOfRange { value, .. }) if value == 1 << 62
            ));
        }
    }

    #[test]
    fn array_length_2_pow_62() {
        for elem in [U8, U64, STRING, ARRAY] {
            let value = [
                elem.to_le_bytes().to_vec(),
                (1u64 << 62).to_le_bytes().to_vec(),
            ]
            .concat();
            let bytes = Gguf::new().kv(b"k", ARRAY, &value).build();
            assert!(matches!(
                open(&bytes),
                Err(Error::LengthOutOfRange { value, what, .. }) if value == 1 << 62 && what.contains("'k'")
            ));
        }
    }

    #[test]
    fn unknown_value_type() {
        let bytes = Gguf::new().kv(b"k", 13, &[0; 8]).build();
        assert!(matches!(
            open(&bytes),
            Err(Error::UnknownValueType { type_id: 13, key, offset: 33, .. }) if key == "k"
        ));
        // As an array's element type.
        let bytes = Gguf::new().kv(b"k", ARRAY, &garray(99, &[])).build();
        assert!(matches!(
            open(&bytes),
            Err(Error::UnknownValueType { type_id: 99, .. })
        ));
    }

    #[test]
    fn bool_other_than_0_or_1() {
        let bytes = Gguf::new().kv(b"flag", BOOL, &[2]).build();
        assert!(matches!(open(&bytes), Err(Error::BadMetadata { key, .. }) if key == "flag"));
    }

    #[test]
    fn duplicate_keys() {
        let bytes = Gguf::new().kv_u32("k", 1).kv_u32("k", 2).build();
        assert!(matches!(open(&bytes), Err(Error::BadMetadata { key, .. }) if key == "k"));
    }

    #[test]
    fn bad_utf8_in_key() {
        let bytes = Gguf::new().kv(b"k\xff", U8, &[0]).build();
        assert!(matches!(
            open(&bytes),
            Err(Error::BadUtf8 { what, offset: 32, .. }) if what == "metadata key"
        ));
    }

    #[test]
    fn bad_utf8_in_tensor_name() {
        let bytes = Gguf::new()
            .tensor(b"\xc3(", &[4], GGML_F32, 0)
            .data(16)
            .build();
        assert!(matches!(
            open(&bytes),
            Err(Error::BadUtf8 { what, .. }) if what == "tensor name"
        ));
    }

    #[test]
    fn bad_utf8_in_string_value() {
        let bytes = Gguf::new().kv(b"k", STRING, &gstr(b"\xff")).build();
        assert!(matches!(open(&bytes), Err(Error::BadUtf8 { what, .. }) if what.contains("'k'")));
    }

    #[test]
    fn bad_alignment() {
        for a in [0, 3, 48] {
            let bytes = Gguf::new().kv_u32(ALIGNMENT_KEY, a).build();
            assert!(
                matches!(open(&bytes), Err(Error::BadMetadata { key, .. }) if key == ALIGNMENT_KEY),
                "alignment {a}"
            );
        }
        // The right number in the wrong type.
        let bytes = Gguf::new()
            .kv(ALIGNMENT_KEY.as_bytes(), U64, &32u64.to_le_bytes())
            .build();
        assert!(matches!(open(&bytes), Err(Error::BadMetadata { .. })));
    }

    #[test]
    fn custom_alignment() {
        let mut g = Gguf::new()
            .kv_u32(ALIGNMENT_KEY, 64)
            .tensor(b"a", &[4], GGML_F32, 0)
            .tensor(b"b", &[4], GGML_F32, 64)
            .data(80);
        g.alignment = 64;
        let parsed = open(&g.build()).unwrap();
        let start = g.data_start() as u64;
        assert_eq!(start % 64, 0);
        assert_eq!(parsed.tensors[1].range, start + 64..start + 80);
        // 32 is aligned to the default but not to 64.
        let mut g = Gguf::new()
            .kv_u32(ALIGNMENT_KEY, 64)
            .tensor(b"a", &[4], GGML_F32, 32)
            .data(48);
        g.alignment = 64;
        assert!(matches!(
            open(&g.build()),
            Err(Error::Misaligned {
                offset: 32,
                alignment: 64,
                ..
            })
        ));
    }

    #[test]
    fn unknown_ggml_type() {
        // 4 was Q4_2, removed from ggml; 1000 was never used.
        for id in [4, 1000] {
            let bytes = Gguf::new().tensor(b"w", &[32], id, 0).data(64).build();
            let err = open(&bytes).unwrap_err();
            assert!(
                matches!(&err, Error::UnknownDType { tensor, dtype, .. } if tensor == "w" && dtype.contains(&id.to_string())),
                "{err}"
            );
        }
    }

    #[test]
    fn known_types_without_kernels_are_listed() {
        let bytes = Gguf::new()
            .tensor(b"w", &[256, 2], GGML_IQ2_XXS, 0)
            .data(132)
            .build();
        let parsed = open(&bytes).unwrap();
        assert_eq!(parsed.tensors[0].dtype, DType::IQ2_XXS);
        assert_eq!(parsed.tensors[0].byte_len(), 2 * 66);
    }

    #[test]
    fn n_dims_out_of_range() {
        for ne in [&[1u64, 1, 1, 1, 1][..], &[1; 9]] {
            let bytes = Gguf::new().tensor(b"w", ne, GGML_F32, 0).data(4).build();
            assert!(
                matches!(open(&bytes), Err(Error::BadShape { tensor, .. }) if tensor == "w"),
                "{} dims",
                ne.len()
            );
        }
    }

    /// n_dims = 0, as gguf-py writes a numpy 0-d array: a scalar, as llama.cpp reads it.
    #[test]
    fn zero_dims_is_a_scalar() {
        let bytes = Gguf::new()
            .tensor(b"s", &[], GGML_F32, 0)
            .tensor(b"v", &[2], GGML_F32, 32)
            .data(40)
            .build();
        let parsed = open(&bytes).unwrap();
        let s = &parsed.tensors[0];
        assert_eq!((s.shape.rank(), s.shape.elem_count()), (0, 1));
        assert_eq!(s.byte_len(), 4);
        assert_eq!(parsed.tensors[1].shape.dims(), [2]);
        // A block type has no scalar: its one element does not fill a block.
        let bytes = Gguf::new().tensor(b"q", &[], GGML_Q4_0, 0).data(18).build();
        assert!(matches!(open(&bytes), Err(Error::BadShape { tensor, .. }) if tensor == "q"));
    }

    /// `mlmf.scalar_tensors` turns the `[1]` tensors it names back into scalars, and nothing
    /// else: not a listed name of another shape, not an unlisted `[1]`.
    #[test]
    fn scalars_key_restores_0d_shapes() {
        let names = garray(STRING, &[gstr(b"s"), gstr(b"v"), gstr(b"missing")]);
        let bytes = Gguf::new()
            .kv(SCALARS_KEY.as_bytes(), ARRAY, &names)
            .tensor(b"s", &[1], GGML_F32, 0)
            .tensor(b"v", &[2], GGML_F32, 32)
            .tensor(b"one", &[1], GGML_F32, 64)
            .data(68)
            .build();
        let parsed = open(&bytes).unwrap();
        let dims: Vec<&[usize]> = parsed.tensors.iter().map(|t| t.shape.dims()).collect();
        assert_eq!(dims, [&[][..], &[2], &[1]]);
        assert_eq!(parsed.tensors[0].byte_len(), 4);
        // A key of another type is ignored.
        let bytes = Gguf::new()
            .kv_str(SCALARS_KEY, "s")
            .tensor(b"s", &[1], GGML_F32, 0)
            .data(4)
            .build();
        assert_eq!(open(&bytes).unwrap().tensors[0].shape.dims(), [1]);
    }

    #[test]
    fn shape_product_overflows() {
        for ne in [
            &[1u64 << 32, 1 << 32][..],
            &[1 << 62, 4],
            &[1 << 63],
            &[u64::MAX, 2, 1, 1],
        ] {
            let bytes = Gguf::new().tensor(b"w", ne, GGML_I8, 0).data(32).build();
            assert!(
                matches!(open(&bytes), Err(Error::ShapeOverflow { .. })),
                "ne {ne:?}"
            );
        }
    }

    #[test]
    fn row_length_not_a_multiple_of_block_size() {
        let bytes = Gguf::new()
            .tensor(b"w", &[33, 2], GGML_Q4_0, 0)
            .data(64)
            .build();
        assert!(matches!(
            open(&bytes),
            Err(Error::BadShape { reason, .. }) if reason.contains("not a multiple of the Q4_0 block size 32")
        ));
        // Only the row length counts: 3 rows of 32 are fine.
        let bytes = Gguf::new()
            .tensor(b"w", &[32, 3], GGML_Q4_0, 0)
            .data(54)
            .build();
        assert!(open(&bytes).is_ok());
    }

    #[test]
    fn offset_misaligned() {
        let bytes = Gguf::new()
            .tensor(b"w", &[4], GGML_F32, 16)
            .data(64)
            .build();
        assert!(matches!(
            open(&bytes),
            Err(Error::Misaligned { offset: 16, alignment: 32, tensor, .. }) if tensor == "w"
        ));
    }

    #[test]
    fn tensor_past_end_of_file() {
        let bytes = Gguf::new().tensor(b"w", &[8], GGML_F32, 0).data(31).build();
        assert!(matches!(
            open(&bytes),
            Err(Error::TensorOutOfBounds {
                start: 0,
                end: 32,
                len: 31,
                ..
            })
        ));
        // An aligned offset so large that offset + length wraps.
        let bytes = Gguf::new()
            .tensor(b"w", &[64], GGML_F32, u64::MAX - 31)
            .data(32)
            .build();
        assert!(matches!(open(&bytes), Err(Error::TensorOutOfBounds { .. })));
    }

    #[test]
    fn overlapping_tensors() {
        // "a" covers 0..64, "b" 32..64; listed either way round.
        let a_first = Gguf::new()
            .tensor(b"a", &[16], GGML_F32, 0)
            .tensor(b"b", &[8], GGML_F32, 32)
            .data(64);
        let b_first = Gguf::new()
            .tensor(b"b", &[8], GGML_F32, 32)
            .tensor(b"a", &[16], GGML_F32, 0)
            .data(64);
        for g in [a_first, b_first] {
            let start = g.data_start() as u64;
            assert!(matches!(
                open(&g.build()),
                Err(Error::OverlappingTensors { first, second, offset, .. })
                    if first == "a" && second == "b" && offset == start + 32
            ));
        }
    }

    #[test]
    fn gaps_between_tensors_are_fine() {
        let bytes = Gguf::new()
            .tensor(b"a", &[1], GGML_F32, 0)
            .tensor(b"b", &[1], GGML_F32, 64)
            .data(68)
            .build();
        assert_eq!(open(&bytes).unwrap().tensors.len(), 2);
    }

    #[test]
    fn duplicate_tensor_names() {
        let bytes = Gguf::new()
            .tensor(b"w", &[8], GGML_F32, 0)
            .tensor(b"w", &[8], GGML_F32, 32)
            .data(64)
            .build();
        assert!(
            matches!(open(&bytes), Err(Error::DuplicateTensor { tensor, .. }) if tensor == "w")
        );
    }
}
