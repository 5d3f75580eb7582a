//! Builders of small dataset trees for the tests: generated images, list files, JSON files.

#![allow(dead_code)] // each test file uses a different subset

use std::io::Write;
use std::path::{Path, PathBuf};

/// A smooth colour field plus deterministic noise, so JPEG encoding behaves as on photos.
pub fn photo(w: u32, h: u32, seed: u32) -> image::RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
    image::RgbImage::from_fn(w, h, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let noise = (state % 21) as f32 - 10.0;
        let fx = x as f32 / w as f32;
        let fy = y as f32 / h as f32;
        let s = seed as f32;
        let base = [
            128.0 + 100.0 * (6.0 * fx + s).sin(),
            128.0 + 100.0 * (5.0 * fy + 0.5 * s).cos(),
            128.0 + 80.0 * (4.0 * (fx + fy) + s).sin(),
        ];
        image::Rgb(base.map(|v| (v + noise).clamp(0.0, 255.0) as u8))
    })
}

pub fn write_jpeg(path: &Path, w: u32, h: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = photo(w, h, seed);
    let mut out = std::fs::File::create(path).unwrap();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).unwrap();
}

pub fn write_png_rgb(path: &Path, img: &image::RgbImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

pub fn write_png_grey(path: &Path, w: u32, h: u32, value: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_pixel(w, h, image::Luma([value]))
        .save_with_format(path, image::ImageFormat::Png)
        .unwrap();
}

pub fn write_text(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::File::create(path).unwrap().write_all(text.as_bytes()).unwrap();
}

/// Cuts a file to `keep` of its length, as an interrupted copy would.
pub fn truncate(path: &Path, keep: f64) {
    let len = std::fs::metadata(path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len((len as f64 * keep) as u64).unwrap();
}

/// A VTAB-layout task `<root>/<task>/` with JPEGs of varied sizes: `n` images per split
/// (train800val200 = train800 + val200, as in the real layout), label = index % classes.
pub fn vtab_task(
    root: &Path,
    task: &str,
    n_train: usize,
    n_val: usize,
    n_test: usize,
    classes: usize,
) -> PathBuf {
    let dir = root.join(task);
    let mut lines = std::collections::BTreeMap::<&str, String>::new();
    let mut k = 0u32;
    for (split, n, folder) in [
        ("train800", n_train, "train800val200"),
        ("val200", n_val, "train800val200"),
        ("test", n_test, "test"),
    ] {
        for i in 0..n {
            let rel = format!("images/{folder}/{k:06}.jpg");
            write_jpeg(&dir.join(&rel), 40 + 7 * (k % 5), 30 + 5 * (k % 3), k);
            let line = format!("{rel} {}\n", (k as usize + i) % classes);
            lines.entry(split).or_default().push_str(&line);
            if split != "test" {
                lines.entry("train800val200").or_default().push_str(&line);
            }
            k += 1;
        }
    }
    for (split, text) in lines {
        write_text(&dir.join(format!("{split}.txt")), &text);
    }
    dir
}

/// An FGVC (VPT) layout dataset under `<root>/<folder>/` with JSON split files. `ids` are the
/// raw class ids cycled over the images (e.g. 1-based, with gaps).
pub fn fgvc_dataset(root: &Path, folder: &str, image_dir: &str, ids: &[i64], per_split: usize) -> PathBuf {
    let dir = root.join(folder);
    let mut k = 0u32;
    for split in ["train", "val", "test"] {
        let mut entries = Vec::new();
        for i in 0..per_split {
            let rel = format!("{:03}.class/img_{k:04}.jpg", ids[i % ids.len()]);
            write_jpeg(&dir.join(image_dir).join(&rel), 64 + 8 * (k % 4), 48 + 6 * (k % 3), k);
            entries.push(format!("\"{rel}\": {}", ids[(i + split.len()) % ids.len()]));
            k += 1;
        }
        write_text(&dir.join(format!("{split}.json")), &format!("{{{}}}", entries.join(", ")));
    }
    dir
}
