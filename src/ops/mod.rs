//! Operations on tensors. Each kernel family has a launcher here (GPU: cached pipeline, bind
//! group, one dispatch per page) and its plain-Rust CPU twin beside it; the public op matches on
//! the tensor's device.

pub mod convert;
pub mod dequant;
pub mod dequant_k;
pub mod elementwise;
pub mod lora;
pub mod matmul;
mod paged;
pub mod qmatmul;
