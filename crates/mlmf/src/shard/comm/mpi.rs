//! [`Comm`] over `MPI_COMM_WORLD`, through rsmpi (feature `mpi`).
//!
//! What each collective relies on from MPI:
//! - every call is a blocking collective of MPI-1 (`MPI_Barrier`, `MPI_Bcast`, `MPI_Allgather`,
//!   `MPI_Allgatherv`, `MPI_Alltoallv`), whose results are fixed by the standard byte for byte;
//! - `all_reduce_sum` does not use `MPI_Allreduce`: the standard leaves the order in which it
//!   adds the ranks' values to the implementation, so its bits may differ from the rank-order
//!   sum that [`Comm`] promises and that [`LocalComm`] computes. Measured with Open MPI 4.1.4 at
//!   4 ranks: `MPI_Allreduce` sums (1e8, 1, -1e8, 1) to 0 (as `(r0 + r1) + (r2 + r3)` does, for
//!   1 value and for 1 Mi values), where the rank-order sum is 1.
//!   Instead each rank receives one chunk of every rank's values (`MPI_Alltoallv`), adds them
//!   in rank order, and the chunks are gathered back (`MPI_Allgatherv`): the same traffic as a
//!   reduce-scatter plus all-gather, and the same bits on every rank and as [`LocalComm`].
//!   [`MpiComm::all_reduce_sum_bare`] is the plain `MPI_Allreduce`, for comparison.
//! - arguments that must agree across ranks (lengths for the sum, the root of a broadcast) are
//!   exchanged first, so a mismatch is an error on every rank rather than undefined behaviour.
//!
//! MPI's default error handler (`MPI_ERRORS_ARE_FATAL`) stays: an MPI failure aborts the job, and
//! a rank that dies outright makes `mpirun` abort the others.
//!
//! [`LocalComm`]: super::LocalComm

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use ::mpi::collective::SystemOperation;
use ::mpi::datatype::{Partition, PartitionMut};
use ::mpi::environment::{self, Threading, Universe};
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::*;
use ::mpi::Count;

use super::{agree_by_all_gather, distributed, sum_in_rank_order, Comm};
use crate::error::Result;
use crate::shard::world::{World, WorldSource};

/// MPI as initialised by [`MpiComm::init`]: finalised when the last `MpiComm` is dropped.
struct Owner {
    /// `None` when MPI was initialised by other code, which then finalises it.
    universe: Option<Universe>,
    world: World,
    /// MPI is initialised with `MPI_THREAD_SERIALIZED`: one call at a time, from any thread.
    calls: Mutex<()>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        // A rank unwinding from a panic would wait in MPI_Finalize for ranks that wait for it in
        // a collective: abort the job instead, so that the failure is loud and immediate.
        if std::thread::panicking() {
            SimpleCommunicator::world().abort(1);
        }
        drop(self.universe.take());
    }
}

/// The live MPI of this process, if an [`MpiComm`] holds it.
static LIVE: Mutex<Weak<Owner>> = Mutex::new(Weak::new());

fn live() -> MutexGuard<'static, Weak<Owner>> {
    // The guarded value is a weak pointer: a panic elsewhere cannot leave it half-written.
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This process's world from MPI, when MPI is initialised (by [`MpiComm::init`] or by other
/// code); `None` when it is not.
pub(crate) fn initialised_world() -> Result<Option<World>> {
    if let Some(owner) = live().upgrade() {
        return Ok(Some(owner.world));
    }
    if !environment::is_initialized() {
        return Ok(None);
    }
    if environment::is_finalized() {
        return Err(distributed(
            "finding the MPI world",
            "MPI was finalized in this process (the last MpiComm was dropped)",
        ));
    }
    // Initialised by other code: rank and size from MPI (local calls), the local rank from the
    // launcher, since asking MPI for it (MPI_Comm_split_type) is a collective.
    let world = SimpleCommunicator::world();
    Ok(Some(World {
        rank: world.rank() as usize,
        size: world.size() as usize,
        local_rank: local_rank_from_launcher()?,
        source: WorldSource::Mpi,
    }))
}

fn local_rank_from_launcher() -> Result<usize> {
    // Open MPI's mpirun, then MPICH's Hydra.
    for name in ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"] {
        if let Ok(value) = std::env::var(name) {
            return value.parse().map_err(|_| {
                distributed(
                    format!("reading {name}").as_str(),
                    format!("{name}={value:?}: not a non-negative integer"),
                )
            });
        }
    }
    Err(distributed(
        "finding the MPI local rank",
        "MPI was initialised by other code and neither OMPI_COMM_WORLD_LOCAL_RANK nor \
         MPI_LOCALRANKID is set",
    ))
}

/// `MPI_COMM_WORLD` as a [`Comm`]. Clones share one initialisation of MPI, which is finalised
/// when the last one is dropped (MPI cannot be initialised again in that process).
#[derive(Clone)]
pub struct MpiComm {
    owner: Arc<Owner>,
}

impl MpiComm {
    /// Initialises MPI (once per process, `MPI_THREAD_SERIALIZED`) and returns its world. While
    /// an `MpiComm` is alive, another `init` returns the same world. If MPI was initialised by
    /// other code, uses it without finalising it. After the last `MpiComm` was dropped MPI is
    /// finalised, and `init` is an [`Error::Distributed`](crate::Error::Distributed).
    ///
    /// Collective: every rank calls it (it asks MPI which ranks share this node).
    pub fn init() -> Result<MpiComm> {
        let mut live = live();
        if let Some(owner) = live.upgrade() {
            return Ok(MpiComm { owner });
        }
        if environment::is_finalized() {
            return Err(distributed(
                "MPI init",
                "MPI was already finalized in this process (the last MpiComm was dropped); it \
                 cannot be initialised twice",
            ));
        }
        let universe = match environment::initialize_with_threading(Threading::Serialized) {
            Some((universe, provided)) => {
                if matches!(provided, Threading::Single | Threading::Funneled) {
                    // Dropping `universe` finalises MPI again.
                    return Err(distributed(
                        "MPI init",
                        format!(
                            "this MPI provides threading level {provided:?}; mlmf needs \
                             Serialized (calls from any thread, one at a time)"
                        ),
                    ));
                }
                Some(universe)
            }
            // Initialised by other code, which owns MPI_Finalize.
            None => None,
        };
        let world = SimpleCommunicator::world();
        let rank = world.rank() as usize;
        let size = world.size() as usize;
        // The ranks that share this node's memory, ordered by world rank: the local rank.
        let local_rank = world.split_shared(rank as i32).rank() as usize;
        let owner = Arc::new(Owner {
            universe,
            world: World {
                rank,
                size,
                local_rank,
                source: WorldSource::Mpi,
            },
            calls: Mutex::new(()),
        });
        *live = Arc::downgrade(&owner);
        Ok(MpiComm { owner })
    }

    /// This process's place in the MPI world.
    pub fn world(&self) -> World {
        self.owner.world
    }

    /// One MPI call at a time in this process, as `MPI_THREAD_SERIALIZED` requires; the
    /// world communicator to call it on.
    fn calls(&self) -> (MutexGuard<'_, ()>, SimpleCommunicator) {
        // The guard protects no data: a panic while it was held leaves nothing half-written.
        let guard = self
            .owner
            .calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (guard, SimpleCommunicator::world())
    }

    /// Every rank's `value`, in rank order (`MPI_Allgather` of one `u64` per rank).
    fn gather_u64s(world: &SimpleCommunicator, values: &[u64]) -> Vec<u64> {
        let mut all = vec![0u64; values.len() * world.size() as usize];
        world.all_gather_into(values, &mut all[..]);
        all
    }

    /// Plain `MPI_Allreduce(MPI_SUM)` of `send` into `recv`, for benchmarks beside
    /// [`Comm::all_reduce_sum`]. Its summation order is MPI's; lengths are checked on this rank
    /// only (a length that differs across ranks is undefined behaviour in MPI).
    pub fn all_reduce_sum_bare(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        if send.len() != recv.len() {
            return Err(distributed(
                "all_reduce_sum_bare",
                format!("send has {} values, recv {}", send.len(), recv.len()),
            ));
        }
        count(send.len(), "all_reduce_sum_bare")?;
        let (_guard, world) = self.calls();
        world.all_reduce_into(send, recv, SystemOperation::sum());
        Ok(())
    }
}

/// `n` as an MPI count (a C int), or an error naming the collective.
fn count(n: usize, during: &str) -> Result<Count> {
    Count::try_from(n).map_err(|_| {
        distributed(
            during,
            format!("{n} elements is more than one MPI call can carry (2^31 - 1)"),
        )
    })
}

/// Start of rank `r`'s chunk when `n` values are cut into `size` near-equal chunks.
fn chunk_start(n: usize, size: usize, r: usize) -> usize {
    // n < 2^31 (checked by the caller) and r <= size, so the product fits in u64.
    ((n as u64 * r as u64) / size as u64) as usize
}

/// Broadcasts carry at most this many bytes per `MPI_Bcast` (counts are C ints).
const BROADCAST_PIECE: usize = 1 << 30;

impl Comm for MpiComm {
    fn rank(&self) -> usize {
        self.owner.world.rank
    }

    fn size(&self) -> usize {
        self.owner.world.size
    }

    fn barrier(&self) -> Result<()> {
        let (_guard, world) = self.calls();
        world.barrier();
        Ok(())
    }

    fn broadcast(&self, root: usize, bytes: &mut Vec<u8>) -> Result<()> {
        let (rank, size) = (self.rank(), self.size());
        let (_guard, world) = self.calls();
        // Every rank's root, and the root's length: checked here before MPI_Bcast, where a root
        // that differs across ranks would be undefined behaviour.
        let mine_len = if rank == root { bytes.len() as u64 } else { 0 };
        let header = Self::gather_u64s(&world, &[root as u64, mine_len]);
        if let Some(r) = (0..size).find(|&r| header[2 * r] != root as u64) {
            return Err(distributed(
                "broadcast",
                format!(
                    "ranks broadcast from different roots: {root} here, {} on rank {r}",
                    header[2 * r]
                ),
            ));
        }
        if root >= size {
            return Err(distributed(
                "broadcast",
                format!("root {root} in a world of {size}"),
            ));
        }
        let len = usize::try_from(header[2 * root + 1])
            .map_err(|_| distributed("broadcast", "the root's length does not fit in memory"))?;
        if rank != root {
            bytes.clear();
            bytes.resize(len, 0);
        }
        let process = world.process_at_rank(root as i32);
        for piece in bytes.chunks_mut(BROADCAST_PIECE) {
            process.broadcast_into(piece);
        }
        Ok(())
    }

    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let (_guard, world) = self.calls();
        let lens = Self::gather_u64s(&world, &[mine.len() as u64]);
        // The same checks on every rank from the same lengths: all pass or all fail.
        let mut counts = Vec::with_capacity(lens.len());
        let mut displs = Vec::with_capacity(lens.len());
        let mut total: usize = 0;
        for &len in &lens {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            displs.push(count(total, "all_gather")?);
            counts.push(count(len, "all_gather")?);
            total = total
                .checked_add(len)
                .ok_or_else(|| distributed("all_gather", "total length overflows"))?;
        }
        count(total, "all_gather")?;
        let mut buf = vec![0u8; total];
        {
            let mut partition = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
            world.all_gather_varcount_into(mine, &mut partition);
        }
        Ok(counts
            .iter()
            .zip(&displs)
            .map(|(&c, &d)| buf[d as usize..(d + c) as usize].to_vec())
            .collect())
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()> {
        let size = self.size();
        let rank = self.rank();
        let (_guard, world) = self.calls();
        let lens = Self::gather_u64s(&world, &[values.len() as u64]);
        if lens.iter().any(|&l| l != values.len() as u64) {
            return Err(distributed(
                "all_reduce_sum",
                format!("lengths differ across ranks: {lens:?}"),
            ));
        }
        let n = values.len();
        count(n, "all_reduce_sum")?;
        // Rank r owns values[start(r)..start(r + 1)]: it receives that chunk from every rank,
        // sums in rank order, and the owned chunks are gathered back into `values`.
        let starts: Vec<usize> = (0..=size).map(|r| chunk_start(n, size, r)).collect();
        let chunk_counts: Vec<Count> = (0..size)
            .map(|r| (starts[r + 1] - starts[r]) as Count)
            .collect();
        let chunk_displs: Vec<Count> = starts[..size].iter().map(|&s| s as Count).collect();
        let mine = starts[rank + 1] - starts[rank];
        // size * mine <= n + size: fits, since n < 2^31 and ranks are few.
        let recv_counts = vec![mine as Count; size];
        let recv_displs: Vec<Count> = (0..size).map(|r| (r * mine) as Count).collect();
        let mut received = vec![0f32; size * mine];
        {
            let send = Partition::new(&*values, &chunk_counts[..], &chunk_displs[..]);
            let mut recv = PartitionMut::new(&mut received[..], &recv_counts[..], &recv_displs[..]);
            world.all_to_all_varcount_into(&send, &mut recv);
        }
        let mut owned = vec![0f32; mine];
        if mine > 0 {
            sum_in_rank_order(&mut owned, received.chunks_exact(mine));
        }
        let mut gathered = PartitionMut::new(values, &chunk_counts[..], &chunk_displs[..]);
        world.all_gather_varcount_into(&owned[..], &mut gathered);
        Ok(())
    }

    fn agree(&self, during: &str, mine: Result<()>) -> Result<()> {
        agree_by_all_gather(self, during, mine)
    }
}
