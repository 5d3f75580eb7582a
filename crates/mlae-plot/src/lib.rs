//! Every chart MLAE draws into PNG files, in one place for the trainer (run curves), its
//! analysis (expert similarity heatmaps and bars, expert feature-map grids) and the report
//! (domain means, accuracy against training length) and the per-class results (confusion matrices):
//! line panels, error-bar panels, grouped bars, heatmaps, image grids, and the system font their
//! labels use. Callers hand over plain data; without a font the charts are drawn unlabelled
//! rather than not at all.

mod bars;
mod confusion;
mod errorbars;
mod expert_grid;
mod font;
mod heatmap;
mod lines;

pub use bars::{BarChart, grouped_bars};
pub use confusion::{confusion_matrix, confusion_size};
pub use errorbars::{ErrorPanel, ErrorSeries, error_panels};
pub use expert_grid::{EXPERT_HEADER, ExpertGrid, MapScale, expert_grid, expert_grid_size};
pub use font::register_plot_font;
pub use heatmap::{HEATMAP_COLORBAR, HEATMAP_COLUMNS, HEATMAP_PANEL, heatmap_size, similarity_heatmaps};
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
