//! The GGUF writer, checked by reading what it wrote back with our reader and with gguf-py 0.19.0
//! (`scripts/check_gguf.py`, run with `$MLMF_PYTHON`, the venv `scripts/test.sh` makes).

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::cell::Cell;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use mlmf::checkpoint::{ChunkSource, GgufWriter, TensorSource};
use mlmf::{DType, Device, Error, Format, GpuOptions, Metadata, ModelFile, Value};
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

// ---- gguf-py -------------------------------------------------------------------------------------

/// A metadata value as `check_gguf.py` prints it: GGUF type names, floats as bit patterns, and
/// an empty array with the element type the writer gives it (string).
fn typed(value: &Value) -> Json {
    let ty = type_name(value);
    match value {
        Value::U8(v) => json!({"type": ty, "value": v}),
        Value::I8(v) => json!({"type": ty, "value": v}),
        Value::U16(v) => json!({"type": ty, "value": v}),
        Value::I16(v) => json!({"type": ty, "value": v}),
        Value::U32(v) => json!({"type": ty, "value": v}),
        Value::I32(v) => json!({"type": ty, "value": v}),
        Value::U64(v) => json!({"type": ty, "value": v}),
        Value::I64(v) => json!({"type": ty, "value": v}),
        Value::F32(v) => json!({"type": ty, "bits": v.to_bits()}),
        Value::F64(v) => json!({"type": ty, "bits": v.to_bits()}),
        Value::Bool(v) => json!({"type": ty, "value": v}),
        Value::String(v) => json!({"type": ty, "value": v}),
        Value::Array(items) => json!({
            "type": ty,
            "elem": items.first().map_or("STRING", type_name),
            "items": items.iter().map(typed).collect::<Vec<_>>(),
        }),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::U8(_) => "UINT8",
        Value::I8(_) => "INT8",
        Value::U16(_) => "UINT16",
        Value::I16(_) => "INT16",
        Value::U32(_) => "UINT32",
        Value::I32(_) => "INT32",
        Value::U64(_) => "UINT64",
        Value::I64(_) => "INT64",
        Value::F32(_) => "FLOAT32",
        Value::F64(_) => "FLOAT64",
        Value::Bool(_) => "BOOL",
        Value::String(_) => "STRING",
        Value::Array(_) => "ARRAY",
    }
}

// ---- what a file should hold -----------------------------------------------------------------------

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One tensor as written: the digest of its bytes rather than the bytes.
struct Expect {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    n_bytes: u64,
    sha256: String,
}

impl Expect {
    fn new(name: &str, dtype: DType, shape: &[usize], bytes: &[u8]) -> Expect {
        Expect {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            n_bytes: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        }
    }
}

/// Values equal, floats compared by bit pattern (so NaN equals itself and -0.0 differs from 0).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        _ => a == b,
    }
}

/// Read `path` with our reader and with gguf-py and check that both see `metadata` (in order,
/// every value with its type) and `tensors` (in order: name, type, shape, bytes), and that the
/// data is laid out as gguf-py and llama.cpp lay it out: the data section and every tensor at a
/// multiple of `alignment`, each tensor right after the previous one's padded end, the file
/// ending with the last tensor's padding.
fn check_file(path: &Path, metadata: &Metadata, tensors: &[Expect], alignment: u64) {
    // Our reader.
    let file = ModelFile::open(path).unwrap();
    assert_eq!(file.format(), Format::Gguf);
    assert_eq!(file.version(), Some(3));
    let read = file.metadata();
    assert_eq!(read.len(), metadata.len());
    for ((k1, v1), (k2, v2)) in read.iter().zip(metadata.iter()) {
        assert_eq!(k1, k2);
        assert!(same_value(v1, v2), "{k1}: read {v1:?}, wrote {v2:?}");
    }
    assert_eq!(file.tensors().len(), tensors.len());
    for (t, e) in file.tensors().iter().zip(tensors) {
        assert_eq!(t.name, e.name);
        assert_eq!(t.dtype, e.dtype, "{}", e.name);
        assert_eq!(t.shape.dims(), &e.shape[..], "{}", e.name);
        assert_eq!(t.byte_len(), e.n_bytes, "{}", e.name);
        assert_eq!(sha256_hex(file.bytes(t)), e.sha256, "{}", e.name);
    }

    // gguf-py.
    let py = common::gguf_py(path);
    assert_eq!(py["version"], 3);
    assert_eq!(py["alignment"], alignment);
    let kv: Vec<Json> = metadata
        .iter()
        .map(|(k, v)| json!({"key": k, "value": typed(v)}))
        .collect();
    assert!(
        py["kv"] == Json::Array(kv.clone()),
        "gguf-py reads different metadata:\n{}\nwrote:\n{}",
        py["kv"],
        Json::Array(kv)
    );
    let py_tensors = py["tensors"].as_array().unwrap();
    assert_eq!(py_tensors.len(), tensors.len());
    let data_offset = py["data_offset"].as_u64().unwrap();
    assert_eq!(data_offset % alignment, 0);
    let mut next = data_offset;
    for ((p, e), t) in py_tensors.iter().zip(tensors).zip(file.tensors()) {
        let ne: Vec<u64> = e.shape.iter().rev().map(|&d| d as u64).collect();
        assert_eq!(p["name"], e.name.as_str());
        assert_eq!(p["type"], e.dtype.name(), "{}", e.name);
        assert_eq!(p["ne"], json!(ne), "{}", e.name);
        assert_eq!(p["n_bytes"], e.n_bytes, "{}", e.name);
        assert_eq!(p["sha256"], e.sha256.as_str(), "{}", e.name);
        assert_eq!(p["offset"], t.range.start, "{}", e.name);
        assert_eq!(
            t.range.start, next,
            "{}: not right after the previous tensor",
            e.name
        );
        next = (t.range.end).next_multiple_of(alignment);
    }
    assert_eq!(py["file_size"], next);
    assert_eq!(std::fs::metadata(path).unwrap().len(), next);

    // Every padding byte is zero: before the data section and after each tensor.
    let header_end = py["header_end"].as_u64().unwrap();
    assert!(header_end <= data_offset && data_offset - header_end < alignment);
    let gaps: Vec<std::ops::Range<u64>> = std::iter::once(header_end..data_offset)
        .chain(
            file.tensors()
                .iter()
                .map(|t| t.range.end..t.range.end.next_multiple_of(alignment)),
        )
        .collect();
    let mut f = std::fs::File::open(path).unwrap();
    for gap in gaps {
        let mut buf = vec![0xaa; (gap.end - gap.start) as usize];
        f.seek(SeekFrom::Start(gap.start)).unwrap();
        f.read_exact(&mut buf).unwrap();
        assert!(
            buf.iter().all(|&b| b == 0),
            "padding at {gap:?} is not zero"
        );
    }
}

/// The names in `dir`: after a write, only the files that should be there (no temporary file).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn meta(entries: Vec<(&str, Value)>) -> Metadata {
    Metadata {
        entries: entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

fn quant_oracle() -> ModelFile {
    ModelFile::open(common::fixtures().join("quant/quant_oracle.gguf")).unwrap()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

// ---- round trips -----------------------------------------------------------------------------------

/// All 13 value types, as scalars and as arrays, their extremes, NaN and -0.0, empty and unicode
/// strings and keys, empty arrays, arrays of arrays (with different inner types, empty inner
/// arrays, three levels).
fn every_value_type() -> Metadata {
    use Value::*;
    meta(vec![
        ("general.architecture", String("writer-test".into())),
        ("u8", U8(u8::MAX)),
        ("i8", I8(i8::MIN)),
        ("u16", U16(u16::MAX)),
        ("i16", I16(i16::MIN)),
        ("u32", U32(u32::MAX)),
        ("i32", I32(i32::MIN)),
        ("u64", U64(u64::MAX)),
        ("i64", I64(i64::MIN)),
        ("f32", F32(std::f32::consts::PI)),
        ("f32.nan", F32(f32::from_bits(0x7fc0_1234))),
        ("f32.neg_inf", F32(f32::NEG_INFINITY)),
        ("f32.neg_zero", F32(-0.0)),
        ("f32.subnormal", F32(f32::from_bits(1))),
        ("f64", F64(std::f64::consts::E)),
        ("f64.nan", F64(f64::NAN)),
        ("f64.min_positive", F64(f64::MIN_POSITIVE)),
        ("bool.true", Bool(true)),
        ("bool.false", Bool(false)),
        ("string", String("plain".into())),
        ("string.empty", String(std::string::String::new())),
        ("string.unicode", String("héllo wörld ✓ 日本語 🦀".into())),
        ("string.nul", String("a\0b".into())),
        ("unicode.ключ.🔑", String("key is unicode".into())),
        ("arr.u8", Array(vec![U8(0), U8(255)])),
        ("arr.i8", Array(vec![I8(-1), I8(127)])),
        ("arr.u16", Array(vec![U16(1), U16(65535)])),
        ("arr.i16", Array(vec![I16(-2), I16(3)])),
        ("arr.u32", Array(vec![U32(7)])),
        ("arr.i32", Array(vec![I32(-7), I32(0), I32(i32::MAX)])),
        ("arr.u64", Array(vec![U64(u64::MAX), U64(0)])),
        ("arr.i64", Array(vec![I64(i64::MIN), I64(1)])),
        ("arr.f32", Array(vec![F32(1.5), F32(f32::NAN), F32(-0.0)])),
        ("arr.f64", Array(vec![F64(-1e300), F64(f64::INFINITY)])),
        ("arr.bool", Array(vec![Bool(true), Bool(false), Bool(true)])),
        ("arr.string", strings(&["", "a", "ü ✓ 🦀"])),
        ("arr.empty", Array(vec![])),
        (
            "arr.nested",
            Array(vec![strings(&["a", "b"]), Array(vec![]), strings(&["c"])]),
        ),
        (
            "arr.nested.mixed_inner_types",
            Array(vec![Array(vec![U8(1)]), Array(vec![F64(2.0), F64(3.0)])]),
        ),
        (
            "arr.nested.three_levels",
            Array(vec![
                Array(vec![Array(vec![I32(1), I32(2)])]),
                Array(vec![]),
            ]),
        ),
        (
            "arr.nested.empty",
            Array(vec![Array(vec![]), Array(vec![])]),
        ),
    ])
}

#[test]
fn every_value_type_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("values.gguf");
    let metadata = every_value_type();
    let weights = f32_bytes(&[1.0, -2.0, 3.5]);
    let mut w = GgufWriter::new(metadata.clone());
    w.add_tensor("weights", DType::F32, &[3], &weights);
    w.write(&path).unwrap();
    check_file(
        &path,
        &metadata,
        &[Expect::new("weights", DType::F32, &[3], &weights)],
        32,
    );
    assert_eq!(listing(dir.path()), ["values.gguf"]);
}

/// Tensors of several dtypes and odd byte lengths under alignments 1 and 64 (and the default 32,
/// which adds no key): raw bytes from the quantization oracle through zero-copy views.
#[test]
fn alignments_and_dtypes() {
    let oracle = quant_oracle();
    let f32s = f32_bytes(&[0.5, -1.25, 3.0]);
    let f32_2d = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let i8s: Vec<u8> = (0..7).collect();
    for alignment in [None, Some(1u32), Some(64)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aligned.gguf");
        let mut entries = vec![("general.architecture", Value::String("test".into()))];
        if let Some(a) = alignment {
            entries.push(("general.alignment", Value::U32(a)));
        }
        let metadata = meta(entries);
        let mut tensors: Vec<(String, DType, Vec<usize>, &[u8])> =
            vec![("odd.f32".into(), DType::F32, vec![3], &f32s[..])];
        for name in ["F16", "Q4_0", "Q6_K"] {
            let info = oracle.tensor(name).unwrap();
            let shape = info.shape.dims().to_vec();
            tensors.push((
                format!("oracle.{name}"),
                info.dtype,
                shape,
                oracle.bytes(info),
            ));
        }
        tensors.push(("odd.i8".into(), DType::I8, vec![7], &i8s[..]));
        tensors.push(("f32.2d".into(), DType::F32, vec![2, 3], &f32_2d[..]));
        let mut w = GgufWriter::new(metadata.clone());
        let mut expect = Vec::new();
        for (name, dtype, shape, bytes) in &tensors {
            w.add_tensor(name.as_str(), *dtype, shape, *bytes);
            expect.push(Expect::new(name, *dtype, shape, bytes));
        }
        w.write(&path).unwrap();
        let a = alignment.map_or(32, u64::from);
        check_file(&path, &metadata, &expect, a);
        // With alignment 1 there is no padding anywhere.
        if a == 1 {
            let len = std::fs::metadata(&path).unwrap().len();
            let data: u64 = expect.iter().map(|e| e.n_bytes).sum();
            let file = ModelFile::open(&path).unwrap();
            assert_eq!(len, file.tensors()[0].range.start + data);
        }
    }
}

/// Tensors written from GPU memory, read back through a small staging window so that they
/// arrive in several chunks; and one from the CPU device.
#[test]
fn gpu_tensor_source() {
    let gpu = Device::gpu_with(&GpuOptions {
        max_page_bytes: Some(4096),
        staging_bytes: 16384,
        ..Default::default()
    })
    .expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    let oracle = quant_oracle();
    let names = ["F16", "Q4_0", "Q6_K", "Q8_0"];
    let on_gpu = gpu.load_list(&oracle, &names).unwrap();
    let on_cpu = Device::Cpu.load(&oracle, "Q4_K").unwrap();
    assert!(on_gpu.iter().all(|t| t.device().is_gpu()));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("from_gpu.gguf");
    let metadata = meta(vec![("general.architecture", Value::String("gpu".into()))]);
    let mut w = GgufWriter::new(metadata.clone());
    let mut expect = Vec::new();
    for t in on_gpu.iter().chain([&on_cpu]) {
        w.add_tensor(t.name(), t.dtype(), t.shape().dims(), t);
        let info = oracle.tensor(t.name()).unwrap();
        expect.push(Expect::new(
            t.name(),
            t.dtype(),
            t.shape().dims(),
            oracle.bytes(info),
        ));
    }
    w.write(&path).unwrap();
    check_file(&path, &metadata, &expect, 32);
}

#[test]
fn zero_tensors() {
    let dir = tempfile::tempdir().unwrap();

    // Nothing at all: the 24-byte header padded to 32, as gguf-py and llama.cpp write it.
    let empty = dir.path().join("empty.gguf");
    GgufWriter::new(Metadata::default()).write(&empty).unwrap();
    check_file(&empty, &Metadata::default(), &[], 32);
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 32);

    // Metadata only, with its alignment: the file ends at the padded data section.
    let metadata = meta(vec![
        ("general.architecture", Value::String("none".into())),
        ("general.alignment", Value::U32(64)),
    ]);
    let only_meta = dir.path().join("meta.gguf");
    GgufWriter::new(metadata.clone()).write(&only_meta).unwrap();
    check_file(&only_meta, &metadata, &[], 64);
}

/// Streams of two files compared chunk by chunk; the offset of the first difference, if any.
fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    let mut fa = std::fs::File::open(a).unwrap();
    let mut fb = std::fs::File::open(b).unwrap();
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut pos = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if let Some(i) = (0..na.min(nb)).find(|&i| ba[i] != bb[i]) {
            return Some(pos + i as u64);
        }
        if na != nb {
            return Some(pos + na.min(nb) as u64);
        }
        if na == 0 {
            return None;
        }
        pos += na as u64;
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// `model` from the cache, rewritten from zero-copy views of its own tensors into a temporary
/// directory, which is returned with the original and the rewrite's path.
fn rewrite(model: &str) -> (ModelFile, PathBuf, tempfile::TempDir, PathBuf) {
    let original = common::model(model);
    let file = ModelFile::open(&original).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rewrite.gguf");
    let mut w = GgufWriter::new(file.metadata().clone());
    for t in file.tensors() {
        w.add_tensor(&t.name, t.dtype, t.shape.dims(), file.bytes(t));
    }
    w.write(&path).unwrap();
    (file, original, dir, path)
}

/// The real SmolLM2 file, rewritten: every metadata value and tensor byte equal (our reader and
/// gguf-py), and the whole file byte for byte identical, because its writer (llama.cpp) lays
/// files out exactly as we do.
#[test]
fn smollm2_rewrite_is_byte_identical() {
    let (file, original, _dir, path) = rewrite(common::SMOLLM2);
    assert_eq!(
        first_difference(&original, &path),
        None,
        "the rewrite differs from the original"
    );
    let expect: Vec<Expect> = file
        .tensors()
        .iter()
        .map(|t| Expect::new(&t.name, t.dtype, t.shape.dims(), file.bytes(t)))
        .collect();
    check_file(&path, file.metadata(), &expect, 32);
}

/// gemma-3 (253 MB, 8 bytes of header padding, f32 and string arrays) rewritten: byte for byte
/// identical too. gguf-py is left out here: check_gguf.py spends about 45 s on its 262144-entry
/// token, score and type arrays.
#[test]
fn gemma3_rewrite_is_byte_identical() {
    let (_file, original, _dir, path) = rewrite(common::GEMMA3);
    assert_eq!(
        first_difference(&original, &path),
        None,
        "the rewrite differs from the original"
    );
}

// ---- bad input -------------------------------------------------------------------------------------

/// Write `w` into a fresh directory; the error, after checking that nothing was left there.
fn write_err(w: &GgufWriter<'_>) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let err = w.write(dir.path().join("bad.gguf")).unwrap_err();
    assert_eq!(listing(dir.path()), Vec::<String>::new(), "{err}");
    err
}

#[test]
fn duplicate_tensor_names() {
    let bytes = f32_bytes(&[1.0]);
    let mut w = GgufWriter::new(Metadata::default());
    w.add_tensor("a", DType::F32, &[1], &bytes)
        .add_tensor("b", DType::F32, &[1], &bytes)
        .add_tensor("a", DType::F32, &[1], &bytes);
    let err = write_err(&w);
    assert!(
        matches!(&err, Error::DuplicateTensor { tensor, .. } if tensor == "a"),
        "{err}"
    );
}

#[test]
fn byte_length_mismatch() {
    let bytes = f32_bytes(&[1.0, 2.0]);
    let mut w = GgufWriter::new(Metadata::default());
    w.add_tensor("short", DType::F32, &[3], &bytes);
    let err = write_err(&w);
    assert!(
        matches!(
            &err,
            Error::ByteLengthMismatch { tensor, expected: 12, found: 8, .. } if tensor == "short"
        ),
        "{err}"
    );

    // The same bytes read as Q4_0 (18 bytes per 32 elements) under a 64-element shape.
    let q = vec![0u8; 18];
    let mut w = GgufWriter::new(Metadata::default());
    w.add_tensor("q", DType::Q4_0, &[64], &q);
    let err = write_err(&w);
    assert!(
        matches!(
            &err,
            Error::ByteLengthMismatch {
                expected: 36,
                found: 18,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn row_length_not_a_multiple_of_block_size() {
    // 48 elements in whole Q4_0 blocks overall, but rows of 16 (ne[0]) split blocks.
    let q = vec![0u8; 18 * 3];
    let mut w = GgufWriter::new(Metadata::default());
    w.add_tensor("q", DType::Q4_0, &[3, 16], &q);
    let err = write_err(&w);
    assert!(
        matches!(&err, Error::BadShape { tensor, .. } if tensor == "q"),
        "{err}"
    );
    assert!(err.to_string().contains("block size 32"), "{err}");
}

#[test]
fn shapes_gguf_cannot_hold() {
    let one = f32_bytes(&[1.0]);
    // (0-d tensors are written as ggml writes them: `scalars_are_written_as_ggml_does`.)
    for shape in [&[1, 1, 1, 1, 1][..], &[1; 9]] {
        let mut w = GgufWriter::new(Metadata::default());
        w.add_tensor("t", DType::F32, shape, &one);
        let err = write_err(&w);
        assert!(matches!(err, Error::BadShape { .. }), "{shape:?}: {err}");
    }
    let mut w = GgufWriter::new(Metadata::default());
    w.add_tensor("huge", DType::F32, &[usize::MAX, 2], &one);
    let err = write_err(&w);
    assert!(matches!(err, Error::ShapeOverflow { .. }), "{err}");
}

#[test]
fn dtype_without_a_ggml_type() {
    let bytes = vec![0u8; 4];
    let mut w = GgufWriter::new(Metadata::default());
    w.add_tensor("u", DType::U8, &[4], &bytes);
    let err = write_err(&w);
    assert!(
        matches!(&err, Error::UnsupportedDType { tensor, format: "GGUF", .. } if tensor == "u"),
        "{err}"
    );
}

#[test]
fn tensor_name_longer_than_llama_cpp_reads() {
    let bytes = f32_bytes(&[1.0]);
    let longest = "n".repeat(63);
    let dir = tempfile::tempdir().unwrap();
    let mut w = GgufWriter::new(Metadata::default());
    w.add_tensor(longest.as_str(), DType::F32, &[1], &bytes);
    w.write(dir.path().join("ok.gguf")).unwrap();

    let mut w = GgufWriter::new(Metadata::default());
    w.add_tensor("n".repeat(64), DType::F32, &[1], &bytes);
    let err = write_err(&w);
    assert!(matches!(err, Error::BadTensorName { .. }), "{err}");
}

/// Metadata the writer refuses: the key it names.
fn metadata_err(entries: Vec<(&str, Value)>) -> String {
    match write_err(&GgufWriter::new(meta(entries))) {
        Error::BadMetadata { key, .. } => key,
        other => panic!("not a metadata error: {other}"),
    }
}

#[test]
fn metadata_it_cannot_encode() {
    use Value::*;
    // One element type per array.
    assert_eq!(
        metadata_err(vec![("mixed", Array(vec![U8(1), U16(2)]))]),
        "mixed"
    );
    assert_eq!(
        metadata_err(vec![("mixed.nested", Array(vec![Array(vec![]), U8(1)]))]),
        "mixed.nested"
    );
    // Keys are unique and nonempty.
    assert_eq!(
        metadata_err(vec![("k", U8(1)), ("other", U8(2)), ("k", U8(3))]),
        "k"
    );
    assert_eq!(metadata_err(vec![("", U8(1))]), "");
    // general.alignment is a u32 power of two.
    for bad in [U32(0), U32(48), U64(32), String("32".into())] {
        assert_eq!(
            metadata_err(vec![("general.alignment", bad)]),
            "general.alignment"
        );
    }
    // Nesting our reader would refuse.
    let mut deep = U8(0);
    for _ in 0..9 {
        deep = Array(vec![deep]);
    }
    assert_eq!(metadata_err(vec![("deep", deep)]), "deep");
}

// ---- atomic replacement ------------------------------------------------------------------------------

/// A source that announces `announced` bytes, produces `chunks` of 16 bytes, then fails if told
/// to; it records how many files the target's directory held while it ran.
struct Faulty<'d> {
    announced: u64,
    chunks: usize,
    fail: bool,
    dir: &'d Path,
    seen: Cell<usize>,
}

impl ChunkSource for Faulty<'_> {
    fn byte_len(&self) -> u64 {
        self.announced
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8]) -> mlmf::Result<()>) -> mlmf::Result<()> {
        self.seen.set(listing(self.dir).len());
        for _ in 0..self.chunks {
            f(&[7u8; 16])?;
        }
        if self.fail {
            return Err(Error::Gpu {
                during: "readback".into(),
                reason: "device lost (simulated)".into(),
            });
        }
        Ok(())
    }
}

#[test]
fn existing_file_is_replaced_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let first = f32_bytes(&[1.0; 16]);
    let second = f32_bytes(&[2.0; 16]);
    let metadata = meta(vec![("general.architecture", Value::String("v".into()))]);

    let mut w = GgufWriter::new(metadata.clone());
    w.add_tensor("t", DType::F32, &[16], &first);
    w.write(&path).unwrap();
    let mut w = GgufWriter::new(metadata.clone());
    w.add_tensor("t", DType::F32, &[16], &second);
    w.write(&path).unwrap();
    check_file(
        &path,
        &metadata,
        &[Expect::new("t", DType::F32, &[16], &second)],
        32,
    );
    assert_eq!(listing(dir.path()), ["model.gguf"]);
    let good = std::fs::read(&path).unwrap();

    // Sources that fail mid-way, after the header and a first tensor went into the temporary
    // file: too few bytes, too many, an error of their own.
    let cases = [(64, 2, false, 32), (64, 6, false, 80), (64, 2, true, 0)];
    for (announced, chunks, fail, found) in cases {
        let faulty = Faulty {
            announced,
            chunks,
            fail,
            dir: dir.path(),
            seen: Cell::new(0),
        };
        let mut w = GgufWriter::new(metadata.clone());
        w.add_tensor("t", DType::F32, &[16], &first).add_tensor(
            "faulty",
            DType::I8,
            &[64],
            TensorSource::Chunks(&faulty),
        );
        let err = w.write(&path).unwrap_err();
        if fail {
            assert!(matches!(err, Error::Gpu { .. }), "{err}");
        } else {
            assert!(
                matches!(
                    &err,
                    Error::ByteLengthMismatch { tensor, expected: 64, found: f, .. }
                        if tensor == "faulty" && *f == found
                ),
                "{err}"
            );
        }
        assert_eq!(faulty.seen.get(), 2, "no temporary file while writing");
        assert_eq!(std::fs::read(&path).unwrap(), good, "{err}");
        assert_eq!(listing(dir.path()), ["model.gguf"], "{err}");
    }
}

#[test]
fn unwritable_target_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = f32_bytes(&[1.0]);
    let mut w = GgufWriter::new(Metadata::default());
    w.add_tensor("t", DType::F32, &[1], &bytes);

    // A directory that does not exist, and a "directory" that is a file. (Permission bits do not
    // stop root, so a read-only directory would not fail here.)
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"keep").unwrap();
    for target in [dir.path().join("missing/x.gguf"), file.join("x.gguf")] {
        let err = w.write(&target).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    assert_eq!(listing(dir.path()), ["plain-file"]);
}

/// A 0-d tensor is written as ggml writes a scalar, `ne = [1]`, and listed under
/// `mlmf.scalar_tensors` (replacing a key of that name where it stands), so our reader gives
/// it its shape `[]` back; gguf-py reads `[1]` and the list. Without 0-d tensors the writer
/// drops the key, which would otherwise claim scalars that are not there.
#[test]
fn scalars_are_written_as_ggml_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.gguf");
    let (s, v) = (f32_bytes(&[0.07]), f32_bytes(&[1.0, 2.0]));
    let n = 1234i64.to_le_bytes();
    let metadata = Metadata {
        entries: vec![
            ("general.name".into(), Value::String("x".into())),
            ("mlmf.scalar_tensors".into(), strings(&["stale"])),
            ("z".into(), Value::U32(1)),
        ],
    };
    let mut w = GgufWriter::new(metadata.clone());
    w.add_tensor("s", DType::F32, &[], &s);
    w.add_tensor("v", DType::F32, &[2], &v);
    w.add_tensor("n", DType::I64, &[], &n[..]);
    w.write(&path).unwrap();

    let py = common::gguf_py(&path);
    let keys: Vec<&str> = py["kv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        &keys[keys.len() - 3..],
        ["general.name", "mlmf.scalar_tensors", "z"]
    );
    let listed = &py["kv"][keys.len() - 2]["value"];
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s", "n"]);
    let ne: Vec<&Json> = py["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["ne"])
        .collect();
    assert_eq!(ne, [&json!([1]), &json!([2]), &json!([1])]);
    let file = ModelFile::open(&path).unwrap();
    let dims: Vec<&[usize]> = file.tensors().iter().map(|t| t.shape.dims()).collect();
    assert_eq!(dims, [&[][..], &[2], &[]]);
    assert_eq!(file.bytes(file.tensor("n").unwrap()), n);

    // No 0-d tensor: the key goes.
    let mut w = GgufWriter::new(metadata);
    w.add_tensor("v", DType::F32, &[2], &v);
    w.write(&path).unwrap();
    let file = ModelFile::open(&path).unwrap();
    let keys: Vec<&str> = file.metadata().iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["general.name", "z"]);
}
