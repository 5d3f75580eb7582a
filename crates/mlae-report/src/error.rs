//! The report's error type.

use std::path::PathBuf;

/// What stops a report; every variant names the file or sweep at fault.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The sweep directory or one of its runs could not be read.
    #[error(transparent)]
    Sweep(#[from] mlae_sweep::SweepError),
    /// A run directory's file could not be read.
    #[error(transparent)]
    Format(#[from] mlae_formats::FormatError),
    /// A benchmark manifest problem.
    #[error(transparent)]
    Data(#[from] mlae_data::DataError),
    /// Inputs the report cannot use as they are; the message says why.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = ReportError> = std::result::Result<T, E>;

/// Returns early with [`ReportError::Invalid`] and a formatted message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::ReportError::Invalid(format!($($arg)*)))
    };
}
pub(crate) use bail;
