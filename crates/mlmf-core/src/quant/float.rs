//! F16 and BF16, element by element, as gguf-py 0.19.0 writes them (`gguf/quants.py`).

/// gguf-py `quantize(data, F16)` = `data.astype(np.float16)`: round to nearest even, overflow to
/// infinity, subnormals kept. NaN stays NaN with its sign and top payload bits, made quiet.
pub(super) fn quantize_row_f16(row: &[f32], out: &mut Vec<u8>) {
    for &x in row {
        out.extend_from_slice(&super::f16_bytes(x));
    }
}

/// gguf-py `BF16.quantize_blocks` (= ggml `ggml_compute_fp32_to_bf16`): a NaN keeps its top 16
/// bits with the quiet bit set; everything else rounds to nearest even on the top 16 bits
/// (so the largest finite values round to infinity).
pub(super) fn quantize_row_bf16(row: &[f32], out: &mut Vec<u8>) {
    for &x in row {
        out.extend_from_slice(&bf16_bits(x).to_le_bytes());
    }
}

fn bf16_bits(x: f32) -> u16 {
    let mut n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        // force NaN to quiet
        n = (n & 0xffff_0000) | (64 << 16);
    }
    // round to nearest even, in 64 bits as gguf-py does (no overflow)
    let rounded = (u64::from(n) + (0x7fff + u64::from((n >> 16) & 1))) >> 16;
    rounded as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bits(x: f32) -> u16 {
        let mut out = Vec::new();
        quantize_row_f16(&[x], &mut out);
        u16::from_le_bytes([out[0], out[1]])
    }

    #[test]
    fn f16_rounds_to_nearest_even() {
        assert_eq!(f16_bits(1.0), 0x3c00);
        // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to the even mantissa.
        assert_eq!(f16_bits(1.0 + f32::powi(2.0, -11)), 0x3c00);
        assert_eq!(f16_bits(1.0 + 3.0 * f32::powi(2.0, -11)), 0x3c02);
        assert_eq!(f16_bits(-2.0), 0xc000);
        assert_eq!(f16_bits(65504.0), 0x7bff);
        assert_eq!(f16_bits(65520.0), 0x7c00); // rounds up to infinity
        assert_eq!(f16_bits(f32::INFINITY), 0x7c00);
        assert_eq!(f16_bits(f32::NEG_INFINITY), 0xfc00);
        assert_eq!(f16_bits(f32::powi(2.0, -24)), 0x0001); // smallest subnormal
        assert_eq!(f16_bits(f32::powi(2.0, -26)), 0x0000); // below half of it
        assert_eq!(f16_bits(-0.0), 0x8000);
        let nan = f16_bits(f32::NAN);
        assert_eq!(nan & 0x7c00, 0x7c00);
        assert_ne!(nan & 0x03ff, 0);
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80); // tie, even stays
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82); // tie, odd rounds up
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(bf16_bits(f32::MAX), 0x7f80); // rounds to infinity
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
        assert_eq!(bf16_bits(f32::NEG_INFINITY), 0xff80);
        // A signalling NaN whose payload lies only in the low 16 bits stays a NaN (quiet).
        assert_eq!(bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(bf16_bits(f32::from_bits(0xffc1_2345)), 0xffc1);
    }
}
