//! Ternary super-blocks of 256: TQ1_0 (1.69 bits per weight) and TQ2_0 (2.06).
//!
//! Both are gguf-py 0.19.0's `TQ1_0` / `TQ2_0.quantize_blocks` (`gguf/quants.py`), which are
//! ggml's `quantize_row_tq1_0_ref` / `quantize_row_tq2_0_ref` in numpy: `d = amax` (the
//! largest magnitude, f32, stored as f16), `id = 1/d` (0 where `d == 0`), each element's level
//! `round(x * id)` (half away from zero, gguf-py's `np_roundf`, C's `lroundf`) in -1..=1,
//! stored plus one. Where `1/d` overflows (`amax` below about `2^-128`, a block whose f16 scale
//! is 0 so it decodes to zeros whatever its levels) gguf-py casts infinity or NaN to `int8`,
//! which is undefined; here the level is clamped to -1..=1 and NaN is level 0.
//!
//! Layouts (ggml-common.h):
//! - `block_tq1_0 { qs[48]; qh[4]; d }`: five levels per `qs` byte, four per `qh` byte, as the
//!   base-3 number `l0 l1 l2 l3 l4` (first level most significant, `qh` with a zero last digit),
//!   stored as the fraction `ceil(n * 256 / 243)`, so a decoder extracts digit `k` as
//!   `(byte * 3^k mod 256) * 3 >> 8`. Byte `m` of `qs[0..32]` holds elements `m + 32 n`,
//!   byte `m` of `qs[32..48]` elements `160 + m + 16 n`, byte `j` of `qh` elements
//!   `240 + j + 4 n`.
//! - `block_tq2_0 { qs[64]; d }`: element `128 h + 32 l + m` in bits `2 l` of `qs[32 h + m]`.

use super::f16_bytes;

pub(super) const QK_K: usize = 256;
pub(super) const TQ1_0_BYTES: usize = 2 + (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64;
pub(super) const TQ2_0_BYTES: usize = 2 + QK_K / 4;

/// `d`, and the levels 0..=2 (level + 1) of a super-block.
fn levels(x: &[f32; QK_K]) -> (f32, [u8; QK_K]) {
    let d = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut l = [1u8; QK_K];
    for (l, &v) in l.iter_mut().zip(x) {
        let q = (v * id).round();
        // NaN (0 * inf) fails both comparisons and stays level 0 (stored 1).
        if q >= 1.0 {
            *l = 2;
        } else if q <= -1.0 {
            *l = 0;
        }
    }
    (d, l)
}

/// The base-3 number of `digits` (most significant first), as the byte `ceil(n * 256 / 243)`.
fn pack_trits(digits: impl Iterator<Item = u8>) -> u8 {
    let n = digits.fold(0u16, |n, t| n * 3 + u16::from(t));
    (n * 256).div_ceil(243) as u8
}

pub(super) fn quantize_block_tq1_0(x: &[f32; QK_K]) -> [u8; TQ1_0_BYTES] {
    let (d, l) = levels(x);
    let mut out = [0u8; TQ1_0_BYTES];
    for m in 0..32 {
        out[m] = pack_trits((0..5).map(|n| l[m + 32 * n]));
    }
    for m in 0..16 {
        out[32 + m] = pack_trits((0..5).map(|n| l[160 + m + 16 * n]));
    }
    for j in 0..4 {
        // Four digits and a zero: the first level is the most significant of five.
        out[48 + j] = pack_trits((0..4).map(|n| l[240 + j + 4 * n]).chain([0]));
    }
    out[52..54].copy_from_slice(&f16_bytes(d));
    out
}

pub(super) fn quantize_block_tq2_0(x: &[f32; QK_K]) -> [u8; TQ2_0_BYTES] {
    let (d, l) = levels(x);
    let mut out = [0u8; TQ2_0_BYTES];
    for (i, &q) in l.iter().enumerate() {
        let (h, lane, m) = (i / 128, (i % 128) / 32, i % 32);
        out[32 * h + m] |= q << (2 * lane);
    }
    out[64..66].copy_from_slice(&f16_bytes(d));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn block_sizes_match_the_dtype_table() {
        assert_eq!(DType::TQ1_0.block_bytes(), TQ1_0_BYTES as u64);
        assert_eq!(DType::TQ2_0.block_bytes(), TQ2_0_BYTES as u64);
        assert_eq!(DType::TQ1_0.block_elems(), QK_K as u64);
        assert_eq!(DType::TQ2_0.block_elems(), QK_K as u64);
    }

    /// ggml's decoder: digit k of a packed byte is `(q * 3^k mod 256) * 3 >> 8`.
    #[test]
    fn packed_trits_decode_digit_by_digit() {
        for n in 0..243u16 {
            let digits = [n / 81, n / 27 % 3, n / 9 % 3, n / 3 % 3, n % 3].map(|d| d as u8);
            let q = pack_trits(digits.into_iter());
            for (k, &want) in digits.iter().enumerate() {
                let p = q.wrapping_mul(3u8.pow(k as u32));
                assert_eq!(((u16::from(p) * 3) >> 8) as u8, want, "{n} digit {k}");
            }
        }
        // All twos: 242 -> ceil(242 * 256 / 243) = 255.
        assert_eq!(pack_trits([2; 5].into_iter()), 255);
    }

    #[test]
    fn all_zero_blocks_are_level_one_and_scale_zero() {
        let t1 = quantize_block_tq1_0(&[0.0; QK_K]);
        // Five ones: 121 -> ceil(121 * 256 / 243) = 128; four ones and a zero: 120 -> 127.
        assert!(t1[..48].iter().all(|&b| b == 128));
        assert!(t1[48..52].iter().all(|&b| b == 127));
        assert_eq!(t1[52..], [0, 0]);
        let t2 = quantize_block_tq2_0(&[0.0; QK_K]);
        assert!(t2[..64].iter().all(|&b| b == 0x55));
        assert_eq!(t2[64..], [0, 0]);
    }

    #[test]
    fn levels_round_half_away_from_zero() {
        let mut x = [0.0f32; QK_K];
        x[0] = -4.0; // d = 4
        x[1] = 2.0; // 0.5 rounds to 1
        x[2] = -2.0; // -0.5 rounds to -1
        x[3] = 1.9; // 0.475 rounds to 0
        let (d, l) = levels(&x);
        assert_eq!(d, 4.0);
        assert_eq!(l[..5], [0, 2, 0, 1, 1]);
    }

    #[test]
    fn tiny_blocks_do_not_panic() {
        let mut x = [1e-45f32; QK_K];
        x[7] = 0.0;
        let (_, l) = levels(&x);
        assert!(l.iter().all(|&q| q <= 2));
        assert_eq!(quantize_block_tq2_0(&x)[64..], [0, 0]);
    }
}
