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

/// Arguments a rewrite cannot take are typed errors, and nothing is written for them.
#[test]
fn bad_rewrite_arguments_are_typed_errors() {
    use mlmf::checkpoint::{convert_file, ConvertOptions, MapDirection};
    use mlmf::lora::{merge_file, LoraAdapter, MergeOptions};
    use mlmf::{Device, Error};
    let dir = common::fixtures().join("lora/standard");
    let input = ModelFile::open(dir.join("base.safetensors")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let convert = |options: &ConvertOptions| convert_file(&input, &out, options, &mut |_| {});

    let cast = ConvertOptions {
        dtype: Some(DType::Q8_0),
        ..Default::default()
    };
    assert!(matches!(
        convert(&cast),
        Err(Error::UnsupportedCast { dtype: DType::Q8_0 })
    ));
    // No general.architecture and no config.json beside the input: no name map to use.
    let map = ConvertOptions {
        map: Some(MapDirection::HfToGguf),
        ..Default::default()
    };
    assert!(matches!(
        convert(&map),
        Err(Error::UnknownArchitecture { .. })
    ));
    assert!(!out.exists());
    std::fs::write(&out, b"previous").unwrap();
    let err = convert(&ConvertOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::OutputExists { path } if *path == out),
        "{err}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");

    let adapter = LoraAdapter::open(dir.join("adapter")).unwrap();
    let bound = adapter.bind(&input).unwrap();
    let bin = tmp.path().join("merged.bin");
    let err = merge_file(
        &Device::Cpu,
        &input,
        &bound,
        &MergeOptions::default(),
        &bin,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::OutputName { path, .. } if *path == bin),
        "{err}"
    );
    assert!(!bin.exists());
}
