//! Grids of square heatmaps of values in [-1, 1] under a shared colour bar (the analysis's
//! expert similarity matrices, paper Fig. 5).

use crate::{PlotError, fail, font::register_plot_font};
use plotters::prelude::*;
use std::path::Path;

/// Side of one panel of the similarity heatmap PNG, in pixels.
pub const HEATMAP_PANEL: u32 = 220;
/// Panels per row of the similarity heatmap PNG.
pub const HEATMAP_COLUMNS: usize = 4;
/// Height of the colour-bar strip under the heatmap panels, in pixels.
pub const HEATMAP_COLORBAR: u32 = 50;

/// Blue (-1) - white (0) - red (+1), for cosine similarities.
fn diverging(v: f64) -> RGBColor {
    let v = v.clamp(-1.0, 1.0);
    let (lo, hi) = if v < 0.0 {
        ((255.0, 255.0, 255.0), (40.0, 80.0, 200.0))
    } else {
        ((255.0, 255.0, 255.0), (190.0, 20.0, 40.0))
    };
    let t = v.abs();
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(lo.0, hi.0), mix(lo.1, hi.1), mix(lo.2, hi.2))
}

/// The size of the heatmap PNG for `panels` panels: `min(panels, 4) * 220` wide and
/// `rows * 220 + 50` high.
pub fn heatmap_size(panels: usize) -> (u32, u32) {
    let cols = panels.clamp(1, HEATMAP_COLUMNS);
    let rows = panels.max(1).div_ceil(HEATMAP_COLUMNS);
    (cols as u32 * HEATMAP_PANEL, rows as u32 * HEATMAP_PANEL + HEATMAP_COLORBAR)
}

/// Draws `panels` (title, square matrix row by row), `HEATMAP_COLUMNS` per row, into a PNG of
/// [`heatmap_size`], with a colour bar from -1 to +1 underneath captioned
/// `<caption> (cosine similarity)`.
pub fn similarity_heatmaps(
    path: &Path,
    panels: &[(String, Vec<Vec<f64>>)],
    caption: &str,
) -> Result<(), PlotError> {
    let labels = register_plot_font();
    let (w, h) = heatmap_size(panels.len());
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(path, e))?;
    let grid_h = h - HEATMAP_COLORBAR;
    let (top, bar) = root.split_vertically(grid_h);
    for (k, (title, m)) in panels.iter().enumerate() {
        let (col, row) = ((k % HEATMAP_COLUMNS) as i32, (k / HEATMAP_COLUMNS) as i32);
        let (x0, y0) = (col * HEATMAP_PANEL as i32, row * HEATMAP_PANEL as i32);
        let n = m.len().max(1) as i32;
        let title_h = 24;
        let side = HEATMAP_PANEL as i32 - title_h - 12;
        let cell = (side / n).max(1);
        let (mx, my) = (x0 + (HEATMAP_PANEL as i32 - cell * n) / 2, y0 + title_h + (side - cell * n) / 2);
        if labels {
            top.draw(&Text::new(title.clone(), (x0 + 8, y0 + 4), ("sans-serif", 15).into_font()))
                .map_err(|e| fail(path, e))?;
        }
        for (i, r) in m.iter().enumerate() {
            for (j, v) in r.iter().enumerate() {
                let (cx, cy) = (mx + j as i32 * cell, my + i as i32 * cell);
                top.draw(&Rectangle::new([(cx, cy), (cx + cell, cy + cell)], diverging(*v).filled()))
                    .map_err(|e| fail(path, e))?;
                if labels && cell >= 24 {
                    let style = ("sans-serif", (cell / 3).min(14)).into_font().color(&BLACK);
                    top.draw(&Text::new(format!("{v:.2}"), (cx + 2, cy + cell / 3), style))
                        .map_err(|e| fail(path, e))?;
                }
            }
        }
        top.draw(&Rectangle::new([(mx, my), (mx + cell * n, my + cell * n)], BLACK.stroke_width(1)))
            .map_err(|e| fail(path, e))?;
    }
    // The caption, then a colour bar from -1 to +1 with its ticks underneath.
    let (bx0, bx1, by0, by1) = (40i32, w as i32 - 40, 20i32, 32i32);
    let width = (bx1 - bx0).max(1);
    for x in bx0..bx1 {
        let v = -1.0 + 2.0 * (x - bx0) as f64 / width as f64;
        bar.draw(&Rectangle::new([(x, by0), (x + 1, by1)], diverging(v).filled()))
            .map_err(|e| fail(path, e))?;
    }
    if labels {
        bar.draw(&Text::new(
            format!("{caption} (cosine similarity)"),
            (bx0, 3),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(|e| fail(path, e))?;
        for (v, x) in [(-1.0, bx0), (0.0, (bx0 + bx1) / 2), (1.0, bx1)] {
            bar.draw(&Text::new(format!("{v:+.0}"), (x - 8, by1 + 3), ("sans-serif", 12).into_font()))
                .map_err(|e| fail(path, e))?;
        }
    }
    root.present().map_err(|e| fail(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_wrap_after_four_and_the_png_has_the_computed_size() {
        assert_eq!(heatmap_size(3), (3 * HEATMAP_PANEL, HEATMAP_PANEL + HEATMAP_COLORBAR));
        assert_eq!(heatmap_size(13), (4 * HEATMAP_PANEL, 4 * HEATMAP_PANEL + HEATMAP_COLORBAR));
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("heat.png");
        let m = vec![vec![1.0, -0.4], vec![-0.4, 1.0]];
        let panels: Vec<(String, Vec<Vec<f64>>)> =
            (0..5).map(|i| (format!("block {i}"), m.clone())).collect();
        similarity_heatmaps(&path, &panels, "mlae").unwrap();
        assert_eq!(crate::png_size(&path), heatmap_size(5));
    }
}
