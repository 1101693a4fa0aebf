//! Provenance records and content hashes: the same tensors hash the same in every container and
//! order, writers record the hash they streamed, `mlmf verify` catches a changed byte in data or
//! in a tensor name, and `mlmf lineage` follows parents and says what changed or went missing.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mlmf::checkpoint::{GgufWriter, SafetensorsWriter};
use mlmf::provenance::{
    self, content_hash, read_record, Found, Parent, Provenance, Sha256Hash, Transform,
};
use mlmf::quant::{quantize_file, QuantizeOptions};
use mlmf::{DType, Device, Error, Metadata, ModelFile, Value};
use sha2::{Digest, Sha256};

fn mlmf(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlmf"))
        .args(args)
        .output()
        .unwrap()
}

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect()
}

/// Every tensor's name, dtype, shape and bytes.
type Tensors = Vec<(String, DType, Vec<usize>, Vec<u8>)>;

/// Two small tensors whose names, once a letter changes, stay unique.
fn small_tensors() -> Tensors {
    vec![
        (
            "alpha".into(),
            DType::F32,
            vec![2, 3],
            f32_bytes([1.0, -2.0, 3.5, 0.0, 7.0, -0.25]),
        ),
        (
            "beta".into(),
            DType::F16,
            vec![4],
            f16_bytes(&[0.5, 1.5, -3.0, 8.0]),
        ),
    ]
}

fn write_safetensors(path: &Path, tensors: &Tensors, provenance: Option<Provenance>) {
    let mut w = SafetensorsWriter::new(Default::default());
    for (name, dtype, shape, bytes) in tensors {
        w.add_tensor(name, *dtype, shape, bytes);
    }
    if let Some(p) = provenance {
        w.provenance(p);
    }
    w.write(path).unwrap();
}

fn write_gguf(path: &Path, tensors: &Tensors, metadata: Metadata, provenance: Option<Provenance>) {
    let mut w = GgufWriter::new(metadata);
    for (name, dtype, shape, bytes) in tensors {
        w.add_tensor(name, *dtype, shape, bytes);
    }
    if let Some(p) = provenance {
        w.provenance(p);
    }
    w.write(path).unwrap();
}

fn recorded(path: &Path) -> provenance::Record {
    read_record(&ModelFile::open(path).unwrap())
        .unwrap()
        .expect("a provenance record")
}

fn set_byte(path: &Path, at: usize, value: impl FnOnce(u8) -> u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] = value(bytes[at]);
    std::fs::write(path, bytes).unwrap();
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

/// The hash the module docs define, computed here from the stream written out by hand.
fn hash_by_definition(tensors: &Tensors) -> Sha256Hash {
    let mut sorted: Vec<_> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut stream = Vec::new();
    for (name, dtype, shape, bytes) in sorted {
        stream.extend_from_slice(&(name.len() as u64).to_le_bytes());
        stream.extend_from_slice(name.as_bytes());
        stream.extend_from_slice(&(dtype.name().len() as u64).to_le_bytes());
        stream.extend_from_slice(dtype.name().as_bytes());
        stream.extend_from_slice(&(shape.len() as u64).to_le_bytes());
        for &d in shape {
            stream.extend_from_slice(&(d as u64).to_le_bytes());
        }
        stream.extend_from_slice(&Sha256::digest(bytes));
    }
    Sha256Hash(Sha256::digest(&stream).into())
}

/// The real MiniLM checkpoint rewritten as GGUF (tensors in reverse order) and as safetensors:
/// all three hash the same, both writers record that hash, and gguf-py reads the record.
#[test]
fn same_tensors_hash_the_same_as_safetensors_and_gguf() {
    let src = ModelFile::open(common::model(common::MINILM)).unwrap();
    let tensors: Tensors = src
        .tensors()
        .iter()
        .map(|t| {
            let bytes = src.bytes(t).to_vec();
            (t.name.clone(), t.dtype, t.shape.dims().to_vec(), bytes)
        })
        .collect();
    let expected = content_hash(&src).unwrap();
    assert_eq!(expected, hash_by_definition(&tensors));

    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("minilm.gguf");
    let st = dir.path().join("minilm.safetensors");
    let reversed: Tensors = tensors.iter().rev().cloned().collect();
    let p = Provenance {
        parents: vec![Parent::of(&src).unwrap()],
        transforms: vec![Transform::Convert {
            from: "safetensors".into(),
            to: "gguf".into(),
        }],
    };
    write_gguf(&gguf, &reversed, Metadata::default(), Some(p.clone()));
    write_safetensors(&st, &tensors, Some(p));
    for path in [&gguf, &st] {
        let file = ModelFile::open(path).unwrap();
        assert_eq!(content_hash(&file).unwrap(), expected, "{}", path.display());
        let record = recorded(path);
        assert_eq!(record.content_hash, expected, "{}", path.display());
        assert_eq!(record.parents[0].content_hash, expected);
        provenance::verify(&file).unwrap().check().unwrap();
    }
    // gguf-py reads the file and the record as a string KV, last, byte for byte.
    let py = common::gguf_py(&gguf);
    let kv = py["kv"].as_array().unwrap();
    let last = kv.last().unwrap();
    assert_eq!(last["key"], provenance::KEY);
    assert_eq!(last["value"]["type"], "STRING");
    let file = ModelFile::open(&gguf).unwrap();
    assert_eq!(
        last["value"]["value"].as_str(),
        file.metadata().get(provenance::KEY).and_then(Value::as_str)
    );
    assert_eq!(py["tensors"].as_array().unwrap().len(), tensors.len());
}

/// A PyTorch zip with strided views (`w_t` is `w` transposed) hashes like its row-major copy.
#[test]
fn strided_pytorch_views_hash_in_row_major_order() {
    let pt = ModelFile::open(
        common::workspace_dir().join("crates/mlmf-core/tests/data/pytorch_zip_dtypes.pt"),
    )
    .unwrap();
    assert!(pt.tensors().iter().any(|t| !t.is_contiguous()));
    let tensors: Tensors = pt
        .tensors()
        .iter()
        .map(|t| {
            let bytes = Device::Cpu.load(&pt, &t.name).unwrap().to_bytes().unwrap();
            (t.name.clone(), t.dtype, t.shape.dims().to_vec(), bytes)
        })
        .collect();
    let w_t = tensors.iter().find(|t| t.0 == "w_t").unwrap();
    let by_hand = [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11].map(|v| v as f32);
    assert_eq!(w_t.3, f32_bytes(by_hand));
    assert_eq!(content_hash(&pt).unwrap(), hash_by_definition(&tensors));
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("copy.safetensors");
    write_safetensors(&st, &tensors, Some(Provenance::default()));
    assert_eq!(recorded(&st).content_hash, content_hash(&pt).unwrap());
}

/// Writers without `provenance` write no record; the record never changes the tensors.
#[test]
fn the_record_is_opt_in_and_lives_in_the_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = small_tensors();
    let plain = dir.path().join("plain.gguf");
    let with = dir.path().join("with.gguf");
    let meta = Metadata {
        entries: vec![
            ("general.name".into(), Value::String("x".into())),
            // A stale record carried from a parent is replaced in place.
            (provenance::KEY.into(), Value::String("stale".into())),
            ("z".into(), Value::U32(1)),
        ],
    };
    write_gguf(&plain, &tensors, meta.clone(), None);
    write_gguf(&with, &tensors, meta, Some(Provenance::default()));
    let plain = ModelFile::open(&plain).unwrap();
    assert_eq!(
        plain.metadata().get(provenance::KEY),
        Some(&Value::String("stale".into()))
    );
    let with_file = ModelFile::open(&with).unwrap();
    let keys: Vec<&str> = with_file.metadata().iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["general.name", provenance::KEY, "z"]);
    let record = recorded(&with);
    assert_eq!(record.version, 1);
    assert_eq!(record.content_hash, hash_by_definition(&tensors));
    assert_eq!(record.tool, format!("mlmf {}", env!("CARGO_PKG_VERSION")));
    assert!(record.parents.is_empty() && record.transforms.is_empty());
    // RFC 3339 UTC to the second: 2025-01-31T12:00:00Z.
    let t = record.time.as_bytes();
    assert_eq!((t.len(), t[4], t[10], t[19]), (20, b'-', b'T', b'Z'));
    for (a, b) in plain.tensors().iter().zip(with_file.tensors()) {
        assert_eq!(plain.bytes(a), with_file.bytes(b));
    }

    let st = dir.path().join("plain.safetensors");
    write_safetensors(&st, &tensors, None);
    let err = provenance::verify(&ModelFile::open(&st).unwrap())
        .unwrap()
        .check()
        .unwrap_err();
    assert!(matches!(err, Error::NoProvenance { .. }), "{err}");
    let out = mlmf(&[Path::new("verify"), &st]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no provenance record"), "{stderr}");
}

/// Flip one byte in the data section, or one letter of a tensor name in the header (the file
/// still parses), in both containers: `verify` reports the mismatch and exits non-zero.
#[test]
fn verify_catches_a_changed_data_byte_and_a_changed_name() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = small_tensors();
    for ext in ["safetensors", "gguf"] {
        let path = dir.path().join(format!("m.{ext}"));
        let write = |path: &Path| match ext {
            "gguf" => write_gguf(
                path,
                &tensors,
                Metadata::default(),
                Some(Provenance::default()),
            ),
            _ => write_safetensors(path, &tensors, Some(Provenance::default())),
        };
        write(&path);
        let out = mlmf(&[Path::new("verify"), &path]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{ext}: {stdout}");
        assert!(stdout.contains("OK"), "{stdout}");

        // A byte of `beta`'s data.
        let at = {
            let file = ModelFile::open(&path).unwrap();
            file.tensor("beta").unwrap().range.start as usize + 3
        };
        set_byte(&path, at, |b| b ^ 0x01);
        let file = ModelFile::open(&path).unwrap();
        let err = provenance::verify(&file).unwrap().check().unwrap_err();
        assert!(
            matches!(err, Error::ContentHashMismatch { .. }),
            "{ext}: {err}"
        );
        drop(file);
        let out = mlmf(&[Path::new("verify"), &path]);
        assert!(!out.status.success(), "{ext}: data flip not reported");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("differs from the recorded"), "{stderr}");

        // `alpha` -> `alphb` in the header.
        write(&path);
        let bytes = std::fs::read(&path).unwrap();
        let name_at = match ext {
            "gguf" => find(&bytes, b"\x05\0\0\0\0\0\0\0alpha") + 8 + 4,
            _ => find(&bytes, b"\"alpha\":{") + 5,
        };
        set_byte(&path, name_at, |_| b'b');
        let file = ModelFile::open(&path).unwrap();
        assert!(
            file.tensor("alphb").is_ok(),
            "{ext}: the name did not change"
        );
        let err = provenance::verify(&file).unwrap().check().unwrap_err();
        assert!(
            matches!(err, Error::ContentHashMismatch { .. }),
            "{ext}: {err}"
        );
        drop(file);
        let out = mlmf(&[Path::new("verify"), &path]);
        assert!(!out.status.success(), "{ext}: name flip not reported");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("differs from the recorded"), "{stderr}");
    }
}

fn quantize(input: &Path, output: &Path, dtype: DType) {
    let file = ModelFile::open(input).unwrap();
    let options = QuantizeOptions {
        dtype,
        keep: Vec::new(),
    };
    quantize_file(&file, output, &options, &mut |_| {}).unwrap();
}

fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path).unwrap().display().to_string()
}

/// a.safetensors (no record) -> b.gguf (Q8_0) -> c.gguf (Q4_0): the lineage of c names both,
/// then says when a's bytes changed, when b is gone, and where the depth limit stopped it.
#[test]
fn lineage_follows_parents_and_reports_changes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.gguf");
    let c = dir.path().join("c.gguf");
    let w: Vec<f32> = (0..4 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
    let tensors: Tensors = vec![
        ("w".into(), DType::F32, vec![4, 64], f32_bytes(w)),
        (
            "n".into(),
            DType::F32,
            vec![4],
            f32_bytes([1.0, 2.0, 3.0, 4.0]),
        ),
    ];
    write_safetensors(&a, &tensors, None);
    quantize(&a, &b, DType::Q8_0);
    quantize(&b, &c, DType::Q4_0);
    let (rb, rc) = (recorded(&b), recorded(&c));
    assert_eq!(rb.parents[0].path, canonical(&a));
    assert_eq!(rb.parents[0].content_hash, hash_by_definition(&tensors));
    // b has a record: c names b by the hash b's record states.
    assert_eq!(rc.parents[0].path, canonical(&b));
    assert_eq!(rc.parents[0].content_hash, rb.content_hash);
    assert_eq!(
        rc.transforms,
        [Transform::Quantize {
            dtype: "Q4_0".into()
        }]
    );

    let root = provenance::lineage(&c, 16).unwrap();
    assert_eq!(root.matches(), Some(true));
    let nb = &root.parents[0];
    assert_eq!((nb.matches(), nb.record.is_some()), (Some(true), true));
    let na = &nb.parents[0];
    assert_eq!((na.matches(), na.record.is_none()), (Some(true), true));
    assert!(na.parents.is_empty());
    let out = mlmf(&[Path::new("lineage"), &c]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("(matches)").count(), 3, "{text}");
    assert!(text.contains("transform: quantize to Q8_0"), "{text}");
    assert!(text.contains("no provenance record"), "{text}");

    let shallow = provenance::lineage(&c, 1).unwrap();
    assert!(shallow.parents[0].parents.is_empty());
    assert_eq!(
        shallow.parents[0].stopped.as_deref(),
        Some("depth limit reached")
    );

    // a's bytes change: its node no longer matches what b recorded.
    let mut changed = tensors.clone();
    changed[1].3 = f32_bytes([1.0, 2.0, 3.0, 5.0]);
    write_safetensors(&a, &changed, None);
    let root = provenance::lineage(&c, 16).unwrap();
    let na = &root.parents[0].parents[0];
    assert_eq!(na.matches(), Some(false));
    let out = mlmf(&[Path::new("lineage"), &c]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("HASH NO LONGER MATCHES"), "{text}");

    // b is gone.
    std::fs::remove_file(&b).unwrap();
    let root = provenance::lineage(&c, 16).unwrap();
    assert_eq!(root.parents[0].found, Found::Missing);
    let out = mlmf(&[Path::new("lineage"), &c]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MISSING"), "{text}");
}

/// Relative parent paths (written by other tools) are taken from the child's directory.
#[test]
fn relative_parent_paths_resolve_beside_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let tensors = small_tensors();
    let parent = sub.join("p.safetensors");
    write_safetensors(&parent, &tensors, None);
    let child = sub.join("c.safetensors");
    let p = Provenance {
        parents: vec![Parent {
            path: "p.safetensors".into(),
            content_hash: hash_by_definition(&tensors),
        }],
        transforms: vec![],
    };
    write_safetensors(&child, &tensors, Some(p));
    let node = provenance::lineage(&child, 4).unwrap();
    assert_eq!(
        node.parents[0].path,
        PathBuf::from(&sub).join("p.safetensors")
    );
    assert_eq!(node.parents[0].matches(), Some(true));
}

/// A record that is not JSON, or from a later version, is a typed error naming the file; as a
/// parent it stops the lineage there, with the reason.
#[test]
fn unreadable_records_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = small_tensors();
    for (text, says) in [
        ("not json", "not JSON"),
        (r#"{"version":2}"#, "version 2"),
        (r#"{"version":1,"content_hash":"sha256:12"}"#, "sha256"),
    ] {
        let path = dir.path().join("bad.gguf");
        let meta = Metadata {
            entries: vec![(provenance::KEY.into(), Value::String(text.into()))],
        };
        write_gguf(&path, &tensors, meta, None);
        let err = provenance::verify(&ModelFile::open(&path).unwrap()).unwrap_err();
        assert!(matches!(err, Error::BadProvenance { .. }), "{err}");
        assert!(err.to_string().contains(says), "{err}");
        let out = mlmf(&[Path::new("verify"), &path]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");

        // As a parent: named by its tensors' hash, and not followed.
        let child = dir.path().join("child.safetensors");
        let parent = Parent::of(&ModelFile::open(&path).unwrap()).unwrap();
        assert_eq!(parent.content_hash, hash_by_definition(&tensors));
        let p = Provenance {
            parents: vec![parent],
            transforms: vec![],
        };
        write_safetensors(&child, &tensors, Some(p));
        let node = provenance::lineage(&child, 4).unwrap();
        assert_eq!(node.parents[0].matches(), Some(true));
        let stopped = node.parents[0].stopped.as_deref().unwrap_or_default();
        assert!(stopped.contains(says), "{stopped}");
    }
}

#[path = "../../../tests/common/views.rs"]
mod views;

/// 0-d tensors keep their rank through GGUF, which stores them as `[1]`: the PyTorch views and
/// scalars file converted to GGUF hashes as the definition says for the original shapes (rank
/// 0 for the scalars), the record says so, and `verify` of the GGUF file agrees.
#[test]
fn scalars_hash_as_0d_through_gguf() {
    let tensors: Tensors = views::expected()
        .into_iter()
        .map(|e| {
            let dtype = DType::from_safetensors(e.dtype).unwrap();
            (e.name.to_string(), dtype, e.shape, e.bytes)
        })
        .collect();
    let want = hash_by_definition(&tensors);
    let pt = ModelFile::open(views::path()).unwrap();
    assert_eq!(content_hash(&pt).unwrap(), want);
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("views.gguf");
    let options = mlmf::checkpoint::ConvertOptions::default();
    mlmf::checkpoint::convert_file(&pt, &gguf, &options, &mut |_| {}).unwrap();
    assert_eq!(recorded(&gguf).content_hash, want);
    let written = ModelFile::open(&gguf).unwrap();
    assert_eq!(content_hash(&written).unwrap(), want);
    provenance::verify(&written).unwrap().check().unwrap();
    let out = mlmf(&[Path::new("verify"), &gguf]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
