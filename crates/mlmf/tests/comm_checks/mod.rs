//! The collective checks every [`Comm`] must pass, run by each member of a group: on
//! `LocalComm` threads (`tests/collectives.rs`) and on MPI ranks (`tests/mpi.rs`). Each check
//! asserts on this member's results (expected values computed here by plain loops, not by the
//! code under test) and returns lines describing what this member saw, which the callers also
//! compare across members.
#![allow(dead_code)]

use mlmf::shard::Comm;
use mlmf::Error;

/// The bytes rank `r` contributes to the all-gather: rank 0 none, rank r `3r` bytes of `r + 1`.
fn gather_bytes(r: usize) -> Vec<u8> {
    vec![(r + 1) as u8; 3 * r]
}

/// Values whose sum depends on the order of additions: in f32, `1e8 + 1 == 1e8`, so the
/// rank-order sum `((1e8 + 1) - 1e8) + 1` is 1 at four ranks, while a pairwise sum
/// `(1e8 + 1) + (-1e8 + 1)` is 0.
fn order_sensitive(r: usize) -> f32 {
    match r % 4 {
        0 => 1e8,
        1 => 1.0,
        2 => -1e8,
        _ => 1.0,
    }
}

/// Runs every check (a group of two or more); returns this member's observations, one per line.
pub fn check_collectives(comm: &dyn Comm) -> Vec<String> {
    let (rank, size) = (comm.rank(), comm.size());
    // The checks name rank 1 and the last rank: at least two members.
    assert!(size >= 2 && rank < size, "rank {rank} of {size}");
    let mut seen = Vec::new();

    comm.barrier().unwrap();

    // all_gather, lengths differing (rank 0 sends nothing).
    let all = comm.all_gather(&gather_bytes(rank)).unwrap();
    assert_eq!(all.len(), size);
    for (r, bytes) in all.iter().enumerate() {
        assert_eq!(bytes, &gather_bytes(r), "rank {rank}: all_gather from rank {r}");
    }
    let lens: Vec<usize> = all.iter().map(Vec::len).collect();
    seen.push(format!("all_gather lengths {lens:?}"));

    // all_reduce_sum with exact values: rank r holds (r + 1) * i, the sum is i * size(size+1)/2
    // (small integers, exact in f32). 1001 values: chunks of unequal lengths over 2 and 4 ranks.
    let n = 1001;
    let mut values: Vec<f32> = (0..n).map(|i| ((rank + 1) * i) as f32).collect();
    comm.all_reduce_sum(&mut values).unwrap();
    let triangle = size * (size + 1) / 2;
    for (i, v) in values.iter().enumerate() {
        assert_eq!(*v, (i * triangle) as f32, "rank {rank}: all_reduce_sum[{i}]");
    }
    seen.push(format!("all_reduce_sum of {n}: last {}", values[n - 1]));

    // Fewer values than ranks (some ranks own no chunk), and none.
    let mut few = vec![rank as f32 + 0.5; 3];
    comm.all_reduce_sum(&mut few).unwrap();
    let expected: f32 = (0..size).map(|r| r as f32 + 0.5).sum();
    assert_eq!(few, vec![expected; 3], "rank {rank}: all_reduce_sum of 3");
    let mut none: Vec<f32> = Vec::new();
    comm.all_reduce_sum(&mut none).unwrap();

    // The sum is taken in rank order, the same bits on every rank.
    let mut ordered = vec![order_sensitive(rank); 5];
    comm.all_reduce_sum(&mut ordered).unwrap();
    let mut left_fold = order_sensitive(0);
    for r in 1..size {
        left_fold += order_sensitive(r);
    }
    assert_eq!(
        ordered,
        vec![left_fold; 5],
        "rank {rank}: rank-order sum (a pairwise sum would differ at 4 ranks)"
    );
    seen.push(format!("rank-order sum {:08x}", left_fold.to_bits()));

    // A length that differs on one rank is an error on every rank, and the group goes on.
    let mut uneven = vec![1.0f32; if rank == size - 1 { 2 } else { 3 }];
    match comm.all_reduce_sum(&mut uneven) {
        Err(Error::Distributed { during, .. }) => {
            assert_eq!(during, "all_reduce_sum");
            seen.push("uneven all_reduce_sum refused".into());
        }
        other => panic!("rank {rank}: uneven all_reduce_sum gave {other:?}"),
    }

    // broadcast from the last rank; the others start with bytes of other lengths.
    let root = size - 1;
    let message: Vec<u8> = b"from the last rank: "
        .iter()
        .copied()
        .chain((0..=255u8).cycle().take(100_000))
        .collect();
    let mut bytes = if rank == root {
        message.clone()
    } else {
        vec![0xAA; rank * 7]
    };
    comm.broadcast(root, &mut bytes).unwrap();
    assert!(bytes == message, "rank {rank}: broadcast from {root}");
    // An empty broadcast from rank 0 empties the others.
    let mut empty = if rank == 0 { Vec::new() } else { vec![1, 2, 3] };
    comm.broadcast(0, &mut empty).unwrap();
    assert!(empty.is_empty(), "rank {rank}: empty broadcast");
    seen.push(format!("broadcast {} bytes", bytes.len()));

    comm.barrier().unwrap();

    // agree: all well.
    comm.agree("a step that works", Ok(())).unwrap();
    // Rank 1 and the last rank fail: every rank gets RankFailed naming rank 1 (the lowest).
    let mine = if rank == 1 || rank == size - 1 {
        Err(Error::Distributed {
            during: "opening the file".into(),
            reason: format!("rank {rank}'s disk is full"),
        })
    } else {
        Ok(())
    };
    match comm.agree("test step", mine) {
        Err(Error::RankFailed {
            rank: failed,
            during,
            reason,
        }) => {
            assert_eq!(failed, 1, "rank {rank}");
            assert_eq!(during, "test step");
            assert_eq!(reason, "distributed: opening the file: rank 1's disk is full");
            seen.push(format!("agree: RankFailed rank={failed} during={during:?}"));
        }
        other => panic!("rank {rank}: agree gave {other:?}"),
    }

    comm.barrier().unwrap();
    seen
}
