//! Tensor-parallel all-MiniLM-L6-v2 in one process: a row-split plan over 2 and 4 ranks of a
//! `LocalComm` group, one thread per rank, each on its own logical GPU (lavapipe in CI), gives
//! the embeddings of the whole model on one device within 1e-5, and transformers' (the fixture
//! ../shared/fixtures/models/minilm) within the 1e-4 the single-device test holds them to.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use mlmf::models::bert::{BertEmbedder, BertShard};
use mlmf::shard::{Comm, LocalComm, Plan, Split, Targets};
use mlmf::{Device, Error, ModelFile};

fn fixture_sentences() -> Vec<String> {
    let dir = common::fixtures().join("models/minilm");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("info.json")).unwrap()).unwrap();
    info["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// transformers' sentence embeddings of the fixture sentences, `[4 * 384]`.
fn fixture_embeddings() -> Vec<f32> {
    let file =
        ModelFile::open(common::fixtures().join("models/minilm/expected.safetensors")).unwrap();
    Device::Cpu
        .load(&file, "sentence_embedding")
        .unwrap()
        .to_f32_vec()
        .unwrap()
}

fn max_abs(a: &[Vec<f32>], b: &[f32]) -> f32 {
    let a: Vec<f32> = a.iter().flatten().copied().collect();
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// What one rank got: its embeddings, the bytes it read, and the seconds of its second forward.
struct RankRun {
    embeddings: Vec<Vec<f32>>,
    bytes_read: u64,
    planned: u64,
    heads: usize,
    seconds: f64,
}

fn run_ranks(n: usize, sentences: &[String]) -> Vec<RankRun> {
    let dir = common::models_dir().join("all-MiniLM-L6-v2");
    let file = ModelFile::open(dir.join("model.safetensors")).unwrap();
    let plan = Plan::for_file(&file, &Split::Row, &Targets::equal(n)).unwrap();
    let members = LocalComm::group(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = members
            .iter()
            .map(|comm| {
                let (dir, plan) = (&dir, &plan);
                s.spawn(move || {
                    // Each rank its own logical device, as each MPI rank would have.
                    let device = Device::gpu().expect("a GPU adapter (lavapipe in CI)");
                    let shard = BertShard::load(dir, &device, plan, comm).unwrap();
                    // The first forward compiles the kernels; time the second.
                    shard.embed(comm, sentences).unwrap();
                    let start = Instant::now();
                    let out = shard.embed(comm, sentences).unwrap();
                    RankRun {
                        embeddings: out.sentence_embeddings,
                        bytes_read: shard.bytes_read(),
                        planned: plan.devices[comm.rank()].bytes,
                        heads: shard.heads(),
                        seconds: start.elapsed().as_secs_f64(),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn tensor_parallel_minilm_matches_one_device_on_2_and_4_ranks() {
    let sentences = fixture_sentences();
    let expected = fixture_embeddings();
    let device = Device::gpu().expect("a GPU adapter (lavapipe in CI)");
    let single =
        BertEmbedder::open(common::models_dir().join("all-MiniLM-L6-v2"), &device).unwrap();
    single.embed(&sentences).unwrap();
    let start = Instant::now();
    let whole = single.embed(&sentences).unwrap().sentence_embeddings;
    let single_seconds = start.elapsed().as_secs_f64();
    let whole_flat: Vec<f32> = whole.iter().flatten().copied().collect();
    eprintln!("1 device: forward {single_seconds:.3} s");
    for n in [2, 4] {
        let runs = run_ranks(n, &sentences);
        for (rank, run) in runs.iter().enumerate() {
            assert_eq!(run.heads, 12 / n, "rank {rank} of {n}");
            assert_eq!(
                run.bytes_read, run.planned,
                "rank {rank} of {n} reads its part"
            );
            let err = max_abs(&run.embeddings, &whole_flat);
            assert!(
                err <= 1e-5,
                "rank {rank} of {n}: max abs {err} from one device"
            );
            let err = max_abs(&run.embeddings, &expected);
            assert!(
                err <= 1e-4,
                "rank {rank} of {n}: max abs {err} from transformers"
            );
            // The sums are in rank order, so every rank ends with the same bits.
            assert_eq!(run.embeddings, runs[0].embeddings, "rank {rank} of {n}");
            eprintln!(
                "{n} ranks, rank {rank}: forward {:.3} s, max abs from one device {:.2e}",
                run.seconds,
                max_abs(&run.embeddings, &whole_flat)
            );
        }
    }
}

#[test]
fn a_rank_that_cannot_load_fails_every_rank() {
    let dir = common::models_dir().join("all-MiniLM-L6-v2");
    let file = ModelFile::open(dir.join("model.safetensors")).unwrap();
    let plan = Plan::for_file(&file, &Split::Row, &Targets::equal(2)).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let members = LocalComm::group(2);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = members
            .iter()
            .map(|comm| {
                let (dir, plan, empty) = (&dir, &plan, empty.path());
                s.spawn(move || {
                    // Rank 1 is given a directory without the model.
                    let at = if comm.rank() == 1 {
                        empty
                    } else {
                        dir.as_path()
                    };
                    BertShard::load(at, &Device::Cpu, plan, comm).map(|_| ())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        match r {
            Err(Error::RankFailed { rank, during, .. }) => {
                assert_eq!((rank, during.as_str()), (1, "BertShard::load"))
            }
            other => panic!("expected RankFailed from rank 1, got {other:?}"),
        }
    }
    // A plan for another number of ranks is refused, by every rank.
    let members = LocalComm::group(2);
    let plan4 = Plan::for_file(&file, &Split::Row, &Targets::equal(4)).unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = members
            .iter()
            .map(|comm| {
                let (dir, plan) = (&dir, &plan4);
                s.spawn(move || BertShard::load(dir, &Device::Cpu, plan, comm).map(|_| ()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        match r {
            Err(Error::RankFailed {
                rank: 0, reason, ..
            }) => {
                assert!(reason.contains("row split for 2 ranks"), "{reason}")
            }
            other => panic!("expected RankFailed from rank 0, got {other:?}"),
        }
    }
}
