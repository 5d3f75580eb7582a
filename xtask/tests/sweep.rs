//! `cargo xtask sweep` without training: plans of the project's real grids (dry runs), and
//! the sweep's own process protocol driven by a stand-in for mlae-cli
//! (support/fake-mlae-cli.sh, a test double that only creates run directories the way
//! mlae-cli does): forwarding Ctrl-C, reporting a crashed run, moving aside the runs of a
//! changed config, spreading runs over GPUs. Runs of the real mlae-cli (kill and resume,
//! search and selection, the reports' numbers, Slurm) are in sweep_e2e.rs and slurm.rs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use support::*;

/// `key=value` from a plan line.
fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}=")).map(String::from))
}

fn plan_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("  ")).collect()
}

#[test]
fn dry_run_of_the_vtab_search_grid_lists_19_x_36_search_runs_and_19_finals() {
    let tmp = tempfile::tempdir().unwrap();
    let sweep = tmp.path().join("never-written");
    let out = stdout(&run_ok(
        xtask().args(["sweep", "--dry-run", "--benchmark", "vtab", "--grid", "search", "--out"]).arg(&sweep),
    ));
    assert_eq!(out.lines().last(), Some("runs: 703"), "{out}");
    let lines = plan_lines(&out);
    let search: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("  search.")).collect();
    let finals: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("  final.")).collect();
    assert_eq!((search.len(), finals.len()), (684, 19));
    let mut per_task: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for l in &search {
        let name = l.split_whitespace().next().unwrap();
        let task = name.split('.').nth(1).unwrap().to_string();
        assert_eq!(field(l, "data.protocol").as_deref(), Some("val"), "search runs select on val200: {l}");
        let point =
            (field(l, "adapter.mlae.expert_dropout").unwrap(), field(l, "adapter.mlae.coeff_init").unwrap());
        assert!(per_task.entry(task).or_default().insert(point), "duplicate setting: {l}");
    }
    assert_eq!(per_task.len(), 19);
    let ps = ["0.0", "0.1", "0.3", "0.5", "0.7", "0.9"];
    let inits = ["0.125", "0.25", "0.5", "1.0", "2.0", "4.0"];
    for (task, points) in &per_task {
        let expected: BTreeSet<(String, String)> =
            ps.iter().flat_map(|p| inits.iter().map(move |i| (p.to_string(), i.to_string()))).collect();
        assert_eq!(points, &expected, "{task}: the paper's 6 x 6 grid (appendix A.2)");
        assert!(
            finals.iter().any(|f| f.starts_with(&format!("  final.{task}.mlae.s0 "))),
            "{task} has a final run"
        );
    }
    assert!(!sweep.exists(), "a dry run writes nothing");
}

#[test]
fn dry_run_of_the_vtab_paper_grid_uses_table_10() {
    let out = stdout(&run_ok(xtask().args(["sweep", "--dry-run", "--benchmark", "vtab", "--grid", "paper"])));
    assert_eq!(out.lines().last(), Some("runs: 19"), "{out}");
    let lines = plan_lines(&out);
    assert_eq!(lines.len(), 19);
    // Runs come in the paper's column order (Tables 1 and 10), the order of mlae-data's manifest.
    let order: Vec<&str> = lines.iter().map(|l| l.split_whitespace().next().unwrap()).collect();
    let expected: Vec<String> = TABLE_10.iter().map(|(t, _, _)| format!("{t}.mlae.s0")).collect();
    assert_eq!(order, expected);
    for (task, p, init) in TABLE_10 {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("  {task}.mlae.s0 ")))
            .unwrap_or_else(|| panic!("no run for {task}:\n{out}"));
        assert_eq!(field(line, "adapter.mlae.expert_dropout").unwrap().parse::<f64>().unwrap(), p, "{line}");
        assert_eq!(field(line, "adapter.mlae.coeff_init").unwrap().parse::<f64>().unwrap(), init, "{line}");
        assert_eq!(field(line, "data.protocol").as_deref(), Some("paper"));
        assert_eq!(field(line, "adapter.kind").as_deref(), Some("mlae"));
        assert_eq!(field(line, "train.epochs").as_deref(), Some("500"), "the paper's recipe");
    }
}

#[test]
fn dry_runs_of_the_other_grids_plan_valid_configs() {
    // Each planned run's whole config is checked (mlae-formats), so these fail on a bad fragment.
    let cases = [
        ("vtab", "baselines", 19 * 7),
        ("vtab", "ablation-masking", 19 * 15),
        ("fgvc", "paper", 5 * 3),
        // The demo benchmark's three tasks: mnist5k, digits, fashion_mnist.
        ("demo", "paper", 3),
        ("demo", "search", 3 * 36 + 3),
        // Results on real data (docs/results.md): 7 methods x 3 seeds; the shrunk search, 3 x 3 x 3 seeds.
        ("demo", "demo-methods", 3 * 7 * 3),
        ("demo", "demo-search", 3 * 9 * 3 + 3 * 3),
        // The same search budget for the other adapter methods: lr x each method's regulariser.
        ("demo", "demo-search-lora", 3 * 9 * 3 + 3 * 3),
        ("demo", "demo-search-lora-dropout", 3 * 9 * 3 + 3 * 3),
        ("demo", "demo-search-dora", 3 * 9 * 3 + 3 * 3),
        // MLAE with LoRA's lr axis, p as its regulariser.
        ("demo", "demo-search-mlae-lr", 3 * 9 * 3 + 3 * 3),
        ("demo", "lora-dropout-readings", 3 * 2),
        ("demo", "lora-placement", 3 * 2),
        // LoRA, MLAE at two fixed settings, and the two searches' picks, at one length.
        ("demo", "demo-epochs", 3 * 5 * 3),
    ];
    for (bench, grid, n) in cases {
        let out = stdout(&run_ok(xtask().args(["sweep", "--dry-run", "--benchmark", bench, "--grid", grid])));
        assert_eq!(out.lines().last(), Some(format!("runs: {n}").as_str()), "{bench} {grid}");
    }
    let out = stdout(&run_ok(xtask().args([
        "sweep",
        "--dry-run",
        "--benchmark",
        "vtab",
        "--grid",
        "ablation-masking",
        "--tasks",
        "dtd",
    ])));
    let line =
        |variant: &str| *plan_lines(&out).iter().find(|l| l.contains(&format!("dtd.{variant}.s0"))).unwrap();
    let fixed = line("fixed-hourglass");
    assert_eq!(field(fixed, "adapter.mlae.mask.strategy").as_deref(), Some("fixed"));
    assert_eq!(field(fixed, "adapter.mlae.expert_dropout").as_deref(), Some("0.0"));
    let out = stdout(&run_ok(xtask().args([
        "sweep",
        "--dry-run",
        "--benchmark",
        "vtab",
        "--grid",
        "baselines",
        "--tasks",
        "dtd",
    ])));
    let dora = *plan_lines(&out).iter().find(|l| l.contains("dtd.dora.s0")).expect("a dora run");
    assert_eq!(field(dora, "adapter.kind").as_deref(), Some("dora"), "{dora}");
    assert_eq!(field(dora, "adapter.lora.rank").as_deref(), Some("8"), "{dora}");
    // each method fragment replaces the task's [adapter]; LoRA+Dropout keeps the task's p
    let baseline = |variant: &str| {
        *plan_lines(&out).iter().find(|l| l.contains(&format!("dtd.{variant}.s0 "))).expect("a run")
    };
    for (variant, kind) in [
        ("linear", "linear-probe"),
        ("full", "full"),
        ("lora", "lora"),
        ("lora-dropout", "lora-dropout"),
        ("dmlora", "dmlora"),
        ("mlae", "mlae"),
    ] {
        assert_eq!(field(baseline(variant), "adapter.kind").as_deref(), Some(kind), "{variant}");
    }
    let ld = baseline("lora-dropout");
    assert_eq!(
        field(ld, "adapter.lora.update_dropout").as_deref(),
        Some("0.7"),
        "Table 10's p for dtd: {ld}"
    );
    assert_eq!(field(baseline("lora"), "adapter.lora.input_dropout").as_deref(), Some("0.0"));
    let ours = line("stochastic-uniform");
    assert_eq!(field(ours, "adapter.mlae.expert_dropout").as_deref(), Some("0.7"), "Table 10's p for dtd");
    assert_eq!(field(ours, "adapter.mlae.coeff_init").as_deref(), Some("0.25"), "Table 10's init for dtd");
}

#[test]
fn the_grids_of_tables_5_to_9_plan_on_the_demo_benchmark() {
    let plan = |grid: &str| {
        stdout(&run_ok(xtask().args(["sweep", "--dry-run", "--benchmark", "demo", "--grid", grid])))
    };
    let runs = |out: &str| {
        out.lines().last().and_then(|l| l.strip_prefix("runs: ")).unwrap().parse::<usize>().unwrap()
    };
    let tasks = runs(&plan("paper"));
    assert!(tasks >= 2, "the demo benchmark has its tasks");
    for (grid, per_task) in [
        ("table5-components", 4),
        ("table6-expert-rank", 3),
        ("table7-experts", 4),
        ("table8-coeff-init", 6),
        ("table8-coeff-init-val", 6),
        ("table9-expert-dropout", 6),
        ("table9-expert-dropout-val", 6),
    ] {
        assert_eq!(runs(&plan(grid)), tasks * per_task, "{grid}");
    }
    let out = plan("table5-components");
    let line = |variant: &str| {
        *plan_lines(&out)
            .iter()
            .find(|l| l.contains(&format!(".{variant}.s0")))
            .unwrap_or_else(|| panic!("{variant}"))
    };
    let alone = line("decomposition");
    assert_eq!(field(alone, "adapter.mlae.adaptive_coeffs").as_deref(), Some("false"), "{alone}");
    assert_eq!(field(alone, "adapter.mlae.mask.strategy").as_deref(), Some("none"), "{alone}");
    let both = line("decomposition-masking-adaptive");
    assert_eq!(field(both, "adapter.mlae.adaptive_coeffs").as_deref(), Some("true"), "{both}");
    assert_eq!(field(both, "adapter.mlae.mask.strategy").as_deref(), Some("stochastic"), "{both}");
    let out = plan("table6-expert-rank");
    let four_by_two = *plan_lines(&out).iter().find(|l| l.contains(".4x2.s0")).unwrap();
    assert_eq!(field(four_by_two, "adapter.mlae.experts").as_deref(), Some("4"), "{four_by_two}");
    assert_eq!(field(four_by_two, "adapter.mlae.expert_rank").as_deref(), Some("2"), "{four_by_two}");
    let out = plan("table9-expert-dropout-val");
    assert!(plan_lines(&out).iter().all(|l| field(l, "data.protocol").as_deref() != Some("paper")), "{out}");
}

#[test]
fn bad_requests_are_refused_with_the_reason() {
    let err = |args: &[&str]| {
        let out = xtask().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(
        err(&["sweep", "--dry-run", "--benchmark", "vtab", "--tasks", "imagenet"])
            .contains("not a vtab task")
    );
    assert!(
        err(&["sweep", "--dry-run", "--benchmark", "vtab", "--grid", "nope"]).contains("ablation-masking")
    );
    assert!(
        err(&[
            "sweep",
            "--dry-run",
            "--benchmark",
            "vtab",
            "--grid",
            "search",
            "--set",
            "adapter.mlae.expert_dropout=0.1"
        ])
        .contains("is an axis")
    );
    assert!(err(&["sweep", "--dry-run", "--benchmark", "vtab", "--set", "train.seed=1"]).contains("--seeds"));
}

/// Every planned run's whole config is validated at plan time, not only `[adapter]`: a bad
/// training value fails the dry run before anything runs or is written, naming the run and
/// the key.
#[test]
fn a_bad_value_in_any_section_fails_the_dry_run_naming_the_run_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("sweep");
    let fail = |set: &str| {
        let out = xtask()
            .args(["sweep", "--dry-run", "--benchmark", "vtab", "--tasks", "dtd", "--set", set, "--out"])
            .arg(&out_dir)
            .output()
            .unwrap();
        assert!(!out.status.success(), "--set {set} should fail the dry run");
        assert!(out.stdout.is_empty(), "nothing is planned: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fail("train.lr=-1");
    assert!(err.contains("run dtd.mlae.s0") && err.contains("train.lr"), "{err}");
    let err = fail("train.batch_size=0");
    assert!(err.contains("run dtd.mlae.s0") && err.contains("train.batch_size"), "{err}");
    let err = fail("model.drop_path=1.5");
    assert!(err.contains("model.drop_path"), "{err}");
    let err = fail("train.lr_max=1");
    assert!(err.contains("lr_max"), "{err}");
    assert!(!out_dir.exists(), "a failed plan writes nothing");
}

#[test]
fn sigint_stops_the_sweep_with_checkpoints_and_the_next_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let cli = fake_cli(tmp.path());
    let sweep = tmp.path().join("sweep");
    let log = tmp.path().join("events.log");
    let cmd = || {
        let mut c = xtask();
        c.args(["sweep", "--benchmark", "demo", "--grid", "paper", "--set", "train.epochs=4", "--out"])
            .arg(&sweep)
            .arg("--cli")
            .arg(&cli)
            .env("FAKE_LOG", &log);
        c
    };
    let child = cmd()
        .env("FAKE_BLOCK", "mnist5k")
        .env("FAKE_UNBLOCK", tmp.path().join("never"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = "mnist5k.mlae.s0";
    wait_for("the first run to checkpoint", Duration::from_secs(30), || {
        sweep.join("runs").join(run).join("checkpoints/last.safetensors").is_file()
    });
    // SAFETY: kill(2) on the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("interrupted: run the same command again to resume"), "{stderr}");
    assert_eq!(run_state(&sweep, run).as_deref(), Some("interrupted"));
    assert!(!sweep.join("runs/digits.mlae.s0").exists(), "nothing new starts after an interrupt");
    run_ok(&mut cmd());
    assert_eq!(starts(&log)[run], ["fresh", "resume"]);
    assert_eq!(starts(&log)["digits.mlae.s0"], ["fresh"]);
}

#[test]
fn a_crashing_run_is_reported_and_the_others_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let cli = fake_cli(tmp.path());
    let sweep = tmp.path().join("sweep");
    let out = xtask()
        .args(["sweep", "--benchmark", "demo", "--grid", "paper", "--out"])
        .arg(&sweep)
        .arg("--cli")
        .arg(&cli)
        .env("FAKE_FAIL", "^mnist5k")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed run fails the sweep command");
    assert!(stderr.contains("FAILED mnist5k.mlae.s0"), "{stderr}");
    assert!(stderr.contains("1 run(s) failed: mnist5k.mlae.s0 (exit 1)"), "{stderr}");
    assert_eq!(run_state(&sweep, "digits.mlae.s0").as_deref(), Some("finished"), "the sweep went on");
    let log = std::fs::read_to_string(sweep.join("logs/mnist5k.mlae.s0.log")).unwrap();
    assert!(log.contains("fake: crash as asked"), "{log}");
    let status = stdout(&run_ok(xtask().arg("sweep").arg("--status").arg(&sweep)));
    assert!(status.contains("failed       mnist5k.mlae.s0"), "{status}");
    assert!(status.contains("exit 1"), "{status}");
    // The report shows what finished; the failed task stays empty.
    let report = stdout(&run_ok(xtask().args(["report", "--sweep"]).arg(&sweep)));
    let row = report.lines().find(|l| l.starts_with("| mlae |")).unwrap();
    assert!(row.ends_with("| - |"), "no mean over part of the tasks: {row}");
}

#[test]
fn a_changed_config_moves_the_old_run_aside_and_runs_again() {
    let tmp = tempfile::tempdir().unwrap();
    let cli = fake_cli(tmp.path());
    let sweep = tmp.path().join("sweep");
    let log = tmp.path().join("events.log");
    // The grid's task config lives in the temp dir, so the test can edit it like a user.
    let task_cfg = tmp.path().join("task.toml");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let write_task = |epochs: u32| {
        std::fs::write(
            &task_cfg,
            format!(
                "extends = \"{}\"\n[train]\nepochs = {epochs}\n",
                root.join("configs/demo/digits.toml").display()
            ),
        )
        .unwrap()
    };
    write_task(2);
    let grid = grid_file(tmp.path(), "edited", &task_cfg.display().to_string(), "protocol = \"paper\"\n");
    // The stand-in reports the accuracy this file gives, so the test can tell runs apart.
    let acc_file = tmp.path().join("acc.txt");
    let cmd = |acc: f64| {
        std::fs::write(&acc_file, format!("digits 0 {acc}\n")).unwrap();
        let mut c = xtask();
        c.args(["sweep", "--benchmark", "demo", "--tasks", "digits", "--grid"])
            .arg(&grid)
            .arg("--out")
            .arg(&sweep)
            .arg("--cli")
            .arg(&cli)
            .env("FAKE_LOG", &log)
            .env("FAKE_ACC_FILE", &acc_file);
        c
    };
    run_ok(&mut cmd(0.61));
    let run = "digits.mlae.s0";
    let first = json(&sweep.join("runs").join(run).join("summary.json"));
    assert_eq!(first["test_acc"], 0.61);
    // A comment does not change the config; a value does.
    std::fs::write(&task_cfg, format!("# a note\n{}", std::fs::read_to_string(&task_cfg).unwrap())).unwrap();
    run_ok(&mut cmd(0.62));
    assert_eq!(starts(&log)[run].len(), 1, "an edited comment is not a changed config");
    write_task(3);
    let status = stdout(&run_ok(xtask().arg("sweep").arg("--status").arg(&sweep)));
    assert!(status.contains("stale        digits.mlae.s0"), "{status}");
    let report = xtask().args(["report", "--sweep"]).arg(&sweep).output().unwrap();
    assert!(!report.status.success(), "a result of the old config is not reported as current");
    assert!(String::from_utf8_lossy(&report.stderr).contains("no finished runs"));
    run_ok(&mut cmd(0.73));
    assert_eq!(starts(&log)[run], ["fresh", "fresh"]);
    let old = json(&sweep.join("runs").join(format!("{run}.stale-1")).join("summary.json"));
    assert_eq!(old, first, "the old run is kept aside, untouched");
    let report = stdout(&run_ok(xtask().args(["report", "--sweep"]).arg(&sweep)));
    let row = report.lines().find(|l| l.starts_with("| mlae |")).unwrap_or_else(|| panic!("{report}"));
    assert!(row.contains("| 73.00 |") && !report.contains("61.00"), "{row}");
    // An override for another task only would leave the digits run beside it with none, in a
    // directory the report names by one set of overrides: refused, and nothing is written.
    let before = std::fs::read(sweep.join("sweep.json")).unwrap();
    let mixed = xtask()
        .args(["sweep", "--benchmark", "demo", "--tasks", "mnist5k", "--set", "train.epochs=4", "--grid"])
        .arg(&grid)
        .arg("--out")
        .arg(&sweep)
        .arg("--cli")
        .arg(&cli)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&mixed.stderr);
    assert!(
        !mixed.status.success() && err.contains("leaves 1 of them as they are (digits.mlae.s0)"),
        "{err}"
    );
    assert_eq!(std::fs::read(sweep.join("sweep.json")).unwrap(), before, "sweep.json is kept");
    assert!(!sweep.join("runs/mnist5k.mlae.s0").exists());
}

#[test]
fn runs_spread_over_the_listed_gpus_one_at_a_time_each() {
    let tmp = tempfile::tempdir().unwrap();
    let cli = fake_cli(tmp.path());
    let sweep = tmp.path().join("sweep");
    let log = tmp.path().join("events.log");
    let grid = grid_file(
        tmp.path(),
        "nine",
        "configs/demo/{task}.toml",
        "protocol = \"paper\"\n[axes]\n\"adapter.mlae.expert_dropout\" = [0.1, 0.3, 0.5]\n",
    );
    run_ok(
        xtask()
            .args(["sweep", "--benchmark", "demo", "--devices", "0,1", "--grid"])
            .arg(&grid)
            .arg("--out")
            .arg(&sweep)
            .arg("--cli")
            .arg(&cli)
            .env("FAKE_LOG", &log)
            .env("FAKE_EPOCH_SECONDS", "0.1"),
    );
    let ev = events(&log);
    let mut spans: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for s in ev.iter().filter(|e| e.kind == "start") {
        let end = ev.iter().find(|e| e.kind == "end" && e.run == s.run).unwrap();
        spans.entry(s.rest[2].clone()).or_default().push((s.time, end.time));
    }
    assert_eq!(spans.keys().collect::<Vec<_>>(), ["0", "1"], "both GPUs used, CUDA_VISIBLE_DEVICES set");
    assert_eq!(spans.values().map(Vec::len).sum::<usize>(), 9, "3 demo tasks x 3 settings");
    for (gpu, mut s) in spans {
        s.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in s.windows(2) {
            assert!(w[1].0 >= w[0].1, "two runs at once on GPU {gpu}: {w:?}");
        }
    }
}

#[test]
fn slurm_dry_run_prints_one_array_script_and_submits_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let sweep = tmp.path().join("sweep");
    let out = stdout(&run_ok(
        xtask()
            .args([
                "sweep",
                "--dry-run",
                "--executor",
                "slurm",
                "--benchmark",
                "vtab",
                "--tasks",
                "cifar,dtd",
            ])
            .args(["--partition", "gpu", "--gres", "gpu:1", "--time", "12:00:00", "--array-limit", "8"])
            .args(["--cli", "/opt/mlae/bin/mlae-cli", "--out"])
            .arg(&sweep)
            // No Slurm needed for a dry run.
            .env("PATH", "/usr/bin:/bin"),
    ));
    assert_eq!(out.lines().last(), Some("runs: 2"), "{out}");
    let script: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("--- sbatch script"))
        .skip(1)
        .take_while(|l| !l.starts_with("--- end of script"))
        .collect();
    assert_eq!(script.first(), Some(&"#!/bin/bash"), "{out}");
    for line in [
        "#SBATCH --array=0-1%8",
        "#SBATCH --partition=gpu",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --time=12:00:00",
        "cli=/opt/mlae/bin/mlae-cli",
    ] {
        assert!(script.contains(&line), "missing {line:?} in\n{}", script.join("\n"));
    }
    let cfg = |run: &str| sweep.join("configs").join(format!("{run}.toml")).display().to_string();
    assert!(
        script.contains(
            &format!("  0) run=cifar.mlae.s0; args=(finetune --config {} --force) ;;", cfg("cifar.mlae.s0"))
                .as_str()
        )
    );
    assert!(script.contains(
        &format!("  1) run=dtd.mlae.s0; args=(finetune --config {} --force) ;;", cfg("dtd.mlae.s0")).as_str()
    ));
    assert!(!sweep.exists(), "nothing written, nothing submitted");
}
