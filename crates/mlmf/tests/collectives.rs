//! The collectives of `mlmf::shard::Comm` on `LocalComm` groups of 2 and 4 threads: the same
//! checks the MPI ranks run (`tests/mpi.rs`, feature `mpi`), without MPI.

mod comm_checks;

use mlmf::shard::{Comm, LocalComm};

fn run_group(n: usize) {
    let members = LocalComm::group(n);
    let seen: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = members
            .iter()
            .map(|c| s.spawn(move || comm_checks::check_collectives(c)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(seen.len(), n);
    for (rank, lines) in seen.iter().enumerate() {
        assert_eq!(lines, &seen[0], "rank {rank} saw otherwise than rank 0");
        assert!(
            lines.contains(&"agree: RankFailed rank=1 during=\"test step\"".to_string()),
            "rank {rank}: {lines:?}"
        );
    }
    assert_eq!(members[n - 1].rank(), n - 1);
}

#[test]
fn local_collectives_2_threads() {
    run_group(2);
}

#[test]
fn local_collectives_4_threads() {
    run_group(4);
}
