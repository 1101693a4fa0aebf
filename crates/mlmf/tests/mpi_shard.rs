//! Distributed loading, verification and saving over MPI: this test binary runs itself under
//! `mpirun -np 2` and `-np 4` (`mpi_harness`), one process and one device per rank. The same code
//! runs in one process over `LocalComm` in `tests/shard_group.rs`.
#![cfg(feature = "mpi")]

#[path = "../../../tests/common/mod.rs"]
mod common;
mod mpi_harness;

use std::path::{Path, PathBuf};

use mlmf::shard::checkpoint::{self, ShardedCheckpoint};
use mlmf::shard::{load_rank, local_device, Comm, MpiComm, Replicated, Split};
use mlmf::{Device, Error, ModelFile, Slice};

fn minilm_path() -> PathBuf {
    common::model("all-MiniLM-L6-v2/model.safetensors")
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[test]
#[ignore = "an MPI rank: run by row_split_loads_and_verifies_on_2_and_4_ranks"]
fn worker_load_verify() {
    if !mpi_harness::is_worker() {
        return;
    }
    let comm = MpiComm::init().unwrap();
    let device = local_device(&comm.world()).unwrap();
    let broadcast = var("MLMF_TEST_REPLICATED").as_deref() == Some("broadcast");
    let replicated = if broadcast {
        Replicated::Broadcast
    } else {
        Replicated::Read
    };
    let (file, plan, loaded) =
        load_rank(&comm, &minilm_path(), &Split::Row, &device, replicated).unwrap();
    let rank = comm.rank();
    assert_eq!(loaded.bytes_on_device(), plan.devices[rank].bytes);
    let replicated_bytes: u64 = plan
        .replicated
        .iter()
        .map(|n| file.tensor(n).unwrap().byte_len())
        .sum();
    mpi_harness::report(rank, &format!("read {}", loaded.bytes_read));
    mpi_harness::report(
        rank,
        &format!(
            "expected total {}",
            match replicated {
                Replicated::Read => file.data_bytes() + (comm.size() as u64 - 1) * replicated_bytes,
                Replicated::Broadcast => file.data_bytes(),
            }
        ),
    );
}

#[test]
fn row_split_loads_and_verifies_on_2_and_4_ranks() {
    if mpi_harness::is_worker() {
        return;
    }
    // Replicated tensors read by every rank (2 ranks) or broadcast by rank 0 (4 ranks).
    for (np, replicated) in [(2, "read"), (4, "broadcast")] {
        let run = mpi_harness::mpirun_with(
            np,
            "worker_load_verify",
            mpi_harness::TIMEOUT,
            &[("MLMF_TEST_REPLICATED", replicated)],
        );
        run.assert_success();
        let number = |line: &str, prefix: &str| -> u64 {
            line.strip_prefix(prefix).unwrap().parse().unwrap()
        };
        let read: u64 = (0..np).map(|r| number(run.rank_lines(r)[0], "read ")).sum();
        let expected = number(run.rank_lines(0)[1], "expected total ");
        assert_eq!(read, expected, "{}", run.describe());
    }
}

#[test]
#[ignore = "an MPI rank: run by a_corrupt_copy_on_one_rank_fails_every_rank"]
fn worker_corrupt_copy() {
    if !mpi_harness::is_worker() {
        return;
    }
    let comm = MpiComm::init().unwrap();
    let rank = comm.rank();
    let path = match (rank, var("MLMF_TEST_BAD_COPY")) {
        (1, Some(bad)) => PathBuf::from(bad),
        _ => minilm_path(),
    };
    let device = local_device(&comm.world()).unwrap();
    match load_rank(&comm, &path, &Split::Row, &device, Replicated::Read) {
        Err(Error::RankFailed {
            rank: r, reason, ..
        }) => mpi_harness::report(
            rank,
            &format!(
                "RankFailed rank={r} names the tensor: {}",
                reason.contains("embeddings.word_embeddings.weight")
            ),
        ),
        Err(other) => mpi_harness::report(rank, &format!("other error: {other}")),
        Ok(_) => mpi_harness::report(rank, "loaded"),
    }
}

#[test]
fn a_corrupt_copy_on_one_rank_fails_every_rank() {
    if mpi_harness::is_worker() {
        return;
    }
    // Rank 1's copy has one byte of the word embeddings' last rows (its part) changed.
    let dir = tempfile::tempdir().unwrap();
    let src = minilm_path();
    let at = ModelFile::open(&src)
        .unwrap()
        .tensor("embeddings.word_embeddings.weight")
        .unwrap()
        .range
        .end as usize
        - 1;
    let mut bytes = std::fs::read(&src).unwrap();
    bytes[at] ^= 0x40;
    let bad = dir.path().join("model.safetensors");
    std::fs::write(&bad, bytes).unwrap();
    std::fs::copy(
        src.with_file_name("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let run = mpi_harness::mpirun_with(
        2,
        "worker_corrupt_copy",
        mpi_harness::TIMEOUT,
        &[("MLMF_TEST_BAD_COPY", bad.to_str().unwrap())],
    );
    run.assert_success();
    for rank in 0..2 {
        assert_eq!(
            run.rank_lines(rank),
            ["RankFailed rank=1 names the tensor: true"],
            "{}",
            run.describe()
        );
    }
}

#[test]
#[ignore = "an MPI rank: run by saves_reshard_and_a_killed_rank_keeps_the_last_checkpoint"]
fn worker_save() {
    if !mpi_harness::is_worker() {
        return;
    }
    let out = PathBuf::from(var("MLMF_TEST_OUT").unwrap());
    let comm = MpiComm::init().unwrap();
    let rank = comm.rank();
    let (file, plan, loaded) = load_rank(
        &comm,
        &minilm_path(),
        &Split::Row,
        &Device::Cpu,
        Replicated::Read,
    )
    .unwrap();
    let parts: Vec<_> = loaded
        .parts
        .iter()
        .filter(|(p, _)| !plan.replicated.contains(&p.name) || rank == 0)
        .map(|(p, t)| {
            let info = file.tensor(&p.name).unwrap();
            checkpoint::Part::new(&p.name, info.dtype, info.shape.dims(), p.slice.clone(), t)
        })
        .collect();
    if var("MLMF_TEST_KILL").and_then(|k| k.parse::<usize>().ok()) == Some(rank) {
        // Dies without a word, mid-save, as a killed node would.
        std::process::abort();
    }
    let g = checkpoint::save(&comm, &out, &parts).unwrap();
    mpi_harness::report(rank, &format!("saved generation {g}"));
}

/// The checkpoint in `dir` holds MiniLM's tensors: read back as 2 ranks (row halves) and as 1.
fn assert_reshards(dir: &Path) -> u64 {
    let source = ModelFile::open(minilm_path()).unwrap();
    let ck = ShardedCheckpoint::open(dir).unwrap();
    for info in source.tensors() {
        let rows = info.shape.dims()[0];
        let mut joined = Vec::new();
        for h in [0..rows / 2, rows / 2..rows] {
            let t = ck.load(&Device::Cpu, &info.name, &Slice::Rows(h)).unwrap();
            joined.extend(t.to_bytes().unwrap());
        }
        assert!(joined == source.bytes(info), "{}", info.name);
        let whole = ck.load(&Device::Cpu, &info.name, &Slice::Whole).unwrap();
        assert!(
            whole.to_bytes().unwrap() == source.bytes(info),
            "{}",
            info.name
        );
    }
    ck.generation()
}

#[test]
fn saves_reshard_and_a_killed_rank_keeps_the_last_checkpoint() {
    if mpi_harness::is_worker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let run = mpi_harness::mpirun_with(
        4,
        "worker_save",
        mpi_harness::TIMEOUT,
        &[("MLMF_TEST_OUT", out)],
    );
    run.assert_success();
    let g = assert_reshards(dir.path());
    assert_eq!(ShardedCheckpoint::open(dir.path()).unwrap().world_size(), 4);
    // Rank 1 of 2 dies mid-save: the job fails, the 4-rank checkpoint stays loadable.
    let run = mpi_harness::mpirun_with(
        2,
        "worker_save",
        mpi_harness::TIMEOUT,
        &[("MLMF_TEST_OUT", out), ("MLMF_TEST_KILL", "1")],
    );
    assert!(!run.status.success(), "{}", run.describe());
    assert_eq!(assert_reshards(dir.path()), g);
    // A 2-rank save replaces it; loading it as 1 gives the same tensors.
    let run = mpi_harness::mpirun_with(
        2,
        "worker_save",
        mpi_harness::TIMEOUT,
        &[("MLMF_TEST_OUT", out)],
    );
    run.assert_success();
    assert!(assert_reshards(dir.path()) > g);
    assert_eq!(ShardedCheckpoint::open(dir.path()).unwrap().world_size(), 2);
}
