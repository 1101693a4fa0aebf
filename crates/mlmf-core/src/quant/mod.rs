//! CPU quantizers: f32 rows into the block bytes GGUF stores and the dequant kernels read.
//!
//! Each type follows one reference, block by block, so its bytes match that tool exactly:
//!
//! | Types | Reference |
//! |---|---|
//! | F16, BF16 | gguf-py 0.19.0 `gguf/quants.py` (`astype(np.float16)`, `BF16.quantize_blocks`) |
//! | Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 | gguf-py 0.19.0 `quantize_blocks` (same bytes as ggml's `quantize_row_*_ref` on ordinary data) |
//! | Q2_K, Q3_K, Q4_K, Q5_K, Q6_K | ggml `ggml-quants.c` `quantize_row_*_ref` (no importance matrix) |
//! | IQ4_NL, IQ4_XS | ggml `quantize_iq4_nl` / `quantize_iq4_xs` (`ggml_quantize_chunk`'s path, no importance matrix) |
//! | MXFP4, TQ1_0, TQ2_0 | gguf-py 0.19.0 `quantize_blocks` (ggml's `quantize_row_*_ref` in numpy; see `mxfp4` and `ternary` for the inputs where gguf-py's casts are undefined) |
//!
//! Input checks: `row_len` must be a positive multiple of the block size and `data` a whole
//! number of rows. F16 and BF16 convert NaN and infinity as gguf-py does (NaN stays a quiet NaN,
//! infinity stays infinity, finite values too large become infinity). Block types cannot hold
//! NaN or infinity (ggml asserts or writes garbage), so any non-finite input is a
//! [`Error::NonFiniteInput`] naming its row, column and block; nothing is written for it.
//!
//! Blocks are written field by field with `to_le_bytes` in ggml-common.h's layout.

mod float;
mod iq4;
mod k_quants;
mod legacy;
mod mxfp4;
mod ternary;
pub mod values;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Whether [`quantize`] can write `dtype`.
pub fn supports(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::F16
            | DType::BF16
            | DType::Q4_0
            | DType::Q4_1
            | DType::Q5_0
            | DType::Q5_1
            | DType::Q8_0
            | DType::Q2_K
            | DType::Q3_K
            | DType::Q4_K
            | DType::Q5_K
            | DType::Q6_K
            | DType::IQ4_NL
            | DType::IQ4_XS
            | DType::MXFP4
            | DType::TQ1_0
            | DType::TQ2_0
    )
}

/// Why [`quantize`] cannot write `dtype` (for a type it cannot; a message, not a sentence start).
/// The i-quants on grids are decode-only: llama-quantize refuses IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS
/// and IQ2_S without an importance matrix ("Missing importance matrix ... in a very low-bit
/// quantization"; ggml's IQ1_S, IQ2_XXS and IQ2_XS quantizers assert one), and mlmf computes
/// none; IQ3_XXS and IQ3_S ggml can quantize without one, by a grid search mlmf does not
/// implement.
pub fn unsupported_reason(dtype: DType) -> &'static str {
    match dtype {
        DType::IQ1_S
        | DType::IQ1_M
        | DType::IQ2_XXS
        | DType::IQ2_XS
        | DType::IQ2_S
        | DType::IQ3_XXS => {
            "these i-quants need an importance matrix (llama-quantize refuses IQ1_S, IQ1_M, \
             IQ2_XXS, IQ2_XS, IQ2_S and IQ3_XXS without --imatrix, and ggml's IQ1_S, IQ2_XXS \
             and IQ2_XS quantizers require one), which mlmf does not compute; mlmf decodes them \
             but does not quantize to them (IQ4_NL and IQ4_XS need none)"
        }
        DType::IQ3_S => {
            "mlmf decodes IQ3_S but does not implement ggml's grid-search quantizer for it \
             (IQ4_NL and IQ4_XS quantize)"
        }
        _ if supports(dtype) => "it is supported",
        _ => "mlmf has no quantizer for it",
    }
}

/// Quantize `data`, rows of `row_len` values each (row-major, GGUF's `ne[0] = row_len`), to
/// `dtype`. Returns the stored bytes: row after row, each row `row_len / block` blocks.
///
/// ```
/// use mlmf_core::{quant, DType};
/// let row: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
/// let bytes = quant::quantize(DType::Q8_0, &row, 32)?;
/// assert_eq!(bytes.len(), 34);
/// # Ok::<(), mlmf_core::Error>(())
/// ```
pub fn quantize(dtype: DType, data: &[f32], row_len: usize) -> Result<Vec<u8>> {
    if !supports(dtype) {
        return Err(Error::UnsupportedQuant { dtype });
    }
    let block_elems = usize::try_from(dtype.block_elems()).unwrap_or(usize::MAX);
    let block_bytes = usize::try_from(dtype.block_bytes()).unwrap_or(usize::MAX);
    if row_len == 0 || !row_len.is_multiple_of(block_elems) {
        return Err(Error::QuantRowLength {
            dtype,
            row_len,
            block_elems,
        });
    }
    let data_len_error = || Error::QuantDataLength {
        dtype,
        len: data.len(),
        row_len,
    };
    if !data.len().is_multiple_of(row_len) {
        return Err(data_len_error());
    }
    let out_len = (data.len() / block_elems)
        .checked_mul(block_bytes)
        .ok_or_else(data_len_error)?;
    let mut out = Vec::with_capacity(out_len);
    for (r, row) in data.chunks_exact(row_len).enumerate() {
        if dtype != DType::F16 && dtype != DType::BF16 {
            check_finite(dtype, r, row, block_elems)?;
        }
        match dtype {
            DType::F16 => float::quantize_row_f16(row, &mut out),
            DType::BF16 => float::quantize_row_bf16(row, &mut out),
            DType::Q4_0 => each_block(row, &mut out, legacy::quantize_block_q4_0),
            DType::Q4_1 => each_block(row, &mut out, legacy::quantize_block_q4_1),
            DType::Q5_0 => each_block(row, &mut out, legacy::quantize_block_q5_0),
            DType::Q5_1 => each_block(row, &mut out, legacy::quantize_block_q5_1),
            DType::Q8_0 => each_block(row, &mut out, legacy::quantize_block_q8_0),
            DType::Q2_K => each_block(row, &mut out, k_quants::quantize_block_q2_k),
            DType::Q3_K => each_block(row, &mut out, k_quants::quantize_block_q3_k),
            DType::Q4_K => each_block(row, &mut out, k_quants::quantize_block_q4_k),
            DType::Q5_K => each_block(row, &mut out, k_quants::quantize_block_q5_k),
            DType::Q6_K => each_block(row, &mut out, k_quants::quantize_block_q6_k),
            DType::IQ4_NL => each_block(row, &mut out, iq4::quantize_block_iq4_nl),
            DType::IQ4_XS => each_block(row, &mut out, iq4::quantize_block_iq4_xs),
            DType::MXFP4 => each_block(row, &mut out, mxfp4::quantize_block_mxfp4),
            DType::TQ1_0 => each_block(row, &mut out, ternary::quantize_block_tq1_0),
            DType::TQ2_0 => each_block(row, &mut out, ternary::quantize_block_tq2_0),
            _ => return Err(Error::UnsupportedQuant { dtype }),
        }
    }
    debug_assert_eq!(out.len(), out_len);
    Ok(out)
}

/// The first NaN or infinity of `row`, as an error naming where it is.
fn check_finite(dtype: DType, row: usize, values: &[f32], block_elems: usize) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(column) => Err(Error::NonFiniteInput {
            dtype,
            row,
            column,
            block: column / block_elems,
            value: values.get(column).copied().unwrap_or(f32::NAN),
        }),
    }
}

/// Apply a block quantizer to every block of `row` (whose length is a multiple of `N`).
fn each_block<const N: usize, const B: usize>(
    row: &[f32],
    out: &mut Vec<u8>,
    block: fn(&[f32; N]) -> [u8; B],
) {
    for x in row.chunks_exact(N) {
        // `chunks_exact` yields slices of exactly N values, so the conversion always succeeds.
        if let Ok(x) = <&[f32; N]>::try_from(x) {
            out.extend_from_slice(&block(x));
        }
    }
}

/// The little-endian bytes of `x` as f16 (round to nearest even), ggml's `GGML_FP32_TO_FP16`.
fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_types_are_block_types_or_halves() {
        let supported: Vec<DType> = DType::all().filter(|&d| supports(d)).collect();
        assert_eq!(supported.len(), 17);
        for dtype in supported {
            let row = vec![0.5f32; 256];
            let bytes = quantize(dtype, &row, 256).unwrap();
            assert_eq!(
                bytes.len() as u64,
                dtype.byte_len(256).unwrap(),
                "{dtype}: bytes per row"
            );
        }
    }

    #[test]
    fn unsupported_type_is_an_error() {
        for dtype in [
            DType::F32,
            DType::Q8_1,
            DType::IQ2_XXS,
            DType::I8,
            DType::Q8_K,
        ] {
            assert!(matches!(
                quantize(dtype, &[0.0; 256], 256),
                Err(Error::UnsupportedQuant { dtype: d }) if d == dtype
            ));
        }
    }

    #[test]
    fn row_length_must_be_whole_blocks() {
        for (dtype, row_len) in [
            (DType::Q4_0, 48),
            (DType::Q8_0, 0),
            (DType::Q4_K, 128),
            (DType::F16, 0),
        ] {
            let data = vec![1.0; 256];
            assert!(
                matches!(
                    quantize(dtype, &data, row_len),
                    Err(Error::QuantRowLength { row_len: r, .. }) if r == row_len
                ),
                "{dtype} {row_len}"
            );
        }
    }

    #[test]
    fn data_must_be_whole_rows() {
        let data = vec![1.0; 96];
        assert!(matches!(
            quantize(DType::Q4_0, &data, 64),
            Err(Error::QuantDataLength {
                len: 96,
                row_len: 64,
                ..
            })
        ));
        assert_eq!(quantize(DType::Q4_0, &[], 64).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn non_finite_input_names_row_column_and_block() {
        for dtype in DType::all().filter(|&d| supports(d) && d.block_elems() > 1) {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut data = vec![0.25f32; 512];
                data[256 + 70] = bad;
                let err = quantize(dtype, &data, 256).unwrap_err();
                let block = 70 / dtype.block_elems() as usize;
                assert!(
                    matches!(
                        err,
                        Error::NonFiniteInput { row: 1, column: 70, block: b, value, .. }
                            if b == block && value.to_bits() == bad.to_bits()
                    ),
                    "{dtype}: {err}"
                );
            }
        }
    }
}
