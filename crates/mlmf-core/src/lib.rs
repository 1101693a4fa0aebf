//! The lower layer of mlmf, built without wgpu: element types, shapes, the one error type, the
//! model-file parsers with [`ModelFile`] (memory-mapped, zero-copy tensor views), the tensor name
//! maps, and the CPU quantizers. Every parser is a pure function over the file's bytes, so this
//! crate is what the fuzzer drives. Users add the `mlmf` crate, which re-exports these types.
//!
//! ```no_run
//! use mlmf_core::ModelFile;
//! let file = ModelFile::open("model.safetensors")?;
//! for t in file.tensors() {
//!     println!("{} {} {}", t.name, t.dtype, t.shape);
//! }
//! # Ok::<(), mlmf_core::Error>(())
//! ```

mod cache_dir;
pub mod dtype;
pub mod error;
pub mod files;
pub mod formats;
pub mod quant;
mod shape;

pub use cache_dir::cache_dir;
pub use dtype::DType;
pub use error::{Error, Result};
pub use formats::names::{Arch, NameMap, Rule};
pub use formats::{
    ByteRange, Format, Metadata, ModelFile, Slice, SliceLayout, Source, TensorInfo, Value,
};
pub use shape::Shape;
