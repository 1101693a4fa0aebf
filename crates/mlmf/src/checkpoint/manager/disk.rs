//! The checkpoint directory on disk: the writer lock, `step-*` names, the `latest` pointer, and
//! the order of steps that makes a save or a delete atomic (see the layout in the parent module).

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::checkpoint::AtomicFile;
use crate::error::{Error, Result};

const LATEST_FILE: &str = "latest";
const LOCK_FILE: &str = ".lock";
const TEMP_PREFIX: &str = ".mlmf-tmp-";
/// [`AtomicFile`]'s temporary name for `latest`.
const LATEST_TEMP_PREFIX: &str = ".latest.tmp-";

/// Create `dir` if needed and take its writer lock, held until the file is closed;
/// [`Error::CheckpointLocked`] while another manager holds it.
pub(super) fn lock(dir: &Path) -> Result<File> {
    if !dir.is_dir() {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        if let Some(parent) = dir.parent() {
            sync_dir(if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            })?;
        }
    }
    let path = dir.join(LOCK_FILE);
    // Never truncated or removed: removing a lock file lets two writers lock two files.
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(Error::CheckpointLocked {
            dir: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
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

/// The steps of the `step-*` directories in `dir`, ascending.
pub(super) fn steps(dir: &Path) -> Result<Vec<u64>> {
    let mut steps = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
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

/// `.mlmf-tmp-save-step-00001000-<pid>`: ours by name, so [`clean_leftovers`] finds it.
fn temp_dir(dir: &Path, op: &str, step: u64) -> Result<PathBuf> {
    let temp = dir.join(format!(
        "{TEMP_PREFIX}{op}-{}-{}",
        step_name(step),
        std::process::id()
    ));
    if temp.exists() {
        fs::remove_dir_all(&temp).map_err(|e| Error::io(&temp, e))?;
    }
    Ok(temp)
}

/// Save checkpoint `step`: `fill` writes its files durably into a new temporary directory, which
/// is then renamed to `step-N` (the commit point), `dir` fsynced and `latest` replaced. An error
/// before the rename removes the temporary directory; one after it leaves the checkpoint
/// committed and `latest` behind, which [`repair_latest`] fixes.
pub(super) fn save<T>(
    dir: &Path,
    step: u64,
    fill: impl FnOnce(&Path) -> Result<T>,
) -> Result<(PathBuf, T)> {
    let temp = temp_dir(dir, "save", step)?;
    fs::create_dir(&temp).map_err(|e| Error::io(&temp, e))?;
    let target = dir.join(step_name(step));
    let filled = fill(&temp).and_then(|value| {
        pause_point("save-before-rename");
        fs::rename(&temp, &target).map_err(|e| Error::io(&target, e))?;
        Ok(value)
    });
    let value = filled.inspect_err(|_| {
        let _ = fs::remove_dir_all(&temp);
    })?;
    pause_point("save-after-rename");
    sync_dir(dir)?;
    pause_point("save-before-latest");
    write_latest(dir, Some(step))?;
    pause_point("save-after-latest");
    Ok((target, value))
}

/// Rename checkpoint `step` away, make that durable, then remove it: a crash leaves either the
/// whole checkpoint or a temporary directory that the next open removes.
pub(super) fn delete(dir: &Path, step: u64) -> Result<()> {
    let target = dir.join(step_name(step));
    let temp = temp_dir(dir, "delete", step)?;
    fs::rename(&target, &temp).map_err(|e| Error::io(&target, e))?;
    sync_dir(dir)?;
    pause_point("delete-after-rename");
    fs::remove_dir_all(&temp).map_err(|e| Error::io(&temp, e))
}

/// Remove our temporary entries; only called while holding the lock, so none is in use.
pub(super) fn clean_leftovers(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut cleaned = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
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
        sync_dir(dir)?;
    }
    cleaned.sort();
    Ok(cleaned)
}

/// The step `latest` names; `None` when there is no `latest`.
pub(super) fn read_latest(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(LATEST_FILE);
    let text = match mlmf_core::files::read_regular(&path) {
        Ok(t) => t,
        Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
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

/// Make `latest` name the newest `step-*` directory (or not exist when there is none); it lags
/// after a crash between a save's rename and the pointer update.
pub(super) fn repair_latest(dir: &Path) -> Result<()> {
    let newest = steps(dir)?.last().copied();
    let current = read_latest(dir).ok().flatten();
    if current != newest || (newest.is_none() && dir.join(LATEST_FILE).exists()) {
        write_latest(dir, newest)?;
    }
    Ok(())
}

/// fsync a directory so that entries created, renamed or removed in it are durable. As in
/// [`AtomicFile`], a platform that cannot open directories skips it.
fn sync_dir(dir: &Path) -> Result<()> {
    if let Ok(d) = File::open(dir) {
        d.sync_all().map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// Test hook for `tests/checkpoint_kill.rs`: in debug builds, when `MLMF_CHECKPOINT_PAUSE_AT`
/// names `point`, say so on stderr and wait to be SIGKILLed exactly there.
pub(super) fn pause_point(point: &str) {
    if cfg!(debug_assertions)
        && std::env::var_os("MLMF_CHECKPOINT_PAUSE_AT").is_some_and(|v| v == point)
    {
        eprintln!("mlmf-pause-point {point}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
