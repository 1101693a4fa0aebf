//! 4-bit non-linear quants: IQ4_NL (blocks of 32) and IQ4_XS (super-blocks of 256).
//!
//! Both follow ggml's `quantize_row_iq4_nl_impl` (`ggml/src/ggml-quants.c`) as
//! `ggml_quantize_chunk` calls it without an importance matrix, through `quantize_iq4_nl` and
//! `quantize_iq4_xs` (`ntry = 7`, weights `x^2`); that is what llama-quantize writes and what
//! `quantize_row_iq4_xs_ref` does. (`quantize_row_iq4_nl_ref` alone passes `ntry = -1`, a cruder
//! search no tool uses for files.) Float32 arithmetic in C's order, as in `k_quants`.
//!
//! Layouts (ggml-common.h): `block_iq4_nl { d; qs[16] }`: `x = d * kvalues[q]`;
//! `block_iq4_xs { d; scales_h: u16; scales_l[4]; qs[128] }`: `x = (d * (ls - 32)) * kvalues[q]`
//! with the 6-bit `ls` of each 32-element sub-block split into a nibble of `scales_l` and two
//! bits of `scales_h`. `qs` packs each 32 levels as Q4_0 does (low nibble `j`, high `j + 16`).

use super::f16_bytes;
use super::k_quants::{nearest_int, GROUP_MAX_EPS};
use super::values::KVALUES_IQ4NL;

pub(super) const QK4_NL: usize = 32;
pub(super) const QK_K: usize = 256;
pub(super) const IQ4_NL_BYTES: usize = 2 + QK4_NL / 2;
pub(super) const IQ4_XS_BYTES: usize = 2 + 2 + QK_K / 64 + QK_K / 2;

/// `ggml_quantize_chunk`'s `ntry` for IQ4_NL and IQ4_XS.
const NTRY: i32 = 7;

/// ggml `best_index_int8`: the index of the level nearest `x`, ties to the upper level, by a
/// branch-free binary search on midpoints (`2x >= val[j-1] + val[j]`, exact in float).
fn best_index_int8(x: f32) -> usize {
    let x2 = x + x;
    let mut idx = 0;
    let mut step = KVALUES_IQ4NL.len() >> 1;
    while step > 0 {
        let j = idx + step;
        let mid = i32::from(KVALUES_IQ4NL[j - 1]) + i32::from(KVALUES_IQ4NL[j]);
        if x2 >= mid as f32 {
            idx = j;
        }
        step >>= 1;
    }
    idx
}

fn level(l: usize) -> f32 {
    f32::from(KVALUES_IQ4NL[l])
}

/// The per-32 scale search of `quantize_row_iq4_nl_impl`: start from `d = -max / values[0]`,
/// refit, then try `id = (itry + values[0]) / max` for `itry` in `-7..=7`, keeping the scale
/// with the best `x^2`-weighted fit. An all-zero group gives 0.
fn group_scale(xb: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in xb {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let fit = |id: f32| {
        let mut sumqx = 0.0f32;
        let mut sumq2 = 0.0f32;
        for &v in xb {
            let q = level(best_index_int8(id * v));
            let w = v * v;
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let values0 = i32::from(KVALUES_IQ4NL[0]);
    let d = -max / values0 as f32;
    let (sumqx, sumq2) = fit(1.0 / d);
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let id = (itry + values0) as f32 / max;
        let (sumqx, sumq2) = fit(id);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Pack levels of 32 elements: `q[j] | q[j + 16] << 4`.
fn pack(levels: &[u8], qs: &mut [u8]) {
    for (j, byte) in qs.iter_mut().enumerate().take(16) {
        *byte = levels[j] | (levels[j + 16] << 4);
    }
}

/// ggml `quantize_iq4_nl` (no importance matrix), one block.
pub(super) fn quantize_block_iq4_nl(x: &[f32; QK4_NL]) -> [u8; IQ4_NL_BYTES] {
    let scale = group_scale(x);
    let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let levels = x.map(|v| best_index_int8(id * v) as u8);
    let mut out = [0u8; IQ4_NL_BYTES];
    out[..2].copy_from_slice(&f16_bytes(scale));
    pack(&levels, &mut out[2..]);
    out
}

/// ggml `quantize_iq4_xs` / `quantize_row_iq4_xs_ref` (no importance matrix), one super-block.
pub(super) fn quantize_block_iq4_xs(x: &[f32; QK_K]) -> [u8; IQ4_XS_BYTES] {
    let mut scales = [0.0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    let mut amax_scale = 0.0f32;
    for (s, xb) in scales.iter_mut().zip(x.chunks_exact(32)) {
        *s = group_scale(xb);
        if s.abs() > amax_scale {
            amax_scale = s.abs();
            max_scale = *s;
        }
    }

    let d = -max_scale / 32.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    let mut scales_l = [0u8; QK_K / 64];
    let mut levels = [0u8; QK_K];
    for (ib, (&s, xb)) in scales.iter().zip(x.chunks_exact(32)).enumerate() {
        let l = nearest_int(id * s).clamp(-32, 31);
        // ggml scales by the f32 `d`, not its f16 rounding.
        let dl = d * l as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        for (level, &v) in levels[32 * ib..32 * ib + 32].iter_mut().zip(xb) {
            *level = best_index_int8(idl * v) as u8;
        }
        let l = (l + 32) as u8;
        if ib % 2 == 0 {
            scales_l[ib / 2] = l & 0x0f;
        } else {
            scales_l[ib / 2] |= (l & 0x0f) << 4;
        }
        scales_h |= u16::from(l >> 4) << (2 * (ib % 8));
    }

    let mut out = [0u8; IQ4_XS_BYTES];
    out[..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&scales_h.to_le_bytes());
    out[4..8].copy_from_slice(&scales_l);
    for (i, qs) in out[8..].chunks_exact_mut(16).enumerate() {
        pack(&levels[32 * i..32 * i + 32], qs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn block_sizes_match_the_dtype_table() {
        assert_eq!(DType::IQ4_NL.block_bytes(), IQ4_NL_BYTES as u64);
        assert_eq!(DType::IQ4_NL.block_elems(), QK4_NL as u64);
        assert_eq!(DType::IQ4_XS.block_bytes(), IQ4_XS_BYTES as u64);
        assert_eq!(DType::IQ4_XS.block_elems(), QK_K as u64);
    }

    #[test]
    fn best_index_is_the_nearest_level_ties_up() {
        for (x, want) in [
            (-1000.0, 0),
            (-127.0, 0),
            (-115.5, 1), // midpoint of -127 and -104
            (-115.6, 0),
            (0.0, 8),  // 1 is nearer than -10
            (-4.5, 8), // midpoint of -10 and 1
            (-4.6, 7),
            (112.0, 15),
            (101.0, 15), // midpoint of 89 and 113
            (100.9, 14),
            (1e30, 15),
        ] {
            assert_eq!(best_index_int8(x), want, "{x}");
        }
        // NaN fails every comparison: index 0, no panic.
        assert_eq!(best_index_int8(f32::NAN), 0);
    }

    #[test]
    fn all_zero_blocks() {
        // d = 0 and every level the one nearest 0 (index 8, value 1, times 0).
        let nl = quantize_block_iq4_nl(&[0.0; QK4_NL]);
        assert_eq!(nl[..2], [0, 0]);
        assert!(nl[2..].iter().all(|&b| b == 0x88));
        let xs = quantize_block_iq4_xs(&[0.0; QK_K]);
        assert_eq!(xs[..2], [0x00, 0x80]); // -0.0 / 32
        assert_eq!(xs[2..4], [0xaa, 0xaa]); // ls = 32: high bits 0b10 for all 8
        assert!(xs[4..8].iter().all(|&b| b == 0x00));
        assert!(xs[8..].iter().all(|&b| b == 0x88));
    }
}
