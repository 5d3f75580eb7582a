//! The demo's structured tasks, drawn by the toolkit itself: scenes whose label is a geometric
//! property, the counterpart of VTAB-1k's structured group (dSprites location and orientation,
//! CLEVR counting), where the MLAE paper reports its largest gain (section 4.2, Figure 3).
//! Nothing is downloaded. Each image is a pure function of (task seed, generator, pool, index)
//! drawn from the crate's counter-based streams with IEEE basic arithmetic only (no libm
//! `sin`, whose last bit varies between platforms), so a build is byte-identical anywhere and
//! images can be drawn in parallel.
//!
//! The tasks (`side` x `side` grey, anti-aliased by 4 x 4 supersampling):
//! - `dsprites_loc`: one white square, ellipse or heart (dSprites' shapes) of random size and
//!   rotation on black; label: the horizontal position of its centre of mass, in `classes`
//!   equal bins over the range where every sprite fits. The demo uses 8 bins, not VTAB's 16:
//!   the demo backbone sees 56 px in 4 x 4 patches, where 16 bins would be 2.5 px apart.
//! - `dsprites_ori`: one white heart or isosceles triangle at a random place and size; label:
//!   its rotation, counter-clockwise from "tip up", in `classes` equal bins of [0, 360). Both
//!   shapes look different at every angle of the circle (dSprites' square and ellipse repeat
//!   every 90 and 180 degrees, which makes their angle bins ambiguous), so every label can be
//!   read off the image.
//! - `count`: 1 to `classes` separate discs and squares of random size and grey level on a plain
//!   dark background; label: the number of objects minus one. VTAB's CLEVR count has 3 to 10
//!   objects (8 classes); the demo uses 1 to 10, whose ten classes split the demo sizes evenly.
//!
//! Classes are balanced: each split's labels are its positions cycled through the classes
//! (`i % classes`), shuffled; each image is then drawn given its label.

use crate::demo::{BuiltTask, DemoRows, DemoSplits, sha2_hex, split_sizes, stamp_text, write_task};
use crate::error::{DataError, Result};
use crate::manifest::{DemoSource, DemoTask, GenSource, Generator};
use crate::rng::{DOMAIN_GENERATED, Rng};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Bumped whenever a generator draws differently, so that old builds are redone.
pub const GENERATOR_VERSION: u32 = 1;
/// Image sides a generator accepts: room for ten separate objects at the smallest.
const SIDES: std::ops::RangeInclusive<u32> = 32..=512;
/// The most objects `count` places (its largest `classes`).
pub const MAX_COUNT: usize = 10;

/// Sprite radius (every shape lies within this distance of its centre), as fractions of side.
const SPRITE_RADIUS: (f64, f64) = (0.09, 0.17);
/// Object radius of `count`, and the least gap between two objects, as fractions of side.
const OBJECT_RADIUS: (f64, f64) = (0.05, 0.075);
const OBJECT_GAP: f64 = 0.05;

/// Whether a generated source can draw `classes` classes.
pub(crate) fn check_source(src: &GenSource, classes: usize) -> Result<(), String> {
    if !SIDES.contains(&src.side) {
        return Err(format!("side {} is not in {}..={}", src.side, SIDES.start(), SIDES.end()));
    }
    let (lo, hi) = sprite_span(src.side as f64);
    match src.generator {
        Generator::DspritesLoc if (hi - lo) / (classes as f64) < 2.0 => Err(format!(
            "{classes} position bins over {:.1} px are narrower than 2 px; use fewer classes or a larger side",
            hi - lo
        )),
        Generator::DspritesOri if classes > 72 => {
            Err(format!("{classes} angle bins are narrower than 5 degrees; use at most 72"))
        }
        Generator::Count if classes > MAX_COUNT => {
            Err(format!("count places at most {MAX_COUNT} objects, not {classes}"))
        }
        _ => Ok(()),
    }
}

/// The range of sprite centres (x or y) at which the largest sprite stays 1 px inside.
fn sprite_span(side: f64) -> (f64, f64) {
    let margin = SPRITE_RADIUS.1 * side + 1.0;
    (margin, side - margin)
}

/// A generated task's images: `trainval` holds train800 (its first `n_train` rows) then
/// val200; `test` is a pool of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub trainval: DemoRows,
    pub test: DemoRows,
    pub n_train: usize,
}

/// Draws a generated task's images for the split sizes of `sizes` (train800, val200, test).
pub fn generate(
    src: &GenSource,
    classes: usize,
    sizes: &BTreeMap<String, usize>,
    seed: u64,
) -> Result<Generated> {
    check_source(src, classes)
        .map_err(|e| DataError::Invalid(format!("generated {}: {e}", src.describe())))?;
    let (n_train, n_val, n_test) = split_sizes(sizes)?;
    // Streams: per generator, 0..3 the label shuffles of train800, val200, test; 3 and 4 the
    // images of the train800val200 and test pools (one stream per image, by row).
    let stream = |k: u64| src.generator as u64 * 16 + k;
    let mut trainval = balanced_labels(n_train, classes, Rng::new(seed, DOMAIN_GENERATED, stream(0), 0));
    trainval.extend(balanced_labels(n_val, classes, Rng::new(seed, DOMAIN_GENERATED, stream(1), 0)));
    let test = balanced_labels(n_test, classes, Rng::new(seed, DOMAIN_GENERATED, stream(2), 0));
    let pool = |labels: Vec<i64>, k: u64| -> Result<DemoRows> {
        let side = src.side as usize;
        let images: Vec<Vec<u8>> = labels
            .par_iter()
            .enumerate()
            .map(|(i, &label)| {
                let mut rng = Rng::new(seed, DOMAIN_GENERATED, stream(k), i as u64);
                draw(src.generator, src.side, classes, label as usize, &mut rng)
            })
            .collect::<Result<_>>()?;
        Ok(DemoRows { side, pixels: images.concat(), labels })
    };
    Ok(Generated { trainval: pool(trainval, 3)?, test: pool(test, 4)?, n_train })
}

/// Builds `<demo_root>/<folder>` of a generated task: train800 is rows 0..800 of
/// `images/train800val200/`, val200 the rest, test `images/test/`, all listed in row order
/// (their labels are shuffled already). Written like the downloaded tasks (`crate::demo`);
/// `SOURCE.txt` records the SHA-256 of all pixels.
pub fn build_task(task: &DemoTask, demo_root: &Path) -> Result<BuiltTask> {
    let DemoSource::Generated(src) = &task.source else {
        return Err(DataError::Invalid(format!("demo task {}: not a generated source", task.name)));
    };
    let g = generate(src, task.classes, &task.sizes, task.seed)?;
    let splits = DemoSplits {
        train800: (0..g.n_train).collect(),
        val200: (g.n_train..g.trainval.labels.len()).collect(),
        test: (0..g.test.labels.len()).collect(),
    };
    let digest = sha2_hex(&[&g.trainval.pixels[..], &g.test.pixels[..]].concat());
    let stamp = stamp_text(task, &format!("\"{digest}\""));
    write_task(&g.trainval, &g.test, &splits, task, &stamp, demo_root)
}

/// `n` labels, `i % classes` for position `i`, in a seeded shuffled order: every class gets
/// `n / classes` or one more.
fn balanced_labels(n: usize, classes: usize, mut rng: Rng) -> Vec<i64> {
    let mut labels: Vec<i64> = (0..n).map(|i| (i % classes) as i64).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        labels.swap(i, j);
    }
    labels
}

/// The shapes, each in its own frame: unit radius (it lies within the unit disc), y up, its
/// centre of mass at the origin (the triangle: its circumcentre), "tip up" for the heart and
/// the triangle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Square,
    Ellipse,
    Heart,
    Triangle,
    Disc,
}

/// The heart is the curve (u^2 + v^2 - 1)^3 = u^2 v^3, whose point is at (0, -1) and whose
/// centre of mass is at v = 0.2935; scaled by 1/1.3 it lies within 0.995 of that centre.
const HEART_SCALE: f64 = 1.3;
const HEART_CENTRE: f64 = 0.2935;
/// The triangle's base corners sit 145 degrees round from its apex (0, 1): (+-sin, cos).
const TRIANGLE_BASE: (f64, f64) = (0.573_576_436_351_046, -0.819_152_044_288_992);

impl Shape {
    fn contains(self, x: f64, y: f64) -> bool {
        match self {
            // Half-side 1/sqrt(2): the corners are on the unit circle.
            Shape::Square => {
                x.abs() <= std::f64::consts::FRAC_1_SQRT_2 && y.abs() <= std::f64::consts::FRAC_1_SQRT_2
            }
            // Semi-axes 1 and 1/2.
            Shape::Ellipse => x * x + 4.0 * y * y <= 1.0,
            Shape::Disc => x * x + y * y <= 1.0,
            Shape::Heart => {
                // Turned so that the point is up.
                let (u, v) = (x * HEART_SCALE, HEART_CENTRE - y * HEART_SCALE);
                let a = u * u + v * v - 1.0;
                a * a * a <= u * u * v * v * v
            }
            Shape::Triangle => {
                let (s, c) = TRIANGLE_BASE;
                y >= c && y <= 1.0 && x.abs() <= s * (1.0 - y) / (1.0 - c)
            }
        }
    }
}

/// A shape placed in the image: centre (x right, y down, px), radius (px), rotation
/// counter-clockwise (degrees), grey level.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Placed {
    shape: Shape,
    x: f64,
    y: f64,
    radius: f64,
    degrees: f64,
    grey: f64,
}

/// One image of `generator` with `label`, drawn from `rng`.
fn draw(generator: Generator, side: u32, classes: usize, label: usize, rng: &mut Rng) -> Result<Vec<u8>> {
    let (background, shapes) = scene(generator, side as f64, classes, label, rng)?;
    let mut canvas = vec![background; (side * side) as usize];
    for p in &shapes {
        paint(&mut canvas, side as usize, p);
    }
    Ok(canvas.iter().map(|&v| v.round().clamp(0.0, 255.0) as u8).collect())
}

/// What an image shows: its background grey and its shapes.
fn scene(
    generator: Generator,
    side: f64,
    classes: usize,
    label: usize,
    rng: &mut Rng,
) -> Result<(f64, Vec<Placed>)> {
    let (lo, hi) = sprite_span(side);
    let bin = |range: (f64, f64), rng: &mut Rng| {
        let width = (range.1 - range.0) / classes as f64;
        rng.uniform(range.0 + width * label as f64, range.0 + width * (label + 1) as f64)
    };
    let radius = |rng: &mut Rng| rng.uniform(SPRITE_RADIUS.0 * side, SPRITE_RADIUS.1 * side);
    Ok(match generator {
        Generator::DspritesLoc => {
            let shape = [Shape::Square, Shape::Ellipse, Shape::Heart][rng.below(3) as usize];
            let x = bin((lo, hi), rng);
            let (y, radius, degrees) = (rng.uniform(lo, hi), radius(rng), rng.uniform(0.0, 360.0));
            (0.0, vec![Placed { shape, x, y, radius, degrees, grey: 255.0 }])
        }
        Generator::DspritesOri => {
            let shape = [Shape::Heart, Shape::Triangle][rng.below(2) as usize];
            let degrees = bin((0.0, 360.0), rng);
            let (x, y, radius) = (rng.uniform(lo, hi), rng.uniform(lo, hi), radius(rng));
            (0.0, vec![Placed { shape, x, y, radius, degrees, grey: 255.0 }])
        }
        Generator::Count => (rng.uniform(0.0, 60.0), place_objects(side, label + 1, rng)?),
    })
}

/// `n` discs and squares of random size and grey level (120..255, at least 60 above any
/// background), each `OBJECT_GAP * side` clear of the others and 1 px inside the image.
/// Placed one after the other at random; a layout with no room left for the next object is
/// started again (rare at ten objects: they cover about a quarter of the image).
fn place_objects(side: f64, n: usize, rng: &mut Rng) -> Result<Vec<Placed>> {
    for _ in 0..1000 {
        let mut placed: Vec<Placed> = Vec::with_capacity(n);
        'object: for _ in 0..n {
            let radius = rng.uniform(OBJECT_RADIUS.0 * side, OBJECT_RADIUS.1 * side);
            let shape = [Shape::Disc, Shape::Square][rng.below(2) as usize];
            let grey = rng.uniform(120.0, 255.0);
            let (lo, hi) = (radius + 1.0, side - radius - 1.0);
            for _ in 0..200 {
                let (x, y) = (rng.uniform(lo, hi), rng.uniform(lo, hi));
                let clear = placed.iter().all(|p| {
                    let d = p.radius + radius + OBJECT_GAP * side;
                    (p.x - x) * (p.x - x) + (p.y - y) * (p.y - y) >= d * d
                });
                if clear {
                    placed.push(Placed { shape, x, y, radius, degrees: 0.0, grey });
                    continue 'object;
                }
            }
            break;
        }
        if placed.len() == n {
            return Ok(placed);
        }
    }
    Err(DataError::Invalid(format!("count: no room for {n} objects in {side} px")))
}

/// Paints `p` over `canvas` with its coverage of each pixel (4 x 4 samples) as opacity.
fn paint(canvas: &mut [f64], side: usize, p: &Placed) {
    const N: usize = 4;
    let (sin, cos) = sin_cos_degrees(p.degrees);
    let first = |c: f64| (c - p.radius - 1.0).floor().max(0.0) as usize;
    let last = |c: f64| ((c + p.radius + 1.0).ceil() as usize).min(side);
    for row in first(p.y)..last(p.y) {
        for col in first(p.x)..last(p.x) {
            let mut inside = 0;
            for k in 0..N * N {
                let sx = col as f64 + ((k % N) as f64 + 0.5) / N as f64;
                let sy = row as f64 + ((k / N) as f64 + 0.5) / N as f64;
                // Into the shape's frame: y up, turned back by the rotation, unit radius.
                let (dx, dy) = ((sx - p.x) / p.radius, (p.y - sy) / p.radius);
                inside += p.shape.contains(dx * cos + dy * sin, dy * cos - dx * sin) as usize;
            }
            if inside > 0 {
                let cover = inside as f64 / (N * N) as f64;
                let v = &mut canvas[row * side + col];
                *v += (p.grey - *v) * cover;
            }
        }
    }
}

/// (sin, cos) of an angle in degrees, from Taylor series on [0, 45] degrees with basic
/// arithmetic only, so that every platform draws the same bits (error below 1e-15).
fn sin_cos_degrees(degrees: f64) -> (f64, f64) {
    // rem_euclid of a tiny negative angle rounds to 360 itself.
    let a = match degrees.rem_euclid(360.0) {
        a if a >= 360.0 => 0.0,
        a => a,
    };
    let quadrant = ((a / 90.0).floor() as u32).min(3);
    let r = a - 90.0 * quadrant as f64;
    let (s, c) = if r <= 45.0 {
        taylor(r)
    } else {
        let (s, c) = taylor(90.0 - r);
        (c, s)
    };
    match quadrant {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

/// (sin, cos) of 0..=45 degrees: terms up to x^17 / 17!, below 1e-17 at pi/4.
fn taylor(degrees: f64) -> (f64, f64) {
    let x = degrees * (std::f64::consts::PI / 180.0);
    let x2 = x * x;
    let (mut s, mut c) = (0.0, 0.0);
    let (mut ts, mut tc) = (x, 1.0);
    for n in 0..9 {
        s += ts;
        c += tc;
        let k = (2 * n + 2) as f64;
        ts *= -x2 / (k * (k + 1.0));
        tc *= -x2 / ((k - 1.0) * k);
    }
    (s, c)
}

#[cfg(test)]
#[path = "structured_tests.rs"]
mod tests;
