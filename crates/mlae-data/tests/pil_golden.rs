//! Resampling and the FGVC/VTAB transforms against Pillow and torchvision, byte for byte.
//! Fixture: `xtask/python/make_data_fixtures.py` (Pillow and torchvision 0.26).

mod common;

use mlae_data::{Benchmark, DataSource, Filter, Transform, load_images, open_task, resize_rgb};
use serde_json::Value;

fn fixture() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pil_resample.json"))
            .expect("fixture present");
    serde_json::from_str(&text).unwrap()
}

fn unhex(s: &Value) -> Vec<u8> {
    let s = s.as_str().unwrap();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn dim(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap() as usize
}

/// (number of differing bytes, largest difference).
fn diff(a: &[u8], b: &[u8]) -> (usize, u8) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).fold((0, 0), |(n, m), (x, y)| (n + 1, m.max(x.abs_diff(*y))))
}

#[test]
fn resize_matches_pillow_exactly() {
    let f = fixture();
    let (w, h) = (dim(&f, "width"), dim(&f, "height"));
    let src = unhex(&f["source"]);
    let cases = f["resize"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let (dw, dh) = (dim(case, "width"), dim(case, "height"));
        let filter = match case["filter"].as_str().unwrap() {
            "bicubic" => Filter::Bicubic,
            "bilinear" => Filter::Bilinear,
            other => panic!("unknown filter {other}"),
        };
        let mut out = vec![0u8; dw * dh * 3];
        resize_rgb(&src, w, h, &mut out, dw, dh, filter);
        assert_eq!(diff(&out, &unhex(&case["pixels"])), (0, 0), "{filter:?} {w}x{h} -> {dw}x{dh}");
    }
}

#[test]
fn resized_crop_matches_torchvision_exactly() {
    let f = fixture();
    let (w, h) = (dim(&f, "width"), dim(&f, "height"));
    let src = unhex(&f["source"]);
    for case in f["resized_crop"].as_array().unwrap() {
        let (top, left, ch, cw, s) =
            (dim(case, "top"), dim(case, "left"), dim(case, "height"), dim(case, "width"), dim(case, "size"));
        let crop: Vec<u8> = src
            .chunks(w * 3)
            .skip(top)
            .take(ch)
            .flat_map(|r| &r[left * 3..(left + cw) * 3])
            .copied()
            .collect();
        assert_eq!(crop.len(), cw * ch * 3, "fixture box inside the {w}x{h} image");
        let mut out = vec![0u8; s * s * 3];
        resize_rgb(&crop, cw, ch, &mut out, s, s, Filter::Bilinear);
        assert_eq!(diff(&out, &unhex(&case["pixels"])), (0, 0), "box {top},{left} {ch}x{cw} -> {s}");
    }
}

/// The whole loader path (PNG decode, transform) on the fixture image written as a PNG.
#[test]
fn loader_transforms_match_torchvision_exactly() {
    let f = fixture();
    let (w, h) = (dim(&f, "width") as u32, dim(&f, "height") as u32);
    let img = image::RgbImage::from_raw(w, h, unhex(&f["source"])).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    common::write_png_rgb(&tmp.path().join("t/img.png"), &img);
    common::write_text(&tmp.path().join("t/all.txt"), "img.png 0\n");
    common::write_text(&tmp.path().join("t/classes.txt"), "a\nb\n");
    let task = open_task(&DataSource {
        benchmark: Benchmark::List,
        task: "t".into(),
        root: tmp.path().into(),
        split: None,
    })
    .unwrap();
    let list = task.split("all").unwrap();
    for case in f["resize_center_crop"].as_array().unwrap() {
        let tf = Transform::ResizeCenterCrop {
            resize: dim(case, "resize") as u32,
            crop: dim(case, "crop") as u32,
        };
        let set = load_images(&list, &tf, 2, None, 0).unwrap();
        assert_eq!(diff(set.pixels(), &unhex(&case["pixels"])), (0, 0), "{tf:?}");
    }
    let square = f["resize"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["filter"] == "bicubic" && c["width"] == c["height"]);
    let square = square.expect("a square bicubic case");
    let set = load_images(&list, &Transform::vtab(dim(square, "width") as u32), 2, None, 0).unwrap();
    assert_eq!(diff(set.pixels(), &unhex(&square["pixels"])), (0, 0), "VTAB resize");
}
