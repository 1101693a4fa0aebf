//! Real architectures built from model files on the engine's ops.

pub mod bert;
pub mod mobilenet_v2;
pub mod whisper;

/// The model cache `scripts/fetch_models.py` fills (see [`mlmf_core::cache_dir`]).
pub use mlmf_core::cache_dir;
