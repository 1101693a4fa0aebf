//! Which process this is in a group of processes: its rank, the world size and its rank on its
//! own node (which local device it takes).
//!
//! [`World::detect`] asks, in order: MPI (when MPI is initialised in this process, which
//! `MpiComm::init` does; feature `mpi`), then torchrun's variables (`RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`), then Slurm's (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`), and otherwise
//! a world of one. The variables let a rank pick its device and
//! its part of a plan even where the caller runs the collectives itself (torch.distributed, NCCL).

use crate::error::{Error, Result};

/// Where a [`World`] was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorldSource {
    /// `MPI_COMM_WORLD` of an initialised MPI.
    Mpi,
    /// torchrun's (torch.distributed.elastic's) `RANK`, `WORLD_SIZE`, `LOCAL_RANK`.
    Torchrun,
    /// Slurm's `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID` (a task of `srun`).
    Slurm,
    /// No process group: rank 0 of 1.
    Single,
}

/// This process's place in the process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    /// Rank of this process, `0..size`.
    pub rank: usize,
    /// Number of processes.
    pub size: usize,
    /// Rank among the processes on this node: the index of the local device to use.
    pub local_rank: usize,
    /// Where these numbers came from.
    pub source: WorldSource,
}

/// The variables of one launcher: rank, size, local rank.
struct Launcher {
    source: WorldSource,
    rank: &'static str,
    size: &'static str,
    local_rank: &'static str,
}

const LAUNCHERS: [Launcher; 2] = [
    Launcher {
        source: WorldSource::Torchrun,
        rank: "RANK",
        size: "WORLD_SIZE",
        local_rank: "LOCAL_RANK",
    },
    Launcher {
        source: WorldSource::Slurm,
        rank: "SLURM_PROCID",
        size: "SLURM_NTASKS",
        local_rank: "SLURM_LOCALID",
    },
];

impl World {
    /// A world of one process.
    pub const SINGLE: World = World {
        rank: 0,
        size: 1,
        local_rank: 0,
        source: WorldSource::Single,
    };

    /// This process's world: from MPI when it is initialised (feature `mpi`), else from the
    /// variables of torchrun, else Slurm's, else [`World::SINGLE`]. Malformed or half-set
    /// variables (a number that is not one, a rank not below the size, a size of 0, one of a
    /// launcher's three missing) are an [`Error::Distributed`] naming the variable.
    pub fn detect() -> Result<World> {
        #[cfg(feature = "mpi")]
        if let Some(world) = super::comm::mpi::initialised_world()? {
            return Ok(world);
        }
        World::from_env(|name| std::env::var(name).ok())
    }

    /// [`World::detect`] without MPI, over any variable lookup (`lookup(name)` is the value of
    /// the variable `name`, `None` when unset). A launcher counts as present when any of its
    /// three variables is set; then all three must be.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<World> {
        for launcher in &LAUNCHERS {
            let names = [launcher.rank, launcher.size, launcher.local_rank];
            if names.iter().all(|name| lookup(name).is_none()) {
                continue;
            }
            let rank = number(&lookup, launcher.rank)?;
            let size = number(&lookup, launcher.size)?;
            let local_rank = number(&lookup, launcher.local_rank)?;
            if size == 0 {
                return Err(bad(launcher.size, "0", "a world has at least one process"));
            }
            if rank >= size {
                return Err(bad(
                    launcher.rank,
                    &rank.to_string(),
                    &format!("not below {}={size}", launcher.size),
                ));
            }
            if local_rank > rank {
                // Local ranks number the processes of one node, a subset of the world.
                return Err(bad(
                    launcher.local_rank,
                    &local_rank.to_string(),
                    &format!("above {}={rank}", launcher.rank),
                ));
            }
            return Ok(World {
                rank,
                size,
                local_rank,
                source: launcher.source,
            });
        }
        Ok(World::SINGLE)
    }
}

fn number(lookup: &impl Fn(&str) -> Option<String>, name: &str) -> Result<usize> {
    let Some(value) = lookup(name) else {
        return Err(Error::Distributed {
            during: format!("reading {name}"),
            reason: "not set, while other variables of its launcher are".into(),
        });
    };
    value
        .parse::<usize>()
        .map_err(|_| bad(name, &value, "not a non-negative integer"))
}

fn bad(name: &str, value: &str, why: &str) -> Error {
    Error::Distributed {
        during: format!("reading {name}"),
        reason: format!("{name}={value:?}: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<World> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        World::from_env(|name| vars.get(name).cloned())
    }

    fn distributed_naming(result: Result<World>, var: &str) {
        match result {
            Err(Error::Distributed { during, reason }) => {
                assert!(during.contains(var), "{during}: {reason}");
            }
            other => panic!("expected Distributed naming {var}, got {other:?}"),
        }
    }

    #[test]
    fn nothing_set_is_a_world_of_one() {
        assert_eq!(world(&[]).unwrap(), World::SINGLE);
    }

    #[test]
    fn torchrun_variables() {
        let w = world(&[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1")]).unwrap();
        assert_eq!(
            w,
            World {
                rank: 3,
                size: 8,
                local_rank: 1,
                source: WorldSource::Torchrun
            }
        );
    }

    #[test]
    fn slurm_variables() {
        let w = world(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "6"),
            ("SLURM_LOCALID", "2"),
        ])
        .unwrap();
        assert_eq!(
            w,
            World {
                rank: 5,
                size: 6,
                local_rank: 2,
                source: WorldSource::Slurm
            }
        );
    }

    #[test]
    fn torchrun_before_slurm() {
        // torchrun started inside a Slurm allocation: torchrun's numbers are the process group.
        let w = world(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("SLURM_LOCALID", "0"),
        ])
        .unwrap();
        assert_eq!(w.source, WorldSource::Torchrun);
        assert_eq!((w.rank, w.size), (1, 2));
    }

    #[test]
    fn not_a_number() {
        distributed_naming(
            world(&[("RANK", "one"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")]),
            "RANK",
        );
        distributed_naming(
            world(&[("RANK", "0"), ("WORLD_SIZE", "-2"), ("LOCAL_RANK", "0")]),
            "WORLD_SIZE",
        );
        distributed_naming(
            world(&[
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "2"),
                ("SLURM_LOCALID", ""),
            ]),
            "SLURM_LOCALID",
        );
    }

    #[test]
    fn rank_not_below_size() {
        distributed_naming(
            world(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")]),
            "RANK",
        );
        distributed_naming(
            world(&[
                ("SLURM_PROCID", "4"),
                ("SLURM_NTASKS", "4"),
                ("SLURM_LOCALID", "0"),
            ]),
            "SLURM_PROCID",
        );
    }

    #[test]
    fn size_zero() {
        distributed_naming(
            world(&[("RANK", "0"), ("WORLD_SIZE", "0"), ("LOCAL_RANK", "0")]),
            "WORLD_SIZE",
        );
    }

    #[test]
    fn local_rank_above_rank() {
        distributed_naming(
            world(&[("RANK", "1"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "2")]),
            "LOCAL_RANK",
        );
    }

    #[test]
    fn half_set_launcher() {
        distributed_naming(world(&[("RANK", "0"), ("WORLD_SIZE", "2")]), "LOCAL_RANK");
        distributed_naming(world(&[("LOCAL_RANK", "0")]), "RANK");
        distributed_naming(world(&[("SLURM_NTASKS", "2")]), "SLURM_PROCID");
    }
}
