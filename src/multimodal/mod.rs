//! Inputs of several modalities and the steps that turn them into tensors.

pub mod preprocess;
