//! The analysis plots: the similarity heatmaps (Fig. 5) and bars (Fig. 4), and the expert
//! contribution grid (Figs. 6 and 7).

use super::experts::{ExpertMaps, MapScale};
use super::similarity::RunSimilarity;
use crate::error::{Result, TrainError};
use mlae_plot::register_plot_font as font_available;
use plotters::prelude::*;
use std::path::Path;

/// Side of one panel of the similarity heatmap PNG, in pixels.
pub const HEATMAP_PANEL: u32 = 220;
/// Panels per row of the similarity heatmap PNG.
pub const HEATMAP_COLUMNS: usize = 4;
/// Height of the colour-bar strip under the heatmap panels, in pixels.
pub const HEATMAP_COLORBAR: u32 = 50;
/// Height of the label row above the expert feature-map grid, in pixels.
pub const EXPERT_HEADER: u32 = 24;

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

/// The heatmap panels of one run: one per layer, then (for several layers of the same size)
/// their element-wise mean; `HEATMAP_COLUMNS` per row, a colour bar underneath. The PNG is
/// `min(panels, 4) * 220` wide and `rows * 220 + 50` high.
pub fn heatmap_panels(run: &RunSimilarity) -> Vec<(String, Vec<Vec<f64>>)> {
    let mut panels: Vec<(String, Vec<Vec<f64>>)> =
        run.layers.iter().map(|l| (format!("block {} {}", l.block, l.target), l.matrix.clone())).collect();
    let n = run.layers.first().map_or(0, |l| l.experts);
    if run.layers.len() > 1 && run.layers.iter().all(|l| l.experts == n) {
        let mut mean = vec![vec![0.0; n]; n];
        for l in &run.layers {
            for (i, row) in l.matrix.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    mean[i][j] += v / run.layers.len() as f64;
                }
            }
        }
        panels.push(("mean over layers".into(), mean));
    }
    panels
}

/// The size of the heatmap PNG for `panels` panels.
pub fn heatmap_size(panels: usize) -> (u32, u32) {
    let cols = panels.clamp(1, HEATMAP_COLUMNS);
    let rows = panels.max(1).div_ceil(HEATMAP_COLUMNS);
    (cols as u32 * HEATMAP_PANEL, rows as u32 * HEATMAP_PANEL + HEATMAP_COLORBAR)
}

fn plot_err(path: &Path) -> impl Fn(String) -> TrainError + '_ {
    move |message| TrainError::Plot { path: path.to_path_buf(), message }
}

/// Draws [`heatmap_panels`] of a run into a PNG (paper Fig. 5).
pub fn draw_similarity_heatmaps(run: &RunSimilarity, path: &Path) -> Result<()> {
    let labels = font_available();
    let panels = heatmap_panels(run);
    let (w, h) = heatmap_size(panels.len());
    let perr = plot_err(path);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(e.to_string()))?;
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
                .map_err(|e| perr(e.to_string()))?;
        }
        for (i, r) in m.iter().enumerate() {
            for (j, v) in r.iter().enumerate() {
                let (cx, cy) = (mx + j as i32 * cell, my + i as i32 * cell);
                top.draw(&Rectangle::new([(cx, cy), (cx + cell, cy + cell)], diverging(*v).filled()))
                    .map_err(|e| perr(e.to_string()))?;
                if labels && cell >= 24 {
                    let style = ("sans-serif", (cell / 3).min(14)).into_font().color(&BLACK);
                    top.draw(&Text::new(format!("{v:.2}"), (cx + 2, cy + cell / 3), style))
                        .map_err(|e| perr(e.to_string()))?;
                }
            }
        }
        top.draw(&Rectangle::new([(mx, my), (mx + cell * n, my + cell * n)], BLACK.stroke_width(1)))
            .map_err(|e| perr(e.to_string()))?;
    }
    // The run's label, then a colour bar from -1 to +1 with its ticks underneath.
    let (bx0, bx1, by0, by1) = (40i32, w as i32 - 40, 20i32, 32i32);
    let width = (bx1 - bx0).max(1);
    for x in bx0..bx1 {
        let v = -1.0 + 2.0 * (x - bx0) as f64 / width as f64;
        bar.draw(&Rectangle::new([(x, by0), (x + 1, by1)], diverging(v).filled()))
            .map_err(|e| perr(e.to_string()))?;
    }
    if labels {
        bar.draw(&Text::new(
            format!("{} (cosine similarity)", run.label),
            (bx0, 3),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(|e| perr(e.to_string()))?;
        for (v, x) in [(-1.0, bx0), (0.0, (bx0 + bx1) / 2), (1.0, bx1)] {
            bar.draw(&Text::new(format!("{v:+.0}"), (x - 8, by1 + 3), ("sans-serif", 12).into_font()))
                .map_err(|e| perr(e.to_string()))?;
        }
    }
    root.present().map_err(|e| perr(e.to_string()))
}

/// The bars of Fig. 4: one group per task (in order of appearance), one bar per label within
/// it (runs with the same task and label are averaged).
pub fn bar_groups(runs: &[RunSimilarity]) -> (Vec<String>, Vec<String>, Vec<Vec<Option<f64>>>) {
    let mut tasks: Vec<String> = Vec::new();
    let mut series: Vec<String> = Vec::new();
    for r in runs {
        if !tasks.contains(&r.task) {
            tasks.push(r.task.clone());
        }
        if !series.contains(&r.label) {
            series.push(r.label.clone());
        }
    }
    let values = tasks
        .iter()
        .map(|t| {
            series
                .iter()
                .map(|s| {
                    let v: Vec<f64> = runs
                        .iter()
                        .filter(|r| &r.task == t && &r.label == s)
                        .filter_map(|r| r.mean)
                        .collect();
                    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
                })
                .collect()
        })
        .collect();
    (tasks, series, values)
}

/// Draws the runs' mean similarities as grouped bars (paper Fig. 4).
pub fn draw_similarity_bars(runs: &[RunSimilarity], path: &Path) -> Result<()> {
    let (tasks, series, values) = bar_groups(runs);
    // Room for every bar, plus the legend panel on the right.
    let w = (160 + tasks.len() as u32 * (series.len() as u32 * 36 + 30)).max(640) + 270;
    let chart = mlae_plot::BarChart {
        title: "Mean expert cosine similarity".into(),
        y_label: "cosine similarity".into(),
        series: series
            .iter()
            .enumerate()
            .map(|(s, name)| (name.clone(), values.iter().map(|row| row[s]).collect()))
            .collect(),
        categories: tasks,
        y_range: None,
    };
    Ok(mlae_plot::grouped_bars(path, (w, 480), &chart)?)
}

/// Size of the expert grid PNG: `(1 + experts) * cell` wide, `EXPERT_HEADER + images * cell`
/// high.
pub fn expert_grid_size(images: usize, experts: usize, cell: u32) -> (u32, u32) {
    ((1 + experts as u32) * cell, EXPERT_HEADER + images as u32 * cell)
}

/// Dark blue - cyan - yellow - red, for contribution sizes in [0, 1].
fn sequential(t: f32) -> [f32; 3] {
    const STOPS: [(f32, [f32; 3]); 5] = [
        (0.0, [20.0, 20.0, 120.0]),
        (0.3, [30.0, 130.0, 220.0]),
        (0.55, [80.0, 210.0, 170.0]),
        (0.8, [250.0, 220.0, 60.0]),
        (1.0, [220.0, 40.0, 30.0]),
    ];
    let t = t.clamp(0.0, 1.0);
    for w in STOPS.windows(2) {
        let ((t0, c0), (t1, c1)) = (w[0], w[1]);
        if t <= t1 {
            let u = (t - t0) / (t1 - t0);
            return [0, 1, 2].map(|i| c0[i] + (c1[i] - c0[i]) * u);
        }
    }
    STOPS[4].1
}

/// Bilinear sample of a `(h, w)` row-major grid at continuous coordinates (pixel centres).
fn bilinear(grid: &[f32], (h, w): (usize, usize), y: f32, x: f32) -> f32 {
    let y = (y - 0.5).clamp(0.0, (h - 1) as f32);
    let x = (x - 0.5).clamp(0.0, (w - 1) as f32);
    let (y0, x0) = (y.floor() as usize, x.floor() as usize);
    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
    let (fy, fx) = (y - y0 as f32, x - x0 as f32);
    let g = |r: usize, c: usize| grid[r * w + c];
    let top = g(y0, x0) * (1.0 - fx) + g(y0, x1) * fx;
    let bot = g(y1, x0) * (1.0 - fx) + g(y1, x1) * fx;
    top * (1.0 - fy) + bot * fy
}

/// Draws the grid (rows images, first column the image, then one column per expert, each
/// contribution map upsampled bilinearly and laid over the grey image) into a PNG; returns its
/// size.
pub fn draw_expert_grid(
    maps: &ExpertMaps,
    set: &mlae_data::ImageSet,
    scale: MapScale,
    cell: u32,
    path: &Path,
) -> Result<(u32, u32)> {
    let n_img = maps.sizes.len();
    let (w, h) = expert_grid_size(n_img, maps.experts, cell);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    // Colour ranges.
    let range = |vals: &mut dyn Iterator<Item = f32>| {
        vals.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
    };
    let range_of = |i: usize, e: usize| -> (f32, f32) {
        match scale {
            MapScale::Map => range(&mut maps.sizes[i][e].iter().copied()),
            MapScale::Image => range(&mut maps.sizes[i].iter().flatten().copied()),
            MapScale::Expert => range(&mut maps.sizes.iter().flat_map(|img| img[e].iter().copied())),
        }
    };
    let (ih, iw) = (set.height, set.width);
    let cellf = cell as f32;
    for i in 0..n_img {
        let img = set.image(i);
        let y0 = EXPERT_HEADER + i as u32 * cell;
        let pixel = |py: u32, px: u32| -> [f32; 3] {
            let sy = ((py as f32 + 0.5) * ih as f32 / cellf) as usize;
            let sx = ((px as f32 + 0.5) * iw as f32 / cellf) as usize;
            let o = (sy.min(ih - 1) * iw + sx.min(iw - 1)) * 3;
            [img[o] as f32, img[o + 1] as f32, img[o + 2] as f32]
        };
        for col in 0..=maps.experts {
            let x0 = col as u32 * cell;
            let (lo, hi) = if col > 0 { range_of(i, col - 1) } else { (0.0, 1.0) };
            let span = if hi > lo { hi - lo } else { 1.0 };
            for py in 0..cell {
                for px in 0..cell {
                    let rgb = pixel(py, px);
                    let out = if col == 0 {
                        rgb
                    } else {
                        let gy = (py as f32 + 0.5) * maps.grid.0 as f32 / cellf;
                        let gx = (px as f32 + 0.5) * maps.grid.1 as f32 / cellf;
                        let v = (bilinear(&maps.sizes[i][col - 1], maps.grid, gy, gx) - lo) / span;
                        let grey = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
                        let c = sequential(v);
                        [0, 1, 2].map(|k| 0.35 * grey + 0.65 * c[k])
                    };
                    // A one-pixel white border separates the cells.
                    let border = px == 0 || py == 0;
                    let o = (((y0 + py) * w + x0 + px) * 3) as usize;
                    for k in 0..3 {
                        buf[o + k] = if border { 255 } else { out[k].round().clamp(0.0, 255.0) as u8 };
                    }
                }
            }
        }
    }
    let perr = plot_err(path);
    if font_available() {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        for col in 0..=maps.experts {
            let text = if col == 0 { "image".to_string() } else { format!("expert {col}") };
            root.draw(&Text::new(text, (col as i32 * cell as i32 + 6, 4), ("sans-serif", 15).into_font()))
                .map_err(|e| perr(e.to_string()))?;
        }
        root.present().map_err(|e| perr(e.to_string()))?;
    }
    image::save_buffer(path, &buf, w, h, image::ExtendedColorType::Rgb8).map_err(|e| perr(e.to_string()))?;
    Ok((w, h))
}
