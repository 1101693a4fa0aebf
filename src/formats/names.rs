//! Tensor name maps between Hugging Face and GGUF conventions.
