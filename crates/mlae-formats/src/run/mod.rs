//! The run directory: one folder per run holding everything needed to read, resume or
//! reproduce it. [`RunLayout`] names its files and reads them; [`RunDir`] writes them.

mod dir;
mod layout;
mod per_class;
mod records;

pub use dir::{RunDir, config_hash, write_file};
pub use layout::{RunLayout, RunPhase, read_jsonl};
pub use per_class::{ClassResult, Confusion};
pub use records::{EpochMetrics, EvalResult, RunState, RungScore, Status, Summary, WhichCheckpoint};
