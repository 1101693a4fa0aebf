//! Cross-modal attention and the four fusion strategies, each a module loaded from a PyTorch
//! state dict by name, running on the tensors' `Device` (GPU kernels, or their CPU twins).

pub mod attention;
pub mod early;
pub mod gate;
pub mod heatmap;
pub mod late;
pub mod middle;
