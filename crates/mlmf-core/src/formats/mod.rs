//! Model-file formats. Each parser is a pure function over the file's bytes (`&[u8]`) that
//! returns a tensor index and metadata; only [`ModelFile::open`] touches the file system.

use std::fmt;
use std::ops::Range;

use crate::dtype::DType;
use crate::shape::Shape;

pub mod ctranslate2;
pub mod gguf;
pub mod index;
mod model_file;
pub mod names;
pub(crate) mod pickle;
pub mod pytorch;
pub(crate) mod reader;
pub mod safetensors;
pub mod slice;
mod source;
pub(crate) mod zip;

pub use model_file::ModelFile;
pub use slice::{ByteRange, Slice, SliceLayout};
pub use source::Source;

/// The container a model file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Safetensors,
    /// Several safetensors files joined by a `model.safetensors.index.json`.
    ShardedSafetensors,
    Gguf,
    /// `torch.save` zip archive (torch >= 1.6).
    PyTorchZip,
    /// `torch.save` legacy sequential-pickle layout (torch < 1.6, or `_use_new_zipfile_serialization=False`).
    PyTorchLegacy,
    /// CTranslate2's `model.bin` (faster-whisper's and OpenNMT's models).
    CTranslate2,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::ShardedSafetensors => "sharded-safetensors",
            Format::Gguf => "gguf",
            Format::PyTorchZip => "pytorch-zip",
            Format::PyTorchLegacy => "pytorch-legacy",
            Format::CTranslate2 => "ctranslate2",
        }
    }

    /// `dtype` as this format spells it, the name `mlmf inspect` prints: safetensors' header
    /// strings (`BOOL`, `F8_E4M3`, ...) for safetensors files; for GGUF, the GGML type names
    /// as gguf-py's `GGMLQuantizationType` and llama.cpp's tools print them (`Q4_K`, `BF16`,
    /// `I8`; [`DType::name`] for every type with a ggml id); for PyTorch, torch's dtype names
    /// without the `torch.` prefix (`float32`, `bfloat16`, `int64`, `bool`, `float8_e4m3fn`);
    /// for CTranslate2, its own names (`float16`, `int8`).
    /// A dtype the format has no name for (none that a parser returns) gets [`DType::name`].
    pub fn dtype_name(self, dtype: DType) -> &'static str {
        let named = match self {
            Format::Safetensors | Format::ShardedSafetensors => dtype.info().safetensors,
            Format::Gguf => dtype.info().ggml_id.map(|_| dtype.name()),
            Format::PyTorchZip | Format::PyTorchLegacy => pytorch::torch_name(dtype),
            Format::CTranslate2 => ctranslate2::ct2_name(dtype),
        };
        named.unwrap_or(dtype.name())
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of a model file: where its bytes are and how to read them.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    /// Numpy order (GGUF's `ne` reversed).
    pub shape: Shape,
    /// Which of the model's files holds the bytes (0 unless sharded).
    pub file: usize,
    /// Absolute byte range in that file: the tensor's span. For a contiguous tensor it holds
    /// exactly the tensor's bytes; for a strided view it spans every byte the view touches,
    /// from its first element to one past its last, gaps included ([`TensorInfo::span_len`]).
    pub range: Range<u64>,
    /// Element strides, slowest first, when the bytes are not in contiguous row-major order
    /// (PyTorch views). `None` means contiguous.
    pub strides: Option<Vec<usize>>,
}

impl TensorInfo {
    /// Bytes of the tensor itself, in row-major order: what loading it gives and what a writer
    /// writes for it (its dtype and shape's byte count). For a contiguous tensor this is its
    /// span; a strided view's may be smaller (a view with gaps, `[:, ::2]`) or larger (an
    /// expanded view with a zero stride). Saturates at `u64::MAX`, which no parser lets
    /// through.
    pub fn byte_len(&self) -> u64 {
        match self.strides {
            None => self.span_len(),
            Some(_) => self
                .dtype
                .byte_len(self.shape.elem_count())
                .unwrap_or(u64::MAX),
        }
    }

    /// Bytes of the file the tensor's elements lie in (the length of [`TensorInfo::range`]).
    pub fn span_len(&self) -> u64 {
        self.range.end - self.range.start
    }

    pub fn is_contiguous(&self) -> bool {
        self.strides.is_none()
    }
}

/// A metadata value: GGUF's typed values; safetensors `__metadata__` values are `String`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer value that fits in `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as JSON (arrays nest; non-finite floats become null).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::U8(v) => J::from(*v),
            Value::I8(v) => J::from(*v),
            Value::U16(v) => J::from(*v),
            Value::I16(v) => J::from(*v),
            Value::U32(v) => J::from(*v),
            Value::I32(v) => J::from(*v),
            Value::U64(v) => J::from(*v),
            Value::I64(v) => J::from(*v),
            Value::F32(v) => serde_json::Number::from_f64(f64::from(*v)).map_or(J::Null, J::Number),
            Value::F64(v) => serde_json::Number::from_f64(*v).map_or(J::Null, J::Number),
            Value::Bool(v) => J::from(*v),
            Value::String(v) => J::from(v.as_str()),
            Value::Array(v) => J::Array(v.iter().map(Value::to_json).collect()),
        }
    }
}

/// Key/value metadata in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    pub entries: Vec<(String, Value)>,
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// What a parser finds in one file's bytes.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub format: Format,
    /// The container's own version number, where it has one (GGUF 2 or 3).
    pub version: Option<u64>,
    pub tensors: Vec<TensorInfo>,
    pub metadata: Metadata,
}

/// Parse a single file's bytes in whichever format they announce (see [`detect`]). Shard
/// indexes name other files, so they go through [`ModelFile::open`] instead.
pub fn parse(bytes: &[u8], path: &std::path::Path) -> crate::Result<Parsed> {
    let head = &bytes[..bytes.len().min(16)];
    match detect(head) {
        Some(Format::Safetensors) => safetensors::parse(bytes, path),
        Some(Format::Gguf) => gguf::parse(bytes, path),
        Some(Format::PyTorchZip | Format::PyTorchLegacy) => pytorch::parse(bytes, path),
        Some(Format::CTranslate2) => ctranslate2::parse(bytes, path),
        Some(Format::ShardedSafetensors) | None => Err(crate::Error::UnknownFormat {
            path: path.to_path_buf(),
            magic: head.to_vec(),
        }),
    }
}

/// Which format the first bytes announce. Detection is by content, never by file extension.
pub fn detect(head: &[u8]) -> Option<Format> {
    if head.starts_with(b"GGUF") {
        return Some(Format::Gguf);
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Some(Format::PyTorchZip);
    }
    if head.starts_with(pytorch::LEGACY_MAGIC) {
        return Some(Format::PyTorchLegacy);
    }
    // safetensors: u64 header length, then a JSON object.
    if head.len() >= 9 && head[8] == b'{' {
        return Some(Format::Safetensors);
    }
    // After safetensors: from version 2 a CTranslate2 file has its spec name (an identifier,
    // never `{`) at byte 8; a version-1 file could have `{` there (a name length), and is then
    // taken for safetensors.
    if ctranslate2::detect(head) {
        return Some(Format::CTranslate2);
    }
    // A shard index is JSON text.
    if head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return Some(Format::ShardedSafetensors);
    }
    None
}
