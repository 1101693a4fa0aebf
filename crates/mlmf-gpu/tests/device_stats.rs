//! `Gpu::stats`: what one small op and one readback ask of the device today, counted exactly
//! (issue 15 starts from these numbers: every op makes its output and parameter buffers fresh,
//! binds them anew and submits on its own).

use mlmf_gpu::ops::elementwise;
use mlmf_gpu::{Device, GpuStats, Tensor};

#[test]
fn an_add_and_a_readback_are_counted() {
    let device =
        Device::gpu().expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    let Device::Gpu(gpu) = &device else {
        panic!("Device::gpu gave {device:?}");
    };
    let x: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let a = Tensor::from_f32("a", vec![256], &x)
        .unwrap()
        .to_device(&device)
        .unwrap();

    let before = gpu.stats();
    let sum = elementwise::add(&a, &a).unwrap();
    let add = gpu.stats().since(&before);
    // The output (one page of 1024 bytes) and the parameter buffer (a few words); one bind
    // group, dispatch and submission; no wait.
    let counts = GpuStats {
        buffer_bytes: 0,
        ..add
    };
    let want = GpuStats {
        buffers: 2,
        buffer_bytes: 0,
        uniforms: 1,
        bind_groups: 1,
        dispatches: 1,
        submits: 1,
        waits: 0,
        readbacks: 0,
    };
    assert_eq!(counts, want);
    assert!((1028..=1024 + 256).contains(&add.buffer_bytes), "{add:?}");

    let before = gpu.stats();
    let back = sum.to_f32_vec().unwrap();
    let read = gpu.stats().since(&before);
    assert_eq!(back, x.iter().map(|v| v + v).collect::<Vec<_>>());
    // One staging pair the size of the tensor (not the device's whole staging halves), one
    // copy submitted, one wait.
    assert_eq!(
        (read.readbacks, read.buffers, read.submits, read.waits),
        (1, 2, 1, 1),
        "{read:?}"
    );
    assert_eq!(read.buffer_bytes, 2 * 1024, "{read:?}");
    assert_eq!(gpu.readbacks(), gpu.stats().readbacks);
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
        "3 buffers (4096 bytes; 1 of them parameters), 1 bind groups, 1 dispatches, 2 \
         submissions, 1 waits, 1 readbacks"
    );
    assert_eq!(a.since(&GpuStats::default()), a);
    assert_eq!(GpuStats::default().since(&a), GpuStats::default());
}
