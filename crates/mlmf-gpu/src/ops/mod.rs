//! Operations on tensors. Each kernel family has a launcher here (GPU: cached pipeline, bind
//! group, one dispatch per page) and its plain-Rust CPU twin beside it; the public op matches on
//! the tensor's device.

pub mod attention;
pub mod conv;
pub mod convert;
pub mod dequant;
pub mod elementwise;
pub mod embedding;
pub mod fusion;
pub(crate) mod launch;
pub mod lora;
pub mod matmul;
pub mod mel;
pub mod norm;
mod paged;
pub mod qmatmul;
// The grid and sign tables of the i-quants, shared by the CPU twins and the GPU decoders.
pub(crate) mod iq_grids;
// The weight types dequant, qmatmul and embedding decode, and their CPU twins.
pub(crate) mod quant_decode;
pub mod softmax;

pub use launch::Reduce;
