//! Loading part of a tensor (rows, or columns of a matrix) reads only that part's bytes and
//! gives exactly the bytes of the whole tensor's rows or columns, on the GPU and the CPU.

#[path = "../../../tests/common/mod.rs"]
mod common;

use mlmf_core::{Error, ModelFile, Slice};
use mlmf_gpu::Device;

/// Rows `r` and columns `c` of a row-major matrix of `rows` rows, cut from the file's bytes
/// of the whole tensor by hand.
fn cut(
    whole: &[u8],
    rows: usize,
    r: std::ops::Range<usize>,
    c: std::ops::Range<usize>,
    cols: usize,
) -> Vec<u8> {
    let row_bytes = whole.len() / rows;
    let per_col = row_bytes / cols; // f32: 4; for blocks the caller passes block counts
    let mut out = Vec::new();
    for row in r {
        let at = row * row_bytes;
        out.extend_from_slice(&whole[at + c.start * per_col..at + c.end * per_col]);
    }
    out
}

fn check(device: &Device, file: &ModelFile, name: &str, slices: &[Slice]) {
    let info = file.tensor(name).unwrap();
    let dims = info.shape.dims();
    let (rows, cols) = (dims[0], dims[1]);
    let block = info.dtype.block_elems() as usize;
    let whole = file.bytes(info);
    for slice in slices {
        let t = device.load_slice(file, name, slice).unwrap();
        let expected = match slice {
            Slice::Whole => whole.to_vec(),
            Slice::Rows(r) => cut(whole, rows, r.clone(), 0..cols / block, cols / block),
            Slice::Cols(c) => cut(
                whole,
                rows,
                0..rows,
                c.start / block..c.end / block,
                cols / block,
            ),
        };
        let got = t.to_bytes().unwrap();
        assert!(
            got == expected,
            "{name} {slice}: bytes differ on {}",
            device.describe()
        );
        let shape = match slice {
            Slice::Whole => vec![rows, cols],
            Slice::Rows(r) => vec![r.len(), cols],
            Slice::Cols(c) => vec![rows, c.len()],
        };
        assert_eq!(t.shape().dims(), &shape[..], "{name} {slice}");
    }
}

#[test]
fn rows_and_columns_of_real_matrices() {
    let gemma = ModelFile::open(common::model("gemma-3-270m-q4_k_m.gguf")).unwrap();
    let minilm = ModelFile::open(common::model("all-MiniLM-L6-v2/model.safetensors")).unwrap();
    for device in [Device::gpu().unwrap(), Device::Cpu] {
        // Q4_K (256-element blocks), Q6_K, Q5_0, Q8_0 and F32.
        let q = "blk.0.attn_output.weight";
        let info = gemma.tensor(q).unwrap();
        assert_eq!(info.dtype.name(), "Q4_K");
        let (rows, cols) = (info.shape.dims()[0], info.shape.dims()[1]);
        check(
            &device,
            &gemma,
            q,
            &[
                Slice::Rows(0..rows / 2),
                Slice::Rows(rows / 4..rows),
                Slice::Cols(256..cols),
                Slice::Cols(0..256),
            ],
        );
        let v = "blk.0.attn_v.weight";
        check(
            &device,
            &gemma,
            v,
            &[Slice::Rows(1..3), Slice::Cols(0..512)],
        );
        let w = "encoder.layer.0.attention.self.query.weight";
        check(
            &device,
            &minilm,
            w,
            &[
                Slice::Rows(0..192),
                Slice::Rows(96..384),
                Slice::Cols(32..160),
                Slice::Whole,
            ],
        );
    }
}

#[test]
fn a_column_range_through_a_block_names_the_tensor() {
    let gemma = ModelFile::open(common::model("gemma-3-270m-q4_k_m.gguf")).unwrap();
    let err = Device::Cpu
        .load_slice(&gemma, "blk.0.attn_output.weight", &Slice::Cols(0..100))
        .unwrap_err();
    match &err {
        Error::BadSlice { tensor, path, .. } => {
            assert_eq!(tensor, "blk.0.attn_output.weight");
            assert!(path.ends_with("gemma-3-270m-q4_k_m.gguf"));
        }
        other => panic!("expected BadSlice, got {other}"),
    }
    assert!(err.to_string().contains("Q4_K block"), "{err}");
}
