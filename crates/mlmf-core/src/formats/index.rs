//! Sharded safetensors checkpoints: a `model.safetensors.index.json` whose `weight_map` names the
//! shard file that holds each tensor (the Hugging Face layout).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{Metadata, Value};
use crate::error::{Error, Result};

/// The parsed index: which shard holds each tensor, plus its `metadata` block.
#[derive(Clone, Debug)]
pub struct ShardIndex {
    pub metadata: Metadata,
    /// Tensor name -> shard file name (relative to the index's directory).
    pub weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// Shard file names in sorted order, each once.
    pub fn shards(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.weight_map.values().map(String::as_str).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[derive(Deserialize)]
struct RawIndex {
    #[serde(default)]
    metadata: BTreeMap<String, serde_json::Value>,
    weight_map: BTreeMap<String, String>,
}

pub fn parse(bytes: &[u8], path: &Path) -> Result<ShardIndex> {
    let raw: RawIndex = serde_json::from_slice(bytes).map_err(|e| Error::BadIndex {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    for (tensor, shard) in &raw.weight_map {
        // Shards must sit beside the index: no directories, no way out of it.
        let plain =
            !shard.is_empty() && !shard.contains(['/', '\\']) && shard != "." && shard != "..";
        if !plain {
            return Err(Error::BadIndex {
                path: path.to_path_buf(),
                reason: format!("tensor '{tensor}': shard '{shard}' is not a plain file name"),
            });
        }
    }
    let metadata = Metadata {
        entries: raw
            .metadata
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => Value::String(s),
                    serde_json::Value::Number(n) if n.is_u64() => {
                        Value::U64(n.as_u64().unwrap_or(0))
                    }
                    other => Value::String(other.to_string()),
                };
                (k, v)
            })
            .collect(),
    };
    Ok(ShardIndex {
        metadata,
        weight_map: raw.weight_map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hugging_face_index() {
        let text = br#"{"metadata":{"total_size":16},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}}"#;
        let idx = parse(text, Path::new("i.json")).unwrap();
        assert_eq!(idx.shards().len(), 2);
        assert_eq!(idx.metadata.get("total_size"), Some(&Value::U64(16)));
    }

    #[test]
    fn refuses_paths_out_of_the_directory() {
        let text = br#"{"weight_map":{"a":"../../etc/passwd"}}"#;
        assert!(matches!(
            parse(text, Path::new("i.json")),
            Err(Error::BadIndex { .. })
        ));
        assert!(matches!(
            parse(b"{", Path::new("i.json")),
            Err(Error::BadIndex { .. })
        ));
    }
}
