//! DMLoRA through `mlae-cli finetune`: the stage switch on the real parameters of the training
//! loop, resume across it, and the exports of a trained run.

use crate::support::*;
use mlae_train::checkpoint;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// K = 3 branches of rank 2; the drop probability ramps 0 -> 0.5 (cosine) over the first 40%
/// of training; stage 2 from half-way, with the scales' own learning rate.
const DMLORA: &str = "kind = \"dmlora\"

[adapter.dmlora]
branches = 3
branch_rank = 2
p_start = 0.0
p_end = 0.5
schedule = \"cosine\"
ramp_end = 0.4
stage2_start = 0.5
stage2_lr = 0.02";

/// 4 epochs of 6 steps (48 images, batch 8): stage 2 begins at step 12.
const EPOCHS: u64 = 4;
const STEPS: u64 = 24;
const SWITCH: u64 = 12;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The tiny task and config with gradient clipping on, so that clipping runs across the
/// switch too.
fn setup_dmlora() -> (tempfile::TempDir, PathBuf) {
    let (tmp, cfg) = setup(DMLORA, EPOCHS);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("threads = 1", "threads = 1\ngrad_clip = 1.0");
    std::fs::write(&cfg, text).unwrap();
    (tmp, cfg)
}

/// Runs mlae-cli with info logging; returns (exit code, stderr).
fn run_logged(args: &[&str]) -> (i32, String) {
    let out = cli().env("MLAE_LOG", "info").args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A checkpoint's tensors (model and optimizer) and per-parameter optimizer step counts.
struct Snapshot {
    tensors: HashMap<String, Tensor>,
    optim_steps: HashMap<String, u64>,
}

fn snapshot(path: &Path) -> Snapshot {
    let loaded = checkpoint::load(path).unwrap();
    let optim_steps = serde_json::from_str(&loaded.metadata["optim_steps"]).unwrap();
    Snapshot { tensors: loaded.tensors, optim_steps }
}

/// The run stopped after each step in `stops` (as Ctrl-C would) and resumed, then run to the
/// end: the run directory, the checkpoint written at each stop, and each process's stderr.
fn interrupted_run(stops: &[u64]) -> (tempfile::TempDir, PathBuf, Vec<Snapshot>, Vec<String>) {
    let (tmp, cfg) = setup_dmlora();
    let run = tmp.path().join("runs/run");
    let (mut snaps, mut logs) = (Vec::new(), Vec::new());
    for (i, stop) in stops.iter().enumerate() {
        let stop = stop.to_string();
        let (code, stderr) = if i == 0 {
            run_logged(&["finetune", "--config", s(&cfg), "--no-progress", "--interrupt-at-step", &stop])
        } else {
            run_logged(&["finetune", "--resume", s(&run), "--no-progress", "--interrupt-at-step", &stop])
        };
        assert_eq!(code, 130, "stop at {stop}: {stderr}");
        assert_eq!(json(&run.join("status.json"))["step"].as_u64(), Some(stop.parse().unwrap()));
        snaps.push(snapshot(&run.join("checkpoints/last.safetensors")));
        logs.push(stderr);
    }
    let (code, stderr) = run_logged(&["finetune", "--resume", s(&run), "--no-progress"]);
    assert_eq!(code, 0, "{stderr}");
    snaps.push(snapshot(&run.join("checkpoints/last.safetensors")));
    logs.push(stderr);
    (tmp, run, snaps, logs)
}

/// Names of the checkpoint's model tensors whose name contains `part`.
fn names(snap: &Snapshot, part: &str) -> Vec<String> {
    let mut v: Vec<String> =
        snap.tensors.keys().filter(|k| k.starts_with("model.") && k.contains(part)).cloned().collect();
    v.sort();
    v
}

/// A fresh run stopped after `stop` steps (as Ctrl-C would), or run to the end: its last
/// checkpoint. One process from step 0, so a stop after the switch crosses it in-process.
fn fresh_run(stop: Option<u64>) -> Snapshot {
    fresh_run_with(&[], stop)
}

/// [`fresh_run`] with config overrides (`--set` arguments).
fn fresh_run_with(sets: &[&str], stop: Option<u64>) -> Snapshot {
    let (tmp, cfg) = setup_dmlora();
    let stop = stop.map(|s| s.to_string());
    let mut args = vec!["finetune", "--config", s(&cfg), "--no-progress"];
    for set in sets {
        args.extend(["--set", set]);
    }
    if let Some(stop) = &stop {
        args.extend(["--interrupt-at-step", stop]);
    }
    let (code, stderr) = run_logged(&args);
    assert_eq!(code, if stop.is_some() { 130 } else { 0 }, "{stderr}");
    snapshot(&tmp.path().join("runs/run/checkpoints/last.safetensors"))
}

#[test]
fn stage_two_freezes_the_branches_and_trains_the_scales_and_head() {
    // One trajectory (runs are deterministic: see the resume test below), seen after steps 9
    // (stage 1), 12 (the switch), 16 (stage 2) and 24 (the end), each from its own process
    // that trained from step 0, so the freeze is what the loop does at the switch, not what a
    // resumed process starts with.
    let snaps: Vec<Snapshot> = [Some(9), Some(SWITCH), Some(16), None].into_iter().map(fresh_run).collect();
    let [s9, s12, s16, end] = &snaps[..] else { unreachable!() };
    let branches = [names(s9, ".dmlora_A"), names(s9, ".dmlora_B")].concat();
    let scales = names(s9, ".dmlora_scale");
    assert_eq!((branches.len(), scales.len()), (4, 2), "2 blocks x qkv: A, B and one scale each");
    let same = |a: &Snapshot, b: &Snapshot, k: &str| a.tensors[k].equal(&b.tensors[k]);

    for k in &branches {
        let name = &k["model.".len()..];
        // stage 1 trains the branches up to the switch...
        assert!(!same(s9, s12, k), "{k} did not train in stage 1");
        assert_eq!(s12.optim_steps[name], SWITCH, "{k}: one AdamW update per stage-1 step");
        // ...and from it nothing moves them: no gradient step, no weight decay, no moments.
        for later in [s16, end] {
            assert!(same(s12, later, k), "{k} changed in stage 2");
            for m in ["exp_avg", "exp_avg_sq"] {
                let key = format!("optim.{name}.{m}");
                assert!(same(s12, later, &key), "{key} changed in stage 2");
            }
            assert_eq!(later.optim_steps[name], SWITCH, "{k} was stepped in stage 2");
        }
    }
    // The scales and the head keep training, every step.
    for k in scales.iter().chain(&names(s9, "head.")) {
        let name = &k["model.".len()..];
        assert!(!same(s12, s16, k) && !same(s16, end, k), "{k} stopped training in stage 2");
        assert_eq!((s16.optim_steps[name], end.optim_steps[name]), (16, STEPS), "{k}");
    }
}

#[test]
fn stage2_lr_drives_the_scales_in_stage_two_only() {
    // The config's stage2_lr is 0.02; the same run with 0.5 must agree up to the switch, keep
    // identical branches after it, and move the scales faster in stage 2.
    let fast = ["adapter.dmlora.stage2_lr=0.5"];
    let (a12, a16) = (fresh_run(Some(SWITCH)), fresh_run(Some(16)));
    let (b12, b16) = (fresh_run_with(&fast, Some(SWITCH)), fresh_run_with(&fast, Some(16)));
    for (k, t) in &a12.tensors {
        assert!(t.equal(&b12.tensors[k]), "{k} differs before stage 2");
    }
    let change = |from: &Snapshot, to: &Snapshot, k: &str| {
        (&to.tensors[k] - &from.tensors[k]).abs().max().double_value(&[])
    };
    for k in names(&a16, ".dmlora_") {
        if k.ends_with("_scale") {
            let (slow, quick) = (change(&a12, &a16, &k), change(&b12, &b16, &k));
            assert!(quick > 5.0 * slow && slow > 0.0, "{k}: moved {slow:e} at 0.02, {quick:e} at 0.5");
        } else {
            assert!(a16.tensors[&k].equal(&b16.tensors[&k]), "{k}: frozen branches differ");
        }
    }
}

#[test]
fn a_dmlora_run_resumed_across_the_stage_switch_matches_the_uninterrupted_run() {
    let (tmp, cfg) = setup_dmlora();
    let reference = tmp.path().join("runs/run");
    let (code, log) = run_logged(&["finetune", "--config", s(&cfg), "--no-progress"]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains(&format!("DMLoRA stage 2 begins at step {SWITCH} of {STEPS}")), "{log}");

    // Stopped before the switch, exactly at it, and after it; resumed each time.
    let (_tmp2, run, snaps, logs) = interrupted_run(&[9, SWITCH, 16]);
    assert!(!logs[0].contains("stage 2 begins"), "{}", logs[0]);
    assert!(!logs[1].contains("stage 2 begins"), "the switch belongs to step 12: {}", logs[1]);
    assert!(logs[2].contains(&format!("DMLoRA stage 2 begins at step {SWITCH}")), "{}", logs[2]);
    assert!(logs[3].contains(&format!("stage 2 since step {SWITCH} (resumed at step 16)")), "{}", logs[3]);

    assert_eq!(learning_curve(&run), learning_curve(&reference), "the resumed run diverged");
    let (a, b) = (json(&run.join("summary.json")), json(&reference.join("summary.json")));
    for key in ["test_acc", "best_test_acc", "best_test_epoch", "steps", "epochs", "dmlora_stage2_step"] {
        assert_eq!(a[key], b[key], "{key}");
    }
    assert_eq!(b["dmlora_stage2_step"], SWITCH, "summary.json records the switch");
    assert_eq!(b["method"], "dmlora");
    // 2 blocks x (3 branches x rank 2 x (32 + 96) + 1 scale), head 32 x 4 + 4
    assert_eq!(b["adapter_params"], 2 * (3 * 2 * (32 + 96) + 1));
    assert_eq!(b["trainable_params"], 2 * (3 * 2 * 128 + 1) + 132);

    // The weights and the optimizer state at the end, bit for bit.
    let want = snapshot(&reference.join("checkpoints/last.safetensors"));
    let got = snaps.last().unwrap();
    assert_eq!(got.tensors.len(), want.tensors.len());
    for (k, t) in &want.tensors {
        assert!(t.equal(&got.tensors[k]), "{k} differs after resume");
    }
    assert_eq!(got.optim_steps, want.optim_steps);
}

#[test]
fn a_trained_dmlora_run_merges_and_exports_a_rank_k_r_lora() {
    let (tmp, cfg) = setup_dmlora();
    run_ok(&["finetune", "--config", s(&cfg), "--no-progress"]);
    let run = tmp.path().join("runs/run");
    let logits = |extra: &[&str], name: &str| -> Tensor {
        let path = tmp.path().join(name);
        let mut args = vec!["eval", "--run", s(&run), "--dump-logits", s(&path)];
        args.extend_from_slice(extra);
        run_ok(&args);
        Tensor::read_npy(&path).unwrap()
    };
    let unmerged = logits(&[], "unmerged.npy");

    // Folded into the frozen weights: a plain ViT with the same outputs.
    let merged = tmp.path().join("merged.safetensors");
    run_ok(&["export", "--run", s(&run), "--format", "merged", "--out", s(&merged)]);
    let diff = (&unmerged - logits(&["--merged", s(&merged)], "merged.npy")).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "merged logits differ by {diff}");
    let keys: Vec<String> = Tensor::read_safetensors(&merged).unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(!keys.iter().any(|k| k.contains("dmlora")), "{keys:?}");

    // The adapter file reloads exactly.
    let adapter = tmp.path().join("adapter.safetensors");
    run_ok(&["export", "--run", s(&run), "--format", "adapter", "--out", s(&adapter)]);
    assert!(unmerged.equal(&logits(&["--adapter", s(&adapter)], "adapter.npy")));

    // PEFT: one LoRA of rank K r = 6 per layer, the scale s_l / K folded into B.
    let peft = tmp.path().join("peft");
    run_ok(&["export", "--run", s(&run), "--format", "peft", "--out", s(&peft)]);
    let config = json(&peft.join("adapter_config.json"));
    assert_eq!((config["peft_type"].as_str(), config["r"].as_u64()), (Some("LORA"), Some(6)), "{config}");
    let lora: HashMap<String, Tensor> =
        Tensor::read_safetensors(peft.join("adapter_model.safetensors")).unwrap().into_iter().collect();
    let a = &lora["base_model.model.blocks.1.attn.qkv.lora_A.weight"];
    let b = &lora["base_model.model.blocks.1.attn.qkv.lora_B.weight"];
    assert_eq!((a.size(), b.size()), (vec![6, 32], vec![96, 6]));
    // B A (times PEFT's alpha / r) is the layer's merged update: merged weight - base weight.
    let trained = snapshot(&run.join("checkpoints/last.safetensors"));
    let t = |k: &str| &trained.tensors[&format!("model.blocks.1.attn.qkv.dmlora_{k}")];
    let (am, bm, scale) = (t("A"), t("B"), t("scale").double_value(&[0]));
    let scaling = config["lora_alpha"].as_f64().unwrap() / 6.0;
    let want = bm.tr().mm(am) * (scale / 3.0);
    let diff = (b.mm(a) * scaling - &want).abs().max().double_value(&[]);
    assert!(diff < 1e-6, "PEFT update differs from s/K sum_k B_k^T A_k by {diff}");
    assert!(want.abs().max().double_value(&[]) > 1e-4, "the trained update is not trivially zero");
}
