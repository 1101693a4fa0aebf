//! Turning raw inputs into model input tensors.

pub mod text;
