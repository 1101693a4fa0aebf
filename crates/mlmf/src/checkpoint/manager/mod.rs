//! A directory of training checkpoints, one subdirectory per step, saved so that a crash at any
//! point leaves every earlier checkpoint intact and never leaves a half-written one under a
//! checkpoint's name.
//!
//! ```text
//! DIR/
//!   .lock                     held (File::try_lock) by the one CheckpointManager writing here
//!   latest                    "step-00002000\n": the newest completed save, replaced atomically
//!   step-00001000/
//!     model.safetensors
//!     manifest.json           files with sizes and sha256, step, time, metadata, metrics
//!   step-00002000/ ...
//!   .mlmf-tmp-save-step-00003000-<pid>/     a save in progress (or interrupted)
//!   .mlmf-tmp-delete-step-00001000-<pid>/   a checkpoint being deleted by prune or remove
//! ```
//!
//! A save writes everything into a temporary directory beside the final one, fsyncs the files and
//! the directory, renames it to `step-NNNNNNNN`, fsyncs `DIR`, then replaces `latest`. The rename
//! is the commit point: a `step-*` directory only ever appears complete. Deleting goes the other
//! way: rename to a temporary name first, then remove, so no half-deleted `step-*` exists either.
//! Temporary entries are ours by name (`.mlmf-tmp-*` directories, `.latest.tmp-*` files) and are
//! removed by [`CheckpointManager::open`] and [`CheckpointManager::prune`]: the lock guarantees
//! no save of ours is running, so any that exist were interrupted.
//!
//! Step names are zero-padded to 8 digits so that `ls` sorts them; larger steps get more digits
//! and the manager itself always orders by the parsed number.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{AtomicFile, SafetensorsWriter, TensorSource};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::Tensor;

/// The model file of every checkpoint, written by [`SafetensorsWriter`].
pub const MODEL_FILE: &str = "model.safetensors";
/// The manifest of every checkpoint.
pub const MANIFEST_FILE: &str = "manifest.json";
const LATEST_FILE: &str = "latest";
const LOCK_FILE: &str = ".lock";
const TEMP_PREFIX: &str = ".mlmf-tmp-";
/// [`AtomicFile`]'s temporary name for `latest`.
const LATEST_TEMP_PREFIX: &str = ".latest.tmp-";
const MANIFEST_FORMAT: &str = "mlmf-checkpoint";
const MANIFEST_VERSION: u64 = 1;
/// A manifest is a few KiB; anything far larger is not ours and is not read into memory.
const MANIFEST_MAX_BYTES: u64 = 16 << 20;

/// One tensor handed to [`CheckpointManager::save`]: built from a `&Tensor` or from a tuple
/// `(name, dtype, shape, source)`.
pub struct TensorEntry<'a> {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub source: TensorSource<'a>,
}

impl<'a> From<&'a Tensor> for TensorEntry<'a> {
    fn from(t: &'a Tensor) -> Self {
        TensorEntry {
            name: t.name().to_string(),
            dtype: t.dtype(),
            shape: t.shape().dims().to_vec(),
            source: TensorSource::Tensor(t),
        }
    }
}

/// So that a `&[&Tensor]` can be passed as it is.
impl<'a> From<&&'a Tensor> for TensorEntry<'a> {
    fn from(t: &&'a Tensor) -> Self {
        TensorEntry::from(*t)
    }
}

impl<'a, N: Into<String>> From<(N, DType, &[usize], TensorSource<'a>)> for TensorEntry<'a> {
    fn from((name, dtype, shape, source): (N, DType, &[usize], TensorSource<'a>)) -> Self {
        TensorEntry {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            source,
        }
    }
}

/// One file of a checkpoint as its manifest records it.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestFile {
    /// A plain file name inside the checkpoint directory.
    pub name: String,
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// The contents of a checkpoint's `manifest.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub step: u64,
    /// When the save was made, RFC 3339 in UTC to the second (`2025-11-22T09:29:00Z`).
    pub time: String,
    pub files: Vec<ManifestFile>,
    /// The caller's strings, also written as the model file's safetensors `__metadata__`.
    pub metadata: BTreeMap<String, String>,
    /// Non-finite values are stored as JSON `null` and read back as NaN.
    pub metrics: BTreeMap<String, f64>,
}

/// A checkpoint that passed verification.
#[derive(Clone, Debug)]
pub struct CheckpointInfo {
    pub step: u64,
    /// The checkpoint's directory.
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl CheckpointInfo {
    /// The path of the checkpoint's model file.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }
}

/// How much [`CheckpointManager::list`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// The manifest parses and every file has its recorded size: no file is read.
    Sizes,
    /// Sizes and the sha256 of every file: reads every byte.
    Hashes,
}

/// What a check of one checkpoint found.
#[derive(Clone, Debug)]
pub enum CheckpointStatus {
    Valid(Manifest),
    Corrupt { reason: String },
}

/// One `step-*` directory as [`CheckpointManager::list`] found it.
#[derive(Clone, Debug)]
pub struct CheckpointEntry {
    pub step: u64,
    pub dir: PathBuf,
    pub status: CheckpointStatus,
}

impl CheckpointEntry {
    pub fn is_valid(&self) -> bool {
        matches!(self.status, CheckpointStatus::Valid(_))
    }
}

/// What [`CheckpointManager::resume`] found.
#[derive(Debug)]
pub struct Resume {
    /// The newest checkpoint whose files all match the manifest (sizes and sha256); `None` when
    /// there is none.
    pub checkpoint: Option<CheckpointInfo>,
    /// Newer checkpoints that were skipped, each with the reason: the warnings to show a user.
    pub skipped: Vec<CheckpointEntry>,
}

/// Which checkpoints [`CheckpointManager::prune`] keeps. A checkpoint is kept if any rule keeps
/// it; a rule that is `None` keeps nothing. Whatever the rules, the newest valid checkpoint is
/// kept, and so is every (corrupt) checkpoint newer than it, for inspection.
#[derive(Clone, Debug, Default)]
pub struct Retention {
    /// The last `n` checkpoints that pass the size check.
    pub keep_last: Option<usize>,
    /// Every checkpoint whose step is a multiple of `k` (`k` = 0 keeps none).
    pub keep_every: Option<u64>,
    /// `(metric, n, higher_is_better)`: the `n` best checkpoints by that metric; checkpoints
    /// without it, or with a non-finite value, are not ranked; ties go to the newer step.
    pub keep_best: Option<(String, usize, bool)>,
}

/// What [`CheckpointManager::prune`] did.
#[derive(Debug, Default)]
pub struct PruneReport {
    pub kept: Vec<u64>,
    pub removed: Vec<u64>,
    /// Checkpoints found corrupt (removed or, when newer than the newest valid one, kept).
    pub corrupt: Vec<CheckpointEntry>,
    /// Leftovers of interrupted saves and deletes that were removed.
    pub cleaned: Vec<PathBuf>,
}

/// A directory of checkpoints by step; see the module documentation for the layout and the
/// order of writes.
///
/// ```no_run
/// use std::collections::BTreeMap;
/// use mlmf::checkpoint::{CheckpointManager, Retention};
/// # let weights: Vec<mlmf::Tensor> = Vec::new();
/// let mut ckpt = CheckpointManager::open("runs/a")?;
/// let resume = ckpt.resume()?;
/// for skipped in &resume.skipped {
///     eprintln!("skipping {}: {:?}", skipped.dir.display(), skipped.status);
/// }
/// let metrics = BTreeMap::from([("loss".to_string(), 0.25)]);
/// ckpt.save(1000, &weights, &BTreeMap::new(), &metrics)?;
/// ckpt.prune(&Retention { keep_last: Some(3), ..Default::default() })?;
/// # Ok::<(), mlmf::Error>(())
/// ```
pub struct CheckpointManager {
    dir: PathBuf,
    /// Held while the manager lives; `None` for a read-only manager. Closing the file (on drop,
    /// or when the process dies) releases the lock.
    lock: Option<File>,
    cleaned: Vec<PathBuf>,
}

impl CheckpointManager {
    /// Open (creating it if needed) `dir` for writing. Refused with
    /// [`Error::CheckpointLocked`] while another manager holds it. Removes leftovers of
    /// interrupted saves ([`CheckpointManager::cleaned`] lists them) and points `latest` at the
    /// newest checkpoint if an interrupted save left it behind.
    pub fn open(dir: impl AsRef<Path>) -> Result<CheckpointManager> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            if let Some(parent) = dir.parent() {
                sync_dir(if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                })?;
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        // Never truncated or removed: removing a lock file lets two writers lock two files.
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::CheckpointLocked { dir }),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        let mut manager = CheckpointManager {
            dir,
            lock: Some(lock),
            cleaned: Vec::new(),
        };
        manager.cleaned = manager.clean_leftovers()?;
        manager.repair_latest()?;
        Ok(manager)
    }

    /// Open `dir` for reading only: no lock, nothing created or cleaned, so it can watch a
    /// directory another process is writing. Saves in progress there are invisible (they are
    /// not `step-*` directories yet).
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<CheckpointManager> {
        let dir = dir.as_ref().to_path_buf();
        fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(CheckpointManager {
            dir,
            lock: None,
            cleaned: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Leftovers of interrupted saves or deletes that [`CheckpointManager::open`] removed.
    pub fn cleaned(&self) -> &[PathBuf] {
        &self.cleaned
    }

    /// Save `tensors` as checkpoint `step` (`model.safetensors` through [`SafetensorsWriter`],
    /// then `manifest.json`), commit it by renaming its directory, then update `latest`.
    /// `step` must be above every existing checkpoint's ([`Error::CheckpointStep`]). An error
    /// before the rename removes the temporary directory and leaves the existing checkpoints
    /// untouched; one after it (the fsync of the directory, `latest`) leaves the new checkpoint
    /// committed, and the next [`CheckpointManager::open`] re-points `latest`.
    pub fn save<'a, I>(
        &mut self,
        step: u64,
        tensors: I,
        metadata: &BTreeMap<String, String>,
        metrics: &BTreeMap<String, f64>,
    ) -> Result<CheckpointInfo>
    where
        I: IntoIterator,
        I::Item: Into<TensorEntry<'a>>,
    {
        self.writable("save")?;
        if let Some(&newest) = self.steps()?.last() {
            if step <= newest {
                return Err(Error::CheckpointStep {
                    dir: self.dir.clone(),
                    step,
                    newest,
                });
            }
        }
        let mut writer = SafetensorsWriter::new(metadata.clone());
        // The record's content hash lets `mlmf verify` check a checkpoint's model file alone.
        writer.provenance(crate::provenance::Provenance::default());
        for t in tensors {
            let t: TensorEntry<'a> = t.into();
            writer.add_tensor(t.name, t.dtype, &t.shape, t.source);
        }
        let name = step_name(step);
        let temp = self
            .dir
            .join(format!("{TEMP_PREFIX}save-{name}-{}", std::process::id()));
        if temp.exists() {
            fs::remove_dir_all(&temp).map_err(|e| Error::io(&temp, e))?;
        }
        fs::create_dir(&temp).map_err(|e| Error::io(&temp, e))?;
        let manifest = match write_checkpoint(&temp, step, &writer, metadata, metrics) {
            Ok(m) => m,
            Err(e) => {
                let _ = fs::remove_dir_all(&temp);
                return Err(e);
            }
        };
        pause_point("save-before-rename");
        let dir = self.dir.join(&name);
        if let Err(e) = fs::rename(&temp, &dir) {
            let _ = fs::remove_dir_all(&temp);
            return Err(Error::io(&dir, e));
        }
        pause_point("save-after-rename");
        sync_dir(&self.dir)?;
        pause_point("save-before-latest");
        write_latest(&self.dir, Some(step))?;
        pause_point("save-after-latest");
        Ok(CheckpointInfo {
            step,
            dir,
            manifest,
        })
    }

    /// Every `step-*` checkpoint, oldest first, with what `check` found.
    pub fn list(&self, check: Verify) -> Result<Vec<CheckpointEntry>> {
        Ok(self
            .steps()?
            .into_iter()
            .map(|step| self.entry(step, check))
            .collect())
    }

    /// The step the `latest` pointer names (`None` before the first save). Cheap: nothing is
    /// verified; see [`CheckpointManager::resume`] for the checkpoint to continue from.
    pub fn latest(&self) -> Result<Option<u64>> {
        read_latest(&self.dir)
    }

    /// The newest checkpoint that verifies (sizes and sha256 of every file), skipping newer ones
    /// that do not, each reported in [`Resume::skipped`].
    pub fn resume(&self) -> Result<Resume> {
        let mut skipped = Vec::new();
        for step in self.steps()?.into_iter().rev() {
            let entry = self.entry(step, Verify::Hashes);
            match entry.status {
                CheckpointStatus::Valid(manifest) => {
                    return Ok(Resume {
                        checkpoint: Some(CheckpointInfo {
                            step,
                            dir: entry.dir,
                            manifest,
                        }),
                        skipped,
                    })
                }
                CheckpointStatus::Corrupt { .. } => skipped.push(entry),
            }
        }
        Ok(Resume {
            checkpoint: None,
            skipped,
        })
    }

    /// Verify checkpoint `step` fully (sizes and sha256): [`Error::CheckpointNotFound`] or
    /// [`Error::CorruptCheckpoint`] when it is missing or does not match its manifest.
    pub fn verify(&self, step: u64) -> Result<CheckpointInfo> {
        let dir = self.dir.join(step_name(step));
        if !dir.is_dir() {
            return Err(Error::CheckpointNotFound {
                dir: self.dir.clone(),
                step: Some(step),
            });
        }
        match check_checkpoint(&dir, step, Verify::Hashes) {
            Ok(manifest) => Ok(CheckpointInfo {
                step,
                dir,
                manifest,
            }),
            Err(reason) => Err(Error::CorruptCheckpoint { path: dir, reason }),
        }
    }

    /// Open checkpoint `step`'s model file after verifying the whole checkpoint.
    pub fn load(&self, step: u64) -> Result<ModelFile> {
        ModelFile::open(self.verify(step)?.model_path())
    }

    /// Open the model file of the checkpoint [`CheckpointManager::resume`] picks.
    pub fn load_latest(&self) -> Result<(Resume, ModelFile)> {
        let resume = self.resume()?;
        let Some(info) = &resume.checkpoint else {
            return Err(Error::CheckpointNotFound {
                dir: self.dir.clone(),
                step: None,
            });
        };
        let file = ModelFile::open(info.model_path())?;
        Ok((resume, file))
    }

    /// Delete checkpoint `step` (renamed away first, then removed), whatever its status, and
    /// point `latest` at the newest remaining one.
    pub fn remove(&mut self, step: u64) -> Result<()> {
        self.writable("remove")?;
        let dir = self.dir.join(step_name(step));
        if !dir.is_dir() {
            return Err(Error::CheckpointNotFound {
                dir: self.dir.clone(),
                step: Some(step),
            });
        }
        self.delete(step)?;
        self.repair_latest()
    }

    /// Delete the checkpoints `retention` does not keep, and leftovers of interrupted saves.
    /// The newest checkpoint that verifies fully is never deleted, nor anything newer; when no
    /// checkpoint verifies, nothing is deleted ([`Error::PruneRefused`]). Other checkpoints are
    /// judged by the size check (hashing every kept checkpoint at every prune would read them
    /// all); ones that fail it are deleted unless newer than the newest valid one.
    pub fn prune(&mut self, retention: &Retention) -> Result<PruneReport> {
        self.writable("prune")?;
        let mut report = PruneReport {
            cleaned: self.clean_leftovers()?,
            ..Default::default()
        };
        let entries = self.list(Verify::Sizes)?;
        if entries.is_empty() {
            return Ok(report);
        }
        let mut newest_valid = None;
        let mut failed_hash = Vec::new();
        for entry in entries.iter().rev() {
            if !entry.is_valid() {
                continue;
            }
            match check_checkpoint(&entry.dir, entry.step, Verify::Hashes) {
                Ok(_) => {
                    newest_valid = Some(entry.step);
                    break;
                }
                Err(reason) => failed_hash.push(CheckpointEntry {
                    step: entry.step,
                    dir: entry.dir.clone(),
                    status: CheckpointStatus::Corrupt { reason },
                }),
            }
        }
        let Some(newest_valid) = newest_valid else {
            return Err(Error::PruneRefused {
                dir: self.dir.clone(),
                reason: format!(
                    "none of the {} checkpoints verifies, so the newest valid one is unknown",
                    entries.len()
                ),
            });
        };
        let entries: Vec<CheckpointEntry> = entries
            .into_iter()
            .map(|e| match failed_hash.iter().find(|f| f.step == e.step) {
                Some(f) => f.clone(),
                None => e,
            })
            .collect();
        let keep = kept_steps(&entries, newest_valid, retention);
        for entry in &entries {
            if !entry.is_valid() {
                report.corrupt.push(entry.clone());
            }
            if keep.contains(&entry.step) {
                report.kept.push(entry.step);
            } else {
                self.delete(entry.step)?;
                report.removed.push(entry.step);
            }
        }
        Ok(report)
    }

    fn writable(&self, op: &'static str) -> Result<()> {
        match self.lock {
            Some(_) => Ok(()),
            None => Err(Error::CheckpointReadOnly {
                dir: self.dir.clone(),
                op,
            }),
        }
    }

    /// The steps of the `step-*` directories, ascending.
    fn steps(&self) -> Result<Vec<u64>> {
        let mut steps = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let Some(step) = entry.file_name().to_str().and_then(parse_step_name) else {
                continue;
            };
            let is_dir = entry
                .file_type()
                .map_err(|e| Error::io(entry.path(), e))?
                .is_dir();
            if is_dir {
                steps.push(step);
            }
        }
        steps.sort_unstable();
        Ok(steps)
    }

    fn entry(&self, step: u64, check: Verify) -> CheckpointEntry {
        let dir = self.dir.join(step_name(step));
        let status = match check_checkpoint(&dir, step, check) {
            Ok(m) => CheckpointStatus::Valid(m),
            Err(reason) => CheckpointStatus::Corrupt { reason },
        };
        CheckpointEntry { step, dir, status }
    }

    /// Rename the checkpoint away, make that durable, then remove it: a crash leaves either the
    /// whole checkpoint or a temporary directory that the next open removes.
    fn delete(&self, step: u64) -> Result<()> {
        let dir = self.dir.join(step_name(step));
        let temp = self.dir.join(format!(
            "{TEMP_PREFIX}delete-{}-{}",
            step_name(step),
            std::process::id()
        ));
        if temp.exists() {
            fs::remove_dir_all(&temp).map_err(|e| Error::io(&temp, e))?;
        }
        fs::rename(&dir, &temp).map_err(|e| Error::io(&dir, e))?;
        sync_dir(&self.dir)?;
        pause_point("delete-after-rename");
        fs::remove_dir_all(&temp).map_err(|e| Error::io(&temp, e))
    }

    /// Remove our temporary entries; only called while holding the lock, so none is in use.
    fn clean_leftovers(&self) -> Result<Vec<PathBuf>> {
        let mut cleaned = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let file_type = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
            let path = entry.path();
            if name.starts_with(TEMP_PREFIX) && file_type.is_dir() {
                fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            } else if name.starts_with(LATEST_TEMP_PREFIX) && file_type.is_file() {
                fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            } else {
                continue;
            }
            cleaned.push(path);
        }
        if !cleaned.is_empty() {
            sync_dir(&self.dir)?;
        }
        cleaned.sort();
        Ok(cleaned)
    }

    /// Make `latest` name the newest `step-*` directory (or not exist when there is none); it
    /// lags after a crash between a save's rename and the pointer update.
    fn repair_latest(&self) -> Result<()> {
        let newest = self.steps()?.last().copied();
        let current = read_latest(&self.dir).ok().flatten();
        if current != newest || (newest.is_none() && self.dir.join(LATEST_FILE).exists()) {
            write_latest(&self.dir, newest)?;
        }
        Ok(())
    }
}

impl Drop for CheckpointManager {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            // Closing releases it too; unlocking first says so explicitly.
            let _ = lock.unlock();
        }
    }
}

/// `step-00001000`.
pub fn step_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The step of a `step_name`, only for names `step_name` produces (one name per step).
fn parse_step_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step: u64 = digits.parse().ok()?;
    (step_name(step) == name).then_some(step)
}

/// Write the model file and the manifest into `temp`, durably.
fn write_checkpoint(
    temp: &Path,
    step: u64,
    writer: &SafetensorsWriter<'_>,
    metadata: &BTreeMap<String, String>,
    metrics: &BTreeMap<String, f64>,
) -> Result<Manifest> {
    let model = temp.join(MODEL_FILE);
    // AtomicFile inside fsyncs the file and `temp`.
    writer.write(&model)?;
    pause_point("save-after-model");
    // Hashed from the file rather than while streaming: the writer stays untouched, and what is
    // hashed is what the file system returns.
    let (bytes, sha256) = hash_file(&model).map_err(|e| Error::io(&model, e))?;
    let manifest = Manifest {
        step,
        time: rfc3339_utc(SystemTime::now()),
        files: vec![ManifestFile {
            name: MODEL_FILE.to_string(),
            bytes,
            sha256,
        }],
        metadata: metadata.clone(),
        metrics: metrics.clone(),
    };
    let path = temp.join(MANIFEST_FILE);
    let json =
        serde_json::to_vec_pretty(&manifest_json(&manifest)).map_err(|e| Error::BadMetadata {
            path: path.clone(),
            key: "manifest".into(),
            reason: e.to_string(),
        })?;
    let mut file = AtomicFile::create(&path)?;
    file.write_all(&json)?;
    file.write_all(b"\n")?;
    file.commit()?;
    sync_dir(temp)?;
    Ok(manifest)
}

fn manifest_json(m: &Manifest) -> serde_json::Value {
    let files: Vec<serde_json::Value> = m
        .files
        .iter()
        .map(|f| serde_json::json!({"name": f.name, "bytes": f.bytes, "sha256": f.sha256}))
        .collect();
    // JSON has no NaN or infinity; a diverged loss is still worth saving.
    let metrics: serde_json::Map<String, serde_json::Value> = m
        .metrics
        .iter()
        .map(|(k, &v)| {
            let v = serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into);
            (k.clone(), v)
        })
        .collect();
    serde_json::json!({
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "step": m.step,
        "time": m.time,
        "writer": concat!("mlmf ", env!("CARGO_PKG_VERSION")),
        "files": files,
        "metadata": m.metadata,
        "metrics": metrics,
    })
}

/// Check a checkpoint directory against its manifest; the error is the reason it is corrupt.
fn check_checkpoint(dir: &Path, step: u64, check: Verify) -> Result<Manifest, String> {
    let manifest = read_manifest(&dir.join(MANIFEST_FILE), step)?;
    for f in &manifest.files {
        let path = dir.join(&f.name);
        let meta = fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", f.name))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", f.name));
        }
        if meta.len() != f.bytes {
            return Err(format!(
                "{} has {} bytes, the manifest says {}",
                f.name,
                meta.len(),
                f.bytes
            ));
        }
        if check == Verify::Hashes {
            let (bytes, sha) = hash_file(&path).map_err(|e| format!("{}: {e}", f.name))?;
            if bytes != f.bytes {
                return Err(format!("{} changed size while being read", f.name));
            }
            if sha != f.sha256 {
                return Err(format!(
                    "{} has sha256 {sha}, the manifest says {}",
                    f.name, f.sha256
                ));
            }
        }
    }
    Ok(manifest)
}

/// Parse a manifest; it is untrusted input like any file.
fn read_manifest(path: &Path, step: u64) -> Result<Manifest, String> {
    let file = File::open(path).map_err(|e| format!("{MANIFEST_FILE}: {e}"))?;
    let mut text = Vec::new();
    file.take(MANIFEST_MAX_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("{MANIFEST_FILE}: {e}"))?;
    if text.len() as u64 > MANIFEST_MAX_BYTES {
        return Err(format!(
            "{MANIFEST_FILE} is larger than {MANIFEST_MAX_BYTES} bytes"
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("{MANIFEST_FILE}: {e}"))?;
    let bad = |what: &str| format!("{MANIFEST_FILE}: {what}");
    let obj = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
    if obj.get("format").and_then(|f| f.as_str()) != Some(MANIFEST_FORMAT) {
        return Err(bad(&format!("\"format\" is not \"{MANIFEST_FORMAT}\"")));
    }
    let version = obj.get("version").and_then(|v| v.as_u64());
    if version != Some(MANIFEST_VERSION) {
        return Err(bad(&format!(
            "unsupported version {:?}",
            obj.get("version")
        )));
    }
    let found = obj
        .get("step")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| bad("\"step\" is missing or not an integer"))?;
    if found != step {
        return Err(bad(&format!(
            "\"step\" is {found}, the directory is {}",
            step_name(step)
        )));
    }
    let time = obj
        .get("time")
        .and_then(|t| t.as_str())
        .ok_or_else(|| bad("\"time\" is missing"))?
        .to_string();
    let list = obj
        .get("files")
        .and_then(|f| f.as_array())
        .ok_or_else(|| bad("\"files\" is missing"))?;
    let mut files: Vec<ManifestFile> = Vec::with_capacity(list.len().min(64));
    for f in list {
        let name = f
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| bad("a file has no \"name\""))?;
        // Names from the file must not reach outside the checkpoint directory.
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && name != MANIFEST_FILE
            && !name.contains(['/', '\\', '\0']);
        if !plain || files.iter().any(|g| g.name == name) {
            return Err(bad(&format!("file name {name:?} is not allowed")));
        }
        let bytes = f
            .get("bytes")
            .and_then(|b| b.as_u64())
            .ok_or_else(|| bad(&format!("{name}: \"bytes\" is missing")))?;
        let sha256 = f
            .get("sha256")
            .and_then(|s| s.as_str())
            .filter(|s| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| {
                bad(&format!(
                    "{name}: \"sha256\" is not 64 lowercase hex digits"
                ))
            })?;
        files.push(ManifestFile {
            name: name.to_string(),
            bytes,
            sha256: sha256.to_string(),
        });
    }
    if !files.iter().any(|f| f.name == MODEL_FILE) {
        return Err(bad(&format!("{MODEL_FILE} is not listed")));
    }
    let mut metadata = BTreeMap::new();
    if let Some(m) = obj.get("metadata") {
        for (k, v) in m
            .as_object()
            .ok_or_else(|| bad("\"metadata\" is not an object"))?
        {
            let v = v
                .as_str()
                .ok_or_else(|| bad(&format!("metadata {k:?} is not a string")))?;
            metadata.insert(k.clone(), v.to_string());
        }
    }
    let mut metrics = BTreeMap::new();
    if let Some(m) = obj.get("metrics") {
        for (k, v) in m
            .as_object()
            .ok_or_else(|| bad("\"metrics\" is not an object"))?
        {
            let v = match v {
                serde_json::Value::Null => f64::NAN,
                v => v
                    .as_f64()
                    .ok_or_else(|| bad(&format!("metric {k:?} is not a number")))?,
            };
            metrics.insert(k.clone(), v);
        }
    }
    Ok(Manifest {
        step,
        time,
        files,
        metadata,
        metrics,
    })
}

/// Steps `retention` keeps among `entries` (ascending), given the newest valid step.
fn kept_steps(entries: &[CheckpointEntry], newest_valid: u64, retention: &Retention) -> Vec<u64> {
    let mut keep: Vec<u64> = entries
        .iter()
        .map(|e| e.step)
        .filter(|&s| s >= newest_valid)
        .collect();
    let valid: Vec<(u64, &Manifest)> = entries
        .iter()
        .filter(|e| e.step <= newest_valid)
        .filter_map(|e| match &e.status {
            CheckpointStatus::Valid(m) => Some((e.step, m)),
            CheckpointStatus::Corrupt { .. } => None,
        })
        .collect();
    if let Some(n) = retention.keep_last {
        keep.extend(valid.iter().rev().take(n).map(|(s, _)| *s));
    }
    if let Some(k) = retention.keep_every.filter(|&k| k > 0) {
        keep.extend(valid.iter().map(|(s, _)| *s).filter(|s| s % k == 0));
    }
    if let Some((metric, n, higher)) = &retention.keep_best {
        let mut ranked: Vec<(u64, f64)> = valid
            .iter()
            .filter_map(|(s, m)| m.metrics.get(metric).map(|&v| (*s, v)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        ranked.sort_by(|a, b| {
            let by_value = if *higher {
                b.1.total_cmp(&a.1)
            } else {
                a.1.total_cmp(&b.1)
            };
            by_value.then(b.0.cmp(&a.0))
        });
        keep.extend(ranked.iter().take(*n).map(|(s, _)| *s));
    }
    keep.sort_unstable();
    keep.dedup();
    keep
}

fn read_latest(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(LATEST_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    std::str::from_utf8(&text)
        .ok()
        .and_then(|t| parse_step_name(t.trim_end_matches('\n')))
        .map(Some)
        .ok_or_else(|| Error::CorruptCheckpoint {
            path,
            reason: "not a step name followed by a newline".into(),
        })
}

/// Replace `latest` atomically with `step`'s name, or remove it when `step` is `None`.
fn write_latest(dir: &Path, step: Option<u64>) -> Result<()> {
    let path = dir.join(LATEST_FILE);
    match step {
        Some(step) => {
            let mut file = AtomicFile::create(&path)?;
            file.write_all(format!("{}\n", step_name(step)).as_bytes())?;
            file.commit()
        }
        None => match fs::remove_file(&path) {
            Ok(()) => sync_dir(dir),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        },
    }
}

/// fsync a directory so that entries created, renamed or removed in it are durable. As in
/// [`AtomicFile`], a platform that cannot open directories skips it.
fn sync_dir(dir: &Path) -> Result<()> {
    if let Ok(d) = File::open(dir) {
        d.sync_all().map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// Byte count and lowercase-hex sha256 of a file, read in 1 MiB chunks.
fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((total, hex))
}

/// RFC 3339 in UTC to the second, from the days-to-civil algorithm of
/// <https://howardhinnant.github.io/date_algorithms.html#civil_from_days>. Times before 1970
/// print as 1970-01-01T00:00:00Z (a clock that far off is not worth a dependency).
fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// Test hook for the kill tests (`tests/checkpoint_kill.rs`): in debug builds only, when the
/// environment variable `MLMF_CHECKPOINT_PAUSE_AT` names `point`, say so on stderr and wait
/// forever, so that the test can SIGKILL the process exactly there. Release builds compile it to
/// nothing.
#[inline]
fn pause_point(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var_os("MLMF_CHECKPOINT_PAUSE_AT").is_some_and(|v| v == point) {
        eprintln!("mlmf-pause-point {point}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_instants() {
        let at = |s| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn step_names_round_trip_and_nothing_else_parses() {
        assert_eq!(step_name(1000), "step-00001000");
        assert_eq!(parse_step_name("step-00001000"), Some(1000));
        assert_eq!(
            parse_step_name(&step_name(123_456_789_012)),
            Some(123_456_789_012)
        );
        for bad in [
            "step-1000",
            "step-000001000",
            "step-+0001000",
            "step-",
            "x-00001000",
        ] {
            assert_eq!(parse_step_name(bad), None, "{bad}");
        }
    }

    fn entry(step: u64, metrics: &[(&str, f64)], valid: bool) -> CheckpointEntry {
        let status = if valid {
            CheckpointStatus::Valid(Manifest {
                step,
                time: String::new(),
                files: Vec::new(),
                metadata: BTreeMap::new(),
                metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            })
        } else {
            CheckpointStatus::Corrupt {
                reason: "test".into(),
            }
        };
        CheckpointEntry {
            step,
            dir: PathBuf::new(),
            status,
        }
    }

    #[test]
    fn retention_rules_union_and_always_keep_the_newest_valid() {
        let entries = vec![
            entry(100, &[("loss", 0.9)], true),
            entry(200, &[("loss", 0.1)], true),
            entry(300, &[("loss", f64::NAN)], true),
            entry(400, &[("loss", 0.5)], false),
            entry(500, &[("loss", 0.4)], true),
            entry(600, &[("loss", 0.3)], true),
            entry(700, &[], false),
        ];
        let none = Retention::default();
        // 700 is newer than the newest valid (600): kept for inspection.
        assert_eq!(kept_steps(&entries, 600, &none), [600, 700]);
        let last = Retention {
            keep_last: Some(2),
            ..Default::default()
        };
        assert_eq!(kept_steps(&entries, 600, &last), [500, 600, 700]);
        let every = Retention {
            keep_every: Some(200),
            ..Default::default()
        };
        // 400 is corrupt: not kept by keep_every.
        assert_eq!(kept_steps(&entries, 600, &every), [200, 600, 700]);
        let best = Retention {
            keep_best: Some(("loss".into(), 2, false)),
            ..Default::default()
        };
        assert_eq!(kept_steps(&entries, 600, &best), [200, 600, 700]);
        let best_high = Retention {
            keep_best: Some(("loss".into(), 1, true)),
            keep_every: Some(0),
            ..Default::default()
        };
        assert_eq!(kept_steps(&entries, 600, &best_high), [100, 600, 700]);
    }
}
