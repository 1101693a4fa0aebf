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

mod disk;
mod manifest;
mod retention;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::{SafetensorsWriter, TensorSource};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::Tensor;

pub use disk::step_name;
use manifest::MODEL_FILE;
pub use manifest::{Manifest, ManifestFile};
pub use retention::{PruneReport, Retention};

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
        let lock = disk::lock(&dir)?;
        let cleaned = disk::clean_leftovers(&dir)?;
        disk::repair_latest(&dir)?;
        Ok(CheckpointManager {
            dir,
            lock: Some(lock),
            cleaned,
        })
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
        if let Some(&newest) = disk::steps(&self.dir)?.last() {
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
        let (dir, manifest) = disk::save(&self.dir, step, |temp| {
            let model = temp.join(MODEL_FILE);
            writer.write(&model)?;
            disk::pause_point("save-after-model");
            // Hashed from the file rather than while streaming: the writer stays untouched, and
            // what is hashed is what the file system returns.
            let (bytes, sha256) = manifest::hash_file(&model).map_err(|e| Error::io(&model, e))?;
            let file = ManifestFile {
                name: MODEL_FILE.to_string(),
                bytes,
                sha256,
            };
            let manifest = Manifest::new(step, vec![file], metadata.clone(), metrics.clone());
            manifest.write(temp)?;
            Ok(manifest)
        })?;
        Ok(CheckpointInfo {
            step,
            dir,
            manifest,
        })
    }

    /// Every `step-*` checkpoint, oldest first, with what `check` found.
    pub fn list(&self, check: Verify) -> Result<Vec<CheckpointEntry>> {
        Ok(disk::steps(&self.dir)?
            .into_iter()
            .map(|step| self.entry(step, check))
            .collect())
    }

    /// The step the `latest` pointer names (`None` before the first save). Cheap: nothing is
    /// verified; see [`CheckpointManager::resume`] for the checkpoint to continue from.
    pub fn latest(&self) -> Result<Option<u64>> {
        disk::read_latest(&self.dir)
    }

    /// The newest checkpoint that verifies (sizes and sha256 of every file), skipping newer ones
    /// that do not, each reported in [`Resume::skipped`].
    pub fn resume(&self) -> Result<Resume> {
        let mut skipped = Vec::new();
        for step in disk::steps(&self.dir)?.into_iter().rev() {
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
        match manifest::check(&dir, step, Verify::Hashes) {
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
        disk::delete(&self.dir, step)?;
        disk::repair_latest(&self.dir)
    }

    /// Delete the checkpoints `retention` does not keep, and leftovers of interrupted saves.
    /// The newest checkpoint that verifies fully is never deleted, nor anything newer; when no
    /// checkpoint verifies, nothing is deleted ([`Error::PruneRefused`]). Other checkpoints are
    /// judged by the size check (hashing every kept checkpoint at every prune would read them
    /// all); ones that fail it are deleted unless newer than the newest valid one.
    pub fn prune(&mut self, retention: &Retention) -> Result<PruneReport> {
        self.writable("prune")?;
        let mut report = PruneReport {
            cleaned: disk::clean_leftovers(&self.dir)?,
            ..Default::default()
        };
        let mut entries = self.list(Verify::Sizes)?;
        if entries.is_empty() {
            return Ok(report);
        }
        // Newer checkpoints that pass the size check but not the hash check are corrupt too.
        let mut newest_valid = None;
        for entry in entries.iter_mut().rev().filter(|e| e.is_valid()) {
            match manifest::check(&entry.dir, entry.step, Verify::Hashes) {
                Ok(_) => {
                    newest_valid = Some(entry.step);
                    break;
                }
                Err(reason) => entry.status = CheckpointStatus::Corrupt { reason },
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
        let keep = retention::kept_steps(&entries, newest_valid, retention);
        for entry in &entries {
            if !entry.is_valid() {
                report.corrupt.push(entry.clone());
            }
            if keep.contains(&entry.step) {
                report.kept.push(entry.step);
            } else {
                disk::delete(&self.dir, entry.step)?;
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

    fn entry(&self, step: u64, check: Verify) -> CheckpointEntry {
        let dir = self.dir.join(step_name(step));
        let status = match manifest::check(&dir, step, check) {
            Ok(m) => CheckpointStatus::Valid(m),
            Err(reason) => CheckpointStatus::Corrupt { reason },
        };
        CheckpointEntry { step, dir, status }
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
