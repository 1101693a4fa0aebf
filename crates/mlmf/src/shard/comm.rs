//! Collectives over a process group: the few that split ops, distributed loading and
//! distributed saving use, on host bytes and host `f32`s.
//!
//! - [`Comm`]: the object-safe trait the rest of `shard` codes against.
//! - [`Single`]: a world of one.
//! - [`LocalComm`]: N members in one process (one per thread), so that every distributed path
//!   runs in an ordinary test without MPI.
//! - `MpiComm` (feature `mpi`): `MPI_COMM_WORLD` through rsmpi.
//!
//! Failure is loud, never a hang. A rank that fails a step passes its error to [`Comm::agree`],
//! and every rank gets the same [`Error::RankFailed`]. Arguments that differ across ranks (a
//! length for `all_reduce_sum`, the root of a broadcast) are checked after an exchange, so every
//! rank returns the same error. A [`LocalComm`] member that never joins a collective makes the
//! others return [`Error::Distributed`] after the group's timeout. An MPI rank that dies outright
//! is handled by `mpirun`, which aborts the whole job; a rank that panics while holding an
//! `MpiComm` aborts the job (`MPI_Abort`) rather than waiting in `MPI_Finalize`.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

#[cfg(feature = "mpi")]
pub mod mpi;

/// A process group and its collectives. Every member calls the same collectives in the same
/// order (as with MPI); all are blocking.
pub trait Comm: Send + Sync {
    /// This member's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of members.
    fn size(&self) -> usize;
    /// Returns once every member has called it.
    fn barrier(&self) -> Result<()>;
    /// Root's bytes to every rank (others' `bytes` are replaced, any length).
    fn broadcast(&self, root: usize, bytes: &mut Vec<u8>) -> Result<()>;
    /// Every rank's bytes (lengths may differ), in rank order, on every rank.
    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Element-wise sum over ranks, in place, same length on every rank (checked: a length
    /// mismatch is an error on every rank, not UB). Sum order is rank 0,1,2.. so results are
    /// identical on every rank.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()>;
    /// Every rank passes its own outcome of a step; all return Ok only if every rank's was Ok,
    /// else every rank returns Error::RankFailed { rank, during, reason } for the lowest failing
    /// rank (its error's Display text as reason).
    fn agree(&self, during: &str, mine: Result<()>) -> Result<()>;
}

fn distributed(during: &str, reason: impl Into<String>) -> Error {
    Error::Distributed {
        during: during.to_string(),
        reason: reason.into(),
    }
}

/// Sums `parts` element-wise into `out` in rank order: `((p0 + p1) + p2) + ..`. Every
/// implementation sums this way, so a sum is the same bits on every rank and in every group.
fn sum_in_rank_order<'a>(out: &mut [f32], mut parts: impl Iterator<Item = &'a [f32]>) {
    if let Some(first) = parts.next() {
        out.copy_from_slice(first);
    }
    for part in parts {
        for (acc, x) in out.iter_mut().zip(part) {
            *acc += *x;
        }
    }
}

/// The outcome of [`Comm::agree`] given each rank's `during` and failure, in rank order.
fn agreement<'a>(
    during: &str,
    outcomes: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<()> {
    let outcomes: Vec<_> = outcomes.collect();
    if let Some((rank, (other, _))) = outcomes
        .iter()
        .enumerate()
        .find(|(_, (other, _))| *other != during)
    {
        return Err(distributed(
            "agree",
            format!(
                "ranks agree on different steps: '{during}' here, '{other}' on rank {rank} \
                 (every rank must call the same collectives in the same order)"
            ),
        ));
    }
    match outcomes
        .iter()
        .enumerate()
        .find_map(|(rank, (_, failure))| failure.map(|reason| (rank, reason)))
    {
        Some((rank, reason)) => Err(Error::RankFailed {
            rank,
            during: during.to_string(),
            reason: reason.to_string(),
        }),
        None => Ok(()),
    }
}

/// How [`Comm::agree`] travels as bytes (over MPI's all-gather): `during`'s length (u32 LE),
/// `during`, then the failure's text, absent when the step succeeded (a flag byte before it).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn encode_outcome(during: &str, failure: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + during.len() + failure.map_or(0, str::len));
    out.extend_from_slice(&(during.len() as u32).to_le_bytes());
    out.extend_from_slice(during.as_bytes());
    match failure {
        None => out.push(0),
        Some(reason) => {
            out.push(1);
            out.extend_from_slice(reason.as_bytes());
        }
    }
    out
}

/// The inverse of [`encode_outcome`]; `None` for bytes it did not write.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn decode_outcome(bytes: &[u8]) -> Option<(&str, Option<&str>)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let end = 4usize.checked_add(len)?;
    let during = std::str::from_utf8(bytes.get(4..end)?).ok()?;
    match *bytes.get(end)? {
        0 if bytes.len() == end + 1 => Some((during, None)),
        1 => Some((during, Some(std::str::from_utf8(&bytes[end + 1..]).ok()?))),
        _ => None,
    }
}

/// [`Comm::agree`] over [`Comm::all_gather`], for implementations whose transport is bytes.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn agree_by_all_gather(comm: &dyn Comm, during: &str, mine: Result<()>) -> Result<()> {
    let failure = mine.err().map(|e| e.to_string());
    let all = comm.all_gather(&encode_outcome(during, failure.as_deref()))?;
    let mut outcomes = Vec::with_capacity(all.len());
    for (rank, bytes) in all.iter().enumerate() {
        outcomes.push(decode_outcome(bytes).ok_or_else(|| {
            distributed("agree", format!("rank {rank} sent a malformed outcome"))
        })?);
    }
    agreement(during, outcomes.into_iter())
}

/// A world of one: every collective returns at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Comm for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, root: usize, _bytes: &mut Vec<u8>) -> Result<()> {
        if root != 0 {
            return Err(distributed(
                "broadcast",
                format!("root {root} in a world of 1"),
            ));
        }
        Ok(())
    }
    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }
    fn all_reduce_sum(&self, _values: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn agree(&self, during: &str, mine: Result<()>) -> Result<()> {
        mine.map_err(|e| Error::RankFailed {
            rank: 0,
            during: during.to_string(),
            reason: e.to_string(),
        })
    }
}

/// One member's contribution to a [`LocalComm`] collective.
enum Part {
    Barrier,
    /// The root sends its bytes; the others `None`.
    Broadcast {
        root: usize,
        bytes: Option<Vec<u8>>,
    },
    AllGather(Vec<u8>),
    AllReduce(Vec<f32>),
    Agree {
        during: String,
        failure: Option<String>,
    },
}

impl Part {
    /// What a member asked for, in words: every member of one round must ask the same.
    fn describe(&self) -> String {
        match self {
            Part::Barrier => "barrier".into(),
            Part::Broadcast { root, .. } => format!("broadcast from rank {root}"),
            Part::AllGather(_) => "all_gather".into(),
            Part::AllReduce(v) => format!("all_reduce_sum of {} values", v.len()),
            // `during` is compared by `agreement`, with its own message.
            Part::Agree { .. } => "agree".into(),
        }
    }
}

struct Round {
    /// Rounds completed so far.
    round: u64,
    /// This round's contributions, by rank.
    parts: Vec<Option<Part>>,
    arrived: usize,
    /// The last completed round's contributions, kept until the next round completes (which
    /// needs every member, so every member has taken its copy by then).
    done: Option<Arc<Vec<Part>>>,
    /// Why the group can no longer be used: a member timed out waiting, or left.
    broken: Option<String>,
}

struct Group {
    size: usize,
    timeout: Duration,
    state: Mutex<Round>,
    turn: Condvar,
}

/// A member of an in-process group of N communicators, one per thread ([`LocalComm::group`]).
/// Every collective exchanges the members' contributions under one mutex; each member then
/// computes its result from all of them (sums in rank order, as [`Comm`] requires).
///
/// A collective waits at most the group's timeout (60 s by default) for the other members; past
/// it, or when a member was dropped, every waiting and later collective returns
/// [`Error::Distributed`] naming the missing ranks.
pub struct LocalComm {
    rank: usize,
    group: Arc<Group>,
}

impl LocalComm {
    /// The default wait of a collective for the other members.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    /// `n` members (ranks `0..n`, in order), with [`LocalComm::DEFAULT_TIMEOUT`].
    pub fn group(n: usize) -> Vec<LocalComm> {
        LocalComm::group_with_timeout(n, LocalComm::DEFAULT_TIMEOUT)
    }

    /// `n` members whose collectives wait at most `timeout` for the others.
    pub fn group_with_timeout(n: usize, timeout: Duration) -> Vec<LocalComm> {
        let group = Arc::new(Group {
            size: n,
            timeout,
            state: Mutex::new(Round {
                round: 0,
                parts: (0..n).map(|_| None).collect(),
                arrived: 0,
                done: None,
                broken: None,
            }),
            turn: Condvar::new(),
        });
        (0..n)
            .map(|rank| LocalComm {
                rank,
                group: group.clone(),
            })
            .collect()
    }

    fn lock(&self, what: &str) -> Result<MutexGuard<'_, Round>> {
        self.group
            .state
            .lock()
            .map_err(|_| distributed(what, "a member panicked inside a collective"))
    }

    /// Contributes `part` to the current round and returns every member's contribution, after
    /// checking that all asked for the same collective.
    fn exchange(&self, what: &str, part: Part) -> Result<Arc<Vec<Part>>> {
        let size = self.group.size;
        let mut state = self.lock(what)?;
        if let Some(reason) = &state.broken {
            return Err(distributed(what, reason.clone()));
        }
        let round = state.round;
        state.parts[self.rank] = Some(part);
        state.arrived += 1;
        let all = if state.arrived == size {
            let parts: Option<Vec<Part>> = state.parts.iter_mut().map(Option::take).collect();
            let parts = parts.ok_or_else(|| distributed(what, "a contribution went missing"))?;
            let all = Arc::new(parts);
            state.done = Some(all.clone());
            state.arrived = 0;
            state.round += 1;
            self.group.turn.notify_all();
            all
        } else {
            let deadline = Instant::now() + self.group.timeout;
            loop {
                if state.round != round {
                    break state
                        .done
                        .clone()
                        .ok_or_else(|| distributed(what, "a completed round has no result"))?;
                }
                if let Some(reason) = &state.broken {
                    return Err(distributed(what, reason.clone()));
                }
                let now = Instant::now();
                if now >= deadline {
                    let missing: Vec<usize> =
                        (0..size).filter(|&r| state.parts[r].is_none()).collect();
                    let reason = format!(
                        "rank {} waited {:?} for ranks {missing:?} to join",
                        self.rank, self.group.timeout
                    );
                    state.broken = Some(reason.clone());
                    self.group.turn.notify_all();
                    return Err(distributed(what, reason));
                }
                state = self
                    .group
                    .turn
                    .wait_timeout(state, deadline - now)
                    .map_err(|_| distributed(what, "a member panicked inside a collective"))?
                    .0;
            }
        };
        drop(state);
        let first = all[0].describe();
        if let Some((rank, other)) = all.iter().enumerate().find(|(_, p)| p.describe() != first) {
            return Err(distributed(
                what,
                format!(
                    "ranks called different collectives: rank 0 {first}, rank {rank} {}",
                    other.describe()
                ),
            ));
        }
        Ok(all)
    }
}

impl Drop for LocalComm {
    fn drop(&mut self) {
        // A member that is gone can never join again: the others fail now instead of waiting
        // out the timeout.
        if let Ok(mut state) = self.group.state.lock() {
            if state.broken.is_none() {
                state.broken = Some(format!("rank {} left the group", self.rank));
            }
            self.group.turn.notify_all();
        }
    }
}

impl Comm for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.group.size
    }

    fn barrier(&self) -> Result<()> {
        self.exchange("barrier", Part::Barrier).map(|_| ())
    }

    fn broadcast(&self, root: usize, bytes: &mut Vec<u8>) -> Result<()> {
        let mine = (self.rank == root).then(|| bytes.clone());
        let all = self.exchange("broadcast", Part::Broadcast { root, bytes: mine })?;
        match all.get(root) {
            Some(Part::Broadcast {
                bytes: Some(sent), ..
            }) => {
                if self.rank != root {
                    bytes.clone_from(sent);
                }
                Ok(())
            }
            _ => Err(distributed(
                "broadcast",
                format!("root {root} in a world of {}", self.group.size),
            )),
        }
    }

    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let all = self.exchange("all_gather", Part::AllGather(mine.to_vec()))?;
        Ok(all
            .iter()
            .map(|p| match p {
                Part::AllGather(b) => b.clone(),
                _ => Vec::new(), // unreachable: exchange checked every part's kind
            })
            .collect())
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()> {
        let all = self.exchange("all_reduce_sum", Part::AllReduce(values.to_vec()))?;
        sum_in_rank_order(
            values,
            all.iter().map(|p| match p {
                Part::AllReduce(v) => v.as_slice(),
                _ => &[], // unreachable: exchange checked every part's kind
            }),
        );
        Ok(())
    }

    fn agree(&self, during: &str, mine: Result<()>) -> Result<()> {
        let part = Part::Agree {
            during: during.to_string(),
            failure: mine.err().map(|e| e.to_string()),
        };
        let all = self.exchange("agree", part)?;
        agreement(
            during,
            all.iter().map(|p| match p {
                Part::Agree { during, failure } => (during.as_str(), failure.as_deref()),
                _ => ("", None), // unreachable: exchange checked every part's kind
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on every member of a group of `n`, each on its own thread; results by rank.
    fn on_group<T: Send>(
        members: Vec<LocalComm>,
        f: impl Fn(&LocalComm) -> T + Sync,
    ) -> Vec<T> {
        std::thread::scope(|s| {
            let handles: Vec<_> = members
                .iter()
                .map(|c| {
                    let f = &f;
                    s.spawn(move || f(c))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn outcome_bytes_round_trip() {
        for (during, failure) in [("load", None), ("", Some("")), ("säve", Some("disk full"))] {
            let bytes = encode_outcome(during, failure);
            assert_eq!(decode_outcome(&bytes), Some((during, failure)));
        }
        assert_eq!(decode_outcome(&[1, 0, 0]), None);
        assert_eq!(decode_outcome(&[0, 0, 0, 0, 2]), None);
        assert_eq!(decode_outcome(&[0, 0, 0, 0, 0, 9]), None);
    }

    #[test]
    fn rank_order_sum_is_a_left_fold() {
        // 1e8 + 1 - 1e8: (1e8 + 1) rounds to 1e8 in f32, so a left fold gives 0, not 1.
        let parts = [vec![1e8f32], vec![1.0], vec![-1e8]];
        let mut out = [f32::NAN];
        sum_in_rank_order(&mut out, parts.iter().map(Vec::as_slice));
        assert_eq!(out, [0.0]);
    }

    #[test]
    fn single_is_a_world_of_one() {
        let c = Single;
        assert_eq!((c.rank(), c.size()), (0, 1));
        let mut b = vec![1, 2];
        c.broadcast(0, &mut b).unwrap();
        assert_eq!(b, [1, 2]);
        assert!(matches!(
            c.broadcast(1, &mut b),
            Err(Error::Distributed { .. })
        ));
        assert_eq!(c.all_gather(&[7]).unwrap(), vec![vec![7]]);
        let mut v = [1.5f32];
        c.all_reduce_sum(&mut v).unwrap();
        assert_eq!(v, [1.5]);
        c.agree("x", Ok(())).unwrap();
        match c.agree("x", Err(distributed("open", "gone"))) {
            Err(Error::RankFailed {
                rank: 0,
                during,
                reason,
            }) => {
                assert_eq!(during, "x");
                assert_eq!(reason, "distributed: open: gone");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_member_that_never_joins_times_out() {
        let members = LocalComm::group_with_timeout(3, Duration::from_millis(200));
        let started = Instant::now();
        // Rank 2 stays alive (held in `members`) but never calls the barrier.
        let results = std::thread::scope(|s| {
            let a = s.spawn(|| members[0].barrier());
            let b = s.spawn(|| members[1].barrier());
            [a.join().unwrap(), b.join().unwrap()]
        });
        for r in &results {
            match r {
                Err(Error::Distributed { during, reason }) => {
                    assert_eq!(during, "barrier");
                    assert!(reason.contains("[2]"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30));
        // The group stays broken: a late member fails at once.
        assert!(matches!(
            members[2].barrier(),
            Err(Error::Distributed { .. })
        ));
    }

    #[test]
    fn a_member_that_left_fails_the_others() {
        let mut members = LocalComm::group(2);
        drop(members.pop());
        match members[0].barrier() {
            Err(Error::Distributed { reason, .. }) => assert!(reason.contains("rank 1 left")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn different_collectives_fail_every_rank() {
        let results = on_group(LocalComm::group(2), |c| {
            if c.rank() == 0 {
                c.barrier()
            } else {
                c.all_gather(b"x").map(|_| ())
            }
        });
        for r in results {
            match r {
                Err(Error::Distributed { reason, .. }) => {
                    assert!(reason.contains("different collectives"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn broadcast_root_outside_the_group_fails_every_rank() {
        let results = on_group(LocalComm::group(2), |c| c.broadcast(2, &mut vec![1]));
        for r in results {
            assert!(matches!(r, Err(Error::Distributed { .. })), "{r:?}");
        }
    }

    #[test]
    fn agree_on_different_steps_fails_every_rank() {
        let results = on_group(LocalComm::group(2), |c| {
            c.agree(if c.rank() == 0 { "load" } else { "save" }, Ok(()))
        });
        for r in results {
            match r {
                Err(Error::Distributed { reason, .. }) => {
                    assert!(reason.contains("different steps"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
