//! Mean ± spread against a numeric x, one panel per quantity (the report's accuracy against
//! the training length). Every panel shares one x axis, so that panels compare at a glance. It
//! is logarithmic when it spans a decade or more, so that 10, 30 and 100 epochs sit evenly
//! apart, and then ticked only at the x values drawn (the training lengths).

use crate::{PlotError, fail, font::register_plot_font};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use std::path::Path;

/// A line of means with error bars: (x, mean, half-width) points; a half-width of 0 draws none.
#[derive(Debug, Clone)]
pub struct ErrorSeries {
    pub label: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// One panel of [`error_panels`].
#[derive(Debug, Clone)]
pub struct ErrorPanel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<ErrorSeries>,
}

/// Draws the panels side by side into a PNG of `size` pixels; non-finite points are left out.
pub fn error_panels(path: &Path, size: (u32, u32), panels: &[ErrorPanel]) -> Result<(), PlotError> {
    let Some(axis) = XAxis::of(panels) else { return Err(fail(path, "nothing to draw")) };
    let labels = register_plot_font();
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(path, e))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        let pts: Vec<&(f64, f64, f64)> =
            panel.series.iter().flat_map(|s| s.points.iter()).filter(|p| finite(p)).collect();
        if pts.is_empty() {
            continue;
        }
        let y_min = pts.iter().map(|p| p.1 - p.2).fold(f64::INFINITY, f64::min);
        let y_max = pts.iter().map(|p| p.1 + p.2).fold(f64::NEG_INFINITY, f64::max);
        let pad = ((y_max - y_min) * 0.08).max(0.1);
        let y_range = (y_min - pad)..(y_max + pad);
        let mut builder = ChartBuilder::on(area);
        builder.margin(14);
        if labels {
            builder.caption(&panel.title, ("sans-serif", 20)).x_label_area_size(40).y_label_area_size(60);
        }
        let (lo, hi) = (axis.lo(), axis.hi());
        if axis.log {
            let x_range = (lo / 1.2..hi * 1.2).log_scale().with_key_points(axis.ticks.clone());
            let chart = builder.build_cartesian_2d(x_range, y_range).map_err(|e| fail(path, e))?;
            draw(path, chart, panel, labels)?;
        } else {
            let w = ((hi - lo) * 0.08).max(0.5);
            let x_range = (lo - w)..(hi + w);
            let chart = builder.build_cartesian_2d(x_range, y_range).map_err(|e| fail(path, e))?;
            draw(path, chart, panel, labels)?;
        }
    }
    root.present().map_err(|e| fail(path, e))
}

/// The x axis all panels share: every x value drawn in any panel, ascending (the log axis's
/// ticks; the first and last bound the axis), and whether the axis is logarithmic (positive
/// values spanning a decade or more).
#[derive(Debug, PartialEq)]
struct XAxis {
    ticks: Vec<f64>,
    log: bool,
}

impl XAxis {
    /// `None` when no panel has a point that can be drawn.
    fn of(panels: &[ErrorPanel]) -> Option<Self> {
        let mut ticks: Vec<f64> = panels
            .iter()
            .flat_map(|p| p.series.iter().flat_map(|s| s.points.iter()))
            .filter(|p| finite(p))
            .map(|p| p.0)
            .collect();
        ticks.sort_by(f64::total_cmp);
        ticks.dedup();
        let (&lo, &hi) = (ticks.first()?, ticks.last()?);
        Some(Self { log: lo > 0.0 && hi / lo >= 10.0, ticks })
    }

    fn lo(&self) -> f64 {
        self.ticks[0]
    }

    fn hi(&self) -> f64 {
        self.ticks[self.ticks.len() - 1]
    }
}

/// Whether a point can be drawn: x, mean and half-width all finite.
fn finite(p: &(f64, f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite() && p.2.is_finite()
}

/// The mesh, the lines, the error bars and the legend of one panel.
fn draw<'a, X>(
    path: &Path,
    mut chart: ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
    panel: &ErrorPanel,
    labels: bool,
) -> Result<(), PlotError>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut mesh = chart.configure_mesh();
    if labels {
        mesh.x_desc(&panel.x_label).y_desc(&panel.y_label).x_label_formatter(&|x| format!("{x:.0}"));
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| fail(path, e))?;
    for (i, s) in panel.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64, f64)> = s.points.iter().copied().filter(finite).collect();
        let drawn = chart
            .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), color.stroke_width(2)))
            .map_err(|e| fail(path, e))?;
        if labels {
            drawn
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart
            .draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 3, color.filled())))
            .map_err(|e| fail(path, e))?;
        chart
            .draw_series(
                pts.iter().filter(|p| p.2 > 0.0).map(|p| {
                    ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, color.stroke_width(2), 8)
                }),
            )
            .map_err(|e| fail(path, e))?;
    }
    if labels {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| fail(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_log_and_linear_panels_with_and_without_error_bars() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("curve.png");
        let series =
            |label: &str, pts: &[(f64, f64, f64)]| ErrorSeries { label: label.into(), points: pts.to_vec() };
        let panel = |title: &str, s: Vec<ErrorSeries>| ErrorPanel {
            title: title.into(),
            x_label: "epochs".into(),
            y_label: "test accuracy (%)".into(),
            series: s,
        };
        let panels = [
            panel("log x", vec![series("a", &[(10.0, 90.0, 0.5), (30.0, 92.0, 0.0), (100.0, 93.0, 0.4)])]),
            panel("linear x", vec![series("b", &[(1.0, 50.0, 1.0), (3.0, f64::NAN, 0.0), (5.0, 60.0, 2.0)])]),
        ];
        // one axis for both panels, ticked where there are points; 1..100 spans two decades
        assert_eq!(XAxis::of(&panels), Some(XAxis { ticks: vec![1.0, 5.0, 10.0, 30.0, 100.0], log: true }));
        assert_eq!(XAxis::of(&panels[1..]), Some(XAxis { ticks: vec![1.0, 5.0], log: false }));
        error_panels(&path, (900, 400), &panels).unwrap();
        assert_eq!(crate::png_size(&path), (900, 400));
        let empty = [panel("empty", vec![series("c", &[(1.0, f64::NAN, 0.0)])])];
        let err = error_panels(&tmp.path().join("none.png"), (400, 300), &empty).unwrap_err();
        assert!(err.to_string().contains("nothing to draw"), "{err}");
    }
}
