//! Conversion of plain-number tensors (floats, integers, bool) to f32.
//!
//! GPU: `shaders/convert.wgsl`, one entry point per source dtype, reading the stored bytes as
//! u32 words. CPU twin: `cpu::to_f32`, Rust's own `as f32` and half's `to_f32`. The two agree
//! bit for bit (round to nearest even everywhere; NaN stays NaN).

use crate::device::kernels::{Kernel, PipelineKey};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{GpuStorage, Storage, Tensor};

const WORKGROUP: u32 = 64;

/// Uniform parameters of `convert.wgsl`, fields in WGSL order.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    in_offset: u32,
    out_offset: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// Whether [`to_f32`] handles `dtype` (quantized types come with the dequantization kernels).
pub fn supports(dtype: DType) -> bool {
    entry(dtype).is_some()
}

fn entry(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F16 => "f16_to_f32",
        DType::BF16 => "bf16_to_f32",
        DType::F32 => "f32_to_f32",
        DType::F64 => "f64_to_f32",
        DType::I64 => "i64_to_f32",
        DType::U64 => "u64_to_f32",
        DType::I32 => "i32_to_f32",
        DType::U32 => "u32_to_f32",
        DType::I16 => "i16_to_f32",
        DType::U16 => "u16_to_f32",
        DType::I8 => "i8_to_f32",
        DType::U8 | DType::Bool => "u8_to_f32",
        _ => return None,
    })
}

/// The tensor as f32, on the same device.
pub fn to_f32(t: &Tensor) -> Result<Tensor> {
    let Some(entry) = entry(t.dtype()) else {
        return Err(Error::UnsupportedConversion {
            tensor: t.name().to_string(),
            dtype: t.dtype().to_string(),
        });
    };
    let storage = match t.storage() {
        Storage::Cpu(bytes) => {
            Storage::Cpu(bytemuck::cast_slice(&cpu::to_f32(t.dtype(), bytes)).to_vec())
        }
        Storage::Gpu(g) => Storage::Gpu(gpu_to_f32(g, t, entry)?),
    };
    Ok(Tensor::new(
        t.name().to_string(),
        DType::F32,
        t.shape().clone(),
        storage,
    ))
}

fn gpu_to_f32(src: &GpuStorage, t: &Tensor, entry: &'static str) -> Result<GpuStorage> {
    let gpu: &Gpu = src.gpu();
    let elems = t.shape().elem_count();
    let in_size = t.dtype().block_bytes();
    let out = GpuStorage::allocate(gpu, t.name(), elems * 4, DType::F32.page_unit())?;
    let pipeline =
        gpu.pipeline(&PipelineKey::new(Kernel::Convert, entry).with("WG", f64::from(WORKGROUP)))?;
    let device = gpu.wgpu_device();
    let in_page = src.page_bytes() / in_size;
    let out_page = out.page_bytes() / 4;
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("mlmf convert"),
    });
    // One dispatch per overlap of an input page with an output page.
    let mut at = 0u64;
    while at < elems {
        let (ip, op) = (at / in_page, at / out_page);
        let end = elems.min((ip + 1) * in_page).min((op + 1) * out_page);
        let params = Params {
            count: to_u32(end - at, t)?,
            in_offset: to_u32(at - ip * in_page, t)?,
            out_offset: to_u32(at - op * out_page, t)?,
            _pad: 0,
        };
        let uniform = gpu.uniform("convert params", bytemuck::bytes_of(&params));
        let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("convert"),
            layout: &pipeline.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: src.pages()[ip as usize].as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: out.pages()[op as usize].as_entire_binding(),
                },
            ],
        });
        gpu.dispatch(&mut encoder, &pipeline, &bind, end - at, WORKGROUP);
        at = end;
    }
    gpu.wgpu_queue().submit([encoder.finish()]);
    Ok(out)
}

fn to_u32(v: u64, t: &Tensor) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::DeviceLimit {
        tensor: t.name().to_string(),
        bytes: t.byte_len(),
        reason: "a page holds more than 2^32 elements".into(),
    })
}

/// The CPU twin, written for clarity.
pub mod cpu {
    use crate::dtype::DType;

    /// Convert little-endian `bytes` of `dtype` to f32. `bytes` holds whole elements.
    pub fn to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
        fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
            bytes
                .chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        match dtype {
            DType::F16 => each(bytes, |b| half::f16::from_le_bytes(b).to_f32()),
            DType::BF16 => each(bytes, |b| half::bf16::from_le_bytes(b).to_f32()),
            DType::F32 => each(bytes, f32::from_le_bytes),
            DType::F64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
            DType::I64 => each(bytes, |b| i64::from_le_bytes(b) as f32),
            DType::U64 => each(bytes, |b| u64::from_le_bytes(b) as f32),
            DType::I32 => each(bytes, |b| i32::from_le_bytes(b) as f32),
            DType::U32 => each(bytes, |b| u32::from_le_bytes(b) as f32),
            DType::I16 => each(bytes, |b| f32::from(i16::from_le_bytes(b))),
            DType::U16 => each(bytes, |b| f32::from(u16::from_le_bytes(b))),
            DType::I8 => each(bytes, |b: [u8; 1]| f32::from(b[0] as i8)),
            DType::U8 | DType::Bool => each(bytes, |b: [u8; 1]| f32::from(b[0])),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{Device, GpuOptions};
    use crate::tensor::Shape;

    /// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
    fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Values where rounding is easy to get wrong: ties, carries into the exponent, subnormal
    /// boundaries, infinities, NaN, signed zero, integer extremes.
    fn edge_cases(dtype: DType) -> Vec<u8> {
        match dtype {
            DType::F64 => [
                0.0,
                -0.0,
                1.0,
                f64::MAX,
                f64::MIN_POSITIVE,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::NAN,
                f32::MAX as f64 * (1.0 + f64::EPSILON),
                3.4028235677973366e38,
                1.0 + f64::from(f32::EPSILON) / 2.0,
                1.0 + f64::from(f32::EPSILON) * 1.5,
                f64::from(f32::MIN_POSITIVE) / 2.0,
                1.401298464324817e-45,
                7.006492321624085e-46,
                7.006492321624087e-46,
                1.0e-50,
                -2.5e-40,
            ]
            .iter()
            .flat_map(|v: &f64| v.to_le_bytes())
            .collect(),
            DType::I64 => [
                0,
                1,
                -1,
                i64::MAX,
                i64::MIN,
                (1 << 24) + 1,
                (1 << 25) + 3,
                -(1 << 40) - 1,
                0x7fff_ff80_0000_0000,
            ]
            .iter()
            .flat_map(|v: &i64| v.to_le_bytes())
            .collect(),
            DType::U64 => [0, 1, u64::MAX, (1 << 24) + 1, (1 << 63) + (1 << 39)]
                .iter()
                .flat_map(|v: &u64| v.to_le_bytes())
                .collect(),
            DType::I32 => [0, -1, i32::MAX, i32::MIN, (1 << 24) + 1, (1 << 24) + 3]
                .iter()
                .flat_map(|v: &i32| v.to_le_bytes())
                .collect(),
            DType::U32 => [0, u32::MAX, (1 << 24) + 1, (1 << 24) + 3]
                .iter()
                .flat_map(|v: &u32| v.to_le_bytes())
                .collect(),
            DType::F16 => [
                0x0000u16, 0x8000, 0x0001, 0x03ff, 0x0400, 0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x7d01,
                0x3c00,
            ]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
            _ => Vec::new(),
        }
    }

    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    fn check(device: &Device, dtype: DType, bytes: Vec<u8>) {
        let n = bytes.len() / dtype.block_bytes() as usize;
        let expected = cpu::to_f32(dtype, &bytes);
        let t = Tensor::new(
            "t".into(),
            dtype,
            Shape::new(vec![n]).unwrap(),
            Storage::Cpu(bytes),
        );
        let got_t = to_f32(&t.to_device(device).unwrap()).unwrap();
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(&got_t.to_bytes().unwrap());
        assert_eq!(got.len(), n);
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(
                same(*g, *e),
                "{dtype} element {i}: gpu {g:e} ({:#x}) cpu {e:e} ({:#x})",
                g.to_bits(),
                e.to_bits()
            );
        }
    }

    const DTYPES: [DType; 13] = [
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
        DType::I64,
        DType::U64,
        DType::I32,
        DType::U32,
        DType::I16,
        DType::U16,
        DType::I8,
        DType::U8,
        DType::Bool,
    ];

    #[test]
    fn gpu_matches_cpu_twin_on_random_and_edge_values() {
        let gpu = Device::gpu().unwrap();
        for (k, dtype) in DTYPES.into_iter().enumerate() {
            let size = dtype.block_bytes() as usize;
            // An element count that is not a multiple of the workgroup size.
            let mut bytes = random_bytes(1001 * size, 17 + k as u64);
            if dtype == DType::Bool {
                bytes.iter_mut().for_each(|b| *b &= 1);
            }
            bytes.extend(edge_cases(dtype));
            check(&gpu, dtype, bytes);
        }
    }

    #[test]
    fn every_f16_value() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|v| v.to_le_bytes()).collect();
        check(&Device::gpu().unwrap(), DType::F16, bytes);
    }

    #[test]
    fn tensors_spanning_pages() {
        // 4 KiB pages: input and output pages cut the elements at different places.
        let gpu = Device::gpu_with(&GpuOptions {
            max_page_bytes: Some(4096),
            staging_bytes: 8192,
        })
        .unwrap();
        for (k, dtype) in [DType::F64, DType::F16, DType::U8, DType::F32]
            .into_iter()
            .enumerate()
        {
            let bytes = random_bytes(5000 * dtype.block_bytes() as usize, 99 + k as u64);
            check(&gpu, dtype, bytes);
        }
    }

    #[test]
    fn cpu_device_runs_the_twin() {
        let bytes: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = Tensor::new(
            "t".into(),
            DType::F64,
            Shape::new(vec![2]).unwrap(),
            Storage::Cpu(bytes),
        );
        let f = to_f32(&t).unwrap();
        assert_eq!(f.dtype(), DType::F32);
        assert_eq!(
            f.to_bytes().unwrap(),
            [1.5f32, -2.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn quantized_types_are_refused() {
        let t = Tensor::new(
            "q".into(),
            DType::Q4_0,
            Shape::new(vec![32]).unwrap(),
            Storage::Cpu(vec![0; 18]),
        );
        assert!(matches!(
            to_f32(&t),
            Err(Error::UnsupportedConversion { .. })
        ));
    }
}
