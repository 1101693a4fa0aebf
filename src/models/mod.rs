//! Real architectures built from model files on the engine's ops.

pub mod bert;
pub mod mobilenet_v2;
