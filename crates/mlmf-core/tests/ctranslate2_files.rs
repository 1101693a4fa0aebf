//! CTranslate2 `model.bin`: the real Whisper tiny.en file against the fixture's layout and an
//! independent numpy reading (`scripts/check_ct2.py`, written from the fixture README's layout
//! description), and hostile files built here: truncated at every byte, absurd counts, ranks,
//! dims and byte counts, unknown dtype codes, bad alias targets, trailing bytes, another spec.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;

use mlmf_core::formats::ctranslate2::{self, KEY_ALIASES, KEY_SPEC, KEY_SPEC_REVISION};
use mlmf_core::{DType, Error, Format, ModelFile};
use sha2::{Digest, Sha256};

fn layout() -> serde_json::Value {
    let path = common::fixtures().join("whisper/model_layout.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn whisper_file_matches_the_fixture_layout() {
    let path = common::model(common::WHISPER_CT2);
    let file = ModelFile::open(&path).unwrap();
    let layout = layout();
    assert_eq!(file.format(), Format::CTranslate2);
    assert_eq!(file.version(), Some(6));
    assert_eq!(ctranslate2::spec(file.metadata()), Some("WhisperSpec"));
    assert_eq!(
        file.metadata().get(KEY_SPEC).unwrap().as_str(),
        layout["spec"].as_str()
    );
    assert_eq!(
        file.metadata().get(KEY_SPEC_REVISION).unwrap().as_u64(),
        layout["spec_revision"].as_u64()
    );
    ctranslate2::expect_spec(&file, "WhisperSpec").unwrap();

    let vars = layout["variables"].as_array().unwrap();
    assert_eq!(vars.len(), 148);
    assert_eq!(layout["num_variables"], 148);
    // The alias is not a tensor of its own: its bytes are stored once.
    assert_eq!(file.tensors().len(), 148);
    let mut odd_f16 = 0;
    for (t, v) in file.tensors().iter().zip(vars) {
        assert_eq!(t.name, v["name"].as_str().unwrap());
        let dims: Vec<usize> = v["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape.dims(), dims.as_slice(), "{}", t.name);
        assert_eq!(
            Format::CTranslate2.dtype_name(t.dtype),
            v["dtype"].as_str().unwrap(),
            "{}",
            t.name
        );
        assert_eq!(
            t.range.start,
            v["data_offset"].as_u64().unwrap(),
            "{}",
            t.name
        );
        assert_eq!(t.byte_len(), v["nbytes"].as_u64().unwrap(), "{}", t.name);
        let sha = format!("{:x}", Sha256::digest(file.bytes(t)));
        assert_eq!(sha, v["sha256"].as_str().unwrap(), "{}", t.name);
        if let Some(value) = v.get("value") {
            let b = file.bytes(t);
            let got = match t.dtype {
                DType::I8 => i64::from(b[0] as i8),
                DType::I16 => i64::from(i16::from_le_bytes([b[0], b[1]])),
                other => panic!("{}: scalar of {other:?}", t.name),
            };
            assert_eq!(got, value.as_i64().unwrap(), "{}", t.name);
        }
        if t.dtype == DType::F16 && t.range.start % 2 == 1 {
            odd_f16 += 1;
        }
    }
    // The README: 74 of the 139 f16 tensors at odd offsets; views must not assume alignment.
    assert_eq!(odd_f16, 74);
    assert_eq!(
        file.tensors()
            .iter()
            .filter(|t| t.dtype == DType::F16)
            .count(),
        139
    );
    let stored: u64 = vars.iter().map(|v| v["nbytes"].as_u64().unwrap()).sum();
    assert_eq!(file.data_bytes(), stored);

    // The alias finds its target's bytes.
    let alias = file.tensor("decoder/projection/weight").unwrap();
    let target = file.tensor("decoder/embeddings/weight").unwrap();
    assert_eq!(alias, target);
    assert_eq!(target.range.start, 187);
    assert_eq!(
        ctranslate2::aliases(file.metadata()),
        [("decoder/projection/weight", "decoder/embeddings/weight")]
    );
    let aliases = file.metadata().get(KEY_ALIASES).unwrap().to_json();
    assert_eq!(aliases, layout["aliases"]);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        layout["file_size"].as_u64().unwrap()
    );
}

#[test]
fn whisper_file_agrees_with_an_independent_reading() {
    let path = common::model(common::WHISPER_CT2);
    let file = ModelFile::open(&path).unwrap();
    // f16 at an odd offset (187), f16 at even offsets, scalars of both integer widths.
    let names = [
        "decoder/embeddings/weight",
        "encoder/conv1/bias",
        "encoder/conv1/weight",
        "decoder/layer_3/attention/linear_1/bias",
        "encoder/num_heads",
        "decoder/activation",
    ];
    let out = Command::new(common::python())
        .arg(common::workspace_dir().join("scripts/check_ct2.py"))
        .arg(&path)
        .args(names)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check_ct2.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let numpy: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(numpy["binary_version"], 6);
    assert_eq!(numpy["spec"], "WhisperSpec");
    let vars = numpy["variables"].as_array().unwrap();
    assert_eq!(vars.len(), file.tensors().len());
    for (t, v) in file.tensors().iter().zip(vars) {
        assert_eq!(t.name, v["name"].as_str().unwrap());
        assert_eq!(t.range.start, v["offset"].as_u64().unwrap(), "{}", t.name);
    }
    let mut odd_checked = false;
    for name in names {
        let t = file.tensor(name).unwrap();
        let b = file.bytes(t);
        let got: Vec<f64> = match t.dtype {
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            DType::I16 => b
                .chunks_exact(2)
                .map(|c| f64::from(i16::from_le_bytes([c[0], c[1]])))
                .collect(),
            DType::I8 => b.iter().map(|&x| f64::from(x as i8)).collect(),
            other => panic!("{name}: {other:?}"),
        };
        // f16 and the integers widen exactly to f32, so the values must be equal, not close;
        // compared as f32, which absorbs JSON's last-digit rounding of an f64.
        let as_f32 = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        let got: Vec<f32> = got.iter().map(|&x| x as f32).collect();
        let head = as_f32(&numpy["values"][name]["head"]);
        let tail = as_f32(&numpy["values"][name]["tail"]);
        assert_eq!(head.len(), got.len().min(4096), "{name}");
        assert!(
            got[..head.len()] == head[..],
            "{name}: first values differ from numpy's"
        );
        assert!(
            got[got.len() - tail.len()..] == tail[..],
            "{name}: last values differ from numpy's"
        );
        odd_checked |= t.range.start % 2 == 1 && t.dtype == DType::F16;
    }
    assert!(odd_checked);
}

#[test]
fn a_model_directory_opens_its_model_bin() {
    let path = common::model(common::WHISPER_CT2);
    let dir = ModelFile::open(path.parent().unwrap()).unwrap();
    assert_eq!(dir.format(), Format::CTranslate2);
    assert_eq!(dir.path(), path);
}

// ---- synthetic files ------------------------------------------------------------------------

/// Offsets of one variable record's fields.
#[derive(Clone, Copy, Debug, Default)]
struct Record {
    start: usize,
    rank: usize,
    dtype: usize,
    nbytes: usize,
    data: usize,
    end: usize,
}

#[derive(Debug, Default)]
struct Built {
    bytes: Vec<u8>,
    count_at: usize,
    records: Vec<Record>,
    alias_count_at: usize,
    alias_target_at: usize,
}

struct Var<'a> {
    name: &'a str,
    dims: &'a [u32],
    /// Type id (version >= 4) or item size (below).
    code: u8,
    data: Vec<u8>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16 + 1).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A CTranslate2 file written the way `model_spec.py` writes one.
fn build(version: u32, spec: &str, vars: &[Var], aliases: &[(&str, &str)]) -> Built {
    let mut b = Built::default();
    let out = &mut b.bytes;
    out.extend_from_slice(&version.to_le_bytes());
    if version >= 2 {
        put_str(out, spec);
        out.extend_from_slice(&7u32.to_le_bytes());
    }
    b.count_at = out.len();
    out.extend_from_slice(&(vars.len() as u32).to_le_bytes());
    for v in vars {
        let mut r = Record {
            start: out.len(),
            ..Record::default()
        };
        put_str(out, v.name);
        r.rank = out.len();
        out.push(v.dims.len() as u8);
        for d in v.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        r.dtype = out.len();
        out.push(v.code);
        r.nbytes = out.len();
        let count = if version >= 4 {
            v.data.len()
        } else {
            v.data.len() / usize::from(v.code)
        };
        out.extend_from_slice(&(count as u32).to_le_bytes());
        r.data = out.len();
        out.extend_from_slice(&v.data);
        r.end = out.len();
        b.records.push(r);
    }
    if version >= 3 {
        b.alias_count_at = out.len();
        out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
        for (alias, target) in aliases {
            put_str(out, alias);
            b.alias_target_at = out.len();
            put_str(out, target);
        }
    }
    b
}

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect()
}

/// A scalar, an f16 matrix at an odd offset, an f32 vector, and an alias of the matrix.
fn sample(version: u32) -> Built {
    let v4 = version >= 4;
    let vars = [
        Var {
            name: "a/scalar",
            dims: &[],
            code: 1, // int8 (type id 1; item size 1)
            data: vec![0xfd],
        },
        Var {
            name: "b/weight",
            dims: &[2, 3],
            code: if v4 { 4 } else { 2 }, // f16; before v4 a 2-byte item is int16
            data: f16_bytes(&[1.0, -2.0, 0.5, 3.25, -0.125, 65504.0]),
        },
        Var {
            name: "c/bias",
            dims: &[2],
            code: if v4 { 0 } else { 4 },
            data: [1.5f32, -7.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        },
    ];
    // A 9-byte spec name puts the f16 data at an odd offset from version 2 on.
    build(version, "TestSpecs", &vars, &[("d/tied", "b/weight")])
}

fn parse(bytes: &[u8]) -> mlmf_core::Result<mlmf_core::formats::Parsed> {
    mlmf_core::formats::parse(bytes, Path::new("t.bin"))
}

#[test]
fn synthetic_files_of_every_version_parse() {
    for version in 1..=6 {
        let b = sample(version);
        let p = parse(&b.bytes).unwrap_or_else(|e| panic!("version {version}: {e}"));
        assert_eq!(p.format, Format::CTranslate2);
        assert_eq!(p.version, Some(version.into()));
        let names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["a/scalar", "b/weight", "c/bias"],
            "version {version}"
        );
        let aliases = ctranslate2::aliases(&p.metadata);
        if version >= 3 {
            assert_eq!(aliases, [("d/tied", "b/weight")]);
        } else {
            assert!(aliases.is_empty());
        }
        let w = &p.tensors[1];
        assert_eq!(w.shape.dims(), &[2, 3]);
        assert_eq!(w.dtype, if version >= 4 { DType::F16 } else { DType::I16 });
        assert_eq!(w.range, b.records[1].data as u64..b.records[1].end as u64);
        if version >= 2 {
            assert_eq!(w.range.start % 2, 1, "the data lies at an odd offset");
        }
        assert_eq!(p.tensors[0].shape.rank(), 0);
        assert_eq!(p.tensors[0].shape.elem_count(), 1);
        assert_eq!(p.tensors[2].dtype, DType::F32);
        assert_eq!(
            p.metadata.get(KEY_SPEC).and_then(|v| v.as_str()),
            (version >= 2).then_some("TestSpecs")
        );
    }
}

#[test]
fn unaligned_f16_view_reads_through_model_file() {
    let b = sample(6);
    let dir = tempfile::tempdir().unwrap();
    // No `.bin` name: detection is by content.
    let path = dir.path().join("weights.data");
    std::fs::write(&path, &b.bytes).unwrap();
    let file = ModelFile::open(&path).unwrap();
    let w = file.tensor("b/weight").unwrap();
    let values: Vec<f32> = file
        .bytes(w)
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    assert_eq!(values, [1.0, -2.0, 0.5, 3.25, -0.125, 65504.0]);
    assert_eq!(file.bytes(file.tensor("d/tied").unwrap()), file.bytes(w));
    assert_eq!(file.bytes(file.tensor("a/scalar").unwrap()), [0xfd]);
    assert!(matches!(
        ctranslate2::expect_spec(&file, "WhisperSpec"),
        Err(Error::WrongSpec { ref found, ref expected, .. }) if found == "TestSpecs" && expected == "WhisperSpec"
    ));
    let msg = ctranslate2::expect_spec(&file, "WhisperSpec")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("weights.data") && msg.contains("TestSpecs"),
        "{msg}"
    );
}

#[test]
fn truncated_at_every_byte_is_a_truncation_error() {
    let b = sample(6);
    for cut in 0..b.bytes.len() {
        let err = match parse(&b.bytes[..cut]) {
            Ok(_) => panic!("cut at {cut} parsed"),
            Err(e) => e,
        };
        if cut < 4 {
            assert!(
                matches!(err, Error::UnknownFormat { .. }),
                "cut {cut}: {err}"
            );
            continue;
        }
        // A count is checked against the bytes left before it sizes anything.
        if let Error::LengthOutOfRange { offset, value, .. } = err {
            assert!(
                (offset == b.count_at as u64 && value == 3)
                    || (offset == b.alias_count_at as u64 && value == 1),
                "cut {cut}: {err}"
            );
            continue;
        }
        let Error::Truncated {
            ref what,
            offset,
            needed,
            available,
            ref path,
        } = err
        else {
            panic!("cut {cut}: {err}");
        };
        assert_eq!(path, Path::new("t.bin"));
        assert_eq!(offset + available, cut as u64, "cut {cut}: {err}");
        assert!(needed > available, "cut {cut}: {err}");
        // A cut after a variable's name names the variable.
        for (r, name) in b.records.iter().zip(["a/scalar", "b/weight", "c/bias"]) {
            if cut >= r.rank && cut < r.end {
                assert!(what.contains(name), "cut {cut}: {err}");
            }
            if cut >= r.data && cut < r.end {
                assert_eq!(what, &format!("variable '{name}' data"));
                assert_eq!(offset, r.data as u64);
            }
        }
    }
}

#[test]
fn absurd_counts_and_sizes_are_refused_before_use() {
    let b = sample(6);
    let patched = |at: usize, bytes: &[u8]| {
        let mut out = b.bytes.clone();
        out[at..at + bytes.len()].copy_from_slice(bytes);
        out
    };
    let w = b.records[1];

    let err = parse(&patched(b.count_at, &u32::MAX.to_le_bytes())).unwrap_err();
    assert!(
        matches!(err, Error::LengthOutOfRange { value, offset, .. } if value == u64::from(u32::MAX) && offset == b.count_at as u64),
        "{err}"
    );
    let err = parse(&patched(b.alias_count_at, &u32::MAX.to_le_bytes())).unwrap_err();
    assert!(
        matches!(err, Error::LengthOutOfRange { ref what, .. } if what == "alias count"),
        "{err}"
    );
    // Rank 255: its dims run past the end of the file.
    let err = parse(&patched(w.rank, &[255])).unwrap_err();
    assert!(
        matches!(err, Error::Truncated { ref what, .. } if what == "variable 'b/weight' dimension"),
        "{err}"
    );
    // Dims whose product overflows: 2^32-1 * 2^32-1 f16 elements.
    let mut dims = b.bytes.clone();
    dims[w.rank + 1..w.rank + 9].copy_from_slice(&[0xff; 8]);
    let err = parse(&dims).unwrap_err();
    assert!(
        matches!(err, Error::BadVariable { ref tensor, offset, .. } if tensor == "b/weight" && offset == w.start as u64),
        "{err}"
    );
    // A dim that disagrees with the byte count.
    let err = parse(&patched(w.rank + 1, &1000u32.to_le_bytes())).unwrap_err();
    assert!(
        matches!(err, Error::BadVariable { ref tensor, offset, .. } if tensor == "b/weight" && offset == w.nbytes as u64),
        "{err}"
    );
    // Byte counts: one too many, one too few, absurd.
    for n in [13u32, 11, u32::MAX] {
        let err = parse(&patched(w.nbytes, &n.to_le_bytes())).unwrap_err();
        assert!(
            matches!(err, Error::BadVariable { ref tensor, offset, ref reason, .. }
                if tensor == "b/weight" && offset == w.nbytes as u64 && reason.contains(&n.to_string())),
            "{n}: {err}"
        );
        assert!(err.to_string().contains("t.bin"));
    }
    // Unknown dtype codes.
    for code in [6u8, 9, 255] {
        let err = parse(&patched(w.dtype, &[code])).unwrap_err();
        assert!(
            matches!(err, Error::UnknownDType { ref tensor, ref dtype, .. }
                if tensor == "b/weight" && dtype.contains(&format!("type id {code} at offset {}", w.dtype))),
            "{code}: {err}"
        );
    }
    // Before version 4 the code is an item size: 3 is none.
    let old = sample(3);
    let mut bad = old.bytes.clone();
    bad[old.records[2].dtype] = 3;
    let err = parse(&bad).unwrap_err();
    assert!(
        matches!(err, Error::UnknownDType { ref dtype, .. } if dtype.contains("item size 3")),
        "{err}"
    );
    // A name length of zero, and a name whose NUL is missing.
    let err = parse(&patched(w.start, &[0, 0])).unwrap_err();
    assert!(
        matches!(err, Error::BadHeader { offset, .. } if offset == w.start as u64),
        "{err}"
    );
    let err = parse(&patched(w.rank - 1, b"x")).unwrap_err();
    assert!(
        matches!(err, Error::BadHeader { offset, .. } if offset == (w.rank - 1) as u64),
        "{err}"
    );
    let err = parse(&patched(w.start + 2, &[0xff])).unwrap_err();
    assert!(matches!(err, Error::BadUtf8 { .. }), "{err}");
    // Version 7 is not detected as CTranslate2; its parser refuses it by name.
    let v7 = patched(0, &7u32.to_le_bytes());
    assert!(matches!(parse(&v7), Err(Error::UnknownFormat { .. })));
    let err = ctranslate2::parse(&v7, Path::new("t.bin")).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedVersion { version: 7, .. }),
        "{err}"
    );
}

#[test]
fn bad_aliases_and_trailing_bytes_are_refused() {
    let b = sample(6);
    let mut bad = b.bytes.clone();
    // "b/weight" -> "b/weighs": no such variable.
    let last = bad.len() - 2;
    bad[last] = b's';
    let err = parse(&bad).unwrap_err();
    assert!(
        matches!(err, Error::BadAlias { ref alias, ref target, offset, .. }
            if alias == "d/tied" && target == "b/weighs" && offset == (b.alias_target_at - 9) as u64),
        "{err}"
    );
    assert!(err.to_string().contains("t.bin"), "{err}");

    // An alias that names an existing variable clashes with it.
    let vars = [Var {
        name: "x",
        dims: &[1],
        code: 1,
        data: vec![1],
    }];
    let clash = build(6, "S", &vars, &[("x", "x")]);
    assert!(matches!(
        parse(&clash.bytes),
        Err(Error::DuplicateTensor { ref tensor, .. }) if tensor == "x"
    ));
    let twice = build(6, "S", &vars, &[("y", "x"), ("y", "x")]);
    assert!(matches!(
        parse(&twice.bytes),
        Err(Error::DuplicateTensor { ref tensor, .. }) if tensor == "y"
    ));
    // Aliases of aliases resolve, as in CTranslate2.
    let chain = build(6, "S", &vars, &[("y", "x"), ("z", "y")]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.bin");
    std::fs::write(&path, &chain.bytes).unwrap();
    let file = ModelFile::open(&path).unwrap();
    assert_eq!(file.tensors().len(), 1);
    assert_eq!(file.tensor("z").unwrap(), file.tensor("x").unwrap());
    assert!(matches!(
        file.tensor("w"),
        Err(Error::TensorNotFound { .. })
    ));

    let mut trailing = b.bytes.clone();
    trailing.push(0);
    let err = parse(&trailing).unwrap_err();
    assert!(
        matches!(err, Error::DataNotCovered { offset, .. } if offset == b.bytes.len() as u64),
        "{err}"
    );
}

#[test]
fn an_empty_model_parses() {
    let b = build(6, "EmptySpec", &[], &[]);
    let p = parse(&b.bytes).unwrap();
    assert!(p.tensors.is_empty());
    assert_eq!(
        p.metadata.get(KEY_SPEC).unwrap().as_str(),
        Some("EmptySpec")
    );
}
