//! The training and evaluation loop for MLAE and its baselines.
//!
//! The crate owns everything between a config file and a finished run directory: the
//! optimizer and schedule, the loop with evaluation and checkpoints, resume, and the files a
//! run leaves behind (see [`rundir`]).

pub mod checkpoint;
pub mod error;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod rundir;
pub mod schedule;

pub use error::{Result, TrainError};
