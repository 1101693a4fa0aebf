//! Where a tensor's bytes come from when a writer streams them to disk.

use std::path::Path;

use crate::error::{Error, Result};
use crate::formats::{ModelFile, TensorInfo};
use crate::{Source, Tensor};

/// Bytes gathered per step from a tensor the file stores as a strided view.
const GATHER_BYTES: usize = 8 << 20;

/// Where a tensor's bytes come from. Each is read once, in order, while the file is written.
#[derive(Clone, Copy)]
pub enum TensorSource<'a> {
    /// Bytes in memory, exactly the tensor's. (For a tensor of a [`ModelFile`], prefer
    /// [`TensorSource::File`]: [`ModelFile::bytes`] of a strided view is its span, gaps
    /// included, not its bytes.)
    Bytes(&'a [u8]),
    /// A tensor of a [`ModelFile`]: borrowed from the memory map, or gathered into row-major
    /// order a step at a time where the file stores a strided view (PyTorch).
    File(&'a ModelFile, &'a TensorInfo),
    /// A tensor on a device; GPU tensors are read back chunk by chunk
    /// ([`Tensor::for_each_chunk`]).
    Tensor(&'a Tensor),
    /// Anything else that can hand its bytes over in order.
    Chunks(&'a dyn ChunkSource),
}

/// A source that produces a tensor's bytes in consecutive chunks, e.g. a quantizer writing
/// block after block. The writer checks that the chunks add up to [`ChunkSource::byte_len`].
pub trait ChunkSource {
    /// How many bytes [`ChunkSource::for_each_chunk`] will produce.
    fn byte_len(&self) -> u64;
    /// Call `f` with the bytes in order; stop at the first error `f` returns.
    fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>;
}

impl TensorSource<'_> {
    /// The byte length the source announces.
    pub fn byte_len(&self) -> u64 {
        match self {
            TensorSource::Bytes(b) => b.len() as u64,
            TensorSource::File(_, info) => info.byte_len(),
            TensorSource::Tensor(t) => t.byte_len(),
            TensorSource::Chunks(c) => c.byte_len(),
        }
    }

    /// Hand the bytes to `sink` in order, failing (as soon as it shows) when the source produces
    /// a different number of bytes than `expected`; `path` and `tensor` name the error.
    pub(crate) fn stream_exact(
        &self,
        path: &Path,
        tensor: &str,
        expected: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let mismatch = |found: u64| Error::ByteLengthMismatch {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            expected,
            found,
        };
        let mut written = 0u64;
        self.for_each_chunk(&mut |chunk: &[u8]| {
            let total = written + chunk.len() as u64;
            if total > expected {
                return Err(mismatch(total));
            }
            sink(chunk)?;
            written = total;
            Ok(())
        })?;
        if written != expected {
            return Err(mismatch(written));
        }
        Ok(())
    }
}

impl ChunkSource for TensorSource<'_> {
    fn byte_len(&self) -> u64 {
        TensorSource::byte_len(self)
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        match self {
            TensorSource::Bytes(b) => f(b),
            TensorSource::File(file, info) => stream_file(file, info, f),
            TensorSource::Tensor(t) => t.for_each_chunk(|_, chunk| f(chunk)),
            TensorSource::Chunks(c) => c.for_each_chunk(f),
        }
    }
}

/// `info`'s bytes in row-major order: the span itself when contiguous, else the view's
/// elements gathered [`GATHER_BYTES`] at a time.
fn stream_file(
    file: &ModelFile,
    info: &TensorInfo,
    f: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    match Source::of(file, info) {
        Source::Contiguous(bytes) => f(bytes),
        src => {
            // Strided views come from PyTorch only, whose dtypes are whole bytes, and
            // `ModelFile::open` checked that the view fits its span and its byte count fits.
            let elem = info.dtype.block_bytes().max(1) as usize;
            let step = (GATHER_BYTES / elem).max(1) * elem;
            let len = usize::try_from(info.byte_len()).map_err(|_| Error::ShapeOverflow {
                path: file.path().to_path_buf(),
                tensor: info.name.clone(),
                shape: info.shape.dims().iter().map(|&d| d as u64).collect(),
            })?;
            let mut scratch = Vec::new();
            let mut pos = 0;
            while pos < len {
                let n = step.min(len - pos);
                f(src.chunk(pos, n, &mut scratch))?;
                pos += n;
            }
            Ok(())
        }
    }
}

impl<'a> From<&'a [u8]> for TensorSource<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        TensorSource::Bytes(bytes)
    }
}

impl<'a> From<&'a Vec<u8>> for TensorSource<'a> {
    fn from(bytes: &'a Vec<u8>) -> Self {
        TensorSource::Bytes(bytes)
    }
}

impl<'a> From<&'a Tensor> for TensorSource<'a> {
    fn from(tensor: &'a Tensor) -> Self {
        TensorSource::Tensor(tensor)
    }
}
