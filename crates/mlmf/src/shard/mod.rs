//! Placement across devices and processes: which device (or MPI rank) holds which tensors, or
//! which rows or columns of them, and loading only those bytes from the memory map.
//!
//! - `plan`: placement plans (replicate, layer split, row split, by modality) computed from a
//!   file's tensor index and the devices' budgets, the same on every process.
//! - `load`: a set of devices and loading a plan onto it, reading only each device's byte ranges.
//! - `world`, `comm`: the process group (MPI, torchrun or Slurm variables) and the collectives
//!   split ops use.
//! - `ops`: row-split and column-split linear products over the devices of a plan.
//! - `checkpoint`: every rank saves its slices; loading reassembles them for another world size.

pub mod checkpoint;
pub mod comm;
pub mod load;
pub mod ops;
pub mod plan;
mod roles;
pub mod synthetic;
pub mod verify;
pub mod world;

#[cfg(feature = "mpi")]
pub use comm::mpi::MpiComm;
pub use comm::{agreed, Comm, LocalComm, Single};
pub use load::{load_part, load_rank, local_device, DeviceSet, Loaded, Replicated, SetDevice};
pub use plan::{DevicePlan, Part, Plan, PrefixRule, Split, Targets};
pub use world::{World, WorldSource};
