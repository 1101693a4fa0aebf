//! Atomic file replacement: write a temporary file in the target's directory, fsync it, rename
//! it over the target, fsync the directory. An interrupted write leaves the previous file as it
//! was; at worst a stray temporary file remains. A target that is a device node, FIFO or socket
//! is refused ([`Error::NotAFile`]) when the file is created and again just before the rename,
//! which would replace the node (as root, `-o /dev/full` replaced the machine's `/dev/full`).

use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A file being written; it replaces `target` only when [`AtomicFile::commit`] succeeds.
/// Dropping it without committing removes the temporary file.
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(target: impl AsRef<Path>) -> Result<AtomicFile> {
        let target = target.as_ref().to_path_buf();
        mlmf_core::files::check_replaceable(&target)?;
        let dir = parent_dir(&target);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&temp).map_err(|e| Error::io(&temp, e))?;
        Ok(AtomicFile {
            target,
            temp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self
            .out
            .as_mut()
            .expect("an uncommitted AtomicFile has a writer");
        out.write_all(bytes).map_err(|e| Error::io(&self.temp, e))
    }

    /// Overwrite `bytes.len()` bytes already written, starting at `offset`, e.g. a hash in a
    /// header that is known only after the data. Later writes still append at the end. The
    /// range must lie inside what was written so far.
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let out = self
            .out
            .as_mut()
            .expect("an uncommitted AtomicFile has a writer");
        let temp = &self.temp;
        out.flush().map_err(|e| Error::io(temp, e))?;
        let file = out.get_mut();
        let end = file.stream_position().map_err(|e| Error::io(temp, e))?;
        if offset
            .checked_add(bytes.len() as u64)
            .is_none_or(|stop| stop > end)
        {
            let reason = format!(
                "overwriting {} bytes at {offset} would pass the {end} bytes written",
                bytes.len()
            );
            return Err(Error::io(
                temp,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
            ));
        }
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.write_all(bytes))
            .and_then(|_| file.seek(SeekFrom::Start(end)))
            .map(|_| ())
            .map_err(|e| Error::io(temp, e))
    }

    /// Flush, fsync, rename over the target, fsync the directory. On failure the temporary
    /// file is removed and the target is left as it was.
    pub fn commit(mut self) -> Result<()> {
        let out = self
            .out
            .take()
            .expect("an uncommitted AtomicFile has a writer");
        let result = Self::finish(out, &self.temp, &self.target);
        if result.is_err() {
            let _ = fs::remove_file(&self.temp);
        }
        result
    }

    fn finish(out: BufWriter<File>, temp: &Path, target: &Path) -> Result<()> {
        let file = out
            .into_inner()
            .map_err(|e| Error::io(temp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(temp, e))?;
        drop(file);
        // Again: the target may have become a node while the file was written.
        mlmf_core::files::check_replaceable(target)?;
        fs::rename(temp, target).map_err(|e| Error::io(target, e))?;
        let dir = parent_dir(target);
        // Directory fsync makes the rename itself durable; not every platform can open a
        // directory for it, so failure to open is not an error.
        if let Ok(d) = File::open(&dir) {
            d.sync_all().map_err(|e| Error::io(&dir, e))?;
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        fs::write(&target, b"old").unwrap();
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"old");
        f.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");

        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"abandoned").unwrap();
        drop(f);
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temporary file left behind"
        );
    }

    #[test]
    fn write_at_patches_written_bytes_and_appends_after() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"hash=????;data").unwrap();
        f.write_at(5, b"abcd").unwrap();
        f.write_all(b"+more").unwrap();
        // Past the end of what was written: refused, nothing changes.
        assert!(matches!(f.write_at(17, b"xyz"), Err(Error::Io { .. })));
        f.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"hash=abcd;data+more");
    }

    #[test]
    fn failed_commit_removes_the_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A directory at the target path: the rename fails.
        let target = dir.path().join("sub");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), b"x").unwrap();
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"data").unwrap();
        assert!(matches!(f.commit(), Err(Error::Io { .. })));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["sub"], "temporary file left behind");
        assert_eq!(fs::read(target.join("keep")).unwrap(), b"x");
    }

    /// Make a FIFO, or a character device with /dev/null's numbers (1, 3), at `path`, in the
    /// test's own directory; false when this process may not (mknod needs root, CAP_MKNOD).
    #[cfg(unix)]
    fn make_node(path: &Path, mode: libc::mode_t) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; makedev is arithmetic.
        unsafe { libc::mknod(c.as_ptr(), mode | 0o600, libc::makedev(1, 3)) == 0 }
    }

    #[cfg(unix)]
    fn kind(path: &Path) -> Option<&'static str> {
        mlmf_core::files::special_kind(&fs::symlink_metadata(path).unwrap())
    }

    /// A target that is a FIFO or a device node is refused when the file is created, and when
    /// it became one while the file was written; the node stays what it was, and no temporary
    /// file is left behind.
    #[cfg(unix)]
    #[test]
    fn device_nodes_and_fifos_are_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = vec![("fifo", libc::S_IFIFO, "FIFO (named pipe)")];
        let probe = dir.path().join("probe");
        if make_node(&probe, libc::S_IFCHR) {
            fs::remove_file(&probe).unwrap();
            nodes.push(("null", libc::S_IFCHR, "character device"));
        } else {
            println!("mknod of a character device is not permitted here; testing FIFOs only");
        }
        for (name, mode, what) in nodes {
            let target = dir.path().join(name);
            assert!(make_node(&target, mode));
            let err = AtomicFile::create(&target).err().unwrap();
            assert!(
                matches!(&err, Error::NotAFile { path, kind } if path == &target && *kind == what),
                "{err}"
            );
            assert_eq!(kind(&target), Some(what));
            fs::remove_file(&target).unwrap();

            // Absent when created, a node by the time of the rename.
            let mut f = AtomicFile::create(&target).unwrap();
            f.write_all(b"data").unwrap();
            assert!(make_node(&target, mode));
            let err = f.commit().unwrap_err();
            assert!(matches!(err, Error::NotAFile { .. }), "{err}");
            assert_eq!(kind(&target), Some(what));
            fs::remove_file(&target).unwrap();
            assert_eq!(
                fs::read_dir(dir.path()).unwrap().count(),
                0,
                "temporary file left behind"
            );
        }
    }

    #[test]
    fn unwritable_directory_is_an_io_error() {
        let err = AtomicFile::create("/nonexistent-dir/x.bin").err().unwrap();
        assert!(matches!(err, Error::Io { .. }));
    }
}
