//! mlmf: load machine-learning model files (safetensors, GGUF, PyTorch) straight into GPU
//! memory through wgpu, and work with them there.
//!
//! ```no_run
//! use mlmf::{Device, ModelFile};
//! let file = ModelFile::open("model.safetensors")?;
//! for t in file.tensors() {
//!     println!("{} {} {}", t.name, t.dtype, t.shape);
//! }
//! # Ok::<(), mlmf::Error>(())
//! ```

pub mod bench;
pub mod checkpoint;
pub mod device;
pub mod dtype;
pub mod error;
pub mod formats;
pub mod lora;
pub mod memory;
pub mod models;
pub mod multimodal;
pub mod ops;
pub mod provenance;
pub mod quant;
pub mod tensor;

pub use checkpoint::{GgufWriter, SafetensorsWriter, TensorSource};
pub use device::{Device, Gpu, GpuOptions};
pub use dtype::DType;
pub use error::{Error, Result};
pub use formats::names::{Arch, NameMap, Rule};
pub use formats::{Format, Metadata, ModelFile, TensorInfo, Value};
pub use tensor::{Shape, Storage, Tensor};
