//! Dequantization of GGML block types to f32, straight from the block bytes as GGUF stores them.
//!
//! One public op, [`to_f32`], for every block type with a group decoder (the `group` rows of
//! `quant_decode::DECODERS`: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, MXFP4 in blocks of 32
//! elements, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS, TQ1_0, TQ2_0 in super-blocks of 256), and
//! [`to_f16_or_f32`], which writes f16 where the device can (the family's `Variant::F16`, on GPUs
//! with shader-f16) and falls back to f32 where it cannot. F16 and BF16 are
//! [`convert`](super::convert)'s.
//!
//! GPU: `shaders/dequant.wgsl`, one entry point specialised per type, one invocation per 32
//! elements. CPU twin: the type's twin in `quant_decode`. GPU, twin and gguf-py agree bit for
//! bit (see there).

use super::launch::check_page_bytes;
use super::paged;
use super::quant_decode::{self, Decoder};
use crate::device::kernels::{Kernel, PipelineKey, Variant};
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};
use mlmf_core::DType;
use mlmf_core::{Error, Result};

/// How the kernel covers its elements: one group of 32 per invocation (`GROUP` in
/// `shaders/quant_decode.wgsl`: a legacy block or an eighth of a K-quant super-block, whose
/// scales are decoded once), and output pages split at 16 bytes so the kernel stores vec4s.
const GRID: paged::Grid = paged::Grid {
    workgroup: 64,
    elems_per_invocation: 32,
    out_align: 16,
};

/// Whether [`to_f32`] decodes `dtype`.
pub fn supports(dtype: DType) -> bool {
    decoder(dtype).is_some()
}

/// The decoder of a block type this family takes.
fn decoder(dtype: DType) -> Option<&'static Decoder> {
    quant_decode::decoder(dtype).filter(|d| d.group)
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
    let Some(decoder) = decoder(t.dtype()) else {
        return Err(Error::UnsupportedConversion {
            tensor: t.name().to_string(),
            dtype: t.dtype().to_string(),
        });
    };
    t.check_layout()?;
    let storage = match t.storage() {
        Storage::Cpu(bytes) => Storage::Cpu(cpu_bytes(t.dtype(), bytes, out)),
        Storage::Gpu(g) => Storage::Gpu(gpu_dequant(t, g, decoder, out)?),
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
        let values = quant_decode::to_f32(dtype, chunk);
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

/// The launcher of `dequant.wgsl`: one dispatch per overlap of an input and an output page,
/// writing `out` (F32, or F16 on a device with shader-f16).
fn gpu_dequant(t: &Tensor, src: &GpuStorage, decoder: &Decoder, out: DType) -> Result<GpuStorage> {
    check_page_bytes(t, src)?;
    let dtype = t.dtype();
    let key = decoder
        .specialise(PipelineKey::new(Kernel::Dequant, "dequant"))
        .variant(if out == DType::F16 {
            Variant::F16
        } else {
            Variant::F32
        })
        .with("WG", f64::from(GRID.workgroup))
        .with("BLOCK_BYTES", dtype.block_bytes() as f64)
        .with("BLOCK_ELEMS", dtype.block_elems() as f64);
    paged::map_elements(t, src, &key, out, GRID)
}

/// Helpers shared by the tests of the families that decode weight blocks.
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
            DType::TQ1_0 => &[52],
            DType::TQ2_0 => &[64],
            DType::MXFP4 => &[],
            // IQ1_M's d is spread over its scales (see `finite_iq1_m`).
            DType::IQ1_M => &[],
            _ => &[0],
        }
    }

    /// Byte offsets of the E8M0 scale fields in a block of `dtype` (ggml-common.h). Every byte
    /// is a finite scale (ggml has no NaN E8M0), though above 252 some values overflow to
    /// infinity.
    pub(crate) fn e8m0_fields(dtype: DType) -> &'static [usize] {
        match dtype {
            DType::MXFP4 => &[0],
            _ => &[],
        }
    }

    /// IQ1_M's f16 d is the top nibbles of its four u16 scales (bytes 48..56): its high byte is
    /// the top nibbles of bytes 53 and 55, so its exponent's top bit is bit 6 of byte 55. Clear
    /// that bit where the exponent is 31 (infinity or NaN), or always when `moderate`.
    fn finite_iq1_m(block: &mut [u8], moderate: bool) {
        let high = (block[53] >> 4) | (block[55] & 0xf0);
        if moderate || high & 0x7c == 0x7c {
            block[55] &= !0x40;
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
            if dtype == DType::IQ1_M {
                finite_iq1_m(block, false);
            }
        }
        bytes
    }

    /// Like [`random_blocks`] with every f16 scale below 2 in magnitude and every E8M0 scale
    /// in 2^-16 .. 2^12, so every decoded value lies well inside f16's range (and sums of
    /// products inside f32's).
    pub(crate) fn moderate_blocks(dtype: DType, blocks: usize, seed: u64) -> Vec<u8> {
        let mut bytes = random_blocks(dtype, blocks, seed);
        for block in bytes.chunks_exact_mut(dtype.block_bytes() as usize) {
            for &at in f16_fields(dtype) {
                block[at + 1] &= !0x40;
            }
            for &at in e8m0_fields(dtype) {
                block[at] = 112 + block[at] % 29;
            }

            if dtype == DType::IQ1_M {
                finite_iq1_m(block, true);
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
        let want = super::quant_decode::to_f32(dtype, &bytes);
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
            ..Default::default()
        })
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::device::Device;
    use quant_decode::to_f32 as twin;

    /// The types this family takes in blocks of `elems` (32, or 256 for K-quant super-blocks),
    /// in the decoder table's order.
    fn types(elems: u64) -> Vec<DType> {
        let rows = quant_decode::DECODERS.iter().filter(|d| d.group);
        rows.map(|d| d.dtype)
            .filter(|d| d.block_elems() == elems)
            .collect()
    }

    /// The types of the gguf-py oracle (`shared/fixtures/quant`), which has no i-quant, MXFP4,
    /// TQ1_0 or TQ2_0 tensor: tests/dequant_files.rs checks IQ4_NL and IQ4_XS against gguf-py
    /// with tests/data/iq4_gguf_py.gguf, tests/block_types.rs the others, and the tests here
    /// check their twins against the GPU.
    fn oracle_types() -> impl Iterator<Item = DType> {
        let mut all = types(32);
        all.extend(types(256));
        all.into_iter().filter(|d| {
            !d.name().starts_with("IQ") && !matches!(d, DType::MXFP4 | DType::TQ1_0 | DType::TQ2_0)
        })
    }

    #[test]
    fn fixtures_decode_exactly_as_gguf_py() {
        let gpu = Device::gpu().unwrap();
        for dtype in oracle_types() {
            check_fixture(&gpu, dtype);
        }
    }

    #[test]
    fn gpu_matches_cpu_twin_on_random_blocks() {
        let gpu = Device::gpu().unwrap();
        for (k, dtype) in types(32).into_iter().enumerate() {
            // Element counts that are not multiples of the workgroup size (64).
            for (n, dims) in [vec![32], vec![7, 160], vec![3, 5, 96]]
                .into_iter()
                .enumerate()
            {
                check_random(&gpu, dtype, dims, 1 + 10 * k as u64 + n as u64);
            }
        }
        for (k, dtype) in types(256).into_iter().enumerate() {
            for (n, dims) in [vec![256], vec![3, 768], vec![5, 1, 512]]
                .into_iter()
                .enumerate()
            {
                check_random(&gpu, dtype, dims, 101 + 10 * k as u64 + n as u64);
            }
        }
    }

    #[test]
    fn tensors_spanning_pages() {
        // 4096- and 4352-byte pages: input pages end at whole blocks, output pages elsewhere
        // (with 4352-byte pages an output page holds 1088 elements, 4.25 super-blocks, so
        // super-blocks straddle output pages).
        for page in [4096, 4352] {
            let gpu = paged_gpu(page);
            for (k, dtype) in types(32).into_iter().enumerate() {
                check_random(&gpu, dtype, vec![301, 32], 77 + k as u64);
            }
            for (k, dtype) in types(256).into_iter().enumerate() {
                check_random(&gpu, dtype, vec![19, 512], 177 + k as u64);
            }
        }
        // One long row lets output pages end inside a row: 4112-byte pages hold 1028 f32 (the
        // launcher splits them at multiples of 16 bytes), so dispatches start and end inside a
        // block or a 32-element group.
        let gpu = paged_gpu(4112);
        for (k, dtype) in types(32).into_iter().enumerate() {
            check_random(&gpu, dtype, vec![1, 301 * 32], 97 + k as u64);
        }
        for (k, dtype) in types(256).into_iter().enumerate() {
            check_random(&gpu, dtype, vec![1, 19 * 512], 197 + k as u64);
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
        let want = twin(DType::Q8_0, &bytes);
        let got = decode(&gpu, DType::Q8_0, vec![64, 32], bytes);
        assert_same("Q8_0 patterns", &got, &want);
    }

    #[test]
    fn every_mxfp4_code_and_e8m0_scale() {
        // Each of the 16 codes, low and high nibble, under each of the 256 E8M0 scales: the
        // subnormal scales (0, 1) and the products that overflow (253..=255) included.
        let gpu = Device::gpu().unwrap();
        let mut bytes = Vec::new();
        for e in 0..=255u8 {
            bytes.push(e);
            bytes.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        }
        let want = twin(DType::MXFP4, &bytes);
        assert!(want.iter().any(|v| v.is_infinite()));
        assert!(want.iter().any(|v| v.is_subnormal()));
        let got = decode(&gpu, DType::MXFP4, vec![256, 32], bytes);
        assert_same("MXFP4 patterns", &got, &want);
    }

    #[test]
    fn f16_output_is_the_f32_decoding_rounded() {
        let gpu = Device::gpu().unwrap();
        // lavapipe has shader-f16, so this suite runs the f16 kernels; elsewhere the fallback.
        for (k, dtype) in types(32).into_iter().enumerate() {
            let bytes = moderate_blocks(dtype, 35, 300 + k as u64);
            let want = twin(dtype, &bytes);
            check_f16(&gpu, dtype, vec![7, 160], bytes, &want);
        }
        for (k, dtype) in types(256).into_iter().enumerate() {
            let bytes = moderate_blocks(dtype, 9, 400 + k as u64);
            let want = twin(dtype, &bytes);
            check_f16(&gpu, dtype, vec![3, 768], bytes, &want);
        }
        for dtype in oracle_types() {
            let (bytes, want) = fixture(dtype);
            check_f16(&gpu, dtype, vec![8, 1024], bytes, &want);
        }
        let paged = paged_gpu(4352);
        let bytes = moderate_blocks(DType::Q5_1, 301, 9);
        let want = twin(DType::Q5_1, &bytes);
        check_f16(&paged, DType::Q5_1, vec![301, 32], bytes, &want);
        let bytes = moderate_blocks(DType::Q4_K, 38, 11);
        let want = twin(DType::Q4_K, &bytes);
        check_f16(&paged, DType::Q4_K, vec![19, 512], bytes, &want);
        // 2056 f16 per 4112-byte page: pieces start inside a block or a group.
        let paged = paged_gpu(4112);
        let bytes = moderate_blocks(DType::Q4_0, 301, 11);
        let want = twin(DType::Q4_0, &bytes);
        check_f16(&paged, DType::Q4_0, vec![1, 301 * 32], bytes, &want);
        let bytes = moderate_blocks(DType::Q6_K, 19, 10);
        let want = twin(DType::Q6_K, &bytes);
        check_f16(&paged, DType::Q6_K, vec![1, 19 * 256], bytes, &want);
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
        assert!(twin(DType::Q8_1, &[0; 36]).is_empty());
    }

    #[test]
    fn rows_of_partial_super_blocks_are_refused() {
        let t = tensor(DType::Q4_K, vec![4, 128], vec![0; 2 * 144]);
        assert!(matches!(
            to_f32(&t),
            Err(Error::PartialBlock {
                row_len: 128,
                block_elems: 256,
                ..
            })
        ));
    }
}
