//! `mlmf bench-load FILE --split ...`: every rank (an MPI process under `mpirun`, else a thread
//! per device in this process) loads its part of the plan onto its own device and verifies
//! it; the reports of all ranks are printed by rank 0.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use mlmf::shard::{load_rank, local_device, Comm, LocalComm, Replicated, Split, World};
use serde::{Deserialize, Serialize};

use crate::{json_line, CliError, Result};

/// What one rank did.
#[derive(Serialize, Deserialize)]
struct RankReport {
    rank: usize,
    world_size: usize,
    split: String,
    device: String,
    /// Bytes of the file this rank read to load its parts.
    bytes_read: u64,
    /// Bytes its parts take on its device.
    bytes_on_device: u64,
    /// Seconds from the first byte read to the parts resident on the device.
    seconds: f64,
    /// Seconds for hashing and checking every rank's parts (rank 0 reads its whole copy).
    verify_seconds: f64,
    /// Its parts hash as the file says (a rank whose parts do not makes every rank fail).
    verified: bool,
}

fn one_rank(
    comm: &dyn Comm,
    world: World,
    path: &Path,
    split: &Split,
    replicated: Replicated,
) -> mlmf::Result<RankReport> {
    let device = local_device(&world)?;
    let start = Instant::now();
    let (_file, plan, loaded) = load_rank(comm, path, split, &device, replicated)?;
    let total = start.elapsed().as_secs_f64();
    Ok(RankReport {
        rank: comm.rank(),
        world_size: comm.size(),
        split: plan.split.clone(),
        device: device.describe(),
        bytes_read: loaded.bytes_read,
        bytes_on_device: loaded.bytes_on_device(),
        seconds: loaded.seconds,
        verify_seconds: (total - loaded.seconds).max(0.0),
        verified: true,
    })
}

/// Whether `mpirun` (Open MPI, MPICH's Hydra) started this process.
fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

pub(crate) fn bench_split(
    path: &Path,
    split: Split,
    devices: usize,
    replicated: Replicated,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let reports: Vec<RankReport> = if launched_by_mpi() {
        match mpi_ranks(path, &split, replicated)? {
            Some(all) => all,
            // Not rank 0: rank 0 prints.
            None => return Ok(()),
        }
    } else {
        let group = LocalComm::group(devices);
        let results: Vec<mlmf::Result<RankReport>> = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .iter()
                .map(|comm| {
                    let split = &split;
                    s.spawn(move || {
                        let world = World {
                            rank: comm.rank(),
                            size: comm.size(),
                            local_rank: comm.rank(),
                            source: mlmf::shard::WorldSource::Single,
                        };
                        one_rank(comm, world, path, split, replicated)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(mlmf::Error::Distributed {
                            during: "bench-load".into(),
                            reason: "a rank's thread panicked".into(),
                        })
                    })
                })
                .collect()
        });
        results.into_iter().collect::<mlmf::Result<Vec<_>>>()?
    };
    for r in &reports {
        if json {
            json_line(out, r, false)?;
        } else {
            outln!(
                out,
                "rank {}/{} ({}): {} split, read {} bytes, {} on device, {:.3} s, verified in {:.3} s",
                r.rank,
                r.world_size,
                r.device,
                r.split,
                r.bytes_read,
                r.bytes_on_device,
                r.seconds,
                r.verify_seconds
            );
        }
    }
    Ok(())
}

/// Every rank's report on rank 0 (`Some`), `None` on the others.
#[cfg(feature = "mpi")]
fn mpi_ranks(
    path: &Path,
    split: &Split,
    replicated: Replicated,
) -> Result<Option<Vec<RankReport>>> {
    let comm = mlmf::shard::MpiComm::init()?;
    let report = one_rank(&comm, comm.world(), path, split, replicated)?;
    let bytes = serde_json::to_vec(&report).map_err(|e| CliError::Output(e.into()))?;
    let all = comm.all_gather(&bytes)?;
    if comm.rank() != 0 {
        return Ok(None);
    }
    let reports = all
        .iter()
        .map(|b| {
            serde_json::from_slice(b).map_err(|e| {
                CliError::Mlmf(mlmf::Error::Distributed {
                    during: "gathering reports".into(),
                    reason: e.to_string(),
                })
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(reports))
}

#[cfg(not(feature = "mpi"))]
fn mpi_ranks(
    _path: &Path,
    _split: &Split,
    _replicated: Replicated,
) -> Result<Option<Vec<RankReport>>> {
    Err(CliError::Usage(
        "started by mpirun, but this mlmf was built without the `mpi` feature".into(),
    ))
}
