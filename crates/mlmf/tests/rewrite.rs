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

/// Rows that are not whole Q4_K super-blocks fall back as llama-quantize's table says: 896-wide
/// rows (Qwen2's width) to Q5_0, 48-wide rows (not whole Q5_0 blocks either) to F16, while
/// 512-wide rows stay Q4_K and 1-D tensors and `keep` matches are untouched. The input is written
/// by the Python `safetensors` library; gguf-py reads the output, and the fallback tensors' bytes
/// equal gguf-py's own quantization of the same values.
#[test]
fn rows_that_are_not_whole_blocks_fall_back_like_llama_quantize() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.safetensors");
    let out = tmp.path().join("out.gguf");
    let script = r#"
import sys, numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(7)
t = lambda *s: rng.standard_normal(s).astype(np.float32)
save_file({"wide.weight": t(4, 896), "narrow.weight": t(3, 48), "whole.weight": t(2, 512),
           "kept.weight": t(2, 896), "norm.weight": t(896)}, sys.argv[1])
"#;
    let made = std::process::Command::new(common::python())
        .arg("-c")
        .arg(script)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let options = quant::QuantizeOptions {
        dtype: DType::Q4_K,
        keep: vec![regex::Regex::new("^kept").unwrap()],
    };
    let file = ModelFile::open(&input).unwrap();
    let plan = quant::quantize_file(&file, &out, &options, &mut |_| {}).unwrap();
    let planned = |name: &str| plan.iter().find(|p| p.name == name).unwrap();
    let expect = [
        ("wide.weight", DType::Q5_0, Some(DType::Q4_K), None),
        ("narrow.weight", DType::F16, Some(DType::Q4_K), None),
        ("whole.weight", DType::Q4_K, None, None),
        ("kept.weight", DType::F32, None, Some("--keep")),
        ("norm.weight", DType::F32, None, Some("1-D")),
    ];
    for (name, to, from, kept) in expect {
        let p = planned(name);
        assert_eq!((p.to, p.fell_back_from, p.kept), (to, from, kept), "{name}");
    }
    assert_eq!(quant::fallback(DType::Q6_K, 896), Some(DType::Q8_0));
    assert_eq!(quant::fallback(DType::Q4_0, 48), None);

    let check = r#"
import sys, hashlib, numpy as np
from gguf import GGUFReader, GGMLQuantizationType as T, quants
from safetensors.numpy import load_file
src = load_file(sys.argv[1])
r = GGUFReader(sys.argv[2])
want = {"wide.weight": T.Q5_0, "narrow.weight": T.F16, "whole.weight": T.Q4_K,
        "kept.weight": T.F32, "norm.weight": T.F32}
for t in r.tensors:
    assert t.tensor_type == want[t.name], (t.name, t.tensor_type)
    if t.tensor_type in (T.Q5_0, T.F16):
        q = quants.quantize(src[t.name], t.tensor_type)
        assert q.tobytes() == t.data.tobytes(), t.name
print(len(r.tensors))
"#;
    let res = std::process::Command::new(common::python())
        .arg("-c")
        .arg(check)
        .arg(&input)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&res.stdout).trim(), "5");
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
