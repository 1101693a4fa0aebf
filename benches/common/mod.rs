//! Paths shared by the benchmarks: the checkout, the model cache, and the venv's python.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$MLMF_MODELS`, else `~/.cache/mlmf` (where `scripts/fetch_models.py` puts the models).
pub fn models_dir() -> PathBuf {
    std::env::var_os("MLMF_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/mlmf")
        })
}

/// `$MLMF_PYTHON`, else the venv `scripts/test.sh` makes in the model cache.
pub fn python() -> PathBuf {
    std::env::var_os("MLMF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| models_dir().join("venv/bin/python"))
}
