//! GGUF files read through `ModelFile::open`, checked against what gguf-py 0.19.0 reports for the
//! same files (`fixtures/models/gguf/*.tensor_digests.json`) and against the quantization oracle.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use mlmf_core::{DType, Format, ModelFile, Value};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

fn digests(name: &str) -> Json {
    let path = common::fixtures().join("models/gguf").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn as_u64s(json: &Json) -> Vec<u64> {
    json.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// Every tensor of `model` against the digest file: name, type, shapes, absolute offset, byte
/// length and the sha256 of the stored bytes.
fn check_tensors(model: &str, digest_file: &str, count: usize) -> ModelFile {
    let file = ModelFile::open(common::model(model)).unwrap();
    assert_eq!(file.format(), Format::Gguf);
    assert_eq!(file.version(), Some(3));
    let json = digests(digest_file);
    assert_eq!(json["model_file"], model);
    let expected = json["tensors"].as_object().unwrap();
    assert_eq!(expected.len(), count);
    assert_eq!(file.tensors().len(), count);

    let mut previous_end = 0;
    for t in file.tensors() {
        let e = expected
            .get(&t.name)
            .unwrap_or_else(|| panic!("{} is not in {digest_file}", t.name));
        assert_eq!(t.dtype.name(), e["type"], "{}", t.name);
        let shape: Vec<usize> = t.shape.dims().to_vec();
        let numpy: Vec<usize> = as_u64s(&e["shape_numpy_order"])
            .into_iter()
            .map(|d| d as usize)
            .collect();
        assert_eq!(shape, numpy, "{}", t.name);
        let mut ne = as_u64s(&e["ne_gguf_order"]);
        ne.reverse();
        assert_eq!(
            shape.iter().map(|&d| d as u64).collect::<Vec<_>>(),
            ne,
            "{}",
            t.name
        );
        assert_eq!(
            t.shape.elem_count(),
            e["n_elements"].as_u64().unwrap(),
            "{}",
            t.name
        );
        assert_eq!(
            t.range.start,
            e["data_offset_in_file"].as_u64().unwrap(),
            "{}",
            t.name
        );
        assert_eq!(t.byte_len(), e["n_bytes"].as_u64().unwrap(), "{}", t.name);
        assert_eq!(
            sha256_hex(file.bytes(t)),
            e["sha256_raw_bytes"],
            "{}",
            t.name
        );
        // llama.cpp and gguf-py write tensors in the order they list them; we keep that order.
        assert!(t.range.start >= previous_end, "{} is out of order", t.name);
        previous_end = t.range.end;
    }
    file
}

fn string(file: &ModelFile, key: &str) -> String {
    let value = file
        .metadata()
        .get(key)
        .unwrap_or_else(|| panic!("no {key}"));
    value
        .as_str()
        .unwrap_or_else(|| panic!("{key} = {value:?}"))
        .to_string()
}

/// `general.alignment` is absent or 32, and the vocabulary (`tokenizer.ggml.tokens`) has one
/// string per row of the token embedding.
fn check_common_metadata(file: &ModelFile) {
    match file.metadata().get("general.alignment") {
        None | Some(Value::U32(32)) => {}
        Some(other) => panic!("general.alignment = {other:?}"),
    }
    let Some(Value::Array(tokens)) = file.metadata().get("tokenizer.ggml.tokens") else {
        panic!("tokenizer.ggml.tokens is not an array");
    };
    assert!(tokens.iter().all(|t| matches!(t, Value::String(_))));
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(tokens.len(), embd.shape.dims()[0]);
    let Some(Value::Array(types)) = file.metadata().get("tokenizer.ggml.token_type") else {
        panic!("tokenizer.ggml.token_type is not an array");
    };
    assert_eq!(types.len(), tokens.len());
}

#[test]
fn smollm2_tensors_match_gguf_py() {
    let file = check_tensors(common::SMOLLM2, "smollm2.tensor_digests.json", 272);
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (embd.dtype, embd.shape.dims()),
        (DType::Q8_0, &[49152, 576][..])
    );
}

#[test]
fn gemma3_tensors_match_gguf_py() {
    let file = check_tensors(common::GEMMA3, "gemma3.tensor_digests.json", 236);
    let down = file.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(
        (down.dtype, down.shape.dims()),
        (DType::Q6_K, &[640, 2048][..])
    );
}

#[test]
fn smollm2_metadata() {
    let file = ModelFile::open(common::model(common::SMOLLM2)).unwrap();
    assert_eq!(string(&file, "general.architecture"), "llama");
    assert_eq!(string(&file, "tokenizer.ggml.model"), "gpt2");
    assert_eq!(
        file.metadata().get("llama.block_count"),
        Some(&Value::U32(30))
    );
    assert_eq!(
        file.metadata().get("llama.vocab_size"),
        Some(&Value::U32(49152))
    );
    assert_eq!(
        file.metadata().get("tokenizer.ggml.add_bos_token"),
        Some(&Value::Bool(false))
    );
    check_common_metadata(&file);
    let Some(Value::Array(tokens)) = file.metadata().get("tokenizer.ggml.tokens") else {
        unreachable!("checked above")
    };
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens[0], Value::String("<|endoftext|>".into()));
    // Metadata keeps the file's order: the architecture comes first in this file.
    assert_eq!(
        file.metadata().iter().next().map(|(k, _)| k),
        Some("general.architecture")
    );
}

#[test]
fn gemma3_metadata() {
    let file = ModelFile::open(common::model(common::GEMMA3)).unwrap();
    assert_eq!(string(&file, "general.architecture"), "gemma3");
    assert_eq!(
        file.metadata().get("gemma3.block_count"),
        Some(&Value::U32(18))
    );
    check_common_metadata(&file);
    let Some(Value::Array(scores)) = file.metadata().get("tokenizer.ggml.scores") else {
        panic!("tokenizer.ggml.scores is not an array");
    };
    assert_eq!(scores.len(), 262144);
    assert!(scores.iter().all(|s| matches!(s, Value::F32(_))));
}

#[test]
fn quant_oracle_tensors_equal_expected_quant_bytes() {
    let dir: PathBuf = common::fixtures().join("quant");
    let gguf = ModelFile::open(dir.join("quant_oracle.gguf")).unwrap();
    let expected = ModelFile::open(dir.join("expected.safetensors")).unwrap();
    assert_eq!(gguf.format(), Format::Gguf);
    assert_eq!(string(&gguf, "general.architecture"), "quant_oracle");
    assert_eq!(
        gguf.metadata()
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32),
        32
    );

    let names: Vec<&str> = gguf.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
            "Q6_K"
        ]
    );
    for t in gguf.tensors() {
        assert_eq!(t.dtype.name(), t.name);
        assert_eq!(t.shape.dims(), &[8, 1024], "{}", t.name);
        let quant = expected.tensor(&format!("{}.quant", t.name)).unwrap();
        assert_eq!(quant.dtype, DType::U8);
        assert_eq!(quant.shape.dims()[0], 8);
        assert_eq!(
            t.byte_len(),
            8 * t.dtype.byte_len(1024).unwrap(),
            "{}",
            t.name
        );
        assert!(
            gguf.bytes(t) == expected.bytes(quant),
            "{}: bytes differ",
            t.name
        );
    }
}

/// gguf-py 0.19.0 writes a numpy 0-d array with n_dims = 0 (`tests/data/make_gguf_scalars.py`
/// made this file); llama.cpp's reader takes it, and so does ours, as a scalar.
#[test]
fn gguf_py_zero_dim_tensors_open_as_scalars() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf_py_scalars.gguf");
    let file = ModelFile::open(&path).unwrap();
    let shapes: Vec<(&str, &[usize])> = file
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t.shape.dims()))
        .collect();
    assert_eq!(
        shapes,
        [
            ("scale", &[][..]),
            ("bn.num_batches_tracked", &[]),
            ("v", &[5]),
            ("m", &[2, 3])
        ]
    );
    let scale = file.tensor("scale").unwrap();
    assert_eq!(file.bytes(scale), 0.07f32.to_le_bytes());
    let n = file.tensor("bn.num_batches_tracked").unwrap();
    assert_eq!(n.dtype, DType::I64);
    assert_eq!(file.bytes(n), 1234i64.to_le_bytes());
}

/// One tensor per GGML block type, in a file gguf-py 0.19.0 wrote
/// (`tests/data/make_gguf_block_types.py`): every tensor's type, shape, offset, byte count and
/// bytes are what gguf-py reads, the ten types issue 12 added among them.
#[test]
fn every_block_type_gguf_py_writes_opens_as_gguf_py_reads_it() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/gguf_py_block_types.gguf");
    let file = ModelFile::open(&path).unwrap();
    let py = common::gguf_py(&path);
    let py_tensors = py["tensors"].as_array().unwrap();
    assert_eq!(file.tensors().len(), py_tensors.len());
    for (t, p) in file.tensors().iter().zip(py_tensors) {
        assert_eq!(t.name, p["name"].as_str().unwrap());
        assert_eq!(
            Format::Gguf.dtype_name(t.dtype),
            p["type"].as_str().unwrap()
        );
        assert_eq!(
            t.name,
            t.dtype.name(),
            "one tensor per type, named after it"
        );
        let mut ne: Vec<u64> = t.shape.dims().iter().map(|&d| d as u64).collect();
        ne.reverse();
        assert_eq!(ne, as_u64s(&p["ne"]), "{}", t.name);
        assert_eq!(t.range.start, p["offset"].as_u64().unwrap(), "{}", t.name);
        assert_eq!(t.byte_len(), p["n_bytes"].as_u64().unwrap(), "{}", t.name);
        assert_eq!(sha256_hex(file.bytes(t)), p["sha256"].as_str().unwrap());
    }
    for new in [
        DType::MXFP4,
        DType::TQ1_0,
        DType::TQ2_0,
        DType::IQ1_S,
        DType::IQ1_M,
        DType::IQ2_XXS,
        DType::IQ2_XS,
        DType::IQ2_S,
        DType::IQ3_XXS,
        DType::IQ3_S,
    ] {
        assert!(file.tensor(new.name()).is_ok(), "{new}");
    }
}
