//! Conversion of plain-number tensors (floats, integers, bool) to f32.
//!
//! GPU: `shaders/convert.wgsl`, one entry point per source dtype, reading the stored bytes as
//! u32 words. CPU twin: `cpu::to_f32`, Rust's own `as f32` and half's `to_f32`. The two agree
//! bit for bit (round to nearest even everywhere; NaN stays NaN).

use super::paged;
use crate::device::kernels::{Kernel, PipelineKey};
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};
use mlmf_core::DType;
use mlmf_core::{Error, Result};

const WORKGROUP: u32 = 64;
/// Elements per invocation (`EPT` in convert.wgsl): fewer, longer workgroups. In
/// `cargo bench --bench quant` on lavapipe, F16 went from 282 to 522 MiB/s (1 vs 16).
const ELEMS_PER_INVOCATION: u32 = 16;

/// Whether this family has a kernel for `dtype` (plain numbers; [`to_f32`] also takes the
/// quantized types [`dequant`](crate::ops::dequant) supports).
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

/// The tensor as f32, on the same device. Quantized (GGML block) types go to
/// [`dequant::to_f32`](crate::ops::dequant::to_f32).
pub fn to_f32(t: &Tensor) -> Result<Tensor> {
    if crate::ops::dequant::supports(t.dtype()) {
        return crate::ops::dequant::to_f32(t);
    }
    let Some(entry) = entry(t.dtype()) else {
        return Err(Error::UnsupportedConversion {
            tensor: t.name().to_string(),
            dtype: t.dtype().to_string(),
        });
    };
    t.check_layout()?;
    let storage = match t.storage() {
        Storage::Cpu(bytes) => {
            Storage::Cpu(bytemuck::cast_slice(&cpu::to_f32(t.dtype(), bytes)).to_vec())
        }
        Storage::Gpu(g) => Storage::Gpu(gpu_to_f32(t, g, entry)?),
    };
    Ok(Tensor::new(
        t.name().to_string(),
        DType::F32,
        t.shape().clone(),
        storage,
    ))
}

/// The values of `bytes` (whole elements of `dtype`, or whole blocks of a quantized type, as a
/// file stores them) as f32, decoded in host memory exactly as [`to_f32`] decodes them on any
/// device. Empty when `dtype` has neither a conversion nor a decoder.
pub fn bytes_to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    if crate::ops::dequant::supports(dtype) {
        super::quant_decode::to_f32(dtype, bytes)
    } else {
        cpu::to_f32(dtype, bytes)
    }
}

impl Tensor {
    /// The values as f32 in host memory (converted or decoded first where the dtype is not F32,
    /// on the tensor's device). Meant for outputs and small tensors.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let converted;
        let t = if self.dtype() == DType::F32 {
            self
        } else {
            converted = to_f32(self)?;
            &converted
        };
        let mut out = Vec::with_capacity(t.shape().elem_count() as usize);
        t.for_each_chunk(|_, chunk| {
            out.extend(
                chunk
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            Ok(())
        })?;
        Ok(out)
    }
}

/// The launcher of `convert.wgsl`: one dispatch per overlap of an input and an output page.
fn gpu_to_f32(t: &Tensor, src: &GpuStorage, entry: &'static str) -> Result<GpuStorage> {
    let key = PipelineKey::new(Kernel::Convert, entry)
        .with("WG", f64::from(WORKGROUP))
        .with("EPT", f64::from(ELEMS_PER_INVOCATION));
    paged::map_elements(
        t,
        src,
        &key,
        DType::F32,
        paged::Grid {
            workgroup: WORKGROUP,
            elems_per_invocation: ELEMS_PER_INVOCATION,
            out_align: 4,
        },
    )
}

/// The CPU twin, written for clarity.
mod cpu {
    use mlmf_core::DType;

    /// Convert little-endian `bytes` of `dtype` to f32. `bytes` holds whole elements.
    pub(super) fn to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
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
    use mlmf_core::Shape;

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
            ..Default::default()
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
    fn quantized_types_go_to_dequant_and_others_are_refused() {
        // One Q4_0 block: d = 1.0, every quant 9, so every element is 1.0.
        let mut block = vec![0x00, 0x3c];
        block.extend([0x99; 16]);
        let t = Tensor::new(
            "q".into(),
            DType::Q4_0,
            Shape::new(vec![32]).unwrap(),
            Storage::Cpu(block),
        );
        let f = to_f32(&t).unwrap();
        assert_eq!(f.dtype(), DType::F32);
        assert_eq!(f.to_bytes().unwrap(), 1.0f32.to_le_bytes().repeat(32));
        let zeros = |dtype: DType| {
            Tensor::new(
                "x".into(),
                dtype,
                Shape::new(vec![256]).unwrap(),
                Storage::Cpu(vec![0; dtype.byte_len(256).unwrap() as usize]),
            )
        };
        for dtype in [DType::F8_E4M3, DType::Q8_K] {
            assert!(
                matches!(
                    to_f32(&zeros(dtype)),
                    Err(Error::UnsupportedConversion { .. })
                ),
                "{dtype}"
            );
        }
        // IQ2_XXS, refused here before it had a decoder, now goes to dequant (d = 0: zeros).
        let f = to_f32(&zeros(DType::IQ2_XXS)).unwrap();
        assert_eq!(f.to_bytes().unwrap(), 0f32.to_le_bytes().repeat(256));
    }

    #[test]
    fn bytes_that_disagree_with_the_shape_are_an_error() {
        let t = Tensor::new(
            "h".into(),
            DType::F16,
            Shape::new(vec![3]).unwrap(),
            Storage::Cpu(vec![0; 5]),
        );
        assert!(matches!(
            to_f32(&t),
            Err(Error::TensorBytes {
                expected: 6,
                found: 5,
                ..
            })
        ));
    }
}
