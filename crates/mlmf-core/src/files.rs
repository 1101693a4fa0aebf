//! Files that are not files. A FIFO given as a model blocks `open` until a writer comes (forever,
//! from a command line), and an atomic write that renames its temporary file over a device node
//! replaces the node (as root, `/dev/full` became a regular file). Every path mlmf reads from is
//! checked to be a regular file before it is opened, and every path a writer renames over is
//! checked to be a regular file (or absent) before the rename.

use std::fs::{File, Metadata, OpenOptions};
use std::path::Path;

use crate::error::{Error, Result};

/// What a path is, when it is neither a regular file nor a directory.
pub fn special_kind(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() || t.is_dir() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("FIFO (named pipe)");
        }
        if t.is_char_device() {
            return Some("character device");
        }
        if t.is_block_device() {
            return Some("block device");
        }
        if t.is_socket() {
            return Some("socket");
        }
    }
    Some("special file")
}

fn not_a_file(path: &Path, meta: &Metadata) -> Result<()> {
    let kind = if meta.is_dir() {
        Some("directory")
    } else {
        special_kind(meta)
    };
    match kind {
        None => Ok(()),
        Some(kind) => Err(Error::NotAFile {
            path: path.to_path_buf(),
            kind,
        }),
    }
}

/// Open `path` for reading if it is a regular file (symbolic links followed); anything else is
/// [`Error::NotAFile`], found from its metadata before it is opened. The open does not wait for
/// a writer (`O_NONBLOCK`, which changes nothing for a regular file) and the opened file is
/// checked again, so a path swapped for a FIFO between the two steps is refused too.
pub fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    not_a_file(path, &meta)?;
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    not_a_file(path, &meta)?;
    Ok(file)
}

/// The whole of a regular file (see [`open_regular`]).
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// A regular file's text (see [`open_regular`]); invalid UTF-8 is an I/O error of kind
/// `InvalidData`, as `std::fs::read_to_string` reports it.
pub fn read_regular_to_string(path: &Path) -> Result<String> {
    String::from_utf8(read_regular(path)?).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
        )
    })
}

/// Whether a writer may rename a new file over `target`: it is a regular file, a directory (a
/// rename over a directory fails on its own, and the writers that replace directories want
/// one), or cannot be looked at (absent, or below a file: creating the file reports that). A
/// device node, FIFO or socket is [`Error::NotAFile`]: the rename would replace the node itself,
/// not write to it. Writing through the node in place is not offered either: the writers promise
/// all of the new file or none of it, and patch headers by seeking, which a pipe or a device
/// cannot give. Symbolic links are followed, so a link to a device is refused as the device is.
pub fn check_replaceable(target: &Path) -> Result<()> {
    let Ok(meta) = std::fs::metadata(target) else {
        return Ok(());
    };
    match special_kind(&meta) {
        None => Ok(()),
        Some(kind) => Err(Error::NotAFile {
            path: target.to_path_buf(),
            kind,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(read_regular(&file).unwrap(), b"abc");
        assert!(check_replaceable(&file).is_ok());
        assert!(check_replaceable(&dir.path().join("absent")).is_ok());
        assert!(check_replaceable(dir.path()).is_ok());
        assert!(matches!(
            open_regular(dir.path()),
            Err(Error::NotAFile {
                kind: "directory",
                ..
            })
        ));
        assert!(matches!(
            open_regular(&dir.path().join("absent")),
            Err(Error::Io { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn fifos_and_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for err in [
            open_regular(&fifo).unwrap_err(),
            check_replaceable(&fifo).unwrap_err(),
        ] {
            assert!(
                matches!(&err, Error::NotAFile { path, kind: "FIFO (named pipe)" } if path == &fifo),
                "{err}"
            );
        }
        // /dev/null is only looked at here, never opened or written.
        let null = Path::new("/dev/null");
        if null.exists() {
            assert!(matches!(
                check_replaceable(null),
                Err(Error::NotAFile {
                    kind: "character device",
                    ..
                })
            ));
        }
    }
}
