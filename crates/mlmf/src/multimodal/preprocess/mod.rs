//! Preprocessing that must match the Python pipelines a model was trained with, value for value.

pub mod image;
pub mod text;
