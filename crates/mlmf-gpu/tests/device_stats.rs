//! `Gpu::stats`: what one small op and one readback ask of the device, counted exactly, with the
//! pool and batch on (a repeated op creates nothing and is submitted with the readback) and off
//! (as before issue 15: fresh output and parameter buffers and a submission per op).

use mlmf_gpu::ops::elementwise;
use mlmf_gpu::{Device, Gpu, GpuOptions, GpuStats, Tensor};

fn gpu(pool: bool) -> (Device, Gpu) {
    let device = Device::gpu_with(&GpuOptions {
        pool: Some(pool),
        ..Default::default()
    })
    .expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    let Device::Gpu(gpu) = &device else {
        panic!("Device::gpu gave {device:?}");
    };
    let gpu = gpu.clone();
    (device, gpu)
}

/// An add of `a` to itself and its readback: the counts of each, and the sum.
fn add_and_read(gpu: &Gpu, a: &Tensor) -> (GpuStats, GpuStats, Vec<f32>) {
    let before = gpu.stats();
    let sum = elementwise::add(a, a).unwrap();
    let add = gpu.stats().since(&before);
    let before = gpu.stats();
    let back = sum.to_f32_vec().unwrap();
    (add, gpu.stats().since(&before), back)
}

#[test]
fn a_repeated_add_and_readback_create_nothing_and_submit_once() {
    let (device, gpu) = gpu(true);
    let x: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let twice: Vec<f32> = x.iter().map(|v| v + v).collect();
    let a = Tensor::from_f32("a", vec![256], &x)
        .unwrap()
        .to_device(&device)
        .unwrap();
    // The first time fills the pool: the output page, a parameter block, readback staging.
    let (_, _, back) = add_and_read(&gpu, &a);
    assert_eq!(back, twice);
    let (add, read, back) = add_and_read(&gpu, &a);
    assert_eq!(back, twice);
    // Recorded into the batch: no buffer or bind group made (the pool hands out the same
    // output page, so the first add's bind group serves), nothing submitted yet.
    let want = GpuStats {
        uniforms: 1,
        dispatches: 1,
        ..Default::default()
    };
    assert_eq!(add, want);
    // The batch and the readback's copy go in one submission, then one wait.
    let want = GpuStats {
        submits: 1,
        waits: 1,
        readbacks: 1,
        ..Default::default()
    };
    assert_eq!(read, want);
    let memory = gpu.memory();
    assert!(memory.reuses >= 4, "{memory}");
}

#[test]
fn with_the_pool_off_each_op_makes_its_buffers_and_submits() {
    let (device, gpu) = gpu(false);
    let x: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let a = Tensor::from_f32("a", vec![256], &x)
        .unwrap()
        .to_device(&device)
        .unwrap();
    add_and_read(&gpu, &a);
    let (add, read, back) = add_and_read(&gpu, &a);
    assert_eq!(back, x.iter().map(|v| v + v).collect::<Vec<_>>());
    // The output (one page of 1024 bytes) and the parameters (32 bytes); one bind group,
    // dispatch and submission; no wait.
    let want = GpuStats {
        buffers: 2,
        buffer_bytes: 1024 + 32,
        uniforms: 1,
        bind_groups: 1,
        dispatches: 1,
        submits: 1,
        ..Default::default()
    };
    assert_eq!(add, want);
    // One staging pair the size of the tensor (not the device's whole staging halves), one
    // copy submitted, one wait.
    let want = GpuStats {
        buffers: 2,
        buffer_bytes: 2 * 1024,
        submits: 1,
        waits: 1,
        readbacks: 1,
        ..Default::default()
    };
    assert_eq!(read, want);
    assert_eq!(gpu.readbacks(), gpu.stats().readbacks);
    assert_eq!(gpu.memory().reuses, 0);
}

#[test]
fn stats_print_as_one_line_and_subtract_without_underflow() {
    let a = GpuStats {
        buffers: 3,
        buffer_bytes: 4096,
        uniforms: 1,
        bind_groups: 1,
        dispatches: 1,
        submits: 2,
        waits: 1,
        readbacks: 1,
    };
    assert_eq!(
        a.to_string(),
        "3 buffers (4096 bytes), 1 parameter sets, 1 bind groups, 1 dispatches, 2 \
         submissions, 1 waits, 1 readbacks"
    );
    assert_eq!(a.since(&GpuStats::default()), a);
    assert_eq!(GpuStats::default().since(&a), GpuStats::default());
}
