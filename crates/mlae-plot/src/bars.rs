//! Grouped bar charts: one group per category, one bar per series within it (the report's
//! domain means, the analysis's expert similarity per task).

use crate::{PlotError, fail, font::register_plot_font};
use plotters::prelude::*;
use std::path::Path;

/// What a grouped bar chart shows.
#[derive(Debug, Clone, Default)]
pub struct BarChart {
    pub title: String,
    /// The y axis description.
    pub y_label: String,
    /// One group of bars per category, labelled under it.
    pub categories: Vec<String>,
    /// (legend label, value per category); a missing value leaves a gap.
    pub series: Vec<(String, Vec<Option<f64>>)>,
    /// The y range; `None` fits the values (with zero) and pads them by 10 %.
    pub y_range: Option<(f64, f64)>,
}

/// Legend panel width on the right, so the legend never hides a bar.
const LEGEND: u32 = 270;

/// Draws `chart` into a PNG of `size` pixels. Bars rise from zero (or from the bottom of the
/// range when it starts above zero).
pub fn grouped_bars(path: &Path, size: (u32, u32), chart: &BarChart) -> Result<(), PlotError> {
    if chart.series.is_empty() || chart.categories.is_empty() {
        return Err(fail(path, "nothing to draw"));
    }
    let values: Vec<f64> = chart.series.iter().flat_map(|(_, v)| v.iter().flatten().copied()).collect();
    if values.is_empty() {
        return Err(fail(path, "no category has a value yet"));
    }
    let (y0, y1) = chart.y_range.unwrap_or_else(|| {
        let lo = values.iter().copied().fold(0.0f64, f64::min);
        let hi = values.iter().copied().fold(0.0f64, f64::max);
        let pad = ((hi - lo) * 0.1).max(0.02);
        (lo - pad * 0.2, hi + pad)
    });
    let base = 0.0f64.clamp(y0, y1);
    let font = register_plot_font();
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(path, e))?;
    let (plot, legend) = root.split_horizontally(if font { size.0.saturating_sub(LEGEND) } else { size.0 });
    let n_cat = chart.categories.len();
    let mut builder = ChartBuilder::on(&plot);
    builder.margin(15);
    if font {
        builder.caption(&chart.title, ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(60);
    }
    let mut c = builder.build_cartesian_2d(0f64..n_cat as f64, y0..y1).map_err(|e| fail(path, e))?;
    let mut mesh = c.configure_mesh();
    mesh.disable_x_mesh();
    let labels = chart.categories.clone();
    // Category names sit at the group centres (x = i + 0.5) of the continuous axis.
    let fmt_x = move |x: &f64| {
        let i = x.floor() as usize;
        if (x - i as f64 - 0.5).abs() < 1e-6 {
            labels.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    if font {
        mesh.x_labels(2 * n_cat + 1).x_label_formatter(&fmt_x).y_desc(chart.y_label.as_str());
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| fail(path, e))?;
    let width = 0.8 / chart.series.len() as f64;
    for (si, (label, vals)) in chart.series.iter().enumerate() {
        let color = Palette99::pick(si).to_rgba();
        let bars: Vec<Rectangle<(f64, f64)>> = vals
            .iter()
            .enumerate()
            .filter_map(|(ci, v)| {
                v.map(|v| {
                    let x0 = ci as f64 + 0.1 + si as f64 * width;
                    Rectangle::new([(x0, base), (x0 + width * 0.9, v)], color.filled())
                })
            })
            .collect();
        c.draw_series(bars).map_err(|e| fail(path, e))?;
        if font {
            let y = 60 + 24 * si as i32;
            legend
                .draw(&Rectangle::new([(10, y - 6), (24, y + 6)], color.filled()))
                .map_err(|e| fail(path, e))?;
            legend
                .draw(&Text::new(label.clone(), (32, y - 8), ("sans-serif", 15).into_font()))
                .map_err(|e| fail(path, e))?;
        }
    }
    root.present().map_err(|e| fail(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<(String, Vec<Option<f64>>)>) -> BarChart {
        BarChart {
            title: "t".into(),
            y_label: "y".into(),
            categories: vec!["a".into(), "b".into()],
            series,
            y_range: None,
        }
    }

    #[test]
    fn draws_groups_with_gaps_and_negative_values() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bars.png");
        let c = chart(vec![("x".into(), vec![Some(0.5), None]), ("y".into(), vec![Some(-0.1), Some(0.2)])]);
        grouped_bars(&path, (640, 480), &c).unwrap();
        assert_eq!(crate::png_size(&path), (640, 480));
        let fixed = BarChart {
            y_range: Some((40.0, 100.0)),
            ..chart(vec![("x".into(), vec![Some(70.0), Some(80.0)])])
        };
        grouped_bars(&path, (1200, 520), &fixed).unwrap();
        assert_eq!(crate::png_size(&path), (1200, 520));
    }

    #[test]
    fn an_empty_chart_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("none.png");
        let err = grouped_bars(&path, (100, 100), &chart(vec![("x".into(), vec![None, None])])).unwrap_err();
        assert!(err.to_string().contains("none.png") && err.to_string().contains("no category"), "{err}");
        assert!(grouped_bars(&path, (100, 100), &chart(vec![])).is_err());
    }
}
