//! The math of Masked LoRA Experts (MLAE), with no tensor library.
//!
//! This crate is what people depend on alone: everything about experts, coefficients and
//! masks that does not need libtorch lives here, so it builds and tests in seconds.
