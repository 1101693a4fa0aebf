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

pub mod ops;
