use super::*;

fn src(generator: Generator, side: u32) -> GenSource {
    GenSource { generator, side }
}

fn sizes(train: usize, val: usize, test: usize) -> BTreeMap<String, usize> {
    [("train800", train), ("val200", val), ("train800val200", train + val), ("test", test)]
        .map(|(k, v)| (k.to_string(), v))
        .into()
}

fn image(rows: &DemoRows, i: usize) -> &[u8] {
    let n = rows.side * rows.side;
    &rows.pixels[i * n..(i + 1) * n]
}

/// Intensity-weighted mean (x, y) of an image, in pixel coordinates (x right, y down).
fn centre_of_mass(px: &[u8], side: usize) -> (f64, f64) {
    let (mut m, mut mx, mut my) = (0.0, 0.0, 0.0);
    for (k, &v) in px.iter().enumerate() {
        let v = v as f64;
        m += v;
        mx += v * ((k % side) as f64 + 0.5);
        my += v * ((k / side) as f64 + 0.5);
    }
    (mx / m, my / m)
}

/// Connected groups (4-neighbours) of pixels brighter than `threshold`.
fn components(px: &[u8], side: usize, threshold: u8) -> usize {
    let mut seen = vec![false; px.len()];
    let mut n = 0;
    for start in 0..px.len() {
        if seen[start] || px[start] <= threshold {
            continue;
        }
        n += 1;
        let mut stack = vec![start];
        seen[start] = true;
        while let Some(k) = stack.pop() {
            let (r, c) = (k / side, k % side);
            let near = [
                (r > 0, k.wrapping_sub(side)),
                (r + 1 < side, k + side),
                (c > 0, k.wrapping_sub(1)),
                (c + 1 < side, k + 1),
            ];
            for (ok, j) in near {
                if ok && !seen[j] && px[j] > threshold {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
    }
    n
}

#[test]
fn sin_and_cos_are_libms_to_1e_14() {
    let mut rng = Rng::new(1, 2, 3, 4);
    let angles = (0..=3600)
        .map(|k| k as f64 / 10.0 - 0.05)
        .chain([-1e-300, -1e-17, 359.99999999999994])
        .chain((0..1000).map(|_| rng.uniform(-720.0, 720.0)));
    for a in angles {
        let (s, c) = sin_cos_degrees(a);
        let (es, ec) = a.to_radians().sin_cos();
        assert!((s - es).abs() < 1e-14 && (c - ec).abs() < 1e-14, "{a}: ({s}, {c}) vs ({es}, {ec})");
    }
    assert_eq!(sin_cos_degrees(90.0), (1.0, 0.0));
}

#[test]
fn every_shape_lies_in_the_unit_disc_with_its_centre_of_mass_at_the_origin() {
    let n = 600;
    for shape in [Shape::Square, Shape::Ellipse, Shape::Heart, Shape::Triangle, Shape::Disc] {
        let (mut count, mut sx, mut sy) = (0usize, 0.0, 0.0);
        for i in 0..n {
            for j in 0..n {
                let (x, y) =
                    (-1.2 + 2.4 * (i as f64 + 0.5) / n as f64, -1.2 + 2.4 * (j as f64 + 0.5) / n as f64);
                if shape.contains(x, y) {
                    assert!(x * x + y * y <= 1.0, "{shape:?} reaches ({x}, {y})");
                    count += 1;
                    sx += x;
                    sy += y;
                }
            }
        }
        let area = count as f64 * (2.4 / n as f64).powi(2);
        assert!(area > 0.9, "{shape:?}: area {area}");
        let (cx, cy) = (sx / count as f64, sy / count as f64);
        // The triangle turns about its circumcentre; its centre of mass is toward its base.
        let expected_cy = if shape == Shape::Triangle { (1.0 + 2.0 * TRIANGLE_BASE.1) / 3.0 } else { 0.0 };
        assert!(cx.abs() < 0.005 && (cy - expected_cy).abs() < 0.005, "{shape:?}: centre ({cx}, {cy})");
    }
}

#[test]
fn labels_are_balanced_and_shuffled() {
    for (n, classes) in [(800, 8), (200, 8), (1000, 10), (200, 16), (7, 3)] {
        let labels = balanced_labels(n, classes, Rng::new(0, 1, 2, 3));
        let mut counts = vec![0usize; classes];
        labels.iter().for_each(|&l| counts[l as usize] += 1);
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(hi - lo <= 1 && counts.iter().sum::<usize>() == n, "{n}, {classes}: {counts:?}");
        if n >= 200 {
            assert!(labels.windows(2).filter(|w| w[1] == (w[0] + 1) % classes as i64).count() < n / 4);
        }
    }
}

#[test]
fn each_scene_has_the_geometry_its_label_says() {
    let side = 64.0;
    let (lo, hi) = sprite_span(side);
    for label in 0..8 {
        for i in 0..50 {
            let mut rng = Rng::new(9, 0, label as u64, i);
            let (bg, s) = scene(Generator::DspritesLoc, side, 8, label, &mut rng).unwrap();
            let width = (hi - lo) / 8.0;
            assert!(bg == 0.0 && s.len() == 1 && ((s[0].x - lo) / width).floor() as usize == label, "{s:?}");
            let p = s[0];
            assert!(p.x - p.radius >= 1.0 && p.x + p.radius <= side - 1.0 && p.y - p.radius >= 1.0);
            let (_, s) = scene(Generator::DspritesOri, side, 8, label, &mut rng).unwrap();
            assert!(
                (s[0].degrees / 45.0).floor() as usize == label
                    && matches!(s[0].shape, Shape::Heart | Shape::Triangle),
                "{s:?}"
            );
        }
    }
    for label in 0..10 {
        let mut rng = Rng::new(9, 1, label as u64, 0);
        let (bg, s) = scene(Generator::Count, side, 10, label, &mut rng).unwrap();
        assert_eq!(s.len(), label + 1);
        for (a, p) in s.iter().enumerate() {
            assert!(p.grey >= bg + 60.0 && p.x - p.radius >= 1.0 && p.y + p.radius <= side - 1.0);
            for q in &s[a + 1..] {
                let d = ((p.x - q.x).powi(2) + (p.y - q.y).powi(2)).sqrt();
                assert!(d >= p.radius + q.radius + OBJECT_GAP * side, "{p:?} {q:?}");
            }
        }
    }
}

#[test]
fn the_pixels_show_the_label() {
    let n = sizes(80, 20, 0);
    let loc = generate(&src(Generator::DspritesLoc, 64), 8, &n, 3).unwrap();
    let (lo, hi) = sprite_span(64.0);
    let width = (hi - lo) / 8.0;
    for (i, &label) in loc.trainval.labels.iter().enumerate() {
        let (x, _) = centre_of_mass(image(&loc.trainval, i), 64);
        let bin_lo = lo + width * label as f64;
        assert!(x > bin_lo - 0.25 && x < bin_lo + width + 0.25, "image {i}: x {x}, label {label}");
    }
    let count = generate(&src(Generator::Count, 64), 10, &n, 3).unwrap();
    for (i, &label) in count.trainval.labels.iter().enumerate() {
        let px = image(&count.trainval, i);
        // Objects are at least 60 grey levels above the background, which is at most 60.
        assert_eq!(components(px, 64, 60), label as usize + 1, "image {i}");
        assert_eq!(px.iter().min(), px.first(), "image {i}: a plain background");
    }
}

#[test]
fn rotation_is_counter_clockwise_from_tip_up() {
    let side = 64usize;
    let at = |degrees: f64| {
        let mut canvas = vec![0.0; side * side];
        let p = Placed { shape: Shape::Triangle, x: 32.0, y: 32.0, radius: 20.0, degrees, grey: 255.0 };
        paint(&mut canvas, side, &p);
        let px: Vec<u8> = canvas.iter().map(|&v| v.round() as u8).collect();
        centre_of_mass(&px, side)
    };
    // The centre of mass lies opposite the tip.
    let (x, y) = at(0.0);
    assert!((x - 32.0).abs() < 0.1 && y > 35.0, "tip up: ({x}, {y})");
    let (x, y) = at(90.0);
    assert!(x > 35.0 && (y - 32.0).abs() < 0.1, "tip left: ({x}, {y})");
}

#[test]
fn generation_is_a_function_of_the_seed_and_sizes() {
    let s = src(Generator::DspritesOri, 32);
    let a = generate(&s, 8, &sizes(16, 8, 8), 0).unwrap();
    assert_eq!(a, generate(&s, 8, &sizes(16, 8, 8), 0).unwrap());
    assert_ne!(a.trainval.pixels, generate(&s, 8, &sizes(16, 8, 8), 1).unwrap().trainval.pixels);
    assert_eq!((a.n_train, a.trainval.labels.len(), a.test.labels.len(), a.trainval.side), (16, 24, 8, 32));
    assert_eq!(a.trainval.pixels.len(), 24 * 32 * 32);
    // Two images are never the same.
    let imgs: std::collections::BTreeSet<&[u8]> = (0..24).map(|i| image(&a.trainval, i)).collect();
    assert_eq!(imgs.len(), 24);
}

#[test]
fn sources_that_cannot_be_drawn_are_rejected() {
    let err = |g, side, classes| check_source(&src(g, side), classes).unwrap_err();
    assert!(err(Generator::Count, 16, 10).contains("side 16"));
    assert!(err(Generator::Count, 64, 11).contains("at most 10 objects"));
    assert!(err(Generator::DspritesLoc, 64, 32).contains("narrower than 2 px"));
    assert!(err(Generator::DspritesOri, 64, 90).contains("narrower than 5 degrees"));
    check_source(&src(Generator::DspritesLoc, 64), 16).unwrap();
    let e = generate(&src(Generator::Count, 64), 12, &sizes(4, 4, 4), 0).unwrap_err().to_string();
    assert!(e.contains("generated:count") && e.contains("at most 10"), "{e}");
}
