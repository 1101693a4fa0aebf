//! Provenance: a content hash of a model's tensors and a record, carried inside the file, of
//! what the file was made from.
//!
//! # The record
//!
//! Written files carry one metadata key, [`KEY`] (`mlmf.provenance`): a safetensors
//! `__metadata__` entry or a GGUF string KV. Its value is JSON text, fields in this order:
//!
//! ```json
//! {"version": 1,
//!  "content_hash": "sha256:<64 hex>",
//!  "parents": [{"path": "/abs/in.safetensors", "content_hash": "sha256:..."}],
//!  "transforms": [{"kind": "quantize", "dtype": "Q8_0"}],
//!  "tool": "mlmf 0.1.0",
//!  "time": "2025-01-31T12:00:00Z"}
//! ```
//!
//! - `content_hash` is the file's own content hash (below), computed while it was written.
//! - `parents[].path` is the parent's absolute path when it was written; `content_hash` is the
//!   hash the parent's own record states when it has one, else the parent's content hash.
//! - `transforms[].kind` is one of `convert` (`from`, `to`: format names), `quantize`
//!   (`dtype`), `lora_merge` (`adapter`: path, `adapter_hash`: [`crate::lora::adapter_hash`],
//!   `scale`: the user's multiplier),
//!   `name_map` (`map`, e.g. `hf-to-gguf`) or `load_transform` (`description`); see
//!   [`Transform`]. Kinds this version does not know are kept as [`Transform::Other`].
//! - `tool` is `mlmf <version>`; `time` is RFC 3339 UTC to the second (`SOURCE_DATE_EPOCH`,
//!   when set, replaces the clock, for reproducible files).
//!
//! # The content hash
//!
//! sha256 over the tensors' names, dtypes, shapes and bytes, independent of the container and
//! of the order the tensors are stored in, so the same tensors hash the same as safetensors and
//! as GGUF. For each tensor, sorted by name (bytewise, UTF-8), this stream is fed:
//!
//! ```text
//! u64 LE byte length, then the name's UTF-8 bytes
//! u64 LE byte length, then the dtype's name (DType::name: "F32", "Q4_K", ...)
//! u64 LE rank, then each dimension as u64 LE, slowest first (numpy order; GGUF's ne reversed)
//! the 32-byte sha256 of the tensor's bytes in row-major order (strided views gathered)
//! ```
//!
//! and `content_hash = "sha256:" + hex(sha256(stream))`. Metadata is not hashed (the record
//! lives there). Per-tensor digests let a writer hash each tensor as it streams, in any order:
//! see [`ContentHasher`].

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::{ModelFile, TensorInfo, Value};
use crate::Source;

/// The metadata key that holds the record.
pub const KEY: &str = "mlmf.provenance";

/// The record version this crate writes and reads.
pub const VERSION: u32 = 1;

/// `tool` in records this crate writes.
pub const TOOL: &str = concat!("mlmf ", env!("CARGO_PKG_VERSION"));

/// How a serialized record starts, up to its content hash's hex digits: writers find the
/// placeholder they patch by this prefix.
pub(crate) const HASH_PREFIX: &str = r#"{"version":1,"content_hash":"sha256:"#;

/// What writers put where the content hash goes until the last tensor is written.
pub(crate) const PLACEHOLDER_HEX: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// Bytes gathered per step from a strided tensor.
const GATHER_BYTES: usize = 4 << 20;

// ---- hashes ----------------------------------------------------------------------------------

/// A sha256 digest, written `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hash(pub [u8; 32]);

impl Sha256Hash {
    /// The 64 hex digits, without `sha256:`.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parse `sha256:<64 hex>`.
    pub fn parse(text: &str) -> Option<Sha256Hash> {
        let hex = text.strip_prefix("sha256:")?;
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Sha256Hash(out))
    }

    /// sha256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256Hash {
        Sha256Hash(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<Sha256Hash> for String {
    fn from(h: Sha256Hash) -> String {
        h.to_string()
    }
}

impl TryFrom<String> for Sha256Hash {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        Sha256Hash::parse(&s).ok_or_else(|| format!("'{s}' is not sha256:<64 hex digits>"))
    }
}

/// sha256 of a tensor's bytes, fed in order a chunk at a time.
#[derive(Clone, Default)]
pub struct TensorDigest(Sha256);

impl TensorDigest {
    pub fn new() -> TensorDigest {
        TensorDigest::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// Collects each tensor's name, dtype, shape and byte digest, in any order, and gives the
/// content hash of the whole (see the module docs for the definition).
#[derive(Default)]
pub struct ContentHasher {
    tensors: Vec<(String, DType, Vec<u64>, [u8; 32])>,
}

impl ContentHasher {
    pub fn new() -> ContentHasher {
        ContentHasher::default()
    }

    /// Add a tensor: `shape` slowest first, `digest` the sha256 of its row-major bytes.
    pub fn add(&mut self, name: &str, dtype: DType, shape: &[usize], digest: [u8; 32]) {
        let shape = shape.iter().map(|&d| d as u64).collect();
        self.tensors.push((name.to_string(), dtype, shape, digest));
    }

    pub fn finish(mut self) -> Sha256Hash {
        // `str`'s order is bytewise over UTF-8, the order the definition names.
        self.tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let mut h = Sha256::new();
        for (name, dtype, shape, digest) in &self.tensors {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((dtype.name().len() as u64).to_le_bytes());
            h.update(dtype.name().as_bytes());
            h.update((shape.len() as u64).to_le_bytes());
            for d in shape {
                h.update(d.to_le_bytes());
            }
            h.update(digest);
        }
        Sha256Hash(h.finalize().into())
    }
}

/// The content hash of `file`'s tensors: one pass over the memory map, no copy of contiguous
/// tensors, several tensors hashed at once on multi-core machines.
pub fn content_hash(file: &ModelFile) -> Result<Sha256Hash> {
    let tensors = file.tensors();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
        .min(tensors.len().max(1));
    let next = AtomicUsize::new(0);
    let digests = Mutex::new(vec![[0u8; 32]; tensors.len()]);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(info) = tensors.get(i) else { break };
        let d = tensor_digest(file, info);
        // A poisoned lock means another worker panicked; its panic surfaces at the join.
        if let Ok(mut all) = digests.lock() {
            all[i] = d;
        }
    };
    if threads <= 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(work);
            }
        });
    }
    let digests = digests.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut hasher = ContentHasher::new();
    for (info, d) in tensors.iter().zip(digests) {
        hasher.add(&info.name, info.dtype, info.shape.dims(), d);
    }
    Ok(hasher.finish())
}

/// sha256 of one tensor's row-major bytes.
fn tensor_digest(file: &ModelFile, info: &TensorInfo) -> [u8; 32] {
    let mut d = TensorDigest::new();
    match Source::of(file, info) {
        Source::Contiguous(bytes) => d.update(bytes),
        src => {
            // `ModelFile::open` checked that the view fits its span, so gathering cannot fail.
            let elem = info.dtype.block_bytes().max(1) as usize;
            let step = (GATHER_BYTES / elem).max(1) * elem;
            let len = (info.shape.elem_count() as usize).saturating_mul(elem);
            let mut scratch = Vec::new();
            let mut pos = 0;
            while pos < len {
                let n = step.min(len - pos);
                d.update(src.chunk(pos, n, &mut scratch));
                pos += n;
            }
        }
    }
    d.finish()
}

// ---- the record ------------------------------------------------------------------------------

/// A file's provenance record (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub content_hash: Sha256Hash,
    pub parents: Vec<Parent>,
    pub transforms: Vec<Transform>,
    pub tool: String,
    pub time: String,
}

/// A file another was made from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Parent {
    pub path: String,
    pub content_hash: Sha256Hash,
}

impl Parent {
    /// `file` as a parent: its absolute path, and the hash its record states, else its content
    /// hash (which reads every tensor once).
    pub fn of(file: &ModelFile) -> Result<Parent> {
        // A record that cannot be read does not stop the child from being written: the parent
        // is then named by its tensors' hash.
        let content_hash = match read_record(file).ok().flatten() {
            Some(r) => r.content_hash,
            None => content_hash(file)?,
        };
        Ok(Parent {
            path: absolute(file.path()).display().to_string(),
            content_hash,
        })
    }
}

/// One step from the parents to the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub enum Transform {
    /// Rewritten in another container; `from` and `to` are [`crate::Format`] names.
    Convert { from: String, to: String },
    /// Tensors quantized to `dtype` (a [`DType::name`]).
    Quantize { dtype: String },
    /// Every floating-point tensor converted to `dtype` (`F32`, `F16`, `BF16`).
    Cast { dtype: String },
    /// A LoRA adapter merged in: its path, [`crate::lora::adapter_hash`] and the user's
    /// multiplier.
    LoraMerge {
        adapter: String,
        adapter_hash: Sha256Hash,
        scale: f64,
    },
    /// Tensor names mapped, e.g. `hf-to-gguf`.
    NameMap { map: String },
    /// A transform applied while loading, described in words.
    LoadTransform { description: String },
    /// A kind this version does not know, kept as it was.
    Other {
        kind: String,
        details: serde_json::Map<String, serde_json::Value>,
    },
}

impl From<Transform> for serde_json::Value {
    fn from(t: Transform) -> serde_json::Value {
        use serde_json::json;
        match t {
            Transform::Convert { from, to } => json!({"kind": "convert", "from": from, "to": to}),
            Transform::Quantize { dtype } => json!({"kind": "quantize", "dtype": dtype}),
            Transform::Cast { dtype } => json!({"kind": "cast", "dtype": dtype}),
            Transform::LoraMerge {
                adapter,
                adapter_hash,
                scale,
            } => json!({
                "kind": "lora_merge",
                "adapter": adapter,
                "adapter_hash": adapter_hash.to_string(),
                "scale": scale,
            }),
            Transform::NameMap { map } => json!({"kind": "name_map", "map": map}),
            Transform::LoadTransform { description } => {
                json!({"kind": "load_transform", "description": description})
            }
            Transform::Other { kind, mut details } => {
                let mut out = serde_json::Map::new();
                out.insert("kind".into(), kind.into());
                out.append(&mut details);
                serde_json::Value::Object(out)
            }
        }
    }
}

impl TryFrom<serde_json::Value> for Transform {
    type Error = String;
    fn try_from(value: serde_json::Value) -> std::result::Result<Self, String> {
        let serde_json::Value::Object(mut map) = value else {
            return Err("a transform is not a JSON object".into());
        };
        let Some(serde_json::Value::String(kind)) = map.remove("kind") else {
            return Err("a transform has no string 'kind'".into());
        };
        let text = |field: &str| match map.get(field) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            _ => Err(format!("transform '{kind}' has no string '{field}'")),
        };
        Ok(match kind.as_str() {
            "convert" => Transform::Convert {
                from: text("from")?,
                to: text("to")?,
            },
            "quantize" => Transform::Quantize {
                dtype: text("dtype")?,
            },
            "cast" => Transform::Cast {
                dtype: text("dtype")?,
            },
            "lora_merge" => {
                let adapter = text("adapter")?;
                let hash = text("adapter_hash")?;
                let adapter_hash = Sha256Hash::parse(&hash).ok_or_else(|| {
                    format!("lora_merge adapter_hash '{hash}' is not sha256:<hex>")
                })?;
                let scale = map
                    .get("scale")
                    .and_then(serde_json::Value::as_f64)
                    .ok_or("transform 'lora_merge' has no numeric 'scale'")?;
                Transform::LoraMerge {
                    adapter,
                    adapter_hash,
                    scale,
                }
            }
            "name_map" => Transform::NameMap { map: text("map")? },
            "load_transform" => Transform::LoadTransform {
                description: text("description")?,
            },
            _ => Transform::Other { kind, details: map },
        })
    }
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transform::Convert { from, to } => write!(f, "convert {from} -> {to}"),
            Transform::Quantize { dtype } => write!(f, "quantize to {dtype}"),
            Transform::Cast { dtype } => write!(f, "cast to {dtype}"),
            Transform::LoraMerge {
                adapter,
                adapter_hash,
                scale,
            } => write!(f, "lora_merge {adapter} ({adapter_hash}) scale {scale}"),
            Transform::NameMap { map } => write!(f, "name_map {map}"),
            Transform::LoadTransform { description } => write!(f, "load_transform {description}"),
            Transform::Other { kind, details } => {
                write!(f, "{kind} {}", serde_json::Value::Object(details.clone()))
            }
        }
    }
}

/// What a writer is told when it is asked to record provenance; it fills in the content hash,
/// [`TOOL`] and the time itself (see [`crate::checkpoint::GgufWriter::provenance`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Provenance {
    pub parents: Vec<Parent>,
    pub transforms: Vec<Transform>,
}

impl Provenance {
    /// The record with `hash`, [`TOOL`] and the current time.
    pub fn record(&self, hash: Sha256Hash) -> Record {
        Record {
            version: VERSION,
            content_hash: hash,
            parents: self.parents.clone(),
            transforms: self.transforms.clone(),
            tool: TOOL.to_string(),
            time: crate::timestamp::rfc3339(crate::timestamp::source_date()),
        }
    }

    /// The record's JSON text with [`PLACEHOLDER_HEX`] for the hash, which starts with
    /// [`HASH_PREFIX`]: the writer patches the 64 digits after it once the tensors are written.
    pub(crate) fn placeholder_text(&self) -> String {
        let record = self.record(Sha256Hash([0; 32]));
        // Plain data with string keys: serialization cannot fail.
        let text = serde_json::to_string(&record).unwrap_or_default();
        debug_assert!(text.starts_with(HASH_PREFIX));
        debug_assert_eq!(&text[HASH_PREFIX.len()..][..64], PLACEHOLDER_HEX);
        text
    }
}

/// The record `file` carries, if any.
pub fn read_record(file: &ModelFile) -> Result<Option<Record>> {
    let Some(value) = file.metadata().get(KEY) else {
        return Ok(None);
    };
    let bad = |reason: String| Error::BadProvenance {
        path: file.path().to_path_buf(),
        reason,
    };
    let Value::String(text) = value else {
        return Err(bad(format!("not a string but {value:?}")));
    };
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    // Check the version first, so a newer record is reported as such, not as malformed.
    match json.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => return Err(bad(format!("version {v}; this mlmf reads {VERSION}"))),
        None => return Err(bad("no numeric 'version'".into())),
    }
    serde_json::from_value(json)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

// ---- verify and lineage ----------------------------------------------------------------------

/// What [`verify`] found.
#[derive(Clone, Debug)]
pub struct Verification {
    pub path: PathBuf,
    pub record: Option<Record>,
    pub computed: Sha256Hash,
}

impl Verification {
    /// `Ok` when the file has a record and its tensors hash to the recorded hash.
    pub fn check(&self) -> Result<()> {
        match &self.record {
            None => Err(Error::NoProvenance {
                path: self.path.clone(),
                computed: self.computed.to_string(),
            }),
            Some(r) if r.content_hash != self.computed => Err(Error::ContentHashMismatch {
                path: self.path.clone(),
                recorded: r.content_hash.to_string(),
                computed: self.computed.to_string(),
            }),
            Some(_) => Ok(()),
        }
    }
}

/// Recompute `file`'s content hash and read its record.
pub fn verify(file: &ModelFile) -> Result<Verification> {
    Ok(Verification {
        path: file.path().to_path_buf(),
        record: read_record(file)?,
        computed: content_hash(file)?,
    })
}

/// A file in a lineage: what was found at its path and, where its record could be trusted, its
/// parents.
#[derive(Clone, Debug)]
pub struct Node {
    pub path: PathBuf,
    /// The hash the child's record names for this parent; for the root, its own record's.
    pub expected: Option<Sha256Hash>,
    pub found: Found,
    pub record: Option<Record>,
    /// One per parent in the record, in its order; empty when they were not followed.
    pub parents: Vec<Node>,
    /// Why the record's parents were not followed, when it has some and they were not.
    pub stopped: Option<String>,
}

/// What is at a node's path.
#[derive(Clone, Debug, PartialEq)]
pub enum Found {
    /// A model file whose tensors hash to this.
    Hash(Sha256Hash),
    Missing,
    /// Something that could not be read as a model file (the error, in words).
    Unreadable(String),
}

impl Node {
    /// Whether the file at `path` is the one the hash names: `None` when there is no file or
    /// nothing to compare with.
    pub fn matches(&self) -> Option<bool> {
        match (&self.found, &self.expected) {
            (Found::Hash(h), Some(e)) => Some(h == e),
            _ => None,
        }
    }
}

/// Follow `path`'s record to its parents, and theirs, up to `max_depth` generations. Every file
/// met is hashed; a parent whose file is missing, unreadable or no longer hashes to what the
/// child recorded is reported and not followed further. An error only for `path` itself.
pub fn lineage(path: &Path, max_depth: usize) -> Result<Node> {
    let file = ModelFile::open(path)?;
    let record = read_record(&file)?;
    let found = Found::Hash(content_hash(&file)?);
    let mut node = Node {
        path: path.to_path_buf(),
        expected: record.as_ref().map(|r| r.content_hash),
        found,
        record,
        parents: Vec::new(),
        stopped: None,
    };
    let mut seen = HashSet::new();
    follow(&mut node, max_depth, &mut seen);
    Ok(node)
}

fn follow(node: &mut Node, depth_left: usize, seen: &mut HashSet<(PathBuf, Sha256Hash)>) {
    let Some(record) = &node.record else { return };
    if record.parents.is_empty() {
        return;
    }
    if node.matches() == Some(false) {
        node.stopped =
            Some("the file no longer matches the hash, so its record may not describe it".into());
        return;
    }
    if depth_left == 0 {
        node.stopped = Some("depth limit reached".into());
        return;
    }
    if let Found::Hash(h) = node.found {
        // A file that is its own ancestor can only come from hand-edited records.
        if !seen.insert((node.path.clone(), h)) {
            node.stopped = Some("already listed above (a cycle)".into());
            return;
        }
    }
    let dir = node
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    node.parents = record
        .parents
        .iter()
        .map(|p| {
            // Relative paths (from other writers) are taken relative to the child's directory.
            let path = dir.join(&p.path);
            let mut child = open_node(&path, p.content_hash);
            follow(&mut child, depth_left - 1, seen);
            child
        })
        .collect();
}

fn open_node(path: &Path, expected: Sha256Hash) -> Node {
    let mut node = Node {
        path: path.to_path_buf(),
        expected: Some(expected),
        found: Found::Missing,
        record: None,
        parents: Vec::new(),
        stopped: None,
    };
    if !path.exists() {
        return node;
    }
    let opened = ModelFile::open(path).and_then(|f| {
        let hash = content_hash(&f)?;
        Ok((hash, read_record(&f)))
    });
    match opened {
        Ok((hash, record)) => {
            node.found = Found::Hash(hash);
            match record {
                Ok(r) => node.record = r,
                Err(e) => node.stopped = Some(e.to_string()),
            }
        }
        Err(e) => node.found = Found::Unreadable(e.to_string()),
    }
    node
}

// ---- small helpers ---------------------------------------------------------------------------

/// `path` made absolute (symlinks resolved where the file exists).
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_text_round_trips_and_rejects_bad_text() {
        let h = Sha256Hash::of(b"abc");
        // FIPS 180-2's example.
        assert_eq!(
            h.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256Hash::parse(&h.to_string()), Some(h));
        for bad in [
            "",
            "sha256:",
            "md5:00",
            &h.hex(),
            &format!("sha256:{}0", h.hex()),
        ] {
            assert_eq!(Sha256Hash::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Sha256Hash::parse(&format!("sha256:{}é", &h.hex()[..62])),
            None
        );
    }

    /// The stream of the definition, written out by hand for two tensors.
    #[test]
    fn content_hash_follows_the_definition_and_ignores_order() {
        let a = [1u8, 2, 3, 4];
        let b = [9u8; 6];
        let mut stream = Vec::new();
        for (name, dtype, shape, bytes) in [
            ("a", "F32", &[1u64][..], &a[..]),
            ("b.w", "U8", &[2, 3][..], &b[..]),
        ] {
            stream.extend_from_slice(&(name.len() as u64).to_le_bytes());
            stream.extend_from_slice(name.as_bytes());
            stream.extend_from_slice(&(dtype.len() as u64).to_le_bytes());
            stream.extend_from_slice(dtype.as_bytes());
            stream.extend_from_slice(&(shape.len() as u64).to_le_bytes());
            for d in shape {
                stream.extend_from_slice(&d.to_le_bytes());
            }
            stream.extend_from_slice(&Sha256::digest(bytes));
        }
        let expected = Sha256Hash::of(&stream);
        let digest = |bytes: &[u8]| -> [u8; 32] { Sha256::digest(bytes).into() };
        let mut h = ContentHasher::new();
        h.add("b.w", DType::U8, &[2, 3], digest(&b));
        h.add("a", DType::F32, &[1], digest(&a));
        assert_eq!(h.finish(), expected);
        // The shape counts: [3, 2] differs from [2, 3].
        let mut h = ContentHasher::new();
        h.add("a", DType::F32, &[1], digest(&a));
        h.add("b.w", DType::U8, &[3, 2], digest(&b));
        assert_ne!(h.finish(), expected);
    }

    #[test]
    fn record_round_trips_and_starts_with_the_hash() {
        let p = Provenance {
            parents: vec![Parent {
                path: "/m/base.safetensors".into(),
                content_hash: Sha256Hash::of(b"base"),
            }],
            transforms: vec![
                Transform::Quantize {
                    dtype: "Q8_0".into(),
                },
                Transform::LoraMerge {
                    adapter: "/m/adapter".into(),
                    adapter_hash: Sha256Hash::of(b"adapter"),
                    scale: 0.5,
                },
                Transform::NameMap {
                    map: "hf-to-gguf".into(),
                },
                Transform::Convert {
                    from: "gguf".into(),
                    to: "safetensors".into(),
                },
                Transform::LoadTransform {
                    description: "transpose".into(),
                },
            ],
        };
        let text = p.placeholder_text();
        assert!(text.starts_with(HASH_PREFIX), "{text}");
        let record = p.record(Sha256Hash::of(b"x"));
        let text = serde_json::to_string(&record).unwrap();
        assert!(
            text.contains(r#"{"kind":"quantize","dtype":"Q8_0"}"#),
            "{text}"
        );
        assert!(text.contains(r#""scale":0.5"#), "{text}");
        assert!(text.ends_with(&format!(r#""tool":"{TOOL}","time":"{}"}}"#, record.time)));
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back, record);
        // A kind from a later version survives a round trip.
        let other = r#"{"kind":"prune","ratio":0.5}"#;
        let t: Transform = serde_json::from_str(other).unwrap();
        assert!(matches!(&t, Transform::Other { kind, .. } if kind == "prune"));
        assert_eq!(serde_json::to_string(&t).unwrap(), other);
    }
}
