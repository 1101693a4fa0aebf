//! PyTorch checkpoints.

use std::path::Path;

use super::Parsed;
use crate::error::{Error, Result};

/// `torch.save`'s legacy layout opens with a pickled magic number (protocol 2, LONG1 of 10 bytes).
pub const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

pub fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let _ = bytes;
    Err(Error::UnsupportedVersion {
        path: path.to_path_buf(),
        format: "pytorch",
        version: 0,
    })
}
