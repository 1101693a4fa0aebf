//! The i-quants on grids (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M) against gguf-py
//! 0.19.0, on a GGUF that gguf-py writes (`tests/data/make_iq_fixture.py`, run into a temporary
//! directory: 256 random blocks per type with finite scales, and `gguf.quants.dequantize` of
//! them), opened with `ModelFile`:
//!
//! * dequant on the GPU and with the CPU twin: bit for bit gguf-py's values;
//! * the embedding gather on both devices: rows bit for bit gguf-py's;
//! * the fused product on both devices: within qmatmul's bound,
//!   `|y - y_exact| <= 2 * cols * f32::EPSILON * sum_k |W[r][k] X[b][k]|`, against the exact
//!   (f64) product of gguf-py's decoding.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;

use mlmf_core::{DType, ModelFile};
use mlmf_gpu::ops::{dequant, embedding, qmatmul};
use mlmf_gpu::{Device, Tensor};

/// The types, and the scale fields the generator makes finite (its `SCALES`): an f16 at a byte
/// offset, or IQ1_M's f16 spread over the top nibbles of the four u16 at byte 48.
const TYPES: [(DType, &str); 7] = [
    (DType::IQ2_XXS, "f16 at 0"),
    (DType::IQ2_XS, "f16 at 0"),
    (DType::IQ2_S, "f16 at 0"),
    (DType::IQ3_XXS, "f16 at 0"),
    (DType::IQ3_S, "f16 at 0"),
    (DType::IQ1_S, "f16 at 0"),
    (DType::IQ1_M, "f16 in the top nibbles of the u16 at 48..56"),
];

const ROWS: usize = 32;
const COLS: usize = 2048;

/// Run the generator into `dir` and open what it wrote.
fn oracle(dir: &Path) -> ModelFile {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/make_iq_fixture.py");
    let path = dir.join("iq_gguf_py.gguf");
    let out = Command::new(common::python())
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ModelFile::open(&path).unwrap()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    f32s(&t.to_bytes().unwrap())
}

/// `got` equals `want` bit for bit; the first difference otherwise.
fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got
        .iter()
        .zip(want)
        .position(|(a, b)| a.to_bits() != b.to_bits())
    {
        panic!("{what}: element {i}: got {:e}, want {:e}", got[i], want[i]);
    }
}

#[test]
fn iq_types_decode_gather_and_multiply_as_gguf_py_on_both_devices() {
    let dir = tempfile::tempdir().unwrap();
    let file = oracle(dir.path());
    let gpu = Device::gpu().unwrap();
    let batch = 3;
    let xv = common::random_f32(batch * COLS, 7);
    let ids: Vec<u32> = vec![0, 31, 5, 5, 17, 30, 1];
    for (dtype, scales) in TYPES {
        let name = dtype.name();
        let info = file.tensor(name).unwrap();
        assert_eq!(info.dtype, dtype);
        let want = f32s(file.bytes(file.tensor(&format!("{name}.dequant")).unwrap()));
        assert_eq!(want.len(), ROWS * COLS);
        // The exact product of gguf-py's decoding with X, and the sums of |W X|.
        let mut exact = vec![0.0f64; batch * ROWS];
        let mut abs = vec![0.0f64; batch * ROWS];
        for (r, wrow) in want.chunks_exact(COLS).enumerate() {
            for b in 0..batch {
                for (k, w) in wrow.iter().enumerate() {
                    let p = f64::from(*w) * f64::from(xv[b * COLS + k]);
                    exact[b * ROWS + r] += p;
                    abs[b * ROWS + r] += p.abs();
                }
            }
        }
        for device in [&Device::Cpu, &gpu] {
            let what = format!("{name} ({scales}) on {}", device.describe());
            let w = device.load(&file, name).unwrap();
            assert_eq!(w.dtype(), dtype);
            assert_eq!(w.shape().dims(), &[ROWS, COLS]);

            let got = values(&dequant::to_f32(&w).unwrap());
            assert_bits(&format!("{what}: dequant"), &got, &want);

            let rows = values(&embedding::embedding(&w, &ids).unwrap());
            let gathered: Vec<f32> = ids
                .iter()
                .flat_map(|&i| want[i as usize * COLS..][..COLS].iter().copied())
                .collect();
            assert_bits(&format!("{what}: embedding"), &rows, &gathered);

            let x = Tensor::from_f32("x", vec![batch, COLS], &xv)
                .unwrap()
                .to_device(device)
                .unwrap();
            let y = values(&qmatmul::matmul(&w, &x).unwrap());
            assert_eq!(y.len(), exact.len());
            for (i, ((g, e), a)) in y.iter().zip(&exact).zip(&abs).enumerate() {
                let bound = 2.0 * COLS as f64 * f64::from(f32::EPSILON) * a;
                let err = (f64::from(*g) - e).abs();
                assert!(
                    err <= bound,
                    "{what}: qmatmul element {i}: got {g:e}, want {e:e}, error {err:e} > {bound:e}"
                );
            }
        }
    }
}
