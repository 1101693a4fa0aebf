//! Choosing a wgpu adapter: `MLMF_BACKEND` and `MLMF_ADAPTER` override, otherwise the best
//! device type wins (discrete, integrated, virtual, CPU), and Vulkan/Metal/DX12 beat GL, which
//! is only tried when they offer no adapter.

use serde::Serialize;

use mlmf_core::{Error, Result};

/// What `mlmf devices` prints for one adapter.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterReport {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub shader_f16: bool,
    pub subgroups: bool,
}

impl AdapterReport {
    fn new(index: usize, adapter: &wgpu::Adapter) -> AdapterReport {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        AdapterReport {
            index,
            name: info.name,
            backend: format!("{:?}", info.backend).to_lowercase(),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
        }
    }
}

/// The backends `MLMF_BACKEND` names, or `None` when it is unset.
fn backends_from_env() -> Result<Option<wgpu::Backends>> {
    let Ok(value) = std::env::var("MLMF_BACKEND") else {
        return Ok(None);
    };
    match value.to_ascii_lowercase().as_str() {
        "vulkan" => Ok(Some(wgpu::Backends::VULKAN)),
        "metal" => Ok(Some(wgpu::Backends::METAL)),
        "dx12" => Ok(Some(wgpu::Backends::DX12)),
        "gl" => Ok(Some(wgpu::Backends::GL)),
        _ => Err(Error::BadDeviceChoice {
            variable: "MLMF_BACKEND",
            value,
            reason: "expected one of vulkan, metal, dx12, gl".into(),
        }),
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

fn enumerate(instance: &wgpu::Instance, backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(backends))
}

/// The adapters to choose from: those of the backend `MLMF_BACKEND` names, else those of
/// Vulkan, Metal and DX12, else (only when those offer none) GL's. GL is left out otherwise:
/// its set-up goes through EGL, which on NVIDIA's driver stalled tests that made devices from
/// several threads at once (seen on an H100), and a GPU that GL reaches is nearly always offered
/// through Vulkan, Metal or DX12 too. `MLMF_BACKEND=gl` still picks it.
pub(crate) fn available() -> Result<(wgpu::Instance, Vec<wgpu::Adapter>, wgpu::Backends)> {
    let (first, fallback) = match backends_from_env()? {
        Some(chosen) => (chosen, None),
        None => (wgpu::Backends::PRIMARY, Some(wgpu::Backends::GL)),
    };
    let found = |backends| {
        let instance = instance(backends);
        let adapters = enumerate(&instance, backends);
        (instance, adapters, backends)
    };
    let primary = found(first);
    Ok(match fallback {
        Some(gl) if primary.1.is_empty() => found(gl),
        _ => primary,
    })
}

/// Every adapter the allowed backends offer, in enumeration order.
pub fn adapters() -> Result<Vec<AdapterReport>> {
    let (_instance, adapters, _) = available()?;
    Ok(adapters
        .iter()
        .enumerate()
        .map(|(i, a)| AdapterReport::new(i, a))
        .collect())
}

fn rank(adapter: &wgpu::Adapter) -> (u8, u8) {
    let info = adapter.get_info();
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let backend = if info.backend == wgpu::Backend::Gl {
        1
    } else {
        0
    };
    (device, backend)
}

/// Pick the adapter: `index` (into the enumeration) if given, else `MLMF_ADAPTER` (an index,
/// or a case-insensitive substring of the name) if set, else the best ranked one.
pub(crate) fn choose(
    mut adapters: Vec<wgpu::Adapter>,
    backends: wgpu::Backends,
    index: Option<usize>,
) -> Result<wgpu::Adapter> {
    if adapters.is_empty() {
        return Err(Error::NoAdapter {
            detail: format!(" for backends {backends:?}"),
        });
    }
    if let Some(i) = index {
        let count = adapters.len();
        return (i < count)
            .then(|| adapters.swap_remove(i))
            .ok_or_else(|| Error::NoAdapter {
                detail: format!(": adapter {i} asked for, {count} found"),
            });
    }
    if let Ok(want) = std::env::var("MLMF_ADAPTER") {
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        let pick = match want.parse::<usize>() {
            Ok(i) => (i < adapters.len()).then_some(i),
            Err(_) => {
                let lower = want.to_lowercase();
                names.iter().position(|n| n.to_lowercase().contains(&lower))
            }
        };
        return match pick {
            Some(i) => Ok(adapters.swap_remove(i)),
            None => Err(Error::BadDeviceChoice {
                variable: "MLMF_ADAPTER",
                value: want,
                reason: format!("no such adapter; found {names:?}"),
            }),
        };
    }
    let best = adapters
        .iter()
        .enumerate()
        .min_by_key(|(i, a)| (rank(a), *i))
        .map(|(i, _)| i)
        .unwrap_or(0);
    Ok(adapters.swap_remove(best))
}
