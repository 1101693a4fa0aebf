//! Writing files. Every write is atomic: see [`AtomicFile`].

mod atomic;
mod convert;
mod gguf;
mod manager;
pub(crate) mod rewrite;
mod safetensors;
mod source;

pub use atomic::AtomicFile;
pub use convert::{convert_file, ConvertOptions, Converted, MapDirection};
pub use gguf::GgufWriter;
pub use manager::{
    step_name, CheckpointEntry, CheckpointInfo, CheckpointManager, CheckpointStatus, Manifest,
    ManifestFile, PruneReport, Resume, Retention, TensorEntry, Verify,
};
pub use rewrite::Progress;
pub use safetensors::SafetensorsWriter;
pub use source::{ChunkSource, TensorSource};
