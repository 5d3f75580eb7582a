//! Helpers shared by the end-to-end tests: a tiny VTAB-layout task generated on the fly, a
//! tiny random ViT config, and running `mlae-cli` as a user would.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Classes of the generated task (it poses as VTAB's `kitti`, which has 4).
pub const CLASSES: usize = 4;

/// A 16x16 RGB image of class `label`: the class picks a bright quadrant and a tint, the index
/// adds noise, so a tiny ViT can learn it in a few epochs but not perfectly at once.
fn image(label: usize, index: usize) -> image::RgbImage {
    let mut z = (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (label as u64) << 32;
    image::RgbImage::from_fn(16, 16, |x, y| {
        z ^= z << 13;
        z ^= z >> 7;
        z ^= z << 17;
        let noise = (z % 64) as u8;
        let quadrant = (x as usize / 8) + 2 * (y as usize / 8);
        let base: u8 = if quadrant == label { 160 } else { 40 };
        let tint = [(label * 50) as u8, 100, (200 - label * 40) as u8];
        image::Rgb([
            base.saturating_add(noise / 2).saturating_add(tint[0] / 4),
            base.saturating_add(noise / 3).saturating_add(tint[1] / 4),
            base.saturating_add(noise / 4).saturating_add(tint[2] / 4),
        ])
    })
}

/// Writes `<root>/kitti/` in the NOAH/SPT layout: images and the four list files with
/// `train` train800 images, `val` val200 images and `test` test images, classes balanced.
pub fn write_task(root: &Path, train: usize, val: usize, test: usize) {
    let task = root.join("kitti");
    let mut lists = Vec::new();
    let mut index = 0;
    for (split, n) in [("train800", train), ("val200", val), ("test", test)] {
        let dir = task.join("images").join(split);
        std::fs::create_dir_all(&dir).unwrap();
        let mut lines = String::new();
        for i in 0..n {
            let label = i % CLASSES;
            let name = format!("{i:06}.png");
            image(label, index).save(dir.join(&name)).unwrap();
            index += 1;
            lines.push_str(&format!("images/{split}/{name} {label}\n"));
        }
        std::fs::write(task.join(format!("{split}.txt")), &lines).unwrap();
        lists.push(lines);
    }
    std::fs::write(task.join("train800val200.txt"), format!("{}{}", lists[0], lists[1])).unwrap();
}

/// A config for a tiny random ViT (2 blocks of width 32 on 2x2 patches) on the generated
/// task, everything under `dir`. `adapter` is the body of the `[adapter]` table.
pub fn write_config(dir: &Path, adapter: &str, epochs: u64) -> PathBuf {
    let text = format!(
        r#"[model]
preset = "vit-ti16"
image_size = 16

[model.arch]
patch_size = 8
dim = 32
depth = 2
heads = 2
mlp_dim = 64

[adapter]
{adapter}

[data]
benchmark = "vtab"
task = "kitti"
root = "{data}"
normalization = "imagenet"
cache_dir = "{cache}"

[train]
epochs = {epochs}
batch_size = 8
eval_batch_size = 16
lr = 5e-3
warmup_epochs = 1
eval_every = 1
seed = 3
device = "cpu"
threads = 1

[output]
dir = "{runs}"
name = "run"
"#,
        data = dir.join("data").display(),
        cache = dir.join("cache").display(),
        runs = dir.join("runs").display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A temp dir with the generated task (48 train+val, 24 test images) and a config.
pub fn setup(adapter: &str, epochs: u64) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    write_task(&tmp.path().join("data"), 32, 16, 24);
    let cfg = write_config(tmp.path(), adapter, epochs);
    (tmp, cfg)
}

pub fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlae-cli"));
    cmd.env("MLAE_LOG", "warn");
    cmd
}

/// Runs mlae-cli with `args`; returns (exit code, stdout, stderr).
pub fn cli_run(args: &[&str]) -> (i32, String, String) {
    let out: Output = cli().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs mlae-cli and asserts success; returns stdout.
pub fn run_ok(args: &[&str]) -> String {
    let (code, stdout, stderr) = cli_run(args);
    assert_eq!(code, 0, "mlae-cli {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

pub fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Every line of `metrics.jsonl`.
pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The fields of the metrics that must not depend on timing: epoch, step, lr, loss,
/// accuracies and every evaluation.
pub fn learning_curve(run: &Path) -> Vec<serde_json::Value> {
    metrics(run)
        .into_iter()
        .map(|m| {
            serde_json::json!({
                "epoch": m["epoch"], "step": m["step"], "lr": m["lr"],
                "train_loss": m["train_loss"], "train_acc": m["train_acc"], "eval": m["eval"],
            })
        })
        .collect()
}

/// The accuracy printed on the last line, `test accuracy: 0.XXXX`.
pub fn printed_accuracy(stdout: &str) -> f64 {
    let last = stdout.lines().last().unwrap_or_default();
    let value = last.strip_prefix("test accuracy: ").unwrap_or_else(|| panic!("last line is `{last}`"));
    assert_eq!(value.len(), 6, "expected four decimals: `{last}`");
    value.parse().unwrap()
}

/// Asserts that two runs ended with the same model tensors in `checkpoints/last`, bit for bit.
pub fn assert_same_model_weights(run: &Path, reference: &Path) {
    let read = |dir: &Path| tch::Tensor::read_safetensors(dir.join("checkpoints/last.safetensors")).unwrap();
    let wb: std::collections::HashMap<String, tch::Tensor> = read(reference).into_iter().collect();
    for (k, t) in &read(run) {
        if k.starts_with("model.") {
            assert!(t.equal(&wb[k]), "{k} differs after resume");
        }
    }
}
