//! Runs that go wrong must say so: a dead or diverging adapter, a step budget that ends inside
//! an epoch, a damaged checkpoint. Each test drives `mlae-cli` on the tiny generated task.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const MLAE: &str = "kind = \"mlae\"\n[adapter.mlae]\nexperts = 4\nexpert_dropout = 0.5\ncoeff_init = 1.0";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_dead_adapter_stops_at_its_first_step_naming_the_moment() {
    // coeff_init = 1e30: the loss stays finite (B starts at 0) but B's gradient squared
    // overflows the second moment, so Adam's updates are 0 and B would stay 0 for ever.
    let (tmp, cfg) = setup(MLAE, 3);
    let (code, _, stderr) =
        cli_run(&["finetune", "--config", s(&cfg), "--no-progress", "--set", "adapter.mlae.coeff_init=1e30"]);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("exp_avg_sq") && stderr.contains("became non-finite at step 1 "),
        "names the tensor and the step: {stderr}"
    );
    // Nothing was checkpointed, and the message says so rather than pointing at a file.
    let run = tmp.path().join("runs/run");
    assert!(!run.join("checkpoints/last.safetensors").exists());
    assert!(stderr.contains("no checkpoint had been written yet"), "{stderr}");
    let status = json(&run.join("status.json"));
    assert_eq!(status["state"], "failed");
    assert!(status["message"].as_str().unwrap().contains("exp_avg_sq"), "{status}");
    assert!(!run.join("summary.json").exists());
}

#[test]
fn an_adapter_whose_gradients_vanish_fails_after_the_first_epoch() {
    // coeff_init = 1e-45 (the smallest f32): every adapter gradient underflows to exactly 0,
    // everything stays finite, and only the head would train.
    let (tmp, cfg) = setup(MLAE, 3);
    let (code, _, stderr) = cli_run(&[
        "finetune",
        "--config",
        s(&cfg),
        "--no-progress",
        "--set",
        "adapter.mlae.coeff_init=1e-45",
    ]);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("no adapter tensor had a non-zero gradient in the first 6 steps")
            && stderr.contains("not training"),
        "{stderr}"
    );
    let status = json(&tmp.path().join("runs/run/status.json"));
    assert_eq!(status["state"], "failed");
    assert!(!tmp.path().join("runs/run/summary.json").exists());
}

#[test]
fn a_divergence_names_only_checkpoints_that_exist() {
    let (tmp, cfg) = setup(MLAE, 2);
    let (code, _, stderr) = cli_run(&[
        "finetune",
        "--config",
        s(&cfg),
        "--no-progress",
        "--set",
        "train.lr=1e6",
        "--set",
        "train.warmup_epochs=0",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("became non-finite at step"), "{stderr}");
    let last = tmp.path().join("runs/run/checkpoints/last.safetensors");
    assert!(!last.exists());
    assert!(!stderr.contains("last.safetensors"), "points at a checkpoint that does not exist: {stderr}");
    assert!(stderr.contains("no checkpoint had been written yet") && stderr.contains("--force"), "{stderr}");

    // The schedule's other rates are checked like lr, by name.
    for (set, key) in [
        ("train.min_lr=nan", "train.min_lr"),
        ("train.min_lr=1", "train.min_lr"),
        ("train.warmup_lr=nan", "train.warmup_lr"),
        ("train.warmup_lr=1", "train.warmup_lr"),
    ] {
        let (code, _, stderr) = cli_run(&["finetune", "--config", s(&cfg), "--set", set, "--force"]);
        assert_ne!(code, 0, "{set} was accepted");
        assert!(stderr.contains(key), "{set}: {stderr}");
    }
}

/// A CUDA device that does not exist is a config error naming `train.device`, not a panic
/// inside libtorch at the first tensor put on it.
#[test]
fn a_cuda_device_that_does_not_exist_names_train_device() {
    if tch::Cuda::device_count() > 7 {
        return;
    }
    let (_tmp, cfg) = setup(MLAE, 1);
    let (code, _, stderr) =
        cli_run(&["finetune", "--config", s(&cfg), "--no-progress", "--set", "train.device=cuda:7"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("error: config: train.device = cuda:7: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Without any CUDA device it says why (a CPU-only libtorch, the driver, or no GPU visible).
    if tch::Cuda::device_count() == 0 {
        assert!(stderr.contains("libtorch sees no CUDA device: "), "{stderr}");
    }
}

#[test]
fn max_steps_inside_the_first_epoch_finishes_the_run() {
    let (tmp, cfg) = setup(MLAE, 3);
    let stdout = run_ok(&["finetune", "--config", s(&cfg), "--no-progress", "--set", "train.max_steps=2"]);
    let run = tmp.path().join("runs/run");
    let m = metrics(&run);
    assert_eq!(m.len(), 1, "one line for the partial epoch");
    assert_eq!((m[0]["epoch"].as_u64(), m[0]["step"].as_u64()), (Some(1), Some(2)));
    let acc = m[0]["eval"]["test"]["acc"].as_f64().unwrap();
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["steps"], 2);
    assert_eq!(summary["test_acc"].as_f64().unwrap(), acc);
    // the summary numbers the part epoch as the metrics do
    assert_eq!((summary["epochs"].as_u64(), summary["partial_epoch"].as_u64()), (Some(0), Some(1)));
    assert!(stdout.contains("\nepoch 1 (partial), 2 steps in "), "{stdout}");
    assert_eq!(json(&run.join("status.json"))["state"], "finished");
    assert!(run.join("checkpoints/last.safetensors").is_file());
    assert!((printed_accuracy(&stdout) - acc).abs() < 5e-5, "{stdout}");
}

#[test]
fn a_truncated_checkpoint_is_named_as_such_on_resume() {
    let (tmp, cfg) = setup(MLAE, 2);
    let run = tmp.path().join("runs/run");
    // stopped in the second epoch: the first one's best checkpoint exists
    let (code, _, _) =
        cli_run(&["finetune", "--config", s(&cfg), "--no-progress", "--interrupt-at-step", "8"]);
    assert_eq!(code, 130);
    assert!(run.join("checkpoints/best.safetensors").is_file());
    let last = run.join("checkpoints/last.safetensors");
    let bytes = std::fs::read(&last).unwrap();
    // cut inside the header length, inside the header, and inside the data
    for keep in [4, 40, bytes.len() / 2] {
        std::fs::write(&last, &bytes[..keep]).unwrap();
        let (code, _, stderr) = cli_run(&["finetune", "--resume", s(&run), "--no-progress"]);
        assert_ne!(code, 0);
        assert!(
            stderr.contains(s(&last))
                && stderr.contains("truncated or corrupt")
                && stderr.contains("best.safetensors")
                && stderr.contains("--force"),
            "cut at {keep} bytes: {stderr}"
        );
    }
    // The intact file resumes.
    std::fs::write(&last, &bytes).unwrap();
    run_ok(&["finetune", "--resume", s(&run), "--no-progress"]);
    assert_eq!(json(&run.join("status.json"))["state"], "finished");
}

#[test]
fn resume_keeps_earlier_metrics_lines_byte_identical() {
    let (tmp, cfg) = setup(MLAE, 3);
    let run = tmp.path().join("runs/run");
    let (code, _, _) =
        cli_run(&["finetune", "--config", s(&cfg), "--no-progress", "--interrupt-at-step", "8"]);
    assert_eq!(code, 130);
    let before = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(before.lines().count(), 1);
    run_ok(&["finetune", "--resume", s(&run), "--no-progress"]);
    let after = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(after.starts_with(&before), "resume rewrote the first epoch's line:\n{before}\n{after}");
    assert_eq!(after.lines().count(), 3);
}

/// The project's Python with `tensorboard`, or why there is none (see tensorboard_reads.rs).
fn python() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py =
        std::env::var_os("MLAE_PYTHON").map(PathBuf::from).unwrap_or_else(|| root.join(".venv/bin/python"));
    let probe = Command::new(&py)
        .args([
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); from pins import ensure; ensure('tensorboard')",
        ])
        .arg(root.join("xtask/python"))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", py.display()))?;
    if probe.status.success() { Ok(py) } else { Err(format!("{} cannot import tensorboard", py.display())) }
}

#[test]
fn every_run_writes_tensorboard_scalars_that_tensorboard_reads() {
    let (tmp, cfg) = setup(MLAE, 2);
    run_ok(&["finetune", "--config", s(&cfg), "--no-progress"]);
    let run = tmp.path().join("runs/run");
    let tb = run.join("tb");
    let files: Vec<_> = std::fs::read_dir(&tb).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(files.len() == 1 && files[0].to_string_lossy().starts_with("events.out.tfevents."), "{files:?}");
    let py = match python() {
        Ok(py) => py,
        Err(why) if std::env::var("MLAE_REQUIRE_PYTHON_CHECKS").as_deref() == Ok("1") => {
            panic!("MLAE_REQUIRE_PYTHON_CHECKS=1 but {why}")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED the TensorBoard read-back: {why} (set MLAE_PYTHON, or run `cargo xtask test`)"
            );
            return;
        }
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../xtask/python/check_tensorboard.py");
    let out = Command::new(&py).arg(&script).arg(&tb).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let scalars: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let loss = scalars["train/loss"].as_array().unwrap();
    assert_eq!(loss.len(), 12, "one loss per step (2 epochs x 6)");
    assert_eq!(loss[0][0], 1);
    assert_eq!(scalars["train/lr"].as_array().unwrap().len(), 12);
    let m = metrics(&run);
    let acc = scalars["eval/test/acc"].as_array().unwrap();
    assert_eq!(acc.len(), 2);
    for (point, line) in acc.iter().zip(&m) {
        assert_eq!(point[0], line["step"]);
        let want = line["eval"]["test"]["acc"].as_f64().unwrap();
        assert!((point[1].as_f64().unwrap() - want).abs() < 1e-6, "{point} vs {want}");
    }
    for tag in
        ["epoch/train_loss", "epoch/train_acc", "epoch/images_per_s", "epoch/peak_mem_mb", "eval/test/loss"]
    {
        assert_eq!(scalars[tag].as_array().map(Vec::len), Some(2), "{tag}");
    }
}

#[test]
fn list_paths_outside_the_task_folder_are_refused_unless_the_config_allows_them() {
    let (tmp, cfg) = setup(MLAE, 1);
    let task = tmp.path().join("data/kitti");
    std::fs::copy(task.join("images/train800/000000.png"), tmp.path().join("outside.png")).unwrap();
    let list = task.join("train800val200.txt");
    let mut text = std::fs::read_to_string(&list).unwrap();
    text.push_str("../../outside.png 0\n/etc/passwd 0\n");
    std::fs::write(&list, &text).unwrap();
    let n = text.lines().count();
    let (code, _, stderr) = cli_run(&["finetune", "--config", s(&cfg), "--no-progress"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!(
            "train800val200.txt:{}: `../../outside.png` climbs out of the task folder",
            n - 1
        )) && stderr.contains("data.allow_outside_paths = true"),
        "{stderr}"
    );
    assert!(!tmp.path().join("runs/run").exists(), "nothing is created for a refused list");
    // allowed: the image outside is read (the other line is dropped, /etc/passwd is no image)
    std::fs::write(&list, text.replace("/etc/passwd 0\n", "")).unwrap();
    run_ok(&[
        "finetune",
        "--config",
        s(&cfg),
        "--no-progress",
        "--set",
        "data.allow_outside_paths=true",
        "--set",
        "train.max_steps=1",
    ]);
    let resolved = std::fs::read_to_string(tmp.path().join("runs/run/config.toml")).unwrap();
    assert!(resolved.contains("allow_outside_paths = true"), "{resolved}");
}

/// Steps of `tag` as TensorBoard shows the run (the restart rule applied), read in Rust.
fn tb_steps(run: &Path, tag: &str) -> Vec<(i64, f32)> {
    mlae_tensorboard::read_scalars(&run.join("tb")).unwrap().remove(tag).unwrap_or_default()
}

#[test]
fn a_run_killed_past_its_checkpoint_logs_each_step_once_to_tensorboard() {
    let (tmp, cfg) = setup(MLAE, 4);
    let run = tmp.path().join("runs/run");
    // 6 steps an epoch. The first process stops at step 10 with a checkpoint there.
    let (code, _, _) =
        cli_run(&["finetune", "--config", s(&cfg), "--no-progress", "--interrupt-at-step", "10"]);
    assert_eq!(code, 130);
    let last = run.join("checkpoints/last.safetensors");
    let at_10 = std::fs::read(&last).unwrap();
    // The second logs steps 11..=20 (and epochs 2, 3), then dies: its later checkpoints are
    // lost, as when a process is killed before writing them.
    let (code, _, _) =
        cli_run(&["finetune", "--resume", s(&run), "--no-progress", "--interrupt-at-step", "20"]);
    assert_eq!(code, 130);
    std::fs::write(&last, &at_10).unwrap();
    assert_eq!(tb_steps(&run, "train/loss").len(), 20);
    // The third resumes from step 10 and logs 11..=24 again.
    run_ok(&["finetune", "--resume", s(&run), "--no-progress"]);

    // The same run without a stop, for the values.
    let straight = tmp.path().join("straight.toml");
    std::fs::write(
        &straight,
        std::fs::read_to_string(&cfg).unwrap().replace("name = \"run\"", "name = \"straight\""),
    )
    .unwrap();
    run_ok(&["finetune", "--config", s(&straight), "--no-progress"]);
    let want = tmp.path().join("runs/straight");
    for tag in ["train/loss", "train/lr", "epoch/train_loss", "eval/test/acc"] {
        let got = tb_steps(&run, tag);
        let steps: Vec<i64> = got.iter().map(|p| p.0).collect();
        let mut once = steps.clone();
        once.dedup();
        assert_eq!(steps, once, "{tag}: a step twice");
        assert_eq!(got, tb_steps(&want, tag), "{tag}");
    }
    assert_eq!(tb_steps(&run, "train/loss").len(), 24);
    assert_eq!(tb_steps(&run, "epoch/train_loss").iter().map(|p| p.0).collect::<Vec<_>>(), [6, 12, 18, 24]);

    // TensorBoard itself agrees, when the project's Python has it.
    if let Ok(py) = python() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../xtask/python/check_tensorboard.py");
        let out = Command::new(&py).arg(&script).arg(run.join("tb")).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let scalars: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let steps: Vec<i64> =
            scalars["train/loss"].as_array().unwrap().iter().map(|p| p[0].as_i64().unwrap()).collect();
        assert_eq!(steps, (1..=24).collect::<Vec<i64>>());
    }
}

#[test]
fn a_run_that_cannot_write_its_checkpoint_ends_failed_not_running() {
    let (tmp, cfg) = setup(MLAE, 2);
    let run = tmp.path().join("runs/run");
    let (code, _, _) =
        cli_run(&["finetune", "--config", s(&cfg), "--no-progress", "--interrupt-at-step", "2"]);
    assert_eq!(code, 130);
    // The first epoch's end writes best.safetensors; a non-empty folder in its place makes the
    // rename fail, as a full disk makes the write fail (whoever runs the test).
    let best = run.join("checkpoints/best.safetensors");
    std::fs::create_dir_all(best.join("in-the-way")).unwrap();
    let (code, _, stderr) = cli_run(&["finetune", "--resume", s(&run), "--no-progress"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("best.safetensors"), "{stderr}");
    let status = json(&run.join("status.json"));
    assert_eq!(status["state"], "failed", "{status}");
    assert!(status["message"].as_str().unwrap().contains("best.safetensors"), "{status}");

    // A process killed outright leaves `running`; a resume that then fails says `failed`.
    std::fs::remove_dir_all(&best).unwrap();
    let status_file = run.join("status.json");
    std::fs::write(&status_file, r#"{"state": "running", "step": 2, "epoch": 0}"#).unwrap();
    let last = run.join("checkpoints/last.safetensors");
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, stderr) = cli_run(&["finetune", "--resume", s(&run), "--no-progress"]);
    assert_eq!(code, 1, "{stderr}");
    let status = json(&status_file);
    assert_eq!(status["state"], "failed", "{status}");
    assert!(status["message"].as_str().unwrap().contains("truncated or corrupt"), "{status}");
}

#[test]
fn sizes_that_cannot_fit_are_refused_before_anything_is_allocated() {
    let (tmp, cfg) = setup(MLAE, 1);
    for (set, key, part) in [
        ("adapter.mlae.experts=1000000000", "adapter.mlae.experts", "adapter.mlae.experts = 1000000000) "),
        ("model.image_size=8000000", "model.image_size", "tokens an image at model.image_size = 8000000) "),
    ] {
        let (code, _, stderr) = cli_run(&["finetune", "--config", s(&cfg), "--no-progress", "--set", set]);
        assert_eq!(code, 1, "{set}: {stderr}");
        assert!(
            stderr.contains(&format!("{key}: this run needs at least "))
                && stderr.contains(" is available (")
                && stderr.contains(part)
                && stderr.contains(&format!("; lower {key}")),
            "{set}: {stderr}"
        );
        assert!(!tmp.path().join("runs/run").exists(), "{set}");
    }
}
