//! Placement over MPI ranks, one process and one device each, beside one process in the same run:
//!
//! - load: bytes read and load time per rank for a row split of gemma-3-270m (Q4_K_M) at 1, 2
//!   and 4 ranks, beside a full load of the file by one process;
//! - tensor-parallel linears at MiniLM's shapes (`intermediate.dense` [1536, 384] by rows and
//!   `output.dense` [384, 1536] by columns, a batch of 8) and a 4096 x 4096 F16 matrix (one
//!   vector), at 1, 2 and 4 ranks, beside the same product on one device in one process; and the
//!   collective each needs (our `all_gather` or `all_reduce_sum`) beside a bare `MPI_Allreduce`
//!   of the same buffer;
//! - tensor-parallel all-MiniLM-L6-v2 (`BertShard`) embedding four sentences, beside
//!   `BertEmbedder` on one device in one process.
//!
//! `cargo bench -p mlmf --features mpi --bench shard_mpi`: this binary starts itself under
//! `mpirun -np N` for each N; the ranks time fixed repetitions (not criterion: its adaptive
//! iteration counts differ per rank and collectives would deadlock) and rank 0 prints JSON
//! lines, which the parent prints as a table. Without `--bench` (`cargo test --benches`) it
//! loads one rank's part in this process and checks the byte count.

#[path = "../../../tests/common/mod.rs"]
mod common;
#[path = "../../../tests/common/mpirun.rs"]
mod mpirun;

use std::path::{Path, PathBuf};
use std::time::Instant;

use mlmf::shard::ops::{gather_rows, ranges_by_ratio, Cut, LinearPart};
use mlmf::shard::{load_part, local_device, Comm, MpiComm, Plan, Split, Targets, World};
use mlmf::{Device, ModelFile};

const REPEATS: usize = 3;

const SENTENCES: [&str; 4] = [
    "A cat sits on the mat.",
    "The stock market fell sharply today.",
    "A kitten is resting on a rug.",
    "Quantum computers use qubits.",
];
const WORKER: &str = "MLMF_SHARD_MPI_WORKER";
const SQUARE: &str = "MLMF_SHARD_MPI_SQUARE";

/// A product to time: the file, weight, bias, how it is cut, the batch, calls per repetition.
struct Case {
    name: &'static str,
    weight: &'static str,
    bias: &'static str,
    cut: Cut,
    batch: usize,
    calls: usize,
}

const CASES: [Case; 3] = [
    Case {
        name: "minilm up [1536,384] rows, batch 8",
        weight: "encoder.layer.0.intermediate.dense.weight",
        bias: "encoder.layer.0.intermediate.dense.bias",
        cut: Cut::Rows,
        batch: 8,
        calls: 20,
    },
    Case {
        name: "minilm down [384,1536] cols, batch 8",
        weight: "encoder.layer.0.output.dense.weight",
        bias: "encoder.layer.0.output.dense.bias",
        cut: Cut::Cols,
        batch: 8,
        calls: 20,
    },
    Case {
        name: "4096x4096 f16 cols, one vector",
        weight: "w",
        bias: "b",
        cut: Cut::Cols,
        batch: 1,
        calls: 4,
    },
];

fn case_file(c: &Case) -> PathBuf {
    match c.weight {
        "w" => PathBuf::from(std::env::var(SQUARE).expect("the square matrix's path")),
        _ => common::model(common::MINILM),
    }
}

/// A random 4096 x 4096 F16 matrix and bias, written with the safetensors crate.
fn write_square(dir: &Path) -> PathBuf {
    let f16 = |v: Vec<f32>| -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::f16::from_f32(x * 0.05).to_le_bytes())
            .collect()
    };
    let (w, b) = (
        f16(common::random_f32(4096 * 4096, 11)),
        f16(common::random_f32(4096, 12)),
    );
    let view = |bytes, dims| {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F16, dims, bytes).unwrap()
    };
    let path = dir.join("square.safetensors");
    let views = vec![
        ("w", view(&w, vec![4096, 4096])),
        ("b", view(&b, vec![4096])),
    ];
    safetensors::tensor::serialize_to_file(views, None, &path).unwrap();
    path
}

/// One rank's load of its part (the plan for `size` ranks), timed from the first byte read to
/// the part resident on its device.
fn load_once(world: World, file: &ModelFile) -> (u64, f64) {
    let plan = Plan::for_file(file, &Split::Row, &Targets::equal(world.size)).unwrap();
    let device = local_device(&world).unwrap();
    let loaded = load_part(&device, file, &plan.devices[world.rank]).unwrap();
    (loaded.bytes_read, loaded.seconds)
}

/// Seconds per call of `f`: the best of `REPEATS` repetitions of `calls` calls.
fn per_call(calls: usize, mut f: impl FnMut()) -> f64 {
    (0..REPEATS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                f();
            }
            start.elapsed().as_secs_f64() / calls as f64
        })
        .fold(f64::MAX, f64::min)
}

fn worker() {
    let comm = MpiComm::init().unwrap();
    let (rank, size) = (comm.rank(), comm.size());
    let mut lines = Vec::new();

    let file = ModelFile::open(common::model(common::GEMMA3)).unwrap();
    let mut best = f64::MAX;
    let mut bytes = 0;
    for _ in 0..REPEATS {
        comm.barrier().unwrap();
        let (b, s) = load_once(comm.world(), &file);
        bytes = b;
        best = best.min(s);
    }
    lines.push(format!(
        "{{\"kind\":\"load\",\"rank\":{rank},\"bytes_read\":{bytes},\"seconds\":{best}}}"
    ));

    let device = local_device(&comm.world()).unwrap();
    for c in &CASES {
        let file = ModelFile::open(case_file(c)).unwrap();
        let info = file.tensor(c.weight).unwrap();
        let (out, inp) = (info.shape.dims()[0], info.shape.dims()[1]);
        let dim = if c.cut == Cut::Rows { out } else { inp };
        let part = LinearPart::load(
            &device,
            &file,
            c.weight,
            Some(c.bias),
            c.cut,
            &ranges_by_ratio(dim, &vec![1; size], 64).unwrap(),
            rank,
        )
        .unwrap();
        let x = common::random_f32(c.batch * inp, 5);
        let mut y = Vec::new();
        comm.barrier().unwrap();
        let call = per_call(c.calls, || {
            y = part.forward(&x, c.batch).unwrap();
            match c.cut {
                Cut::Rows => {
                    let bytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
                    let all = comm.all_gather(&bytes).unwrap();
                    let parts: Vec<Vec<f32>> = all
                        .iter()
                        .map(|b| {
                            b.chunks_exact(4)
                                .map(|w| f32::from_le_bytes(w.try_into().unwrap()))
                                .collect()
                        })
                        .collect();
                    y = gather_rows(&parts, c.batch).unwrap();
                }
                Cut::Cols => {
                    comm.all_reduce_sum(&mut y).unwrap();
                    part.add_bias(&mut y).unwrap();
                }
            }
        });
        // The collective alone on a buffer of the same size, ours and MPI's.
        let len = c.batch * out;
        let mut buf = vec![0f32; len];
        let ours = per_call(c.calls * 5, || match c.cut {
            Cut::Rows => {
                let bytes = vec![0u8; 4 * len / size];
                comm.all_gather(&bytes).unwrap();
            }
            Cut::Cols => comm.all_reduce_sum(&mut buf).unwrap(),
        });
        let send = vec![0f32; len];
        let bare = per_call(c.calls * 5, || {
            comm.all_reduce_sum_bare(&send, &mut buf).unwrap()
        });
        lines.push(format!(
            "{{\"kind\":\"linear\",\"case\":\"{}\",\"rank\":{rank},\"call\":{call},\"collective\":{ours},\"bare_allreduce\":{bare}}}",
            c.name
        ));
    }
    let dir = common::models_dir().join("all-MiniLM-L6-v2");
    let file = ModelFile::open(dir.join("model.safetensors")).unwrap();
    let plan = Plan::for_file(&file, &Split::Row, &Targets::equal(size)).unwrap();
    let bert = mlmf::models::bert::BertShard::load(&dir, &device, &plan, &comm).unwrap();
    bert.embed(&comm, &SENTENCES).unwrap();
    comm.barrier().unwrap();
    let call = per_call(2, || {
        bert.embed(&comm, &SENTENCES).unwrap();
    });
    lines.push(format!(
        "{{\"kind\":\"bert\",\"rank\":{rank},\"call\":{call}}}"
    ));
    let all = comm.all_gather(lines.join("\n").as_bytes()).unwrap();
    if rank == 0 {
        for l in all {
            println!("{}", String::from_utf8_lossy(&l));
        }
    }
}

fn mpirun(np: usize, square: &Path) -> Vec<serde_json::Value> {
    let exe = std::env::current_exe().unwrap();
    let out = mpirun::command(np)
        .args(["-x", WORKER, "-x", SQUARE])
        .arg(exe)
        .env(WORKER, "1")
        .env(SQUARE, square)
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

fn ms(v: &serde_json::Value) -> String {
    format!("{:.2} ms", v.as_f64().unwrap_or(f64::NAN) * 1e3)
}

fn us(v: &serde_json::Value) -> String {
    format!("{:.1} us", v.as_f64().unwrap_or(f64::NAN) * 1e6)
}

fn main() {
    if std::env::var_os(WORKER).is_some() {
        return worker();
    }
    let gemma = ModelFile::open(common::model(common::GEMMA3)).unwrap();
    if !std::env::args().any(|a| a == "--bench") {
        // Test mode: one rank of two, in this process.
        let world = World {
            rank: 1,
            size: 2,
            local_rank: 0,
            source: mlmf::shard::WorldSource::Single,
        };
        let (bytes, _) = load_once(world, &gemma);
        let plan = Plan::for_file(&gemma, &Split::Row, &Targets::equal(2)).unwrap();
        assert_eq!(bytes, plan.devices[1].bytes);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let square = write_square(dir.path());
    // SAFETY: set before any other thread exists; the cases read it back.
    unsafe { std::env::set_var(SQUARE, &square) };

    // Baselines in this process: the whole file onto a fresh device each time (as every rank's
    // load is onto a fresh device, whose pool has nothing cached), each product on one device.
    let mut full = f64::MAX;
    for _ in 0..REPEATS {
        let fresh = Device::gpu().unwrap();
        let start = Instant::now();
        let tensors = fresh.load_all(&gemma).unwrap();
        fresh.sync().unwrap();
        full = full.min(start.elapsed().as_secs_f64());
        drop(tensors);
    }
    let device = Device::gpu().unwrap();
    let mut single = Vec::new();
    for c in &CASES {
        let file = ModelFile::open(case_file(c)).unwrap();
        let info = file.tensor(c.weight).unwrap();
        let (out, inp) = (info.shape.dims()[0], info.shape.dims()[1]);
        let dim = if c.cut == Cut::Rows { out } else { inp };
        let whole: Vec<_> = std::iter::once(0..dim).collect();
        let part =
            LinearPart::load(&device, &file, c.weight, Some(c.bias), c.cut, &whole, 0).unwrap();
        let x = common::random_f32(c.batch * inp, 5);
        single.push(per_call(c.calls, || {
            part.forward(&x, c.batch).unwrap();
        }));
    }
    let bert = mlmf::models::bert::BertEmbedder::open(
        common::models_dir().join("all-MiniLM-L6-v2"),
        &device,
    )
    .unwrap();
    bert.embed(&SENTENCES).unwrap();
    let bert_one = per_call(2, || {
        bert.embed(&SENTENCES).unwrap();
    });
    drop(bert);
    drop(device);

    println!("gemma-3-270m-q4_k_m.gguf row split, best of {REPEATS}");
    println!(
        "  one process, whole file: {} bytes in {:.3} s",
        gemma.data_bytes(),
        full
    );
    let runs: Vec<(usize, Vec<serde_json::Value>)> = [1, 2, 4]
        .into_iter()
        .map(|np| (np, mpirun(np, &square)))
        .collect();
    for (np, lines) in &runs {
        for r in lines.iter().filter(|r| r["kind"] == "load") {
            println!(
                "  {np} ranks, rank {}: {} bytes in {:.3} s",
                r["rank"],
                r["bytes_read"],
                r["seconds"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    println!("tensor-parallel linear per call (slowest rank), best of {REPEATS}");
    for (c, one) in CASES.iter().zip(&single) {
        println!("  {}: one device {:.2} ms", c.name, one * 1e3);
        for (np, lines) in &runs {
            let slowest = lines
                .iter()
                .filter(|r| r["kind"] == "linear" && r["case"] == c.name)
                .max_by(|a, b| a["call"].as_f64().partial_cmp(&b["call"].as_f64()).unwrap())
                .unwrap();
            println!(
                "    {np} ranks: {} (collective {}, bare MPI_Allreduce of the buffer {})",
                ms(&slowest["call"]),
                us(&slowest["collective"]),
                us(&slowest["bare_allreduce"])
            );
        }
    }
    println!("tensor-parallel all-MiniLM-L6-v2, 4 sentences, per embed (slowest rank)");
    println!("  one device: {:.2} ms", bert_one * 1e3);
    for (np, lines) in &runs {
        let slowest = lines
            .iter()
            .filter(|r| r["kind"] == "bert")
            .filter_map(|r| r["call"].as_f64())
            .fold(0.0, f64::max);
        println!("  {np} ranks: {:.2} ms", slowest * 1e3);
    }
}
