//! MLAE's sweeps: a grid (`configs/grids/*.toml`) expanded into `mlae-cli finetune` runs,
//! each run's whole config checked at plan time, run on this machine or on Slurm, resumable
//! after a kill, and never mixing results of a changed config.
//!
//! A run's fingerprint is the sha256 of its merged config ([`config::fingerprint`]). A
//! finished run with the same fingerprint is skipped; an interrupted one resumes from its
//! checkpoint; one whose fingerprint changed is moved aside (`runs/<run>.stale-N`) and
//! started again. Run directories are read through mlae-formats' types, as the trainer
//! writes them. Modules, innermost first: [`grid`], [`config`], [`dir`], [`prepare`],
//! [`decide`], [`slurm`], [`local`], [`select`], [`halving`], [`status`], [`plan`].

pub mod config;
pub mod decide;
pub mod dir;
pub mod error;
pub mod grid;
pub mod halving;
pub mod local;
pub mod plan;
pub mod prepare;
pub mod select;
pub mod slurm;
pub mod status;

pub use dir::{Plan, PlannedRun, RunRecord, SweepDir, SweepRecord};
pub use error::{Result, SweepError};
pub use plan::{Executor, PlannedSweep, SearchMode, SweepRequest, plan};
pub use select::Chosen;
