//! The weight types the block-reading kernel families (dequant, qmatmul, embedding) decode, one
//! row each in [`DECODERS`], and their CPU twins. A row gives the type's code in
//! `shaders/quant_decode.wgsl` (`T_<TYPE>`; the launchers set the `TYPE` override to it),
//! whether it has a group decoder there (`group_<type>`: the block types, which dequant takes),
//! and its twin below. A new weight type is a row and a twin here, and `decode_<type>` (and
//! `group_<type>`) with their `switch` cases in quant_decode.wgsl; the naga test
//! (`device/kernels/tests.rs`) checks the WGSL against this table.
//!
//! The twins are ggml's `dequantize_row_*` (ggml-quants.c): one short function per type, per
//! block from the little-endian bytes, plain loops, float32 arithmetic grouped as written there.
//! GPU and twin agree bit for bit, and both agree bit for bit with gguf-py's decoding of the
//! fixtures in `shared/fixtures/quant` and of real model files. That holds on any compiler: every
//! product in these decoders is exact in f32 (an f16 scale's 11-bit significand times small
//! integers stays within 24 bits; MXFP4's power-of-two scale times at most 12 is exact or
//! overflows to infinity), so the only rounding is a single add or subtract per element,
//! and contracting it with a product into a fused multiply-add cannot change the result.

use super::iq_grids;
use crate::device::kernels::PipelineKey;
use mlmf_core::quant::values::{e8m0_half, KVALUES_IQ4NL, KVALUES_MXFP4};
use mlmf_core::DType;

/// One weight type the block-reading families decode.
pub(crate) struct Decoder {
    pub(crate) dtype: DType,
    /// `T_<TYPE>` in `shaders/quant_decode.wgsl`.
    pub(crate) code: u32,
    /// Has `group_<type>` in `shaders/quant_decode.wgsl` (and [`dequant`](super::dequant)
    /// takes it).
    pub(crate) group: bool,
    /// The CPU twin: the whole blocks of the first slice into the second, one block of elements
    /// per block of bytes, stopping at the shorter.
    pub(crate) twin: fn(&[u8], &mut [f32]),
}

#[rustfmt::skip]
pub(crate) const DECODERS: &[Decoder] = &[
    Decoder { dtype: DType::F32, code: 0, group: false, twin: f32s },
    Decoder { dtype: DType::F16, code: 1, group: false, twin: f16s },
    Decoder { dtype: DType::BF16, code: 2, group: false, twin: bf16s },
    Decoder { dtype: DType::Q4_0, code: 3, group: true, twin: q4_0 },
    Decoder { dtype: DType::Q4_1, code: 4, group: true, twin: q4_1 },
    Decoder { dtype: DType::Q5_0, code: 5, group: true, twin: q5_0 },
    Decoder { dtype: DType::Q5_1, code: 6, group: true, twin: q5_1 },
    Decoder { dtype: DType::Q8_0, code: 7, group: true, twin: q8_0 },
    Decoder { dtype: DType::IQ4_NL, code: 8, group: true, twin: iq4_nl },
    Decoder { dtype: DType::Q2_K, code: 9, group: true, twin: q2_k },
    Decoder { dtype: DType::Q3_K, code: 10, group: true, twin: q3_k },
    Decoder { dtype: DType::Q4_K, code: 11, group: true, twin: q4_k },
    Decoder { dtype: DType::Q5_K, code: 12, group: true, twin: q5_k },
    Decoder { dtype: DType::Q6_K, code: 13, group: true, twin: q6_k },
    Decoder { dtype: DType::IQ4_XS, code: 14, group: true, twin: iq4_xs },
    Decoder { dtype: DType::MXFP4, code: 15, group: true, twin: mxfp4 },
    Decoder { dtype: DType::TQ1_0, code: 16, group: true, twin: tq1_0 },
    Decoder { dtype: DType::TQ2_0, code: 17, group: true, twin: tq2_0 },
    Decoder { dtype: DType::IQ2_XXS, code: 18, group: true, twin: iq2_xxs },
    Decoder { dtype: DType::IQ2_XS, code: 19, group: true, twin: iq2_xs },
    Decoder { dtype: DType::IQ3_XXS, code: 20, group: true, twin: iq3_xxs },
    Decoder { dtype: DType::IQ1_S, code: 21, group: true, twin: iq1_s },
    Decoder { dtype: DType::IQ3_S, code: 22, group: true, twin: iq3_s },
    Decoder { dtype: DType::IQ2_S, code: 23, group: true, twin: iq2_s },
    Decoder { dtype: DType::IQ1_M, code: 24, group: true, twin: iq1_m },
];

/// The row of `dtype`, if the families decode it.
pub(crate) fn decoder(dtype: DType) -> Option<&'static Decoder> {
    DECODERS.iter().find(|d| d.dtype == dtype)
}

impl Decoder {
    /// `key` specialised to this type: quant_decode.wgsl's `TYPE` and `GROUPED` overrides.
    pub(crate) fn specialise(&self, key: PipelineKey) -> PipelineKey {
        key.with("TYPE", f64::from(self.code))
            .with("GROUPED", f64::from(u8::from(self.group)))
    }
}

/// Decode the blocks of `x` (bytes of `dtype`) into `y`, one block of `y` per block of `x`,
/// stopping at the shorter. `false` when `dtype` has no decoder.
pub(crate) fn decode_row(dtype: DType, x: &[u8], y: &mut [f32]) -> bool {
    decoder(dtype).map(|d| (d.twin)(x, y)).is_some()
}

/// Decode the whole blocks of `x` (bytes of `dtype`) to f32. A trailing partial block is
/// ignored; a dtype without a decoder decodes to nothing.
pub(crate) fn to_f32(dtype: DType, x: &[u8]) -> Vec<f32> {
    let blocks = x.len() / dtype.block_bytes() as usize;
    let mut y = vec![0.0; blocks * dtype.block_elems() as usize];
    if !decode_row(dtype, x, &mut y) {
        y.clear();
    }
    y
}

/// The f16 at byte `i` of a block, widened exactly.
fn f16(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The blocks of `dtype` in `x` paired with their elements in `y`.
fn blocks<'a>(
    dtype: DType,
    x: &'a [u8],
    y: &'a mut [f32],
) -> impl Iterator<Item = (&'a [u8], &'a mut [f32])> {
    x.chunks_exact(dtype.block_bytes() as usize)
        .zip(y.chunks_exact_mut(dtype.block_elems() as usize))
}

// ---- plain numbers: a block is one element ------------------------------------------------------

fn f32s(x: &[u8], y: &mut [f32]) {
    for (b, y) in blocks(DType::F32, x, y) {
        y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

fn f16s(x: &[u8], y: &mut [f32]) {
    for (b, y) in blocks(DType::F16, x, y) {
        y[0] = f16(b, 0);
    }
}

fn bf16s(x: &[u8], y: &mut [f32]) {
    for (b, y) in blocks(DType::BF16, x, y) {
        y[0] = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

// ---- legacy blocks of 32 elements ---------------------------------------------------------------

const QK: usize = 32;

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

// ---- K-quant super-blocks of 256 elements -------------------------------------------------------

const QK_K: usize = 256;

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

// ---- microscaling and ternary types -------------------------------------------------------------

/// MXFP4: e (E8M0), qs[16] indexing the doubled E2M1 values. y = kvalues[q] * d with
/// d = 2^(e - 128). The product is exact (a power of two times at most 12) except where it
/// overflows to infinity (e >= 253 with |kvalue| >= 8).
fn mxfp4(x: &[u8], y: &mut [f32]) {
    for (b, y) in blocks(DType::MXFP4, x, y) {
        let d = e8m0_half(b[0]);
        for j in 0..QK / 2 {
            y[j] = f32::from(KVALUES_MXFP4[usize::from(b[1 + j] & 0x0f)]) * d;
            y[j + QK / 2] = f32::from(KVALUES_MXFP4[usize::from(b[1 + j] >> 4)]) * d;
        }
    }
}

/// Trit `n` (0..5) of a TQ1_0 byte holding five base-3 digits as a fixed-point fraction:
/// `(q * 3^n mod 256) * 3 >> 8`, minus 1 (dequantize_row_tq1_0).
fn trit(q: u8, n: usize) -> f32 {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let q = q.wrapping_mul(POW3[n]);
    (i32::from((u16::from(q) * 3) >> 8) - 1) as f32
}

/// TQ1_0: qs[48] (five trits a byte), qh[4] (four trits a byte), d (f16). y = (t - 1) * d.
/// Element order: digit-major over qs[0..32] (160), then over qs[32..48] (80), then over qh (16).
fn tq1_0(x: &[u8], y: &mut [f32]) {
    for (b, y) in blocks(DType::TQ1_0, x, y) {
        let (qs, qh) = (&b[0..48], &b[48..52]);
        let d = f16(b, 52);
        let mut out = 0;
        for (bytes, digits) in [(&qs[0..32], 5), (&qs[32..48], 5), (qh, 4)] {
            for n in 0..digits {
                for &q in bytes {
                    y[out] = trit(q, n) * d;
                    out += 1;
                }
            }
        }
    }
}

/// TQ2_0: qs[64] (four 2-bit values a byte), d (f16). y = (q - 1) * d, q in 0..3. Element
/// 128 * h + 32 * l + m is bits 2l of qs[32h + m].
fn tq2_0(x: &[u8], y: &mut [f32]) {
    for (b, y) in blocks(DType::TQ2_0, x, y) {
        let d = f16(b, 64);
        let mut out = 0;
        for half in b[0..64].chunks_exact(32) {
            for l in 0..4 {
                for &q in half {
                    y[out] = (i32::from((q >> (2 * l)) & 3) - 1) as f32 * d;
                    out += 1;
                }
            }
        }
    }
}

// ---- i-quant super-blocks of 256 elements, on grids -------------------------------------------
//
// Groups of 4 or 8 elements are one entry of a grid (`iq_grids`, ggml-common.h's tables: the
// entry's bytes, lowest first, are the group's magnitudes), with signs from `ksigns_iq2xs` (7
// stored bits, the eighth their parity) or stored whole, times a per-32 (or per-16) scale.

/// `-1.0` where bit `j` of `signs` is set (`kmask_iq2xs[j]`), else `1.0`.
fn sign(signs: u8, j: usize) -> f32 {
    if signs & iq_grids::KMASK_IQ2XS[j] != 0 {
        -1.0
    } else {
        1.0
    }
}

/// Byte `j` of a grid entry.
fn grid_byte<T: Into<u64>>(entry: T, j: usize) -> u8 {
    (entry.into() >> (8 * j)) as u8
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// IQ2_XXS: d (f16), qs (u16[32]): per 32 elements two words, the first four grid indices
/// (bytes), the second four 7-bit sign indices and a 4-bit scale in its top bits.
/// y = (d * (0.5 + s) * 0.25) * grid * sign.
fn iq2_xxs(x: &[u8], y: &mut [f32]) {
    for (b, y) in blocks(DType::IQ2_XXS, x, y) {
        let d = f16(b, 0);
        for ib32 in 0..QK_K / 32 {
            let q = 2 + 8 * ib32;
            let aux1 = u32_at(b, q + 4);
            let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
            for l in 0..4 {
                let grid = iq_grids::IQ2XXS_GRID[usize::from(b[q + l])];
                let signs = iq_grids::KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
                let y = &mut y[32 * ib32 + 8 * l..][..8];
                for (j, y) in y.iter_mut().enumerate() {
                    *y = db * f32::from(grid_byte(grid, j)) * sign(signs, j);
                }
            }
        }
    }
}

/// IQ2_XS: d (f16), qs (u16[32]: 9-bit grid index, 7-bit sign index), scales[8] (two 4-bit
/// scales per 32 elements). y = (d * (0.5 + s) * 0.25) * grid * sign.
fn iq2_xs(x: &[u8], y: &mut [f32]) {
    for (b, y) in blocks(DType::IQ2_XS, x, y) {
        let d = f16(b, 0);
        for ib32 in 0..QK_K / 32 {
            let sc = b[66 + ib32];
            let db = [
                d * (0.5 + f32::from(sc & 0xf)) * 0.25,
                d * (0.5 + f32::from(sc >> 4)) * 0.25,
            ];
            for l in 0..4 {
                let q = u16_at(b, 2 + 2 * (4 * ib32 + l));
                let grid = iq_grids::IQ2XS_GRID[usize::from(q & 511)];
                let signs = iq_grids::KSIGNS_IQ2XS[usize::from(q >> 9)];
                let y = &mut y[32 * ib32 + 8 * l..][..8];
                for (j, y) in y.iter_mut().enumerate() {
                    *y = db[l / 2] * f32::from(grid_byte(grid, j)) * sign(signs, j);
                }
            }
        }
    }
}

/// IQ2_S: d (f16), qs[32] (grid index low bits), signs[32], qh[8] (grid index bits 8 and 9,
/// two per group), scales[8]. y = (d * (0.5 + s) * 0.25) * grid * sign.
fn iq2_s(x: &[u8], y: &mut [f32]) {
    for (b, y) in blocks(DType::IQ2_S, x, y) {
        let d = f16(b, 0);
        let (qs, signs, qh, scales) = (&b[2..34], &b[34..66], &b[66..74], &b[74..82]);
        for ib32 in 0..QK_K / 32 {
            let db = [
                d * (0.5 + f32::from(scales[ib32] & 0xf)) * 0.25,
                d * (0.5 + f32::from(scales[ib32] >> 4)) * 0.25,
            ];
            for l in 0..4 {
                let high = (usize::from(qh[ib32]) << (8 - 2 * l)) & 0x300;
                let grid = iq_grids::IQ2S_GRID[usize::from(qs[4 * ib32 + l]) | high];
                let s = signs[4 * ib32 + l];
                let y = &mut y[32 * ib32 + 8 * l..][..8];
                for (j, y) in y.iter_mut().enumerate() {
                    *y = db[l / 2] * f32::from(grid_byte(grid, j)) * sign(s, j);
                }
            }
        }
    }
}

/// IQ3_XXS: d (f16), qs[64] (grid indices, 4 elements each), then per 32 elements a u32 of
/// four 7-bit sign indices and a 4-bit scale. y = (d * (0.5 + s) * 0.5) * grid * sign.
fn iq3_xxs(x: &[u8], y: &mut [f32]) {
    for (b, y) in blocks(DType::IQ3_XXS, x, y) {
        let d = f16(b, 0);
        for ib32 in 0..QK_K / 32 {
            let qs = &b[2 + 8 * ib32..][..8];
            let aux = u32_at(b, 66 + 4 * ib32);
            let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
            for l in 0..4 {
                let signs = iq_grids::KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                let grid1 = iq_grids::IQ3XXS_GRID[usize::from(qs[2 * l])];
                let grid2 = iq_grids::IQ3XXS_GRID[usize::from(qs[2 * l + 1])];
                let y = &mut y[32 * ib32 + 8 * l..][..8];
                for j in 0..4 {
                    y[j] = db * f32::from(grid_byte(grid1, j)) * sign(signs, j);
                    y[j + 4] = db * f32::from(grid_byte(grid2, j)) * sign(signs, j + 4);
                }
            }
        }
    }
}

/// IQ3_S: d (f16), qs[64] (grid index low bits), qh[8] (bit 8 of each index), signs[32],
/// scales[4] (two 4-bit scales per 64 elements). y = (d * (1 + 2 s)) * grid * sign.
fn iq3_s(x: &[u8], y: &mut [f32]) {
    for (b, y) in blocks(DType::IQ3_S, x, y) {
        let d = f16(b, 0);
        let (qs, qh, signs, scales) = (&b[2..66], &b[66..74], &b[74..106], &b[106..110]);
        for ib32 in 0..QK_K / 32 {
            let s = (scales[ib32 / 2] >> (4 * (ib32 % 2))) & 0xf;
            let db = d * (1 + 2 * i32::from(s)) as f32;
            let h = usize::from(qh[ib32]);
            for l in 0..4 {
                let q = &qs[8 * ib32 + 2 * l..];
                let grid1 = iq_grids::IQ3S_GRID[usize::from(q[0]) | ((h << (8 - 2 * l)) & 256)];
                let grid2 = iq_grids::IQ3S_GRID[usize::from(q[1]) | ((h << (7 - 2 * l)) & 256)];
                let sg = signs[4 * ib32 + l];
                let y = &mut y[32 * ib32 + 8 * l..][..8];
                for j in 0..4 {
                    y[j] = db * f32::from(grid_byte(grid1, j)) * sign(sg, j);
                    y[j + 4] = db * f32::from(grid_byte(grid2, j)) * sign(sg, j + 4);
                }
            }
        }
    }
}

/// IQ1_S and IQ1_M's shift of every grid value: ±IQ1S_DELTA.
const IQ1S_DELTA: f32 = 0.125;

/// IQ1_S: d (f16), qs[32] (grid index low bits), qh (u16[8]: per 32 elements four 3-bit index
/// highs, a 3-bit scale and the sign of the shift). y = (d * (2 s + 1)) * (grid ± 1/8).
fn iq1_s(x: &[u8], y: &mut [f32]) {
    for (b, y) in blocks(DType::IQ1_S, x, y) {
        let d = f16(b, 0);
        for ib in 0..QK_K / 32 {
            let qh = u16_at(b, 34 + 2 * ib);
            let dl = d * (2 * i32::from((qh >> 12) & 7) + 1) as f32;
            let delta = if qh & 0x8000 != 0 {
                -IQ1S_DELTA
            } else {
                IQ1S_DELTA
            };
            for l in 0..4 {
                let idx = usize::from(b[2 + 4 * ib + l]) | (usize::from((qh >> (3 * l)) & 7) << 8);
                let grid = iq_grids::IQ1S_GRID[idx];
                let y = &mut y[32 * ib + 8 * l..][..8];
                for (j, y) in y.iter_mut().enumerate() {
                    *y = dl * (f32::from(grid_byte(grid, j) as i8) + delta);
                }
            }
        }
    }
}

/// IQ1_M: qs[32] (grid index low bits), qh[16] (per 8 elements a 3-bit index high and the
/// shift's sign), scales (u16[4]: per 16 elements a 3-bit scale; the top nibbles of the four
/// words are the f16 d). y = (d * (2 s + 1)) * (grid ± 1/8).
fn iq1_m(x: &[u8], y: &mut [f32]) {
    for (b, y) in blocks(DType::IQ1_M, x, y) {
        let sc = [u16_at(b, 48), u16_at(b, 50), u16_at(b, 52), u16_at(b, 54)];
        let bits =
            (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
        let d = half::f16::from_bits(bits).to_f32();
        for ib in 0..QK_K / 32 {
            let s = sc[ib / 2] >> (6 * (ib % 2));
            let dl = [
                d * (2 * i32::from(s & 7) + 1) as f32,
                d * (2 * i32::from((s >> 3) & 7) + 1) as f32,
            ];
            let qh = [b[32 + 2 * ib], b[33 + 2 * ib]];
            for l in 0..4 {
                let h = qh[l / 2] >> (4 * (l % 2));
                let idx = usize::from(b[4 * ib + l]) | (usize::from(h & 7) << 8);
                let delta = if h & 8 != 0 { -IQ1S_DELTA } else { IQ1S_DELTA };
                let grid = iq_grids::IQ1S_GRID[idx];
                let y = &mut y[32 * ib + 8 * l..][..8];
                for (j, y) in y.iter_mut().enumerate() {
                    *y = dl[l / 2] * (f32::from(grid_byte(grid, j) as i8) + delta);
                }
            }
        }
    }
}
