//! Legacy blocks of 32: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//!
//! Each function is gguf-py 0.19.0's `quantize_blocks` for one block (`gguf/quants.py`, which
//! wrote the fixture bytes), written like ggml's `quantize_row_*_ref`. Where the two differ
//! gguf-py is followed, in float32 with every product and sum rounded on its own (no fused
//! multiply-add):
//! - the scale's source value is the first element of largest magnitude (numpy `argmax`), as in
//!   ggml's strict `amax < fabsf(v)` scan;
//! - a level is `trunc(v + 0.5)` (`trunc(v + 8.5)` / `trunc(v + 16.5)` for the signed types)
//!   cast to `u8` and clipped to the top level, Q8_0's is `roundf` (half away from zero) cast
//!   to `i8`, the casts behaving as on x86 (see [`cast_trunc`]);
//! - `id = 1/d`, or 0 where `d == 0`.
//!
//! Layouts (ggml-common.h): `block_q4_0 { d; qs[16] }`, `block_q4_1 { d; m; qs[16] }`,
//! `block_q5_0 { d; qh[4]; qs[16] }`, `block_q5_1 { d; m; qh[4]; qs[16] }`,
//! `block_q8_0 { d; qs[32] }`; `qs[j]` holds element `j` in its low nibble and `j + 16` in its
//! high nibble; bit `j` of the little-endian `qh` is bit 4 of element `j`.

use super::f16_bytes;

pub(super) const QK: usize = 32;
pub(super) const Q4_0_BYTES: usize = 2 + QK / 2;
pub(super) const Q4_1_BYTES: usize = 2 * 2 + QK / 2;
pub(super) const Q5_0_BYTES: usize = 2 + 4 + QK / 2;
pub(super) const Q5_1_BYTES: usize = 2 * 2 + 4 + QK / 2;
pub(super) const Q8_0_BYTES: usize = 2 + QK;

/// The first element of largest magnitude, with its sign (gguf-py `abs(blocks).argmax`).
fn signed_absmax(x: &[f32; QK]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = x[0];
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Smallest and largest element (ggml's `v < min`, `v > max` scan).
fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// A float-to-integer cast as numpy's `astype` and ggml's C casts perform it on x86
/// (`cvttss2si`): truncate toward zero; NaN, infinity and anything outside the i32 range give
/// `i32::MIN`, whose low byte is 0. The callers then keep the low byte, as those casts do. This
/// only matters for a block whose `1/d` overflows (largest magnitude below about 1e-37): its
/// levels are stored as 0, as gguf-py and ggml store them.
fn cast_trunc(v: f32) -> i32 {
    if v.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Pack 32 levels of at most 4 bits (low nibble: element `j`, high nibble: `j + 16`).
fn pack_nibbles(q: &[u8; QK]) -> [u8; QK / 2] {
    let mut qs = [0u8; QK / 2];
    for (j, byte) in qs.iter_mut().enumerate() {
        *byte = (q[j] & 0x0f) | (q[j + QK / 2] << 4);
    }
    qs
}

/// Bit 4 of each of 32 levels, element `j` at bit `j` (gguf-py `np.packbits(.., "little")`).
fn high_bits(q: &[u8; QK]) -> [u8; 4] {
    let mut qh = 0u32;
    for (j, &l) in q.iter().enumerate() {
        qh |= u32::from((l >> 4) & 1) << j;
    }
    qh.to_le_bytes()
}

/// gguf-py `Q4_0.quantize_blocks` (ggml `quantize_row_q4_0_ref`): `x = d * (q - 8)`, `d = max / -8`.
pub(super) fn quantize_block_q4_0(x: &[f32; QK]) -> [u8; Q4_0_BYTES] {
    let d = signed_absmax(x) / -8.0;
    let id = inverse(d);
    let q = x.map(|v| (cast_trunc(v * id + 8.5) as u8).min(15));
    let mut out = [0u8; Q4_0_BYTES];
    out[..2].copy_from_slice(&f16_bytes(d));
    out[2..].copy_from_slice(&pack_nibbles(&q));
    out
}

/// gguf-py `Q4_1.quantize_blocks` (ggml `quantize_row_q4_1_ref`): `x = d * q + m`.
pub(super) fn quantize_block_q4_1(x: &[f32; QK]) -> [u8; Q4_1_BYTES] {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    let q = x.map(|v| (cast_trunc((v - min) * id + 0.5) as u8).min(15));
    let mut out = [0u8; Q4_1_BYTES];
    out[..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(min));
    out[4..].copy_from_slice(&pack_nibbles(&q));
    out
}

/// gguf-py `Q5_0.quantize_blocks` (ggml `quantize_row_q5_0_ref`): `x = d * (q - 16)`,
/// `d = max / -16`.
pub(super) fn quantize_block_q5_0(x: &[f32; QK]) -> [u8; Q5_0_BYTES] {
    let d = signed_absmax(x) / -16.0;
    let id = inverse(d);
    let q = x.map(|v| (cast_trunc(v * id + 16.5) as u8).min(31));
    let mut out = [0u8; Q5_0_BYTES];
    out[..2].copy_from_slice(&f16_bytes(d));
    out[2..6].copy_from_slice(&high_bits(&q));
    out[6..].copy_from_slice(&pack_nibbles(&q));
    out
}

/// gguf-py `Q5_1.quantize_blocks` (ggml `quantize_row_q5_1_ref`): `x = d * q + m`.
pub(super) fn quantize_block_q5_1(x: &[f32; QK]) -> [u8; Q5_1_BYTES] {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    let q = x.map(|v| (cast_trunc((v - min) * id + 0.5) as u8).min(31));
    let mut out = [0u8; Q5_1_BYTES];
    out[..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(min));
    out[4..8].copy_from_slice(&high_bits(&q));
    out[8..].copy_from_slice(&pack_nibbles(&q));
    out
}

/// gguf-py `Q8_0.quantize_blocks` (ggml `quantize_row_q8_0_ref`): `x = q * d`, `d = amax / 127`,
/// `q = roundf(x / d)` (half away from zero, gguf-py's `np_roundf`).
pub(super) fn quantize_block_q8_0(x: &[f32; QK]) -> [u8; Q8_0_BYTES] {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    let mut out = [0u8; Q8_0_BYTES];
    out[..2].copy_from_slice(&f16_bytes(d));
    for (byte, &v) in out[2..].iter_mut().zip(x) {
        *byte = cast_trunc((v * id).round()) as u8;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn block_sizes_match_the_dtype_table() {
        for (dtype, bytes) in [
            (DType::Q4_0, Q4_0_BYTES),
            (DType::Q4_1, Q4_1_BYTES),
            (DType::Q5_0, Q5_0_BYTES),
            (DType::Q5_1, Q5_1_BYTES),
            (DType::Q8_0, Q8_0_BYTES),
        ] {
            assert_eq!(dtype.block_bytes(), bytes as u64, "{dtype}");
            assert_eq!(dtype.block_elems(), QK as u64, "{dtype}");
        }
    }

    fn ramp() -> [f32; QK] {
        std::array::from_fn(|i| i as f32 - 16.0)
    }

    #[test]
    fn all_zero_blocks() {
        let x = [0.0f32; QK];
        // d = 0 / -8 = -0.0; every level is the zero point.
        let q4_0 = quantize_block_q4_0(&x);
        assert_eq!(q4_0[..2], [0x00, 0x80]);
        assert!(q4_0[2..].iter().all(|&b| b == 0x88));
        let q5_0 = quantize_block_q5_0(&x);
        assert_eq!(q5_0[..2], [0x00, 0x80]);
        assert_eq!(q5_0[2..6], [0xff; 4]);
        assert!(q5_0[6..].iter().all(|&b| b == 0x00));
        assert!(quantize_block_q4_1(&x).iter().all(|&b| b == 0));
        assert!(quantize_block_q5_1(&x).iter().all(|&b| b == 0));
        assert!(quantize_block_q8_0(&x).iter().all(|&b| b == 0));
    }

    #[test]
    fn constant_blocks() {
        let x = [1.5f32; QK];
        // Q4_1/Q5_1: d = 0, m = 1.5, levels 0.
        let q4_1 = quantize_block_q4_1(&x);
        assert_eq!(q4_1[..4], [0, 0, 0x00, 0x3e]);
        assert!(q4_1[4..].iter().all(|&b| b == 0));
        // Q4_0: d = -1.5/8, every value maps to level 0 (x/d = -8).
        let q4_0 = quantize_block_q4_0(&x);
        assert_eq!(
            half::f16::from_le_bytes([q4_0[0], q4_0[1]]).to_f32(),
            -0.1875
        );
        assert!(q4_0[2..].iter().all(|&b| b == 0));
        // Q8_0: d = 1.5/127, every level 127.
        let q8_0 = quantize_block_q8_0(&x);
        assert!(q8_0[2..].iter().all(|&b| b == 127));
    }

    /// Values so small that `1/d` overflows to infinity: gguf-py (and ggml on x86) store level
    /// 0 for every element, with `d` (and `m`) rounded to f16 zero.
    #[test]
    fn blocks_whose_inverse_scale_overflows() {
        let x: [f32; QK] = std::array::from_fn(|i| (i as f32 - 15.5) * 1e-39);
        let q4_0 = quantize_block_q4_0(&x);
        assert_eq!(q4_0, [0u8; Q4_0_BYTES]);
        let q4_1 = quantize_block_q4_1(&x);
        assert_eq!(q4_1[..4], [0, 0, 0x00, 0x80]);
        assert!(q4_1[4..].iter().all(|&b| b == 0));
        assert_eq!(quantize_block_q5_0(&x), [0u8; Q5_0_BYTES]);
        let q5_1 = quantize_block_q5_1(&x);
        assert_eq!(q5_1[..4], [0, 0, 0x00, 0x80]);
        assert!(q5_1[4..].iter().all(|&b| b == 0));
        assert_eq!(quantize_block_q8_0(&x), [0u8; Q8_0_BYTES]);
        assert_eq!(cast_trunc(f32::NAN), i32::MIN);
        assert_eq!(cast_trunc(f32::INFINITY), i32::MIN);
        assert_eq!(cast_trunc(-3e9), i32::MIN);
        assert_eq!(cast_trunc(-7.9), -7);
    }

    #[test]
    fn ramp_levels_and_packing() {
        let x = ramp();
        // Q8_0: amax 16, q = round(v * 127 / 16).
        let q8 = quantize_block_q8_0(&x);
        assert_eq!(q8[2] as i8, -127);
        assert_eq!(q8[2 + 16] as i8, 0);
        // 15 * 127 / 16 = 119.06
        assert_eq!(q8[2 + 31] as i8, 119);
        // Q4_0: max = -16 (first of largest magnitude), d = 2, x = 2 * (q - 8).
        let q4 = quantize_block_q4_0(&x);
        assert_eq!(half::f16::from_le_bytes([q4[0], q4[1]]).to_f32(), 2.0);
        // element 0: -16/2 + 8.5 -> 0; element 16: 0 + 8.5 -> 8.
        assert_eq!(q4[2], 0x80);
        // element 15: -1/2 + 8.5 = 8 -> 8; element 31: 15/2 + 8.5 = 16 -> clipped to 15.
        assert_eq!(q4[2 + 15], 0xf8);
        // Q5_0: d = 1, element j -> j; bit 4 set for elements 16..31.
        let q5 = quantize_block_q5_0(&x);
        assert_eq!(q5[2..6], [0x00, 0x00, 0xff, 0xff]);
        // element 3 -> 3 in the low nibble, element 19 -> 19 & 15 in the high nibble.
        assert_eq!(q5[6 + 3], 0x33);
    }
}
