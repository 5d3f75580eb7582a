//! A sweep's results in the MLAE paper's format, beside the paper's published rows: Markdown,
//! CSV and a PNG chart of the domain means.
//!
//! VTAB-1k: per-task accuracy, the Natural / Specialized / Structured means and the average
//! as the paper computes it (the mean of the three group means). FGVC and the demo benchmark:
//! per-task mean over seeds ± the sample std, and the mean over tasks, with the val200
//! accuracy too for runs that selected on val. Every number says which protocol produced it.
//! Only runs of the sweep's plan count, and only while their config is the one they ran with;
//! runs are read through mlae-formats' `Summary`. A sweep run with `--search halving` adds its
//! rungs, the training it took, and, beside a full search of the same grid, both selections.
//! On request ([`BuildOptions::confusion`]) it shows one task's per-class accuracy and
//! confusion matrices. Sweeps of one grid at several training lengths give an epoch curve
//! ([`curve::Curve`]).

mod build;
mod cells;
pub mod confusion;
pub mod curve;
pub mod error;
pub mod extra;
pub mod flat;
pub mod halving;
pub mod published;
pub mod results;
pub mod vtab;

#[cfg(test)]
mod tests;

pub use build::{BuildOptions, Report, build, build_with};
pub use error::{ReportError, Result};
pub use published::{Published, load_published};
pub use results::{RunResult, Table, collect};
