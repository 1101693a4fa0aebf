//! A set of devices, and loading a plan onto it: each device reads from the memory map only the
//! bytes of the parts the plan gives it.

use std::path::Path;
use std::time::Instant;

use super::comm::{agreed, Comm};
use super::plan::{DevicePlan, Part, Plan, Split, Targets};
use super::world::World;
use crate::{Device, Error, GpuOptions, ModelFile, Result, Tensor};

/// One device of a set: its name (the adapter's, with its index in the set) and its budget.
pub struct SetDevice {
    pub name: String,
    pub device: Device,
    /// The memory budget the device was opened with, in bytes (the pool refuses allocations past
    /// it with `Error::OutOfMemory`), and the budget plans are checked against.
    pub budget: Option<u64>,
}

impl SetDevice {
    /// Device `i` of a set: a GPU on `adapter` (`None`: the chosen one) with `budget`.
    fn gpu(i: usize, budget: Option<u64>, adapter: Option<usize>) -> Result<SetDevice> {
        let device = Device::gpu_with(&GpuOptions {
            memory_limit: budget,
            adapter,
            ..Default::default()
        })?;
        Ok(SetDevice {
            name: format!("{i}: {}", device.describe()),
            device,
            budget,
        })
    }
}

/// Devices a plan places on.
pub struct DeviceSet {
    devices: Vec<SetDevice>,
}

impl DeviceSet {
    /// `count` logical devices on the chosen adapter (`MLMF_ADAPTER`, else the best), each its
    /// own wgpu device with its own memory accounting and `budget`. This is how one GPU (or
    /// lavapipe, in the tests) stands for several.
    pub fn logical(count: usize, budget: Option<u64>) -> Result<DeviceSet> {
        (0..count)
            .map(|i| SetDevice::gpu(i, budget, None))
            .collect::<Result<Vec<_>>>()
            .and_then(DeviceSet::new)
    }

    /// One device on every adapter wgpu offers (the backends `MLMF_BACKEND` allows), each with
    /// `budget`.
    pub fn adapters(budget: Option<u64>) -> Result<DeviceSet> {
        (0..crate::adapters()?.len())
            .map(|i| SetDevice::gpu(i, budget, Some(i)))
            .collect::<Result<Vec<_>>>()
            .and_then(DeviceSet::new)
    }

    /// `count` CPU devices (the kernels' CPU twins), with `budget` used by plans only.
    pub fn cpu(count: usize, budget: Option<u64>) -> Result<DeviceSet> {
        DeviceSet::new(
            (0..count)
                .map(|i| SetDevice {
                    name: format!("{i}: cpu"),
                    device: Device::Cpu,
                    budget,
                })
                .collect(),
        )
    }

    /// Devices made by the caller.
    pub fn new(devices: Vec<SetDevice>) -> Result<DeviceSet> {
        if devices.is_empty() {
            return Err(Error::BadPlan {
                reason: "a device set needs at least one device".into(),
            });
        }
        Ok(DeviceSet { devices })
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    pub fn devices(&self) -> &[SetDevice] {
        &self.devices
    }

    pub fn device(&self, i: usize) -> Option<&Device> {
        self.devices.get(i).map(|d| &d.device)
    }

    /// The count and budgets a plan for this set uses, with `ratios` (`None`: from the budgets,
    /// else equal).
    pub fn targets(&self, ratios: Option<Vec<f64>>) -> Targets {
        Targets {
            count: self.devices.len(),
            ratios,
            budgets: self.devices.iter().map(|d| d.budget).collect(),
        }
    }

    /// Load `plan` (made for `file` and this many devices): every device its parts.
    pub fn load(&self, file: &ModelFile, plan: &Plan) -> Result<Vec<Loaded>> {
        if plan.devices.len() != self.devices.len() {
            return Err(Error::BadPlan {
                reason: format!(
                    "the plan is for {} devices; the set has {}",
                    plan.devices.len(),
                    self.devices.len()
                ),
            });
        }
        plan.devices
            .iter()
            .zip(&self.devices)
            .map(|(part, d)| load_part(&d.device, file, part))
            .collect()
    }
}

/// What one device loaded: its parts in plan order, the bytes read from the file, and how long
/// it took.
pub struct Loaded {
    pub parts: Vec<(Part, Tensor)>,
    pub bytes_read: u64,
    pub seconds: f64,
}

impl Loaded {
    /// The tensor (or part) called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.parts
            .iter()
            .find(|(p, _)| p.name == name)
            .map(|(_, t)| t)
    }

    /// Bytes the device holds for its parts.
    pub fn bytes_on_device(&self) -> u64 {
        self.parts.iter().map(|(_, t)| t.byte_len()).sum()
    }
}

/// Load one device's parts of a plan onto `device`, reading only their bytes. The plan must
/// have been made for this file: each part's byte range is recomputed from the file's index
/// and must match.
pub fn load_part(device: &Device, file: &ModelFile, plan: &DevicePlan) -> Result<Loaded> {
    check_parts(file, &plan.tensors)?;
    let start = Instant::now();
    let names: Vec<(&str, crate::Slice)> = plan
        .tensors
        .iter()
        .map(|p| (p.name.as_str(), p.slice.clone()))
        .collect();
    let mut bytes_read = 0;
    let tensors = device.load_slices_with_progress(file, &names, &mut |done, _| {
        bytes_read = done;
    })?;
    device.sync()?;
    Ok(Loaded {
        parts: plan.tensors.iter().cloned().zip(tensors).collect(),
        bytes_read,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Every part names a tensor of `file` and the bytes the file's index gives for that slice.
pub(crate) fn check_parts(file: &ModelFile, parts: &[Part]) -> Result<()> {
    for p in parts {
        let info = file.tensor(&p.name)?;
        let layout = p.slice.layout(file.file_of(info), info)?;
        if layout.bytes != p.byte_range || info.file != p.file {
            return Err(Error::BadPlan {
                reason: format!(
                    "'{}' ({}) lies at {:?} in {}, not at {:?} as the plan says: the plan was made for another file",
                    p.name,
                    p.slice,
                    layout.bytes,
                    file.file_of(info).display(),
                    p.byte_range
                ),
            });
        }
    }
    Ok(())
}

/// Where a rank gets the tensors a plan replicates (norms and the like under a row split).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicated {
    /// Every rank reads them from its own copy of the file.
    Read,
    /// Rank 0 reads them and broadcasts them; the other ranks read only their own parts, so the
    /// bytes read by all ranks add up to the file's tensor bytes.
    Broadcast,
}

/// One rank's whole load, collective over `comm`: open `path` (this rank's copy), compute the
/// plan for `comm.size()` equal devices (the same on every rank), load this rank's part onto
/// `device` (the replicated tensors as `replicated` says), and verify every rank's parts
/// ([`super::verify::verify`]). A rank that cannot open its file, load its part, or whose bytes
/// differ makes every rank return the same [`Error::RankFailed`] naming it.
pub fn load_rank(
    comm: &dyn Comm,
    path: &Path,
    split: &Split,
    device: &Device,
    replicated: Replicated,
) -> Result<(ModelFile, Plan, Loaded)> {
    let file = agreed(comm, "opening the model file", ModelFile::open(path))?;
    let targets = Targets::equal(comm.size());
    let plan = agreed(comm, "planning", Plan::for_file(&file, split, &targets))?;
    let mine = &plan.devices[comm.rank()];
    let loaded = match replicated {
        Replicated::Read => agreed(comm, "loading slices", load_part(device, &file, mine))?,
        Replicated::Broadcast => load_broadcasting(comm, &file, &plan, device)?,
    };
    super::verify::verify(comm, &file, &plan, &loaded)?;
    Ok((file, plan, loaded))
}

/// [`Replicated::Broadcast`]: rank 0 loads its whole part; the others load their own parts, then
/// take each replicated tensor from rank 0's broadcast, one tensor at a time.
fn load_broadcasting(
    comm: &dyn Comm,
    file: &ModelFile,
    plan: &Plan,
    device: &Device,
) -> Result<Loaded> {
    let rank = comm.rank();
    let mine = &plan.devices[rank];
    let is_shared = |p: &Part| plan.replicated.contains(&p.name);
    let own = DevicePlan {
        tensors: mine
            .tensors
            .iter()
            .filter(|p| rank == 0 || !is_shared(p))
            .cloned()
            .collect(),
        ..mine.clone()
    };
    let start = Instant::now();
    let mut loaded = agreed(comm, "loading slices", load_part(device, file, &own))?;
    let mut received = Vec::new();
    for p in mine.tensors.iter().filter(|p| is_shared(p)) {
        let mut bytes = Vec::new();
        let mut read = Ok(());
        if rank == 0 {
            match file.tensor(&p.name) {
                Ok(info) => {
                    let len = info.byte_len() as usize;
                    bytes = crate::Source::of(file, info)
                        .chunk(0, len, &mut Vec::new())
                        .to_vec();
                }
                Err(e) => read = Err(e),
            }
        }
        comm.broadcast(0, &mut bytes)?;
        let made = match rank {
            0 => read.map(|()| None),
            _ => file
                .tensor(&p.name)
                .and_then(|info| Tensor::from_bytes(&p.name, info.dtype, info.shape.clone(), bytes))
                .and_then(|t| t.to_device(device))
                .map(Some),
        };
        if let Some(t) = agreed(comm, "receiving replicated tensors", made)? {
            received.push((p.clone(), t));
        }
    }
    device.sync()?;
    // Back in plan order, which verification follows.
    let mut by_name: std::collections::HashMap<String, (Part, Tensor)> = loaded
        .parts
        .drain(..)
        .chain(received)
        .map(|(p, t)| (p.name.clone(), (p, t)))
        .collect();
    loaded.parts = mine
        .tensors
        .iter()
        .filter_map(|p| by_name.remove(&p.name))
        .collect();
    loaded.seconds = start.elapsed().as_secs_f64();
    Ok(loaded)
}

/// This rank's device: one GPU per rank of a node, the adapter at `local_rank` modulo the
/// adapters wgpu offers (all ranks share it when there is one, as on lavapipe). `MLMF_ADAPTER`,
/// when set, picks the adapter instead.
pub fn local_device(world: &World) -> Result<Device> {
    let adapter = match std::env::var_os("MLMF_ADAPTER") {
        Some(_) => None,
        None => Some(world.local_rank % crate::adapters()?.len().max(1)),
    };
    Device::gpu_with(&GpuOptions {
        adapter,
        ..Default::default()
    })
}
