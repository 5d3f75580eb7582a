//! The charts MLAE draws into PNG files, in one place for the trainer (run curves, expert
//! similarity) and the report (domain means): line panels, grouped bars, and the system font
//! their labels use. Without a font the charts are drawn unlabelled rather than not at all.

mod bars;
mod font;
mod lines;

pub use bars::{BarChart, grouped_bars};
pub use font::register_plot_font;
pub use lines::{Series, line_panels};

use std::path::PathBuf;

/// A chart that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("plot {}: {message}", path.display())]
pub struct PlotError {
    pub path: PathBuf,
    pub message: String,
}

/// The error for `path`, from whatever plotters or the caller said.
pub(crate) fn fail(path: &std::path::Path, e: impl std::fmt::Display) -> PlotError {
    PlotError { path: path.to_path_buf(), message: e.to_string() }
}

/// Width and height from a PNG's IHDR chunk (for tests of the charts).
#[cfg(test)]
pub(crate) fn png_size(path: &std::path::Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (w, h)
}
