//! A part of a tensor that one device or rank holds: the whole tensor, a range of its rows (the
//! first dimension, numpy order), or a range of the columns of a matrix; and the bytes of the
//! file that part lies in, so that loading it reads nothing else.
//!
//! Rows of a block-quantized tensor hold whole blocks (GGUF stores each row as `ne[0] /
//! block_elems` blocks), so any row range is whole blocks, except for a vector, whose "rows"
//! are its elements. Columns cut every row: a column range must start and end on a block
//! boundary, and one that does not is [`Error::BadSlice`] naming the tensor.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use super::TensorInfo;
use crate::error::{Error, Result};
use crate::shape::Shape;

/// Which part of a tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Slice {
    Whole,
    /// Rows `start..end` of the first dimension (elements, for a vector).
    Rows(Range<usize>),
    /// Columns `start..end` of a matrix (the second dimension).
    Cols(Range<usize>),
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slice::Whole => f.write_str("the whole tensor"),
            Slice::Rows(r) => write!(f, "rows {}..{}", r.start, r.end),
            Slice::Cols(c) => write!(f, "columns {}..{}", c.start, c.end),
        }
    }
}

/// Bytes of one file: `count` pieces of `len` bytes, the first at absolute offset `start`, each
/// `stride` bytes after the one before. A row slice is one piece; a column slice is one piece
/// per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ByteRange {
    pub start: u64,
    pub len: u64,
    pub stride: u64,
    pub count: u64,
}

impl ByteRange {
    /// Bytes in all the pieces.
    pub fn total(&self) -> u64 {
        self.len * self.count
    }

    /// One past the last byte of the last piece.
    pub fn end(&self) -> u64 {
        match self.count {
            0 => self.start,
            n => self.start + (n - 1) * self.stride + self.len,
        }
    }
}

/// What a slice of a tensor is: its shape and where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceLayout {
    pub shape: Shape,
    /// In the file that holds the tensor ([`super::ModelFile::file_of`]).
    pub bytes: ByteRange,
}

impl Slice {
    /// The shape and byte range of this part of `info`, checked against its shape and its
    /// dtype's blocks. `path` names the file in errors.
    pub fn layout(&self, path: &Path, info: &TensorInfo) -> Result<SliceLayout> {
        let bad = |reason: String| Error::BadSlice {
            path: path.to_path_buf(),
            tensor: info.name.clone(),
            slice: self.to_string(),
            reason,
        };
        let whole = ByteRange {
            start: info.range.start,
            len: info.byte_len(),
            stride: 0,
            count: 1,
        };
        if *self == Slice::Whole {
            return Ok(SliceLayout {
                shape: info.shape.clone(),
                bytes: whole,
            });
        }
        if info.strides.is_some() {
            return Err(bad(
                "it is a strided view; only whole views are loaded".into()
            ));
        }
        let dims = info.shape.dims();
        let dtype = info.dtype;
        let block = dtype.block_elems() as usize;
        let cuts_block = |at: usize| !at.is_multiple_of(block);
        match self {
            Slice::Whole => unreachable!("handled above"),
            Slice::Rows(r) => {
                let Some((&rows, rest)) = dims.split_first() else {
                    return Err(bad("a scalar has no rows".into()));
                };
                check_range(r, rows).map_err(&bad)?;
                let row_elems: usize = rest.iter().product();
                if rest.is_empty() && (cuts_block(r.start) || cuts_block(r.end)) {
                    return Err(bad(format!(
                        "it would cut a {} block of {block} elements",
                        dtype.name()
                    )));
                }
                let (start, len) = if rest.is_empty() {
                    let b = dtype.block_bytes();
                    (
                        (r.start / block) as u64 * b,
                        ((r.end - r.start) / block) as u64 * b,
                    )
                } else {
                    // Whole blocks: the parser checked the tensor's byte length.
                    let row_bytes = dtype.byte_len(row_elems as u64).ok_or_else(|| {
                        bad(format!("a row of {row_elems} elements is not whole blocks"))
                    })?;
                    (
                        r.start as u64 * row_bytes,
                        (r.end - r.start) as u64 * row_bytes,
                    )
                };
                let mut shape = dims.to_vec();
                shape[0] = r.end - r.start;
                Ok(SliceLayout {
                    shape: Shape::new(shape).ok_or_else(|| bad("shape overflows".into()))?,
                    bytes: ByteRange {
                        start: info.range.start + start,
                        len,
                        stride: 0,
                        count: 1,
                    },
                })
            }
            Slice::Cols(c) => {
                let &[rows, cols] = dims else {
                    return Err(bad(format!(
                        "columns are taken of matrices; its shape is {}",
                        info.shape
                    )));
                };
                check_range(c, cols).map_err(&bad)?;
                if cuts_block(c.start) || cuts_block(c.end) {
                    return Err(bad(format!(
                        "it would cut a {} block of {block} elements (columns must be multiples of {block})",
                        dtype.name()
                    )));
                }
                let b = dtype.block_bytes();
                let row_bytes = (cols / block) as u64 * b;
                Ok(SliceLayout {
                    shape: Shape::new(vec![rows, c.end - c.start])
                        .ok_or_else(|| bad("shape overflows".into()))?,
                    bytes: ByteRange {
                        start: info.range.start + (c.start / block) as u64 * b,
                        len: ((c.end - c.start) / block) as u64 * b,
                        stride: row_bytes,
                        count: rows as u64,
                    },
                })
            }
        }
    }
}

fn check_range(r: &Range<usize>, n: usize) -> std::result::Result<(), String> {
    if r.start > r.end || r.end > n {
        return Err(format!("the dimension has {n}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    fn info(dtype: DType, dims: Vec<usize>, at: u64) -> TensorInfo {
        let shape = Shape::new(dims).unwrap();
        let len = dtype.byte_len(shape.elem_count()).unwrap();
        TensorInfo {
            name: "w".into(),
            dtype,
            shape,
            file: 0,
            range: at..at + len,
            strides: None,
        }
    }

    #[test]
    fn rows_of_a_quantized_matrix_are_one_range() {
        // Q4_0: 32 elements in 18 bytes; a 4 x 64 matrix has 36-byte rows.
        let t = info(DType::Q4_0, vec![4, 64], 100);
        let l = Slice::Rows(1..3).layout(Path::new("f"), &t).unwrap();
        assert_eq!(l.shape.dims(), &[2, 64]);
        assert_eq!(
            l.bytes,
            ByteRange {
                start: 136,
                len: 72,
                stride: 0,
                count: 1
            }
        );
    }

    #[test]
    fn columns_are_a_piece_per_row_on_block_boundaries() {
        let t = info(DType::Q4_0, vec![3, 96], 0);
        let l = Slice::Cols(32..96).layout(Path::new("f"), &t).unwrap();
        assert_eq!(l.shape.dims(), &[3, 64]);
        assert_eq!(
            l.bytes,
            ByteRange {
                start: 18,
                len: 36,
                stride: 54,
                count: 3
            }
        );
        assert_eq!(l.bytes.end(), 2 * 54 + 18 + 36);
        let err = Slice::Cols(16..96).layout(Path::new("f"), &t).unwrap_err();
        assert!(
            matches!(&err, Error::BadSlice { tensor, .. } if tensor == "w"),
            "{err}"
        );
        assert!(err.to_string().contains("Q4_0 block"), "{err}");
    }

    #[test]
    fn f32_columns_and_vector_rows() {
        let t = info(DType::F32, vec![2, 5], 8);
        let l = Slice::Cols(1..4).layout(Path::new("f"), &t).unwrap();
        assert_eq!((l.bytes.start, l.bytes.len, l.bytes.stride), (12, 12, 20));
        let v = info(DType::F16, vec![10], 0);
        let l = Slice::Rows(4..10).layout(Path::new("f"), &v).unwrap();
        assert_eq!((l.bytes.start, l.bytes.total()), (8, 12));
        let q = info(DType::Q8_0, vec![64], 0);
        assert!(Slice::Rows(0..16).layout(Path::new("f"), &q).is_err());
        assert!(Slice::Rows(0..32).layout(Path::new("f"), &q).is_ok());
    }

    #[test]
    fn out_of_range_and_wrong_rank_are_errors() {
        let t = info(DType::F32, vec![2, 5], 0);
        assert!(Slice::Rows(1..3).layout(Path::new("f"), &t).is_err());
        assert!(Slice::Cols(0..6).layout(Path::new("f"), &t).is_err());
        let v = info(DType::F32, vec![4], 0);
        assert!(Slice::Cols(0..2).layout(Path::new("f"), &v).is_err());
        let backwards = Range { start: 3, end: 2 };
        assert!(Slice::Rows(backwards).layout(Path::new("f"), &v).is_err());
    }
}
