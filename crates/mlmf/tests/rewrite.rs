//! Whole-file rewrites (quantize, convert, LoRA merge) as a library user runs them.

#[path = "../../../tests/common/mod.rs"]
mod common;

use mlmf::{quant, DType, ModelFile};

/// `quantize_file` records its input as the parent (by the input's content hash) and the
/// quantize transform, and the output verifies against the hash it recorded.
#[test]
fn quantized_file_verifies_and_names_its_parent() {
    use mlmf::provenance::{self, Transform};
    // A small F32 model (the LoRA fixture's base); the quant fixture holds U8, which GGUF lacks.
    let input = ModelFile::open(common::fixtures().join("lora/standard/base.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q8.gguf");
    let options = quant::QuantizeOptions {
        dtype: DType::Q8_0,
        keep: Vec::new(),
    };
    quant::quantize_file(&input, &out, &options, &mut |_| {}).unwrap();
    let written = ModelFile::open(&out).unwrap();
    let check = provenance::verify(&written).unwrap();
    check.check().unwrap();
    let record = check.record.unwrap();
    assert_eq!(record.content_hash, check.computed);
    assert_eq!(record.parents.len(), 1);
    let parent = &record.parents[0];
    let input_path = std::fs::canonicalize(input.path()).unwrap();
    assert_eq!(parent.path, input_path.display().to_string());
    assert_eq!(
        parent.content_hash,
        provenance::content_hash(&input).unwrap()
    );
    assert_eq!(
        record.transforms,
        [Transform::Quantize {
            dtype: "Q8_0".into()
        }]
    );
}
