//! Where a tensor's bytes come from when it is loaded: a contiguous slice of the memory map, or
//! a strided PyTorch view gathered into row-major order a chunk at a time, or the pieces of a
//! [`super::Slice`] (a column slice: one piece per row).

use super::{ByteRange, ModelFile, TensorInfo};

pub enum Source<'a> {
    Contiguous(&'a [u8]),
    Strided {
        span: &'a [u8],
        elem_bytes: usize,
        dims: &'a [usize],
        strides: &'a [usize],
    },
    /// `count` pieces of `len` bytes, `stride` apart, from the start of `bytes`.
    Pieces {
        bytes: &'a [u8],
        len: usize,
        stride: usize,
        count: usize,
    },
}

impl<'a> Source<'a> {
    pub fn of(file: &'a ModelFile, info: &'a TensorInfo) -> Source<'a> {
        let span = file.bytes(info);
        match &info.strides {
            None => Source::Contiguous(span),
            Some(strides) => Source::Strided {
                span,
                // Strided views only come from PyTorch, whose dtypes are whole bytes.
                elem_bytes: info.dtype.block_bytes() as usize,
                dims: info.shape.dims(),
                strides,
            },
        }
    }

    /// The bytes of a slice of `info` (`range` from [`super::Slice::layout`], which checked it
    /// against the tensor): borrowed when it is one piece.
    pub fn slice(file: &'a ModelFile, info: &'a TensorInfo, range: &ByteRange) -> Source<'a> {
        let span = file.bytes(info);
        let at = (range.start - info.range.start) as usize;
        if range.count <= 1 {
            let len = (range.total()) as usize;
            return Source::Contiguous(&span[at..at + len]);
        }
        Source::Pieces {
            bytes: &span[at..range.end() as usize - info.range.start as usize],
            len: range.len as usize,
            stride: range.stride as usize,
            count: range.count as usize,
        }
    }

    /// Bytes `pos..pos + len` of the tensor in row-major order. Contiguous sources borrow;
    /// strided ones gather the elements the range touches into `scratch` (a range may start
    /// or end inside an element). Panics, like slice indexing, when the range goes past the
    /// tensor: callers take ranges from the tensor's checked length.
    pub fn chunk<'s>(&'s self, pos: usize, len: usize, scratch: &'s mut Vec<u8>) -> &'s [u8] {
        match *self {
            Source::Contiguous(bytes) => &bytes[pos..pos + len],
            Source::Strided {
                span,
                elem_bytes,
                dims,
                strides,
            } => {
                scratch.clear();
                let first = pos / elem_bytes;
                let skip = pos % elem_bytes;
                let count = (skip + len).div_ceil(elem_bytes);
                for e in first..first + count {
                    // Row-major multi-index of element `e`, then its offset in the storage.
                    let mut rest = e;
                    let mut offset = 0;
                    for (d, s) in dims.iter().zip(strides).rev() {
                        offset += (rest % d) * s;
                        rest /= d;
                    }
                    let at = offset * elem_bytes;
                    scratch.extend_from_slice(&span[at..at + elem_bytes]);
                }
                &scratch[skip..skip + len]
            }
            Source::Pieces {
                bytes,
                len: piece,
                stride,
                count,
            } => {
                scratch.clear();
                let mut at = pos;
                while at < pos + len {
                    let (i, within) = (at / piece, at % piece);
                    debug_assert!(i < count);
                    let n = (piece - within).min(pos + len - at);
                    let from = i * stride + within;
                    scratch.extend_from_slice(&bytes[from..from + n]);
                    at += n;
                }
                &scratch[..]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_a_transposed_view() {
        // Storage holds a 2x3 matrix of u8 row-major; the view is its 3x2 transpose.
        let storage = [0u8, 1, 2, 3, 4, 5];
        let src = Source::Strided {
            span: &storage,
            elem_bytes: 1,
            dims: &[3, 2],
            strides: &[1, 3],
        };
        let mut scratch = Vec::new();
        assert_eq!(src.chunk(0, 6, &mut scratch), &[0, 3, 1, 4, 2, 5]);
        assert_eq!(src.chunk(2, 3, &mut scratch), &[1, 4, 2]);
    }

    #[test]
    fn pieces_join_in_order() {
        // Columns 1..3 of a 3 x 4 u8 matrix: pieces of 2 bytes, 4 apart.
        let storage = [0u8, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23];
        let src = Source::Pieces {
            bytes: &storage[1..],
            len: 2,
            stride: 4,
            count: 3,
        };
        let mut scratch = Vec::new();
        assert_eq!(src.chunk(0, 6, &mut scratch), &[1, 2, 11, 12, 21, 22]);
        assert_eq!(src.chunk(1, 3, &mut scratch), &[2, 11, 12]);
    }

    #[test]
    fn ranges_may_cut_elements() {
        // u16 elements 0x0100, 0x0302, 0x0504 at stride 2: every other one of six.
        let storage = [0u8, 1, 9, 9, 2, 3, 9, 9, 4, 5];
        let src = Source::Strided {
            span: &storage,
            elem_bytes: 2,
            dims: &[3],
            strides: &[2],
        };
        let mut scratch = Vec::new();
        assert_eq!(src.chunk(0, 6, &mut scratch), &[0, 1, 2, 3, 4, 5]);
        assert_eq!(src.chunk(1, 4, &mut scratch), &[1, 2, 3, 4]);
        assert_eq!(src.chunk(3, 3, &mut scratch), &[3, 4, 5]);
    }
}
