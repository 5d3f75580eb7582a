//! A confusion matrix as a PNG: true classes down, predicted classes across, each cell shaded
//! by the fraction of its true class (so small classes read as clearly as large ones), counts
//! written in the cells when they fit, class names on both axes.

use crate::{PlotError, fail, font::register_plot_font};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// Longest class name drawn on an axis; longer names are cut with an ellipsis.
const NAME_CHARS: usize = 18;

/// The side of one cell for `classes` classes: the matrix stays about 480 px wide.
fn cell_side(classes: usize) -> i32 {
    (480 / classes.max(1) as i32).clamp(6, 48)
}

/// The size of the confusion-matrix PNG for `classes` classes whose longest (drawn) name has
/// `name_chars` characters.
pub fn confusion_size(classes: usize, name_chars: usize) -> (u32, u32) {
    let names = 14 + 7 * name_chars.min(NAME_CHARS) as u32;
    let side = cell_side(classes) as u32 * classes as u32;
    (names + side + 20, 40 + side + names)
}

fn short(name: &str) -> String {
    if name.chars().count() <= NAME_CHARS {
        name.to_string()
    } else {
        name.chars().take(NAME_CHARS - 1).chain(std::iter::once('…')).collect()
    }
}

/// White (none of the true class) to dark blue (all of it).
fn shade(fraction: f64) -> RGBColor {
    let t = fraction.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

/// Draws the matrix of `counts` (row-major `[true][predicted]`, `classes.len()` squared) into
/// a PNG of [`confusion_size`], titled `title`.
pub fn confusion_matrix(
    path: &Path,
    title: &str,
    classes: &[String],
    counts: &[u64],
) -> Result<(), PlotError> {
    let c = classes.len();
    if counts.len() != c * c {
        return Err(fail(path, format!("{} counts for {c} classes", counts.len())));
    }
    let labels = register_plot_font();
    let names: Vec<String> = classes.iter().map(|n| short(n)).collect();
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(1);
    let (w, h) = confusion_size(c, longest);
    let margin = 14 + 7 * longest.min(NAME_CHARS) as i32;
    let cell = cell_side(c);
    let (x0, y0) = (margin, 40);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(path, e))?;
    for t in 0..c {
        let total: u64 = counts[t * c..(t + 1) * c].iter().sum();
        for p in 0..c {
            let n = counts[t * c + p];
            let frac = if total == 0 { 0.0 } else { n as f64 / total as f64 };
            let (cx, cy) = (x0 + p as i32 * cell, y0 + t as i32 * cell);
            root.draw(&Rectangle::new([(cx, cy), (cx + cell, cy + cell)], shade(frac).filled()))
                .map_err(|e| fail(path, e))?;
            if labels && cell >= 18 && n > 0 {
                let colour = if frac > 0.5 { WHITE } else { BLACK };
                let style = ("sans-serif", (cell / 3).clamp(8, 14))
                    .into_font()
                    .color(&colour)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                root.draw(&Text::new(n.to_string(), (cx + cell / 2, cy + cell / 2), style))
                    .map_err(|e| fail(path, e))?;
            }
        }
    }
    let side = cell * c as i32;
    root.draw(&Rectangle::new([(x0, y0), (x0 + side, y0 + side)], BLACK.stroke_width(1)))
        .map_err(|e| fail(path, e))?;
    if labels {
        let font = ("sans-serif", 12).into_font();
        root.draw(&Text::new(
            format!("{title} (rows: true class, columns: predicted)"),
            (8, 8),
            ("sans-serif", 14).into_font(),
        ))
        .map_err(|e| fail(path, e))?;
        let step = (14 / cell.max(1) + 1) as usize; // skip names that would overlap
        for (i, name) in names.iter().enumerate().step_by(step) {
            let mid = i as i32 * cell + cell / 2;
            let right = TextStyle::from(font.clone()).pos(Pos::new(HPos::Right, VPos::Center));
            root.draw(&Text::new(name.clone(), (x0 - 4, y0 + mid), right)).map_err(|e| fail(path, e))?;
            let down = TextStyle::from(font.clone().transform(FontTransform::Rotate90))
                .pos(Pos::new(HPos::Left, VPos::Center));
            root.draw(&Text::new(name.clone(), (x0 + mid, y0 + side + 4), down))
                .map_err(|e| fail(path, e))?;
        }
    }
    root.present().map_err(|e| fail(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_png_has_the_computed_size_and_bad_counts_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("confusion.png");
        let classes: Vec<String> = ["cat", "dog", "a very long class name indeed"].map(String::from).into();
        confusion_matrix(&path, "test", &classes, &[5, 1, 0, 2, 7, 1, 0, 0, 9]).unwrap();
        assert_eq!(crate::png_size(&path), confusion_size(3, NAME_CHARS));
        assert!(confusion_matrix(&path, "test", &classes, &[1, 2]).is_err());
        assert_eq!(short("a very long class name indeed").chars().count(), NAME_CHARS);
    }
}
