//! The training crate's error type.

use std::path::PathBuf;

/// Everything that can stop a run, with the file, key or step that caused it.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// Training stopped on a NaN or infinity: `what` names the loss or the tensor, `last_good`
    /// says which checkpoint on disk is the last finite one (none is written after the fault).
    #[error("{what} at step {step} (epoch {epoch}); {last_good}")]
    NonFinite { step: u64, epoch: u64, what: String, last_good: String },
    /// The adapter did not change in a whole epoch: the run would finish without having
    /// trained it.
    #[error("{0}")]
    NotTraining(String),
    #[error("run directory {path}: {message}")]
    RunDir { path: PathBuf, message: String },
    #[error("interrupted at step {step}; a checkpoint was written to {checkpoint}")]
    Interrupted { step: u64, checkpoint: PathBuf },
    /// Paused on request (`stop_after_epoch`) with a checkpoint: not a failure.
    #[error("paused after epoch {epoch} of {epochs}{}; a checkpoint was written to {checkpoint}",
        score.as_ref().map(|(split, acc)| format!(" ({split} accuracy {acc:.4})")).unwrap_or_default())]
    Paused { epoch: u64, epochs: u64, score: Option<(String, f64)>, checkpoint: PathBuf },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A dataset problem (names the list file, line or image).
    #[error(transparent)]
    Data(#[from] mlae_data::DataError),
    /// A model or checkpoint problem (names the file, key or shapes).
    #[error(transparent)]
    Model(#[from] mlae_vit::VitError),
    /// An adapter-spec problem (names the config field).
    #[error(transparent)]
    Spec(#[from] mlae_core::SpecError),
    /// A problem of mlae-core's math (mismatched factor shapes, naming the layer).
    #[error(transparent)]
    Core(#[from] mlae_core::CoreError),
    /// An analysis that cannot run on the given run or inputs.
    #[error("{0}")]
    Analysis(String),
    /// A plot that could not be drawn or written.
    #[error("plot {path}: {message}")]
    Plot { path: PathBuf, message: String },
    /// A benchmark that cannot run as asked.
    #[error("bench: {0}")]
    Bench(String),
    /// A panic inside a run (a bug, or a libtorch error the bindings raise as a panic), caught
    /// so that the run's status can say it failed.
    #[error("the run stopped on an internal error (a panic): {0}")]
    Panicked(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}

/// Format errors keep their file: I/O stays I/O, a config stays a config, a run directory
/// stays a run directory.
impl From<mlae_formats::FormatError> for TrainError {
    fn from(e: mlae_formats::FormatError) -> Self {
        use mlae_formats::FormatError as F;
        match e {
            F::Io { path, source } => TrainError::Io { path, source },
            F::Config { path, message } => TrainError::Config { path, message },
            F::NoConfig => TrainError::Invalid("no config file given".into()),
            F::RunDir { path, message } => TrainError::RunDir { path, message },
        }
    }
}

impl From<mlae_plot::PlotError> for TrainError {
    fn from(e: mlae_plot::PlotError) -> Self {
        TrainError::Plot { path: e.path, message: e.message }
    }
}
