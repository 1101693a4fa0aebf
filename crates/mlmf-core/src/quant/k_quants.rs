//! K-quants: super-blocks of 256 (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K).
//!
//! Each `quantize_block_*` is ggml's `quantize_row_*_ref` (`ggml/src/ggml-quants.c`, the path
//! `ggml_quantize_chunk` takes without an importance matrix) for one super-block, with its
//! helpers `nearest_int`, `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants` and
//! `get_scale_min_k4` below. Arithmetic is float32 in C's order of evaluation, one rounding per
//! operation (ggml's reference build does not contract into fused multiply-adds), `int` to
//! `float` conversions where C converts, and C's truncating integer narrowing (`as u8`/`as i8`).
//!
//! Layouts (ggml-common.h):
//! - `block_q2_K { scales[16]; qs[64]; d; dmin }`: `x = (d * sc) * q - (dmin * m)`, `sc`/`m` the
//!   low/high nibbles of `scales`;
//! - `block_q3_K { hmask[32]; qs[64]; scales[12]; d }`: `x = (d * (sc - 32)) * (q - 4)`, 6-bit
//!   `sc` packed, `q` 2 low bits in `qs` plus a high bit in `hmask`;
//! - `block_q4_K { d; dmin; scales[12]; qs[128] }` and `block_q5_K { d; dmin; scales[12];
//!   qh[32]; qs[128] }`: `x = (d * sc) * q - (dmin * m)`, 6-bit `sc`/`m` packed as
//!   `get_scale_min_k4` reads them;
//! - `block_q6_K { ql[128]; qh[64]; scales[16]; d }`: `x = (d * sc) * (q - 32)`, `sc` an `i8`.

use super::f16_bytes;

pub(super) const QK_K: usize = 256;
pub(super) const Q2_K_BYTES: usize = QK_K / 16 + QK_K / 4 + 2 * 2;
pub(super) const Q3_K_BYTES: usize = QK_K / 8 + QK_K / 4 + 12 + 2;
pub(super) const Q4_K_BYTES: usize = 2 * 2 + 12 + QK_K / 2;
pub(super) const Q5_K_BYTES: usize = 2 * 2 + 12 + QK_K / 8 + QK_K / 2;
pub(super) const Q6_K_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;

/// ggml `GROUP_MAX_EPS`: a group whose largest magnitude is below this counts as all zero.
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml `nearest_int`: round to nearest, ties to even, by adding 1.5 * 2^23 and reading the
/// mantissa bits. Exact for |x| <= 4194303; outside that (where ggml asserts) it returns the
/// same wrapped value the C code does, and callers clamp it.
pub(super) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml `make_qx_quants`: symmetric levels `L[i] in 0..2*nmax` (stored with `+nmax`) and the
/// scale, searched over 19 candidate scales for the least weighted squared error. Only the
/// path the `_ref` quantizers take is written: `rmse_type == 1` (weights `x^2`), no `qw`.
fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (l_out, &v) in levels.iter_mut().zip(x) {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *l_out = (l + nmax) as i8;
        let w = v * v;
        let lf = l as f32;
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            let w = v * v;
            let lf = l as f32;
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l_out, &v) in levels.iter_mut().zip(x) {
                let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
                *l_out = (nmax + l) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml `make_q3_quants` with `do_rmse = true`: symmetric levels (stored with `+nmax`), then up
/// to 5 passes moving one level at a time while the `x^2`-weighted fit improves.
fn make_q3_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (l_out, &v) in levels.iter_mut().zip(x) {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *l_out = l as i8;
        let w = v * v;
        let lf = l as f32;
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (l_io, &v) in levels.iter_mut().zip(x) {
            let w = v * v;
            let old = f32::from(*l_io);
            let mut slx = sumlx - w * v * old;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old * old;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != i32::from(*l_io) {
                    let nf = new_l as f32;
                    slx += w * v * nf;
                    sl2 += w * nf * nf;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *l_io = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in levels.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// ggml `make_qkx2_quants`: asymmetric levels `L[i] in 0..=nmax` for `x = scale * L - min`,
/// trying `nstep + 1` scales `(rmin + rdelta * is + nmax) / (max - min)` and keeping the least
/// weighted error (absolute with `use_mad`, squared otherwise). Returns `(scale, min)` with
/// `min >= 0` (ggml's `*the_min`).
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    // Groups are 16 or 32 values; `n` bounds every index below.
    let n = x.len().min(weights.len()).min(levels.len()).min(32);
    let (Some(&x0), Some(&w0)) = (x.first(), weights.first()) else {
        return (0.0, 0.0);
    };
    let mut min = x0;
    let mut max = x0;
    let mut sum_w = w0;
    let mut sum_x = sum_w * x0;
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels[..n].fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let error = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        levels[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * error(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut aux = [0u8; 32];
    let aux = &mut aux[..n];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for (i, a) in aux.iter_mut().enumerate() {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            *a = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for (i, &a) in aux.iter().enumerate() {
                let diff = this_scale * f32::from(a) + this_min - x[i];
                cur_error += weights[i] * error(diff);
            }
            if cur_error < best_error {
                levels[..aux.len()].copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Eight 6-bit scales and mins into Q4_K/Q5_K's 12 bytes, as `quantize_row_q4_K_ref` packs
/// them: sub-blocks 0..4 in the low 6 bits of bytes 0..4 (scales) and 4..8 (mins), sub-blocks
/// 4..8 in the nibbles of bytes 8..12 with their top 2 bits in the top bits of bytes 0..8.
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut sc = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            sc[j] = ls[j];
            sc[j + 4] = lm[j];
        } else {
            sc[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            sc[j - 4] |= (ls[j] >> 4) << 6;
            sc[j] |= (lm[j] >> 4) << 6;
        }
    }
    sc
}

/// ggml `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from Q4_K/Q5_K `scales`.
fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Four 2-bit levels per byte: `qs[j/4 + l]` holds `L[j + l + 32 * k]` at bits `2k`, for each
/// 128-element half `j` (ggml's Q2_K/Q3_K packing).
fn pack_2bit(levels: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for j in (0..QK_K).step_by(128) {
        for l in 0..32 {
            qs[j / 4 + l] = levels[j + l]
                | (levels[j + l + 32] << 2)
                | (levels[j + l + 64] << 4)
                | (levels[j + l + 96] << 6);
        }
    }
    qs
}

/// ggml `quantize_row_q2_K_ref`, one super-block.
pub(super) fn quantize_block_q2_k(x: &[f32; QK_K]) -> [u8; Q2_K_BYTES] {
    const Q4SCALE: f32 = 15.0;
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let mut mins = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..QK_K / 16 {
        let xs = &x[16 * j..16 * j + 16];
        let mut weights = [0.0f32; 16];
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            3,
            xs,
            &weights,
            &mut levels[16 * j..16 * j + 16],
            -0.5,
            0.1,
            15,
            true,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }

    let mut sc = [0u8; QK_K / 16];
    let d = if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..QK_K / 16 {
            sc[j] = nearest_int(iscale * scales[j]) as u8;
        }
        f16_bytes(max_scale / Q4SCALE)
    } else {
        f16_bytes(0.0)
    };
    let dmin = if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..QK_K / 16 {
            let l = nearest_int(iscale * mins[j]);
            sc[j] |= (l << 4) as u8;
        }
        f16_bytes(max_min / Q4SCALE)
    } else {
        f16_bytes(0.0)
    };
    let d_all = half::f16::from_le_bytes(d).to_f32();
    let dmin_all = half::f16::from_le_bytes(dmin).to_f32();
    for j in 0..QK_K / 16 {
        let dl = d_all * f32::from(sc[j] & 0x0f);
        if dl == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(sc[j] >> 4);
        for ii in 0..16 {
            let l = nearest_int((x[16 * j + ii] + dm) / dl);
            levels[16 * j + ii] = l.clamp(0, 3) as u8;
        }
    }

    let mut out = [0u8; Q2_K_BYTES];
    out[..16].copy_from_slice(&sc);
    out[16..80].copy_from_slice(&pack_2bit(&levels));
    out[80..82].copy_from_slice(&d);
    out[82..84].copy_from_slice(&dmin);
    out
}

/// ggml `quantize_row_q3_K_ref`, one super-block.
pub(super) fn quantize_block_q3_k(x: &[f32; QK_K]) -> [u8; Q3_K_BYTES] {
    let mut signed = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    let mut amax = 0.0f32;
    for j in 0..QK_K / 16 {
        scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut signed[16 * j..16 * j + 16]);
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
        }
    }

    let mut sc = [0u8; 12];
    let d = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..QK_K / 16 {
            let l = nearest_int(iscale * scales[j]) as i8;
            let l = (i32::from(l).clamp(-32, 31) + 32) as u8;
            if j < 8 {
                sc[j] = l & 0x0f;
            } else {
                sc[j - 8] |= (l & 0x0f) << 4;
            }
            sc[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
        }
        f16_bytes(1.0 / iscale)
    } else {
        f16_bytes(0.0)
    };

    // Levels 0..=7 from here on (ggml keeps them in the int8 `L`).
    let mut levels = signed.map(|l| l as u8);
    let d_all = half::f16::from_le_bytes(d).to_f32();
    for j in 0..QK_K / 16 {
        let low = if j < 8 { sc[j] & 0x0f } else { sc[j - 8] >> 4 };
        let high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        let s = i32::from(low | (high << 4)) - 32;
        let dl = d_all * s as f32;
        if dl == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let l = nearest_int(x[16 * j + ii] / dl).clamp(-4, 3);
            levels[16 * j + ii] = (l + 4) as u8;
        }
    }

    // High bit of the first 32 levels into bit 0 of hmask[0..32], the next 32 into bit 1, ...
    let mut hmask = [0u8; QK_K / 8];
    for (j, l) in levels.iter_mut().enumerate() {
        if *l > 3 {
            hmask[j % (QK_K / 8)] |= 1 << (j / (QK_K / 8));
            *l -= 4;
        }
    }

    let mut out = [0u8; Q3_K_BYTES];
    out[..32].copy_from_slice(&hmask);
    out[32..96].copy_from_slice(&pack_2bit(&levels));
    out[96..108].copy_from_slice(&sc);
    out[108..110].copy_from_slice(&d);
    out
}

/// Shared by Q4_K and Q5_K: ggml's per-sub-block `make_qkx2_quants` with weights
/// `sqrt(mean(x^2)) + |x|`, the 6-bit scales and mins packed into 12 bytes, `d` and `dmin`, and
/// the final levels `0..=nmax` requantized from the stored (f16-rounded) scales.
fn quantize_scale_min_k4(
    x: &[f32; QK_K],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> ([u8; 2], [u8; 2], [u8; 12], [u8; QK_K]) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; QK_K / 32];
    let mut mins = [0.0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut weights = [0.0f32; 32];
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut levels[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
            false,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }

    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls = scales.map(|s| (nearest_int(inv_scale * s) as u8).min(63));
    let lm = mins.map(|m| (nearest_int(inv_min * m) as u8).min(63));
    let sc = pack_scale_min_k4(&ls, &lm);
    let d = f16_bytes(max_scale / 63.0);
    let dmin = f16_bytes(max_min / 63.0);

    let d_all = half::f16::from_le_bytes(d).to_f32();
    let dmin_all = half::f16::from_le_bytes(dmin).to_f32();
    for j in 0..QK_K / 32 {
        let (s, m) = get_scale_min_k4(j, &sc);
        let dl = d_all * f32::from(s);
        if dl == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(m);
        for ii in 0..32 {
            let l = nearest_int((x[32 * j + ii] + dm) / dl);
            levels[32 * j + ii] = l.clamp(0, nmax) as u8;
        }
    }
    (d, dmin, sc, levels)
}

/// ggml `quantize_row_q4_K_ref`, one super-block.
pub(super) fn quantize_block_q4_k(x: &[f32; QK_K]) -> [u8; Q4_K_BYTES] {
    let (d, dmin, sc, levels) = quantize_scale_min_k4(x, 15, -1.0, 20);
    let mut out = [0u8; Q4_K_BYTES];
    out[..2].copy_from_slice(&d);
    out[2..4].copy_from_slice(&dmin);
    out[4..16].copy_from_slice(&sc);
    // Each 64 levels: the first 32 in the low nibbles of 32 bytes, the next 32 in the high.
    let qs = &mut out[16..];
    for j in (0..QK_K).step_by(64) {
        for l in 0..32 {
            qs[j / 2 + l] = levels[j + l] | (levels[j + l + 32] << 4);
        }
    }
    out
}

/// ggml `quantize_row_q5_K_ref`, one super-block.
pub(super) fn quantize_block_q5_k(x: &[f32; QK_K]) -> [u8; Q5_K_BYTES] {
    let (d, dmin, sc, levels) = quantize_scale_min_k4(x, 31, -0.5, 15);
    let mut qh = [0u8; QK_K / 8];
    let mut ql = [0u8; QK_K / 2];
    let mut m1 = 1u8;
    let mut m2 = 2u8;
    for n in (0..QK_K).step_by(64) {
        for j in 0..32 {
            let mut l1 = levels[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = levels[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[n / 2 + j] = l1 | (l2 << 4);
        }
        m1 = m1.wrapping_shl(2);
        m2 = m2.wrapping_shl(2);
    }
    let mut out = [0u8; Q5_K_BYTES];
    out[..2].copy_from_slice(&d);
    out[2..4].copy_from_slice(&dmin);
    out[4..16].copy_from_slice(&sc);
    out[16..48].copy_from_slice(&qh);
    out[48..].copy_from_slice(&ql);
    out
}

/// ggml `quantize_row_q6_K_ref`, one super-block.
pub(super) fn quantize_block_q6_k(x: &[f32; QK_K]) -> [u8; Q6_K_BYTES] {
    let mut signed = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for ib in 0..QK_K / 16 {
        let scale = make_qx_quants(
            32,
            &x[16 * ib..16 * ib + 16],
            &mut signed[16 * ib..16 * ib + 16],
        );
        scales[ib] = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    let mut out = [0u8; Q6_K_BYTES];
    if max_abs_scale < GROUP_MAX_EPS {
        // ggml zeroes the whole block and stores d = +0.0.
        return out;
    }

    let iscale = -128.0 / max_scale;
    let d = f16_bytes(1.0 / iscale);
    let mut sc = [0i8; QK_K / 16];
    for ib in 0..QK_K / 16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
    }
    // Levels 0..=63 from here on (ggml keeps them in the int8 `L`).
    let mut levels = signed.map(|l| l as u8);
    let d_all = half::f16::from_le_bytes(d).to_f32();
    for j in 0..QK_K / 16 {
        let dl = d_all * f32::from(sc[j]);
        if dl == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let l = nearest_int(x[16 * j + ii] / dl).clamp(-32, 31);
            levels[16 * j + ii] = (l + 32) as u8;
        }
    }

    // Per 128 levels: ql gets the low nibbles of (0..32, 64..96) and (32..64, 96..128) in 64
    // bytes, qh the top 2 bits of all four quarters in 32 bytes.
    let mut ql = [0u8; QK_K / 2];
    let mut qh = [0u8; QK_K / 4];
    for (half_index, j) in (0..QK_K).step_by(128).enumerate() {
        let ql = &mut ql[64 * half_index..64 * half_index + 64];
        let qh = &mut qh[32 * half_index..32 * half_index + 32];
        for l in 0..32 {
            let q1 = levels[j + l] & 0x0f;
            let q2 = levels[j + l + 32] & 0x0f;
            let q3 = levels[j + l + 64] & 0x0f;
            let q4 = levels[j + l + 96] & 0x0f;
            ql[l] = q1 | (q3 << 4);
            ql[l + 32] = q2 | (q4 << 4);
            qh[l] = (levels[j + l] >> 4)
                | ((levels[j + l + 32] >> 4) << 2)
                | ((levels[j + l + 64] >> 4) << 4)
                | ((levels[j + l + 96] >> 4) << 6);
        }
    }
    out[..128].copy_from_slice(&ql);
    out[128..192].copy_from_slice(&qh);
    for (byte, &s) in out[192..208].iter_mut().zip(&sc) {
        *byte = s as u8;
    }
    out[208..210].copy_from_slice(&d);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn block_sizes_match_the_dtype_table() {
        for (dtype, bytes) in [
            (DType::Q2_K, Q2_K_BYTES),
            (DType::Q3_K, Q3_K_BYTES),
            (DType::Q4_K, Q4_K_BYTES),
            (DType::Q5_K, Q5_K_BYTES),
            (DType::Q6_K, Q6_K_BYTES),
        ] {
            assert_eq!(dtype.block_bytes(), bytes as u64, "{dtype}");
            assert_eq!(dtype.block_elems(), QK_K as u64, "{dtype}");
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, want) in [
            (0.0, 0),
            (0.4999, 0),
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.6, -3),
            (31.49, 31),
            (4_194_303.0, 4_194_303),
            (-4_194_303.0, -4_194_303),
        ] {
            assert_eq!(nearest_int(x), want, "{x}");
        }
        // Outside ggml's asserted range it wraps instead of panicking.
        let _ = nearest_int(f32::MAX);
        let _ = nearest_int(f32::NAN);
    }

    #[test]
    fn scale_min_packing_reads_back() {
        let ls = [0, 1, 17, 63, 32, 5, 48, 63];
        let lm = [63, 0, 33, 2, 1, 62, 16, 47];
        let sc = pack_scale_min_k4(&ls, &lm);
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &sc), (ls[j], lm[j]), "sub-block {j}");
        }
    }

    /// ggml writes an all-zero super-block as all-zero bytes in every K-quant.
    #[test]
    fn all_zero_super_blocks_are_zero_bytes() {
        let x = [0.0f32; QK_K];
        assert!(quantize_block_q2_k(&x).iter().all(|&b| b == 0));
        assert!(quantize_block_q3_k(&x).iter().all(|&b| b == 0));
        assert!(quantize_block_q4_k(&x).iter().all(|&b| b == 0));
        assert!(quantize_block_q5_k(&x).iter().all(|&b| b == 0));
        assert!(quantize_block_q6_k(&x).iter().all(|&b| b == 0));
    }

    /// One group of 16 all zero inside an ordinary Q6_K block: its scale byte is 0, and its
    /// levels stay the 0 that `make_qx_quants` gives an all-zero group (not the zero point 32;
    /// either decodes to 0 under a zero scale).
    #[test]
    fn q6_k_zero_group_in_a_block() {
        let mut x: [f32; QK_K] = std::array::from_fn(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0);
        x[16..32].fill(0.0);
        let b = quantize_block_q6_k(&x);
        assert_eq!(b[192 + 1], 0);
        // Elements 16..32 sit in the low nibbles of ql[16..32] and bits 0..2 of qh[16..32].
        for l in 16..32 {
            assert_eq!(b[l] & 0x0f, 0, "ql {l}");
            assert_eq!(b[128 + l] & 3, 0, "qh {l}");
        }
        assert_ne!(b[192], 0);
    }

    #[test]
    fn make_q3_quants_fits_a_symmetric_ramp() {
        // x = 0.5 * (l - 4) for l in 0..8, twice: the exact levels and scale 0.5 (max = -2).
        let x: [f32; 16] = std::array::from_fn(|i| 0.5 * ((i % 8) as f32 - 4.0));
        let mut levels = [0i8; 16];
        let scale = make_q3_quants(4, &x, &mut levels);
        assert_eq!(scale, 0.5);
        for (i, &l) in levels.iter().enumerate() {
            assert_eq!(l as usize, i % 8);
        }
    }

    #[test]
    fn make_qkx2_quants_fits_an_affine_ramp() {
        // x = 0.25 * l - 1 for l in 0..16, twice: levels l, scale 0.25, min 1.
        let x: [f32; 32] = std::array::from_fn(|i| 0.25 * (i % 16) as f32 - 1.0);
        let weights = [1.0f32; 32];
        let mut levels = [0u8; 32];
        let (scale, min) = make_qkx2_quants(15, &x, &weights, &mut levels, -1.0, 0.1, 20, false);
        assert_eq!((scale, min), (0.25, 1.0));
        for (i, &l) in levels.iter().enumerate() {
            assert_eq!(l as usize, i % 16);
        }
    }
}
