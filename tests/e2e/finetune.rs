//! `mlae-cli finetune`, `eval` and `export` on a tiny generated task and a tiny random ViT.

use crate::support::*;
use std::path::Path;

const MLAE: &str = "kind = \"mlae\"\n[adapter.mlae]\nexperts = 4\nexpert_dropout = 0.5\ncoeff_init = 1.0";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn finetune_writes_a_complete_run_directory() {
    let (tmp, cfg) = setup(MLAE, 3);
    let stdout = run_ok(&["finetune", "--config", s(&cfg), "--no-progress"]);
    let run = tmp.path().join("runs/run");
    for f in [
        "config.toml",
        "config.hash",
        "metrics.jsonl",
        "summary.json",
        "status.json",
        "curves.png",
        "checkpoints/last.safetensors",
        "checkpoints/best.safetensors",
        "data/classes.txt",
        "results/test/per_class.csv",
        "results/test/confusion.csv",
        "results/test/confusion.png",
    ] {
        assert!(run.join(f).is_file(), "{f} is missing from the run directory");
    }
    // A VTAB task names no classes: the label numbers stand in.
    assert_eq!(std::fs::read_to_string(run.join("data/classes.txt")).unwrap(), "0\n1\n2\n3\n");
    // The resolved config is complete: it loads on its own and names the absolute data root.
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains(&tmp.path().join("data").display().to_string()), "{resolved}");
    assert!(resolved.contains("batch_size = 8") && resolved.contains("weight_decay"), "{resolved}");

    let m = metrics(&run);
    assert_eq!(m.len(), 3, "one metrics line per epoch");
    for (i, line) in m.iter().enumerate() {
        assert_eq!(line["epoch"], (i + 1) as u64);
        assert_eq!(line["step"], ((i + 1) * 6) as u64, "48 images / batch 8 = 6 steps per epoch");
        for key in ["lr", "train_loss", "train_acc", "images_per_s", "seconds", "peak_mem_mb"] {
            assert!(line[key].is_number(), "{key} missing in {line}");
        }
        let test = &line["eval"]["test"];
        assert_eq!(test["n"], 24);
        assert!((0.0..=1.0).contains(&test["acc"].as_f64().unwrap()));
    }

    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["protocol"], "paper");
    assert_eq!(summary["method"], "mlae");
    assert_eq!(summary["epochs"], 3);
    assert_eq!(summary["steps"], 18);
    // 2 blocks x 4 experts x (32 + 96 + 1) on qkv, head 32 x 4 + 4
    assert_eq!(summary["adapter_params"], 2 * 4 * (32 + 96 + 1));
    assert_eq!(summary["head_params"], 32 * 4 + 4);
    assert_eq!(summary["trainable_params"], 2 * 4 * 129 + 132);
    let final_acc = m[2]["eval"]["test"]["acc"].as_f64().unwrap();
    assert_eq!(summary["test_acc"].as_f64().unwrap(), final_acc, "paper protocol: the last epoch's test");
    let best = m.iter().map(|l| l["eval"]["test"]["acc"].as_f64().unwrap()).fold(0.0, f64::max);
    assert_eq!(summary["best_test_acc"].as_f64().unwrap(), best);
    assert!(summary["notes"].to_string().contains("test-set selection"));
    // The per-class results are the final weights': 24 test images, the reported accuracy.
    let confusion = std::fs::read_to_string(run.join("results/test/confusion.csv")).unwrap();
    let counts: Vec<Vec<u64>> = confusion
        .lines()
        .skip(1)
        .map(|l| l.split(',').skip(1).map(|n| n.parse().unwrap()).collect())
        .collect();
    assert_eq!(counts.iter().flatten().sum::<u64>(), 24, "{confusion}");
    let diagonal: u64 = (0..4).map(|i| counts[i][i]).sum();
    assert!((diagonal as f64 / 24.0 - final_acc).abs() < 1e-9, "{confusion}");
    assert_eq!(json(&run.join("status.json"))["state"], "finished");
    assert!((printed_accuracy(&stdout) - final_acc).abs() < 5e-5, "{stdout}");
    assert!(stdout.contains("trainable parameters: "), "{stdout}");
    assert!(stdout.contains(&format!("run directory: {}\n", run.display())), "{stdout}");

    // A finished run is not overwritten by accident...
    let (code, _, stderr) = cli_run(&["finetune", "--config", s(&cfg), "--no-progress"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("finished run") && stderr.contains("--force"), "{stderr}");
    assert_eq!(json(&run.join("summary.json")), summary, "the refused run changed the directory");
    // ...and resuming it only reports it.
    let again = run_ok(&["finetune", "--resume", s(&run), "--no-progress"]);
    assert!((printed_accuracy(&again) - final_acc).abs() < 5e-5, "{again}");
}

#[test]
fn eval_and_exports_reproduce_the_summary() {
    let (tmp, cfg) = setup(MLAE, 2);
    run_ok(&["finetune", "--config", s(&cfg), "--no-progress"]);
    let run = tmp.path().join("runs/run");
    let summary = json(&run.join("summary.json"));
    let want = summary["test_acc"].as_f64().unwrap();
    let accuracy = |stdout: &str| -> f64 {
        let line = stdout.lines().find(|l| l.starts_with("accuracy: ")).expect("an accuracy line");
        line["accuracy: ".len()..].parse().unwrap()
    };

    let logits = tmp.path().join("logits.npy");
    let out = run_ok(&["eval", "--run", s(&run), "--dump-logits", s(&logits)]);
    assert!((accuracy(&out) - want).abs() < 5e-5, "{out}");
    let t = tch::Tensor::read_npy(&logits).unwrap();
    assert_eq!(t.size(), [24, CLASSES as i64]);
    assert_eq!(t.kind(), tch::Kind::Float);

    // eval opens the run for inference only (no training split, no optimizer): with the
    // training lists gone it reproduces the logits. The exports and evals below run without
    // them too.
    for list in ["train800.txt", "train800val200.txt"] {
        std::fs::remove_file(tmp.path().join("data/kitti").join(list)).unwrap();
    }
    let without_train = tmp.path().join("logits_without_train.npy");
    let out = run_ok(&["eval", "--run", s(&run), "--dump-logits", s(&without_train)]);
    assert!((accuracy(&out) - want).abs() < 5e-5, "{out}");
    assert!(t.equal(&tch::Tensor::read_npy(&without_train).unwrap()), "eval depends on the training split");

    // The adapter export, loaded back onto the backbone, gives the same logits. Like the PEFT
    // export, the file exports create missing parent folders.
    let adapter = tmp.path().join("exports/adapter/new/adapter.safetensors");
    run_ok(&["export", "--run", s(&run), "--format", "adapter", "--out", s(&adapter)]);
    let logits2 = tmp.path().join("logits2.npy");
    let out = run_ok(&["eval", "--run", s(&run), "--adapter", s(&adapter), "--dump-logits", s(&logits2)]);
    assert!((accuracy(&out) - want).abs() < 5e-5, "{out}");
    assert!(t.equal(&tch::Tensor::read_npy(&logits2).unwrap()), "adapter round trip changed the logits");

    // The merged model (timm layout, no adapter) gives the same logits within fp32 rounding.
    let merged = tmp.path().join("exports/merged/new/merged.safetensors");
    run_ok(&["export", "--run", s(&run), "--format", "merged", "--out", s(&merged)]);
    let logits3 = tmp.path().join("logits3.npy");
    let out = run_ok(&["eval", "--run", s(&run), "--merged", s(&merged), "--dump-logits", s(&logits3)]);
    let diff = (&t - tch::Tensor::read_npy(&logits3).unwrap()).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "merged logits differ by {diff}");
    assert!((accuracy(&out) - want).abs() < 5e-5, "{out}");
    let keys: Vec<String> =
        tch::Tensor::read_safetensors(&merged).unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(
        keys.contains(&"blocks.1.attn.qkv.weight".to_string()) && keys.contains(&"head.weight".to_string())
    );
    assert!(!keys.iter().any(|k| k.contains("mlae")), "the merged model still holds adapter tensors");

    // The PEFT export is a LoRA adapter directory with the head carried along.
    let peft = tmp.path().join("exports/peft/new");
    run_ok(&["export", "--run", s(&run), "--format", "peft", "--out", s(&peft)]);
    let config = json(&peft.join("adapter_config.json"));
    assert_eq!(config["peft_type"], "LORA");
    let keys: Vec<String> = tch::Tensor::read_safetensors(peft.join("adapter_model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(keys.contains(&"base_model.model.blocks.0.attn.qkv.lora_A.weight".to_string()), "{keys:?}");
}

#[test]
fn an_interrupted_run_resumes_to_the_same_result() {
    // Uninterrupted reference.
    let (tmp, cfg) = setup(MLAE, 4);
    run_ok(&["finetune", "--config", s(&cfg), "--no-progress"]);
    let reference = tmp.path().join("runs/run");

    // The same run, stopped mid-epoch twice (as Ctrl-C would) and resumed each time.
    let (tmp2, cfg2) = setup(MLAE, 4);
    let run = tmp2.path().join("runs/run");
    let (code, _, stderr) =
        cli_run(&["finetune", "--config", s(&cfg2), "--no-progress", "--interrupt-at-step", "9"]);
    assert_eq!(code, 130, "an interrupted run exits 130: {stderr}");
    let hint = format!("resume with: mlae-cli finetune --resume {}\n", run.display());
    assert!(stderr.contains(&hint), "the hint names the run directory: {stderr}");
    let status = json(&run.join("status.json"));
    assert_eq!((status["state"].as_str(), status["step"].as_u64()), (Some("interrupted"), Some(9)));
    assert!(!run.join("summary.json").exists());
    let (code, _, stderr) =
        cli_run(&["finetune", "--resume", s(&run), "--no-progress", "--interrupt-at-step", "16"]);
    assert_eq!(code, 130);
    assert!(stderr.contains(&hint), "{stderr}");
    let stdout = run_ok(&["finetune", "--resume", s(&run), "--no-progress"]);

    assert_eq!(
        learning_curve(&run),
        learning_curve(&reference),
        "resumed run diverged from the uninterrupted one"
    );
    let (a, b) = (json(&run.join("summary.json")), json(&reference.join("summary.json")));
    for key in ["test_acc", "best_test_acc", "best_test_epoch", "steps", "epochs"] {
        assert_eq!(a[key], b[key], "{key}");
    }
    assert!((printed_accuracy(&stdout) - b["test_acc"].as_f64().unwrap()).abs() < 5e-5);
    // Same weights at the end, bit for bit.
    assert_same_model_weights(&run, &reference);
}

#[test]
fn a_real_interrupt_signal_writes_a_checkpoint_and_the_run_resumes() {
    let (tmp, cfg) = setup(MLAE, 60);
    let run = tmp.path().join("runs/run");
    let mut child = cli().args(["finetune", "--config", s(&cfg), "--no-progress"]).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !run.join("metrics.jsonl").is_file() {
        assert!(std::time::Instant::now() < deadline, "no epoch finished in time");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(130), "SIGINT should stop the run cleanly");
    let status = json(&run.join("status.json"));
    assert_eq!(status["state"], "interrupted");
    let step = status["step"].as_u64().unwrap();
    assert!(step >= 6 && run.join("checkpoints/last.safetensors").is_file());
    run_ok(&["finetune", "--resume", s(&run), "--no-progress"]);
    let summary = json(&run.join("summary.json"));
    assert_eq!((summary["epochs"].as_u64(), summary["steps"].as_u64()), (Some(60), Some(360)));
}

/// Ctrl-C twice: the run stops at once with exit code 130 (not a crash), says so in its status,
/// and resumes from the last checkpoint on disk.
#[test]
fn a_second_interrupt_exits_at_once_and_the_run_still_resumes() {
    let (tmp, cfg) = setup(MLAE, 60);
    let run = tmp.path().join("runs/run");
    let child = cli()
        .args(["finetune", "--config", s(&cfg), "--no-progress"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !run.join("checkpoints/last.safetensors").is_file() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint in time");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    let twice =
        std::process::Command::new("sh").args(["-c", &format!("kill -INT {pid}; kill -INT {pid}")]).status();
    assert!(twice.unwrap().success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "exit code, not a signal: {:?}\n{stderr}", out.status);
    if stderr.contains("second interrupt") {
        let status = json(&run.join("status.json"));
        assert!(status["message"].as_str().unwrap_or("").contains("second interrupt"), "{status}");
    }
    run_ok(&["finetune", "--resume", s(&run), "--no-progress"]);
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["epochs"].as_u64(), Some(60));
}

#[test]
fn a_diverging_run_stops_at_the_step_and_keeps_its_checkpoint() {
    let (tmp, cfg) = setup("kind = \"full\"", 3);
    let (code, stdout, stderr) = cli_run(&[
        "finetune",
        "--config",
        s(&cfg),
        "--no-progress",
        "--set",
        "train.lr=1e30",
        "--set",
        "train.warmup_epochs=0",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("the loss became") && stderr.contains("at step"), "{stderr}");
    // The failed run's directory exists (status, last good checkpoint): it is named.
    let run = tmp.path().join("runs/run");
    assert!(stdout.contains(&format!("run directory: {}", run.display())), "{stdout}");
    let status = json(&run.join("status.json"));
    assert_eq!(status["state"], "failed");
    assert!(status["message"].as_str().unwrap().contains("non-finite"), "{status}");
}

#[test]
fn configs_that_do_not_fit_are_rejected_before_training() {
    let (tmp, cfg) = setup(MLAE, 1);
    let runs = tmp.path().join("runs");
    // An unknown key names the file and the key.
    let text =
        std::fs::read_to_string(&cfg).unwrap().replace("batch_size = 8", "batch_size = 8\nbatch_szie = 4");
    std::fs::write(&cfg, text).unwrap();
    let (code, _, stderr) = cli_run(&["finetune", "--config", s(&cfg)]);
    assert_ne!(code, 0);
    assert!(stderr.contains("config.toml") && stderr.contains("batch_szie"), "{stderr}");
    assert!(!runs.exists(), "a rejected config left a run directory");

    // A class count that does not fit the task fails before any run directory exists.
    let (tmp, cfg) = setup(MLAE, 1);
    let (code, stdout, stderr) = cli_run(&["finetune", "--config", s(&cfg), "--set", "model.num_classes=7"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("model.num_classes") && stderr.contains('4') && stderr.contains('7'), "{stderr}");
    assert!(!tmp.path().join("runs").exists(), "a rejected config left a run directory");
    assert!(!stdout.contains("run directory"), "names a run directory that does not exist: {stdout}");

    // So does an adapter value out of range, naming the field.
    let set = |kv: &str| cli_run(&["finetune", "--config", s(&cfg), "--set", kv]);
    let (code, _, stderr) = set("adapter.mlae.expert_dropout=1.5");
    assert_ne!(code, 0);
    assert!(stderr.contains("adapter.mlae.expert_dropout"), "{stderr}");
    // And a key of the old flat layout, naming its new place.
    let (code, _, stderr) = set("adapter.dropout=0.5");
    assert_ne!(code, 0);
    assert!(
        stderr.contains("adapter.dropout was renamed: use adapter.mlae.expert_dropout (mlae)"),
        "{stderr}"
    );
    assert!(!tmp.path().join("runs").exists(), "a rejected config left a run directory");
}

#[test]
fn a_bad_set_is_blamed_on_the_set_not_the_config_file() {
    let (tmp, cfg) = setup(MLAE, 1);
    for (set, words) in [
        ("train.epochs=abc", "train.epochs: invalid type"),
        ("train.epohcs=3", "unknown field `epohcs`"),
        ("adapter.mlae.expert_dropout=1.5", "adapter.mlae.expert_dropout"),
        ("train.epochs", "expected key.path=value"),
    ] {
        let (code, stdout, stderr) = cli_run(&["finetune", "--config", s(&cfg), "--set", set]);
        assert_ne!(code, 0);
        assert!(stderr.contains(&format!("--set {set}: ")) && stderr.contains(words), "{stderr}");
        assert!(!stderr.contains(s(&cfg)), "the config file is not at fault: {stderr}");
        assert!(!stdout.contains("run directory"), "{stdout}");
    }
    // A bad value in the file still names the file, even with an unrelated --set.
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("epochs = 1", "epochs = \"x\""))
        .unwrap();
    let (code, _, stderr) = cli_run(&["finetune", "--config", s(&cfg), "--set", "train.lr=1e-3"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(s(&cfg)) && stderr.contains("train.epochs") && !stderr.contains("--set"),
        "{stderr}"
    );
    assert!(!tmp.path().join("runs").exists());
}

#[test]
fn finetune_without_arguments_says_how_to_start() {
    let (code, _, stderr) = cli_run(&["finetune"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cargo xtask quickstart") && stderr.contains("--config"), "{stderr}");
}

#[test]
fn a_dora_run_trains_resumes_and_exports() {
    // `adapter.kind = "dora"` on LoRA's section: the magnitude trains and travels with every
    // export (adapter file, merged model, PEFT directory with use_dora).
    let (tmp, cfg) = setup("kind = \"dora\"\n[adapter.lora]\nrank = 4", 2);
    run_ok(&["finetune", "--config", s(&cfg), "--no-progress"]);
    let run = tmp.path().join("runs/run");
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["method"], "dora");
    // 2 blocks x (4 x (32 + 96) + 96) on qkv
    assert_eq!(summary["adapter_params"], 2 * (4 * (32 + 96) + 96));
    let logits = tmp.path().join("logits.npy");
    run_ok(&["eval", "--run", s(&run), "--dump-logits", s(&logits)]);
    let t = tch::Tensor::read_npy(&logits).unwrap();
    let adapter = tmp.path().join("adapter.safetensors");
    run_ok(&["export", "--run", s(&run), "--format", "adapter", "--out", s(&adapter)]);
    let logits2 = tmp.path().join("logits2.npy");
    run_ok(&["eval", "--run", s(&run), "--adapter", s(&adapter), "--dump-logits", s(&logits2)]);
    assert!(t.equal(&tch::Tensor::read_npy(&logits2).unwrap()), "adapter round trip changed the logits");
    let merged = tmp.path().join("merged.safetensors");
    run_ok(&["export", "--run", s(&run), "--format", "merged", "--out", s(&merged)]);
    let logits3 = tmp.path().join("logits3.npy");
    run_ok(&["eval", "--run", s(&run), "--merged", s(&merged), "--dump-logits", s(&logits3)]);
    let diff = (&t - tch::Tensor::read_npy(&logits3).unwrap()).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "merged DoRA logits differ by {diff}");
    let peft = tmp.path().join("peft");
    run_ok(&["export", "--run", s(&run), "--format", "peft", "--out", s(&peft)]);
    let config = json(&peft.join("adapter_config.json"));
    assert_eq!(config["use_dora"], true, "{config}");
    let tensors = tch::Tensor::read_safetensors(peft.join("adapter_model.safetensors")).unwrap();
    let m = tensors
        .iter()
        .find(|(k, _)| k == "base_model.model.blocks.1.attn.qkv.lora_magnitude_vector")
        .map(|(_, t)| t.shallow_clone())
        .expect("the magnitude is exported");
    assert_eq!(m.size(), [96]);
}

#[test]
fn frozen_coefficients_keep_their_init_and_are_not_counted() {
    // `adapter.mlae.adaptive_coeffs = false` (the paper's Table 5 rows without adaptive
    // coefficients): A and B train, every lambda stays at coeff_init.
    let (tmp, cfg) = setup(&format!("{MLAE}\nadaptive_coeffs = false"), 2);
    run_ok(&["finetune", "--config", s(&cfg), "--no-progress", "--set", "adapter.mlae.coeff_init=2.0"]);
    let run = tmp.path().join("runs/run");
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["adapter_params"], 2 * 4 * (32 + 96 + 1), "the lambdas are part of the adapter");
    assert_eq!(summary["trainable_params"], 2 * 4 * (32 + 96) + 132, "but they do not train");
    let weights = tch::Tensor::read_safetensors(run.join("checkpoints/last.safetensors")).unwrap();
    let (mut lambdas, mut b_moved) = (0, false);
    for (k, t) in &weights {
        if k.starts_with("model.") && k.ends_with("mlae_lambda") {
            lambdas += 1;
            assert!(t.equal(&tch::Tensor::full([4], 2.0, (tch::Kind::Float, tch::Device::Cpu))), "{k} moved");
        }
        if k.starts_with("model.") && k.ends_with("mlae_B") {
            b_moved |= t.abs().max().double_value(&[]) > 0.0;
        }
    }
    assert_eq!(lambdas, 2, "one lambda tensor per adapted layer");
    assert!(b_moved, "B did not train");
}
