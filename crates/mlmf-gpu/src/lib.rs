//! The GPU layer of mlmf: devices (a wgpu adapter, or the CPU that runs the plain-Rust twins),
//! tensors stored in pages of GPU buffers, the kernel families (one WGSL file in `shaders/` and
//! one launcher in `ops/` each, with the CPU twin beside it), and streaming loads of a
//! [`mlmf_core::ModelFile`] onto a device. Users add the `mlmf` crate, which re-exports it.

mod device;
mod kv_cache;
mod load;
pub mod ops;
mod storage;
mod tensor;

pub use device::{adapters, AdapterReport, Device, Gpu, GpuOptions, GpuStats, MemoryStats};
pub use kv_cache::KvCache;
pub use storage::GpuStorage;
pub use tensor::{Storage, Tensor};
