//! Distributed save and resharding load: every rank writes the slices it holds (whole tensors,
//! or rows or columns of them) to a safetensors file of its own; rank 0 writes an index that maps
//! every slice once every rank has written; any number of ranks later loads any part of any
//! tensor from the slice files that cover it, reading only the bytes that part lies in.
//!
//! ```text
//! DIR/
//!   sharded.index.json                          the committed save, replaced atomically, last
//!   gen-00000003-rank-00000-of-00004.safetensors   rank 0's slices of generation 3
//!   gen-00000003-rank-00001-of-00004.safetensors   ...
//! ```
//!
//! A save is two steps, so that the collectives between them belong to the caller:
//!
//! 1. [`write_rank`] on every rank: the rank's file of a new generation, written atomically
//!    ([`SafetensorsWriter`]); it returns a [`RankReport`] (serialisable: what it wrote, each
//!    slice's sha256).
//! 2. [`commit`] on rank 0, after every rank reported success: it checks the reports cover every
//!    tensor exactly once, writes the index atomically, then removes the files of every other
//!    generation.
//!
//! Rank files carry the generation in their names, so a save never overwrites a file the
//! committed index names: a save that fails or is killed before [`commit`] replaced the index
//! leaves the previous checkpoint as it was (plus orphan files of the failed generation, which
//! [`discard`] or the next commit removes).
//!
//! Quantized slices (dtypes safetensors has no name for) are stored as `U8` with the last
//! dimension in bytes (`[rows, row_bytes]`, or `[bytes]` for a vector); the index holds the
//! real dtype and shape.
//!
//! The index (`sharded.index.json`):
//!
//! ```json
//! {
//!   "format": "mlmf-sharded-checkpoint",
//!   "version": 1,
//!   "generation": 3,
//!   "world_size": 4,
//!   "files": [{"file": "gen-00000003-rank-00000-of-00004.safetensors", "rank": 0, "bytes": 123}],
//!   "tensors": {
//!     "blk.0.ffn_down.weight": {
//!       "dtype": "Q6_K",
//!       "shape": [640, 2048],
//!       "slices": [
//!         {"slice": {"rows": [0, 160]}, "file": "gen-...-rank-00000-of-00004.safetensors",
//!          "name": "blk.0.ffn_down.weight", "sha256": "sha256:<64 hex>"}
//!       ]
//!     }
//!   }
//! }
//! ```
//!
//! `slice` is `"whole"`, `{"rows": [start, end]}` or `{"cols": [start, end]}`; `name` is the
//! slice's tensor name inside `file`; `sha256` is of the slice's bytes as stored.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::comm::Comm;

use crate::checkpoint::{AtomicFile, ChunkSource, SafetensorsWriter, TensorSource};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::{ModelFile, TensorInfo};
use crate::provenance::{Sha256Hash, TensorDigest};
use crate::{Device, Shape, Storage, Tensor};
/// Re-exported here so that users of this module name parts without `mlmf_core`.
pub use mlmf_core::Slice;

/// The index's file name in a checkpoint directory.
pub const INDEX_NAME: &str = "sharded.index.json";
/// The index's `format` value.
pub const FORMAT: &str = "mlmf-sharded-checkpoint";
/// The index's `version` value this code writes and reads.
pub const VERSION: u64 = 1;
/// An index larger than this is refused before it is read (a real one is a few bytes per slice).
const MAX_INDEX_BYTES: u64 = 256 << 20;

/// The name of `rank`'s file of `generation` in a save by `world` ranks.
pub fn rank_file_name(generation: u64, rank: usize, world: usize) -> String {
    format!("gen-{generation:08}-rank-{rank:05}-of-{world:05}.safetensors")
}

/// The generation in a rank file's name, if it is one.
fn generation_of(file_name: &str) -> Option<u64> {
    let rest = file_name.strip_prefix("gen-")?;
    let (digits, rest) = rest.split_once("-rank-")?;
    let (rank, rest) = rest.split_once("-of-")?;
    let world = rest.strip_suffix(".safetensors")?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(rank) && numeric(world)).then_some(())?;
    digits.parse().ok()
}

/// The generation of a rank file, or of the temporary file a rank killed while writing one left
/// ([`AtomicFile`] names it `.<name>.tmp-<pid>`).
fn generation_in_dir(name: &str) -> Option<u64> {
    let temp = name
        .strip_prefix('.')
        .and_then(|n| n.rsplit_once(".tmp-"))
        .map(|(target, _)| target);
    generation_of(temp.unwrap_or(name))
}

// ---- what a rank saves -----------------------------------------------------------------------

/// One slice a rank saves: the tensor's full name, dtype and shape, which part of it this is,
/// and that part's bytes (in the dtype's layout, rows in order; for columns, each row's columns).
pub struct Part<'a> {
    pub name: String,
    pub dtype: DType,
    /// The whole tensor's shape, numpy order.
    pub shape: Vec<usize>,
    pub slice: Slice,
    pub source: TensorSource<'a>,
}

impl<'a> Part<'a> {
    pub fn new(
        name: impl Into<String>,
        dtype: DType,
        shape: &[usize],
        slice: Slice,
        source: impl Into<TensorSource<'a>>,
    ) -> Part<'a> {
        Part {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            slice,
            source: source.into(),
        }
    }
}

/// A [`Slice`] as the index and the reports write it: `"whole"`, `{"rows": [a, b]}`,
/// `{"cols": [a, b]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SliceSpec {
    Whole,
    Rows([usize; 2]),
    Cols([usize; 2]),
}

impl From<&Slice> for SliceSpec {
    fn from(s: &Slice) -> SliceSpec {
        match s {
            Slice::Whole => SliceSpec::Whole,
            Slice::Rows(r) => SliceSpec::Rows([r.start, r.end]),
            Slice::Cols(c) => SliceSpec::Cols([c.start, c.end]),
        }
    }
}

impl From<&SliceSpec> for Slice {
    fn from(s: &SliceSpec) -> Slice {
        match *s {
            SliceSpec::Whole => Slice::Whole,
            SliceSpec::Rows([a, b]) => Slice::Rows(a..b),
            SliceSpec::Cols([a, b]) => Slice::Cols(a..b),
        }
    }
}

/// One slice a rank wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceRecord {
    /// The whole tensor's name, dtype ([`DType::name`]) and shape.
    pub tensor: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub slice: SliceSpec,
    /// The slice's tensor name inside the rank's file.
    pub name: String,
    /// Of the slice's bytes as stored.
    pub sha256: Sha256Hash,
}

/// What [`write_rank`] wrote: gathered from every rank (as JSON, [`RankReport::to_json`]) and
/// handed to [`commit`] on rank 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankReport {
    pub generation: u64,
    pub rank: usize,
    pub world_size: usize,
    /// The file's name in the checkpoint directory, and its length.
    pub file: String,
    pub bytes: u64,
    pub slices: Vec<SliceRecord>,
}

impl RankReport {
    /// The report as JSON bytes, for an all-gather.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Distributed {
            during: "encoding a rank's save report".into(),
            reason: e.to_string(),
        })
    }

    /// A report from [`RankReport::to_json`]'s bytes.
    pub fn from_json(bytes: &[u8]) -> Result<RankReport> {
        serde_json::from_slice(bytes).map_err(|e| Error::Distributed {
            during: "decoding a rank's save report".into(),
            reason: e.to_string(),
        })
    }
}

// ---- the index -------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct IndexJson {
    format: String,
    version: u64,
    generation: u64,
    world_size: usize,
    files: Vec<FileJson>,
    tensors: BTreeMap<String, TensorJson>,
}

#[derive(Serialize, Deserialize)]
struct FileJson {
    file: String,
    rank: usize,
    bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct TensorJson {
    dtype: String,
    shape: Vec<usize>,
    slices: Vec<SliceJson>,
}

#[derive(Serialize, Deserialize)]
struct SliceJson {
    slice: SliceSpec,
    file: String,
    name: String,
    sha256: Sha256Hash,
}

/// The generation the index in `dir` commits, `None` when there is no index or it cannot be
/// read (nothing is loadable then, so nothing it names needs keeping).
fn committed_generation(dir: &Path) -> Option<u64> {
    read_index(&dir.join(INDEX_NAME)).ok().map(|i| i.generation)
}

fn read_index(path: &Path) -> Result<IndexJson> {
    let bad = |reason: String| Error::BadIndex {
        path: path.to_path_buf(),
        reason,
    };
    let len = fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if len > MAX_INDEX_BYTES {
        return Err(bad(format!(
            "{len} bytes, more than the {MAX_INDEX_BYTES} an index may have"
        )));
    }
    let text = fs::read(path).map_err(|e| Error::io(path, e))?;
    let index: IndexJson = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if index.format != FORMAT || index.version != VERSION {
        return Err(bad(format!(
            "format '{}' version {}, expected '{FORMAT}' version {VERSION}",
            index.format, index.version
        )));
    }
    Ok(index)
}

/// The generation a new save into `dir` should use: one past the committed one and past any
/// rank file left by an interrupted save. Every rank must use the same (rank 0 computes it and
/// broadcasts it, or every rank reads the same shared directory).
pub fn next_generation(dir: &Path) -> Result<u64> {
    let mut newest = committed_generation(dir).unwrap_or(0);
    if dir.is_dir() {
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            if let Some(g) = entry.file_name().to_str().and_then(generation_in_dir) {
                newest = newest.max(g);
            }
        }
    }
    newest.checked_add(1).ok_or_else(|| Error::Distributed {
        during: "choosing a save generation".into(),
        reason: format!("{}: generation numbers are exhausted", dir.display()),
    })
}

// ---- saving ----------------------------------------------------------------------------------

/// How a slice is stored in a rank file: its own dtype and shape when safetensors has the dtype,
/// else `U8` with the last dimension in bytes.
fn stored_form(dtype: DType, shape: &[usize]) -> Option<(DType, Vec<usize>)> {
    if dtype.info().safetensors.is_some() {
        return Some((dtype, shape.to_vec()));
    }
    let (&last, lead) = shape.split_last()?;
    let bytes = usize::try_from(dtype.byte_len(last as u64)?).ok()?;
    let mut dims = lead.to_vec();
    dims.push(bytes);
    Some((DType::U8, dims))
}

/// `slice` of a tensor of `dtype` (rank `rank`, already checked against its shape and blocks)
/// as the same part of its stored form.
fn stored_slice(dtype: DType, rank: usize, slice: &Slice) -> Slice {
    if dtype.info().safetensors.is_some() {
        return slice.clone();
    }
    let block = dtype.block_elems() as usize;
    let bytes = dtype.block_bytes() as usize;
    let to_bytes = |r: &Range<usize>| r.start / block * bytes..r.end / block * bytes;
    match slice {
        Slice::Whole => Slice::Whole,
        Slice::Rows(r) if rank == 1 => Slice::Rows(to_bytes(r)),
        Slice::Rows(r) => Slice::Rows(r.clone()),
        Slice::Cols(c) => Slice::Cols(to_bytes(c)),
    }
}

/// A tensor's index entry as a [`TensorInfo`] of a file that would hold it alone, so that
/// [`Slice::layout`] checks slices against it. `None` when its byte length overflows.
fn logical_info(name: &str, dtype: DType, shape: Shape) -> Option<TensorInfo> {
    let len = dtype.byte_len(shape.elem_count())?;
    Some(TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
        file: 0,
        range: 0..len,
        strides: None,
    })
}

/// A source that hashes its bytes as the writer streams them.
struct Hashing<'a> {
    inner: TensorSource<'a>,
    digest: RefCell<TensorDigest>,
}

impl ChunkSource for Hashing<'_> {
    fn byte_len(&self) -> u64 {
        self.inner.byte_len()
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        *self.digest.borrow_mut() = TensorDigest::new();
        self.inner.for_each_chunk(&mut |chunk: &[u8]| {
            self.digest.borrow_mut().update(chunk);
            f(chunk)
        })
    }
}

/// Write `rank`'s slices of generation `generation` (of a save by `world` ranks) to its file in
/// `dir`, atomically, and report what was written. Refused when `generation` is not newer than
/// the committed one, whose files must stay. Every part is checked (its slice against its
/// shape and dtype blocks, its byte length) before the file is created.
pub fn write_rank(
    dir: &Path,
    generation: u64,
    rank: usize,
    world: usize,
    parts: &[Part<'_>],
) -> Result<RankReport> {
    let failed = |reason: String| Error::RankFailed {
        rank,
        during: "writing its checkpoint slices".into(),
        reason,
    };
    if rank >= world {
        return Err(failed(format!("rank {rank} of a world of {world}")));
    }
    if let Some(committed) = committed_generation(dir) {
        if generation <= committed {
            return Err(failed(format!(
                "generation {generation} is not newer than the committed generation {committed} in {}",
                dir.display()
            )));
        }
    }
    let file = rank_file_name(generation, rank, world);
    let path = dir.join(&file);
    // A tensor with several slices on this rank gets one name per slice in the file.
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for p in parts {
        *count.entry(&p.name).or_default() += 1;
    }
    let mut planned = Vec::with_capacity(parts.len());
    for p in parts {
        let overflow = || Error::ShapeOverflow {
            path: path.clone(),
            tensor: p.name.clone(),
            shape: p.shape.iter().map(|&d| d as u64).collect(),
        };
        let shape = Shape::new(p.shape.clone()).ok_or_else(overflow)?;
        let info = logical_info(&p.name, p.dtype, shape).ok_or_else(overflow)?;
        let layout = p.slice.layout(&path, &info)?;
        let found = p.source.byte_len();
        if found != layout.bytes.total() {
            return Err(Error::ByteLengthMismatch {
                path: path.clone(),
                tensor: p.name.clone(),
                expected: layout.bytes.total(),
                found,
            });
        }
        let (dtype, dims) = stored_form(p.dtype, layout.shape.dims()).ok_or_else(overflow)?;
        let name = if count[p.name.as_str()] > 1 {
            format!("{}#{}", p.name, slice_tag(&p.slice))
        } else {
            p.name.clone()
        };
        let source = Hashing {
            inner: p.source,
            digest: RefCell::new(TensorDigest::new()),
        };
        planned.push((p, name, dtype, dims, source));
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let metadata = BTreeMap::from([
        ("mlmf.shard.generation".to_string(), generation.to_string()),
        ("mlmf.shard.rank".to_string(), rank.to_string()),
        ("mlmf.shard.world_size".to_string(), world.to_string()),
    ]);
    let mut writer = SafetensorsWriter::new(metadata);
    for (_, name, dtype, dims, source) in &planned {
        writer.add_tensor(name.clone(), *dtype, dims, TensorSource::Chunks(source));
    }
    writer.write(&path)?;
    let bytes = fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
    let slices = planned
        .into_iter()
        .map(|(p, name, _, _, source)| SliceRecord {
            tensor: p.name.clone(),
            dtype: p.dtype.name().to_string(),
            shape: p.shape.clone(),
            slice: SliceSpec::from(&p.slice),
            name,
            sha256: Sha256Hash(source.digest.into_inner().finish()),
        })
        .collect();
    Ok(RankReport {
        generation,
        rank,
        world_size: world,
        file,
        bytes,
        slices,
    })
}

fn slice_tag(slice: &Slice) -> String {
    match slice {
        Slice::Whole => "whole".into(),
        Slice::Rows(r) => format!("rows{}-{}", r.start, r.end),
        Slice::Cols(c) => format!("cols{}-{}", c.start, c.end),
    }
}

/// Rank 0, once every rank's [`write_rank`] succeeded: check that `reports` (one per rank) are
/// of `generation`, that their files are there with the lengths reported, and that their
/// slices cover every tensor exactly once; then write the index atomically and remove the files
/// of every other generation. A slice reported by several ranks with the same sha256 (a
/// replicated tensor every rank saved) is indexed once, from the lowest rank; with different
/// hashes it is an error. Nothing is written when a check fails.
pub fn commit(dir: &Path, generation: u64, reports: &[RankReport]) -> Result<()> {
    let index_path = dir.join(INDEX_NAME);
    let bad = |reason: String| Error::BadIndex {
        path: index_path.clone(),
        reason,
    };
    let world = reports
        .first()
        .map(|r| r.world_size)
        .ok_or_else(|| bad("no rank reported".into()))?;
    let mut reports: Vec<&RankReport> = reports.iter().collect();
    reports.sort_by_key(|r| r.rank);
    let ranks: Vec<usize> = reports.iter().map(|r| r.rank).collect();
    if ranks != (0..world).collect::<Vec<_>>() {
        return Err(bad(format!(
            "a save by {world} ranks needs one report from each; got ranks {ranks:?}"
        )));
    }
    let mut files = Vec::with_capacity(world);
    let mut tensors: BTreeMap<String, TensorJson> = BTreeMap::new();
    for r in &reports {
        let expected = rank_file_name(generation, r.rank, world);
        if r.generation != generation || r.world_size != world || r.file != expected {
            return Err(bad(format!(
                "rank {} reported {} (generation {}, world {}), expected {expected}",
                r.rank, r.file, r.generation, r.world_size
            )));
        }
        let path = dir.join(&r.file);
        let len = fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
        if len != r.bytes {
            return Err(Error::CorruptCheckpoint {
                path,
                reason: format!("{len} bytes, rank {} reported {}", r.rank, r.bytes),
            });
        }
        files.push(FileJson {
            file: r.file.clone(),
            rank: r.rank,
            bytes: r.bytes,
        });
        for s in &r.slices {
            let entry = tensors
                .entry(s.tensor.clone())
                .or_insert_with(|| TensorJson {
                    dtype: s.dtype.clone(),
                    shape: s.shape.clone(),
                    slices: Vec::new(),
                });
            if entry.dtype != s.dtype || entry.shape != s.shape {
                return Err(bad(format!(
                    "tensor '{}': rank {} saved it as {} {:?}, another rank as {} {:?}",
                    s.tensor, r.rank, s.dtype, s.shape, entry.dtype, entry.shape
                )));
            }
            if let Some(same) = entry.slices.iter().find(|x| x.slice == s.slice) {
                if same.sha256 != s.sha256 {
                    return Err(bad(format!(
                        "tensor '{}': {} saved by {} and by rank {} with different bytes",
                        s.tensor,
                        Slice::from(&s.slice),
                        same.file,
                        r.rank
                    )));
                }
                continue;
            }
            entry.slices.push(SliceJson {
                slice: s.slice.clone(),
                file: r.file.clone(),
                name: s.name.clone(),
                sha256: s.sha256,
            });
        }
    }
    for (name, t) in &mut tensors {
        let dtype = DType::from_name(&t.dtype)
            .ok_or_else(|| bad(format!("tensor '{name}': unknown dtype '{}'", t.dtype)))?;
        let shape = Shape::new(t.shape.clone())
            .and_then(|s| logical_info(name, dtype, s))
            .ok_or_else(|| bad(format!("tensor '{name}': shape {:?} overflows", t.shape)))?;
        t.slices.sort_by_key(|s| start_of(&s.slice));
        check_cover(&index_path, &shape, t.slices.iter().map(|s| &s.slice))?;
    }
    let index = IndexJson {
        format: FORMAT.into(),
        version: VERSION,
        generation,
        world_size: world,
        files,
        tensors,
    };
    let text = serde_json::to_string_pretty(&index).map_err(|e| bad(e.to_string()))?;
    let mut out = AtomicFile::create(&index_path)?;
    out.write_all(text.as_bytes())?;
    out.commit()?;
    // The index is committed; what follows only frees space, and failing at it loses nothing.
    remove_generations(dir, |g| g != generation);
    Ok(())
}

/// Remove the files of `generation` after a save that failed before [`commit`]. The committed
/// generation is never removed.
pub fn discard(dir: &Path, generation: u64) -> Result<()> {
    if committed_generation(dir) == Some(generation) {
        return Err(Error::Distributed {
            during: "discarding a failed save".into(),
            reason: format!(
                "generation {generation} is the one {} commits",
                dir.join(INDEX_NAME).display()
            ),
        });
    }
    remove_generations(dir, |g| g == generation);
    Ok(())
}

/// Remove the rank files of the generations `remove` picks, and the temporary files of ranks
/// killed while writing one of them.
/// Called when no rank is writing (after every rank reported, or after a failed save).
fn remove_generations(dir: &Path, remove: impl Fn(u64) -> bool) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if generation_in_dir(name).is_some_and(&remove) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Where a slice starts and ends, to sort a tensor's slices (empty ones before the one that
/// starts where they are).
fn start_of(s: &SliceSpec) -> (usize, usize) {
    match s {
        SliceSpec::Whole => (0, 0),
        SliceSpec::Rows([a, b]) | SliceSpec::Cols([a, b]) => (*a, *b),
    }
}

/// Check that `slices` (sorted by start) cover `info` exactly once: one whole, or rows (or
/// columns) that follow each other from 0 to the end, each valid for the tensor's shape and
/// blocks.
fn check_cover<'a>(
    index: &Path,
    info: &TensorInfo,
    slices: impl Iterator<Item = &'a SliceSpec>,
) -> Result<()> {
    let bad = |reason: String| Error::BadIndex {
        path: index.to_path_buf(),
        reason: format!("tensor '{}': {reason}", info.name),
    };
    let slices: Vec<&SliceSpec> = slices.collect();
    let dims = info.shape.dims();
    let (is_rows, end) = match slices.first() {
        None => return Err(bad("no slice holds it".into())),
        Some(SliceSpec::Whole) if slices.len() == 1 => return Ok(()),
        Some(SliceSpec::Whole) => {
            return Err(bad(
                "it is saved whole and in slices; each part must be saved once".into(),
            ))
        }
        Some(SliceSpec::Rows(_)) => (true, dims.first().copied().unwrap_or(0)),
        Some(SliceSpec::Cols(_)) => (false, dims.get(1).copied().unwrap_or(0)),
    };
    let mut at = 0;
    for s in slices {
        let range = match (s, is_rows) {
            (SliceSpec::Rows(r), true) | (SliceSpec::Cols(r), false) => r,
            _ => {
                return Err(bad(
                    "its slices mix rows, columns and whole; a tensor is split one way".into(),
                ))
            }
        };
        Slice::from(s).layout(index, info)?;
        if range[0] != at {
            return Err(bad(format!(
                "{} starts at {}, where {at} was expected (a gap or an overlap)",
                Slice::from(s),
                range[0]
            )));
        }
        at = range[1];
    }
    if at != end {
        return Err(bad(format!("its slices end at {at} of {end}")));
    }
    Ok(())
}

// ---- loading ---------------------------------------------------------------------------------

/// A tensor of a [`ShardedCheckpoint`]: its full name, dtype and shape, and where its slices
/// are.
#[derive(Clone, Debug)]
pub struct ShardedTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Shape,
    /// In order of their rows or columns.
    pub slices: Vec<SliceLocation>,
}

/// One saved slice: which part, which file (an index into [`ShardedCheckpoint::files`]), its
/// name there and the sha256 of its stored bytes.
#[derive(Clone, Debug)]
pub struct SliceLocation {
    pub slice: Slice,
    pub file: usize,
    pub name: String,
    pub sha256: Sha256Hash,
}

/// A committed distributed save, opened for loading any part of any tensor with any number of
/// ranks. Opening reads the index and the rank files' headers (memory maps); tensor bytes are
/// read only by [`ShardedCheckpoint::load`], and only those of the part asked for.
pub struct ShardedCheckpoint {
    index: PathBuf,
    generation: u64,
    world_size: usize,
    files: Vec<ModelFile>,
    tensors: Vec<ShardedTensor>,
    bytes_read: AtomicU64,
}

impl ShardedCheckpoint {
    /// Open the checkpoint committed in `dir`, checking the index: every tensor covered exactly
    /// once by its slices, every file it names present, and every slice stored there with the
    /// dtype and shape the index implies. Errors: [`Error::BadIndex`] (unreadable or
    /// inconsistent index, naming the tensor), [`Error::CorruptCheckpoint`] (a rank file missing
    /// or not what the index says), and the file's own parse errors.
    pub fn open(dir: impl AsRef<Path>) -> Result<ShardedCheckpoint> {
        let dir = dir.as_ref();
        let index_path = dir.join(INDEX_NAME);
        let index = read_index(&index_path)?;
        let bad = |reason: String| Error::BadIndex {
            path: index_path.clone(),
            reason,
        };
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut files = Vec::with_capacity(index.files.len().min(1 << 16));
        for f in &index.files {
            // A plain name in the directory: nothing else may be opened through the index.
            let plain = Path::new(&f.file).file_name().and_then(|n| n.to_str())
                == Some(f.file.as_str())
                && !f.file.starts_with('.')
                && !f.file.contains(['/', '\\']);
            if !plain {
                return Err(bad(format!(
                    "'{}' is not a file name in the directory",
                    f.file
                )));
            }
            if names.insert(&f.file, files.len()).is_some() {
                return Err(bad(format!("'{}' is listed twice", f.file)));
            }
            let path = dir.join(&f.file);
            if !path.is_file() {
                return Err(Error::CorruptCheckpoint {
                    path,
                    reason: format!(
                        "rank {}'s file of generation {}, named by {}, is missing",
                        f.rank,
                        index.generation,
                        index_path.display()
                    ),
                });
            }
            files.push(ModelFile::open(&path)?);
        }
        let mut tensors = Vec::with_capacity(index.tensors.len());
        for (name, t) in &index.tensors {
            let dtype = DType::from_name(&t.dtype)
                .ok_or_else(|| bad(format!("tensor '{name}': unknown dtype '{}'", t.dtype)))?;
            let info = Shape::new(t.shape.clone())
                .and_then(|s| logical_info(name, dtype, s))
                .ok_or_else(|| bad(format!("tensor '{name}': shape {:?} overflows", t.shape)))?;
            let mut specs: Vec<&SliceJson> = t.slices.iter().collect();
            specs.sort_by_key(|s| start_of(&s.slice));
            check_cover(&index_path, &info, specs.iter().map(|s| &s.slice))?;
            let mut slices = Vec::with_capacity(specs.len());
            for s in specs {
                let file = *names.get(s.file.as_str()).ok_or_else(|| {
                    bad(format!(
                        "tensor '{name}': {} is in '{}', which the index does not list",
                        Slice::from(&s.slice),
                        s.file
                    ))
                })?;
                let slice = Slice::from(&s.slice);
                let layout = slice.layout(&index_path, &info)?;
                let expected = stored_form(dtype, layout.shape.dims());
                let stored = files[file].tensor(&s.name)?;
                if expected.as_ref().map(|(d, s)| (*d, s.as_slice()))
                    != Some((stored.dtype, stored.shape.dims()))
                    || stored.strides.is_some()
                {
                    return Err(Error::CorruptCheckpoint {
                        path: files[file].path().to_path_buf(),
                        reason: format!(
                            "'{}' ({} of '{name}') is {} {}, the index implies {:?}",
                            s.name, slice, stored.dtype, stored.shape, expected
                        ),
                    });
                }
                slices.push(SliceLocation {
                    slice,
                    file,
                    name: s.name.clone(),
                    sha256: s.sha256,
                });
            }
            tensors.push(ShardedTensor {
                name: name.clone(),
                dtype,
                shape: info.shape,
                slices,
            });
        }
        Ok(ShardedCheckpoint {
            index: index_path,
            generation: index.generation,
            world_size: index.world_size,
            files,
            tensors,
            bytes_read: AtomicU64::new(0),
        })
    }

    /// The index file's path.
    pub fn index_path(&self) -> &Path {
        &self.index
    }

    /// The committed generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many ranks saved it.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The rank files, in the index's order.
    pub fn files(&self) -> &[ModelFile] {
        &self.files
    }

    /// Every tensor, by name.
    pub fn tensors(&self) -> &[ShardedTensor] {
        &self.tensors
    }

    /// One tensor. Errors: [`Error::TensorNotFound`] naming the index.
    pub fn tensor(&self, name: &str) -> Result<&ShardedTensor> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .map(|i| &self.tensors[i])
            .map_err(|_| Error::TensorNotFound {
                path: self.index.clone(),
                tensor: name.to_string(),
            })
    }

    /// Tensor bytes read from the rank files by [`ShardedCheckpoint::load`] so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Load `slice` of the tensor `name` onto `device`, from the slice files that cover it,
    /// reading from each only the rows or columns that overlap the request
    /// ([`Device::load_slice`]). A part held by one saved slice of a dtype safetensors stores as
    /// it is goes straight to the device; otherwise the pieces are joined in host memory (the
    /// size of the result) and uploaded. Errors: [`Error::TensorNotFound`], [`Error::BadSlice`]
    /// (a slice outside the tensor or cutting a quantized block).
    pub fn load(&self, device: &Device, name: &str, slice: &Slice) -> Result<Tensor> {
        let t = self.tensor(name)?;
        let info =
            logical_info(&t.name, t.dtype, t.shape.clone()).ok_or_else(|| Error::BadIndex {
                path: self.index.clone(),
                reason: format!("tensor '{name}': its byte length overflows"),
            })?;
        let want = slice.layout(&self.index, &info)?;
        let dims = t.shape.dims();
        let rank = dims.len();
        let all_rows = 0..dims.first().copied().unwrap_or(1);
        let all_cols = 0..if rank == 2 { dims[1] } else { 1 };
        let region = |s: &Slice| match s {
            Slice::Whole => (all_rows.clone(), all_cols.clone()),
            Slice::Rows(r) => (r.clone(), all_cols.clone()),
            Slice::Cols(c) => (all_rows.clone(), c.clone()),
        };
        let (want_rows, want_cols) = region(slice);
        // Each overlapping saved slice, with the part of it that is wanted (in its own
        // coordinates), and where that part goes in the result.
        let mut pieces = Vec::new();
        for s in &t.slices {
            let (rows, cols) = region(&s.slice);
            let r = want_rows.start.max(rows.start)..want_rows.end.min(rows.end);
            let c = want_cols.start.max(cols.start)..want_cols.end.min(cols.end);
            if r.start >= r.end || c.start >= c.end {
                continue;
            }
            // Saved slices and requests each span all rows or all columns, so the overlap
            // spans all of one of them in the saved slice: one Slice asks for it.
            let local = if r == rows && c == cols {
                Slice::Whole
            } else if c == cols {
                Slice::Rows(r.start - rows.start..r.end - rows.start)
            } else if r == rows {
                Slice::Cols(c.start - cols.start..c.end - cols.start)
            } else {
                return Err(Error::BadIndex {
                    path: self.index.clone(),
                    reason: format!("tensor '{name}': {} overlaps {slice} in part", s.slice),
                });
            };
            pieces.push((s, local, r, c));
        }
        let native = t.dtype.info().safetensors.is_some();
        if let [(s, local, _, _)] = pieces.as_slice() {
            if native && s.name == t.name && !matches!(device, Device::Cpu) {
                let file = &self.files[s.file];
                let out = device.load_slice(file, &s.name, local)?;
                self.bytes_read.fetch_add(out.byte_len(), Ordering::Relaxed);
                return Ok(out);
            }
        }
        let total = want.bytes.total();
        let mut out = vec![0u8; usize_len(&self.index, name, total)?];
        let want_row_count = (want_rows.end - want_rows.start).max(1);
        let out_row_bytes = total as usize / want_row_count;
        let block = t.dtype.block_elems() as usize;
        let block_bytes = t.dtype.block_bytes() as usize;
        let col_bytes = |n: usize| n / block * block_bytes;
        let mut filled = 0u64;
        for (s, local, r, c) in pieces {
            let file = &self.files[s.file];
            let stored = stored_slice(t.dtype, rank, &local);
            let part = Device::Cpu.load_slice(file, &s.name, &stored)?;
            let owned;
            let bytes = match part.storage() {
                Storage::Cpu(b) => b.as_slice(),
                Storage::Gpu(_) => {
                    owned = part.to_bytes()?;
                    owned.as_slice()
                }
            };
            self.bytes_read
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            filled += bytes.len() as u64;
            let corrupt = || Error::CorruptCheckpoint {
                path: file.path().to_path_buf(),
                reason: format!("'{}' does not hold the bytes the index implies", s.name),
            };
            if rank == 1 {
                let at = col_bytes(r.start - want_rows.start);
                out.get_mut(at..at + bytes.len())
                    .ok_or_else(corrupt)?
                    .copy_from_slice(bytes);
                continue;
            }
            let n_rows = r.end - r.start;
            let row_bytes = bytes.len() / n_rows.max(1);
            if row_bytes * n_rows != bytes.len() {
                return Err(corrupt());
            }
            let col_at = if rank == 2 {
                col_bytes(c.start - want_cols.start)
            } else {
                0
            };
            for (i, row) in bytes.chunks_exact(row_bytes.max(1)).enumerate() {
                let at = (r.start - want_rows.start + i) * out_row_bytes + col_at;
                out.get_mut(at..at + row_bytes)
                    .ok_or_else(corrupt)?
                    .copy_from_slice(row);
            }
        }
        if filled != total {
            return Err(Error::BadIndex {
                path: self.index.clone(),
                reason: format!(
                    "tensor '{name}': its slices hold {filled} of the {total} bytes of {slice}"
                ),
            });
        }
        let tensor = Tensor::from_bytes(t.name.clone(), t.dtype, want.shape, out)?;
        match device {
            Device::Cpu => Ok(tensor),
            _ => tensor.to_device(device),
        }
    }

    /// Read every slice and check it against the sha256 the index records (reads every byte;
    /// not counted in [`ShardedCheckpoint::bytes_read`]). Errors: [`Error::CorruptCheckpoint`]
    /// naming the file and the slice.
    pub fn verify(&self) -> Result<()> {
        for t in &self.tensors {
            for s in &t.slices {
                let file = &self.files[s.file];
                let info = file.tensor(&s.name)?;
                let found = Sha256Hash::of(file.bytes(info));
                if found != s.sha256 {
                    return Err(Error::CorruptCheckpoint {
                        path: file.path().to_path_buf(),
                        reason: format!(
                            "'{}' ({} of '{}') hashes to {found}, the index records {}",
                            s.name, s.slice, t.name, s.sha256
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

fn usize_len(index: &Path, tensor: &str, len: u64) -> Result<usize> {
    usize::try_from(len).map_err(|_| Error::BadIndex {
        path: index.to_path_buf(),
        reason: format!("tensor '{tensor}': {len} bytes do not fit in memory"),
    })
}

// ---- the save across ranks -------------------------------------------------------------------

/// Save every rank's `parts` into `dir` (shared by all ranks) as one checkpoint; collective:
/// every rank calls it. Rank 0 picks the generation; every rank writes its file; rank 0 writes
/// the index only after every rank reported success, then removes older generations. When any
/// rank fails, every rank returns the same [`Error::RankFailed`], rank 0 removes the new
/// generation's files, and the previous checkpoint stays as it was. Returns the generation.
pub fn save(comm: &dyn Comm, dir: &Path, parts: &[Part<'_>]) -> Result<u64> {
    let (rank, world) = (comm.rank(), comm.size());
    let mut generation = Vec::new();
    let picked = if rank == 0 {
        next_generation(dir).map(|g| generation = g.to_le_bytes().to_vec())
    } else {
        Ok(())
    };
    comm.agree("choosing the checkpoint generation", picked)?;
    comm.broadcast(0, &mut generation)?;
    let generation = <[u8; 8]>::try_from(&generation[..])
        .map(u64::from_le_bytes)
        .map_err(|_| Error::Distributed {
            during: "choosing the checkpoint generation".into(),
            reason: format!("rank 0 sent {} bytes", generation.len()),
        })?;
    let outcome = (|| {
        let report = match write_rank(dir, generation, rank, world, parts) {
            Ok(r) => {
                comm.agree("writing checkpoint slices", Ok(()))?;
                r
            }
            Err(e) => return comm.agree("writing checkpoint slices", Err(e)),
        };
        let gathered = comm.all_gather(&report.to_json()?)?;
        let committed = if rank == 0 {
            gathered
                .iter()
                .map(|b| RankReport::from_json(b))
                .collect::<Result<Vec<_>>>()
                .and_then(|reports| commit(dir, generation, &reports))
        } else {
            Ok(())
        };
        comm.agree("committing the checkpoint index", committed)
    })();
    if outcome.is_err() && rank == 0 {
        // The error every rank returns is the one that matters; a failed clean-up leaves only
        // files that no index names, which the next save removes.
        let _ = discard(dir, generation);
    }
    outcome.map(|()| generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: impl Iterator<Item = f32>) -> Vec<u8> {
        v.flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn generation_is_read_from_rank_file_names_only() {
        assert_eq!(generation_of(&rank_file_name(7, 1, 4)), Some(7));
        assert_eq!(generation_of("gen-00000007-rank-1-of-x.safetensors"), None);
        assert_eq!(generation_of("model.safetensors"), None);
        let temp = ".gen-00000007-rank-00001-of-00004.safetensors.tmp-1";
        assert_eq!(generation_of(temp), None);
        assert_eq!(generation_in_dir(temp), Some(7));
    }

    #[test]
    fn quantized_slices_are_stored_as_bytes_per_row() {
        // Q4_0: 32 elements in 18 bytes.
        assert_eq!(
            stored_form(DType::Q4_0, &[3, 64]),
            Some((DType::U8, vec![3, 36]))
        );
        assert_eq!(
            stored_form(DType::F32, &[3, 5]),
            Some((DType::F32, vec![3, 5]))
        );
        assert_eq!(
            stored_slice(DType::Q4_0, 2, &Slice::Cols(32..64)),
            Slice::Cols(18..36)
        );
        assert_eq!(
            stored_slice(DType::Q4_0, 1, &Slice::Rows(64..96)),
            Slice::Rows(36..54)
        );
    }

    #[test]
    fn replicated_slices_are_indexed_once_and_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let v = f32_bytes([1.0, 2.0, 3.0].into_iter());
        let w = f32_bytes([1.0, 2.0, 4.0].into_iter());
        let save = |g: u64, second: &Vec<u8>| {
            let reports: Vec<RankReport> = [&v, second]
                .iter()
                .enumerate()
                .map(|(rank, bytes)| {
                    let part = Part::new("v", DType::F32, &[3], Slice::Whole, *bytes);
                    write_rank(dir.path(), g, rank, 2, &[part]).unwrap()
                })
                .collect();
            commit(dir.path(), g, &reports)
        };
        let err = save(1, &w).unwrap_err();
        assert!(
            matches!(&err, Error::BadIndex { reason, .. } if reason.contains("different bytes")),
            "{err}"
        );
        assert!(!dir.path().join(INDEX_NAME).exists());
        save(2, &v).unwrap();
        let ck = ShardedCheckpoint::open(dir.path()).unwrap();
        let t = ck.tensor("v").unwrap();
        assert_eq!(t.slices.len(), 1);
        assert_eq!(
            ck.files()[t.slices[0].file].path(),
            dir.path().join(rank_file_name(2, 0, 2))
        );
        assert_eq!(
            ck.load(&Device::Cpu, "v", &Slice::Whole)
                .unwrap()
                .to_bytes()
                .unwrap(),
            v
        );
    }

    #[test]
    fn commit_refuses_a_file_that_is_not_what_its_rank_reported() {
        let dir = tempfile::tempdir().unwrap();
        let v = f32_bytes([1.0].into_iter());
        let mut report = write_rank(
            dir.path(),
            1,
            0,
            1,
            &[Part::new("v", DType::F32, &[1], Slice::Whole, &v)],
        )
        .unwrap();
        report.bytes += 1;
        let err = commit(dir.path(), 1, &[report]).unwrap_err();
        assert!(matches!(err, Error::CorruptCheckpoint { .. }), "{err}");
        assert!(!dir.path().join(INDEX_NAME).exists());
    }

    #[test]
    fn columns_saved_by_two_ranks_load_as_rows_and_columns() {
        let dir = tempfile::tempdir().unwrap();
        // A 3 x 4 matrix, element (i, j) = 10 i + j.
        let value = |i: usize, j: usize| (10 * i + j) as f32;
        let cols = |c: Range<usize>| {
            f32_bytes((0..3).flat_map(move |i| c.clone().map(move |j| value(i, j))))
        };
        let (left, right) = (cols(0..1), cols(1..4));
        let g = next_generation(dir.path()).unwrap();
        let r0 = write_rank(
            dir.path(),
            g,
            0,
            2,
            &[Part::new(
                "m",
                DType::F32,
                &[3, 4],
                Slice::Cols(0..1),
                &left,
            )],
        )
        .unwrap();
        let r1 = write_rank(
            dir.path(),
            g,
            1,
            2,
            &[Part::new(
                "m",
                DType::F32,
                &[3, 4],
                Slice::Cols(1..4),
                &right,
            )],
        )
        .unwrap();
        commit(dir.path(), g, &[r1, r0]).unwrap();
        let ck = ShardedCheckpoint::open(dir.path()).unwrap();
        let rows = ck.load(&Device::Cpu, "m", &Slice::Rows(1..3)).unwrap();
        assert_eq!(rows.shape().dims(), &[2, 4]);
        let expected = f32_bytes((1..3).flat_map(|i| (0..4).map(move |j| value(i, j))));
        assert_eq!(rows.to_bytes().unwrap(), expected);
        assert_eq!(ck.bytes_read(), 2 * 4 * 4);
        let mid = ck.load(&Device::Cpu, "m", &Slice::Cols(0..2)).unwrap();
        assert_eq!(mid.to_bytes().unwrap(), cols(0..2));
        ck.verify().unwrap();
    }
}
