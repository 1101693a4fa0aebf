//! CheckpointManager: layout, manifest, resume past corrupt checkpoints, retention, the writer
//! lock, leftovers of interrupted saves, and failures that must leave earlier checkpoints intact.
//! Kill tests (a process SIGKILLed mid-save) and disk-full tests are in `checkpoint_kill.rs`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use mlmf::checkpoint::{
    step_name, CheckpointManager, CheckpointStatus, ChunkSource, Retention, SafetensorsWriter,
    TensorSource, Verify,
};
use mlmf::{DType, Device, Error, Tensor};
use sha2::{Digest, Sha256};

/// Deterministic bytes for `step`, so every checkpoint's contents differ.
fn payload(step: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(step * 7) as u8)
        .collect()
}

fn metrics(loss: f64) -> BTreeMap<String, f64> {
    BTreeMap::from([("loss".to_string(), loss)])
}

/// Save `step` with one U8 tensor `w` of `payload(step, 4096)`.
fn save(m: &mut CheckpointManager, step: u64, loss: f64) {
    let bytes = payload(step, 4096);
    m.save(
        step,
        [(
            "w",
            DType::U8,
            &[64usize, 64][..],
            TensorSource::Bytes(&bytes),
        )],
        &BTreeMap::new(),
        &metrics(loss),
    )
    .unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn steps_of(m: &CheckpointManager) -> Vec<u64> {
    m.list(Verify::Sizes)
        .unwrap()
        .iter()
        .map(|e| e.step)
        .collect()
}

/// Flip one byte of a checkpoint's model file, keeping its size.
fn flip_byte(dir: &Path, step: u64) {
    let path = dir.join(step_name(step)).join("model.safetensors");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, bytes).unwrap();
}

#[test]
fn save_writes_the_layout_and_manifest_and_loads_back() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    let mut m = CheckpointManager::open(&dir).unwrap();
    assert!(m.resume().unwrap().checkpoint.is_none());
    assert_eq!(m.latest().unwrap(), None);

    let a = Tensor::from_f32("a", vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let b = Tensor::from_f32("b", vec![4], &[-1.0, 0.5, 0.25, 8.0]).unwrap();
    let meta = BTreeMap::from([("run".to_string(), "test".to_string())]);
    let mut mets = metrics(0.75);
    mets.insert("diverged".into(), f64::NAN);
    let list: Vec<&Tensor> = vec![&a, &b];
    let info = m.save(1000, &list[..], &meta, &mets).unwrap();
    assert_eq!(info.step, 1000);
    assert_eq!(info.dir, dir.join("step-00001000"));
    assert_eq!(
        names(&dir),
        [".lock", "latest", "step-00001000"],
        "nothing else beside the checkpoint"
    );
    assert_eq!(
        names(&info.dir),
        ["manifest.json", "model.safetensors"],
        "no temporary file inside the checkpoint"
    );
    assert_eq!(
        fs::read_to_string(dir.join("latest")).unwrap(),
        "step-00001000\n"
    );

    // The manifest as another tool would read it.
    let model = fs::read(info.model_path()).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(info.dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(json["format"], "mlmf-checkpoint");
    assert_eq!(json["step"], 1000);
    assert_eq!(json["files"][0]["name"], "model.safetensors");
    assert_eq!(json["files"][0]["bytes"], model.len() as u64);
    let sha: String = Sha256::digest(&model)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(json["files"][0]["sha256"], sha.as_str());
    assert_eq!(json["metadata"]["run"], "test");
    assert_eq!(json["metrics"]["loss"], 0.75);
    assert!(
        json["metrics"]["diverged"].is_null(),
        "NaN is stored as null"
    );
    let time = json["time"].as_str().unwrap();
    assert_eq!(time.len(), 20, "{time}");
    assert!(time.starts_with("20") && time.ends_with('Z') && &time[10..11] == "T");
    assert_eq!(info.manifest.time, time);
    assert!(info.manifest.metrics["diverged"].is_nan());

    let file = m.load(1000).unwrap();
    assert_eq!(file.metadata().get("run").unwrap().as_str(), Some("test"));
    // The model file carries a provenance record of its own content hash.
    mlmf::provenance::verify(&file).unwrap().check().unwrap();
    assert_eq!(file.bytes(file.tensor("a").unwrap()), a.to_bytes().unwrap());
    assert_eq!(file.tensor("b").unwrap().shape.dims(), &[4]);

    save(&mut m, 2000, 0.5);
    assert_eq!(m.latest().unwrap(), Some(2000));
    let resume = m.resume().unwrap();
    assert_eq!(resume.checkpoint.unwrap().step, 2000);
    assert!(resume.skipped.is_empty());
    let (_, file) = m.load_latest().unwrap();
    assert_eq!(
        file.bytes(file.tensor("w").unwrap()),
        payload(2000, 4096).as_slice()
    );
    // A new manager sees the same checkpoints.
    drop(m);
    let m = CheckpointManager::open(&dir).unwrap();
    assert_eq!(steps_of(&m), [1000, 2000]);
    assert!(m.cleaned().is_empty());
    let v = m.verify(1000).unwrap();
    assert_eq!(v.manifest.metadata["run"], "test");
}

#[test]
fn gpu_tensors_are_read_back_into_the_checkpoint() {
    let gpu = Device::gpu().unwrap();
    let values: Vec<f32> = (0..300_000).map(|i| (i as f32).sin()).collect();
    let cpu = Tensor::from_f32("big", vec![600, 500], &values).unwrap();
    let on_gpu = cpu.to_device(&gpu).unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut m = CheckpointManager::open(root.path()).unwrap();
    m.save(1, [&on_gpu], &BTreeMap::new(), &BTreeMap::new())
        .unwrap();
    let file = m.load(1).unwrap();
    assert_eq!(
        file.bytes(file.tensor("big").unwrap()),
        cpu.to_bytes().unwrap()
    );
}

#[test]
fn a_second_writer_is_refused_until_the_first_is_dropped() {
    let root = tempfile::tempdir().unwrap();
    let first = CheckpointManager::open(root.path()).unwrap();
    let err = CheckpointManager::open(root.path()).err().unwrap();
    assert!(matches!(err, Error::CheckpointLocked { .. }), "{err}");
    assert!(err.to_string().contains("only one writer"), "{err}");
    // Readers need no lock.
    let reader = CheckpointManager::open_read_only(root.path()).unwrap();
    assert!(reader.list(Verify::Sizes).unwrap().is_empty());
    drop(first);
    CheckpointManager::open(root.path()).unwrap();
}

#[test]
fn steps_must_increase() {
    let root = tempfile::tempdir().unwrap();
    let mut m = CheckpointManager::open(root.path()).unwrap();
    save(&mut m, 100, 1.0);
    for step in [100, 50] {
        let bytes = payload(step, 4096);
        let err = m
            .save(
                step,
                [(
                    "w",
                    DType::U8,
                    &[4096usize][..],
                    TensorSource::Bytes(&bytes),
                )],
                &BTreeMap::new(),
                &BTreeMap::new(),
            )
            .unwrap_err();
        assert!(
            matches!(err, Error::CheckpointStep { step: s, newest: 100, .. } if s == step),
            "{err}"
        );
    }
    assert_eq!(steps_of(&m), [100]);
    // Removing the newest allows saving at or below it again; latest follows.
    save(&mut m, 200, 1.0);
    m.remove(200).unwrap();
    assert_eq!(m.latest().unwrap(), Some(100));
    save(&mut m, 150, 1.0);
    assert_eq!(steps_of(&m), [100, 150]);
    assert_eq!(m.latest().unwrap(), Some(150));
}

#[test]
fn resume_skips_corrupt_checkpoints_and_names_them() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut m = CheckpointManager::open(dir).unwrap();
    for step in [100, 200, 300, 400] {
        save(&mut m, step, 1.0);
    }
    // 400: a byte flipped (same size); 300: truncated; 200: manifest not JSON.
    flip_byte(dir, 400);
    let model300 = dir.join(step_name(300)).join("model.safetensors");
    let len = fs::metadata(&model300).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&model300)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    fs::write(dir.join(step_name(200)).join("manifest.json"), b"{not json").unwrap();

    let sizes = m.list(Verify::Sizes).unwrap();
    let valid: Vec<bool> = sizes.iter().map(|e| e.is_valid()).collect();
    assert_eq!(
        valid,
        [true, false, false, true],
        "a flipped byte keeps the size"
    );
    let hashes = m.list(Verify::Hashes).unwrap();
    let reasons: Vec<String> = hashes
        .iter()
        .map(|e| match &e.status {
            CheckpointStatus::Valid(_) => "valid".to_string(),
            CheckpointStatus::Corrupt { reason } => reason.clone(),
        })
        .collect();
    assert_eq!(reasons[0], "valid");
    assert!(reasons[1].starts_with("manifest.json:"), "{}", reasons[1]);
    assert!(
        reasons[2].contains("bytes, the manifest says"),
        "{}",
        reasons[2]
    );
    assert!(reasons[3].contains("sha256"), "{}", reasons[3]);

    let resume = m.resume().unwrap();
    assert_eq!(resume.checkpoint.as_ref().unwrap().step, 100);
    let skipped: Vec<u64> = resume.skipped.iter().map(|e| e.step).collect();
    assert_eq!(skipped, [400, 300, 200]);
    assert!(resume.skipped[0].dir.ends_with("step-00000400"));

    let err = m.verify(400).unwrap_err();
    assert!(matches!(err, Error::CorruptCheckpoint { .. }), "{err}");
    assert!(err.to_string().contains("step-00000400"), "{err}");
    assert!(matches!(m.load(300), Err(Error::CorruptCheckpoint { .. })));
    assert!(matches!(
        m.verify(999),
        Err(Error::CheckpointNotFound {
            step: Some(999),
            ..
        })
    ));
    let (resume, file) = m.load_latest().unwrap();
    assert_eq!(resume.checkpoint.unwrap().step, 100);
    assert_eq!(
        file.bytes(file.tensor("w").unwrap()),
        payload(100, 4096).as_slice()
    );
}

#[test]
fn hostile_manifests_are_corrupt_not_followed() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut m = CheckpointManager::open(dir).unwrap();
    save(&mut m, 1, 1.0);
    let manifest = dir.join(step_name(1)).join("manifest.json");
    let good: serde_json::Value = serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "not allowed",
            Box::new(|v| v["files"][0]["name"] = "../escape".into()),
        ),
        (
            "not allowed",
            Box::new(|v| v["files"][0]["name"] = "/etc/passwd".into()),
        ),
        (
            "64 lowercase hex",
            Box::new(|v| v["files"][0]["sha256"] = "xyz".into()),
        ),
        ("\"step\" is 2", Box::new(|v| v["step"] = 2.into())),
        ("unsupported version", Box::new(|v| v["version"] = 9.into())),
        ("\"format\"", Box::new(|v| v["format"] = "other".into())),
        (
            "model.safetensors is not listed",
            Box::new(|v| v["files"] = serde_json::json!([])),
        ),
        (
            "not a string",
            Box::new(|v| v["metadata"] = serde_json::json!({"k": 1})),
        ),
        (
            "\"bytes\"",
            Box::new(|v| v["files"][0]["bytes"] = (-1).into()),
        ),
    ];
    for (expected, edit) in cases {
        let mut v = good.clone();
        edit(&mut v);
        fs::write(&manifest, serde_json::to_vec(&v).unwrap()).unwrap();
        let err = m.verify(1).unwrap_err();
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
    fs::write(&manifest, serde_json::to_vec(&good).unwrap()).unwrap();
    m.verify(1).unwrap();
}

#[test]
fn prune_applies_the_union_of_the_rules() {
    let root = tempfile::tempdir().unwrap();
    let mut m = CheckpointManager::open(root.path()).unwrap();
    let losses = [0.9, 0.2, 0.8, 0.7, 0.6, 0.5, 0.4, 0.45, 0.35, 0.3];
    for (i, loss) in losses.iter().enumerate() {
        save(&mut m, (i as u64 + 1) * 100, *loss);
    }
    let report = m
        .prune(&Retention {
            keep_last: Some(2),
            keep_every: Some(500),
            keep_best: Some(("loss".into(), 2, false)),
        })
        .unwrap();
    // last 2: 900, 1000; every 500: 500, 1000; best 2 by loss: 200 (0.2), 1000 (0.3).
    assert_eq!(report.kept, [200, 500, 900, 1000]);
    assert_eq!(report.removed, [100, 300, 400, 600, 700, 800]);
    assert_eq!(steps_of(&m), [200, 500, 900, 1000]);
    assert!(report.corrupt.is_empty());
    assert_eq!(m.latest().unwrap(), Some(1000));
    assert!(
        names(root.path())
            .iter()
            .all(|n| !n.starts_with(".mlmf-tmp")),
        "deletes leave no temporary directory"
    );

    let report = m
        .prune(&Retention {
            keep_best: Some(("loss".into(), 1, true)),
            ..Default::default()
        })
        .unwrap();
    // Left: 200 (0.2), 500 (0.6), 900 (0.35), 1000 (0.3); the highest loss is 500's.
    assert_eq!(report.kept, [500, 1000]);
    assert_eq!(steps_of(&m), [500, 1000]);
}

/// The failure of the crate we replace: "keep the last one" kept a newest checkpoint that was
/// corrupt and deleted the only good one.
#[test]
fn prune_never_deletes_the_newest_valid_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut m = CheckpointManager::open(dir).unwrap();
    for step in [100, 200, 300] {
        save(&mut m, step, 1.0);
    }
    flip_byte(dir, 300);
    let report = m
        .prune(&Retention {
            keep_last: Some(1),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        report.kept,
        [200, 300],
        "newest valid and the newer corrupt one"
    );
    assert_eq!(report.removed, [100]);
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].step, 300);
    assert_eq!(m.resume().unwrap().checkpoint.unwrap().step, 200);

    // keep_last = 0 keeps nothing by rule; the newest valid one stays anyway.
    let report = m
        .prune(&Retention {
            keep_last: Some(0),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(report.kept, [200, 300]);
    m.load(200).unwrap();

    // No checkpoint verifies: nothing at all is deleted.
    flip_byte(dir, 200);
    let before = names(dir);
    let err = m.prune(&Retention::default()).unwrap_err();
    assert!(matches!(err, Error::PruneRefused { .. }), "{err}");
    assert!(err.to_string().contains("nothing was deleted"), "{err}");
    assert_eq!(names(dir), before);
}

#[test]
fn leftovers_of_interrupted_saves_are_removed_and_only_ours() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut m = CheckpointManager::open(dir).unwrap();
    save(&mut m, 100, 1.0);
    drop(m);
    // Ours: an interrupted save, an interrupted delete, an interrupted `latest` update.
    let save_tmp = dir.join(".mlmf-tmp-save-step-00000200-4242");
    fs::create_dir(&save_tmp).unwrap();
    fs::write(save_tmp.join(".model.safetensors.tmp-4242"), b"half").unwrap();
    let delete_tmp = dir.join(".mlmf-tmp-delete-step-00000050-4242");
    fs::create_dir(&delete_tmp).unwrap();
    fs::write(dir.join(".latest.tmp-4242"), b"step-").unwrap();
    // Not ours: kept.
    fs::write(dir.join(".mlmf-tmp-but-a-file"), b"x").unwrap();
    fs::create_dir(dir.join("notes")).unwrap();
    fs::create_dir(dir.join("step-1")).unwrap();

    // A reader sees the checkpoint, ignores the rest and removes nothing.
    let reader = CheckpointManager::open_read_only(dir).unwrap();
    assert_eq!(steps_of(&reader), [100]);
    assert!(save_tmp.exists());
    let mut reader = reader;
    let err = reader.prune(&Retention::default()).unwrap_err();
    assert!(
        matches!(err, Error::CheckpointReadOnly { op: "prune", .. }),
        "{err}"
    );
    let bytes = payload(1, 1);
    let err = reader
        .save(
            1000,
            [("w", DType::U8, &[1usize][..], TensorSource::Bytes(&bytes))],
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::CheckpointReadOnly { op: "save", .. }),
        "{err}"
    );

    let m = CheckpointManager::open(dir).unwrap();
    assert_eq!(
        m.cleaned(),
        [
            dir.join(".latest.tmp-4242"),
            delete_tmp.clone(),
            save_tmp.clone()
        ]
    );
    assert_eq!(
        names(dir),
        [
            ".lock",
            ".mlmf-tmp-but-a-file",
            "latest",
            "notes",
            "step-00000100",
            "step-1"
        ]
    );
    assert_eq!(steps_of(&m), [100]);
}

#[test]
fn open_repairs_a_latest_pointer_left_behind() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut m = CheckpointManager::open(dir).unwrap();
    save(&mut m, 100, 1.0);
    save(&mut m, 200, 1.0);
    drop(m);
    // As after a crash between the directory rename and the pointer update.
    fs::write(dir.join("latest"), "step-00000100\n").unwrap();
    let reader = CheckpointManager::open_read_only(dir).unwrap();
    assert_eq!(
        reader.latest().unwrap(),
        Some(100),
        "readers change nothing"
    );
    let m = CheckpointManager::open(dir).unwrap();
    assert_eq!(m.latest().unwrap(), Some(200));
    drop(m);
    fs::write(dir.join("latest"), "garbage").unwrap();
    let reader = CheckpointManager::open_read_only(dir).unwrap();
    assert!(matches!(
        reader.latest(),
        Err(Error::CorruptCheckpoint { .. })
    ));
    let m = CheckpointManager::open(dir).unwrap();
    assert_eq!(m.latest().unwrap(), Some(200));
}

/// Fails after handing over `fail_after` bytes.
struct Failing {
    len: u64,
    fail_after: usize,
}

impl ChunkSource for Failing {
    fn byte_len(&self) -> u64 {
        self.len
    }
    fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8]) -> mlmf::Result<()>) -> mlmf::Result<()> {
        f(&vec![1u8; self.fail_after])?;
        Err(Error::Gpu {
            during: "test readback".into(),
            reason: "source failed mid-tensor".into(),
        })
    }
}

#[test]
fn a_failing_source_leaves_no_temporary_and_the_previous_checkpoint_intact() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut m = CheckpointManager::open(dir).unwrap();
    save(&mut m, 100, 1.0);
    let before = names(dir);
    let model100 = fs::read(dir.join(step_name(100)).join("model.safetensors")).unwrap();
    let src = Failing {
        len: 3 << 20,
        fail_after: 2 << 20,
    };
    let err = m
        .save(
            200,
            [(
                "w",
                DType::U8,
                &[3usize << 20][..],
                TensorSource::Chunks(&src),
            )],
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("source failed mid-tensor"),
        "{err}"
    );
    assert_eq!(
        names(dir),
        before,
        "no temporary directory, no step-00000200"
    );
    assert_eq!(m.latest().unwrap(), Some(100));
    assert_eq!(
        fs::read(dir.join(step_name(100)).join("model.safetensors")).unwrap(),
        model100
    );
    assert_eq!(m.resume().unwrap().checkpoint.unwrap().step, 100);
    // A tensor list the writer rejects fails before anything is created.
    let err = m
        .save(
            200,
            [(
                "w",
                DType::U8,
                &[5usize][..],
                TensorSource::Bytes(&[1, 2, 3]),
            )],
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::ByteLengthMismatch { .. }), "{err}");
    assert_eq!(names(dir), before);
}

/// Tests run as root in CI, where a read-only directory does not stop writes (CAP_DAC_OVERRIDE).
/// Targets that stop root too: a path whose parent is a regular file (ENOTDIR) and a directory
/// in /proc (which accepts no new entries). The read-only directory is checked as well, with the
/// outcome the process's privileges give, which the test first measures.
#[cfg(target_os = "linux")]
#[test]
fn unwritable_targets_are_clear_errors_and_leave_the_previous_file() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("regular-file");
    fs::write(&file, b"not a directory").unwrap();

    let bytes = payload(1, 64);
    let mut w = SafetensorsWriter::new(BTreeMap::new());
    w.add_tensor("w", DType::U8, &[64], &bytes);
    for target in [
        file.join("x.safetensors"),
        "/proc/mlmf-test/x.safetensors".into(),
    ] {
        let err = w.write(&target).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&*target.parent().unwrap().to_string_lossy()),
            "{err}"
        );
    }
    for dir in [file.join("ckpt"), "/proc/mlmf-test-checkpoints".into()] {
        let err = CheckpointManager::open(&dir).err().unwrap();
        assert!(matches!(err, Error::Io { .. }), "{}: {err}", dir.display());
    }
    assert_eq!(fs::read(&file).unwrap(), b"not a directory");

    // A read-only directory holding a previous file.
    let ro = root.path().join("ro");
    fs::create_dir(&ro).unwrap();
    let target = ro.join("model.safetensors");
    fs::write(&target, b"previous").unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    let privileged = fs::write(ro.join("probe"), b"").is_ok();
    let result = w.write(&target);
    if privileged {
        // Permissions do not bind this process; the write goes through, atomically.
        result.unwrap();
        fs::remove_file(ro.join("probe")).unwrap();
        let file = mlmf::ModelFile::open(&target).unwrap();
        assert_eq!(file.bytes(file.tensor("w").unwrap()), bytes.as_slice());
    } else {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"previous");
    }
    assert_eq!(names(&ro), ["model.safetensors"], "no temporary file left");
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
}
