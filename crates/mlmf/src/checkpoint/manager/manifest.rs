//! `manifest.json`: a checkpoint's files with their sizes and sha256, its step, when it was
//! saved, the caller's metadata and metrics; and the check of a checkpoint directory against it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::Path;
use std::time::SystemTime;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use super::disk::step_name;
use super::Verify;
use crate::checkpoint::AtomicFile;
use crate::error::{Error, Result};

/// The model file of every checkpoint, written by [`crate::checkpoint::SafetensorsWriter`].
pub const MODEL_FILE: &str = "model.safetensors";
/// The manifest of every checkpoint.
pub const MANIFEST_FILE: &str = "manifest.json";
const FORMAT: &str = "mlmf-checkpoint";
const VERSION: u64 = 1;
/// A manifest is a few KiB; anything far larger is not ours and is not read into memory.
const MAX_BYTES: u64 = 16 << 20;

/// One file of a checkpoint as its manifest records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// A plain file name inside the checkpoint directory.
    pub name: String,
    #[serde(deserialize_with = "byte_count")]
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// The contents of a checkpoint's `manifest.json`, its fields in file order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `mlmf-checkpoint`.
    format: String,
    /// 1.
    version: u64,
    pub step: u64,
    /// When the save was made, RFC 3339 in UTC to the second (`2025-11-22T09:29:00Z`).
    pub time: String,
    /// The tool that saved it: `mlmf <version>`.
    #[serde(default)]
    pub writer: String,
    pub files: Vec<ManifestFile>,
    /// The caller's strings, also written as the model file's safetensors `__metadata__`.
    #[serde(default, deserialize_with = "string_values")]
    pub metadata: BTreeMap<String, String>,
    /// Non-finite values are stored as JSON `null` and read back as NaN.
    #[serde(default, deserialize_with = "null_as_nan")]
    pub metrics: BTreeMap<String, f64>,
}

impl Manifest {
    /// The manifest of checkpoint `step`, saved now.
    pub(super) fn new(
        step: u64,
        files: Vec<ManifestFile>,
        metadata: BTreeMap<String, String>,
        metrics: BTreeMap<String, f64>,
    ) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            step,
            time: crate::timestamp::rfc3339(SystemTime::now()),
            writer: concat!("mlmf ", env!("CARGO_PKG_VERSION")).into(),
            files,
            metadata,
            metrics,
        }
    }

    /// Write `manifest.json` into `dir` (through [`AtomicFile`], which fsyncs `dir` too).
    pub(super) fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| Error::BadMetadata {
            path: path.clone(),
            key: "manifest".into(),
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        let mut file = AtomicFile::create(&path)?;
        file.write_all(&json)?;
        file.commit()
    }

    /// What the types do not say: ours and this version, the step of its directory, file names
    /// that stay inside that directory, sha256 as hex, the model file listed.
    fn validate(&self, step: u64) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("\"format\" is not \"{FORMAT}\""));
        }
        if self.version != VERSION {
            return Err(format!("unsupported version {}", self.version));
        }
        if self.step != step {
            return Err(format!(
                "\"step\" is {}, the directory is {}",
                self.step,
                step_name(step)
            ));
        }
        for (i, f) in self.files.iter().enumerate() {
            let name = &f.name;
            // Names from the file must not reach outside the checkpoint directory.
            let plain = !name.is_empty()
                && name != "."
                && name != ".."
                && name != MANIFEST_FILE
                && !name.contains(['/', '\\', '\0']);
            if !plain || self.files[..i].iter().any(|g| g.name == *name) {
                return Err(format!("file name {name:?} is not allowed"));
            }
            let hex = |b| matches!(b, b'0'..=b'9' | b'a'..=b'f');
            if f.sha256.len() != 64 || !f.sha256.bytes().all(hex) {
                return Err(format!("{name}: \"sha256\" is not 64 lowercase hex digits"));
            }
        }
        if !self.files.iter().any(|f| f.name == MODEL_FILE) {
            return Err(format!("{MODEL_FILE} is not listed"));
        }
        Ok(())
    }
}

/// serde's message for `-1` would not name the field.
fn byte_count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    v.as_u64()
        .ok_or_else(|| D::Error::custom(format!("\"bytes\" is {v}, not a byte count")))
}

/// serde's message ("expected a string") would not name the key.
fn string_values<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let map = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(v) => Ok((k, v)),
            _ => Err(D::Error::custom(format!("metadata {k:?} is not a string"))),
        })
        .collect()
}

/// JSON has no NaN or infinity (serde_json writes them as `null`); a diverged loss is still worth
/// saving.
fn null_as_nan<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let map = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

/// Read checkpoint `step`'s manifest from its directory; it is untrusted input like any file.
fn read(dir: &Path, step: u64) -> Result<Manifest, String> {
    let bad = |e: &dyn std::fmt::Display| format!("{MANIFEST_FILE}: {e}");
    let file = File::open(dir.join(MANIFEST_FILE)).map_err(|e| bad(&e))?;
    let mut text = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| bad(&e))?;
    if text.len() as u64 > MAX_BYTES {
        return Err(format!("{MANIFEST_FILE} is larger than {MAX_BYTES} bytes"));
    }
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| bad(&e))?;
    manifest.validate(step).map_err(|e| bad(&e))?;
    Ok(manifest)
}

/// Check checkpoint `step`'s directory against its manifest; the error is the reason it is
/// corrupt.
pub(super) fn check(dir: &Path, step: u64, check: Verify) -> Result<Manifest, String> {
    let manifest = read(dir, step)?;
    for f in &manifest.files {
        let path = dir.join(&f.name);
        let meta = fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", f.name))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", f.name));
        }
        if meta.len() != f.bytes {
            return Err(format!(
                "{} has {} bytes, the manifest says {}",
                f.name,
                meta.len(),
                f.bytes
            ));
        }
        if check == Verify::Hashes {
            let (bytes, sha) = hash_file(&path).map_err(|e| format!("{}: {e}", f.name))?;
            if bytes != f.bytes {
                return Err(format!("{} changed size while being read", f.name));
            }
            if sha != f.sha256 {
                return Err(format!(
                    "{} has sha256 {sha}, the manifest says {}",
                    f.name, f.sha256
                ));
            }
        }
    }
    Ok(manifest)
}

/// Byte count and lowercase-hex sha256 of a file, read in 1 MiB chunks.
pub(super) fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut file = BufReader::with_capacity(1 << 20, File::open(path)?);
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((bytes, hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest as the first manager wrote it (JSON built by hand): it reads, and writing it
    /// back gives the same bytes.
    #[test]
    fn version_1_files_read_and_write_back_unchanged() {
        let text = r#"{
  "format": "mlmf-checkpoint",
  "version": 1,
  "step": 1000,
  "time": "2025-01-31T12:00:00Z",
  "writer": "mlmf 0.1.0",
  "files": [
    {
      "name": "model.safetensors",
      "bytes": 1234,
      "sha256": "abababababababababababababababababababababababababababababababab"
    }
  ],
  "metadata": {
    "a.b": "x\"y",
    "z": "last"
  },
  "metrics": {
    "diverged": null,
    "loss": 0.75,
    "one": 1.0
  }
}
"#;
        let m: Manifest = serde_json::from_str(text).unwrap();
        m.validate(1000).unwrap();
        assert_eq!(
            (m.files[0].bytes, m.metadata["a.b"].as_str()),
            (1234, "x\"y")
        );
        assert!(m.metrics["diverged"].is_nan());
        assert_eq!(serde_json::to_string_pretty(&m).unwrap() + "\n", text);
    }
}
