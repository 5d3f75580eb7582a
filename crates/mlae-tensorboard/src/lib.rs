//! TensorBoard event files for MLAE's training tools: this crate owns their format (TFRecord
//! framing with CRC32C, the `Event`/`Summary` protobuf messages) and their file names, and
//! writes scalars that the real `tensorboard` package reads. It needs neither TensorFlow nor
//! libtorch, so the libtorch-free tools can log too.
//!
//! One [`EventWriter`] writes one file in a run's log directory. A resumed run does not append
//! to the old file: it opens a new writer in the same directory, and TensorBoard reads all the
//! event files of a directory as one run. Point TensorBoard at a sweep's directory and each
//! run's log directory shows up as its own run, side by side. A resumed run marks where it
//! restarts ([`EventWriter::add_session_start`]), so TensorBoard drops what the stopped process
//! logged past its last checkpoint; [`read_scalars`] reads a directory back by the same rule.

mod proto;
mod reader;
mod record;
mod writer;

pub use reader::{Scalars, read_scalars};
pub use writer::EventWriter;

use std::path::PathBuf;

/// An event file or its directory that could not be created or written; says which path.
#[derive(Debug, thiserror::Error)]
pub enum TensorboardError {
    #[error("cannot create the TensorBoard log directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot create the TensorBoard event file {}: {source}", path.display())]
    CreateFile { path: PathBuf, source: std::io::Error },
    #[error("cannot write the TensorBoard event file {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read the TensorBoard events in {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
}

pub type Result<T, E = TensorboardError> = std::result::Result<T, E>;
