//! Writing safetensors files, streamed: the header is computed from the tensor list first (every
//! size is known up front), then each tensor's bytes go from their source (a memory map, a GPU
//! readback, a quantizer) straight into an [`AtomicFile`].
//!
//! The layout is the one [`crate::formats::safetensors`] and the `safetensors` crate read:
//!
//! ```text
//! u64 header length N   N bytes of JSON, padded with spaces to a multiple of 8
//! the tensors' bytes, back to back, in the order they were added
//! ```
//!
//! The JSON object holds `__metadata__` (string to string, written only when not empty) and one
//! entry per tensor, `{"dtype", "shape", "data_offsets": [begin, end]}`, offsets relative to the
//! end of the header. The padding is the `safetensors` crate's: it keeps every tensor of the
//! usual dtypes aligned to its element size when the data section is mapped.
//!
//! With [`SafetensorsWriter::provenance`], `__metadata__` also gets a [`crate::provenance`]
//! record under `mlmf.provenance`, whose content hash is computed from the bytes as they stream
//! and patched into the header (fixed-width hex over a placeholder) before the file is committed.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::{AtomicFile, TensorSource};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::provenance::{self, ContentHasher, Provenance, TensorDigest};

/// The index file of a sharded checkpoint, as `transformers` names it.
pub const INDEX_NAME: &str = "model.safetensors.index.json";

/// A safetensors file to be written: metadata, then tensors in the order they were added.
///
/// ```no_run
/// use mlmf::checkpoint::{SafetensorsWriter, TensorSource};
/// use mlmf::ModelFile;
/// let file = ModelFile::open("in.safetensors")?;
/// let mut writer = SafetensorsWriter::new(Default::default());
/// for t in file.tensors() {
///     writer.add_tensor(&t.name, t.dtype, t.shape.dims(), TensorSource::File(&file, t));
/// }
/// writer.write("out.safetensors")?;
/// # Ok::<(), mlmf::Error>(())
/// ```
pub struct SafetensorsWriter<'a> {
    metadata: BTreeMap<String, String>,
    tensors: Vec<Entry<'a>>,
    provenance: Option<Provenance>,
}

struct Entry<'a> {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    source: TensorSource<'a>,
}

impl<'a> SafetensorsWriter<'a> {
    /// A writer whose file carries `metadata` as its `__metadata__` (written as given).
    pub fn new(metadata: BTreeMap<String, String>) -> SafetensorsWriter<'a> {
        SafetensorsWriter {
            metadata,
            tensors: Vec::new(),
            provenance: None,
        }
    }

    /// Record provenance: at [`SafetensorsWriter::write`], `__metadata__["mlmf.provenance"]`
    /// gets the record of `provenance` with the written tensors' content hash, the tool and the
    /// time (replacing any record the metadata carried).
    pub fn provenance(&mut self, provenance: Provenance) -> &mut Self {
        self.provenance = Some(provenance);
        self
    }

    /// Add a tensor of `dtype` with `shape` (slowest dimension first). Nothing is checked or read
    /// until [`SafetensorsWriter::write`].
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

    /// Write the file to `path`, replacing it atomically. Every check (names, dtypes, shapes,
    /// byte lengths) runs before the file is created; a source that produces a different number
    /// of bytes than it announced fails the write, and the previous file at `path` stays.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        self.write_file(path.as_ref(), None)
    }

    /// [`SafetensorsWriter::write`]; when `whole` is given, each tensor's digest also goes into
    /// it (a sharded save hashes the whole checkpoint across its shards).
    fn write_file(&self, path: &Path, mut whole: Option<&mut ContentHasher>) -> Result<()> {
        let record = self.provenance.as_ref().map(Provenance::placeholder_text);
        let metadata = match &record {
            None => Cow::Borrowed(&self.metadata),
            Some(text) => {
                let mut m = self.metadata.clone();
                m.insert(provenance::KEY.to_string(), text.clone());
                Cow::Owned(m)
            }
        };
        let (header, lengths) = self.header(path, &metadata)?;
        // Where the hash's hex digits go: 8 bytes of header length, then the header.
        let hash_at = match record {
            Some(_) => Some(
                8 + hash_offset(&header).ok_or_else(|| Error::BadHeader {
                    path: path.to_path_buf(),
                    offset: 8,
                    reason: "the provenance record's placeholder is not in the header".into(),
                })?,
            ),
            None => None,
        };
        let mut file = AtomicFile::create(path)?;
        file.write_all(&(header.len() as u64).to_le_bytes())?;
        file.write_all(&header)?;
        let mut hasher = ContentHasher::new();
        for (entry, &len) in self.tensors.iter().zip(&lengths) {
            if hash_at.is_none() && whole.is_none() {
                entry
                    .source
                    .stream_exact(path, &entry.name, len, &mut |c| file.write_all(c))?;
                continue;
            }
            let mut digest = TensorDigest::new();
            entry
                .source
                .stream_exact(path, &entry.name, len, &mut |c| {
                    digest.update(c);
                    file.write_all(c)
                })?;
            let digest = digest.finish();
            hasher.add(&entry.name, entry.dtype, &entry.shape, digest);
            if let Some(w) = whole.as_deref_mut() {
                w.add(&entry.name, entry.dtype, &entry.shape, digest);
            }
        }
        if let Some(at) = hash_at {
            file.write_at(at as u64, hasher.finish().hex().as_bytes())?;
        }
        file.commit()
    }

    /// Write the tensors as a Hugging Face sharded checkpoint in the directory `dir`:
    /// `model-00001-of-0000N.safetensors` shards of at most `max_shard_bytes` of tensor data
    /// each (a larger tensor gets a shard of its own, as `save_pretrained` does), in the order
    /// the tensors were added, every shard carrying the metadata, then
    /// `model.safetensors.index.json` (`metadata.total_size` and `weight_map`), which
    /// [`crate::ModelFile::open`] and `transformers` read. Every file is written atomically and
    /// the index last. `dir` is created if missing; a directory that already holds an index is
    /// refused, because replacing shards one by one could mix two checkpoints. With
    /// [`SafetensorsWriter::provenance`], each shard records its own tensors and the index's
    /// `metadata` records the whole checkpoint. Returns the index's path.
    pub fn write_sharded(&self, dir: impl AsRef<Path>, max_shard_bytes: u64) -> Result<PathBuf> {
        let dir = dir.as_ref();
        let index_path = dir.join(INDEX_NAME);
        if index_path.exists() {
            return Err(Error::OutputExists { path: index_path });
        }
        // Check everything once, before any file is created.
        let (_, lengths) = self.header(&index_path, &self.metadata)?;
        let mut shards: Vec<Vec<usize>> = Vec::new();
        let mut filled = 0u64;
        for (i, &len) in lengths.iter().enumerate() {
            match shards.last_mut() {
                Some(shard) if filled + len <= max_shard_bytes => shard.push(i),
                _ => {
                    shards.push(vec![i]);
                    filled = 0;
                }
            }
            filled += len;
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let count = shards.len();
        let mut weight_map = serde_json::Map::new();
        let mut whole = ContentHasher::new();
        for (n, shard) in shards.iter().enumerate() {
            let name = format!("model-{:05}-of-{count:05}.safetensors", n + 1);
            let mut writer = SafetensorsWriter::new(self.metadata.clone());
            // Each shard records its own tensors; the index records the whole checkpoint.
            writer.provenance = self.provenance.clone();
            for &i in shard {
                let e = &self.tensors[i];
                writer.add_tensor(e.name.clone(), e.dtype, &e.shape, e.source);
                weight_map.insert(e.name.clone(), name.clone().into());
            }
            let hasher = self.provenance.is_some().then_some(&mut whole);
            writer.write_file(&dir.join(&name), hasher)?;
        }
        let total: u64 = lengths.iter().sum();
        let mut metadata = serde_json::json!({"total_size": total});
        if let Some(p) = &self.provenance {
            let record =
                serde_json::to_string(&p.record(whole.finish())).map_err(|e| Error::BadIndex {
                    path: index_path.clone(),
                    reason: e.to_string(),
                })?;
            metadata[provenance::KEY] = record.into();
        }
        let index = serde_json::json!({
            "metadata": metadata,
            "weight_map": weight_map,
        });
        let mut file = AtomicFile::create(&index_path)?;
        let text = serde_json::to_string_pretty(&index).map_err(|e| Error::BadIndex {
            path: index_path.clone(),
            reason: e.to_string(),
        })?;
        file.write_all(text.as_bytes())?;
        file.commit()?;
        Ok(index_path)
    }

    /// The padded JSON header and each tensor's byte length, after checking every tensor.
    fn header(
        &self,
        path: &Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(Vec<u8>, Vec<u64>)> {
        let mut object = serde_json::Map::new();
        if !metadata.is_empty() {
            object.insert("__metadata__".into(), serde_json::json!(metadata));
        }
        let mut names = HashSet::with_capacity(self.tensors.len());
        let mut lengths = Vec::with_capacity(self.tensors.len());
        let mut offset = 0u64;
        for entry in &self.tensors {
            let name = &entry.name;
            if name == "__metadata__" {
                return Err(Error::BadTensorName {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    reason: "the name is reserved for the metadata".into(),
                });
            }
            if !names.insert(name.as_str()) {
                return Err(Error::DuplicateTensor {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                });
            }
            let dtype_name =
                entry
                    .dtype
                    .info()
                    .safetensors
                    .ok_or_else(|| Error::UnsupportedDType {
                        path: path.to_path_buf(),
                        tensor: name.clone(),
                        dtype: entry.dtype.name().to_string(),
                        format: "safetensors",
                    })?;
            let overflow = || Error::ShapeOverflow {
                path: path.to_path_buf(),
                tensor: name.clone(),
                shape: entry.shape.iter().map(|&d| d as u64).collect(),
            };
            let elems = entry
                .shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
                .ok_or_else(overflow)?;
            let len = entry.dtype.byte_len(elems).ok_or_else(overflow)?;
            let found = entry.source.byte_len();
            if found != len {
                return Err(Error::ByteLengthMismatch {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    expected: len,
                    found,
                });
            }
            let end = offset.checked_add(len).ok_or_else(overflow)?;
            object.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": dtype_name,
                    "shape": entry.shape,
                    "data_offsets": [offset, end],
                }),
            );
            lengths.push(len);
            offset = end;
        }
        let mut header = serde_json::to_vec(&object).map_err(|e| Error::BadHeader {
            path: path.to_path_buf(),
            offset: 8,
            reason: e.to_string(),
        })?;
        header.resize(header.len().next_multiple_of(8), b' ');
        Ok((header, lengths))
    }
}

/// Offset in `header` of the provenance record's hash digits. The record is a JSON string value
/// there, so its quotes are escaped; `"mlmf.provenance":"` with bare quotes can only be the
/// key itself (a string's closing quote is never followed by a letter, and a tensor's entry is
/// an object, not a string).
fn hash_offset(header: &[u8]) -> Option<usize> {
    let key = format!("\"{}\":\"", provenance::KEY);
    let value = find(header, key.as_bytes())? + key.len();
    let escaped = serde_json::to_string(provenance::HASH_PREFIX).ok()?;
    let prefix = &escaped.as_bytes()[1..escaped.len() - 1];
    let at = value + prefix.len();
    let digits = header.get(value..at + 64)?;
    (digits[..prefix.len()] == *prefix
        && digits[prefix.len()..] == *provenance::PLACEHOLDER_HEX.as_bytes())
    .then_some(at)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::ModelFile;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn written_file_reads_back_with_metadata_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        let a = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = vec![7u8, 8, 9];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let mut w = SafetensorsWriter::new(meta);
        w.add_tensor("a", DType::F32, &[2, 3], &a)
            .add_tensor("b", DType::U8, &[3], &b);
        w.write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(n % 8, 0);
        let file = ModelFile::open(&path).unwrap();
        assert_eq!(file.metadata().get("format").unwrap().as_str(), Some("pt"));
        let ta = file.tensor("a").unwrap();
        assert_eq!(ta.shape.dims(), &[2, 3]);
        assert_eq!(file.bytes(ta), &a[..]);
        assert_eq!(file.bytes(file.tensor("b").unwrap()), &b[..]);
    }

    #[test]
    fn sharded_checkpoint_reads_back_through_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sharded");
        let values: Vec<Vec<u8>> = (0..5)
            .map(|i| f32_bytes(&vec![i as f32; 10 + i * 4]))
            .collect();
        let mut w = SafetensorsWriter::new(BTreeMap::new());
        for (i, v) in values.iter().enumerate() {
            w.add_tensor(format!("t{i}"), DType::F32, &[v.len() / 4], v);
        }
        // 100 bytes per shard: t0 (40) + t1 (56); t2 (72); t3 (88); t4 (104, alone and over).
        let index = w.write_sharded(&out, 100).unwrap();
        let text = std::fs::read_to_string(&index).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["metadata"]["total_size"], 40 + 56 + 72 + 88 + 104);
        assert_eq!(json["weight_map"]["t1"], "model-00001-of-00004.safetensors");
        assert_eq!(json["weight_map"]["t4"], "model-00004-of-00004.safetensors");
        let file = ModelFile::open(&out).unwrap();
        for (i, v) in values.iter().enumerate() {
            let t = file.tensor(&format!("t{i}")).unwrap();
            assert_eq!(file.bytes(t), &v[..]);
        }
        assert!(w.write_sharded(&out, 100).is_err());
    }

    #[test]
    fn bad_tensors_fail_before_the_file_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        std::fs::write(&path, b"previous").unwrap();
        let four = f32_bytes(&[1.0]);
        let cases: Vec<(&str, DType, Vec<usize>, &[u8])> = vec![
            ("short", DType::F32, vec![2], &four),
            ("__metadata__", DType::F32, vec![1], &four),
            ("q", DType::Q4_0, vec![32], &[0u8; 18]),
        ];
        for (name, dtype, shape, bytes) in cases {
            let mut w = SafetensorsWriter::new(BTreeMap::new());
            w.add_tensor(name, dtype, &shape, bytes);
            let err = w.write(&path).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
            assert_eq!(std::fs::read(&path).unwrap(), b"previous");
        }
        let mut w = SafetensorsWriter::new(BTreeMap::new());
        w.add_tensor("x", DType::F32, &[1], &four)
            .add_tensor("x", DType::F32, &[1], &four);
        assert!(matches!(w.write(&path), Err(Error::DuplicateTensor { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"previous");
    }
}
