//! The training and evaluation loop for MLAE and its baselines.
//!
//! The crate owns everything between a config file and a finished run directory: the
//! optimizer and schedule, the loop with evaluation and checkpoints, resume, and writing the
//! files a run leaves behind. Their formats (the config, the run directory's layout and
//! records) are mlae-formats', re-exported in [`config`] and [`rundir`]. For trained runs it
//! has the one [`evaluator`] that `eval`, `export` and `analyze` share with the loop, and the
//! [`analysis`] of the experts, and the [`check`] behind `mlae-cli check`.

pub mod analysis;
pub mod bench;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod ending;
pub mod error;
pub mod evaluator;
pub mod lr_schedule;
pub mod memcheck;
pub mod metrics;
pub mod optim;
pub mod per_class;
pub mod plot;
pub mod predict;
pub mod progress;
pub mod rundir;
pub mod setup;
pub mod step;
pub mod trainer;

pub use error::{Result, TrainError};
