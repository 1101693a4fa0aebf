//! Dequantization of GGML block types to f32, straight from the block bytes as GGUF stores them.
//!
//! One public op, [`to_f32`], for every quantized type with a decoder, and [`to_f16_or_f32`],
//! which writes f16 where the device can (the families' `Variant::F16`, on GPUs with shader-f16)
//! and falls back to f32 where it cannot. Two kernel families do the work: this file with
//! `shaders/dequant.wgsl` for the legacy 32-element blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! IQ4_NL), and [`dequant_k`] with `shaders/dequant_k.wgsl` for the
//! 256-element K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS). F16 and BF16 are
//! [`convert`](super::convert)'s.
//!
//! CPU twins (`cpu` here and in `dequant_k`) are written like ggml's `dequantize_row_*`
//! (ggml-quants.c): per block, from bytes, plain loops, float32 arithmetic grouped as written
//! there. GPU and twin agree bit for bit, and both agree bit for bit with gguf-py's decoding of
//! the fixtures in `shared/fixtures/quant` and of real model files. That holds on any compiler:
//! every product in these decoders is exact in f32 (an f16 scale's 11-bit significand times small
//! integers stays within 24 bits), so the only rounding is a single add or subtract per element,
//! and contracting it with a product into a fused multiply-add cannot change the result.

use super::{dequant_k, paged};
use crate::device::kernels::{Kernel, PipelineKey, Variant};
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};
use mlmf_core::DType;
use mlmf_core::{Error, Result};

/// How both dequant families cover their elements: one group of 32 per invocation (`GROUP` in
/// `shaders/quant_decode.wgsl`: a legacy block or an eighth of a K-quant super-block, whose
/// scales are decoded once), and output pages split at 16 bytes so the kernels store vec4s.
pub(crate) const GRID: paged::Grid = paged::Grid {
    workgroup: 64,
    elems_per_invocation: 32,
    out_align: 16,
};

/// Uniform parameters of `dequant.wgsl`, fields in WGSL order.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    in_offset: u32,
    out_offset: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// Whether [`to_f32`] decodes `dtype`.
pub fn supports(dtype: DType) -> bool {
    kernel(dtype).is_some()
}

/// The kernel family and entry point that decode `dtype`.
pub fn kernel(dtype: DType) -> Option<(Kernel, &'static str)> {
    entry(dtype)
        .map(|e| (Kernel::Dequant, e))
        .or_else(|| dequant_k::entry(dtype).map(|e| (Kernel::DequantK, e)))
}

fn entry(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::Q4_0 => "dequant_q4_0",
        DType::Q4_1 => "dequant_q4_1",
        DType::Q5_0 => "dequant_q5_0",
        DType::Q5_1 => "dequant_q5_1",
        DType::Q8_0 => "dequant_q8_0",
        DType::IQ4_NL => "dequant_iq4_nl",
        _ => return None,
    })
}

/// The quantized tensor decoded to f32, on the same device. Errors: a dtype without a decoder
/// ([`Error::UnsupportedConversion`]), rows that are not whole blocks
/// ([`Error::PartialBlock`]), bytes that disagree with the shape ([`Error::TensorBytes`]).
pub fn to_f32(t: &Tensor) -> Result<Tensor> {
    dequantize(t, DType::F32)
}

/// Like [`to_f32`], but f16 where the device can write f16: on the CPU, and on a GPU with the
/// shader-f16 feature; elsewhere the result is f32, so check its dtype. Each value is computed
/// in f32 exactly as [`to_f32`] computes it, then rounded once to f16 (to nearest even on the
/// CPU and on lavapipe; WGSL lets other GPUs pick either neighbour, and leaves values beyond
/// f16's range, which only extreme scales produce, undefined where the CPU gives infinity).
pub fn to_f16_or_f32(t: &Tensor) -> Result<Tensor> {
    let f16 = match t.storage() {
        Storage::Cpu(_) => true,
        Storage::Gpu(g) => g.gpu().has_shader_f16(),
    };
    dequantize(t, if f16 { DType::F16 } else { DType::F32 })
}

/// Decode `t` to `out` (F32 or F16) on its device.
fn dequantize(t: &Tensor, out: DType) -> Result<Tensor> {
    let Some((kernel, entry)) = kernel(t.dtype()) else {
        return Err(Error::UnsupportedConversion {
            tensor: t.name().to_string(),
            dtype: t.dtype().to_string(),
        });
    };
    t.check_layout()?;
    let storage = match t.storage() {
        Storage::Cpu(bytes) => Storage::Cpu(cpu_bytes(t.dtype(), bytes, out)),
        Storage::Gpu(g) => Storage::Gpu(match kernel {
            Kernel::DequantK => dequant_k::gpu_dequant(t, g, entry, out)?,
            _ => gpu_dequant(t, g, entry, out)?,
        }),
    };
    Ok(Tensor::new(
        t.name().to_string(),
        out,
        t.shape().clone(),
        storage,
    ))
}

/// The CPU twin's output as little-endian `out` (F32 or F16) bytes, decoded a few blocks at a
/// time so no second copy of the whole tensor is made.
fn cpu_bytes(dtype: DType, bytes: &[u8], out: DType) -> Vec<u8> {
    let block_bytes = dtype.block_bytes() as usize;
    let elems = bytes.len() / block_bytes * dtype.block_elems() as usize;
    let mut y = Vec::with_capacity(elems * out.block_bytes() as usize);
    for chunk in bytes.chunks(64 * block_bytes) {
        let values = cpu::to_f32(dtype, chunk);
        if out == DType::F16 {
            y.extend(
                values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes()),
            );
        } else {
            y.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        }
    }
    y
}

/// The pipeline variant that writes `out` (F32 or F16).
pub(crate) fn variant(out: DType) -> Variant {
    if out == DType::F16 {
        Variant::F16
    } else {
        Variant::F32
    }
}

/// The launcher of `dequant.wgsl`: one dispatch per overlap of an input and an output page,
/// writing `out` (F32, or F16 on a device with shader-f16).
fn gpu_dequant(
    t: &Tensor,
    src: &GpuStorage,
    entry: &'static str,
    out: DType,
) -> Result<GpuStorage> {
    check_page_bytes(t, src)?;
    let key = PipelineKey::new(Kernel::Dequant, entry)
        .variant(variant(out))
        .with("WG", f64::from(GRID.workgroup));
    paged::map_elements(t, src, &key, out, GRID, |p| Params {
        count: p.count,
        in_offset: p.in_offset,
        out_offset: p.out_offset,
        _pad: 0,
    })
}

/// The dequant kernels address bytes of an input page with u32.
pub(crate) fn check_page_bytes(t: &Tensor, src: &GpuStorage) -> Result<()> {
    if src.page_bytes() > u64::from(u32::MAX) {
        return Err(Error::DeviceLimit {
            tensor: t.name().to_string(),
            bytes: t.byte_len(),
            reason: format!(
                "pages of {} bytes are too large for 32-bit byte offsets",
                src.page_bytes()
            ),
        });
    }
    Ok(())
}

/// The CPU twin: ggml's `dequantize_row_*`, one short function per type, per block from the
/// little-endian bytes.
pub mod cpu {
    use mlmf_core::DType;

    /// Decode the whole blocks of `x` (bytes of any type [`super::supports`]) to f32. A trailing
    /// partial block is ignored; an unsupported dtype decodes to nothing.
    pub fn to_f32(dtype: DType, x: &[u8]) -> Vec<f32> {
        let blocks = x.len() / dtype.block_bytes() as usize;
        let mut y = vec![0.0; blocks * dtype.block_elems() as usize];
        if !dequantize_row(dtype, x, &mut y) {
            y.clear();
        }
        y
    }

    /// Decode the blocks of `x` into `y`, one block of `y` per block of `x`, stopping at the
    /// shorter. `false` when `dtype` has no decoder.
    pub fn dequantize_row(dtype: DType, x: &[u8], y: &mut [f32]) -> bool {
        match dtype {
            DType::Q4_0 => q4_0(x, y),
            DType::Q4_1 => q4_1(x, y),
            DType::Q5_0 => q5_0(x, y),
            DType::Q5_1 => q5_1(x, y),
            DType::Q8_0 => q8_0(x, y),
            DType::IQ4_NL => iq4_nl(x, y),
            _ => return crate::ops::dequant_k::cpu::dequantize_row(dtype, x, y),
        }
        true
    }

    const QK: usize = 32;

    /// The f16 at byte `i` of a block, widened exactly.
    pub(crate) fn f16(b: &[u8], i: usize) -> f32 {
        half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
    }

    /// The blocks of `dtype` in `x` paired with their elements in `y`.
    pub(crate) fn blocks<'a>(
        dtype: DType,
        x: &'a [u8],
        y: &'a mut [f32],
    ) -> impl Iterator<Item = (&'a [u8], &'a mut [f32])> {
        x.chunks_exact(dtype.block_bytes() as usize)
            .zip(y.chunks_exact_mut(dtype.block_elems() as usize))
    }

    /// `kvalues_iq4nl` (ggml-common.h): the non-linear grid of IQ4_NL and IQ4_XS.
    pub(crate) const KVALUES_IQ4NL: [i8; 16] = [
        -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
    ];

    /// Q4_0: d (f16), qs[16]. y = d * (q - 8).
    fn q4_0(x: &[u8], y: &mut [f32]) {
        for (b, y) in blocks(DType::Q4_0, x, y) {
            let d = f16(b, 0);
            for j in 0..QK / 2 {
                let x0 = i32::from(b[2 + j] & 0x0f) - 8;
                let x1 = i32::from(b[2 + j] >> 4) - 8;
                y[j] = d * x0 as f32;
                y[j + QK / 2] = d * x1 as f32;
            }
        }
    }

    /// Q4_1: d, m (f16), qs[16]. y = d * q + m.
    fn q4_1(x: &[u8], y: &mut [f32]) {
        for (b, y) in blocks(DType::Q4_1, x, y) {
            let d = f16(b, 0);
            let m = f16(b, 2);
            for j in 0..QK / 2 {
                let x0 = b[4 + j] & 0x0f;
                let x1 = b[4 + j] >> 4;
                y[j] = d * f32::from(x0) + m;
                y[j + QK / 2] = d * f32::from(x1) + m;
            }
        }
    }

    /// Q5_0: d (f16), qh (u32, bit j = fifth bit of element j), qs[16]. y = d * (q - 16).
    fn q5_0(x: &[u8], y: &mut [f32]) {
        for (b, y) in blocks(DType::Q5_0, x, y) {
            let d = f16(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..QK / 2 {
                let xh_0 = ((qh >> j) << 4) & 0x10;
                let xh_1 = (qh >> (j + 12)) & 0x10;
                let x0 = (u32::from(b[6 + j] & 0x0f) | xh_0) as i32 - 16;
                let x1 = (u32::from(b[6 + j] >> 4) | xh_1) as i32 - 16;
                y[j] = d * x0 as f32;
                y[j + QK / 2] = d * x1 as f32;
            }
        }
    }

    /// Q5_1: d, m (f16), qh (u32), qs[16]. y = d * q + m.
    fn q5_1(x: &[u8], y: &mut [f32]) {
        for (b, y) in blocks(DType::Q5_1, x, y) {
            let d = f16(b, 0);
            let m = f16(b, 2);
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            for j in 0..QK / 2 {
                let xh_0 = ((qh >> j) << 4) & 0x10;
                let xh_1 = (qh >> (j + 12)) & 0x10;
                let x0 = u32::from(b[8 + j] & 0x0f) | xh_0;
                let x1 = u32::from(b[8 + j] >> 4) | xh_1;
                y[j] = d * x0 as f32 + m;
                y[j + QK / 2] = d * x1 as f32 + m;
            }
        }
    }

    /// Q8_0: d (f16), qs[32] (int8). y = q * d.
    fn q8_0(x: &[u8], y: &mut [f32]) {
        for (b, y) in blocks(DType::Q8_0, x, y) {
            let d = f16(b, 0);
            for j in 0..QK {
                y[j] = f32::from(b[2 + j] as i8) * d;
            }
        }
    }

    /// IQ4_NL: d (f16), qs[16] indexing the non-linear grid. y = d * kvalues[q].
    fn iq4_nl(x: &[u8], y: &mut [f32]) {
        for (b, y) in blocks(DType::IQ4_NL, x, y) {
            let d = f16(b, 0);
            for j in 0..QK / 2 {
                y[j] = d * f32::from(KVALUES_IQ4NL[usize::from(b[2 + j] & 0x0f)]);
                y[j + QK / 2] = d * f32::from(KVALUES_IQ4NL[usize::from(b[2 + j] >> 4)]);
            }
        }
    }
}

/// Helpers shared by the tests of both dequant families.
#[cfg(test)]
pub(crate) mod testing {
    use crate::device::Device;
    use crate::tensor::{Storage, Tensor};
    use mlmf_core::DType;
    use mlmf_core::ModelFile;
    use mlmf_core::Shape;

    /// Byte offsets of the f16 fields in a block of `dtype` (ggml-common.h).
    pub(crate) fn f16_fields(dtype: DType) -> &'static [usize] {
        match dtype {
            DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
            DType::Q2_K => &[80, 82],
            DType::Q3_K => &[108],
            DType::Q6_K => &[208],
            _ => &[0],
        }
    }

    /// `blocks` blocks of deterministic pseudo-random bytes (xorshift), with every f16 field
    /// made finite (so no NaN or infinity scale; subnormal and negative scales stay).
    pub(crate) fn random_blocks(dtype: DType, blocks: usize, seed: u64) -> Vec<u8> {
        let size = dtype.block_bytes() as usize;
        let mut x = seed | 1;
        let mut bytes: Vec<u8> = (0..blocks * size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for block in bytes.chunks_exact_mut(size) {
            for &at in f16_fields(dtype) {
                // Exponent 31 is infinity or NaN: clear its top bit.
                if block[at + 1] & 0x7c == 0x7c {
                    block[at + 1] &= !0x40;
                }
            }
        }
        bytes
    }

    /// Like [`random_blocks`] with every f16 scale below 2 in magnitude, so every decoded value
    /// lies well inside f16's range.
    pub(crate) fn moderate_blocks(dtype: DType, blocks: usize, seed: u64) -> Vec<u8> {
        let mut bytes = random_blocks(dtype, blocks, seed);
        for block in bytes.chunks_exact_mut(dtype.block_bytes() as usize) {
            for &at in f16_fields(dtype) {
                block[at + 1] &= !0x40;
            }
        }
        bytes
    }

    pub(crate) fn tensor(dtype: DType, dims: Vec<usize>, bytes: Vec<u8>) -> Tensor {
        Tensor::new(
            dtype.name().to_string(),
            dtype,
            Shape::new(dims).unwrap(),
            Storage::Cpu(bytes),
        )
    }

    pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Assert that `got` equals `want` bit for bit (any NaN equals any NaN).
    pub(crate) fn assert_same(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{what}: element {i}: got {g:e} ({:#010x}), want {w:e} ({:#010x})",
                g.to_bits(),
                w.to_bits()
            );
        }
    }

    /// `<T>.quant` bytes and `<T>.dequant` values of the quantization oracle (gguf-py 0.19.0).
    pub(crate) fn fixture(dtype: DType) -> (Vec<u8>, Vec<f32>) {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/quant/expected.safetensors"
        );
        let file = ModelFile::open(path).unwrap();
        let get = |suffix: &str| {
            let info = file.tensor(&format!("{dtype}.{suffix}")).unwrap();
            file.bytes(info).to_vec()
        };
        (get("quant"), f32s(&get("dequant")))
    }

    /// Decode `bytes` of `dtype` with shape `dims` on `device` with [`super::to_f32`].
    pub(crate) fn decode(
        device: &Device,
        dtype: DType,
        dims: Vec<usize>,
        bytes: Vec<u8>,
    ) -> Vec<f32> {
        let t = tensor(dtype, dims, bytes).to_device(device).unwrap();
        let out = super::to_f32(&t).unwrap();
        assert_eq!(out.dtype(), DType::F32);
        assert_eq!(out.shape(), t.shape());
        f32s(&out.to_bytes().unwrap())
    }

    /// Both devices decode the oracle's bytes of `dtype` exactly as gguf-py does.
    pub(crate) fn check_fixture(gpu: &Device, dtype: DType) {
        let (bytes, want) = fixture(dtype);
        let cpu = decode(&Device::Cpu, dtype, vec![8, 1024], bytes.clone());
        assert_same(&format!("{dtype} cpu vs gguf-py"), &cpu, &want);
        let got = decode(gpu, dtype, vec![8, 1024], bytes);
        assert_same(&format!("{dtype} gpu vs gguf-py"), &got, &want);
    }

    /// GPU and CPU twin agree on random blocks of `dtype` shaped `dims`.
    pub(crate) fn check_random(gpu: &Device, dtype: DType, dims: Vec<usize>, seed: u64) {
        let elems: usize = dims.iter().product();
        let blocks = elems / dtype.block_elems() as usize;
        let bytes = random_blocks(dtype, blocks, seed);
        let want = super::cpu::to_f32(dtype, &bytes);
        assert_eq!(want.len(), elems);
        let cpu = decode(&Device::Cpu, dtype, dims.clone(), bytes.clone());
        assert_same(&format!("{dtype} {dims:?} cpu op vs twin"), &cpu, &want);
        let got = decode(gpu, dtype, dims.clone(), bytes);
        assert_same(&format!("{dtype} {dims:?} gpu vs cpu twin"), &got, &want);
    }

    /// f16 output: [`super::to_f16_or_f32`] on the GPU writes f16 where the adapter has
    /// shader-f16 (and f32 where it has not), on the CPU always f16; either way each value is
    /// `want`, the f32 decoding, rounded to nearest even (lavapipe rounds as the CPU does).
    pub(crate) fn check_f16(
        gpu: &Device,
        dtype: DType,
        dims: Vec<usize>,
        bytes: Vec<u8>,
        want: &[f32],
    ) {
        let f16s = |b: &[u8]| -> Vec<u16> {
            b.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        };
        let rounded: Vec<u16> = want
            .iter()
            .map(|v| half::f16::from_f32(*v).to_bits())
            .collect();
        for device in [&Device::Cpu, gpu] {
            let t = tensor(dtype, dims.clone(), bytes.clone())
                .to_device(device)
                .unwrap();
            let out = super::to_f16_or_f32(&t).unwrap();
            let has_f16 = match device {
                Device::Cpu => true,
                Device::Gpu(g) => g.has_shader_f16(),
            };
            let bytes = out.to_bytes().unwrap();
            if has_f16 {
                assert_eq!(out.dtype(), DType::F16);
                let got = f16s(&bytes);
                assert_eq!(got.len(), rounded.len());
                for (i, (g, w)) in got.iter().zip(&rounded).enumerate() {
                    assert_eq!(
                        g,
                        w,
                        "{dtype} f16 on {}: element {i} of {}",
                        device.describe(),
                        want[i]
                    );
                }
            } else {
                assert_eq!(out.dtype(), DType::F32);
                assert_same(&format!("{dtype} f32 fallback"), &f32s(&bytes), want);
            }
        }
    }

    /// A GPU whose pages hold `page` bytes, so small tensors span several pages.
    pub(crate) fn paged_gpu(page: u64) -> Device {
        Device::gpu_with(&crate::device::GpuOptions {
            max_page_bytes: Some(page),
            staging_bytes: 16384,
        })
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::device::Device;

    const TYPES: [DType; 6] = [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::IQ4_NL,
    ];

    #[test]
    fn fixtures_decode_exactly_as_gguf_py() {
        let gpu = Device::gpu().unwrap();
        // The shared oracle has no IQ4_NL tensor: tests/dequant_files.rs checks it against
        // gguf-py with tests/data/iq4_gguf_py.gguf, and the twin below against the GPU.
        for dtype in &TYPES[..5] {
            check_fixture(&gpu, *dtype);
        }
    }

    #[test]
    fn gpu_matches_cpu_twin_on_random_blocks() {
        let gpu = Device::gpu().unwrap();
        for (k, dtype) in TYPES.into_iter().enumerate() {
            // Element counts that are not multiples of the workgroup size (64).
            for (n, dims) in [vec![32], vec![7, 160], vec![3, 5, 96]]
                .into_iter()
                .enumerate()
            {
                check_random(&gpu, dtype, dims, 1 + 10 * k as u64 + n as u64);
            }
        }
    }

    #[test]
    fn tensors_spanning_pages() {
        // 4096- and 4352-byte pages: input pages end at whole blocks, output pages elsewhere.
        for page in [4096, 4352] {
            let gpu = paged_gpu(page);
            for (k, dtype) in TYPES.into_iter().enumerate() {
                check_random(&gpu, dtype, vec![301, 32], 77 + k as u64);
            }
        }
        // One long row lets output pages end inside a row: 4112-byte pages hold 1028 f32 (the
        // launcher splits them at multiples of 16 bytes), so dispatches start and end inside a
        // block.
        let gpu = paged_gpu(4112);
        for (k, dtype) in TYPES.into_iter().enumerate() {
            check_random(&gpu, dtype, vec![1, 301 * 32], 97 + k as u64);
        }
    }

    #[test]
    fn every_q8_0_quant_and_f16_scale_pattern() {
        // Each of the 256 quant bytes under scales of every f16 class (zero, subnormal, normal,
        // negative, largest finite).
        let gpu = Device::gpu().unwrap();
        let mut bytes = Vec::new();
        for d in [
            0x0000u16, 0x8000, 0x0001, 0x03ff, 0x0400, 0x3c00, 0xb555, 0x7bff,
        ] {
            for q in 0..8 {
                bytes.extend(d.to_le_bytes());
                bytes.extend((0..32).map(|j| (q * 32 + j) as u8));
            }
        }
        let want = cpu::to_f32(DType::Q8_0, &bytes);
        let got = decode(&gpu, DType::Q8_0, vec![64, 32], bytes);
        assert_same("Q8_0 patterns", &got, &want);
    }

    #[test]
    fn f16_output_is_the_f32_decoding_rounded() {
        let gpu = Device::gpu().unwrap();
        // lavapipe has shader-f16, so this suite runs the f16 kernels; elsewhere the fallback.
        for (k, dtype) in TYPES.into_iter().enumerate() {
            let bytes = moderate_blocks(dtype, 35, 300 + k as u64);
            let want = cpu::to_f32(dtype, &bytes);
            check_f16(&gpu, dtype, vec![7, 160], bytes, &want);
        }
        for dtype in &TYPES[..5] {
            let (bytes, want) = fixture(*dtype);
            check_f16(&gpu, *dtype, vec![8, 1024], bytes, &want);
        }
        let paged = paged_gpu(4352);
        let bytes = moderate_blocks(DType::Q5_1, 301, 9);
        let want = cpu::to_f32(DType::Q5_1, &bytes);
        check_f16(&paged, DType::Q5_1, vec![301, 32], bytes, &want);
        // 2056 f16 per 4112-byte page: pieces start inside a block.
        let paged = paged_gpu(4112);
        let bytes = moderate_blocks(DType::Q4_0, 301, 11);
        let want = cpu::to_f32(DType::Q4_0, &bytes);
        check_f16(&paged, DType::Q4_0, vec![1, 301 * 32], bytes, &want);
    }

    #[test]
    fn bad_layouts_are_typed_errors() {
        for device in [Device::Cpu, Device::gpu().unwrap()] {
            // 17 bytes for one Q4_0 block of 18.
            let t = tensor(DType::Q4_0, vec![32], vec![0; 17])
                .to_device(&device)
                .unwrap();
            assert!(matches!(
                to_f32(&t),
                Err(Error::TensorBytes {
                    expected: 18,
                    found: 17,
                    ..
                })
            ));
            // Rows of 48 elements: one and a half blocks.
            let t = tensor(DType::Q8_0, vec![2, 48], vec![0; 102])
                .to_device(&device)
                .unwrap();
            assert!(matches!(
                to_f32(&t),
                Err(Error::PartialBlock {
                    row_len: 48,
                    block_elems: 32,
                    ..
                })
            ));
            // A scalar is a row of one element.
            let t = tensor(DType::Q4_1, vec![], vec![0; 20])
                .to_device(&device)
                .unwrap();
            assert!(matches!(to_f32(&t), Err(Error::PartialBlock { .. })));
        }
    }

    #[test]
    fn unsupported_types_are_refused() {
        let t = tensor(DType::Q8_1, vec![32], vec![0; 36]);
        assert!(matches!(
            to_f32(&t),
            Err(Error::UnsupportedConversion { .. })
        ));
        assert!(cpu::to_f32(DType::Q8_1, &[0; 36]).is_empty());
    }
}
