//! Writing files. Every write is atomic: see [`AtomicFile`].

mod atomic;
pub mod gguf;

pub use atomic::AtomicFile;
pub use gguf::{ChunkSource, GgufWriter, TensorSource};
