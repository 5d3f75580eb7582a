//! Line charts, one panel per quantity, side by side (a run's loss and accuracy curves).

use crate::{PlotError, fail, font::register_plot_font};
use plotters::prelude::*;
use std::path::Path;

/// A series to draw: a label and (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Draws one line chart per panel `(title, y label, series)`, side by side, into a PNG;
/// non-finite points are left out.
pub fn line_panels(
    path: &Path,
    size: (u32, u32),
    panels: &[(&str, &str, Vec<Series>)],
) -> Result<(), PlotError> {
    let labels = register_plot_font();
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(path, e))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for ((title, y_label, series), area) in panels.iter().zip(areas.iter()) {
        let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
        for s in series {
            for &(x, y) in &s.points {
                if y.is_finite() {
                    x_max = x_max.max(x);
                    y_min = y_min.min(y);
                    y_max = y_max.max(y);
                }
            }
        }
        if !y_min.is_finite() {
            (y_min, y_max) = (0.0, 1.0);
        }
        let pad = ((y_max - y_min) * 0.05).max(1e-3);
        let mut builder = ChartBuilder::on(area);
        builder.margin(12);
        if labels {
            builder.caption(*title, ("sans-serif", 20)).x_label_area_size(36).y_label_area_size(56);
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..x_max, (y_min - pad)..(y_max + pad))
            .map_err(|e| fail(path, e))?;
        let mut mesh = chart.configure_mesh();
        if labels {
            mesh.x_desc("epoch").y_desc(*y_label);
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| fail(path, e))?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.1.is_finite()).collect();
            let drawn =
                chart.draw_series(LineSeries::new(pts, color.stroke_width(2))).map_err(|e| fail(path, e))?;
            if labels {
                drawn
                    .label(s.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            }
        }
        if labels {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(|e| fail(path, e))?;
        }
    }
    root.present().map_err(|e| fail(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_of_the_requested_size_even_with_gaps() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lines.png");
        let s = |label: &str, ys: &[f64]| Series {
            label: label.into(),
            points: ys.iter().enumerate().map(|(i, y)| (i as f64 + 1.0, *y)).collect(),
        };
        let panels = [
            ("Loss", "cross-entropy", vec![s("train", &[2.0, 1.0, f64::NAN]), s("test", &[2.1, 1.2, 0.9])]),
            ("Accuracy", "top-1", vec![s("train", &[])]),
        ];
        line_panels(&path, (800, 300), &panels).unwrap();
        assert_eq!(crate::png_size(&path), (800, 300));
    }
}
