//! Cold start: the time from the start of `main` to the first kernel's result read back, for
//! BENCHMARKS.md ("Cold start"). Run it in fresh processes, with and without the pipeline cache:
//!
//! ```text
//! MLMF_PIPELINE_CACHE=off cargo run -p mlmf-gpu --example first_kernel
//! MLMF_PIPELINE_CACHE=/tmp/pipelines cargo run -p mlmf-gpu --example first_kernel
//! ```

use std::time::Instant;

use mlmf_gpu::{ops::elementwise, Device, Tensor};

fn main() -> Result<(), mlmf_core::Error> {
    let start = Instant::now();
    let device = Device::gpu()?;
    let opened = start.elapsed();
    let a = Tensor::from_f32("a", vec![4], &[1.0, 2.0, 3.0, 4.0])?.to_device(&device)?;
    let sum = elementwise::add(&a, &a)?.to_f32_vec()?;
    let done = start.elapsed();
    println!(
        "{}: device {:.0} ms, first kernel's result {:.0} ms {sum:?}",
        device.describe(),
        opened.as_secs_f64() * 1e3,
        done.as_secs_f64() * 1e3
    );
    Ok(())
}
