//! The level tables and scale conversion that ggml's quantizers and decoders share
//! (ggml-common.h, ggml-impl.h), held once for the quantizers here and the CPU twins of the
//! decoders in mlmf-gpu (`ops/quant_decode.rs`).

/// ggml `kvalues_iq4nl`: the 16 non-linear levels of IQ4_NL and IQ4_XS, sorted.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// ggml `kvalues_mxfp4`: the E2M1 values of MXFP4, doubled (code 8 is +0, as in ggml).
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// ggml `GGML_E8M0_TO_FP32_HALF`: half the E8M0 scale, `2^(e - 128)`, with `e = 0` and `1` the
/// subnormals `2^-128` and `2^-127`, and no NaN (255 is `2^127`). Halved because
/// [`KVALUES_MXFP4`] is doubled.
pub fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml-impl.h: `0x00200000 << e` for e < 2, else `(e - 1) << 23`.
    #[test]
    fn e8m0_half_is_ggmls() {
        assert_eq!(e8m0_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_half(2), 2f32.powi(-126));
        assert_eq!(e8m0_half(127), 0.5);
        assert_eq!(e8m0_half(128), 1.0);
        assert_eq!(e8m0_half(255), 2f32.powi(127));
    }
}
