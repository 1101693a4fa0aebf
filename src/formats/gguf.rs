//! GGUF (llama.cpp) files: header, typed metadata, tensor index.

use std::path::Path;

use super::Parsed;
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 4] = b"GGUF";

pub fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let _ = bytes;
    Err(Error::UnsupportedVersion {
        path: path.to_path_buf(),
        format: "gguf",
        version: 0,
    })
}
