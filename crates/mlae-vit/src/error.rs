//! The crate's error type. Every variant names the file, key or layer at fault, so a user can
//! fix a checkpoint or config without reading code.

use std::path::PathBuf;

/// Errors from building, loading, running or exporting a ViT.
#[derive(Debug, thiserror::Error)]
pub enum VitError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file is malformed or not of the expected format.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// A tensor the model needs is absent from the checkpoint.
    #[error("{path}: missing key `{key}`")]
    MissingKey { path: PathBuf, key: String },
    /// A tensor has another shape than expected (by the model, or by a format converter).
    #[error("{path}: `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, key: String, found: Vec<i64>, expected: Vec<i64> },
    /// An invalid model or adapter configuration.
    #[error("{0}")]
    Config(String),
    /// An adapter specification problem (names the config field).
    #[error(transparent)]
    Spec(#[from] mlae_core::SpecError),
    /// A shape problem in mlae-core's math.
    #[error(transparent)]
    Core(#[from] mlae_core::CoreError),
    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl VitError {
    /// A closure for `map_err` that wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> VitError {
        let path = path.into();
        move |source| VitError::Io { path, source }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = VitError> = std::result::Result<T, E>;
