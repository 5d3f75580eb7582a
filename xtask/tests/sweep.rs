//! `cargo xtask sweep` end to end: plans of the real grids, and the local executor driving a
//! stand-in for mlae-cli (tests/support/fake-mlae-cli.sh, a test double of the process
//! protocol) through crashes, kills, resumes and changed configs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use support::*;

/// Table 10 of the paper: (task, dropout p, coefficient init).
const TABLE_10: [(&str, f64, f64); 19] = [
    ("cifar", 0.7, 2.0),
    ("caltech101", 0.1, 0.5),
    ("dtd", 0.7, 0.25),
    ("oxford_flowers102", 0.7, 1.0),
    ("oxford_iiit_pet", 0.7, 2.0),
    ("svhn", 0.5, 4.0),
    ("sun397", 0.7, 4.0),
    ("patch_camelyon", 0.7, 1.0),
    ("eurosat", 0.5, 4.0),
    ("resisc45", 0.5, 2.0),
    ("diabetic_retinopathy", 0.7, 0.25),
    ("clevr_count", 0.0, 0.125),
    ("clevr_dist", 0.0, 0.125),
    ("dmlab", 0.5, 2.0),
    ("kitti", 0.5, 1.0),
    ("dsprites_loc", 0.5, 1.0),
    ("dsprites_ori", 0.7, 4.0),
    ("smallnorb_azi", 0.0, 1.0),
    ("smallnorb_ele", 0.0, 0.25),
];

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
        let point = (field(l, "adapter.dropout").unwrap(), field(l, "adapter.coeff_init").unwrap());
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
        assert_eq!(field(line, "adapter.dropout").unwrap().parse::<f64>().unwrap(), p, "{line}");
        assert_eq!(field(line, "adapter.coeff_init").unwrap().parse::<f64>().unwrap(), init, "{line}");
        assert_eq!(field(line, "data.protocol").as_deref(), Some("paper"));
        assert_eq!(field(line, "adapter.kind").as_deref(), Some("mlae"));
        assert_eq!(field(line, "train.epochs").as_deref(), Some("500"), "the paper's recipe");
    }
}

#[test]
fn dry_runs_of_the_other_grids_plan_valid_configs() {
    // Each planned run's [adapter] is checked with mlae-core, so these fail on a bad fragment.
    let cases =
        [("vtab", "baselines", 19 * 6), ("vtab", "ablation-masking", 19 * 15), ("fgvc", "paper", 5 * 3)];
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
    assert_eq!(field(fixed, "adapter.mask.strategy").as_deref(), Some("fixed"));
    assert_eq!(field(fixed, "adapter.dropout").as_deref(), Some("0.0"));
    let ours = line("stochastic-uniform");
    assert_eq!(field(ours, "adapter.dropout").as_deref(), Some("0.7"), "Table 10's p for dtd");
    assert_eq!(field(ours, "adapter.coeff_init").as_deref(), Some("0.25"), "Table 10's init for dtd");
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
            "adapter.dropout=0.1"
        ])
        .contains("is an axis")
    );
    assert!(err(&["sweep", "--dry-run", "--benchmark", "vtab", "--set", "train.seed=1"]).contains("--seeds"));
}

/// A small search grid on the demo tasks: 2 tasks x 2 x 2 settings, then 2 finals.
fn small_search_grid(dir: &Path) -> std::path::PathBuf {
    grid_file(
        dir,
        "small-search",
        "configs/demo/{task}.toml",
        "protocol = \"val\"\n[axes]\n\"adapter.dropout\" = [0.1, 0.5]\n\"adapter.coeff_init\" = [1.0, 2.0]\n\
         [select]\nmetric = \"best_val_acc\"\nfinal_protocol = \"paper\"\n",
    )
}

#[test]
fn a_killed_sweep_resumes_interrupted_runs_and_never_repeats_finished_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let cli = fake_cli(tmp.path());
    let grid = small_search_grid(tmp.path());
    let sweep = tmp.path().join("sweep");
    let log = tmp.path().join("events.log");
    let sweep_cmd = || {
        let mut c = xtask();
        c.args(["sweep", "--benchmark", "demo", "--jobs", "2", "--set", "train.epochs=3", "--grid"])
            .arg(&grid)
            .arg("--out")
            .arg(&sweep)
            .arg("--cli")
            .arg(&cli)
            .env("FAKE_LOG", &log);
        c
    };
    // First attempt: the two mnist5k runs with dropout 0.5 hang after their first epoch, so
    // that both slots hold a half-done run when the sweep is killed.
    let mut child = sweep_cmd()
        .env("FAKE_BLOCK", r"^search\.mnist5k\..*dropout=0\.5")
        .env("FAKE_UNBLOCK", tmp.path().join("never"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let blocked = [
        "search.mnist5k.mlae.coeff_init=1.0,dropout=0.5.s0",
        "search.mnist5k.mlae.coeff_init=2.0,dropout=0.5.s0",
    ];
    let first_done = [
        "search.mnist5k.mlae.coeff_init=1.0,dropout=0.1.s0",
        "search.mnist5k.mlae.coeff_init=2.0,dropout=0.1.s0",
    ];
    wait_for("two finished runs and two half-done ones", Duration::from_secs(60), || {
        first_done.iter().all(|r| run_state(&sweep, r).as_deref() == Some("finished"))
            && blocked
                .iter()
                .all(|r| sweep.join("runs").join(r).join("checkpoints/last.safetensors").is_file())
    });
    // SIGKILL: the sweep gets no chance to clean up; its runs are told by the kernel
    // (parent-death signal) and checkpoint.
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for("the orphaned runs to stop", Duration::from_secs(20), || {
        blocked.iter().all(|r| run_state(&sweep, r).as_deref() == Some("interrupted"))
    });
    let status = stdout(&run_ok(xtask().arg("sweep").arg("--status").arg(&sweep)));
    assert!(status.contains("interrupted  search.mnist5k.mlae.coeff_init=1.0,dropout=0.5.s0"), "{status}");
    assert!(status.contains("done         search.mnist5k.mlae.coeff_init=1.0,dropout=0.1.s0"), "{status}");
    assert!(status.contains("pending      search.digits."), "{status}");

    // Second attempt: everything finishes; nothing finished before runs again.
    run_ok(&mut sweep_cmd());
    let starts = starts(&log);
    for r in first_done {
        assert_eq!(starts[r], ["fresh"], "{r} finished before the kill and must not run again");
    }
    for r in blocked {
        assert_eq!(starts[r], ["fresh", "resume"], "{r} resumes from its checkpoint");
    }
    let resumed_from: Vec<String> = events(&log)
        .into_iter()
        .filter(|e| e.kind == "start" && e.rest[0] == "resume")
        .map(|e| e.rest[1].clone())
        .collect();
    assert_eq!(resumed_from, ["1", "1"], "resumed at the epoch of the checkpoint");
    assert_eq!(starts.len(), 10, "8 search runs and 2 finals: {starts:?}");
    assert!(starts.values().filter(|s| s.len() == 1).count() == 8);

    // The finals train the setting with the best validation accuracy, under the paper protocol.
    for task in ["mnist5k", "digits"] {
        let mut best: Option<(f64, String)> = None;
        for name in run_names(&sweep).iter().filter(|n| n.starts_with(&format!("search.{task}."))) {
            let v =
                json(&sweep.join("runs").join(name).join("summary.json"))["best_val_acc"].as_f64().unwrap();
            if best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, name.clone()));
            }
        }
        let (_, best) = best.unwrap();
        let final_cfg =
            std::fs::read_to_string(sweep.join(format!("runs/final.{task}.mlae.s0/config.toml"))).unwrap();
        let table: toml::Table = final_cfg.parse().unwrap();
        let (p, init) = (&table["adapter"]["dropout"], &table["adapter"]["coeff_init"]);
        assert!(
            best.contains(&format!("coeff_init={init},dropout={p}")),
            "{task}: final has p={p} init={init}, best was {best}"
        );
        assert_eq!(table["data"]["protocol"].as_str(), Some("paper"));
        let summary = json(&sweep.join(format!("runs/final.{task}.mlae.s0/summary.json")));
        assert_eq!(summary["protocol"], "paper");
    }
    let selection = json(&sweep.join("selection.json"));
    assert_eq!(selection["final.digits.mlae.s0"]["candidates"].as_array().unwrap().len(), 4);

    // Third attempt: nothing left to do, nothing runs.
    let before = events(&log).len();
    run_ok(&mut sweep_cmd());
    assert_eq!(events(&log).len(), before, "a finished sweep starts no run");
    let status = stdout(&run_ok(xtask().arg("sweep").arg("--status").arg(&sweep)));
    assert!(status.trim_end().ends_with("runs: 10 (done 10)"), "{status}");

    // The report on the finals: the demo mean is the mean of the two finals' test accuracy.
    let out = stdout(&run_ok(xtask().args(["report", "--sweep"]).arg(&sweep)));
    let acc = |t: &str| {
        100.0
            * json(&sweep.join(format!("runs/final.{t}.mlae.s0/summary.json")))["test_acc"].as_f64().unwrap()
    };
    let row = out.lines().find(|l| l.starts_with("| mlae |")).unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("paper (selected on val)"), "{row}");
    let mean = (acc("mnist5k") + acc("digits")) / 2.0;
    assert!(row.ends_with(&format!("| {mean:.2} |")), "{row} vs {mean:.2}");
    assert!(out.contains("## Selected settings"), "{out}");
    let png = std::fs::read(sweep.join("report/domains.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
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
}

#[test]
fn runs_spread_over_the_listed_gpus_one_at_a_time_each() {
    let tmp = tempfile::tempdir().unwrap();
    let cli = fake_cli(tmp.path());
    let sweep = tmp.path().join("sweep");
    let log = tmp.path().join("events.log");
    let grid = grid_file(
        tmp.path(),
        "six",
        "configs/demo/{task}.toml",
        "protocol = \"paper\"\n[axes]\n\"adapter.dropout\" = [0.1, 0.3, 0.5]\n",
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
    assert_eq!(spans.values().map(Vec::len).sum::<usize>(), 6);
    for (gpu, mut s) in spans {
        s.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in s.windows(2) {
            assert!(w[1].0 >= w[0].1, "two runs at once on GPU {gpu}: {w:?}");
        }
    }
}

#[test]
fn the_report_computes_vtab_group_means_and_fgvc_seed_spreads() {
    let tmp = tempfile::tempdir().unwrap();
    let cli = fake_cli(tmp.path());
    // VTAB: test accuracies chosen so the means are easy to check by hand.
    let natural = [("cifar", 70.0), ("caltech101", 80.0), ("dtd", 90.0), ("oxford_flowers102", 60.0)];
    let natural2 = [("oxford_iiit_pet", 50.0), ("svhn", 40.0), ("sun397", 100.0)]; // Natural sum 490 -> 70.0
    let specialized =
        [("patch_camelyon", 80.0), ("eurosat", 90.0), ("resisc45", 70.0), ("diabetic_retinopathy", 60.0)]; // 75.0
    let structured = [
        ("clevr_count", 10.0),
        ("clevr_dist", 20.0),
        ("dmlab", 30.0),
        ("kitti", 40.0),
        ("dsprites_loc", 50.0),
        ("dsprites_ori", 60.0),
        ("smallnorb_azi", 70.0),
        ("smallnorb_ele", 80.0),
    ]; // 45.0
    let acc_file = tmp.path().join("acc.txt");
    let mut lines = String::new();
    for (t, a) in natural.iter().chain(&natural2).chain(&specialized).chain(&structured) {
        lines.push_str(&format!("{t} 0 {}\n", a / 100.0));
    }
    // FGVC, seeds 0, 1, 42.
    let fgvc = [
        ("cub", [80.0, 82.0, 84.0]),
        ("nabirds", [70.0, 70.0, 73.0]),
        ("oxford_flowers", [99.0, 98.0, 97.0]),
        ("stanford_dogs", [90.0, 91.0, 89.0]),
        ("stanford_cars", [85.0, 85.0, 85.0]),
    ];
    for (t, accs) in &fgvc {
        for (s, a) in [0, 1, 42].iter().zip(accs) {
            lines.push_str(&format!("{t} {s} {}\n", a / 100.0));
        }
    }
    std::fs::write(&acc_file, lines).unwrap();
    let sweep_of = |bench: &str| {
        let sweep = tmp.path().join(bench);
        run_ok(
            xtask()
                .args([
                    "sweep",
                    "--benchmark",
                    bench,
                    "--grid",
                    "paper",
                    "--jobs",
                    "2",
                    "--set",
                    "train.epochs=1",
                    "--out",
                ])
                .arg(&sweep)
                .arg("--cli")
                .arg(&cli)
                .env("FAKE_ACC_FILE", &acc_file)
                .env("FAKE_EPOCH_SECONDS", "0"),
        );
        sweep
    };
    let vtab = sweep_of("vtab");
    let md = stdout(&run_ok(xtask().args(["report", "--sweep"]).arg(&vtab)));
    let row = md.lines().find(|l| l.starts_with("| mlae |")).unwrap_or_else(|| panic!("{md}"));
    // Natural 70.0, Specialized 75.0, Structured 45.0; the average is their mean, 63.3 (the
    // mean over the 19 tasks would be 60.5).
    assert!(row.ends_with("| 70.0 | 75.0 | 45.0 | 63.3 |"), "{row}");
    assert!(row.contains("| paper |"), "protocol stated: {row}");
    assert!(row.contains("| 0.30 |"), "backbone params (trainable minus head), in M: {row}");
    assert!(md.contains("| MLAE **(published)** | paper (published) | 0.30 | - | 77.8 |"), "{md}");
    assert!(md.contains("| 84.0 | 87.5 | 64.8 | 78.8 |"), "published MLAE group means and average: {md}");
    assert!(
        md.contains("| LoRA **(published)** |") && md.contains("74.6\\*"),
        "LoRA's average is marked computed"
    );
    let csv = std::fs::read_to_string(vtab.join("report/report.csv")).unwrap();
    assert!(csv.contains("ours,mlae,paper,average,average,,63.3333,"), "{csv}");
    assert!(csv.contains("ours,mlae,paper,Structured,group,,45.0000,"), "{csv}");
    assert!(csv.contains("ours,mlae,paper,sun397,task,1,100.0000,100.0000,100.0000,"), "{csv}");
    assert!(csv.contains("published,MLAE,paper,average,average,,78.8000,"), "{csv}");

    let fg = sweep_of("fgvc");
    let md = stdout(&run_ok(xtask().args(["report", "--sweep"]).arg(&fg)));
    let row = md.lines().find(|l| l.starts_with("| mlae |")).unwrap_or_else(|| panic!("{md}"));
    // Per dataset: mean (min-max, n); the mean over datasets is 84.80 (seed means: 84.80,
    // 85.20, 85.60 -> spread 84.80-85.60). Hand-computed:
    //   cub 82, nabirds 71, flowers 98, dogs 90, cars 85 -> 426 / 5 = 85.20
    //   seed 0: 80+70+99+90+85 = 424 -> 84.80; seed 1: 82+70+98+91+85 = 426 -> 85.20;
    //   seed 42: 84+73+97+89+85 = 428 -> 85.60.
    assert!(
        row.contains("| 82.00 (80.0-84.0, n=3) | 71.00 (70.0-73.0, n=3) | 98.00 (97.0-99.0, n=3) |"),
        "{row}"
    );
    assert!(row.ends_with("| 85.20 (84.80-85.60, n=3) |"), "{row}");
    assert!(md.contains("| MLAE **(published)** | paper (published) | 0.29 | - | 89.6 (89.6-89.6, n=3) | 85.0 (84.5-85.3, n=3)"), "{md}");
    assert!(md.contains("| 90.86 (90.78-90.94, n=3) |"), "{md}");
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
