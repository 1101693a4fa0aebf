use mlmf::{DType, Device, Shape, Tensor};
use std::time::Instant;
fn main() -> mlmf::Result<()> {
    let gpu = Device::gpu()?;
    let n = 1usize << 22;
    let bytes: Vec<u8> = (0..n * 2).map(|i| (i % 251) as u8 & 0x3f).collect();
    let t = Tensor::from_bytes(
        "t",
        DType::F16,
        Shape::new(vec![n / 1024, 1024]).unwrap(),
        bytes,
    )?
    .to_device(&gpu)?;
    let f = Tensor::from_bytes(
        "f",
        DType::F32,
        Shape::new(vec![n / 1024, 1024]).unwrap(),
        vec![0u8; n * 4],
    )?
    .to_device(&gpu)?;
    for _ in 0..3 {
        let s = Instant::now();
        let o = mlmf::ops::convert::to_f32(&t)?;
        gpu.sync()?;
        let a = s.elapsed();
        drop(o);
        let s = Instant::now();
        let o = f.to_device(&gpu)?;
        gpu.sync()?;
        let b = s.elapsed();
        drop(o);
        let s = Instant::now();
        let o = mlmf::ops::convert::to_f32(&f)?;
        gpu.sync()?;
        let c = s.elapsed();
        drop(o);
        println!(
            "f16->f32 {:?}   alloc+copy 16MB {:?}   f32->f32 kernel {:?}",
            a, b, c
        );
    }
    Ok(())
}
