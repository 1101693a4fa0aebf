//! CPU quantizers against the quantization oracle (`fixtures/quant/`, see its README):
//! - F16, BF16, Q4_0..Q8_0: bytes identical to gguf-py 0.19.0's;
//! - Q2_K..Q6_K: bytes identical to ggml's `quantize_row_*_ref` (through libgguf), and the RMSE
//!   of our quantization, decoded by the test-only decoder below, no worse than the reference's
//!   per row and overall. The decoder is first checked bit for bit against `<type>.dequant`.
//! - IQ4_NL, IQ4_XS (no fixture): one super-block against libgguf 0.2.2's bytes.
//! - MXFP4, TQ1_0, TQ2_0 (no fixture): bytes identical to gguf-py 0.19.0's, run on random rows at
//!   many scales and on edge blocks (`tests/data/quantize_gguf_py.py`).
//! - Edge cases: all-zero and constant blocks, extreme values, NaN/inf, bad row lengths.

#[path = "../../../tests/common/mod.rs"]
mod common;

use mlmf_core::{quant, DType, Error, ModelFile};
use proptest::prelude::*;
use serde_json::Value as Json;

const ROWS: usize = 8;
const COLS: usize = 1024;

/// The types with fixture data (`<TYPE>.input/.quant/.dequant`).
const TYPES: [DType; 12] = [
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

/// Every type `quant::quantize` writes: the fixture types plus IQ4_NL, IQ4_XS, MXFP4, TQ1_0 and
/// TQ2_0.
const ALL_TYPES: [DType; 17] = [
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::IQ4_NL,
    DType::IQ4_XS,
    DType::MXFP4,
    DType::TQ1_0,
    DType::TQ2_0,
];

/// The types whose reference is gguf-py's quantizer run by the test itself.
const GGUF_PY_TYPES: [DType; 3] = [DType::MXFP4, DType::TQ1_0, DType::TQ2_0];

/// ggml `kvalues_mxfp4`: the E2M1 values, doubled.
const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// ggml `kvalues_iq4nl`.
const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

struct Case {
    input: Vec<f32>,
    quant: Vec<u8>,
    dequant: Vec<f32>,
}

fn fixture() -> ModelFile {
    ModelFile::open(common::fixtures().join("quant/expected.safetensors")).unwrap()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn case(file: &ModelFile, dtype: DType) -> Case {
    let get = |suffix: &str, want: DType| {
        let info = file.tensor(&format!("{dtype}.{suffix}")).unwrap();
        assert_eq!(info.dtype, want, "{dtype}.{suffix}");
        assert_eq!(info.shape.dims()[0], ROWS, "{dtype}.{suffix}");
        file.bytes(info).to_vec()
    };
    let case = Case {
        input: f32s(&get("input", DType::F32)),
        quant: get("quant", DType::U8),
        dequant: f32s(&get("dequant", DType::F32)),
    };
    assert_eq!(case.input.len(), ROWS * COLS);
    assert_eq!(case.dequant.len(), ROWS * COLS);
    assert_eq!(
        case.quant.len() as u64,
        dtype.byte_len((ROWS * COLS) as u64).unwrap()
    );
    case
}

fn rmse_json() -> Json {
    let path = common::fixtures().join("quant/rmse.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

// ---- test-only decoder: the README's "decoding arithmetic of the reference" ------------------

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Decode one block of `dtype` into `out` (block_elems values), products grouped as the
/// reference groups them, plain f32 (Rust never fuses into fma).
fn decode_block(dtype: DType, b: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F16 => out[0] = f16_at(b, 0),
        DType::BF16 => out[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
        DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => {
            let d = f16_at(b, 0);
            let has_min = matches!(dtype, DType::Q4_1 | DType::Q5_1);
            let m = if has_min { f16_at(b, 2) } else { 0.0 };
            let five = matches!(dtype, DType::Q5_0 | DType::Q5_1);
            let mut at = if has_min { 4 } else { 2 };
            let qh = if five {
                let v = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                at += 4;
                v
            } else {
                0
            };
            for (e, y) in out.iter_mut().enumerate() {
                let byte = b[at + e % 16];
                let low = if e < 16 { byte & 0x0f } else { byte >> 4 };
                let q = i32::from(low) | (((qh >> e) & 1) as i32) << 4;
                *y = match dtype {
                    DType::Q4_0 => d * (q - 8) as f32,
                    DType::Q5_0 => d * (q - 16) as f32,
                    _ => d * q as f32 + m,
                };
            }
        }
        DType::Q8_0 => {
            let d = f16_at(b, 0);
            for (e, y) in out.iter_mut().enumerate() {
                *y = f32::from(b[2 + e] as i8) * d;
            }
        }
        DType::Q2_K => {
            let (sc, qs) = (&b[0..16], &b[16..80]);
            let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
            for (e, y) in out.iter_mut().enumerate() {
                let q = (qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
                let s = sc[e / 16];
                *y = (d * f32::from(s & 0x0f)) * f32::from(q) - (dmin * f32::from(s >> 4));
            }
        }
        DType::Q3_K => {
            let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
            let d = f16_at(b, 108);
            for (e, y) in out.iter_mut().enumerate() {
                let j = e / 16;
                let low = if j < 8 { sc[j] & 0x0f } else { sc[j - 8] >> 4 };
                let high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
                let s = i32::from(low | (high << 4)) - 32;
                let q2 = i32::from((qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3);
                let hbit = (hmask[e % 32] >> (e / 32)) & 1;
                let q = q2 - if hbit == 1 { 0 } else { 4 };
                *y = (d * s as f32) * q as f32;
            }
        }
        DType::Q4_K | DType::Q5_K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let sc = &b[4..16];
            let five = dtype == DType::Q5_K;
            let (qh, qs) = if five {
                (&b[16..48], &b[48..176])
            } else {
                (&b[0..0], &b[16..144])
            };
            for (e, y) in out.iter_mut().enumerate() {
                let j = e / 32;
                let (s, m) = if j < 4 {
                    (sc[j] & 63, sc[j + 4] & 63)
                } else {
                    (
                        (sc[j + 4] & 0x0f) | ((sc[j - 4] >> 6) << 4),
                        (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4),
                    )
                };
                let byte = qs[(e / 64) * 32 + e % 32];
                let mut q = if e % 64 < 32 { byte & 0x0f } else { byte >> 4 };
                if five {
                    q |= ((qh[e % 32] >> j) & 1) << 4;
                }
                *y = (d * f32::from(s)) * f32::from(q) - (dmin * f32::from(m));
            }
        }
        DType::Q6_K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            for (e, y) in out.iter_mut().enumerate() {
                let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
                let lb = ql[h * 64 + l + 32 * (k % 2)];
                let low = if k < 2 { lb & 0x0f } else { lb >> 4 };
                let high = (qh[h * 32 + l] >> (2 * k)) & 3;
                let q = i32::from(low | (high << 4)) - 32;
                *y = (d * f32::from(sc[e / 16] as i8)) * q as f32;
            }
        }
        DType::IQ4_NL => {
            let d = f16_at(b, 0);
            for (e, y) in out.iter_mut().enumerate() {
                let byte = b[2 + e % 16];
                let q = if e < 16 { byte & 0x0f } else { byte >> 4 };
                *y = d * f32::from(KVALUES_IQ4NL[usize::from(q)]);
            }
        }
        DType::IQ4_XS => {
            let d = f16_at(b, 0);
            let scales_h = u16::from_le_bytes([b[2], b[3]]);
            for (e, y) in out.iter_mut().enumerate() {
                let ib = e / 32;
                let low = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0f;
                let high = ((scales_h >> (2 * ib)) & 3) as u8;
                let ls = i32::from(low | (high << 4)) - 32;
                let byte = b[8 + 16 * ib + e % 16];
                let q = if e % 32 < 16 { byte & 0x0f } else { byte >> 4 };
                *y = (d * ls as f32) * f32::from(KVALUES_IQ4NL[usize::from(q)]);
            }
        }
        DType::MXFP4 => {
            // ggml_e8m0_to_fp32_half: 2^(e - 128).
            let d = if b[0] < 2 {
                f32::from_bits(0x0020_0000 << b[0])
            } else {
                f32::from_bits(u32::from(b[0] - 1) << 23)
            };
            for (e, y) in out.iter_mut().enumerate() {
                let byte = b[1 + e % 16];
                let q = if e < 16 { byte & 0x0f } else { byte >> 4 };
                *y = f32::from(KVALUES_MXFP4[usize::from(q)]) * d;
            }
        }
        DType::TQ1_0 => {
            let d = f16_at(b, 52);
            for (e, y) in out.iter_mut().enumerate() {
                let (byte, digit) = match e {
                    0..160 => (b[e % 32], e / 32),
                    160..240 => (b[32 + (e - 160) % 16], (e - 160) / 16),
                    _ => (b[48 + (e - 240) % 4], (e - 240) / 4),
                };
                let q = byte.wrapping_mul(3u8.pow(digit as u32));
                *y = (((u16::from(q) * 3) >> 8) as i32 - 1) as f32 * d;
            }
        }
        DType::TQ2_0 => {
            let d = f16_at(b, 64);
            for (e, y) in out.iter_mut().enumerate() {
                let q = (b[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
                *y = (i32::from(q) - 1) as f32 * d;
            }
        }
        other => panic!("no test decoder for {other}"),
    }
}

fn decode(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    let be = dtype.block_elems() as usize;
    let bb = dtype.block_bytes() as usize;
    let mut out = vec![0.0f32; bytes.len() / bb * be];
    for (b, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
        decode_block(dtype, b, y);
    }
    out
}

fn rmse(a: &[f32], b: &[f32]) -> f64 {
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    (sum / a.len() as f64).sqrt()
}

fn first_difference(a: &[u8], b: &[u8], row_bytes: usize, block_bytes: usize) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        None => "lengths differ".into(),
        Some(i) => format!(
            "first difference at byte {i} (row {}, block {}, byte {} of the block): {:#04x} vs {:#04x}",
            i / row_bytes,
            (i % row_bytes) / block_bytes,
            i % block_bytes,
            a[i],
            b[i]
        ),
    }
}

// ---- the checks -------------------------------------------------------------------------------

#[test]
fn test_decoder_matches_fixture_dequant_bit_for_bit() {
    let file = fixture();
    for dtype in TYPES {
        let case = case(&file, dtype);
        let decoded = decode(dtype, &case.quant);
        for (i, (&got, &want)) in decoded.iter().zip(&case.dequant).enumerate() {
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{dtype}: element {i} (row {}, column {}): {got} vs {want}",
                i / COLS,
                i % COLS
            );
        }
    }
}

/// Quantize `<type>.input`, compare the bytes with `<type>.quant` and the RMSE (of our bytes,
/// decoded) with the reference, per row and overall.
fn check_type(dtype: DType) {
    let file = fixture();
    let case = case(&file, dtype);
    let json = rmse_json();
    let reference = &json[dtype.name()];
    let ours = quant::quantize(dtype, &case.input, COLS).unwrap();
    assert_eq!(ours.len(), case.quant.len(), "{dtype}: byte count");

    let decoded = decode(dtype, &ours);
    let total = rmse(&decoded, &case.input);
    let ref_total = reference["rmse"].as_f64().unwrap();
    let per_row = reference["rmse_per_row"].as_array().unwrap();
    let mut report = format!("{dtype}: RMSE {total:.6e} (reference {ref_total:.6e})");
    for r in 0..ROWS {
        let got = rmse(
            &decoded[r * COLS..(r + 1) * COLS],
            &case.input[r * COLS..(r + 1) * COLS],
        );
        let want = per_row[r].as_f64().unwrap();
        report += &format!("\n  row {r}: {got:.6e} (reference {want:.6e})");
        assert!(
            got <= want * (1.0 + 1e-9),
            "{dtype} row {r}: RMSE {got:e} worse than the reference {want:e}"
        );
    }
    eprintln!("{report}");
    assert!(total <= ref_total * (1.0 + 1e-9), "{report}");

    let row_bytes = ours.len() / ROWS;
    assert!(
        ours == case.quant,
        "{dtype}: bytes differ from the fixture: {}",
        first_difference(&ours, &case.quant, row_bytes, dtype.block_bytes() as usize)
    );
}

#[test]
fn f16_bytes_match_gguf_py() {
    check_type(DType::F16);
}

#[test]
fn bf16_bytes_match_gguf_py() {
    check_type(DType::BF16);
}

#[test]
fn q4_0_bytes_match_gguf_py() {
    check_type(DType::Q4_0);
}

#[test]
fn q4_1_bytes_match_gguf_py() {
    check_type(DType::Q4_1);
}

#[test]
fn q5_0_bytes_match_gguf_py() {
    check_type(DType::Q5_0);
}

#[test]
fn q5_1_bytes_match_gguf_py() {
    check_type(DType::Q5_1);
}

#[test]
fn q8_0_bytes_match_gguf_py() {
    check_type(DType::Q8_0);
}

#[test]
fn q2_k_bytes_match_ggml_ref() {
    check_type(DType::Q2_K);
}

#[test]
fn q3_k_bytes_match_ggml_ref() {
    check_type(DType::Q3_K);
}

#[test]
fn q4_k_bytes_match_ggml_ref() {
    check_type(DType::Q4_K);
}

#[test]
fn q5_k_bytes_match_ggml_ref() {
    check_type(DType::Q5_K);
}

#[test]
fn q6_k_bytes_match_ggml_ref() {
    check_type(DType::Q6_K);
}

/// Row 0 of every fixture input has an all-zero super-block at columns 256..512: it must come
/// back as exact zeros.
#[test]
fn all_zero_blocks_decode_to_zero() {
    let file = fixture();
    for dtype in TYPES {
        let case = case(&file, dtype);
        assert!(case.input[256..512].iter().all(|&v| v == 0.0), "{dtype}");
        let ours = quant::quantize(dtype, &case.input[..COLS], COLS).unwrap();
        let decoded = decode(dtype, &ours);
        assert!(
            decoded[256..512].iter().all(|&v| v == 0.0),
            "{dtype}: {:?}",
            &decoded[256..272]
        );
    }
}

/// IQ4_NL and IQ4_XS have no fixture data: one super-block of exactly representable values
/// (a ramp at five group scales, an all-zero group, an outlier) against the bytes libgguf 0.2.2
/// `quantize_rows` (ggml's `quantize_iq4_nl` / `quantize_iq4_xs`, no importance matrix) writes
/// for it, computed in numpy float32 as below.
#[test]
fn iq4_bytes_match_libgguf() {
    let mut x: Vec<f32> = (0..256)
        .map(|i| (((i * 37) % 101) as f32 - 50.0) / 25.0 * (1 + (i / 32) % 5) as f32)
        .collect();
    x[64..96].fill(0.0);
    x[200] = 40.0;
    let expected = [
        (
            DType::IQ4_NL,
            "4424e035acf157ce1369df249be136adf258f6a7630fc942fea721ec751fda530eb842fd\
             000088888888888888888888888888888888fc2b0269df138be035adf147ce1269df249b\
             47ad31ec8520db641eb942fda731ec751fca17a48520db641fc942fea731ec851fda630e\
             0ab59887798887998877908879888779887754aa1fc953fea731ec8520db641eb942fda7",
        ),
        (
            DType::IQ4_XS,
            "0a21a645d260e8b0d146ace257bd2379ce358be146acf268630fc942fea620ec741fda53\
             0fb831fd888888888888888888888888888888880269df138be035adf147ce0269ef249c\
             31ec8520db630fc942fda731ec751fda8631ca642eb953ed9742db852eca641e98877988\
             8799887790887988877988771fc953fea731ec8520db641eb942fda7",
        ),
    ];
    for (dtype, hex) in expected {
        let want: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let got = quant::quantize(dtype, &x, 256).unwrap();
        assert!(
            got == want,
            "{dtype}: {}",
            first_difference(&got, &want, got.len(), dtype.block_bytes() as usize)
        );
        // The zero group decodes to zeros; the non-linear levels beat Q4_0 (4.5 bits per weight)
        // with 4.5 (IQ4_NL) and 4.25 (IQ4_XS).
        let decoded = decode(dtype, &got);
        assert!(decoded[64..96].iter().all(|&v| v == 0.0), "{dtype}");
        let err = rmse(&decoded, &x);
        let q4_0 = rmse(
            &decode(DType::Q4_0, &quant::quantize(DType::Q4_0, &x, 256).unwrap()),
            &x,
        );
        eprintln!("{dtype}: RMSE {err} (Q4_0: {q4_0})");
        assert!(err < q4_0, "{dtype}: RMSE {err}, Q4_0 {q4_0}");
    }
}

/// Constant rows (positive, negative, small, large) decode within 1% of the constant. (Below
/// about 0.06 the K-quants' f16 super-block scales turn subnormal and the resolution is absolute.)
/// Not MXFP4: its levels are 0, 0.5, 1, 1.5, 2, 3, 4, 6 times a power of two, so a constant
/// such as 3.25 is 8% from the nearest; TQ1_0 and TQ2_0 hold constants exactly (level 1 times
/// `d = |c|`).
#[test]
fn constant_blocks() {
    for dtype in ALL_TYPES.into_iter().filter(|&d| d != DType::MXFP4) {
        for c in [1.0f32, -3.25, 0.5, 1000.0, -0.125] {
            let row = vec![c; 256];
            let decoded = decode(dtype, &quant::quantize(dtype, &row, 256).unwrap());
            for &v in &decoded {
                assert!(
                    (v - c).abs() <= 0.01 * c.abs(),
                    "{dtype}: constant {c} decodes to {v}"
                );
            }
        }
    }
}

/// `tests/data/quantize_gguf_py.py`'s bytes for `data` (rows of `row_len`) as `dtype`.
fn gguf_py_quantize(dtype: DType, data: &[f32], row_len: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.f32"), dir.path().join("out.bin"));
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&input, bytes).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/quantize_gguf_py.py"
    );
    let status = std::process::Command::new(common::python())
        .arg(script)
        .arg(&input)
        .arg(dtype.name())
        .arg(row_len.to_string())
        .arg(&output)
        .status()
        .unwrap();
    assert!(status.success(), "{script} {dtype}");
    std::fs::read(&output).unwrap()
}

/// Rows of 256 for the gguf-py comparison: random values at scales from 2^-100 to 2^100 (TQ's
/// f16 scale overflows to infinity above 65504, as gguf-py's does), then edge blocks of 32: zero,
/// constant, exact ties between levels, a maximum just below a power of two (where float32
/// `log2` rounds up to the exponent), the smallest MXFP4 scales (e8m0 0 and 1) and the largest
/// magnitudes. Left out: blocks whose largest magnitude is below 2^-125 (MXFP4) or 2^-128 (TQ),
/// where gguf-py casts a negative or infinite float to an integer (undefined; see
/// `quant/mxfp4.rs` and `quant/ternary.rs`).
fn gguf_py_inputs() -> Vec<f32> {
    let mut data = Vec::new();
    for (i, scale) in [-100, -40, -10, -3, 0, 1, 4, 10, 17, 40, 100]
        .iter()
        .enumerate()
    {
        let s = 2f32.powi(*scale);
        data.extend(
            common::random_f32(4 * 256, 11 + i as u64)
                .iter()
                .map(|v| v * s),
        );
    }
    let below = |p: f32| f32::from_bits(p.to_bits() - 1);
    let mut edge: Vec<[f32; 32]> = vec![[0.0; 32], [-0.0; 32], [1.0; 32], [-3.25; 32]];
    // Ties: with amax 6 (MXFP4 d = 0.5, TQ d = 6) every midpoint of MXFP4's levels, and +-3
    // (TQ's x * id = +-0.5).
    let mut ties = [0.0f32; 32];
    for (j, t) in ties.iter_mut().enumerate() {
        let levels = [0.0f32, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
        let k = j % 7;
        let mid = (levels[k] + levels[k + 1]) / 2.0;
        *t = if j % 2 == 0 { mid } else { -mid };
    }
    ties[0] = 6.0;
    ties[31] = -3.0;
    edge.push(ties);
    for p in [1.0f32, 8.0, 2f32.powi(20), 2f32.powi(-60), 2f32.powi(100)] {
        let mut b: [f32; 32] = std::array::from_fn(|j| p * (j as f32 / 40.0 - 0.4));
        b[5] = below(p);
        edge.push(b);
    }
    for amax in [
        2f32.powi(-125),
        1.5 * 2f32.powi(-124),
        2f32.powi(-123),
        f32::MAX,
    ] {
        let b: [f32; 32] = std::array::from_fn(|j| amax * ((j % 9) as f32 / 4.0 - 1.0));
        edge.push(b);
    }
    while !edge.len().is_multiple_of(8) {
        edge.push([0.125; 32]);
    }
    data.extend(edge.iter().flatten());
    data
}

#[test]
fn mxfp4_and_ternary_bytes_match_gguf_py() {
    let data = gguf_py_inputs();
    for dtype in GGUF_PY_TYPES {
        let ours = quant::quantize(dtype, &data, 256).unwrap();
        let want = gguf_py_quantize(dtype, &data, 256);
        let row_bytes = dtype.byte_len(256).unwrap() as usize;
        assert!(
            ours == want,
            "{dtype}: {}",
            first_difference(&ours, &want, row_bytes, dtype.block_bytes() as usize)
        );
        // MXFP4's zero blocks decode to zeros (TQ's super-blocks of 256 span several edge
        // blocks, this one with a scale that overflows f16).
        let decoded = decode(dtype, &ours);
        let edge = 11 * 4 * 256;
        if dtype == DType::MXFP4 {
            assert!(decoded[edge..edge + 64].iter().all(|&v| v == 0.0));
        }
        eprintln!("{dtype}: RMSE {} on the unit-scale rows", {
            let unit = 4 * 4 * 256..5 * 4 * 256;
            rmse(&decoded[unit.clone()], &data[unit])
        });
    }
}

/// A block of tiny values next to a block of huge ones, and values at the edges of f32:
/// quantizing never panics and keeps the byte count; ordinary blocks stay accurate.
#[test]
fn extreme_values_do_not_panic() {
    let mut row = vec![0.0f32; 512];
    for (i, v) in row.iter_mut().enumerate() {
        *v = match i % 7 {
            0 => f32::MAX,
            1 => -f32::MAX,
            2 => f32::MIN_POSITIVE,
            3 => -1e-40, // subnormal
            4 => 1e30,
            5 => -0.0,
            _ => 1.0,
        };
    }
    for dtype in ALL_TYPES {
        let bytes = quant::quantize(dtype, &row, 256).unwrap();
        assert_eq!(bytes.len() as u64, dtype.byte_len(512).unwrap(), "{dtype}");
    }
}

#[test]
fn non_finite_values_are_typed_errors() {
    for dtype in ALL_TYPES {
        let mut data = vec![0.5f32; 2 * 512];
        data[512 + 300] = f32::NAN;
        match quant::quantize(dtype, &data, 512) {
            Err(Error::NonFiniteInput {
                row, column, block, ..
            }) => {
                assert!(dtype.block_elems() > 1, "{dtype}");
                assert_eq!((row, column), (1, 300), "{dtype}");
                assert_eq!(block, 300 / dtype.block_elems() as usize, "{dtype}");
            }
            // F16 and BF16 hold NaN and infinity: gguf-py converts them.
            Ok(bytes) => {
                assert_eq!(dtype.block_elems(), 1, "{dtype}");
                let decoded = decode(dtype, &bytes);
                assert!(decoded[512 + 300].is_nan(), "{dtype}");
                assert_eq!(decoded[0], 0.5, "{dtype}");
            }
            Err(e) => panic!("{dtype}: {e}"),
        }
        data[512 + 300] = f32::NEG_INFINITY;
        if dtype.block_elems() == 1 {
            let decoded = decode(dtype, &quant::quantize(dtype, &data, 512).unwrap());
            assert_eq!(decoded[512 + 300], f32::NEG_INFINITY, "{dtype}");
        } else {
            assert!(matches!(
                quant::quantize(dtype, &data, 512),
                Err(Error::NonFiniteInput {
                    row: 1,
                    column: 300,
                    ..
                })
            ));
        }
    }
}

#[test]
fn row_length_not_whole_blocks_is_a_typed_error() {
    for dtype in ALL_TYPES {
        let block = dtype.block_elems() as usize;
        let bad = if block == 1 { 0 } else { block + block / 2 };
        let data = vec![1.0f32; 3 * block];
        let err = quant::quantize(dtype, &data, bad).unwrap_err();
        assert!(
            matches!(err, Error::QuantRowLength { row_len, block_elems, .. }
                if row_len == bad && block_elems == block),
            "{dtype}: {err}"
        );
    }
    // Whole blocks, but not a whole number of rows.
    let err = quant::quantize(DType::Q4_K, &[1.0; 768], 512).unwrap_err();
    assert!(
        matches!(
            err,
            Error::QuantDataLength {
                len: 768,
                row_len: 512,
                ..
            }
        ),
        "{err}"
    );
    let err = quant::quantize(DType::IQ2_XXS, &[1.0; 256], 256).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnsupportedQuant {
                dtype: DType::IQ2_XXS
            }
        ),
        "{err}"
    );
    assert!(!quant::supports(DType::IQ2_XXS));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any finite input (ordinary values at any scale mixed with arbitrary normals, subnormals
    /// and zeros) quantizes without panicking, to the right number of bytes.
    #[test]
    fn any_finite_input_quantizes(
        data in prop::collection::vec(
            prop_oneof![
                3 => -1.0f32..1.0,
                1 => prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO,
            ],
            512,
        ),
        scale_exp in -40i32..40,
    ) {
        let scale = 2f32.powi(scale_exp);
        let data: Vec<f32> = data.iter().map(|&v| if v.abs() < 1.0 { v * scale } else { v }).collect();
        for dtype in ALL_TYPES {
            let bytes = quant::quantize(dtype, &data, 256).unwrap();
            prop_assert_eq!(bytes.len() as u64, dtype.byte_len(512).unwrap());
        }
    }
}
