//! Real models over MPI ranks (feature `mpi`; Open MPI's `mpirun` on PATH): this test binary
//! runs itself under `mpirun` (`mpi_harness`), each rank on its own GPU device (lavapipe in CI).
//!
//! - Tensor-parallel all-MiniLM-L6-v2 on 2 and 4 ranks: the single-process embeddings within
//!   1e-5, the same bits on every rank.
//! - The image+text search with MobileNetV2 on rank 0 and MiniLM on rank 1: the same rankings
//!   as the single-process search.
#![cfg(feature = "mpi")]

#[path = "../../../tests/common/mod.rs"]
mod common;
mod mpi_harness;

use std::time::Instant;

use mlmf::models::bert::{BertEmbedder, BertShard};
use mlmf::multimodal::search::{self, SearchModels};
use mlmf::shard::{Comm, MpiComm, Plan, Split, Targets};
use mlmf::{Device, ModelFile};

const SENTENCES: [&str; 4] = [
    "A man is playing a guitar on the street.",
    "The quick brown fox jumps over the lazy dog.",
    "GPU kernels decode quantized weights straight from the file.",
    "Hello, world! How are you today?",
];

fn max_abs(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// A digest of the embeddings' bits, to compare ranks by their reports.
fn bits(e: &[Vec<f32>]) -> u64 {
    // FNV-1a over the little-endian bytes.
    e.iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        })
}

#[test]
#[ignore = "an MPI rank: run by mpi_tensor_parallel_minilm_2_and_4_ranks under mpirun"]
fn worker_tensor_parallel_minilm() {
    if !mpi_harness::is_worker() {
        return;
    }
    let comm = MpiComm::init().unwrap();
    let rank = comm.rank();
    let dir = common::models_dir().join("all-MiniLM-L6-v2");
    let file = ModelFile::open(dir.join("model.safetensors")).unwrap();
    let plan = Plan::for_file(&file, &Split::Row, &Targets::equal(comm.size())).unwrap();
    let device = Device::gpu().expect("a GPU adapter (lavapipe in CI)");
    let shard = BertShard::load(&dir, &device, &plan, &comm).unwrap();
    mpi_harness::report(
        rank,
        &format!("heads={} bytes_read={}", shard.heads(), shard.bytes_read()),
    );
    // The first forward compiles the kernels; the second is timed (reported, not asserted).
    shard.embed(&comm, &SENTENCES).unwrap();
    let start = Instant::now();
    let out = shard.embed(&comm, &SENTENCES).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    mpi_harness::report(
        rank,
        &format!("bits={:016x}", bits(&out.sentence_embeddings)),
    );
    if rank == 0 {
        // The whole model on one device of this process: the reference.
        let whole = BertEmbedder::open(&dir, &device).unwrap();
        whole.embed(&SENTENCES).unwrap();
        let start = Instant::now();
        let whole = whole.embed(&SENTENCES).unwrap();
        let single = start.elapsed().as_secs_f64();
        let err = max_abs(&out.sentence_embeddings, &whole.sentence_embeddings);
        mpi_harness::report(rank, &format!("max_abs={err:e}"));
        mpi_harness::report(
            rank,
            &format!("seconds: tensor-parallel {seconds:.3}, one device {single:.3}"),
        );
    }
    comm.barrier().unwrap();
    mpi_harness::report(rank, "done");
}

#[test]
fn mpi_tensor_parallel_minilm_2_and_4_ranks() {
    if mpi_harness::is_worker() {
        return;
    }
    let dir = common::models_dir().join("all-MiniLM-L6-v2");
    let file = ModelFile::open(dir.join("model.safetensors")).unwrap();
    for np in [2, 4] {
        let plan = Plan::for_file(&file, &Split::Row, &Targets::equal(np)).unwrap();
        let run = mpi_harness::mpirun(np, "worker_tensor_parallel_minilm", mpi_harness::TIMEOUT);
        run.assert_success();
        let rank0 = run.rank_lines(0);
        for rank in 0..np {
            let lines = run.rank_lines(rank);
            let part = format!("heads={} bytes_read={}", 12 / np, plan.devices[rank].bytes);
            assert_eq!(lines.first(), Some(&part.as_str()), "{}", run.describe());
            // Every rank ends with the same bits.
            assert_eq!(
                lines.get(1),
                rank0.get(1),
                "rank {rank}: {}",
                run.describe()
            );
            assert_eq!(lines.last(), Some(&"done"), "{}", run.describe());
        }
        let err: f32 = rank0
            .iter()
            .find_map(|l| l.strip_prefix("max_abs="))
            .unwrap_or_else(|| panic!("rank 0 reported no difference: {}", run.describe()))
            .parse()
            .unwrap();
        assert!(err <= 1e-5, "{np} ranks: max abs {err} from one device");
        let seconds = rank0.iter().find(|l| l.starts_with("seconds"));
        eprintln!("{np} ranks: max abs {err:e} from one device; {seconds:?}");
    }
}

fn photos() -> Vec<std::path::PathBuf> {
    let dir = common::models_dir().join("skimage-data");
    ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
        .iter()
        .map(|p| dir.join(p))
        .collect()
}

const QUERIES: [&str; 3] = ["a cat", "a cup of coffee", "a rocket launch into space"];

fn models() -> SearchModels {
    let dir = common::models_dir();
    SearchModels {
        mobilenet: dir.join(common::MOBILENET),
        minilm: dir.join("all-MiniLM-L6-v2"),
    }
}

#[test]
#[ignore = "an MPI rank: run by mpi_image_text_search_on_2_ranks under mpirun"]
fn worker_image_text_search() {
    if !mpi_harness::is_worker() {
        return;
    }
    let comm = MpiComm::init().unwrap();
    let rank = comm.rank();
    let device = Device::gpu().expect("a GPU adapter (lavapipe in CI)");
    let found = search::search_distributed(&comm, &models(), &device, &photos(), &QUERIES).unwrap();
    if let Some(found) = found {
        mpi_harness::report(rank, &format!("rankings={:?}", found.rankings()));
        mpi_harness::report(rank, &format!("scores={:?}", found.scores));
    }
    mpi_harness::report(rank, "done");
}

#[test]
fn mpi_image_text_search_on_2_ranks() {
    if mpi_harness::is_worker() {
        return;
    }
    let device = Device::gpu().expect("a GPU adapter (lavapipe in CI)");
    let single = search::search(&models(), &device, &photos(), &QUERIES).unwrap();
    let run = mpi_harness::mpirun(2, "worker_image_text_search", mpi_harness::TIMEOUT);
    run.assert_success();
    let rank0 = run.rank_lines(0);
    let rankings = format!("rankings={:?}", single.rankings());
    assert_eq!(
        rank0.first(),
        Some(&rankings.as_str()),
        "{}",
        run.describe()
    );
    let scores: Vec<Vec<f32>> = rank0
        .iter()
        .find_map(|l| l.strip_prefix("scores="))
        .map(|s| serde_json::from_str(s).unwrap())
        .unwrap_or_else(|| panic!("rank 0 reported no scores: {}", run.describe()));
    assert!(
        max_abs(&scores, &single.scores) <= 1e-5,
        "{}",
        run.describe()
    );
    // Only rank 0 fuses and reports.
    assert_eq!(run.rank_lines(1), ["done"], "{}", run.describe());
    // The photos the search ranks first for each query (the single run is the oracle for the
    // order; these are what the photos show).
    let first: Vec<&str> = single
        .rankings()
        .iter()
        .map(|r| {
            single.photos[r[0]]
                .path
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
        })
        .collect();
    assert_eq!(first, ["chelsea.png", "coffee.png", "rocket.jpg"]);
}
