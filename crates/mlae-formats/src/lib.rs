//! The formats that users and tools share, with no libtorch: the trainer writes them, and the
//! sweep, the report and `mlae-cli` read the same types back.
//!
//! - [`config`]: the typed experiment config, validated whole, and `cache:` paths;
//! - [`layering`]: how config files combine (`extends`, deep merge, `--set key=value`);
//! - [`preset`]: the backbone names a config uses (architecture preset, checkpoint format,
//!   position-table resize);
//! - [`run`]: the run directory (file names, status, summary, metrics lines, the locked writer);
//! - [`csv_record`]: one CSV line, quoted by the `csv` crate, for tools that write line by line;
//! - [`write_atomic`]: the one atomic-write policy (temp file, fsync, rename, fsync), and
//!   [`write_dir_atomic`] for a folder of files.

mod atomic;
pub mod config;
mod csv_text;
pub mod error;
pub mod layering;
pub mod preset;
pub mod run;
#[cfg(test)]
mod testing;

pub use atomic::{sha256_hex, write_atomic, write_dir_atomic};
pub use config::{ExperimentConfig, Protocol};
pub use csv_text::csv_record;
pub use error::{FormatError, Invalid, Result};
pub use preset::{CheckpointFormat, PosResize, Preset};
pub use run::{
    ClassResult, Confusion, EpochMetrics, EvalResult, RunDir, RunLayout, RunPhase, RunState, RungScore,
    Status, Summary, WhichCheckpoint,
};
