//! Writing files. Every write is atomic: see [`AtomicFile`].

mod atomic;
pub mod convert;
pub mod gguf;
pub mod manager;
pub(crate) mod rewrite;
pub mod safetensors;
mod source;

pub use atomic::AtomicFile;
pub use convert::{convert_file, ConvertOptions, Converted, MapDirection};
pub use gguf::GgufWriter;
pub use manager::{
    CheckpointEntry, CheckpointInfo, CheckpointManager, CheckpointStatus, Manifest, PruneReport,
    Resume, Retention, TensorEntry, Verify,
};
pub use rewrite::Progress;
pub use safetensors::SafetensorsWriter;
pub use source::{ChunkSource, TensorSource};
