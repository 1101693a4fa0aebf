//! `ops::qmatmul` on real weights: SmolLM2-135M's `blk.0.attn_q.weight` (Q4_1) and
//! gemma-3-270m's `blk.0.ffn_down.weight` (Q6_K) and `blk.0.attn_output.weight` (Q4_K), loaded
//! straight from the GGUF files onto the GPU, times random X, on the GPU and with the CPU twin,
//! against the exact (f64) product of the CPU-decoded weights, within
//! `2 * cols * f32::EPSILON * sum_k |W[r][k] X[b][k]|`.

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::random_f32;

use mlmf_core::{DType, ModelFile};
use mlmf_gpu::ops::qmatmul;
use mlmf_gpu::{Device, Tensor};

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_bytes()
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn check_tensor(file: &str, name: &str, dtype: DType, batch: usize) {
    let file = ModelFile::open(common::model(file)).unwrap();
    let gpu = Device::gpu().unwrap();
    let w_gpu = gpu.load(&file, name).unwrap();
    let w_cpu = Device::Cpu.load(&file, name).unwrap();
    assert_eq!(w_gpu.dtype(), dtype);
    let &[rows, cols] = w_gpu.shape().dims() else {
        panic!("{name}: shape {:?}", w_gpu.shape());
    };
    let xv = random_f32(batch * cols, 42);

    // The exact product of the twin's decoding, and the sums of |W X|.
    let decoded = w_cpu.to_f32_vec().unwrap();
    assert_eq!(decoded.len(), rows * cols);
    let (want, abs) = common::exact_product(&decoded, &xv, cols);

    for (device, w) in [(gpu.clone(), &w_gpu), (Device::Cpu, &w_cpu)] {
        let x = Tensor::from_f32("x", vec![batch, cols], &xv)
            .unwrap()
            .to_device(&device)
            .unwrap();
        let y = qmatmul::matmul(w, &x).unwrap();
        assert_eq!(y.shape().dims(), &[batch, rows]);
        let what = format!(
            "{name} ({dtype} [{rows}, {cols}]) x [{batch}, {cols}] on {}",
            device.describe()
        );
        let worst = common::assert_within_product_bound(&what, &f32s(&y), &want, &abs, cols);
        println!("{what}: largest error {worst:.2e} of the bound");
    }
}

#[test]
fn smollm2_attn_q_q4_1() {
    check_tensor(common::SMOLLM2, "blk.0.attn_q.weight", DType::Q4_1, 3);
}

#[test]
fn gemma3_ffn_down_q6_k() {
    check_tensor(common::GEMMA3, "blk.0.ffn_down.weight", DType::Q6_K, 3);
}

#[test]
fn gemma3_attn_output_q4_k() {
    check_tensor(common::GEMMA3, "blk.0.attn_output.weight", DType::Q4_K, 9);
}
