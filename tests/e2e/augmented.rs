//! FGVC's augmented training path (random resized crops and flips per batch, built one step
//! ahead by the prefetcher): a run stopped mid-epoch and resumed ends bit-identical to the
//! uninterrupted one.

use crate::support::*;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `<dir>/data/CUB_200_2011/` in the VPT layout: `images/` and train/val/test JSON splits
/// (path -> class id), 4 classes, images of varied sizes; then the tiny config on it.
fn fgvc_setup(epochs: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("data/CUB_200_2011");
    for (split, n) in [("train", 40), ("val", 8), ("test", 16)] {
        let mut entries = serde_json::Map::new();
        for i in 0..n {
            let label = i % 4;
            let name = format!("{split}/{i:03}.png");
            let (w, h) = (20 + (i % 5) as u32 * 3, 18 + (i % 3) as u32 * 4);
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let on = (x * 2 / w) as usize + 2 * (y * 2 / h) as usize == label;
                let v = if on { 200 } else { 40 } + ((x + y + i as u32) % 7) as u8;
                image::Rgb([v, v / 2 + 30 * label as u8, 255 - v])
            });
            let path = task.join("images").join(&name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            img.save(&path).unwrap();
            entries.insert(name, (label as i64 + 1).into());
        }
        std::fs::write(task.join(format!("{split}.json")), serde_json::Value::Object(entries).to_string())
            .unwrap();
    }
    let cfg = write_config(tmp.path(), "kind = \"lora\"\n[adapter.lora]\nrank = 2", epochs);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("benchmark = \"vtab\"", "benchmark = \"fgvc\"")
        .replace("task = \"kitti\"", "task = \"cub\"");
    std::fs::write(&cfg, text).unwrap();
    (tmp, cfg)
}

#[test]
fn an_augmented_run_resumes_bit_identically() {
    let (tmp, cfg) = fgvc_setup(3);
    run_ok(&["finetune", "--config", s(&cfg), "--no-progress"]);
    let reference = tmp.path().join("runs/run");
    let curve = learning_curve(&reference);
    assert_eq!(curve.len(), 3);
    assert_eq!(curve[2]["step"], 15, "40 images / batch 8 = 5 steps per epoch");

    let (tmp2, cfg2) = fgvc_setup(3);
    let run = tmp2.path().join("runs/run");
    let (code, _, stderr) =
        cli_run(&["finetune", "--config", s(&cfg2), "--no-progress", "--interrupt-at-step", "7"]);
    assert_eq!(code, 130, "{stderr}");
    run_ok(&["finetune", "--resume", s(&run), "--no-progress"]);
    assert_eq!(learning_curve(&run), curve, "the resumed augmented run diverged");
    assert_same_model_weights(&run, &reference);
}
