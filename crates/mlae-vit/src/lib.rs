//! A libtorch (tch) Vision Transformer with adapter hooks on any linear layer, and the
//! checkpoint formats it reads and writes.

pub mod error;
pub mod import;
pub mod runtime;

pub use error::{Result, VitError};
pub use import::{CheckpointFormat, StateDict, infer_format, read_checkpoint};
