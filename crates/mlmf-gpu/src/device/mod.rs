//! Devices: a wgpu GPU, or the CPU that runs the plain-Rust twins of every kernel.

mod adapter;
mod batch;
mod gpu;
pub(crate) mod kernels;
mod pipeline_cache;
mod pool;
mod stats;

pub use adapter::{adapters, AdapterReport};
pub(crate) use batch::Recording;
pub use gpu::{Gpu, GpuOptions};
pub use pool::MemoryStats;
pub(crate) use pool::{BindKey, Block, Fill, Kind};
pub(crate) use stats::Event;
pub use stats::GpuStats;

use mlmf_core::Result;

/// Where tensors live and kernels run.
#[derive(Clone, Debug)]
pub enum Device {
    /// Host memory; ops run their CPU twins.
    Cpu,
    Gpu(Gpu),
}

impl Device {
    /// The best GPU adapter (see [`adapters`]); `MLMF_BACKEND` and `MLMF_ADAPTER` override.
    /// Compiled pipelines are kept on disk where the driver offers it: `MLMF_PIPELINE_CACHE`
    /// names the directory, or `off`.
    pub fn gpu() -> Result<Device> {
        Ok(Device::Gpu(Gpu::new(&GpuOptions::default())?))
    }

    /// Like [`Device::gpu`] with explicit page and staging sizes.
    pub fn gpu_with(options: &GpuOptions) -> Result<Device> {
        Ok(Device::Gpu(Gpu::new(options)?))
    }

    /// Whether tensors on `self` and `other` are on the same device: both the CPU, or the same
    /// GPU device (two devices opened on one adapter are different).
    pub fn same_as(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Gpu(a), Device::Gpu(b)) => a.same_device(b),
            _ => false,
        }
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self, Device::Gpu(_))
    }

    /// Wait until every operation submitted to the device so far has finished (a no-op on the
    /// CPU, whose ops finish before they return). Benchmarks use it to time GPU work.
    pub fn sync(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Gpu(g) => g.wait("sync"),
        }
    }

    /// A short description: `cpu`, or the adapter's name and backend.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => "cpu".to_string(),
            Device::Gpu(g) => format!("{} ({:?})", g.name(), g.backend()),
        }
    }
}
