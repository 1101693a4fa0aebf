//! The fused multiply-add probe of the GPU tests (included with `#[path]` beside `mod common`).

/// Whether `device`'s shader compiler contracts a product and a sum into one fused multiply-add
/// (NVIDIA's Vulkan compiler does; lavapipe's does not). WGSL allows either, and a fused step
/// rounds once where the CPU twin rounds twice, so where it does, tests compare GPU results with
/// the twin within the error bound of the f64 reference instead of bit for bit.
///
/// Probed with a two-term product `-(1 + 2^-11) * 1 + (1 + 2^-12) * (1 + 2^-12)`: the second
/// product is `1 + 2^-11 + 2^-24`, which rounds (to even) to `1 + 2^-11`, so the sum is 0 when
/// each step is rounded and `2^-24` when the last multiply-add is fused.
pub fn fuses_multiply_add(device: &mlmf_gpu::Device) -> bool {
    use mlmf_gpu::ops::matmul::{matmul, MatmulOptions};
    use mlmf_gpu::Tensor;
    let (u, v) = (1.0 + 2f32.powi(-11), 1.0 + 2f32.powi(-12));
    let a = Tensor::from_f32("a", vec![1, 2], &[-u, v]).unwrap();
    let b = Tensor::from_f32("b", vec![2, 1], &[1.0, v]).unwrap();
    let (a, b) = (a.to_device(device).unwrap(), b.to_device(device).unwrap());
    let c = matmul(&a, &b, MatmulOptions::default())
        .unwrap()
        .to_f32_vec()
        .unwrap();
    match c[0] {
        0.0 => false,
        x if x == 2f32.powi(-24) => true,
        x => panic!("multiply-add probe gave {x:e}, neither 0 nor 2^-24"),
    }
}
