//! The collectives of `mlmf::shard` at three buffer sizes: 384 floats (all-MiniLM-L6-v2's hidden
//! size, one token), 4096 floats (a 4096-wide hidden state) and 1 Mi floats (4 MiB).
//!
//! Under `mpirun` (feature `mpi`): `MpiComm`'s `all_reduce_sum` (rank-order sum: all-to-all of
//! chunks, local sum, all-gather) and `all_gather` (lengths, then `MPI_Allgatherv`) beside a bare
//! `MPI_Allreduce(MPI_SUM)` of the same buffer (zeros, summed in place). Outside `mpirun`: `LocalComm` groups of 2 and 4
//! threads. Not criterion: its adaptive iteration counts differ per rank, and a rank that stops
//! calling a collective deadlocks the others; the counts here are fixed, every rank runs the same
//! loop, and rank 0 prints the table. Each cell is the median of 5 repetitions of the mean time of
//! one call over the repetition's iterations, taking for each repetition the slowest rank's mean.
//!
//! ```text
//! exe=$(cargo bench -p mlmf --features mpi --bench collectives --no-run 2>&1 |
//!       sed -n 's/.*Executable .*(\(.*\))/\1/p')
//! mpirun --oversubscribe --bind-to none -np 4 $exe --bench
//! cargo bench -p mlmf --bench collectives           # LocalComm, 2 and 4 threads
//! ```
//!
//! Without `--bench` (as `cargo test --benches` runs it) one quick pass on a `LocalComm` checks
//! that the loop works.

use std::time::Instant;

use mlmf::shard::{Comm, LocalComm};

/// Buffer lengths in floats, and the iterations of one repetition at each.
const SIZES: [(usize, usize); 3] = [(384, 2000), (4096, 1000), (1 << 20, 20)];
const REPETITIONS: usize = 5;

/// A collective as timed.
type Op<'a, C> = &'a mut dyn FnMut(&C) -> mlmf::Result<()>;

/// Mean seconds of one call of `op`, slowest rank of each repetition, median over repetitions
/// (the same on every rank: the per-rank means are all-gathered).
fn time<C: Comm>(comm: &C, iterations: usize, op: Op<'_, C>) -> f64 {
    // One call before timing: first-touch of buffers, connection setup in MPI.
    op(comm).expect("warm-up");
    let mut slowest = Vec::with_capacity(REPETITIONS);
    for _ in 0..REPETITIONS {
        comm.barrier().expect("barrier");
        let started = Instant::now();
        for _ in 0..iterations {
            op(comm).expect("collective");
        }
        let mean = started.elapsed().as_secs_f64() / iterations as f64;
        let all = comm
            .all_gather(&mean.to_le_bytes())
            .expect("gathering times");
        let max = all
            .iter()
            .map(|b| f64::from_le_bytes(b.as_slice().try_into().expect("8 bytes")))
            .fold(0.0, f64::max);
        slowest.push(max);
    }
    slowest.sort_by(f64::total_cmp);
    slowest[REPETITIONS / 2]
}

fn micros(seconds: f64) -> String {
    format!("{:.1}", seconds * 1e6)
}

/// The rows common to both transports: our all_reduce_sum and all_gather at each size.
fn ours<C: Comm>(comm: &C, n: usize, iterations: usize) -> (f64, f64) {
    // Zeros, summed in place: they stay zeros (no overflow, no subnormals) over any count.
    let mut buffer = vec![0f32; n];
    let sum = time(comm, iterations, &mut |c: &C| c.all_reduce_sum(&mut buffer));
    let bytes = vec![0u8; n * 4];
    let gather = time(comm, iterations, &mut |c: &C| {
        c.all_gather(&bytes).map(drop)
    });
    (sum, gather)
}

/// Every member of `group` runs `f` on its own thread; rank 0's result.
fn on_threads<T: Send>(group: &[LocalComm], f: impl Fn(&LocalComm) -> T + Sync) -> T {
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .iter()
            .map(|c| {
                let f = &f;
                s.spawn(move || f(c))
            })
            .collect();
        let mut results: Vec<T> = handles
            .into_iter()
            .map(|h| h.join().expect("member"))
            .collect();
        results.swap_remove(0)
    })
}

fn local(members: usize, sizes: &[(usize, usize)]) {
    println!("LocalComm, {members} threads (median of {REPETITIONS}, slowest member, µs per call)");
    println!(
        "{:>9} {:>10} {:>16} {:>12}",
        "floats", "bytes", "all_reduce_sum", "all_gather"
    );
    for &(n, iterations) in sizes {
        let group = LocalComm::group(members);
        let (sum, gather) = on_threads(&group, |c| ours(c, n, iterations));
        println!(
            "{n:>9} {:>10} {:>16} {:>12}",
            n * 4,
            micros(sum),
            micros(gather)
        );
    }
}

#[cfg(feature = "mpi")]
fn under_mpirun() -> bool {
    // Open MPI's launcher, then MPICH's (Hydra).
    std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some() || std::env::var_os("PMI_SIZE").is_some()
}

#[cfg(feature = "mpi")]
fn mpi() {
    use mlmf::shard::MpiComm;
    let comm = MpiComm::init().expect("MPI init");
    if comm.rank() == 0 {
        println!(
            "MpiComm, {} ranks (median of {REPETITIONS}, slowest rank, µs per call)",
            comm.size()
        );
        println!(
            "{:>9} {:>10} {:>16} {:>15} {:>8} {:>12}",
            "floats", "bytes", "all_reduce_sum", "MPI_Allreduce", "ratio", "all_gather"
        );
    }
    for (n, iterations) in SIZES {
        let (sum, gather) = ours(&comm, n, iterations);
        let send = vec![0f32; n];
        let mut recv = vec![0f32; n];
        let bare = time(&comm, iterations, &mut |c: &MpiComm| {
            c.all_reduce_sum_bare(&send, &mut recv)
        });
        if comm.rank() == 0 {
            println!(
                "{n:>9} {:>10} {:>16} {:>15} {:>8.2} {:>12}",
                n * 4,
                micros(sum),
                micros(bare),
                sum / bare,
                micros(gather)
            );
        }
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench {
        // `cargo test --benches`: one short pass of the timed loop, and its sum checked.
        let group = LocalComm::group(2);
        let sums = on_threads(&group, |c| {
            ours(c, 384, 2);
            let mut v = vec![c.rank() as f32 + 1.0; 384];
            c.all_reduce_sum(&mut v).expect("all_reduce_sum");
            v
        });
        assert_eq!(sums, vec![3.0f32; 384]);
        return;
    }
    #[cfg(feature = "mpi")]
    if under_mpirun() {
        mpi();
        return;
    }
    local(2, &SIZES);
    local(4, &SIZES);
}
