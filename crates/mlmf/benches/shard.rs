//! Tensor-parallel linears (`mlmf::shard::ops`) in one process, beside the single-device product
//! in the same run:
//!
//! - all-MiniLM-L6-v2's layer-0 feed-forward (F32): `intermediate.dense` [1536, 384] split by
//!   rows, `output.dense` [384, 1536] split by columns, a batch of 8 rows;
//! - a 4096 x 4096 F16 matrix (random, written to a temporary safetensors file), one vector,
//!   split by rows and by columns.
//!
//! Each is timed as one call of the existing `linear` on one device (the input uploaded, the
//! output read back), and as `SplitLinear::forward` over 1, 2 and 4 logical devices on the one
//! GPU adapter (each part submitted, then all read back and gathered or summed on the host).
//! Before criterion times each case, the cases of a group run in interleaved rounds and their
//! medians are printed (see `interleaved`).
//!
//! `cargo bench -p mlmf --bench shard` (numbers in BENCHMARKS.md); `cargo test -p mlmf --benches`
//! runs each case once.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mlmf::ops::matmul;
use mlmf::shard::ops::{ranges_by_ratio, Cut, SplitLinear};
use mlmf::{Device, ModelFile, Tensor};

/// A square F16 matrix `[dim, dim]` and an F16 bias of random values in [-0.05, 0.05), written
/// with the `safetensors` crate into `dir`.
fn write_square_f16(dir: &std::path::Path, dim: usize) -> std::path::PathBuf {
    let to_f16 = |v: Vec<f32>| -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::f16::from_f32(x * 0.05).to_le_bytes())
            .collect()
    };
    let w = to_f16(common::random_f32(dim * dim, 11));
    let b = to_f16(common::random_f32(dim, 12));
    let view = |bytes, dims| {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F16, dims, bytes).expect("view")
    };
    let views = vec![
        ("w".to_string(), view(&w, vec![dim, dim])),
        ("b".to_string(), view(&b, vec![dim])),
    ];
    let path = dir.join("square-f16.safetensors");
    safetensors::tensor::serialize_to_file(views, None, &path).expect("write");
    path
}

/// A named case of a group: one call, its output.
type Case<'a> = (String, Box<dyn Fn() -> Vec<f32> + 'a>);

/// Rounds of every case one after the other (median and minimum per case printed): on a machine
/// whose cores other work shares, criterion's groups, timed one case after another, see different
/// loads; interleaving gives each case the same. `MLMF_BENCH_SHARD_ROUNDS` (default 21; 1 when
/// run as a test).
fn interleaved(title: &str, cases: &[Case]) {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let rounds = std::env::var("MLMF_BENCH_SHARD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench_mode { 21 } else { 1 })
        .max(1);
    let mut times = vec![Vec::with_capacity(rounds); cases.len()];
    for _ in 0..rounds {
        for ((_, case), t) in cases.iter().zip(&mut times) {
            let start = Instant::now();
            std::hint::black_box(case());
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    for ((name, _), t) in cases.iter().zip(&mut times) {
        t.sort_by(f64::total_cmp);
        println!(
            "interleaved {title}/{name}: median {:.2} ms, min {:.2} ms ({rounds} rounds)",
            t[t.len() / 2],
            t[0]
        );
    }
}

/// One group: the single-device `linear` and the split over 1, 2 and 4 of `gpus`.
#[allow(clippy::too_many_arguments)]
fn group(
    c: &mut Criterion,
    title: &str,
    gpus: &[Device],
    file: &ModelFile,
    weight: &str,
    bias: &str,
    split: Cut,
    n: usize,
) {
    let info = file.tensor(weight).expect("weight");
    let &[out, inp] = info.shape.dims() else {
        panic!("{weight}: not a matrix")
    };
    let x = common::random_f32(n * inp, 5);
    let mut g = c.benchmark_group(format!("shard/{title}"));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Bytes(info.byte_len()));

    let one = &gpus[0];
    let w = one.load(file, weight).expect("load");
    let b = one.load(file, bias).expect("load");
    let dims = if n == 1 { vec![inp] } else { vec![n, inp] };
    let dim = match split {
        Cut::Rows => out,
        Cut::Cols => inp,
    };
    let splits: Vec<(usize, SplitLinear)> = [1, 2, 4]
        .into_iter()
        .map(|parts| {
            let devices = &gpus[..parts];
            let ranges = ranges_by_ratio(dim, &vec![1; parts], 1).expect("ranges");
            let s = match split {
                Cut::Rows => SplitLinear::rows(devices, file, weight, Some(bias), &ranges),
                Cut::Cols => SplitLinear::cols(devices, file, weight, Some(bias), &ranges),
            };
            (parts, s.expect("split"))
        })
        .collect();
    let single = || {
        let xt = Tensor::from_f32("x", dims.clone(), &x)
            .and_then(|t| t.to_device(one))
            .expect("x");
        let y = matmul::linear(&xt, &w, Some(&b)).expect("linear");
        y.to_f32_vec().expect("read back")
    };
    let mut cases: Vec<Case> = vec![("one device".to_string(), Box::new(single))];
    for (parts, s) in &splits {
        let x = &x;
        cases.push((
            format!("split over {parts}"),
            Box::new(move || s.forward(x, n).expect("forward")),
        ));
    }
    interleaved(title, &cases);
    for (name, case) in &cases {
        g.bench_function(name.as_str(), |bench| bench.iter(case));
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let gpus: Vec<Device> = (0..4)
        .map(|_| Device::gpu().expect("a GPU adapter (lavapipe in CI)"))
        .collect();
    println!("4 logical devices on {}", gpus[0].describe());
    let minilm = ModelFile::open(common::model(common::MINILM)).expect("MiniLM");
    let up = "encoder.layer.0.intermediate.dense";
    let down = "encoder.layer.0.output.dense";
    group(
        c,
        "minilm_up_1536x384_f32_rows_b8",
        &gpus,
        &minilm,
        &format!("{up}.weight"),
        &format!("{up}.bias"),
        Cut::Rows,
        8,
    );
    group(
        c,
        "minilm_down_384x1536_f32_cols_b8",
        &gpus,
        &minilm,
        &format!("{down}.weight"),
        &format!("{down}.bias"),
        Cut::Cols,
        8,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let square = ModelFile::open(write_square_f16(dir.path(), 4096)).expect("square");
    for (title, split) in [
        ("4096x4096_f16_rows_vec", Cut::Rows),
        ("4096x4096_f16_cols_vec", Cut::Cols),
    ] {
        group(c, title, &gpus, &square, "w", "b", split, 1);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
