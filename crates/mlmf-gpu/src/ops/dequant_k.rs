//! Dequantization of GGML's K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and IQ4_XS: super-blocks of
//! 256 elements with packed sub-block scales. The public op is
//! [`dequant::to_f32`], which routes these types here.
//!
//! GPU: `shaders/dequant_k.wgsl`, one entry point per type, one invocation per 32 elements. CPU
//! twin: `cpu`, ggml's `dequantize_row_*` (ggml-quants.c) per block from the bytes. Both agree
//! bit for bit with each other and with gguf-py.

use super::{dequant, paged};
use crate::device::kernels::{Kernel, PipelineKey};
use crate::storage::GpuStorage;
use crate::tensor::Tensor;
use mlmf_core::DType;
use mlmf_core::Result;

use super::dequant::GRID;

/// Uniform parameters of `dequant_k.wgsl`, fields in WGSL order.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    in_offset: u32,
    out_offset: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// The entry point of `dequant_k.wgsl` that decodes `dtype`.
pub(crate) fn entry(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::Q2_K => "dequant_q2_k",
        DType::Q3_K => "dequant_q3_k",
        DType::Q4_K => "dequant_q4_k",
        DType::Q5_K => "dequant_q5_k",
        DType::Q6_K => "dequant_q6_k",
        DType::IQ4_XS => "dequant_iq4_xs",
        _ => return None,
    })
}

/// The launcher of `dequant_k.wgsl`: one dispatch per overlap of an input and an output page,
/// writing `out` (F32, or F16 on a device with shader-f16).
pub(crate) fn gpu_dequant(
    t: &Tensor,
    src: &GpuStorage,
    entry: &'static str,
    out: DType,
) -> Result<GpuStorage> {
    dequant::check_page_bytes(t, src)?;
    let key = PipelineKey::new(Kernel::DequantK, entry)
        .variant(dequant::variant(out))
        .with("WG", f64::from(GRID.workgroup));
    paged::map_elements(t, src, &key, out, GRID, |p| Params {
        count: p.count,
        in_offset: p.in_offset,
        out_offset: p.out_offset,
        _pad: 0,
    })
}

/// The CPU twin: ggml's `dequantize_row_*`, one short function per type.
pub mod cpu {
    use crate::ops::dequant::cpu::{blocks, f16, KVALUES_IQ4NL};
    use mlmf_core::DType;

    const QK_K: usize = 256;

    /// Decode the blocks of `x` into `y`, one block of `y` per block of `x`, stopping at the
    /// shorter. `false` when `dtype` is not a type of this family.
    pub fn dequantize_row(dtype: DType, x: &[u8], y: &mut [f32]) -> bool {
        match dtype {
            DType::Q2_K => q2_k(x, y),
            DType::Q3_K => q3_k(x, y),
            DType::Q4_K => q4_k(x, y),
            DType::Q5_K => q5_k(x, y),
            DType::Q6_K => q6_k(x, y),
            DType::IQ4_XS => iq4_xs(x, y),
            _ => return false,
        }
        true
    }

    /// Scale and min of sub-block `j` from the 12 packed 6-bit values `q` (get_scale_min_k4).
    fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }

    /// Q2_K: scales[16] (scale | min << 4), qs[64] (2-bit quants), d, dmin (f16).
    /// y = (d * sc) * q - (dmin * m).
    fn q2_k(x: &[u8], y: &mut [f32]) {
        for (b, y) in blocks(DType::Q2_K, x, y) {
            let (scales, qs) = (&b[0..16], &b[16..80]);
            let d = f16(b, 80);
            let min = f16(b, 82);
            let mut out = 0;
            let mut is = 0;
            for n in (0..QK_K).step_by(128) {
                let q = &qs[n / 4..n / 4 + 32];
                for shift in [0, 2, 4, 6] {
                    for half in [0, 16] {
                        let sc = scales[is];
                        is += 1;
                        let dl = d * f32::from(sc & 0x0f);
                        let ml = min * f32::from(sc >> 4);
                        for l in 0..16 {
                            y[out] = dl * f32::from((q[l + half] >> shift) & 3) - ml;
                            out += 1;
                        }
                    }
                }
            }
        }
    }

    /// Q3_K: hmask[32] (high bits), qs[64] (low 2 bits), scales[12] (16 packed 6-bit scales),
    /// d (f16). y = (d * (sc - 32)) * q, q in -4..3 (a clear high bit subtracts 4).
    fn q3_k(x: &[u8], y: &mut [f32]) {
        for (b, y) in blocks(DType::Q3_K, x, y) {
            let (hm, qs, packed) = (&b[0..32], &b[32..96], &b[96..108]);
            let d_all = f16(b, 108);
            // Scale s: low 4 bits in nibble s / 8 of byte s % 8, high 2 bits at bit 2 * (s / 4)
            // of byte 8 + s % 4 (the kmask1/kmask2 shuffle of dequantize_row_q3_K).
            let mut scales = [0i32; 16];
            for (s, sc) in scales.iter_mut().enumerate() {
                let lo = (packed[s % 8] >> (4 * (s / 8))) & 0x0f;
                let hi = (packed[8 + s % 4] >> (2 * (s / 4))) & 3;
                *sc = i32::from(lo | (hi << 4));
            }
            let mut out = 0;
            let mut is = 0;
            let mut m = 1u8;
            for n in (0..QK_K).step_by(128) {
                let q = &qs[n / 4..n / 4 + 32];
                for shift in [0, 2, 4, 6] {
                    for half in [0, 16] {
                        let dl = d_all * (scales[is] - 32) as f32;
                        is += 1;
                        for l in 0..16 {
                            let low = i32::from((q[l + half] >> shift) & 3);
                            let high = if hm[l + half] & m != 0 { 0 } else { 4 };
                            y[out] = dl * (low - high) as f32;
                            out += 1;
                        }
                    }
                    m <<= 1;
                }
            }
        }
    }

    /// Q4_K: d, dmin (f16), scales[12] (8 packed 6-bit scales and mins), qs[128].
    /// y = (d * sc) * q - (dmin * m).
    fn q4_k(x: &[u8], y: &mut [f32]) {
        for (b, y) in blocks(DType::Q4_K, x, y) {
            let d = f16(b, 0);
            let min = f16(b, 2);
            let (scales, qs) = (&b[4..16], &b[16..144]);
            let mut out = 0;
            for (i, q) in qs.chunks_exact(32).enumerate() {
                for (k, shift) in [(0, 0), (1, 4)] {
                    let (sc, m) = scale_min_k4(2 * i + k, scales);
                    let d1 = d * f32::from(sc);
                    let m1 = min * f32::from(m);
                    for &ql in q {
                        y[out] = d1 * f32::from((ql >> shift) & 0x0f) - m1;
                        out += 1;
                    }
                }
            }
        }
    }

    /// Q5_K: d, dmin (f16), scales[12], qh[32] (fifth bits), qs[128].
    /// y = (d * sc) * q - (dmin * m).
    fn q5_k(x: &[u8], y: &mut [f32]) {
        for (b, y) in blocks(DType::Q5_K, x, y) {
            let d = f16(b, 0);
            let min = f16(b, 2);
            let (scales, qh, ql) = (&b[4..16], &b[16..48], &b[48..176]);
            let mut out = 0;
            let mut u = 1u8;
            for (i, q) in ql.chunks_exact(32).enumerate() {
                for (k, shift) in [(0, 0), (1, 4)] {
                    let (sc, m) = scale_min_k4(2 * i + k, scales);
                    let d1 = d * f32::from(sc);
                    let m1 = min * f32::from(m);
                    for l in 0..32 {
                        let high = if qh[l] & u != 0 { 16 } else { 0 };
                        y[out] = d1 * f32::from(((q[l] >> shift) & 0x0f) + high) - m1;
                        out += 1;
                    }
                    u <<= 1;
                }
            }
        }
    }

    /// Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d (f16).
    /// y = (d * sc) * (q - 32).
    fn q6_k(x: &[u8], y: &mut [f32]) {
        for (b, y) in blocks(DType::Q6_K, x, y) {
            let d = f16(b, 208);
            for n in 0..QK_K / 128 {
                let ql = &b[64 * n..64 * n + 64];
                let qh = &b[128 + 32 * n..128 + 32 * n + 32];
                let sc = &b[192 + 8 * n..192 + 8 * n + 8];
                let y = &mut y[128 * n..128 * n + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = i32::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
                    let q2 = i32::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[l] = d * f32::from(sc[is] as i8) * q1 as f32;
                    y[l + 32] = d * f32::from(sc[is + 2] as i8) * q2 as f32;
                    y[l + 64] = d * f32::from(sc[is + 4] as i8) * q3 as f32;
                    y[l + 96] = d * f32::from(sc[is + 6] as i8) * q4 as f32;
                }
            }
        }
    }

    /// IQ4_XS: d (f16), scales_h (u16), scales_l[4], qs[128] indexing the non-linear grid.
    /// y = (d * (ls - 32)) * kvalues[q].
    fn iq4_xs(x: &[u8], y: &mut [f32]) {
        for (b, y) in blocks(DType::IQ4_XS, x, y) {
            let d = f16(b, 0);
            let scales_h = u16::from_le_bytes([b[2], b[3]]);
            let (scales_l, qs) = (&b[4..8], &b[8..136]);
            for ib in 0..QK_K / 32 {
                let lo = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
                let hi = ((scales_h >> (2 * ib)) & 3) as u8;
                let dl = d * (i32::from(lo | (hi << 4)) - 32) as f32;
                let q = &qs[16 * ib..16 * ib + 16];
                let y = &mut y[32 * ib..32 * ib + 32];
                for j in 0..16 {
                    y[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(q[j] & 0x0f)]);
                    y[j + 16] = dl * f32::from(KVALUES_IQ4NL[usize::from(q[j] >> 4)]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::device::Device;
    use crate::ops::dequant::testing::*;
    use mlmf_core::DType;

    const TYPES: [DType; 6] = [
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::IQ4_XS,
    ];

    #[test]
    fn fixtures_decode_exactly_as_gguf_py() {
        let gpu = Device::gpu().unwrap();
        // The shared oracle has no IQ4_XS tensor: tests/dequant_files.rs checks it against
        // gguf-py with tests/data/iq4_gguf_py.gguf, and the twin below against the GPU.
        for dtype in &TYPES[..5] {
            check_fixture(&gpu, *dtype);
        }
    }

    #[test]
    fn gpu_matches_cpu_twin_on_random_blocks() {
        let gpu = Device::gpu().unwrap();
        for (k, dtype) in TYPES.into_iter().enumerate() {
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
        // With 4352-byte pages an output page holds 1088 elements, 4.25 super-blocks, so
        // super-blocks straddle output pages.
        for page in [4096, 4352] {
            let gpu = paged_gpu(page);
            for (k, dtype) in TYPES.into_iter().enumerate() {
                check_random(&gpu, dtype, vec![19, 512], 177 + k as u64);
            }
        }
        // One long row lets output pages end inside a row: 4112-byte pages hold 1028 f32 (the
        // launcher splits them at multiples of 16 bytes), so dispatches start and end inside a
        // 32-element group.
        let gpu = paged_gpu(4112);
        for (k, dtype) in TYPES.into_iter().enumerate() {
            check_random(&gpu, dtype, vec![1, 19 * 512], 197 + k as u64);
        }
    }

    #[test]
    fn f16_output_is_the_f32_decoding_rounded() {
        let gpu = Device::gpu().unwrap();
        for (k, dtype) in TYPES.into_iter().enumerate() {
            let bytes = moderate_blocks(dtype, 9, 400 + k as u64);
            let want = crate::ops::dequant::cpu::to_f32(dtype, &bytes);
            check_f16(&gpu, dtype, vec![3, 768], bytes, &want);
        }
        for dtype in &TYPES[..5] {
            let (bytes, want) = fixture(*dtype);
            check_f16(&gpu, *dtype, vec![8, 1024], bytes, &want);
        }
        let paged = paged_gpu(4352);
        let bytes = moderate_blocks(DType::Q4_K, 38, 11);
        let want = crate::ops::dequant::cpu::to_f32(DType::Q4_K, &bytes);
        check_f16(&paged, DType::Q4_K, vec![19, 512], bytes, &want);
        // 2056 f16 per 4112-byte page: pieces start inside a group.
        let paged = paged_gpu(4112);
        let bytes = moderate_blocks(DType::Q6_K, 19, 10);
        let want = crate::ops::dequant::cpu::to_f32(DType::Q6_K, &bytes);
        check_f16(&paged, DType::Q6_K, vec![1, 19 * 256], bytes, &want);
    }

    #[test]
    fn rows_of_partial_super_blocks_are_refused() {
        let t = tensor(DType::Q4_K, vec![4, 128], vec![0; 2 * 144]);
        assert!(matches!(
            crate::ops::dequant::to_f32(&t),
            Err(mlmf_core::Error::PartialBlock {
                row_len: 128,
                block_elems: 256,
                ..
            })
        ));
    }
}
