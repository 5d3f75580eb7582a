//! The sweep's error type.

use std::path::PathBuf;

/// What stops a sweep command; every variant names the file, run or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A sweep file (plan, state, selection) that does not parse.
    #[error("{} is malformed: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A config, run-directory or layering problem (names the file and key).
    #[error(transparent)]
    Format(#[from] mlae_formats::FormatError),
    /// A benchmark manifest problem.
    #[error(transparent)]
    Data(#[from] mlae_data::DataError),
    /// A request, grid or planned run that cannot be run as asked; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// A run or command could not be started or did not answer as expected.
    #[error("{0}")]
    Command(String),
    /// Ctrl-C / SIGTERM stopped the sweep; its runs wrote checkpoints.
    #[error("interrupted: run the same command again to resume (finished runs are skipped)")]
    Interrupted,
    /// Some runs failed; the others ran.
    #[error("{} run(s) failed: {}; logs in {}", failed.len(), failed.join(", "), logs.display())]
    RunsFailed { failed: Vec<String>, logs: PathBuf },
}

pub type Result<T, E = SweepError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SweepError {
    let path = path.into();
    move |source| SweepError::Io { path, source }
}

/// Returns early with [`SweepError::Invalid`] and a formatted message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::SweepError::Invalid(format!($($arg)*)))
    };
}
pub(crate) use bail;
