//! PyTorch checkpoints written by `torch.save`, in both layouts it has used.
//!
//! **Zip** (torch >= 1.6, `torch/serialization.py` `_save`/`_load`): members under one top
//! folder, `<archive>/data.pkl` (the pickled object), `<archive>/data/<key>` (one member per
//! storage, STORED, raw little-endian bytes), `<archive>/byteorder` (optional, `little` or
//! `big`) and `<archive>/version`. Persistent ids are `('storage', storage_type, key, location,
//! numel)`.
//!
//! **Legacy** (`_legacy_save`/`_legacy_load`): a run of pickles in one file: the magic number,
//! the protocol version 1001, a `sys_info` dict, the object itself (persistent ids
//! `('storage', storage_type, root_key, location, numel, view_metadata)`), then the list of
//! storage keys, then for each key in that order a little-endian u64 element count and the
//! storage's bytes. torch's `THPStorage_writeFileRaw` writes those bytes little-endian whatever
//! the machine, and `_legacy_load` ignores `sys_info`, so we do too.
//!
//! The object is read by the safe unpickler in `pickle.rs` with an allow-list of the names
//! state dicts use; tensors are the results of `torch._utils._rebuild_tensor_v2` (and `_v3`,
//! and the older `_rebuild_tensor`), possibly wrapped in `_rebuild_parameter`. Nested dicts
//! (`{"state_dict": {...}, "epoch": 3}`) are flattened with `.`-joined keys; simple scalar
//! leaves go into the metadata. Each tensor's bytes are a zero-copy range of the file.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use super::pickle::{self, bad_pickle, Budget, Id, Obj, Pickle};
use super::reader::ByteReader;
use super::zip;
use super::{Format, Metadata, Parsed, TensorInfo, Value};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;

/// `torch.save`'s legacy layout opens with a pickled magic number (protocol 2, LONG1 of 10 bytes).
pub const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
/// torch/serialization.py `MAGIC_NUMBER` and `PROTOCOL_VERSION`.
const MAGIC_NUMBER: i128 = 0x1950a86a20f9469cfc6c;
const PROTOCOL_VERSION: i128 = 1001;

/// Containers nest at most this deep (a state dict nests two or three).
const MAX_DEPTH: usize = 64;
/// Scalar leaves kept as metadata, and the longest string kept.
const MAX_METADATA: usize = 64;
const MAX_METADATA_STR: usize = 256;
/// What flattening may build (joined names; each tensor's sizes, strides and storage key) is
/// capped at this many bytes per pickle byte, plus [`FLAT_BYTES_FLOOR`]. A memoized object
/// referenced twice is walked twice, so without a cap 9 KB of shared dicts under long keys
/// spell 18 MB of names; a real state dict builds less than its own pickle's length.
const FLAT_BYTES_PER_PICKLE_BYTE: usize = 16;
const FLAT_BYTES_FLOOR: usize = 1 << 20;
/// What one tensor of the flattened state dict holds beside its name, storage key and dims:
/// the leaf, the `TensorInfo` made from it and `ModelFile`'s name index entry.
const LEAF_COST: usize = std::mem::size_of::<(String, Leaf)>()
    + std::mem::size_of::<TensorInfo>()
    + std::mem::size_of::<(String, usize)>();
/// Per dimension: sizes and strides in the leaf, then the shape and strides of the tensor.
const DIM_COST: usize = 4 * std::mem::size_of::<u64>();
/// A visit of an object: charged so that the walk's time is bounded by the budget too.
const VISIT_COST: usize = 16;

/// What a storage class holds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Elem {
    Plain(DType),
    /// A storage mlmf cannot read (complex128, quantized); its element size lets a legacy file
    /// be walked past it.
    Unsupported {
        bytes: u64,
    },
}

/// torch/storage.py `_dtype_to_storage_type_map`: the storage classes persistent ids name.
const STORAGE_TYPES: &[(&str, Elem)] = &[
    ("DoubleStorage", Elem::Plain(DType::F64)),
    ("FloatStorage", Elem::Plain(DType::F32)),
    ("HalfStorage", Elem::Plain(DType::F16)),
    ("BFloat16Storage", Elem::Plain(DType::BF16)),
    ("LongStorage", Elem::Plain(DType::I64)),
    ("IntStorage", Elem::Plain(DType::I32)),
    ("ShortStorage", Elem::Plain(DType::I16)),
    ("CharStorage", Elem::Plain(DType::I8)),
    ("ByteStorage", Elem::Plain(DType::U8)),
    ("BoolStorage", Elem::Plain(DType::Bool)),
    ("ComplexFloatStorage", Elem::Plain(DType::C64)),
    ("ComplexDoubleStorage", Elem::Unsupported { bytes: 16 }),
    ("QInt8Storage", Elem::Unsupported { bytes: 1 }),
    ("QUInt8Storage", Elem::Unsupported { bytes: 1 }),
    ("QInt32Storage", Elem::Unsupported { bytes: 4 }),
    ("QUInt4x2Storage", Elem::Unsupported { bytes: 1 }),
    ("QUInt2x4Storage", Elem::Unsupported { bytes: 1 }),
];

/// `torch.<dtype>` globals. torch >= 2.1 saves the dtypes that have no storage class above
/// (float8, uint16..64) through `_rebuild_tensor_v3` over an `UntypedStorage`, naming the dtype
/// as a global that is never called (`torch.float8_e4m3fn.__reduce__()` is its name).
const DTYPE_NAMES: &[(&str, Option<DType>)] = &[
    ("float64", Some(DType::F64)),
    ("float32", Some(DType::F32)),
    ("float16", Some(DType::F16)),
    ("bfloat16", Some(DType::BF16)),
    ("int64", Some(DType::I64)),
    ("int32", Some(DType::I32)),
    ("int16", Some(DType::I16)),
    ("int8", Some(DType::I8)),
    ("uint64", Some(DType::U64)),
    ("uint32", Some(DType::U32)),
    ("uint16", Some(DType::U16)),
    ("uint8", Some(DType::U8)),
    ("bool", Some(DType::Bool)),
    ("complex64", Some(DType::C64)),
    ("float8_e4m3fn", Some(DType::F8_E4M3)),
    ("float8_e5m2", Some(DType::F8_E5M2)),
    ("float8_e4m3fnuz", Some(DType::F8_E4M3FNUZ)),
    ("float8_e5m2fnuz", Some(DType::F8_E5M2FNUZ)),
    ("float8_e8m0fnu", Some(DType::F8_E8M0)),
    ("complex128", None),
    ("complex32", None),
    // Two 4-bit values per element: torch's shapes count bytes, not values.
    ("float4_e2m1fn_x2", None),
    ("qint8", None),
    ("quint8", None),
    ("qint32", None),
    ("quint4x2", None),
    ("quint2x4", None),
];

/// torch's name of `dtype` (`float32`, `bool`, ...), as `torch.<name>` spells it.
pub fn torch_name(dtype: DType) -> Option<&'static str> {
    DTYPE_NAMES
        .iter()
        .find(|(_, d)| *d == Some(dtype))
        .map(|(name, _)| *name)
}

/// The globals a state dict may name.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    /// Allowed so that a quantized tensor fails with a clear error, not as a forbidden global.
    RebuildQTensor,
    /// Index into `STORAGE_TYPES`.
    Storage(usize),
    UntypedStorage,
    /// Index into `DTYPE_NAMES`.
    Dtype(usize),
    /// `_codecs.encode(str, 'latin1')`: how pickle protocol 2 (torch.save's default) writes a
    /// `bytes` value. torch's own `weights_only` unpickler allows it; it is data, not code.
    CodecsEncode,
}

fn classify(module: &str, name: &str) -> Option<Global> {
    let global = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch._utils", "_rebuild_qtensor") => Global::RebuildQTensor,
        ("torch.storage" | "torch", "UntypedStorage") => Global::UntypedStorage,
        ("_codecs", "encode") => Global::CodecsEncode,
        // torch < 1.x named GPU storages `torch.cuda.FloatStorage`; torch.load maps any name
        // containing "Storage" to its dtype regardless of module.
        ("torch" | "torch.cuda", _) if name.ends_with("Storage") => {
            Global::Storage(STORAGE_TYPES.iter().position(|(n, _)| *n == name)?)
        }
        ("torch", _) => Global::Dtype(DTYPE_NAMES.iter().position(|(n, _)| *n == name)?),
        _ => return None,
    };
    Some(global)
}

/// The allow-list handed to the unpickler.
fn allowed(module: &str, name: &str) -> bool {
    classify(module, name).is_some()
}

fn global_of(p: &Pickle, id: Id) -> Option<Global> {
    p.global(id).and_then(|(m, n)| classify(m, n))
}

/// Read a `torch.save` checkpoint (either layout) held in `bytes`.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        parse_zip(bytes, path)
    } else if bytes.starts_with(LEGACY_MAGIC) {
        parse_legacy(bytes, path)
    } else {
        Err(Error::UnknownFormat {
            path: path.to_path_buf(),
            magic: bytes[..bytes.len().min(16)].to_vec(),
        })
    }
}

// ---- the two layouts ---------------------------------------------------------------------------

fn parse_zip(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let archive = zip::read(bytes, path)?;
    // Like torch's PyTorchStreamReader: the archive's name is the first member's top folder.
    let first = archive
        .entries
        .first()
        .ok_or_else(|| zip::bad_zip(path, 0, "the archive has no members".into()))?;
    let prefix = match first.name.find('/') {
        Some(i) => first.name[..=i].to_string(),
        None => {
            return Err(zip::bad_zip(
                path,
                first.header_offset,
                format!(
                    "member '{}' is not inside a folder, as torch.save's members are",
                    first.name
                ),
            ))
        }
    };
    if archive.get(&format!("{prefix}constants.pkl")).is_some()
        || archive
            .entries
            .iter()
            .any(|e| e.name.starts_with(&format!("{prefix}code/")))
    {
        return Err(zip::bad_zip(
            path,
            0,
            "this is a TorchScript archive (torch.jit.save); only torch.save checkpoints are read"
                .into(),
        ));
    }
    let member = |name: &str| -> Result<Option<&[u8]>> {
        match archive.get(&format!("{prefix}{name}")) {
            None => Ok(None),
            Some(e) => {
                let r = e.stored(path)?;
                Ok(Some(&bytes[r.start as usize..r.end as usize]))
            }
        }
    };
    if let Some(order) = member("byteorder")? {
        match order {
            b"little" => {}
            b"big" => {
                return Err(bad_metadata(
                    path,
                    "byteorder",
                    "big-endian tensor data is not supported",
                ))
            }
            _ => {
                return Err(bad_metadata(
                    path,
                    "byteorder",
                    "neither 'little' nor 'big'",
                ))
            }
        }
    }
    let version_text = match member("version")? {
        Some(text) => Some(text),
        None => member(".data/version")?,
    };
    let version = match version_text {
        None => None,
        Some(text) => Some(
            std::str::from_utf8(text)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| bad_metadata(path, "version", "not a decimal number"))?,
        ),
    };
    let pkl = archive.get(&format!("{prefix}data.pkl")).ok_or_else(|| {
        zip::bad_zip(
            path,
            0,
            format!("no member '{prefix}data.pkl'; torch.save writes one beside the storages"),
        )
    })?;
    let pkl = pkl.stored(path)?;
    let p = pickle::load(bytes, pkl.start as usize, pkl.end as usize, path, &allowed)?;
    let flat = flatten(&p, path)?;
    let locate = |s: &StorageRef| -> Result<Range<u64>> {
        let name = format!("{prefix}data/{}", s.key);
        let e = archive.get(&name).ok_or_else(|| {
            zip::bad_zip(
                path,
                s.at,
                format!("storage '{}' has no member '{name}'", s.key),
            )
        })?;
        storage_range(s, e.stored(path)?, path)
    };
    let tensors = flat
        .leaves
        .into_iter()
        .map(|(name, leaf)| tensor_info(name, leaf, &locate, path))
        .collect::<Result<Vec<_>>>()?;
    Ok(Parsed {
        format: Format::PyTorchZip,
        version,
        tensors,
        metadata: flat.metadata,
    })
}

fn parse_legacy(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let next = |start: usize| pickle::load(bytes, start, bytes.len(), path, &allowed);
    let magic = next(0)?;
    if p_int(&magic, magic.root) != Some(MAGIC_NUMBER) {
        return Err(bad_pickle(path, 0, "not torch.save's magic number"));
    }
    let protocol = next(magic.end)?;
    match p_int(&protocol, protocol.root) {
        Some(PROTOCOL_VERSION) => {}
        v => {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                format: "pytorch legacy",
                version: v.and_then(|v| u64::try_from(v).ok()).unwrap_or(u64::MAX),
            })
        }
    }
    let sys_info = next(protocol.end)?;
    if !matches!(sys_info.get(sys_info.root), Obj::Dict(_)) {
        return Err(bad_pickle(path, magic.end as u64, "sys_info is not a dict"));
    }
    let state = next(sys_info.end)?;
    let key_list = next(state.end)?;
    let keys = key_list
        .items(key_list.root)
        .ok_or_else(|| bad_pickle(path, state.end as u64, "the storage key list is not a list"))?;

    // What the state pickle says of each storage: the first persistent id naming a key rules,
    // as in `_legacy_load`.
    let mut refs: HashMap<String, StorageRef> = HashMap::new();
    for (id, obj) in state.objects() {
        if let Obj::PersId(_) = obj {
            let s = storage_ref(&state, id, path)?;
            refs.entry(s.key.clone()).or_insert(s);
        }
    }
    let mut ranges: HashMap<String, Range<u64>> = HashMap::with_capacity(keys.len());
    let mut r = ByteReader::new(bytes, path);
    r.seek(key_list.end, "storages")?;
    for &k in keys {
        let key = key_name(&key_list, k)
            .ok_or_else(|| bad_pickle(path, key_list.offset(k), "a storage key is not a string"))?;
        let s = refs.get(&key).ok_or_else(|| {
            bad_pickle(
                path,
                key_list.offset(k),
                format!("storage '{key}' is listed but nothing refers to it"),
            )
        })?;
        let at = r.pos();
        let count = r.u64(&format!("element count of storage '{key}'"))?;
        if count != s.numel {
            return Err(Error::ByteLengthMismatch {
                path: path.to_path_buf(),
                tensor: format!("storage '{key}'"),
                expected: s.numel.saturating_mul(s.elem_bytes),
                found: count.saturating_mul(s.elem_bytes),
            });
        }
        let nbytes = count
            .checked_mul(s.elem_bytes)
            .ok_or_else(|| Error::LengthOutOfRange {
                path: path.to_path_buf(),
                what: format!("element count of storage '{key}'"),
                offset: at as u64,
                value: count,
                limit: r.remaining() as u64 / s.elem_bytes,
            })?;
        let start = r.pos() as u64;
        r.take(nbytes, &format!("data of storage '{key}'"))?;
        if ranges.insert(key.clone(), start..start + nbytes).is_some() {
            return Err(bad_pickle(
                path,
                key_list.offset(k),
                format!("storage '{key}' is listed twice"),
            ));
        }
    }
    let flat = flatten(&state, path)?;
    let locate = |s: &StorageRef| -> Result<Range<u64>> {
        let whole = ranges.get(&s.key).ok_or_else(|| {
            bad_pickle(
                path,
                s.at,
                format!("storage '{}' is not in the file's list of storages", s.key),
            )
        })?;
        storage_range(s, whole.clone(), path)
    };
    let tensors = flat
        .leaves
        .into_iter()
        .map(|(name, leaf)| tensor_info(name, leaf, &locate, path))
        .collect::<Result<Vec<_>>>()?;
    Ok(Parsed {
        format: Format::PyTorchLegacy,
        version: Some(PROTOCOL_VERSION as u64),
        tensors,
        metadata: flat.metadata,
    })
}

fn bad_metadata(path: &Path, key: &str, reason: &str) -> Error {
    Error::BadMetadata {
        path: path.to_path_buf(),
        key: key.into(),
        reason: reason.into(),
    }
}

fn p_int(p: &Pickle, id: Id) -> Option<i128> {
    match p.get(id) {
        Obj::Int(v) => Some(*v),
        _ => None,
    }
}

// ---- storages and tensors ------------------------------------------------------------------------

/// A storage as a persistent id describes it.
#[derive(Clone, Debug)]
struct StorageRef {
    key: String,
    elem: std::result::Result<DType, &'static str>,
    elem_bytes: u64,
    /// Elements of `elem` (bytes, for an `UntypedStorage`).
    numel: u64,
    /// Legacy storage views: `(offset, numel)` in elements of the root storage.
    view: Option<(u64, u64)>,
    /// Pickle offset of the persistent id, for errors.
    at: u64,
}

/// A `Str` key, or an `Int` one written in decimal.
fn key_name(p: &Pickle, id: Id) -> Option<String> {
    match p.get(id) {
        Obj::Str(s) => Some(s.clone()),
        Obj::Int(v) => Some(v.to_string()),
        _ => None,
    }
}

fn uint(p: &Pickle, id: Id, what: &str, path: &Path) -> Result<u64> {
    match p.get(id) {
        Obj::Int(v) => {
            u64::try_from(*v).map_err(|_| bad_pickle(path, p.offset(id), format!("{what} is {v}")))
        }
        _ => Err(bad_pickle(
            path,
            p.offset(id),
            format!("{what} is a {}, not an integer", p.kind(id)),
        )),
    }
}

fn uints(p: &Pickle, id: Id, what: &str, path: &Path) -> Result<Vec<u64>> {
    let items = p.items(id).ok_or_else(|| {
        bad_pickle(
            path,
            p.offset(id),
            format!("{what} is a {}, not a tuple", p.kind(id)),
        )
    })?;
    items.iter().map(|&i| uint(p, i, what, path)).collect()
}

/// Decode `('storage', storage_type, key, location, numel[, view_metadata])`.
fn storage_ref(p: &Pickle, id: Id, path: &Path) -> Result<StorageRef> {
    let at = p.offset(id);
    let Obj::PersId(pid) = p.get(id) else {
        return Err(bad_pickle(
            path,
            at,
            format!(
                "a tensor's storage is a {}, not a persistent id",
                p.kind(id)
            ),
        ));
    };
    let items = match p.get(*pid) {
        Obj::Tuple(items) if items.len() == 5 || items.len() == 6 => items,
        _ => {
            return Err(bad_pickle(
                path,
                at,
                "persistent id is not a ('storage', type, key, location, numel) tuple",
            ))
        }
    };
    if p.str(items[0]) != Some("storage") {
        return Err(bad_pickle(
            path,
            at,
            format!(
                "persistent id of kind {}; only 'storage' is known",
                p.kind(items[0])
            ),
        ));
    }
    let (elem, elem_bytes) = match global_of(p, items[1]) {
        Some(Global::Storage(i)) => match STORAGE_TYPES[i].1 {
            Elem::Plain(dt) => (Ok(dt), dt.block_bytes()),
            Elem::Unsupported { bytes } => (Err(STORAGE_TYPES[i].0), bytes),
        },
        Some(Global::UntypedStorage) => (Ok(DType::U8), 1),
        _ => {
            return Err(bad_pickle(
                path,
                at,
                format!(
                    "storage type is {}, not a torch storage class",
                    p.kind(items[1])
                ),
            ))
        }
    };
    let key =
        key_name(p, items[2]).ok_or_else(|| bad_pickle(path, at, "storage key is not a string"))?;
    let numel = uint(p, items[4], "storage size", path)?;
    let view = match items.get(5).map(|&v| p.get(v)) {
        None | Some(Obj::None) => None,
        Some(Obj::Tuple(v)) if v.len() == 3 => Some((
            uint(p, v[1], "storage view offset", path)?,
            uint(p, v[2], "storage view size", path)?,
        )),
        Some(_) => {
            return Err(bad_pickle(
                path,
                at,
                "storage view metadata is not (key, offset, size)",
            ))
        }
    };
    Ok(StorageRef {
        key,
        elem,
        elem_bytes,
        numel,
        view,
        at,
    })
}

/// The absolute byte range of a storage (or of its legacy view), given where the storage's
/// bytes lie in the file; its declared size must fit there.
fn storage_range(s: &StorageRef, data: Range<u64>, path: &Path) -> Result<Range<u64>> {
    let available = data.end - data.start;
    let out_of_range = |what: &str, value: u64, limit: u64| Error::LengthOutOfRange {
        path: path.to_path_buf(),
        what: format!("{what} of storage '{}'", s.key),
        offset: s.at,
        value,
        limit,
    };
    let nbytes = s
        .numel
        .checked_mul(s.elem_bytes)
        .ok_or_else(|| out_of_range("element count", s.numel, available / s.elem_bytes))?;
    if nbytes > available {
        return Err(out_of_range("byte size", nbytes, available));
    }
    let Some((offset, numel)) = s.view else {
        return Ok(data.start..data.start + nbytes);
    };
    let start = offset.checked_mul(s.elem_bytes).filter(|&b| b <= nbytes);
    let len = numel.checked_mul(s.elem_bytes);
    match (start, len) {
        (Some(start), Some(len)) if len <= nbytes - start => {
            Ok(data.start + start..data.start + start + len)
        }
        _ => Err(out_of_range("view", offset.saturating_add(numel), s.numel)),
    }
}

/// A tensor as a rebuild call describes it.
#[derive(Debug)]
struct TensorRef {
    storage: StorageRef,
    /// `_rebuild_tensor_v3`'s dtype; otherwise the storage's.
    dtype: std::result::Result<DType, &'static str>,
    offset: u64,
    size: Vec<u64>,
    stride: Vec<u64>,
}

#[derive(Debug)]
enum Leaf {
    Tensor(TensorRef),
    Quantized,
}

/// The tensor an object rebuilds, if it is one.
fn leaf(p: &Pickle, id: Id, path: &Path) -> Result<Option<Leaf>> {
    let mut id = id;
    // `_rebuild_parameter(data, ...)` wraps a tensor; unwrap a few levels at most.
    for _ in 0..4 {
        let Obj::Call { func, args } = p.get(id) else {
            return Ok(None);
        };
        let args = p.items(*args).unwrap_or(&[]);
        let need = |n: usize| {
            if args.len() < n {
                Err(bad_pickle(
                    path,
                    p.offset(id),
                    format!(
                        "{} with {} arguments, expected {n}",
                        p.kind(*func),
                        args.len()
                    ),
                ))
            } else {
                Ok(())
            }
        };
        match global_of(p, *func) {
            Some(Global::RebuildTensor | Global::RebuildTensorV2) => {
                need(4)?;
                return tensor_ref(p, args, None, path).map(|t| Some(Leaf::Tensor(t)));
            }
            Some(Global::RebuildTensorV3) => {
                need(7)?;
                let dtype = match global_of(p, args[6]) {
                    Some(Global::Dtype(i)) => DTYPE_NAMES[i].1.ok_or(DTYPE_NAMES[i].0),
                    _ => {
                        return Err(bad_pickle(
                            path,
                            p.offset(args[6]),
                            format!("_rebuild_tensor_v3 dtype is a {}", p.kind(args[6])),
                        ))
                    }
                };
                return tensor_ref(p, args, Some(dtype), path).map(|t| Some(Leaf::Tensor(t)));
            }
            Some(Global::RebuildParameter | Global::RebuildParameterWithState) => {
                need(1)?;
                id = args[0];
            }
            Some(Global::RebuildQTensor) => return Ok(Some(Leaf::Quantized)),
            _ => return Ok(None),
        }
    }
    Ok(None)
}

fn tensor_ref(
    p: &Pickle,
    args: &[Id],
    dtype: Option<std::result::Result<DType, &'static str>>,
    path: &Path,
) -> Result<TensorRef> {
    let storage = storage_ref(p, args[0], path)?;
    let offset = uint(p, args[1], "storage offset", path)?;
    let size = uints(p, args[2], "tensor size", path)?;
    let stride = uints(p, args[3], "tensor stride", path)?;
    if size.len() != stride.len() {
        return Err(bad_pickle(
            path,
            p.offset(args[3]),
            format!("{} sizes but {} strides", size.len(), stride.len()),
        ));
    }
    Ok(TensorRef {
        dtype: dtype.unwrap_or(storage.elem),
        storage,
        offset,
        size,
        stride,
    })
}

/// Strides of a contiguous row-major tensor of this size. Like torch's `is_contiguous`, a
/// dimension of size 1 may have any stride.
fn is_contiguous(size: &[u64], stride: &[u64]) -> bool {
    if size.contains(&0) {
        return true;
    }
    let mut expected: u64 = 1;
    for (&n, &s) in size.iter().zip(stride).rev() {
        if n != 1 && s != expected {
            return false;
        }
        // Cannot overflow: the product of the sizes was checked by `Shape`.
        expected = expected.saturating_mul(n);
    }
    true
}

fn tensor_info(
    name: String,
    leaf: Leaf,
    locate: &dyn Fn(&StorageRef) -> Result<Range<u64>>,
    path: &Path,
) -> Result<TensorInfo> {
    let t = match leaf {
        Leaf::Tensor(t) => t,
        Leaf::Quantized => {
            return Err(Error::UnknownDType {
                path: path.to_path_buf(),
                tensor: name,
                dtype: "quantized tensor (torch._utils._rebuild_qtensor)".into(),
            })
        }
    };
    let dtype = t.dtype.map_err(|d| Error::UnknownDType {
        path: path.to_path_buf(),
        tensor: name.clone(),
        dtype: d.into(),
    })?;
    let shape = Shape::from_u64(&t.size).ok_or_else(|| Error::ShapeOverflow {
        path: path.to_path_buf(),
        tensor: name.clone(),
        shape: t.size.clone(),
    })?;
    // The tensor's own bytes (a view's elements, gathered) must be countable too: an expanded
    // view (stride 0) can name far more elements than its storage holds.
    if dtype.byte_len(shape.elem_count()).is_none() {
        return Err(Error::ShapeOverflow {
            path: path.to_path_buf(),
            tensor: name,
            shape: t.size,
        });
    }
    let data = locate(&t.storage)?;
    let len = data.end - data.start;
    let es = dtype.block_bytes(); // every dtype above is one element per "block"
    let out_of_bounds = |start: u64, end: u64| Error::TensorOutOfBounds {
        path: path.to_path_buf(),
        tensor: name.clone(),
        start,
        end,
        len,
    };
    let start = t
        .offset
        .checked_mul(es)
        .ok_or_else(|| out_of_bounds(u64::MAX, u64::MAX))?;
    let end = if shape.elem_count() == 0 {
        start
    } else {
        // Offset of the last element: offset + sum((size - 1) * stride).
        let mut last = Some(t.offset);
        for (&n, &s) in t.size.iter().zip(&t.stride) {
            last = last.and_then(|l| (n - 1).checked_mul(s).and_then(|d| l.checked_add(d)));
        }
        last.and_then(|l| l.checked_add(1))
            .and_then(|n| n.checked_mul(es))
            .ok_or_else(|| out_of_bounds(start, u64::MAX))?
    };
    if start > len || end > len {
        return Err(out_of_bounds(start, end));
    }
    // An expanded view names every element it repeats, and reading it (a load, a hash, a
    // conversion) costs its own bytes: 4 stored bytes viewed as [32768, 32768] took minutes to
    // verify. Real expanded buffers (HF's `position_ids`, masks) repeat their storage a few
    // times, so a bound relative to the span refuses only amplification.
    let own = dtype.byte_len(shape.elem_count()).unwrap_or(u64::MAX);
    let bound = (end - start)
        .saturating_mul(MAX_VIEW_REPEAT)
        .saturating_add(1 << 20);
    if own > bound {
        return Err(Error::BadShape {
            path: path.to_path_buf(),
            tensor: name,
            reason: format!(
                "a view of {} stored bytes at offset {} names {own} bytes; mlmf reads views of \
                 at most {MAX_VIEW_REPEAT} times their stored bytes plus 1 MiB",
                end - start,
                data.start + start
            ),
        });
    }
    let strides = if is_contiguous(&t.size, &t.stride) {
        None
    } else {
        Some(
            t.stride
                .iter()
                .map(|&s| usize::try_from(s).map_err(|_| out_of_bounds(start, end)))
                .collect::<Result<Vec<_>>>()?,
        )
    };
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        file: 0,
        range: data.start + start..data.start + end,
        strides,
    })
}

/// How many times a view may repeat its stored bytes (stride 0), beyond a first MiB.
const MAX_VIEW_REPEAT: u64 = 1024;

// ---- flattening ----------------------------------------------------------------------------------

struct Flat {
    leaves: Vec<(String, Leaf)>,
    metadata: Metadata,
}

/// Walk the unpickled object: dicts (and lists) nest with `.`-joined names, tensors are leaves,
/// simple scalars become metadata unless they sit inside a list (optimizer `param_groups`, say),
/// anything else is skipped.
fn flatten(p: &Pickle, path: &Path) -> Result<Flat> {
    struct Walk<'a> {
        p: &'a Pickle,
        path: &'a Path,
        flat: Flat,
        visits: usize,
        max_visits: usize,
        /// Bytes of names, sizes and strides built so far, and their cap.
        built: usize,
        max_built: usize,
        /// The pickle's memory budget, of which unpickling spent a part.
        budget: Budget,
    }
    impl Walk<'_> {
        fn charge(&mut self, bytes: usize, at: u64) -> Result<()> {
            self.built = self.built.saturating_add(bytes);
            if self.built > self.max_built {
                return Err(bad_pickle(
                    self.path,
                    at,
                    format!(
                        "shared references make the flattened names, shapes and storage keys larger than {} bytes",
                        self.max_built
                    ),
                ));
            }
            Ok(())
        }

        fn walk(&mut self, id: Id, name: &str, depth: usize, in_list: bool) -> Result<()> {
            let p = self.p;
            self.visits += 1;
            if self.visits > self.max_visits {
                return Err(bad_pickle(
                    self.path,
                    p.offset(id),
                    "shared references make the object too large to flatten",
                ));
            }
            if depth > MAX_DEPTH {
                return Err(bad_pickle(
                    self.path,
                    p.offset(id),
                    format!("containers nest deeper than {MAX_DEPTH} (or refer to themselves)"),
                ));
            }
            self.charge(name.len(), p.offset(id))?;
            // The name built for this visit is transient (the cap above counts it); a leaf's
            // name, which is kept, is charged with the leaf.
            self.budget
                .charge(VISIT_COST, "the walk", self.path, p.offset(id))?;
            let join = |key: &str| {
                if name.is_empty() {
                    key.to_string()
                } else {
                    format!("{name}.{key}")
                }
            };
            match p.get(id) {
                Obj::Dict(pairs) => {
                    for &(k, v) in pairs {
                        if let Some(key) = key_name(p, k) {
                            self.walk(v, &join(&key), depth + 1, in_list)?;
                        }
                    }
                }
                Obj::List(items) | Obj::Tuple(items) => {
                    for (i, &v) in items.iter().enumerate() {
                        self.walk(v, &join(&i.to_string()), depth + 1, true)?;
                    }
                }
                Obj::Call { .. } => {
                    if let Some(leaf) = leaf(p, id, self.path)? {
                        if let Leaf::Tensor(t) = &leaf {
                            let dims = t.size.len() + t.stride.len();
                            self.charge(8 * dims + t.storage.key.len(), p.offset(id))?;
                            let cost = LEAF_COST
                                + name.len()
                                + t.storage.key.len()
                                + DIM_COST * t.size.len();
                            self.budget
                                .charge(cost, "the tensors", self.path, p.offset(id))?;
                        }
                        self.flat.leaves.push((name.to_string(), leaf));
                    }
                }
                scalar => {
                    if in_list || name.is_empty() || self.flat.metadata.len() >= MAX_METADATA {
                        return Ok(());
                    }
                    let value = match scalar {
                        Obj::Int(v) => i64::try_from(*v).ok().map(Value::I64),
                        Obj::Float(v) => Some(Value::F64(*v)),
                        Obj::Bool(v) => Some(Value::Bool(*v)),
                        Obj::Str(s) if s.len() <= MAX_METADATA_STR => {
                            Some(Value::String(s.clone()))
                        }
                        _ => None,
                    };
                    if let Some(value) = value {
                        let text = match &value {
                            Value::String(s) => s.len(),
                            _ => 0,
                        };
                        let cost = std::mem::size_of::<(String, Value)>() + name.len() + text;
                        self.budget
                            .charge(cost, "the metadata", self.path, p.offset(id))?;
                        self.flat.metadata.entries.push((name.to_string(), value));
                    }
                }
            }
            Ok(())
        }
    }
    let objects = p.objects().count();
    let mut w = Walk {
        p,
        path,
        flat: Flat {
            leaves: Vec::new(),
            metadata: Metadata::default(),
        },
        visits: 0,
        max_visits: objects.saturating_mul(4).saturating_add(1024),
        built: 0,
        max_built: p
            .byte_len()
            .saturating_mul(FLAT_BYTES_PER_PICKLE_BYTE)
            .saturating_add(FLAT_BYTES_FLOOR),
        budget: p.budget.clone(),
    };
    w.walk(p.root, "", 0, false)?;
    #[cfg(test)]
    tests::SPENT.with(|s| s.set((w.budget.spent(), p.byte_len() as u64)));
    Ok(w.flat)
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Budget spent by the last `flatten` on this thread, and its pickle's length.
        pub(super) static SPENT: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }

    /// Real checkpoints spend a small part of the budget: at most half of
    /// `BUDGET_PER_BYTE` per pickle byte, before the floor is counted.
    #[test]
    fn budget_of_real_checkpoints() {
        let models = std::env::var_os("MLMF_MODELS")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| Path::new(&d).join("mlmf")))
            .or_else(|| std::env::var_os("HOME").map(|d| Path::new(&d).join(".cache/mlmf")))
            .unwrap();
        let mut files: Vec<std::path::PathBuf> =
            ["mobilenet_v2-b0353104.pth", "pocketnet-v3_fold0.pt"]
                .iter()
                .map(|n| models.join(n))
                .collect();
        let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        for e in std::fs::read_dir(&data_dir).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".pt") && !name.starts_with("pytorch_bad_") {
                files.push(path);
            }
        }
        assert!(files.len() >= 6, "{files:?}");
        for path in files {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let parsed = parse(&bytes, &path).unwrap();
            let (spent, pickle_bytes) = SPENT.with(|s| s.get());
            println!(
                "{}: {} tensors, pickle {pickle_bytes} bytes, budget spent {spent} ({:.1} per byte)",
                path.display(),
                parsed.tensors.len(),
                spent as f64 / pickle_bytes as f64
            );
            assert!(!parsed.tensors.is_empty());
            assert!(spent > 0 && spent <= pickle_bytes * pickle::BUDGET_PER_BYTE / 2);
        }
    }

    fn data(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn open(name: &str) -> Result<Parsed> {
        parse(&data(name), Path::new(name))
    }

    fn find<'a>(p: &'a Parsed, name: &str) -> &'a TensorInfo {
        p.tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    fn f32s(bytes: &[u8], t: &TensorInfo) -> Vec<f32> {
        bytes[t.range.start as usize..t.range.end as usize]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Every test file in both layouts: same tensors, same bytes.
    const DTYPES_FILES: [(&str, Format); 2] = [
        ("pytorch_zip_dtypes.pt", Format::PyTorchZip),
        ("pytorch_legacy_dtypes.pt", Format::PyTorchLegacy),
    ];

    #[test]
    fn contiguous_tensors_of_each_dtype() {
        for (file, format) in DTYPES_FILES {
            let bytes = data(file);
            let p = parse(&bytes, Path::new(file)).unwrap();
            assert_eq!(p.format, format);
            let cases: [(&str, DType, &[usize]); 6] = [
                ("w", DType::F32, &[3, 4]),
                ("h", DType::F16, &[2, 2]),
                ("b", DType::BF16, &[3]),
                ("n", DType::I64, &[]),
                ("mask", DType::Bool, &[5]),
                ("p", DType::F32, &[2]),
            ];
            for (name, dtype, shape) in cases {
                let t = find(&p, name);
                assert_eq!((t.dtype, t.shape.dims()), (dtype, shape), "{file} {name}");
                assert!(t.is_contiguous(), "{file} {name}");
                assert_eq!(t.byte_len(), dtype.byte_len(t.shape.elem_count()).unwrap());
            }
            let w = find(&p, "w");
            assert_eq!(
                f32s(&bytes, w),
                (0..12).map(|i| i as f32).collect::<Vec<_>>()
            );
            let h = find(&p, "h");
            let h: Vec<f32> = bytes[h.range.start as usize..h.range.end as usize]
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            assert_eq!(h, [1.0, -2.0, 0.5, 65504.0]);
            let b = find(&p, "b");
            let b: Vec<f32> = bytes[b.range.start as usize..b.range.end as usize]
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            assert_eq!(b, [1.0, -3.0, 256.0]);
            let n = find(&p, "n");
            assert_eq!(
                &bytes[n.range.start as usize..n.range.end as usize],
                &7i64.to_le_bytes()
            );
            let mask = find(&p, "mask");
            assert_eq!(
                &bytes[mask.range.start as usize..mask.range.end as usize],
                &[1, 0, 1, 1, 0]
            );
            assert_eq!(f32s(&bytes, find(&p, "p")), [0.25, -0.75]);
        }
    }

    #[test]
    fn views_share_storage() {
        for (file, _) in DTYPES_FILES {
            let bytes = data(file);
            let p = parse(&bytes, Path::new(file)).unwrap();
            let w = find(&p, "w");
            // w.t(): the same storage, transposed strides.
            let wt = find(&p, "w_t");
            assert_eq!(wt.shape.dims(), &[4, 3]);
            assert_eq!(wt.strides, Some(vec![1, 4]));
            assert_eq!(wt.range, w.range);
            // w[1]: a storage offset of 4 elements.
            let row = find(&p, "row1");
            assert_eq!(row.shape.dims(), &[4]);
            assert!(row.is_contiguous());
            assert_eq!(row.range, w.range.start + 16..w.range.start + 32);
            assert_eq!(f32s(&bytes, row), [4.0, 5.0, 6.0, 7.0]);
            // w[:, 2]: offset 2, stride 4; the range spans from its first to its last element.
            let col = find(&p, "col2");
            assert_eq!(col.strides, Some(vec![4]));
            assert_eq!(col.range, w.range.start + 8..w.range.start + 44);
            // A tied weight: the same tensor under two names.
            assert_eq!(find(&p, "tied").range, w.range);
        }
    }

    #[test]
    fn nested_checkpoint_is_flattened() {
        let bytes = data("pytorch_zip_nested.pt");
        let p = parse(&bytes, Path::new("n.pt")).unwrap();
        let mut names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "optimizer.state.0.exp_avg",
                "optimizer.state.0.step",
                "state_dict.layer.bias",
                "state_dict.layer.weight"
            ]
        );
        assert_eq!(p.metadata.get("epoch"), Some(&Value::I64(3)));
        assert_eq!(p.metadata.get("name"), Some(&Value::String("demo".into())));
        assert_eq!(
            p.metadata.get("optimizer.param_groups.0.lr"),
            None,
            "scalars in lists are skipped"
        );
        assert_eq!(p.version, Some(3));
        let w = find(&p, "state_dict.layer.weight");
        assert_eq!(w.shape.dims(), &[2, 3]);
        assert_eq!(f32s(&bytes, w), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn v3_dtypes_over_untyped_storage() {
        let bytes = data("pytorch_zip_v3.pt");
        let p = parse(&bytes, Path::new("v3.pt")).unwrap();
        let f8 = find(&p, "f8");
        assert_eq!((f8.dtype, f8.shape.dims()), (DType::F8_E4M3, &[4][..]));
        assert_eq!(
            &bytes[f8.range.start as usize..f8.range.end as usize],
            &[0x38, 0x40, 0xb8, 0x00]
        );
        let u16s = find(&p, "u16");
        assert_eq!((u16s.dtype, u16s.shape.dims()), (DType::U16, &[3][..]));
        assert_eq!(u16s.byte_len(), 6);
    }

    #[test]
    fn forbidden_global() {
        let err = open("pytorch_bad_global.pt").unwrap_err();
        assert!(
            matches!(&err, Error::ForbiddenGlobal { module, name, .. } if module == "os" && name == "system"),
            "{err}"
        );
    }

    #[test]
    fn deflated_storage() {
        let err = open("pytorch_bad_deflate.pt").unwrap_err();
        assert!(
            matches!(&err, Error::BadZip { reason, .. } if reason.contains("DEFLATE")),
            "{err}"
        );
    }

    #[test]
    fn member_past_the_end() {
        let err = open("pytorch_bad_member_past_end.pt").unwrap_err();
        assert!(
            matches!(&err, Error::BadZip { reason, .. } if reason.contains("runs past")),
            "{err}"
        );
    }

    #[test]
    fn storage_numel_overflows() {
        let err = open("pytorch_bad_numel.pt").unwrap_err();
        assert!(
            matches!(&err, Error::LengthOutOfRange { value, .. } if *value == 1 << 62),
            "{err}"
        );
    }

    #[test]
    fn storage_larger_than_its_member() {
        let err = open("pytorch_bad_storage_size.pt").unwrap_err();
        assert!(
            matches!(
                &err,
                Error::LengthOutOfRange {
                    value: 400,
                    limit: 16,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn view_past_its_storage() {
        let err = open("pytorch_bad_view.pt").unwrap_err();
        assert!(
            matches!(&err, Error::TensorOutOfBounds { tensor, start: 8, end: 24, len: 16, .. } if tensor == "v"),
            "{err}"
        );
    }

    #[test]
    fn huge_shape() {
        let err = open("pytorch_bad_shape.pt").unwrap_err();
        assert!(
            matches!(&err, Error::ShapeOverflow { tensor, .. } if tensor == "big"),
            "{err}"
        );
    }

    #[test]
    fn strides_that_overflow() {
        let err = open("pytorch_bad_stride.pt").unwrap_err();
        assert!(
            matches!(&err, Error::TensorOutOfBounds { tensor, .. } if tensor == "s"),
            "{err}"
        );
    }

    /// 4 stored bytes viewed as [32768, 32768] (stride 0) would make every reader of the tensor
    /// go through 4 GiB: refused from the header, naming the tensor and the bound.
    #[test]
    fn expanded_views_that_amplify_are_refused() {
        let err = open("pytorch_bad_expanded.pt").unwrap_err();
        match &err {
            Error::BadShape { tensor, reason, .. } => {
                assert_eq!(tensor, "e");
                assert!(reason.contains("names 4294967296 bytes"), "{reason}");
                assert!(reason.contains("at most 1024 times"), "{reason}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn quantized_tensor_is_refused_by_name() {
        let err = open("pytorch_bad_quantized.pt").unwrap_err();
        assert!(
            matches!(&err, Error::UnknownDType { tensor, .. } if tensor == "q"),
            "{err}"
        );
    }

    #[test]
    fn big_endian_zip() {
        let err = open("pytorch_bad_big_endian.pt").unwrap_err();
        assert!(
            matches!(&err, Error::BadMetadata { key, .. } if key == "byteorder"),
            "{err}"
        );
    }

    #[test]
    fn zips_that_are_not_state_dicts() {
        use super::super::zip::tests::build;
        let open = |bytes: &[u8]| parse(bytes, Path::new("z.pt")).unwrap_err();
        let pkl: &[u8] = b"\x80\x02}.";
        let script = build(
            &[
                ("m/data.pkl", pkl, 0),
                ("m/constants.pkl", pkl, 0),
                ("m/code/m.py", b"", 0),
            ],
            false,
        );
        assert!(
            matches!(open(&script), Error::BadZip { reason, .. } if reason.contains("TorchScript"))
        );
        let no_pickle = build(&[("m/version", b"3\n", 0)], false);
        assert!(
            matches!(open(&no_pickle), Error::BadZip { reason, .. } if reason.contains("data.pkl"))
        );
        let deflated = build(&[("m/data.pkl", pkl, 8)], false);
        assert!(
            matches!(open(&deflated), Error::BadZip { reason, .. } if reason.contains("DEFLATE"))
        );
        let flat = build(&[("data.pkl", pkl, 0)], false);
        assert!(matches!(open(&flat), Error::BadZip { .. }));
        let bad_version = build(&[("m/data.pkl", pkl, 0), ("m/version", b"three", 0)], false);
        assert!(matches!(open(&bad_version), Error::BadMetadata { key, .. } if key == "version"));
        // An empty dict is a checkpoint without tensors, which is not an error.
        let empty = build(&[("m/data.pkl", pkl, 0)], false);
        assert!(parse(&empty, Path::new("z.pt")).unwrap().tensors.is_empty());
    }

    #[test]
    fn truncated_legacy_file() {
        let bytes = data("pytorch_legacy_dtypes.pt");
        // Everything up to the storages parses; cut inside the last storage's bytes.
        for cut in [bytes.len() - 1, bytes.len() - 3] {
            let err = parse(&bytes[..cut], Path::new("l.pt")).unwrap_err();
            assert!(matches!(err, Error::Truncated { .. }), "{cut}: {err}");
        }
        // Every prefix fails, none panics.
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut], Path::new("l.pt")).is_err(), "{cut}");
        }
    }

    #[test]
    fn every_prefix_of_a_zip_fails() {
        let bytes = data("pytorch_zip_dtypes.pt");
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut], Path::new("z.pt")).is_err(), "{cut}");
        }
    }

    #[test]
    fn flipped_bytes_never_panic() {
        // One byte at a time set to a few telling values: any result but a panic is fine.
        for file in ["pytorch_zip_dtypes.pt", "pytorch_legacy_dtypes.pt"] {
            let bytes = data(file);
            let mut copy = bytes.clone();
            for i in 0..bytes.len() {
                for v in [0x00, 0xff, 0x7f, bytes[i] ^ 0x01] {
                    copy[i] = v;
                    let _ = parse(&copy, Path::new(file));
                }
                copy[i] = bytes[i];
            }
        }
    }

    #[test]
    fn contiguity_ignores_size_one_dims() {
        assert!(is_contiguous(&[32, 1, 3, 3], &[9, 9, 3, 1]));
        assert!(is_contiguous(&[32, 1, 3, 3], &[9, 1, 3, 1]));
        assert!(is_contiguous(&[], &[]));
        assert!(is_contiguous(&[0, 5], &[1, 1]));
        assert!(!is_contiguous(&[4, 3], &[1, 4]));
        assert!(!is_contiguous(&[3], &[0]));
    }

    #[test]
    fn allow_list() {
        assert_eq!(classify("torch", "FloatStorage"), Some(Global::Storage(1)));
        assert_eq!(
            classify("torch.cuda", "HalfStorage"),
            Some(Global::Storage(2))
        );
        assert!(matches!(
            classify("torch", "float8_e4m3fn"),
            Some(Global::Dtype(_))
        ));
        for (module, name) in [
            ("os", "system"),
            ("builtins", "eval"),
            ("torch", "load"),
            ("torch", "Storage"),
            ("torch._utils", "_rebuild_from_type_v2"),
            ("torch.nn.modules.linear", "Linear"),
            ("collections", "defaultdict"),
        ] {
            assert!(!allowed(module, name), "{module}.{name}");
        }
    }
}
