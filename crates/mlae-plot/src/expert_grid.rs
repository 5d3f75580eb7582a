//! A grid of images and per-expert contribution maps laid over them (the analysis's expert
//! feature maps, paper Figs. 6 and 7): one row per image, first column the image, then one
//! column per expert.

use crate::{PlotError, fail, font::register_plot_font};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Height of the label row above the expert feature-map grid, in pixels.
pub const EXPERT_HEADER: u32 = 24;

/// How the feature maps' colours are scaled (min to max of the chosen group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapScale {
    /// Each map on its own scale: where each expert acts, whatever its overall size.
    Map,
    /// One scale per image (row): experts of one image compared with each other.
    Image,
    /// One scale per expert (column): one expert compared across images.
    Expert,
}

/// What [`expert_grid`] draws.
#[derive(Debug, Clone, Copy)]
pub struct ExpertGrid<'a> {
    /// Number of experts (columns after the image).
    pub experts: usize,
    /// The maps' patch grid (rows, columns).
    pub grid: (usize, usize),
    /// `sizes[image][expert]`: one value per patch, row-major over `grid`.
    pub sizes: &'a [Vec<Vec<f32>>],
    /// The images, uint8 RGB row-major (HWC), one per row of `sizes`.
    pub images: &'a [&'a [u8]],
    /// The images' (height, width).
    pub image_size: (usize, usize),
    pub scale: MapScale,
    /// Side of one cell of the grid, in pixels.
    pub cell: u32,
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
pub fn expert_grid(path: &Path, maps: &ExpertGrid<'_>) -> Result<(u32, u32), PlotError> {
    let (scale, cell) = (maps.scale, maps.cell);
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
    let (ih, iw) = maps.image_size;
    let cellf = cell as f32;
    for i in 0..n_img {
        let img = maps.images[i];
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
    if register_plot_font() {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        for col in 0..=maps.experts {
            let text = if col == 0 { "image".to_string() } else { format!("expert {col}") };
            root.draw(&Text::new(text, (col as i32 * cell as i32 + 6, 4), ("sans-serif", 15).into_font()))
                .map_err(|e| fail(path, e))?;
        }
        root.present().map_err(|e| fail(path, e))?;
    }
    image::save_buffer(path, &buf, w, h, image::ExtendedColorType::Rgb8).map_err(|e| fail(path, e))?;
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_has_one_row_per_image_and_a_column_per_expert() {
        assert_eq!(expert_grid_size(2, 8, 100), (900, EXPERT_HEADER + 200));
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("experts.png");
        let image: Vec<u8> = (0..8 * 8 * 3).map(|i| (i % 256) as u8).collect();
        let sizes: Vec<Vec<Vec<f32>>> =
            (0..2).map(|i| (0..3).map(|e| (0..4).map(|p| (i + e + p) as f32).collect()).collect()).collect();
        for scale in [MapScale::Map, MapScale::Image, MapScale::Expert] {
            let grid = ExpertGrid {
                experts: 3,
                grid: (2, 2),
                sizes: &sizes,
                images: &[&image, &image],
                image_size: (8, 8),
                scale,
                cell: 16,
            };
            assert_eq!(expert_grid(&path, &grid).unwrap(), expert_grid_size(2, 3, 16));
            assert_eq!(crate::png_size(&path), expert_grid_size(2, 3, 16));
        }
    }
}
