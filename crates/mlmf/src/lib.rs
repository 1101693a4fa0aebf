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

pub mod checkpoint;
pub mod lora;
pub mod models;
pub mod multimodal;
pub mod provenance;
mod quantize;
mod timestamp;

pub use mlmf_core::{dtype, error, formats};
pub use mlmf_gpu::ops;

/// CPU quantizers ([`quant::quantize`]) and whole-file quantization ([`quant::quantize_file`]).
pub mod quant {
    pub use crate::quantize::{plan, quantize_file, Planned, QuantizeOptions};
    pub use mlmf_core::quant::*;
}

pub use checkpoint::{GgufWriter, SafetensorsWriter, TensorSource};
pub use mlmf_core::{
    Arch, DType, Error, Format, Metadata, ModelFile, NameMap, Result, Rule, Shape, Source,
    TensorInfo, Value,
};
pub use mlmf_gpu::{adapters, AdapterReport, Device, Gpu, GpuOptions, Storage, Tensor};
