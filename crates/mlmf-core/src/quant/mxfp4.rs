//! MXFP4 (blocks of 32): gguf-py 0.19.0's `MXFP4.quantize_blocks` (`gguf/quants.py`), which is
//! ggml's `quantize_row_mxfp4_ref` in numpy: the shared scale is the E8M0 exponent
//! `e = floor(log2(amax)) - 2 + 127`, so the largest E2M1 value (6, stored doubled as 12) times
//! `2^(e - 128)` covers `amax`; each element takes the first of the 16 doubled E2M1 values
//! nearest it in float32.
//!
//! `log2` is numpy's float32 `log2`, whose result is the correctly rounded one (checked against
//! f64 `log2` rounded to f32 on 300,000 inputs, every power of two and its neighbours
//! included): just below a power of two it rounds up to the exponent, so the exact floor would
//! differ. One departure: a block whose `amax` is below `2^-125` has a negative exponent, which
//! gguf-py casts to `uint8` (undefined in C; numpy on x86-64 wraps it to 251..255, a scale of
//! `2^122` and up); here it is 0, the smallest scale, which represents such a block best.
//!
//! Layout (ggml-common.h): `block_mxfp4 { e; qs[16] }`, `qs[j]` holds element `j` in its low
//! nibble and `j + 16` in its high nibble.

use super::values::{e8m0_half, KVALUES_MXFP4};

pub(super) const QK_MXFP4: usize = 32;
pub(super) const MXFP4_BYTES: usize = 1 + QK_MXFP4 / 2;

/// The E8M0 exponent of a block whose largest magnitude is `amax` (finite, >= 0).
fn exponent(amax: f32) -> u8 {
    if amax <= 0.0 {
        return 0;
    }
    // numpy's float32 log2 is the correctly rounded log2; f64's, rounded to f32, is too.
    let log2 = (f64::from(amax).log2() as f32).floor();
    let e = log2 - 2.0 + 127.0;
    // amax < 2^-125 gives e < 0 (see the module comment); f32::MAX (log2 rounds to 128) 253.
    e.clamp(0.0, 255.0) as u8
}

/// gguf-py `np.argmin` of `|d * kvalues - x|`: the first nearest value.
fn best_index(x: f32, d: f32) -> u8 {
    let mut best = 0;
    let mut best_err = (f32::from(KVALUES_MXFP4[0]) * d - x).abs();
    for (i, &k) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (f32::from(k) * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

pub(super) fn quantize_block_mxfp4(x: &[f32; QK_MXFP4]) -> [u8; MXFP4_BYTES] {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let e = exponent(amax);
    let d = e8m0_half(e);
    let mut out = [0u8; MXFP4_BYTES];
    out[0] = e;
    for j in 0..QK_MXFP4 / 2 {
        out[1 + j] = best_index(x[j], d) | (best_index(x[j + QK_MXFP4 / 2], d) << 4);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn block_size_matches_the_dtype_table() {
        assert_eq!(DType::MXFP4.block_bytes(), MXFP4_BYTES as u64);
        assert_eq!(DType::MXFP4.block_elems(), QK_MXFP4 as u64);
    }

    #[test]
    fn exponent_follows_the_rounded_log2() {
        assert_eq!(exponent(0.0), 0);
        assert_eq!(exponent(1.0), 125);
        assert_eq!(exponent(6.0), 127); // 6 * 2^(127 - 128) * 2 = 6: the top value
        assert_eq!(exponent(7.999), 127);
        // The largest f32 below 8: log2 rounds to 3.0 in f32, so the exponent is 8's.
        assert_eq!(exponent(f32::from_bits(8f32.to_bits() - 1)), 128);
        assert_eq!(exponent(f32::MAX), 253);
        assert_eq!(exponent(2f32.powi(-125)), 0);
        assert_eq!(exponent(2f32.powi(-126)), 0);
        assert_eq!(exponent(1e-45), 0);
    }

    #[test]
    fn levels_are_the_nearest_doubled_e2m1_values() {
        // amax 6 -> e = 127, d = 0.5: values k / 2.
        let mut x = [0.0f32; QK_MXFP4];
        x[0] = 6.0;
        x[1] = -6.0;
        x[2] = 0.25; // midway between 0 and 0.5: the first (0) wins
        x[3] = 2.4; // between 2 and 3: 2 (k = 4)
        x[16] = -0.5;
        x[17] = 5.0; // midway between 4 and 6: 4 (k = 8) comes first
        let b = quantize_block_mxfp4(&x);
        assert_eq!(b[0], 127);
        assert_eq!(b[1], 7 | (9 << 4)); // 12 and -1
        assert_eq!(b[2], 15 | (6 << 4)); // -12 and 8
        assert_eq!(b[3], 0);
        assert_eq!(b[4], 4);
        assert!(b[5..].iter().all(|&q| q == 0));
    }

    #[test]
    fn tiny_blocks_take_the_smallest_scale() {
        // 2e-38 < 2^-125: log2 floors to -126, an exponent of -1.
        let x = [2e-38f32; QK_MXFP4];
        let b = quantize_block_mxfp4(&x);
        assert_eq!(b[0], 0);
        // 2e-38 / 2^-128 = 6.8: nearest 6 (index 5).
        assert!(b[1..].iter().all(|&q| q == 0x55));
    }
}
