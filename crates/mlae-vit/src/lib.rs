//! A libtorch (tch) Vision Transformer with adapter hooks on any linear layer, and the
//! checkpoint formats it reads and writes.

pub mod runtime;
