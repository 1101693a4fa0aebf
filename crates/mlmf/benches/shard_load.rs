//! Bytes read and load time per rank for a row split of gemma-3-270m (Q4_K_M) at 1, 2 and 4 MPI
//! ranks, one process and one device each, beside a full load of the file by one process in
//! the same run.
//!
//! `cargo bench -p mlmf --features mpi --bench shard_load`: this binary starts itself under
//! `mpirun -np N` for each N (the ranks time their own loads; rank 0 prints one JSON line per
//! rank), then prints a table. Fixed repetitions, not criterion: criterion's adaptive iteration
//! counts differ per rank and collectives would deadlock. Without `--bench` (`cargo test
//! --benches`) it loads once in this process and checks the byte counts.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Instant;

use mlmf::shard::{load_part, local_device, Comm, Plan, Split, Targets, World};
use mlmf::{Device, ModelFile};

const REPEATS: usize = 3;
const WORKER: &str = "MLMF_SHARD_LOAD_WORKER";

fn model() -> std::path::PathBuf {
    common::model(common::GEMMA3)
}

/// One rank's load of its part (the plan for `size` ranks), timed from the first byte read to
/// the part resident on its device.
fn load_once(world: World, file: &ModelFile) -> (u64, f64) {
    let plan = Plan::for_file(file, &Split::Row, &Targets::equal(world.size)).unwrap();
    let device = local_device(&world).unwrap();
    let loaded = load_part(&device, file, &plan.devices[world.rank]).unwrap();
    (loaded.bytes_read, loaded.seconds)
}

#[cfg(feature = "mpi")]
fn worker() {
    let comm = mlmf::shard::MpiComm::init().unwrap();
    let file = ModelFile::open(model()).unwrap();
    let mut best = f64::MAX;
    let mut bytes = 0;
    for _ in 0..REPEATS {
        comm.barrier().unwrap();
        let (b, s) = load_once(comm.world(), &file);
        bytes = b;
        best = best.min(s);
    }
    let line = format!(
        "{{\"rank\":{},\"world_size\":{},\"bytes_read\":{bytes},\"seconds\":{best}}}",
        comm.rank(),
        comm.size()
    );
    let all = comm.all_gather(line.as_bytes()).unwrap();
    if comm.rank() == 0 {
        for l in all {
            println!("{}", String::from_utf8_lossy(&l));
        }
    }
}

#[cfg(not(feature = "mpi"))]
fn worker() {
    panic!("started as an MPI rank, but built without the `mpi` feature");
}

fn mpirun(np: usize) -> Vec<serde_json::Value> {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("mpirun")
        .args(["--oversubscribe", "--bind-to", "none", "-np"])
        .arg(np.to_string())
        .args(["-x", WORKER])
        .arg(exe)
        .env(WORKER, "1")
        // Open MPI in a container on loopback, as the test harness runs it.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl", "self,vader")
        .env("OMPI_MCA_pml", "ob1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .output()
        .expect("mpirun (openmpi-bin)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn main() {
    if std::env::var_os(WORKER).is_some() {
        return worker();
    }
    let file = ModelFile::open(model()).unwrap();
    if !std::env::args().any(|a| a == "--bench") {
        // Test mode: one rank of two, in this process.
        let world = World {
            rank: 1,
            size: 2,
            local_rank: 0,
            source: mlmf::shard::WorldSource::Single,
        };
        let (bytes, _) = load_once(world, &file);
        let plan = Plan::for_file(&file, &Split::Row, &Targets::equal(2)).unwrap();
        assert_eq!(bytes, plan.devices[1].bytes);
        return;
    }
    // The baseline: the whole file onto one device by one process.
    let device = Device::gpu().unwrap();
    let mut full = f64::MAX;
    for _ in 0..REPEATS {
        let start = Instant::now();
        let tensors = device.load_all(&file).unwrap();
        device.sync().unwrap();
        full = full.min(start.elapsed().as_secs_f64());
        drop(tensors);
    }
    drop(device);
    println!("gemma-3-270m-q4_k_m.gguf, row split; best of {REPEATS} per rank");
    println!(
        "full load, one process: {} bytes in {:.3} s",
        file.data_bytes(),
        full
    );
    for np in [1, 2, 4] {
        for r in mpirun(np) {
            println!(
                "ranks {np}: rank {} read {} bytes in {:.3} s",
                r["rank"],
                r["bytes_read"],
                r["seconds"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
}
