//! A sharded checkpoint made from the real MiniLM file with the `safetensors` crate, for the
//! tests of the shard index (mlmf-core) and of loading it (mlmf-gpu). Included with `#[path]`.

use std::collections::BTreeMap;
use std::path::Path;

use mlmf_core::ModelFile;
use safetensors::tensor::{Dtype, TensorView};

fn dtype(d: mlmf_core::DType) -> Dtype {
    match d {
        mlmf_core::DType::F32 => Dtype::F32,
        mlmf_core::DType::I64 => Dtype::I64,
        other => panic!("MiniLM has no {other}"),
    }
}

/// Split MiniLM into three shards in `dir` and write the index; returns the source file.
pub fn write_shards(dir: &Path) -> ModelFile {
    let src = ModelFile::open(super::common::model(super::common::MINILM)).unwrap();
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
