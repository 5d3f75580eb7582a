//! The loss / accuracy plot written into every run directory (`curves.png`).

use crate::metrics::EpochMetrics;
use plotters::prelude::*;
use std::path::Path;

use crate::plot_font::register_plot_font as font_available;

/// A series to draw: a label and (x, y) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Draws one line chart per panel, side by side, into a PNG.
pub fn line_panels(
    path: &Path,
    size: (u32, u32),
    panels: &[(&str, &str, Vec<Series>)],
) -> Result<(), String> {
    let labels = font_available();
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
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
            .map_err(|e| e.to_string())?;
        let mut mesh = chart.configure_mesh();
        if labels {
            mesh.x_desc("epoch").y_desc(*y_label);
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| e.to_string())?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.1.is_finite()).collect();
            let drawn =
                chart.draw_series(LineSeries::new(pts, color.stroke_width(2))).map_err(|e| e.to_string())?;
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
                .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}

/// Loss and accuracy against epochs, training and every evaluated split.
pub fn plot_curves(metrics: &[EpochMetrics], path: &Path) -> Result<(), String> {
    let mut loss = vec![Series {
        label: "train loss".into(),
        points: metrics.iter().map(|m| (m.epoch as f64, m.train_loss)).collect(),
    }];
    let mut acc = vec![Series {
        label: "train acc".into(),
        points: metrics.iter().map(|m| (m.epoch as f64, m.train_acc)).collect(),
    }];
    let splits: std::collections::BTreeSet<&String> = metrics.iter().flat_map(|m| m.eval.keys()).collect();
    for split in splits {
        let pick = |f: fn(&crate::metrics::EvalResult) -> f64| -> Vec<(f64, f64)> {
            metrics.iter().filter_map(|m| m.eval.get(split).map(|e| (m.epoch as f64, f(e)))).collect()
        };
        loss.push(Series { label: format!("{split} loss"), points: pick(|e| e.loss) });
        acc.push(Series { label: format!("{split} acc"), points: pick(|e| e.acc) });
    }
    line_panels(path, (1200, 450), &[("Loss", "cross-entropy", loss), ("Accuracy", "top-1", acc)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::EvalResult;

    #[test]
    fn writes_a_png_of_the_requested_size() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("curves.png");
        let metrics: Vec<EpochMetrics> = (1..=5)
            .map(|e| EpochMetrics {
                epoch: e,
                step: e * 10,
                lr: 1e-3,
                train_loss: 2.0 / e as f64,
                train_acc: 0.1 * e as f64,
                eval: [("test".to_string(), EvalResult { acc: 0.09 * e as f64, loss: 2.1 / e as f64, n: 8 })]
                    .into_iter()
                    .collect(),
                images_per_s: 10.0,
                seconds: 1.0,
                peak_mem_mb: 1.0,
            })
            .collect();
        plot_curves(&metrics, &path).unwrap();
        let img = image_size(&path);
        assert_eq!(img, (1200, 450));
    }

    /// Width and height from a PNG's IHDR chunk.
    fn image_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        (w, h)
    }
}
