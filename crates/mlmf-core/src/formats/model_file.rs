//! [`ModelFile`]: one model on disk, memory-mapped, with its tensor index and metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{detect, index, safetensors, Format, Metadata, Parsed, TensorInfo};
use crate::error::{Error, Result};

/// What [`ModelFile::open`] looks for in a directory, in this order (Hugging Face's names, then
/// CTranslate2's, the name faster-whisper's model directories use).
const DIRECTORY_MODELS: [&str; 3] = [
    "model.safetensors.index.json",
    "model.safetensors",
    "model.bin",
];

/// A model file (or a sharded set of them) opened for reading. Tensor bytes are views into the
/// memory map: nothing is copied until a tensor is loaded.
pub struct ModelFile {
    path: PathBuf,
    format: Format,
    version: Option<u64>,
    files: Vec<MappedFile>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    metadata: Metadata,
}

struct MappedFile {
    path: PathBuf,
    map: Mmap,
}

impl MappedFile {
    fn open(path: &Path) -> Result<MappedFile> {
        // A FIFO would block here forever, a directory is not a model: refused before opening.
        let file = crate::files::open_regular(path)?;
        // SAFETY: the map is read-only. Like every mmap-based loader (safetensors, llama.cpp),
        // we rely on nobody truncating the file while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            map,
        })
    }
}

impl ModelFile {
    /// Open a safetensors, GGUF, PyTorch or CTranslate2 file, a `model.safetensors.index.json`,
    /// or a directory holding one of `model.safetensors.index.json` / `model.safetensors` /
    /// `model.bin`.
    /// The format is found from the first bytes, never from the file name.
    pub fn open(path: impl AsRef<Path>) -> Result<ModelFile> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = DIRECTORY_MODELS
                .iter()
                .map(|name| path.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| Error::NoModelInDirectory {
                    dir: path.clone(),
                    looked_for: DIRECTORY_MODELS.to_vec(),
                })?;
        }
        let file = MappedFile::open(&path)?;
        let head = &file.map[..file.map.len().min(16)];
        let format = detect(head).ok_or_else(|| Error::UnknownFormat {
            path: path.clone(),
            magic: head.to_vec(),
        })?;
        if format == Format::ShardedSafetensors {
            return Self::open_sharded(path, file);
        }
        let parsed = super::parse(&file.map, &path)?;
        Self::build(path, vec![file], parsed)
    }

    fn open_sharded(path: PathBuf, index_file: MappedFile) -> Result<ModelFile> {
        let idx = index::parse(&index_file.map, &path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let shard_names = idx.shards();
        let mut files = Vec::with_capacity(shard_names.len());
        let mut tensors = Vec::new();
        for (i, shard) in shard_names.iter().enumerate() {
            let shard_path = dir.join(shard);
            let file = MappedFile::open(&shard_path)?;
            let parsed = safetensors::parse(&file.map, &shard_path)?;
            for mut t in parsed.tensors {
                match idx.weight_map.get(&t.name) {
                    Some(listed) if listed == shard => {}
                    _ => {
                        return Err(Error::BadIndex {
                            path: path.clone(),
                            reason: format!(
                            "tensor '{}' is in {shard} but the weight_map does not place it there",
                            t.name
                        ),
                        })
                    }
                }
                t.file = i;
                tensors.push(t);
            }
            files.push(file);
        }
        if tensors.len() != idx.weight_map.len() {
            let found: std::collections::HashSet<&str> =
                tensors.iter().map(|t| t.name.as_str()).collect();
            let missing = idx.weight_map.keys().find(|k| !found.contains(k.as_str()));
            return Err(Error::BadIndex {
                path: path.clone(),
                reason: format!(
                    "weight_map lists '{}', which no shard holds",
                    missing.map_or("?", |s| s)
                ),
            });
        }
        let parsed = Parsed {
            format: Format::ShardedSafetensors,
            version: None,
            tensors,
            metadata: idx.metadata,
        };
        Self::build(path, files, parsed)
    }

    fn build(path: PathBuf, files: Vec<MappedFile>, parsed: Parsed) -> Result<ModelFile> {
        let mut by_name = HashMap::with_capacity(parsed.tensors.len());
        for (i, t) in parsed.tensors.iter().enumerate() {
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(Error::DuplicateTensor {
                    path,
                    tensor: t.name.clone(),
                });
            }
            // Parsers check ranges; this makes `bytes` (and gathering a strided view) infallible
            // even if one forgot.
            let len = files[t.file].map.len() as u64;
            if t.range.start > t.range.end || t.range.end > len || !view_fits(t) {
                return Err(Error::TensorOutOfBounds {
                    path: files[t.file].path.clone(),
                    tensor: t.name.clone(),
                    start: t.range.start,
                    end: t.range.end,
                    len,
                });
            }
        }
        if parsed.format == Format::CTranslate2 {
            // An alias finds its target (the parser checked that it names a variable or an
            // earlier alias, and clashes with no name).
            for (alias, target) in super::ctranslate2::aliases(&parsed.metadata) {
                if let Some(&i) = by_name.get(target) {
                    by_name.entry(alias.to_string()).or_insert(i);
                }
            }
        }
        Ok(ModelFile {
            path,
            format: parsed.format,
            version: parsed.version,
            files,
            tensors: parsed.tensors,
            by_name,
            metadata: parsed.metadata,
        })
    }

    /// The path that was opened (the index file for a sharded checkpoint).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The container's version (GGUF 2 or 3), where it has one.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// Every tensor, in the order of the file (by offset for safetensors, as listed for GGUF).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`; for a CTranslate2 alias, its target (whose name it keeps).
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::TensorNotFound {
                path: self.path.clone(),
                tensor: name.to_string(),
            })
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The tensor's bytes as stored, borrowed from the memory map (zero-copy). For a strided
    /// PyTorch view this is the span its elements lie in, gaps included; see
    /// [`TensorInfo::strides`], and [`super::Source::of`] for the tensor's own bytes in
    /// row-major order.
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let map = &self.files[info.file].map;
        &map[info.range.start as usize..info.range.end as usize]
    }

    /// Path of the file that holds `info`'s bytes (a shard, for sharded checkpoints).
    pub fn file_of(&self, info: &TensorInfo) -> &Path {
        &self.files[info.file].path
    }

    /// Total bytes of tensor data: the sum of [`TensorInfo::byte_len`], the tensors' own bytes
    /// (a strided view counts its elements, not its span), saturating at `u64::MAX`.
    pub fn data_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |n, t| n.saturating_add(t.byte_len()))
    }
}

/// For a strided view: its farthest element lies inside its byte range.
fn view_fits(t: &TensorInfo) -> bool {
    let Some(strides) = &t.strides else {
        return true;
    };
    if strides.len() != t.shape.rank() || t.shape.elem_count() == 0 {
        return strides.len() == t.shape.rank();
    }
    let last = t
        .shape
        .dims()
        .iter()
        .zip(strides)
        .try_fold(0u64, |acc, (&d, &s)| {
            (d as u64 - 1)
                .checked_mul(s as u64)
                .and_then(|x| acc.checked_add(x))
        });
    let elem = t.dtype.block_bytes();
    match last
        .and_then(|l| l.checked_add(1))
        .and_then(|n| n.checked_mul(elem))
    {
        Some(end) => {
            end <= t.span_len()
                && t.dtype.block_elems() == 1
                && t.dtype.byte_len(t.shape.elem_count()).is_some()
        }
        None => false,
    }
}

impl std::fmt::Debug for ModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFile")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}
