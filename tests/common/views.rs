//! What `crates/mlmf-core/tests/data/pytorch_zip_views.pt` holds (see `views_checkpoint` in
//! `make_pytorch_fixtures.py`, which wrote it): for each tensor, its dtype, shape, the bytes of
//! the file its elements span, and its own bytes in row-major order. The values are written
//! here from the definitions of the views (`w[:, ::2]` is `w[r][2c]`, ...), not by gathering:
//! they are the oracle the gathering code is checked against.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../mlmf-core/tests/data/pytorch_zip_views.pt")
}

pub struct Expected {
    pub name: &'static str,
    /// Its safetensors name (`F32`, `I64`, `F16`).
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    /// Length of the byte range the tensor's elements lie in (gaps included).
    pub span: u64,
    /// The tensor's bytes, row-major.
    pub bytes: Vec<u8>,
}

fn f32s(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// `w` = 0..48 as a 4x12 float32 matrix, `w[r][c]`.
fn w(r: usize, c: usize) -> f32 {
    (12 * r + c) as f32
}

/// `v` = 100..228 as a 2x64 float32 matrix.
fn v(r: usize, c: usize) -> f32 {
    (100 + 64 * r + c) as f32
}

fn grid(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f32) -> Vec<u8> {
    f32s(
        (0..rows)
            .flat_map(|r| (0..cols).map(move |c| (r, c)))
            .map(|(r, c)| f(r, c)),
    )
}

/// Every tensor, in the file's order.
pub fn expected() -> Vec<Expected> {
    let e = |name, dtype, shape: &[usize], span, bytes| Expected {
        name,
        dtype,
        shape: shape.to_vec(),
        span,
        bytes,
    };
    let h_every_other: Vec<u8> = [0.0f32, 2.0, 4.0, 6.0]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    vec![
        e("w", "F32", &[4, 12], 192, grid(4, 12, w)),
        // Last element at 3 * 12 + 5 * 2 = 46: 47 floats spanned, 24 taken.
        e(
            "w_every_other",
            "F32",
            &[4, 6],
            188,
            grid(4, 6, |r, c| w(r, 2 * c)),
        ),
        e("w_col5", "F32", &[4], 148, grid(1, 4, |_, r| w(r, 5))),
        e(
            "w_cols3_5",
            "F32",
            &[4, 2],
            152,
            grid(4, 2, |r, c| w(r, 3 + c)),
        ),
        e(
            "w_rows_step",
            "F32",
            &[2, 11],
            140,
            grid(2, 11, |r, c| w(2 * r, 1 + c)),
        ),
        e("w_t", "F32", &[12, 4], 192, grid(12, 4, |i, j| w(j, i))),
        e("w_elem", "F32", &[], 4, f32s([w(2, 7)])),
        e(
            "bn.num_batches_tracked",
            "I64",
            &[],
            8,
            1234i64.to_le_bytes().to_vec(),
        ),
        e("temperature", "F32", &[], 4, f32s([0.07])),
        // Stride 0: three elements over one stored float.
        e("bias_expanded", "F32", &[3], 4, f32s([1.5; 3])),
        e(
            "v_every_other",
            "F32",
            &[2, 32],
            508,
            grid(2, 32, |r, c| v(r, 2 * c)),
        ),
        e(
            "v_copy",
            "F32",
            &[2, 32],
            256,
            grid(2, 32, |r, c| v(r, 2 * c)),
        ),
        e("h_every_other", "F16", &[2, 2], 14, h_every_other),
        e("w_tied", "F32", &[4, 12], 192, grid(4, 12, w)),
    ]
}

/// The 0-d tensors, in the file's order.
pub const SCALARS: [&str; 3] = ["w_elem", "bn.num_batches_tracked", "temperature"];
