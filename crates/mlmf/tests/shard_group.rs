//! A process group in one process (`LocalComm`, a thread per rank): loading a row split with
//! verification, a rank with a corrupt copy of the file, a rank that cannot open its file, and
//! the distributed save read back with another number of ranks. The same code runs over MPI in
//! `tests/mpi.rs`.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mlmf::shard::checkpoint::{self, ShardedCheckpoint};
use mlmf::shard::{load_rank, Comm, LocalComm, Replicated, Split};
use mlmf::{Device, Error, ModelFile, Slice};

fn minilm_path() -> PathBuf {
    common::model("all-MiniLM-L6-v2/model.safetensors")
}

/// Run `f(comm)` on `n` threads, one rank each, and return each rank's result in rank order.
fn on_ranks<T: Send>(n: usize, f: impl Fn(&LocalComm) -> T + Sync) -> Vec<T> {
    let group = LocalComm::group_with_timeout(n, Duration::from_secs(60));
    std::thread::scope(|s| {
        let handles: Vec<_> = group.iter().map(|c| s.spawn(|| f(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn every_rank_loads_its_rows_and_verifies() {
    // Each rank reads the replicated tensors itself, or takes them from rank 0's broadcast.
    for (n, replicated) in [
        (2, Replicated::Read),
        (4, Replicated::Broadcast),
        (2, Replicated::Broadcast),
    ] {
        let results = on_ranks(n, |comm| {
            let device = Device::gpu().unwrap();
            let (file, plan, loaded) =
                load_rank(comm, &minilm_path(), &Split::Row, &device, replicated).unwrap();
            let mine = &plan.devices[comm.rank()];
            assert_eq!(loaded.parts.len(), mine.tensors.len());
            assert_eq!(loaded.bytes_on_device(), mine.bytes);
            (file.data_bytes(), plan, loaded.bytes_read)
        });
        let (total, plan, _) = &results[0];
        let read: u64 = results.iter().map(|r| r.2).sum();
        let file = ModelFile::open(minilm_path()).unwrap();
        let replicated_bytes: u64 = plan
            .replicated
            .iter()
            .map(|name| file.tensor(name).unwrap().byte_len())
            .sum();
        match replicated {
            Replicated::Read => assert_eq!(read, total + (n as u64 - 1) * replicated_bytes),
            // Every byte of the file read once, by some rank.
            Replicated::Broadcast => assert_eq!(read, *total),
        }
    }
}

/// A copy of MiniLM with one byte of `tensor` changed.
fn corrupt_copy(dir: &Path, tensor: &str) -> PathBuf {
    let src = minilm_path();
    let file = ModelFile::open(&src).unwrap();
    let at = file.tensor(tensor).unwrap().range.end - 1;
    let mut bytes = std::fs::read(&src).unwrap();
    bytes[at as usize] ^= 0x40;
    let path = dir.join("model.safetensors");
    std::fs::write(&path, bytes).unwrap();
    std::fs::copy(src.with_file_name("config.json"), dir.join("config.json")).unwrap();
    path
}

#[test]
fn a_corrupt_copy_on_one_rank_fails_every_rank_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // The last rows of the word embeddings: rank 1's part under a 2-way row split.
    let bad = corrupt_copy(dir.path(), "embeddings.word_embeddings.weight");
    let start = Instant::now();
    let results = on_ranks(2, |comm| {
        let path = if comm.rank() == 1 {
            bad.clone()
        } else {
            minilm_path()
        };
        load_rank(comm, &path, &Split::Row, &Device::Cpu, Replicated::Read).map(|_| ())
    });
    for (rank, r) in results.iter().enumerate() {
        match r {
            Err(Error::RankFailed {
                rank: 1, reason, ..
            }) => {
                assert!(
                    reason.contains("embeddings.word_embeddings.weight"),
                    "{reason}"
                )
            }
            other => panic!("rank {rank}: expected RankFailed naming rank 1, got {other:?}"),
        }
    }
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_rank_that_cannot_open_its_file_fails_every_rank() {
    let results = on_ranks(3, |comm| {
        let path = if comm.rank() == 2 {
            PathBuf::from("/nonexistent/model.safetensors")
        } else {
            minilm_path()
        };
        load_rank(comm, &path, &Split::Row, &Device::Cpu, Replicated::Read).map(|_| ())
    });
    for r in &results {
        match r {
            Err(Error::RankFailed {
                rank: 2,
                during,
                reason,
            }) => {
                assert!(during.contains("opening"), "{during}");
                assert!(
                    reason.contains("/nonexistent/model.safetensors"),
                    "{reason}"
                );
            }
            other => panic!("expected RankFailed naming rank 2, got {other:?}"),
        }
    }
}

#[test]
fn a_4_rank_save_loads_as_2_and_1_bit_for_bit_and_a_failed_save_keeps_the_last() {
    let out = tempfile::tempdir().unwrap();
    let source = ModelFile::open(minilm_path()).unwrap();
    let save = |fail_rank: Option<usize>| {
        on_ranks(4, |comm| {
            let device = Device::Cpu;
            let (file, plan, loaded) =
                load_rank(comm, &minilm_path(), &Split::Row, &device, Replicated::Read).unwrap();
            let parts: Vec<_> = loaded
                .parts
                .iter()
                .filter(|(p, _)| {
                    // Replicated tensors are saved by rank 0 only.
                    !plan.replicated.contains(&p.name) || comm.rank() == 0
                })
                .map(|(p, t)| {
                    let info = file.tensor(&p.name).unwrap();
                    // A rank told to fail claims a shape its bytes do not have.
                    let mut shape = info.shape.dims().to_vec();
                    if Some(comm.rank()) == fail_rank {
                        shape[0] += 1;
                    }
                    checkpoint::Part::new(&p.name, info.dtype, &shape, p.slice.clone(), t)
                })
                .collect();
            checkpoint::save(comm, out.path(), &parts)
        })
    };
    let generations = save(None);
    let g = *generations[0].as_ref().unwrap();
    assert!(generations.iter().all(|r| r.as_ref().ok() == Some(&g)));
    let check = |ck: &ShardedCheckpoint| {
        // As 2 ranks: each reads its half of the rows of every matrix; then as 1.
        for info in source.tensors() {
            let rows = info.shape.dims()[0];
            let halves = [0..rows / 2, rows / 2..rows];
            let mut joined = Vec::new();
            for h in halves {
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
    };
    let ck = ShardedCheckpoint::open(out.path()).unwrap();
    assert_eq!(ck.world_size(), 4);
    check(&ck);
    // A save in which rank 3 fails: every rank errs naming it; the last checkpoint stays.
    let failed = save(Some(3));
    for r in &failed {
        assert!(matches!(r, Err(Error::RankFailed { rank: 3, .. })), "{r:?}");
    }
    let ck = ShardedCheckpoint::open(out.path()).unwrap();
    assert_eq!(ck.generation(), g);
    check(&ck);
}
