//! The caching allocator: what it accounts against what the driver's allocator reports, buffers
//! reused rather than made, `empty_cache`, and refused allocations as typed errors.

use mlmf_core::Error;
use mlmf_gpu::ops::elementwise;
use mlmf_gpu::{Device, Gpu, GpuOptions, Tensor};

fn gpu(options: GpuOptions) -> (Device, Gpu) {
    let device = Device::gpu_with(&options).expect("a GPU adapter (lavapipe: mesa-vulkan-drivers)");
    let Device::Gpu(gpu) = &device else {
        panic!("Device::gpu gave {device:?}");
    };
    let gpu = gpu.clone();
    (device, gpu)
}

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i % 1000) as f32 * 0.5).collect()
}

const MIB: u64 = 1 << 20;

#[test]
fn accounting_follows_the_driver_report() {
    let (device, gpu) = gpu(GpuOptions::default());
    let Some((allocated0, _)) = gpu.allocator_report() else {
        // Backends without gpu-allocator (Metal, GL) give no report; only ours can be checked.
        eprintln!("{:?} offers no allocator report", gpu.backend());
        return;
    };
    let before = gpu.memory();
    let x = ramp(4 << 20);
    let t = Tensor::from_f32("x", vec![4 << 20], &x)
        .unwrap()
        .to_device(&device)
        .unwrap();
    let y = elementwise::add(&t, &t).unwrap();
    assert_eq!(y.to_f32_vec().unwrap()[..4], [0.0, 1.0, 2.0, 3.0]);
    let held = gpu.memory();
    // Two tensors of 16 MiB in use (a bucket of exactly 16 MiB each), held by us.
    assert_eq!(held.in_use_bytes - before.in_use_bytes, 32 * MIB, "{held}");
    assert_eq!(t.resident_bytes() + y.resident_bytes(), 32 * MIB);
    let (allocated1, _) = gpu.allocator_report().unwrap();
    // The driver's allocator grew by what the pool made: the tensors, the readback staging
    // and a parameter block. wgpu's own buffers (staging for queue writes, made and freed
    // around a submission) come and go in the same report: within 1%.
    let made =
        (held.in_use_bytes + held.cached_bytes) - (before.in_use_bytes + before.cached_bytes);
    let grew = allocated1 - allocated0;
    assert!(made >= 32 * MIB);
    assert!(
        grew.abs_diff(made) <= made / 100,
        "driver +{grew} bytes, pool +{made}"
    );
    drop((t, y));
    let dropped = gpu.memory();
    assert_eq!(dropped.in_use_bytes, before.in_use_bytes, "{dropped}");
    assert!(dropped.cached_bytes >= 32 * MIB, "{dropped}");
    // Back to the driver: the report shrinks by what the pool held.
    gpu.empty_cache();
    device.sync().unwrap();
    let emptied = gpu.memory();
    assert_eq!(emptied.cached_bytes, 0, "{emptied}");
    let (allocated2, _) = gpu.allocator_report().unwrap();
    assert!(
        allocated1 - allocated2 >= 32 * MIB,
        "driver {allocated1} -> {allocated2} bytes after empty_cache"
    );
    assert_eq!(
        emptied.peak_in_use_bytes,
        held.peak_in_use_bytes.max(emptied.in_use_bytes)
    );
}

#[test]
fn a_second_forward_reuses_every_buffer() {
    let (device, gpu) = gpu(GpuOptions::default());
    let x = Tensor::from_f32("x", vec![3, 1000], &ramp(3000))
        .unwrap()
        .to_device(&device)
        .unwrap();
    let forward = |x: &Tensor| {
        let h = elementwise::gelu(x).unwrap();
        let h = elementwise::mul(&h, x).unwrap();
        elementwise::add(&h, x).unwrap().to_f32_vec().unwrap()
    };
    let first = forward(&x);
    let made = gpu.memory().allocations;
    let stats = gpu.stats();
    let second = forward(&x);
    assert_eq!(first, second);
    assert_eq!(gpu.memory().allocations, made, "{}", gpu.memory());
    assert_eq!(gpu.stats().since(&stats).buffers, 0);
}

#[test]
fn a_memory_limit_refuses_with_a_typed_error_after_trimming() {
    // Readback staging counts against the limit too: keep it to 2 x 512 KiB.
    let (device, gpu) = gpu(GpuOptions {
        memory_limit: Some(8 * MIB),
        staging_bytes: MIB,
        ..Default::default()
    });
    let big = ramp(3 << 20); // 12 MiB
    let err = Tensor::from_f32("too big", vec![3 << 20], &big)
        .unwrap()
        .to_device(&device)
        .unwrap_err();
    assert!(
        matches!(&err, Error::OutOfMemory { tensor, bytes, .. } if tensor == "too big" && *bytes == 12 * MIB),
        "{err}"
    );
    // Cached free buffers are given back to make room: 3 MiB, dropped, then 6 MiB fits.
    let small = Tensor::from_f32("a", vec![3 << 18], &ramp(3 << 18))
        .unwrap()
        .to_device(&device)
        .unwrap();
    drop(small);
    device.sync().unwrap();
    assert!(gpu.memory().cached_bytes >= 3 * MIB);
    let six = Tensor::from_f32("b", vec![6 << 18], &ramp(6 << 18))
        .unwrap()
        .to_device(&device)
        .unwrap();
    assert_eq!(six.to_f32_vec().unwrap(), ramp(6 << 18));
    let m = gpu.memory();
    assert!(m.in_use_bytes + m.cached_bytes <= 8 * MIB, "{m}");
    assert!(m.releases >= 1, "{m}");
}

#[test]
fn an_injected_failure_is_a_typed_error_and_the_next_request_succeeds() {
    let (device, gpu) = gpu(GpuOptions::default());
    gpu.fail_allocation(1);
    let err = Tensor::from_f32("w", vec![64], &ramp(64))
        .unwrap()
        .to_device(&device)
        .unwrap_err();
    assert!(
        matches!(&err, Error::OutOfMemory { tensor, bytes: 256, .. } if tensor == "w"),
        "{err}"
    );
    let t = Tensor::from_f32("w", vec![64], &ramp(64))
        .unwrap()
        .to_device(&device)
        .unwrap();
    // The second request of an op (its parameter block follows its output page) fails too.
    gpu.fail_allocation(2);
    gpu.empty_cache();
    let err = elementwise::scale(&t, 2.0).unwrap_err();
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
    assert_eq!(
        elementwise::scale(&t, 2.0).unwrap().to_f32_vec().unwrap(),
        ramp(64).iter().map(|v| v * 2.0).collect::<Vec<_>>()
    );
}
