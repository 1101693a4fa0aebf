//! Where a tensor's bytes come from when it is loaded: a contiguous slice of the memory map, or
//! a strided PyTorch view gathered into row-major order a chunk at a time.

use super::{ModelFile, TensorInfo};

pub enum Source<'a> {
    Contiguous(&'a [u8]),
    Strided {
        span: &'a [u8],
        elem_bytes: usize,
        dims: &'a [usize],
        strides: &'a [usize],
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
