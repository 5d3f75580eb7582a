//! The formats crate's error type: every variant names the file it is about.

use std::path::PathBuf;

/// What can go wrong reading or writing a config or a run directory.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A config file, `extends` chain or key that is wrong; the message names the key.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// No config file was given at all.
    #[error("config: no config file given")]
    NoConfig,
    /// A run directory that cannot be used as asked, or one of its files that does not parse.
    #[error("run directory {}: {message}", path.display())]
    RunDir { path: PathBuf, message: String },
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

/// A value that breaks a rule serde cannot express (a range, a combination); the message
/// starts with the key, e.g. `train.lr: must be positive, got -1`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Attaches a path to an I/O error.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FormatError {
    let path = path.into();
    move |source| FormatError::Io { path, source }
}
