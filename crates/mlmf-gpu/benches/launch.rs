//! Launch overhead: an add of 256 floats through mlmf (output from the pool, parameters in the
//! batch's uniform block, recorded into the batch) beside a bare wgpu dispatch of the same
//! shader (`shaders/elementwise.wgsl`, entry `add`, the same overrides) with its buffers and
//! bind group made once, on the same device, in the same run; and the same with the pool and
//! batch off (`GpuOptions::pool`, as `MLMF_POOL=off`), as before issue 15.
//!
//! Two shapes of work: one op then a wait (latency of a lone op), and 64 ops then one wait
//! (what a forward pass of small ops costs per op).
//!
//! `cargo bench -p mlmf-gpu --bench launch` (numbers in BENCHMARKS.md).

use criterion::{criterion_group, criterion_main, Criterion};
use mlmf_gpu::ops::elementwise;
use mlmf_gpu::{Device, Gpu, GpuOptions, Tensor};

const N: usize = 256;
const BURST: usize = 64;

/// The add kernel built by hand: mlmf's WGSL (the common prelude, then the family), with the
/// launcher's overrides, and one bind group over buffers made once.
struct Bare {
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
}

impl Bare {
    fn new(gpu: &Gpu) -> Bare {
        let device = gpu.wgpu_device();
        let source = concat!(
            include_str!("../shaders/common.wgsl"),
            include_str!("../shaders/elementwise.wgsl")
        );
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("bare add"),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("bare add"),
            layout: None,
            module: &module,
            entry_point: Some("add"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[("WG", 64.0), ("EPT", 16.0)],
                ..Default::default()
            },
            cache: None,
        });
        let storage = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (N * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let (a, out) = (storage("a"), storage("out"));
        let params: [u32; 8] = [N as u32, 0, 0, 0, 0, 0, 0, 0];
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: 32,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.wgpu_queue()
            .write_buffer(&uniform, 0, bytemuck::cast_slice(&params));
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("bare add"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: a.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: a.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: out.as_entire_binding(),
                },
            ],
        });
        Bare { pipeline, group }
    }

    /// `ops` dispatches in one command buffer and submission, then a wait.
    fn run(&self, gpu: &Gpu, ops: usize) {
        let device = gpu.wgpu_device();
        let mut encoder = device.create_command_encoder(&Default::default());
        for _ in 0..ops {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &self.group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        gpu.wgpu_queue().submit([encoder.finish()]);
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("the device finishes");
    }
}

fn device(pool: bool) -> (Device, Gpu) {
    let device = Device::gpu_with(&GpuOptions {
        pool: Some(pool),
        ..Default::default()
    })
    .expect("a GPU adapter");
    let Device::Gpu(gpu) = &device else {
        unreachable!("Device::gpu_with gives a GPU")
    };
    let gpu = gpu.clone();
    (device, gpu)
}

fn launch(c: &mut Criterion) {
    let x: Vec<f32> = (0..N).map(|i| i as f32).collect();
    let mut group = c.benchmark_group("launch");
    for pool in [true, false] {
        let (device, gpu) = device(pool);
        let a = Tensor::from_f32("a", vec![N], &x)
            .unwrap()
            .to_device(&device)
            .unwrap();
        let tag = if pool { "pool on" } else { "pool off" };
        group.bench_function(format!("mlmf add 256, {tag}, then wait"), |b| {
            b.iter(|| {
                let y = elementwise::add(&a, &a).unwrap();
                device.sync().unwrap();
                y
            })
        });
        group.bench_function(format!("mlmf {BURST} adds 256, {tag}, then wait"), |b| {
            b.iter(|| {
                let ys: Vec<Tensor> = (0..BURST)
                    .map(|_| elementwise::add(&a, &a).unwrap())
                    .collect();
                device.sync().unwrap();
                ys
            })
        });
        if pool {
            let bare = Bare::new(&gpu);
            group.bench_function("bare wgpu add 256, then wait", |b| {
                b.iter(|| bare.run(&gpu, 1))
            });
            group.bench_function(format!("bare wgpu {BURST} adds 256, then wait"), |b| {
                b.iter(|| bare.run(&gpu, BURST))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, launch);
criterion_main!(benches);
