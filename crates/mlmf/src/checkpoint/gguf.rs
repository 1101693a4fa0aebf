//! Writing GGUF v3 files, streamed: the whole header is computed from the tensor list first
//! (every size is known up front), then each tensor's bytes go from their source straight into
//! an [`AtomicFile`]. Nothing holds the file, or a whole GPU tensor, in memory.
//!
//! The layout is the one [`crate::formats::gguf`] reads, laid out as gguf-py's `GGUFWriter`
//! (`write_tensors_to_file`) and llama.cpp's `gguf_write_out` lay it out:
//!
//! ```text
//! "GGUF"  u32 3  u64 tensor_count  u64 kv_count
//! kv_count x     { string key, u32 value type, value }
//! tensor_count x { string name, u32 n_dims, n_dims x u64 ne (fastest first), u32 ggml type,
//!                  u64 offset }
//! zeros to the alignment
//! tensor_count x { data, zeros to the alignment }       (the last tensor is padded too)
//! ```
//!
//! Offsets are relative to the data section: tensor `i + 1` starts at tensor `i`'s offset plus
//! its byte length rounded up to the alignment, which is exactly what llama.cpp's reader
//! demands. The alignment is `general.alignment` from the metadata (a `u32` power of two), or
//! 32 without that key; the key is written only if the metadata has it.
//!
//! Before the file is created, [`GgufWriter::write`] looks for what our reader, gguf-py or
//! llama.cpp would refuse, and returns a typed error for it: duplicate tensor names or metadata
//! keys, empty keys, names longer than llama.cpp reads ([`MAX_NAME_BYTES`]), dtypes without a
//! ggml type id, shapes of more than 4 dimensions or past `i64::MAX` elements, rows (`ne[0]`)
//! that split a block, a source whose byte length is not `dtype.byte_len(elements)`, arrays that
//! mix element types or nest deeper than our reader reads, and a `general.alignment` that is not
//! a `u32` power of two.
//!
//! Metadata values are written with the type their [`Value`] variant names. Arrays of arrays
//! are written as the spec and gguf-py allow (llama.cpp's reader refuses them). An empty array
//! has no element to take a type from, so it is written as an array of strings
//! ([`EMPTY_ARRAY_TYPE`]); gguf-py's writer never writes empty arrays, but its reader, llama.cpp's
//! and ours read them.
//!
//! A 0-d tensor (a scalar: BatchNorm's `num_batches_tracked`) is written as ggml writes one,
//! with one dimension of 1 (`ne = [1]`), and its name is listed in the string array
//! [`SCALARS_KEY`] (`mlmf.scalar_tensors`, in place of one already there, else last), from
//! which our reader gives it its shape `[]` back. The writer owns that key: it is dropped from
//! the metadata when no tensor is 0-d.
//!
//! With [`GgufWriter::provenance`], the metadata also gets a [`crate::provenance`] record, a
//! string under `mlmf.provenance` (in place of one already there, else last), whose content
//! hash is computed from the bytes as they stream and patched into the header (fixed-width hex
//! over a placeholder) before the file is committed.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

use super::{AtomicFile, TensorSource};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::gguf::{
    ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS, SCALARS_KEY,
};
use crate::formats::{Metadata, Value};
use crate::provenance::{self, ContentHasher, Provenance, TensorDigest};

/// The GGUF version written.
pub const VERSION: u32 = 3;

/// Longest tensor name llama.cpp accepts, in bytes (`GGML_MAX_NAME` - 1 for the C string's
/// terminating zero); its reader refuses a file with a longer one.
pub const MAX_NAME_BYTES: usize = 63;

/// Element type written for an empty [`Value::Array`], which carries none.
pub const EMPTY_ARRAY_TYPE: u32 = TYPE_STRING;

// `enum gguf_type` ids.
const TYPE_U8: u32 = 0;
const TYPE_I8: u32 = 1;
const TYPE_U16: u32 = 2;
const TYPE_I16: u32 = 3;
const TYPE_U32: u32 = 4;
const TYPE_I32: u32 = 5;
const TYPE_F32: u32 = 6;
const TYPE_BOOL: u32 = 7;
const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;
const TYPE_U64: u32 = 10;
const TYPE_I64: u32 = 11;
const TYPE_F64: u32 = 12;

/// A GGUF file to be written: metadata, then tensors in the order they were added.
///
/// ```no_run
/// use mlmf::checkpoint::{GgufWriter, TensorSource};
/// use mlmf::ModelFile;
/// let file = ModelFile::open("in.gguf")?;
/// let mut writer = GgufWriter::new(file.metadata().clone());
/// for t in file.tensors() {
///     writer.add_tensor(&t.name, t.dtype, t.shape.dims(), TensorSource::File(&file, t));
/// }
/// writer.write("out.gguf")?;
/// # Ok::<(), mlmf::Error>(())
/// ```
pub struct GgufWriter<'a> {
    metadata: Metadata,
    tensors: Vec<Entry<'a>>,
    provenance: Option<Provenance>,
}

struct Entry<'a> {
    name: String,
    dtype: DType,
    /// Numpy order: slowest first.
    shape: Vec<usize>,
    source: TensorSource<'a>,
}

/// What [`GgufWriter::plan`] finds: the checked tensor records and where everything goes.
struct Plan {
    alignment: u64,
    tensors: Vec<Planned>,
    /// Bytes before the data section, padding included.
    data_start: u64,
    /// Length of the whole file.
    file_len: u64,
    /// Where the provenance record's hash digits go, when there is one.
    hash_at: Option<u64>,
}

struct Planned {
    ggml_id: u32,
    /// GGUF order: fastest first.
    ne: Vec<u64>,
    byte_len: u64,
    /// Relative to the data section.
    offset: u64,
}

impl<'a> GgufWriter<'a> {
    pub fn new(metadata: Metadata) -> GgufWriter<'a> {
        GgufWriter {
            metadata,
            tensors: Vec::new(),
            provenance: None,
        }
    }

    /// Record provenance: at [`GgufWriter::write`], the metadata gets the record of
    /// `provenance` with the written tensors' content hash, the tool and the time.
    pub fn provenance(&mut self, provenance: Provenance) -> &mut Self {
        self.provenance = Some(provenance);
        self
    }

    /// Add a tensor of `dtype` with `shape` in numpy order (slowest first, the row last; it is
    /// written reversed, as GGUF's `ne`). Nothing is checked or read until [`GgufWriter::write`].
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: &[usize],
        source: impl Into<TensorSource<'a>>,
    ) -> &mut Self {
        self.tensors.push(Entry {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            source: source.into(),
        });
        self
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Write the file to `path`, replacing it atomically. Every check (metadata values,
    /// names, shapes, byte lengths) runs before the file is created; a source that turns out
    /// to produce a different number of bytes than it announced fails the write, and then the
    /// previous file at `path` stays as it was.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let metadata = self.full_metadata();
        let plan = self.plan(path, &metadata)?;
        let mut file = AtomicFile::create(path)?;
        let mut out = Out {
            file: Some(&mut file),
            pos: 0,
        };
        self.write_header(&mut out, &plan, &metadata)?;
        out.pad_to(plan.alignment)?;
        debug_assert_eq!(out.pos, plan.data_start);
        let mut hasher = ContentHasher::new();
        for (entry, planned) in self.tensors.iter().zip(&plan.tensors) {
            debug_assert_eq!(out.pos, plan.data_start + planned.offset);
            if plan.hash_at.is_some() {
                let mut digest = TensorDigest::new();
                entry
                    .source
                    .stream_exact(path, &entry.name, planned.byte_len, &mut |c| {
                        digest.update(c);
                        out.put(c)
                    })?;
                hasher.add(&entry.name, entry.dtype, &entry.shape, digest.finish());
            } else {
                entry
                    .source
                    .stream_exact(path, &entry.name, planned.byte_len, &mut |c| out.put(c))?;
            }
            out.pad_to(plan.alignment)?;
        }
        debug_assert_eq!(out.pos, plan.file_len);
        if let Some(at) = plan.hash_at {
            file.write_at(at, hasher.finish().hex().as_bytes())?;
        }
        file.commit()
    }

    /// The metadata as written: the caller's, with [`SCALARS_KEY`] listing the 0-d tensors
    /// (or dropped when there are none) and the provenance placeholder.
    fn full_metadata(&self) -> Cow<'_, Metadata> {
        let scalars: Vec<Value> = self
            .tensors
            .iter()
            .filter(|t| t.shape.is_empty())
            .map(|t| Value::String(t.name.clone()))
            .collect();
        let has_key = self.metadata.get(SCALARS_KEY).is_some();
        if scalars.is_empty() && !has_key && self.provenance.is_none() {
            return Cow::Borrowed(&self.metadata);
        }
        fn set(m: &mut Metadata, key: &str, value: Value) {
            match m.entries.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1 = value,
                None => m.entries.push((key.to_string(), value)),
            }
        }
        let mut m = self.metadata.clone();
        if scalars.is_empty() {
            m.entries.retain(|(k, _)| k != SCALARS_KEY);
        } else {
            set(&mut m, SCALARS_KEY, Value::Array(scalars));
        }
        if let Some(p) = &self.provenance {
            set(&mut m, provenance::KEY, Value::String(p.placeholder_text()));
        }
        Cow::Owned(m)
    }

    /// Check everything and lay the file out, without touching the file system.
    fn plan(&self, path: &Path, metadata: &Metadata) -> Result<Plan> {
        let alignment = self.check_metadata(path, metadata)?;
        let mut names = HashSet::with_capacity(self.tensors.len());
        let mut tensors = Vec::with_capacity(self.tensors.len());
        let mut offset = 0u64;
        for entry in &self.tensors {
            if !names.insert(entry.name.as_str()) {
                return Err(Error::DuplicateTensor {
                    path: path.to_path_buf(),
                    tensor: entry.name.clone(),
                });
            }
            let (ggml_id, ne, byte_len) = check_tensor(path, entry)?;
            tensors.push(Planned {
                ggml_id,
                ne,
                byte_len,
                offset,
            });
            offset = byte_len
                .checked_next_multiple_of(alignment)
                .and_then(|n| offset.checked_add(n))
                .ok_or_else(|| Error::BadShape {
                    path: path.to_path_buf(),
                    tensor: entry.name.clone(),
                    reason: "the data section would pass 2^64 bytes".into(),
                })?;
        }
        let mut plan = Plan {
            alignment,
            tensors,
            data_start: 0,
            file_len: 0,
            hash_at: None,
        };
        let mut count = Out { file: None, pos: 0 };
        let record_at = self.write_header(&mut count, &plan, metadata)?;
        plan.data_start = count.pos.next_multiple_of(alignment);
        plan.file_len = plan.data_start + offset;
        if self.provenance.is_some() {
            // The record's text starts with the prefix; the placeholder digits follow it.
            plan.hash_at = record_at.map(|at| at + provenance::HASH_PREFIX.len() as u64);
        }
        Ok(plan)
    }

    /// The alignment, after checking that every key is unique and every value encodable.
    fn check_metadata(&self, path: &Path, metadata: &Metadata) -> Result<u64> {
        let bad = |key: &str, reason: String| Error::BadMetadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let mut keys = HashSet::with_capacity(metadata.len());
        for (key, value) in metadata.iter() {
            if key.is_empty() {
                // llama.cpp's `gguf_kv` asserts a nonempty key: it would abort reading the file.
                return Err(bad(key, "the key is empty".into()));
            }
            if !keys.insert(key) {
                return Err(bad(key, "the key appears twice".into()));
            }
            check_value(value, 0).map_err(|reason| bad(key, reason))?;
        }
        match metadata.get(ALIGNMENT_KEY) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
            Some(v) => Err(bad(
                ALIGNMENT_KEY,
                format!("must be a nonzero power of two stored as u32, found {v:?}"),
            )),
        }
    }

    /// Everything before the data section's padding. Run twice: once counting, once writing.
    /// Returns where the text of a string `mlmf.provenance` value starts, if there is one.
    fn write_header(
        &self,
        out: &mut Out<'_>,
        plan: &Plan,
        metadata: &Metadata,
    ) -> Result<Option<u64>> {
        out.put(MAGIC)?;
        out.put_u32(VERSION)?;
        out.put_u64(self.tensors.len() as u64)?;
        out.put_u64(metadata.len() as u64)?;
        let mut record_at = None;
        for (key, value) in metadata.iter() {
            out.put_str(key)?;
            out.put_u32(type_id(value))?;
            if key == provenance::KEY && matches!(value, Value::String(_)) {
                // After the string's u64 length.
                record_at = Some(out.pos + 8);
            }
            put_value(out, value)?;
        }
        for (entry, planned) in self.tensors.iter().zip(&plan.tensors) {
            out.put_str(&entry.name)?;
            out.put_u32(planned.ne.len() as u32)?;
            for &d in &planned.ne {
                out.put_u64(d)?;
            }
            out.put_u32(planned.ggml_id)?;
            out.put_u64(planned.offset)?;
        }
        Ok(record_at)
    }
}

/// Check one tensor's name, dtype, shape and source length; return its ggml type id, `ne`
/// and byte length.
fn check_tensor(path: &Path, entry: &Entry<'_>) -> Result<(u32, Vec<u64>, u64)> {
    let path_buf = || path.to_path_buf();
    let name = &entry.name;
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::BadTensorName {
            path: path_buf(),
            tensor: name.clone(),
            reason: format!(
                "{} bytes long; llama.cpp reads at most {MAX_NAME_BYTES} (GGML_MAX_NAME)",
                name.len()
            ),
        });
    }
    let bad_shape = |reason: String| Error::BadShape {
        path: path_buf(),
        tensor: name.clone(),
        reason,
    };
    let dtype = entry.dtype;
    let ggml_id = dtype
        .info()
        .ggml_id
        .ok_or_else(|| Error::UnsupportedDType {
            path: path_buf(),
            tensor: name.clone(),
            dtype: dtype.name().to_string(),
            format: "GGUF",
        })?;
    let rank = entry.shape.len();
    if rank > MAX_DIMS as usize {
        return Err(bad_shape(format!(
            "{rank} dimensions {:?}; GGUF holds at most {MAX_DIMS} (GGML_MAX_DIMS)",
            entry.shape
        )));
    }
    // A scalar is written as ggml writes one (`ggml_n_dims` is at least 1): ne = [1].
    let ne: Vec<u64> = if rank == 0 {
        vec![1]
    } else {
        entry.shape.iter().rev().map(|&d| d as u64).collect()
    };
    // ggml counts elements in int64_t, as our reader and llama.cpp's check.
    let elems = ne
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| Error::ShapeOverflow {
            path: path_buf(),
            tensor: name.clone(),
            shape: entry.shape.iter().map(|&d| d as u64).collect(),
        })?;
    let block = dtype.block_elems();
    if !ne[0].is_multiple_of(block) {
        return Err(bad_shape(format!(
            "row length {} (ne[0]) is not a multiple of the {dtype} block size {block}",
            ne[0]
        )));
    }
    // A whole number of blocks per row, so this is `None` only on overflow.
    let byte_len = dtype.byte_len(elems).ok_or_else(|| Error::ShapeOverflow {
        path: path_buf(),
        tensor: name.clone(),
        shape: entry.shape.iter().map(|&d| d as u64).collect(),
    })?;
    let found = entry.source.byte_len();
    if found != byte_len {
        return Err(Error::ByteLengthMismatch {
            path: path_buf(),
            tensor: name.clone(),
            expected: byte_len,
            found,
        });
    }
    Ok((ggml_id, ne, byte_len))
}

// ---- metadata values ---------------------------------------------------------------------------

/// Why `value` cannot be written (and read back), if it cannot. `depth` counts the arrays
/// around it, as the reader does.
fn check_value(value: &Value, depth: usize) -> std::result::Result<(), String> {
    let Value::Array(items) = value else {
        return Ok(());
    };
    if depth >= MAX_ARRAY_DEPTH {
        return Err(format!(
            "arrays nested more than {MAX_ARRAY_DEPTH} deep cannot be read back"
        ));
    }
    if let Some(first) = items.first() {
        let ty = type_id(first);
        if let Some(other) = items.iter().find(|v| type_id(v) != ty) {
            return Err(format!(
                "a GGUF array holds one type; this one mixes {} and {}",
                type_name(ty),
                type_name(type_id(other))
            ));
        }
    }
    items.iter().try_for_each(|v| check_value(v, depth + 1))
}

fn type_id(value: &Value) -> u32 {
    match value {
        Value::U8(_) => TYPE_U8,
        Value::I8(_) => TYPE_I8,
        Value::U16(_) => TYPE_U16,
        Value::I16(_) => TYPE_I16,
        Value::U32(_) => TYPE_U32,
        Value::I32(_) => TYPE_I32,
        Value::F32(_) => TYPE_F32,
        Value::Bool(_) => TYPE_BOOL,
        Value::String(_) => TYPE_STRING,
        Value::Array(_) => TYPE_ARRAY,
        Value::U64(_) => TYPE_U64,
        Value::I64(_) => TYPE_I64,
        Value::F64(_) => TYPE_F64,
    }
}

fn type_name(id: u32) -> &'static str {
    [
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64",
        "f64",
    ][id as usize]
}

/// The value's bytes, without its type id.
fn put_value(out: &mut Out<'_>, value: &Value) -> Result<()> {
    match value {
        Value::U8(v) => out.put(&[*v]),
        Value::I8(v) => out.put(&v.to_le_bytes()),
        Value::U16(v) => out.put(&v.to_le_bytes()),
        Value::I16(v) => out.put(&v.to_le_bytes()),
        Value::U32(v) => out.put_u32(*v),
        Value::I32(v) => out.put(&v.to_le_bytes()),
        Value::F32(v) => out.put(&v.to_le_bytes()),
        Value::Bool(v) => out.put(&[u8::from(*v)]),
        Value::String(s) => out.put_str(s),
        Value::U64(v) => out.put_u64(*v),
        Value::I64(v) => out.put(&v.to_le_bytes()),
        Value::F64(v) => out.put(&v.to_le_bytes()),
        Value::Array(items) => {
            out.put_u32(items.first().map_or(EMPTY_ARRAY_TYPE, type_id))?;
            out.put_u64(items.len() as u64)?;
            items.iter().try_for_each(|v| put_value(out, v))
        }
    }
}

// ---- output ------------------------------------------------------------------------------------

/// The file being written, or nothing when only counting bytes.
struct Out<'f> {
    file: Option<&'f mut AtomicFile>,
    pos: u64,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(file) = self.file.as_deref_mut() {
            file.write_all(bytes)?;
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn put_u32(&mut self, v: u32) -> Result<()> {
        self.put(&v.to_le_bytes())
    }

    fn put_u64(&mut self, v: u64) -> Result<()> {
        self.put(&v.to_le_bytes())
    }

    /// A GGUF string: u64 byte length, then the UTF-8 bytes.
    fn put_str(&mut self, s: &str) -> Result<()> {
        self.put_u64(s.len() as u64)?;
        self.put(s.as_bytes())
    }

    /// Zeros up to the next multiple of `alignment`.
    fn pad_to(&mut self, alignment: u64) -> Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut left = self.pos.next_multiple_of(alignment) - self.pos;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64);
            self.put(&ZEROS[..n as usize])?;
            left -= n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::parse;
    use proptest::prelude::*;

    fn write_and_parse(writer: &GgufWriter<'_>) -> (Vec<u8>, crate::formats::Parsed) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        writer.write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let parsed = parse(&bytes, &path).unwrap();
        (bytes, parsed)
    }

    #[test]
    fn empty_file_is_a_padded_header() {
        let (bytes, parsed) = write_and_parse(&GgufWriter::new(Metadata::default()));
        let mut expected = b"GGUF".to_vec();
        expected.extend_from_slice(&3u32.to_le_bytes());
        expected.extend_from_slice(&[0; 16]);
        expected.resize(32, 0);
        assert_eq!(bytes, expected);
        assert!(parsed.tensors.is_empty() && parsed.metadata.is_empty());
    }

    #[test]
    fn layout_by_hand() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let mut w = GgufWriter::new(Metadata {
            entries: vec![("k".into(), Value::U8(7))],
        });
        w.add_tensor("a", DType::F32, &[3], &data[..]).add_tensor(
            "b",
            DType::I8,
            &[2, 2],
            &data[..4],
        );
        let (bytes, parsed) = write_and_parse(&w);
        let mut expected = b"GGUF".to_vec();
        // Version 3, two tensors, one key/value pair.
        expected.extend_from_slice(&3u32.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&1u64.to_le_bytes());
        // "k": u8 7.
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(b"k");
        expected.extend_from_slice(&TYPE_U8.to_le_bytes());
        expected.push(7);
        // a: one dimension, ne = [3], F32, offset 0.
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(b"a");
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(&0u32.to_le_bytes());
        expected.extend_from_slice(&0u64.to_le_bytes());
        // b: numpy [2, 2] of I8, offset 12 padded to 32.
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(b"b");
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&24u32.to_le_bytes());
        expected.extend_from_slice(&32u64.to_le_bytes());
        expected.resize(expected.len().next_multiple_of(32), 0);
        let data_start = expected.len();
        expected.extend_from_slice(&data);
        expected.resize(data_start + 32, 0);
        expected.extend_from_slice(&data[..4]);
        expected.resize(data_start + 64, 0);
        assert_eq!(bytes, expected);
        assert_eq!(
            parsed.tensors[1].range,
            data_start as u64 + 32..data_start as u64 + 36
        );
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u8>().prop_map(Value::U8),
            any::<i8>().prop_map(Value::I8),
            any::<u16>().prop_map(Value::U16),
            any::<i16>().prop_map(Value::I16),
            any::<u32>().prop_map(Value::U32),
            any::<i32>().prop_map(Value::I32),
            any::<u64>().prop_map(Value::U64),
            any::<i64>().prop_map(Value::I64),
            // Finite floats, so that `==` compares them.
            (-1e30f32..1e30).prop_map(Value::F32),
            (-1e300f64..1e300).prop_map(Value::F64),
            any::<bool>().prop_map(Value::Bool),
            ".{0,12}".prop_map(Value::String),
        ]
    }

    /// Arrays of one element type, nested a few levels.
    fn value() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                (inner.clone(), 0..6usize).prop_map(|(v, n)| Value::Array(vec![v; n])),
                prop::collection::vec(inner, 0..4).prop_map(|items| {
                    // Keep the items of the first one's type.
                    let ty = items.first().map(type_id);
                    Value::Array(
                        items
                            .into_iter()
                            .filter(|v| Some(type_id(v)) == ty)
                            .collect(),
                    )
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn metadata_round_trips(values in prop::collection::vec(value(), 0..6)) {
            let entries = values
                .into_iter()
                .enumerate()
                .map(|(i, v)| (format!("k.{i}"), v))
                .collect();
            let metadata = Metadata { entries };
            let (_, parsed) = write_and_parse(&GgufWriter::new(metadata.clone()));
            prop_assert_eq!(parsed.metadata, metadata);
        }
    }
}
