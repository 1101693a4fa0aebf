//! Sharded safetensors checkpoints (Hugging Face `model.safetensors.index.json` layout), made by
//! splitting the real MiniLM file with the `safetensors` crate.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use mlmf::{Device, Error, Format, ModelFile};
use safetensors::tensor::{Dtype, TensorView};

fn dtype(d: mlmf::DType) -> Dtype {
    match d {
        mlmf::DType::F32 => Dtype::F32,
        mlmf::DType::I64 => Dtype::I64,
        other => panic!("MiniLM has no {other}"),
    }
}

/// Split MiniLM into three shards in `dir` and write the index; returns the source file.
fn write_shards(dir: &Path) -> ModelFile {
    let src = ModelFile::open(common::model(common::MINILM)).unwrap();
    let mut weight_map = BTreeMap::new();
    let names: Vec<String> = (1..=3)
        .map(|i| format!("model-{i:05}-of-00003.safetensors"))
        .collect();
    for (k, shard) in names.iter().enumerate() {
        let views: Vec<(String, TensorView)> = src
            .tensors()
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == k)
            .map(|(_, t)| {
                weight_map.insert(t.name.clone(), shard.clone());
                let view =
                    TensorView::new(dtype(t.dtype), t.shape.dims().to_vec(), src.bytes(t)).unwrap();
                (t.name.clone(), view)
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(shard)).unwrap();
    }
    let index =
        serde_json::json!({"metadata": {"total_size": src.data_bytes()}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    src
}

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
    // And onto the GPU, bit-identical.
    let sharded = ModelFile::open(dir.path()).unwrap();
    let gpu = Device::gpu().unwrap();
    for (t, info) in gpu
        .load_all(&sharded)
        .unwrap()
        .iter()
        .zip(sharded.tensors())
    {
        assert!(
            t.to_bytes().unwrap() == sharded.bytes(info),
            "{}",
            info.name
        );
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
