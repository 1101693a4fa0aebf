//! Where mlmf keeps what it fetches or makes once per machine (model files, compiled pipelines).

use std::path::PathBuf;

/// The model cache `scripts/fetch_models.py` fills, and the base of mlmf's other caches:
/// `$MLMF_MODELS`, else `$XDG_CACHE_HOME/mlmf`, else `~/.cache/mlmf`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MLMF_MODELS") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("mlmf");
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/mlmf")
}
