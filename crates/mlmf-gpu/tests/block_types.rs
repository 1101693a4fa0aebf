//! Block types against gguf-py 0.19.0 on random valid blocks and on blocks gguf-py quantized:
//! `tests/data/block_types.py` writes a GGUF file (with gguf-py's `GGUFWriter`) holding, per
//! type of [`TYPES`], random blocks with finite scales over the whole scale range (`.random`),
//! random blocks with scales that keep matrix products finite (`.narrow`), gguf-py's
//! quantization of random data (`.quantized`; for the i-quants, which gguf-py cannot quantize,
//! another draw of random blocks), and gguf-py's decoding of each (`.dequant`).
//! For every type and tensor: `ModelFile` opens the file, the CPU twin and the GPU `dequant`
//! equal gguf-py bit for bit, `embedding` gathers rows equal to the twin's bit for bit, and
//! `qmatmul` on both devices is within the rounding bound of the qmatmul tests,
//! `2 * cols * f32::EPSILON * sum_k |W[r][k] X[b][k]|` of the exact (f64) product of the
//! twin's decoding.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;

use mlmf_core::{DType, ModelFile};
use mlmf_gpu::ops::{convert, dequant, embedding, qmatmul};
use mlmf_gpu::{Device, Tensor};

/// The block types this harness covers (each needs a row in the generator's `SCALES` table):
/// those the gguf-py fixture in `shared/fixtures/quant` lacks.
const TYPES: &[DType] = &[
    DType::MXFP4,
    DType::TQ1_0,
    DType::TQ2_0,
    DType::IQ2_XXS,
    DType::IQ2_XS,
    DType::IQ2_S,
    DType::IQ3_XXS,
    DType::IQ3_S,
    DType::IQ1_S,
    DType::IQ1_M,
];

/// The generator's tensor shape, numpy order.
const ROWS: usize = 64;
const COLS: usize = 4096;

/// Run the generator for `types` into `out`.
fn generate(out: &Path, types: &[DType]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/block_types.py");
    let status = Command::new(common::python())
        .arg(script)
        .arg(out)
        .args(types.iter().map(|t| t.name()))
        .status()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(status.success(), "{script} failed");
}

fn values(t: &Tensor) -> Vec<f32> {
    common::f32s(&t.to_bytes().unwrap())
}

/// Assert two f32 sequences are the same bits.
fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i} (row {}, column {}): got {:e} ({:#010x}), want {:e} ({:#010x})",
            i / COLS,
            i % COLS,
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

#[test]
fn block_types_decode_multiply_and_gather_as_gguf_py() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("block_types.gguf");
    generate(&path, TYPES);
    let file = ModelFile::open(&path).unwrap();
    assert_eq!(file.tensors().len(), TYPES.len() * 6);
    let gpu = Device::gpu().unwrap();
    let batch = 3;
    let xv = common::random_f32(batch * COLS, 7);
    // Rows gathered by the embedding check: first, last, repeats, out of order.
    let ids: Vec<u32> = vec![0, 63, 5, 5, 31, 1, 62, 17];

    for &dtype in TYPES {
        for suffix in ["random", "narrow", "quantized"] {
            let name = format!("{}.{suffix}", dtype.name());
            let info = file.tensor(&name).unwrap();
            assert_eq!(info.dtype, dtype, "{name}");
            assert_eq!(info.shape.dims(), &[ROWS, COLS], "{name}");
            let want = common::f32s(file.bytes(file.tensor(&format!("{name}.dequant")).unwrap()));

            // The CPU twin, directly and through each device's dequant.
            let twin = convert::bytes_to_f32(dtype, file.bytes(info));
            assert_bits(&format!("{name}: CPU twin"), &twin, &want);
            let w_cpu = Device::Cpu.load(&file, &name).unwrap();
            let w_gpu = gpu.load(&file, &name).unwrap();
            for (device, w) in [("cpu", &w_cpu), ("gpu", &w_gpu)] {
                let got = values(&dequant::to_f32(w).unwrap());
                assert_bits(&format!("{name}: dequant on {device}"), &got, &want);
                let rows = values(&embedding::embedding(w, &ids).unwrap());
                let gathered: Vec<f32> = ids
                    .iter()
                    .flat_map(|&r| twin[r as usize * COLS..(r as usize + 1) * COLS].to_vec())
                    .collect();
                assert_bits(&format!("{name}: embedding on {device}"), &rows, &gathered);
            }

            // Products: `.random` spans scales whose sums overflow f32 (MXFP4's 2^124), so only
            // the tensors whose scales keep every sum finite.
            if suffix == "random" {
                continue;
            }
            let (exact, abs) = common::exact_product(&twin, &xv, COLS);
            for (device, w) in [(Device::Cpu, &w_cpu), (gpu.clone(), &w_gpu)] {
                let x = Tensor::from_f32("x", vec![batch, COLS], &xv)
                    .unwrap()
                    .to_device(&device)
                    .unwrap();
                let y = qmatmul::matmul(w, &x).unwrap();
                assert_eq!(y.shape().dims(), &[batch, ROWS]);
                let what = format!("{name}: qmatmul on {}", device.describe());
                common::assert_within_product_bound(&what, &values(&y), &exact, &abs, COLS);
            }
        }
    }
}
