//! The process group over MPI: this test binary runs itself under `mpirun -np 2` and `-np 4`
//! (`mpi_harness`), each rank running a worker test below, and checks what every rank saw.
//! Feature `mpi` (Open MPI's `mpirun` must be on PATH).
#![cfg(feature = "mpi")]

mod comm_checks;
mod mpi_harness;

use mlmf::shard::{Comm, MpiComm, World, WorldSource};

/// A variable Open MPI's launcher sets on every rank: an oracle independent of MPI's answer.
fn ompi_var(name: &str) -> usize {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: not started by Open MPI's mpirun"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
}

#[test]
#[ignore = "an MPI rank: run by mpi_collectives_2_and_4_ranks under mpirun"]
fn worker_collectives() {
    if !mpi_harness::is_worker() {
        return;
    }
    let comm = MpiComm::init().unwrap();
    let rank = comm.rank();
    // A second init while the first lives gives the same world.
    let again = MpiComm::init().unwrap();
    assert_eq!(again.world(), comm.world());
    drop(again);

    let world = World::detect().unwrap();
    assert_eq!(world.source, WorldSource::Mpi);
    assert_eq!(world.rank, ompi_var("OMPI_COMM_WORLD_RANK"));
    assert_eq!(world.size, ompi_var("OMPI_COMM_WORLD_SIZE"));
    assert_eq!(world.local_rank, ompi_var("OMPI_COMM_WORLD_LOCAL_RANK"));
    assert_eq!((comm.rank(), comm.size()), (world.rank, world.size));
    mpi_harness::report(
        rank,
        &format!(
            "world rank={} size={} local_rank={} source={:?}",
            world.rank, world.size, world.local_rank, world.source
        ),
    );

    // Our sum beside MPI's own on order-free values: the same numbers.
    let values: Vec<f32> = (0..10).map(|i| (rank * 10 + i) as f32).collect();
    let mut ours = values.clone();
    comm.all_reduce_sum(&mut ours).unwrap();
    let mut bare = vec![0f32; values.len()];
    comm.all_reduce_sum_bare(&values, &mut bare).unwrap();
    assert_eq!(ours, bare, "rank {rank}");

    for line in comm_checks::check_collectives(&comm) {
        mpi_harness::report(rank, &line);
    }
    mpi_harness::report(rank, "done");
}

#[test]
fn mpi_collectives_2_and_4_ranks() {
    if mpi_harness::is_worker() {
        return;
    }
    for np in [2, 4] {
        let run = mpi_harness::mpirun(np, "worker_collectives", mpi_harness::TIMEOUT);
        run.assert_success();
        let rank0 = run.rank_lines(0);
        for rank in 0..np {
            let lines = run.rank_lines(rank);
            let world = format!("world rank={rank} size={np} local_rank={rank} source=Mpi");
            assert_eq!(lines.first(), Some(&world.as_str()), "{}", run.describe());
            assert_eq!(lines.last(), Some(&"done"), "{}", run.describe());
            assert!(
                lines.contains(&"agree: RankFailed rank=1 during=\"test step\""),
                "rank {rank}: {}",
                run.describe()
            );
            // Every rank saw the same results (the lines after the world line).
            assert_eq!(lines[1..], rank0[1..], "rank {rank}: {}", run.describe());
        }
    }
}

#[test]
#[ignore = "an MPI rank: run by mpi_rank_that_panics_aborts_the_job under mpirun"]
fn worker_panics() {
    if !mpi_harness::is_worker() {
        return;
    }
    let comm = MpiComm::init().unwrap();
    comm.barrier().unwrap();
    if comm.rank() == 1 {
        panic!("rank 1 gives up");
    }
    // Rank 0 waits in a collective rank 1 never joins; the abort must end it.
    comm.barrier().unwrap();
    mpi_harness::report(comm.rank(), "passed a barrier rank 1 never joined");
}

#[test]
fn mpi_rank_that_panics_aborts_the_job() {
    if mpi_harness::is_worker() {
        return;
    }
    let run = mpi_harness::mpirun(2, "worker_panics", mpi_harness::TIMEOUT);
    assert!(!run.status.success(), "{}", run.describe());
    assert!(
        run.stderr.contains("rank 1 gives up"),
        "the panic message: {}",
        run.describe()
    );
    assert!(run.rank_lines(0).is_empty(), "{}", run.describe());
}

#[test]
#[ignore = "an MPI rank: run by mpi_harness_kills_a_hung_job under mpirun"]
fn worker_hangs() {
    if !mpi_harness::is_worker() {
        return;
    }
    let comm = MpiComm::init().unwrap();
    if comm.rank() == 1 {
        // Alive but never joining: rank 0 waits in the barrier until the harness kills the job.
        std::thread::sleep(std::time::Duration::from_secs(600));
    }
    comm.barrier().unwrap();
}

#[test]
fn mpi_harness_kills_a_hung_job() {
    if mpi_harness::is_worker() {
        return;
    }
    let limit = std::time::Duration::from_secs(3);
    let started = std::time::Instant::now();
    let outcome = std::panic::catch_unwind(|| mpi_harness::mpirun(2, "worker_hangs", limit));
    let message = match outcome {
        Ok(run) => panic!("a hung job finished: {}", run.describe()),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default(),
    };
    assert!(
        message.contains("did not finish within 3s (a hang): killed"),
        "{message}"
    );
    // The limit, the 5 s between SIGTERM and SIGKILL, and some slack: not the 600 s sleep.
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}
