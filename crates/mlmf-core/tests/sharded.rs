//! Sharded safetensors checkpoints (Hugging Face `model.safetensors.index.json` layout), made by
//! splitting the real MiniLM file with the `safetensors` crate.

#[path = "../../../tests/common/mod.rs"]
mod common;

#[path = "../../../tests/common/shards.rs"]
mod shards;

use mlmf_core::{Error, Format, ModelFile};
use shards::write_shards;

#[test]
fn opens_index_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_shards(dir.path());
    for path in [
        dir.path().to_path_buf(),
        dir.path().join("model.safetensors.index.json"),
    ] {
        let sharded = ModelFile::open(&path).unwrap();
        assert_eq!(sharded.format(), Format::ShardedSafetensors);
        assert_eq!(sharded.tensors().len(), src.tensors().len());
        assert_eq!(sharded.data_bytes(), src.data_bytes());
        for t in src.tensors() {
            let s = sharded.tensor(&t.name).unwrap();
            assert_eq!((s.dtype, &s.shape), (t.dtype, &t.shape));
            assert!(sharded.bytes(s) == src.bytes(t), "{}", t.name);
        }
    }
}

#[test]
fn missing_shard_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(dir.path());
    std::fs::remove_file(dir.path().join("model-00002-of-00003.safetensors")).unwrap();
    match ModelFile::open(dir.path()) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("model-00002-of-00003.safetensors")),
        other => panic!("expected Io error, got {other:?}"),
    }
}

#[test]
fn index_that_disagrees_with_shards() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(dir.path());
    let path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    index["weight_map"]["no.such.tensor"] = "model-00001-of-00003.safetensors".into();
    std::fs::write(&path, index.to_string()).unwrap();
    assert!(matches!(
        ModelFile::open(dir.path()),
        Err(Error::BadIndex { .. })
    ));

    index["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove("no.such.tensor");
    index["weight_map"]["pooler.dense.bias"] = "model-00003-of-00003.safetensors".into();
    std::fs::write(&path, index.to_string()).unwrap();
    assert!(matches!(
        ModelFile::open(dir.path()),
        Err(Error::BadIndex { .. })
    ));
}

/// A directory with neither an index nor `model.safetensors`: the error says what was looked
/// for, not that one of them is missing.
#[test]
fn directory_without_a_model_names_what_was_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
    let err = ModelFile::open(dir.path()).unwrap_err();
    match &err {
        Error::NoModelInDirectory { dir: d, looked_for } => {
            assert_eq!(d, dir.path());
            assert_eq!(
                looked_for,
                &["model.safetensors.index.json", "model.safetensors"]
            );
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("model.safetensors.index.json or model.safetensors"),
        "{text}"
    );
}

/// Run `f` on another thread and wait at most 20 s: a FIFO that is opened for reading blocks
/// until a writer comes, so a regression must fail this test rather than hang it.
fn within_20s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .expect("blocked for 20 s: a FIFO was opened for reading")
}

fn mkfifo(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

/// A FIFO given as the model, and a FIFO where the index names a shard: refused from their
/// metadata as not regular files (typed, naming the path), never opened and waited on.
#[test]
fn fifos_as_model_or_shard_are_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.gguf");
    mkfifo(&fifo);
    let opened = within_20s({
        let fifo = fifo.clone();
        move || ModelFile::open(fifo).err()
    });
    assert!(
        matches!(&opened, Some(Error::NotAFile { path, kind: "FIFO (named pipe)" }) if path == &fifo),
        "{opened:?}"
    );

    write_shards(dir.path());
    let shard = dir.path().join("model-00002-of-00003.safetensors");
    std::fs::remove_file(&shard).unwrap();
    mkfifo(&shard);
    for path in [
        dir.path().to_path_buf(),
        dir.path().join("model.safetensors.index.json"),
    ] {
        let opened = within_20s(move || ModelFile::open(path).err());
        assert!(
            matches!(&opened, Some(Error::NotAFile { path, .. }) if path == &shard),
            "{opened:?}"
        );
    }
    // A directory where the index names a shard is refused the same way.
    std::fs::remove_file(&shard).unwrap();
    std::fs::create_dir(&shard).unwrap();
    assert!(matches!(
        ModelFile::open(dir.path()),
        Err(Error::NotAFile {
            kind: "directory",
            ..
        })
    ));
}
