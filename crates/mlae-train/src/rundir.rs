//! The run directory. Its layout, records and locked writer are a shared format
//! (mlae-formats' `run` module): the trainer writes them, and the sweep, the report and
//! `mlae-cli` read the same types back.

pub use mlae_formats::run::*;

use std::path::Path;

/// `status.json` of a run directory, if there is a readable one.
pub fn read_status(run: &Path) -> Option<Status> {
    RunLayout::new(run).read_status().ok().flatten()
}

/// The project's atomic write ([`mlae_formats::write_atomic`]), with the path in the error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> crate::Result<()> {
    Ok(write_file(path, bytes)?)
}
