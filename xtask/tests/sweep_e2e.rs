//! `cargo xtask sweep` and `cargo xtask report` end to end with the real mlae-cli: tiny tasks
//! generated on the fly and laid out like VTAB-1k tasks (the demo tasks, and the 19 VTAB-1k
//! tasks), the project's own task configs with a tiny randomly initialised ViT in place of the
//! pretrained one, a few epochs per run. No network, no pretrained weights. Every expected
//! number is computed here from the runs' `summary.json` files.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::*;

/// Epochs of each demo run: enough that the sweep can be killed while runs are mid-way, with
/// room to spare when the test shares a loaded machine (40 let a whole sweep slip past the
/// poll while the rest of the suite ran beside it).
const DEMO_EPOCHS: u64 = 100;

#[test]
fn a_demo_search_sweep_survives_a_kill_resumes_from_checkpoints_and_reports_its_runs() {
    let started = Instant::now();
    let cli = mlae_cli();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // 2 train800, 1 val200 and 1 test image per class: 20 / 10 / 30 / 10 images per task.
    let tasks = write_demo_tasks(&data, [2, 1, 1]);
    assert_eq!(tasks, ["mnist5k", "digits", "fashion_mnist"], "the demo manifest's tasks");
    let n = tasks.len();
    let template = tiny_configs(tmp.path(), "demo");
    // The search grid's shape on a small scale: 2 settings x 2 seeds per task on val200, then
    // per (task, seed) the best setting trained on train800val200 and tested.
    let grid = grid_file(
        tmp.path(),
        "search-small",
        &template,
        "protocol = \"val\"\nseeds = [0, 1]\n[axes]\n\"adapter.mlae.expert_dropout\" = [0.1, 0.5]\n\
         [select]\nmetric = \"best_val_acc\"\nfinal_protocol = \"paper\"\n",
    );
    let sweep = tmp.path().join("sweep");
    let cache = tmp.path().join("cache");
    let sweep_cmd = || {
        real_sweep(&cache, &["--benchmark", "demo", "--jobs", "2"], &grid, &sweep, &cli, &data, DEMO_EPOCHS)
    };
    // seed by seed, then task, then setting (a sweep stopped part-way holds whole seeds)
    let mut search = Vec::new();
    for seed in [0, 1] {
        for task in &tasks {
            for p in ["0.1", "0.5"] {
                search.push(format!("search.{task}.mlae.expert_dropout={p}.s{seed}"));
            }
        }
    }
    let finals: Vec<String> =
        [0, 1].iter().flat_map(|s| tasks.iter().map(move |t| format!("final.{t}.mlae.s{s}"))).collect();

    // The plan: 4 search runs and 2 finals waiting for them per task; nothing written.
    let out = stdout(&run_ok(sweep_cmd().arg("--dry-run")));
    let planned: Vec<&str> =
        out.lines().filter(|l| l.starts_with("  ")).map(|l| l.split_whitespace().next().unwrap()).collect();
    let expected: Vec<&str> = search.iter().chain(&finals).map(String::as_str).collect();
    assert_eq!(planned, expected, "{out}");
    let plan = format!("{} search runs + {} final runs", 4 * n, 2 * n);
    assert!(out.contains(&plan) && out.ends_with(&format!("runs: {}\n", 6 * n)), "{out}");
    for r in &search {
        let line = out.lines().find(|l| l.starts_with(&format!("  {r} "))).unwrap();
        assert!(line.contains("data.protocol=val") && line.ends_with("(start)"), "{line}");
    }
    assert!(!sweep.exists(), "a dry run writes nothing");

    // First attempt, killed with SIGKILL once at least two runs are done and both job slots
    // hold a run that is well into training and far from its end.
    let sweep_log = tmp.path().join("sweep-1.log");
    let mut child =
        sweep_cmd().stdout(Stdio::null()).stderr(std::fs::File::create(&sweep_log).unwrap()).spawn().unwrap();
    let state = |r: &str| run_status(&sweep, r).and_then(|s| s["state"].as_str().map(String::from));
    let epoch = |r: &str| run_status(&sweep, r).and_then(|s| s["epoch"].as_u64()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mid = loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for two runs mid-way:\n{}",
            std::fs::read_to_string(&sweep_log).unwrap_or_default()
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the sweep ended ({status}) before it could be killed mid-way:\n{}",
                std::fs::read_to_string(&sweep_log).unwrap_or_default()
            );
        }
        let done = search.iter().filter(|r| state(r).as_deref() == Some("finished")).count();
        let mid: Vec<&String> = search
            .iter()
            .filter(|r| state(r).as_deref() == Some("running") && (1..=DEMO_EPOCHS / 2).contains(&epoch(r)))
            .collect();
        if done >= 2 && mid.len() == 2 {
            break mid;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let pids: Vec<(String, i32)> =
        mid.iter().map(|r| (r.to_string(), run_record(&sweep, r)["pid"].as_i64().unwrap() as i32)).collect();
    child.kill().unwrap();
    child.wait().unwrap();
    // The kernel sends each run SIGINT when the sweep dies (their parent-death signal): each
    // writes a checkpoint and stops. Nothing starts after the kill.
    let names: Vec<&str> = pids.iter().map(|(r, _)| r.as_str()).collect();
    wait_for_runs(
        &sweep,
        &names,
        "the orphaned runs to checkpoint and exit",
        Duration::from_secs(60),
        || pids.iter().all(|(r, pid)| !alive(*pid) && state(r).as_deref() != Some("running")),
    );
    let done_before: Vec<String> =
        search.iter().filter(|r| state(r).as_deref() == Some("finished")).cloned().collect();
    assert!(done_before.len() >= 2, "{done_before:?}");
    let file = |r: &str, f: &str| std::fs::read(sweep.join("runs").join(r).join(f)).unwrap();
    let done_files: BTreeMap<String, (Vec<u8>, Vec<u8>)> = done_before
        .iter()
        .map(|r| (r.clone(), (file(r, "summary.json"), file(r, "metrics.jsonl"))))
        .collect();
    let mut interrupted: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
    for (r, _) in &pids {
        let s = run_status(&sweep, r).unwrap();
        assert_eq!(s["state"], "interrupted", "{r}: {s}");
        let dir = sweep.join("runs").join(r);
        assert!(dir.join("checkpoints/last.safetensors").is_file(), "{r}: a checkpoint");
        let log = std::fs::read_to_string(sweep.join("logs").join(format!("{r}.log"))).unwrap();
        assert!(log.contains("interrupt: finishing the step and writing a checkpoint"), "{r}:\n{log}");
        let epoch = s["epoch"].as_u64().unwrap();
        assert!((1..DEMO_EPOCHS).contains(&epoch), "{r} stopped mid-run: {s}");
        assert_eq!(metric_epochs(&dir), (1..=epoch).collect::<Vec<_>>(), "{r}");
        interrupted.insert(r.clone(), (epoch, lines(&dir.join("metrics.jsonl"))));
    }
    let status = stdout(&run_ok(xtask().arg("sweep").arg("--status").arg(&sweep)));
    for r in &search {
        let label = if done_before.contains(r) {
            "done"
        } else if interrupted.contains_key(r) {
            "interrupted"
        } else {
            "pending"
        };
        assert!(status.contains(&format!("{label:<12} {r}")), "{r} should be {label}:\n{status}");
    }
    assert!(status.contains(&format!("{} final runs are not planned yet", 2 * n)), "{status}");

    // Second attempt: everything finishes; nothing that finished runs again, the interrupted
    // runs continue from their checkpoints, the finals follow.
    run_ok(&mut sweep_cmd());
    let status = stdout(&run_ok(xtask().arg("sweep").arg("--status").arg(&sweep)));
    assert!(status.trim_end().ends_with(&format!("runs: {0} (done {0})", 6 * n)), "{status}");
    for r in &done_before {
        assert_eq!(launches(&sweep, r).len(), 1, "{r} finished before the kill and must not run again");
        assert_eq!(run_record(&sweep, r)["attempts"], 1, "{r}");
        let (s, m) = &done_files[r];
        assert!(file(r, "summary.json") == *s && file(r, "metrics.jsonl") == *m, "{r} was rewritten");
    }
    for (r, (epoch, before)) in &interrupted {
        let rec = run_record(&sweep, r);
        assert_eq!((rec["attempts"].as_u64(), rec["last_action"].as_str()), (Some(2), Some("resume")), "{r}");
        let l = launches(&sweep, r);
        assert!(l.len() == 2 && l[1].contains(" finetune --resume "), "{r}: {l:?}");
        let log = std::fs::read_to_string(sweep.join("logs").join(format!("{r}.log"))).unwrap();
        assert!(log.contains(&format!("(epoch {epoch})")) && log.contains("resuming"), "{r}:\n{log}");
        let dir = sweep.join("runs").join(r);
        // The epochs before the kill are kept as they were written, the rest follow once.
        assert_eq!(metric_epochs(&dir), (1..=DEMO_EPOCHS).collect::<Vec<_>>(), "{r}");
        let after = lines(&dir.join("metrics.jsonl"));
        for (a, b) in after.iter().zip(before) {
            assert!(same_record(&parse(a), &parse(b)), "{r}: an epoch before the kill changed:\n{b}\n{a}");
        }
        let s = summary(&sweep, r);
        let task = r.split('.').nth(1).unwrap();
        assert_eq!(s["epochs"], DEMO_EPOCHS, "{r}");
        assert_eq!(s["steps"], DEMO_EPOCHS * steps_per_epoch(&data, task, "train800"), "{r}");
    }
    for r in search.iter().chain(&finals).filter(|r| !interrupted.contains_key(*r)) {
        assert_eq!(launches(&sweep, r).len(), 1, "{r} ran once");
    }

    // Each final trains the search setting with the best validation accuracy (the first in
    // grid order on a tie) of its task and seed, on train800val200, and reports test.
    let selection = json(&sweep.join("selection.json"));
    for task in &tasks {
        for seed in [0, 1] {
            let fin = format!("final.{task}.mlae.s{seed}");
            let (mut best, mut best_p) = (f64::NEG_INFINITY, "");
            for p in ["0.1", "0.5"] {
                let v = summary(&sweep, &format!("search.{task}.mlae.expert_dropout={p}.s{seed}"))["best_val_acc"]
                    .as_f64()
                    .unwrap();
                if v > best {
                    (best, best_p) = (v, p);
                }
            }
            let cfg: toml::Table = std::fs::read_to_string(sweep.join("runs").join(&fin).join("config.toml"))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                cfg["adapter"]["mlae"]["expert_dropout"].as_float(),
                Some(best_p.parse().unwrap()),
                "{fin}"
            );
            assert_eq!(cfg["data"]["protocol"].as_str(), Some("paper"), "{fin}");
            assert_eq!(cfg["train"]["seed"].as_integer(), Some(seed), "{fin}");
            assert!(cfg["model"].get("checkpoint").is_none(), "random init: {fin}");
            assert_eq!(
                selection[&fin]["selected"],
                format!("search.{task}.mlae.expert_dropout={best_p}.s{seed}")
            );
            assert_eq!(selection[&fin]["value"].as_f64(), Some(best));
            let s = summary(&sweep, &fin);
            assert_eq!(s["protocol"], "paper");
            assert_eq!(s["steps"], DEMO_EPOCHS * steps_per_epoch(&data, task, "train800val200"), "{fin}");
        }
    }

    // A third attempt has nothing to do.
    run_ok(&mut sweep_cmd());
    for r in search.iter().chain(&finals) {
        let n = if interrupted.contains_key(r) { 2 } else { 1 };
        assert_eq!(launches(&sweep, r).len(), n, "{r}: a finished sweep starts no run");
    }

    // The report: per task the mean over seeds of the finals' test accuracy with its
    // spread, and the mean over tasks with the spread of the per-seed means.
    let md = stdout(&run_ok(xtask().args(["report", "--sweep"]).arg(&sweep)));
    let acc = |t: &str, s: u64| {
        100.0 * summary(&sweep, &format!("final.{t}.mlae.s{s}"))["test_acc"].as_f64().unwrap()
    };
    let mut cells = Vec::new();
    let mut task_means = Vec::new();
    for t in &tasks {
        let (m, sd) = mean_std(&[acc(t, 0), acc(t, 1)]);
        cells.push(format!("{m:.2} ± {sd:.2} (n=2)"));
        task_means.push(m);
    }
    let seed_means: Vec<f64> =
        [0, 1].map(|s| tasks.iter().map(|t| acc(t, s)).sum::<f64>() / n as f64).to_vec();
    let (_, sd) = mean_std(&seed_means);
    let mean = task_means.iter().sum::<f64>() / n as f64;
    let all: Vec<serde_json::Value> =
        tasks.iter().flat_map(|t| [0, 1].map(|s| summary(&sweep, &format!("final.{t}.mlae.s{s}")))).collect();
    let backbone: Vec<f64> = all
        .iter()
        .map(|s| (s["trainable_params"].as_f64().unwrap() - s["head_params"].as_f64().unwrap()) / 1e6)
        .collect();
    // Summed in the report's order (rows by task name, then seed), so the rounding is the same.
    let mut by_name = tasks.clone();
    by_name.sort();
    let wall = by_name
        .iter()
        .flat_map(|t| {
            [0, 1].map(|s| summary(&sweep, &format!("final.{t}.mlae.s{s}"))["wall_seconds"].as_f64().unwrap())
        })
        .sum::<f64>()
        / (2 * n) as f64
        / 60.0;
    let row = format!(
        "| mlae | paper (selected on val) | {:.2} | {wall:.1} | {} | {mean:.2} ± {sd:.2} (n=2) |",
        mean_min_max(&backbone).0,
        cells.join(" | ")
    );
    assert!(md.lines().any(|l| l == row), "expected the row\n{row}\nin\n{md}");
    assert!(md.contains(&format!(
        "| method | protocol | params (M) | wall (min/run) | {} | Mean |",
        tasks.join(" | ")
    )));
    // One task's per-class results: the finals' test confusion matrices summed over the two
    // seeds (equal test sets, so the overall accuracy is the mean of the two), and a PNG.
    let out = tmp.path().join("report-confusion");
    let md = stdout(&run_ok(
        xtask().args(["report", "--confusion", "mnist5k", "--out"]).arg(&out).arg("--sweep").arg(&sweep),
    ));
    assert!(md.contains("## Per-class test accuracy on `mnist5k` (summed over seeds)"), "{md}");
    let overall = (acc("mnist5k", 0) + acc("mnist5k", 1)) / 2.0;
    let line = md.lines().find(|l| l.starts_with("| mlae | 2 | ")).unwrap_or_else(|| panic!("{md}"));
    assert!(line.starts_with(&format!("| mlae | 2 | {overall:.1} |")), "{line}");
    assert!(out.join("confusion-mnist5k-mlae.png").is_file());
    for fin in &finals {
        let c = &selection[fin];
        let line = format!(
            "| {fin} | {} | mlae | {} | adapter.mlae.expert_dropout={} | {:.2} | 2 |",
            c["task"].as_str().unwrap(),
            c["seed"],
            c["point"][0][1].as_str().unwrap(),
            100.0 * c["value"].as_f64().unwrap()
        );
        assert!(md.contains(&line), "{line}\n{md}");
    }
    let csv = std::fs::read_to_string(sweep.join("report/report.csv")).unwrap();
    for t in &tasks {
        let (m, lo, hi) = mean_min_max(&[acc(t, 0), acc(t, 1)]);
        let line = format!("ours,mlae,paper (selected on val),{t},task,2,{m:.4},{lo:.4},{hi:.4},");
        assert!(csv.contains(&line), "{line}\n{csv}");
    }
    assert_eq!(&std::fs::read(sweep.join("report/domains.png")).unwrap()[..4], b"\x89PNG");
    // The epoch curve of this one-length sweep: per task, the finals' mean at their length.
    let out = tmp.path().join("curve");
    let md =
        stdout(&run_ok(xtask().args(["report", "--curve", "--out"]).arg(&out).arg("--sweep").arg(&sweep)));
    let epochs = summary(&sweep, "final.mnist5k.mlae.s0")["epochs"].as_u64().unwrap();
    assert!(md.contains(&format!("| method | {epochs} epochs |")), "{md}");
    for t in &tasks {
        let (m, sd) = mean_std(&[acc(t, 0), acc(t, 1)]);
        let section = md.split(&format!("## {t}\n")).nth(1).unwrap_or_else(|| panic!("no {t} in\n{md}"));
        assert!(section.contains(&format!("| mlae | {m:.2} ± {sd:.2} (n=2) |")), "{t}: {md}");
    }
    assert_eq!(&std::fs::read(out.join("curve.png")).unwrap()[..4], b"\x89PNG");
    assert!(std::fs::read_to_string(out.join("curve.csv")).unwrap().starts_with("task,method,epochs,"));
    // The same sweep split by seed into two directories (as when a user runs seed 1 into
    // another `--out`): one report of both has the rows of the whole, and the same directory
    // given twice is refused, as it would count each seed twice.
    let halves: Vec<std::path::PathBuf> = [0u64, 1]
        .map(|seed| {
            let dir = tmp.path().join(format!("seed-{seed}"));
            copy_dir(&sweep, &dir);
            let plan_path = dir.join("plan.json");
            let mut plan = json(&plan_path);
            plan["runs"].as_object_mut().unwrap().retain(|_, r| r["seed"] == seed);
            std::fs::write(&plan_path, serde_json::to_string(&plan).unwrap()).unwrap();
            dir
        })
        .to_vec();
    let joined = tmp.path().join("report-joined");
    let report = |first: &Path, second: &Path| {
        let mut cmd = xtask();
        cmd.args(["report", "--out"]).arg(&joined).arg("--sweep").arg(first).arg("--sweep").arg(second);
        cmd
    };
    let md = stdout(&run_ok(&mut report(&halves[0], &halves[1])));
    assert!(md.lines().any(|l| l == row), "expected the row of the whole\n{row}\nin\n{md}");
    assert!(!md.lines().any(|l| l.starts_with("| mlae (")), "the two halves' rows join: {md}");
    let twice = report(&sweep, &halves[1]).output().unwrap();
    let err = String::from_utf8_lossy(&twice.stderr);
    assert!(!twice.status.success() && err.contains("each seed once"), "{err}");
    // Seed 1 recorded as run with another override is another experiment: its rows keep
    // apart, named with the override.
    let record_path = halves[1].join("sweep.json");
    let mut record = json(&record_path);
    let grid = record["grid"].as_str().unwrap().to_string();
    record["set"] = serde_json::json!(["train.epochs=7"]);
    std::fs::write(&record_path, serde_json::to_string(&record).unwrap()).unwrap();
    let md = stdout(&run_ok(&mut report(&halves[0], &halves[1])));
    let apart = format!("| mlae ({grid}, train.epochs=7) | paper (selected on val) |");
    assert!(md.lines().any(|l| l.starts_with(&apart)), "expected a row starting\n{apart}\nin\n{md}");
    assert!(
        md.starts_with(&format!("# Sweep report: grid `{grid}` + `{grid}, train.epochs=7` on demo")),
        "{md}"
    );
    // Its name holds a comma, so the CSV quotes it and a reader gets the name whole.
    let csv = std::fs::read_to_string(joined.join("report.csv")).unwrap();
    let quoted = format!("ours,\"mlae ({grid}, train.epochs=7)\",paper (selected on val),");
    assert!(csv.contains(&quoted), "expected\n{quoted}\nin\n{csv}");
    eprintln!("demo sweep end to end: {:?}", started.elapsed());
}

#[test]
fn the_vtab_paper_grid_trains_every_task_with_table_10_and_reports_the_domain_means() {
    let started = Instant::now();
    let cli = mlae_cli();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let vtab = mlae_data::manifest::vtab().unwrap();
    for t in &vtab.tasks {
        // The first (up to) 4 classes of each task, 2 / 1 / 1 images each.
        write_vtab_layout_task(&data, &t.folder, t.classes.min(4), [2, 1, 1]);
    }
    let template = tiny_configs(tmp.path(), "vtab");
    // The project's paper grid, on the copied task configs.
    let paper = std::fs::read_to_string(root().join("configs/grids/paper.toml")).unwrap();
    let original = "config = \"configs/{benchmark}/{task}.toml\"";
    assert!(paper.contains(original), "configs/grids/paper.toml changed its config line");
    let grid = tmp.path().join("paper.toml");
    std::fs::write(&grid, paper.replace(original, &format!("config = \"{template}\""))).unwrap();
    let sweep = tmp.path().join("sweep");
    let epochs = 2;
    let cache = tmp.path().join("cache");
    let flags = ["--benchmark", "vtab", "--jobs", "2"];
    run_ok(&mut real_sweep(&cache, &flags, &grid, &sweep, &cli, &data, epochs));
    let mut acc: BTreeMap<String, f64> = BTreeMap::new();
    for (task, p, init) in TABLE_10 {
        let run = format!("{task}.mlae.s0");
        let cfg: toml::Table = std::fs::read_to_string(sweep.join("runs").join(&run).join("config.toml"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(cfg["adapter"]["mlae"]["expert_dropout"].as_float(), Some(p), "{run}: Table 10's p");
        assert_eq!(cfg["adapter"]["mlae"]["coeff_init"].as_float(), Some(init), "{run}: Table 10's init");
        assert_eq!(cfg["data"]["protocol"].as_str(), Some("paper"));
        assert_eq!(cfg["train"]["epochs"].as_integer(), Some(epochs as i64));
        let s = summary(&sweep, &run);
        assert_eq!(s["task"], task);
        assert_eq!(s["steps"], epochs * steps_per_epoch(&data, task, "train800val200"), "{run}");
        acc.insert(task.to_string(), 100.0 * s["test_acc"].as_f64().unwrap());
    }

    // Table 1's layout: tasks in the manifest's (the paper's) order, then the mean of each
    // domain, then the average as the paper takes it: the mean of the three domain means.
    let md = stdout(&run_ok(xtask().args(["report", "--sweep"]).arg(&sweep)));
    let cells: Vec<String> = vtab.tasks.iter().map(|t| format!("{:.1}", acc[&t.name])).collect();
    let mut domain_means = Vec::new();
    for d in [mlae_data::Domain::Natural, mlae_data::Domain::Specialized, mlae_data::Domain::Structured] {
        let v: Vec<f64> = vtab.tasks.iter().filter(|t| t.domain == d).map(|t| acc[&t.name]).collect();
        domain_means.push(v.iter().sum::<f64>() / v.len() as f64);
    }
    let average = domain_means.iter().sum::<f64>() / 3.0;
    let tail = format!(
        "| {} | {:.1} | {:.1} | {:.1} | {average:.1} |",
        cells.join(" | "),
        domain_means[0],
        domain_means[1],
        domain_means[2]
    );
    let row = md.lines().find(|l| l.starts_with("| mlae | paper |")).unwrap_or_else(|| panic!("{md}"));
    assert!(row.ends_with(&tail), "{row}\nexpected to end with\n{tail}");
    assert!(md.contains("| Natural | Specialized | Structured | Average |"), "{md}");
    let csv = std::fs::read_to_string(sweep.join("report/report.csv")).unwrap();
    assert!(csv.contains(&format!("ours,mlae,paper,average,average,,{average:.4},")), "{csv}");
    assert!(csv.contains(&format!("ours,mlae,paper,Structured,group,,{:.4},", domain_means[2])), "{csv}");
    eprintln!("VTAB-1k paper grid end to end: {:?}", started.elapsed());
}

/// A metrics record without its timings (throughput, seconds and memory differ run to run).
fn without_timings(line: &str) -> serde_json::Value {
    let mut v = parse(line);
    for k in ["images_per_s", "seconds", "peak_mem_mb"] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

#[test]
fn halving_pauses_at_rungs_keeps_the_best_third_on_val_and_its_survivor_is_the_full_grids_run() {
    let cli = mlae_cli();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_demo_tasks(&data, [2, 1, 1]);
    let template = tiny_configs(tmp.path(), "demo");
    // 3 settings, 6 epochs: one rung at epoch 2 keeping 1 of 3, then the survivor to epoch 6.
    let grid = grid_file(
        tmp.path(),
        "halving-small",
        &template,
        "protocol = \"val\"\nseeds = [0]\n[axes]\n\"adapter.mlae.expert_dropout\" = [0.1, 0.3, 0.5]\n\
         [select]\nmetric = \"best_val_acc\"\nfinal_protocol = \"paper\"\n",
    );
    let cache = tmp.path().join("cache");
    let (halved, full) = (tmp.path().join("halving"), tmp.path().join("full"));
    let sweep = |dir: &Path, extra: &[&str]| {
        let mut flags = vec!["--benchmark", "demo", "--tasks", "mnist5k"];
        flags.extend(extra);
        real_sweep(&cache, &flags, &grid, dir, &cli, &data, 6)
    };
    let runs: Vec<String> =
        ["0.1", "0.3", "0.5"].iter().map(|p| format!("search.mnist5k.mlae.expert_dropout={p}.s0")).collect();

    let dry = stdout(&run_ok(&mut sweep(&halved, &["--search", "halving", "--dry-run"])));
    assert!(dry.contains("rungs at epochs [2, 6], settings per rung 3 -> 1"), "{dry}");
    assert_eq!(dry.matches("due: train to epoch 2").count(), 3, "{dry}");
    run_ok(&mut sweep(&halved, &["--search", "halving"]));

    // Every setting paused at epoch 2 with its val200 score; the best went on to the end.
    let rung_acc = |run: &str| -> f64 {
        let rungs = lines(&halved.join("runs").join(run).join("rungs.jsonl"));
        assert_eq!(rungs.len(), 1, "{run}: {rungs:?}");
        let r = parse(&rungs[0]);
        assert_eq!((r["epoch"].as_u64(), r["split"].as_str()), (Some(2), Some("val200")));
        r["acc"].as_f64().unwrap()
    };
    let scores: Vec<f64> = runs.iter().map(|r| rung_acc(r)).collect();
    let best = (0..3).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
    for (i, r) in runs.iter().enumerate() {
        let status = run_status(&halved, r).unwrap();
        let expected = if i == best { ("finished", 6) } else { ("paused", 2) };
        assert_eq!((status["state"].as_str().unwrap(), status["epoch"].as_u64().unwrap()), expected, "{r}");
    }
    let record = json(&halved.join("halving.json"));
    let group = &record["search.mnist5k.mlae.s0"];
    assert_eq!(group["rungs"], serde_json::json!([2, 6]));
    assert_eq!(group["decided"][0]["kept"], serde_json::json!([runs[best]]));
    assert_eq!(group["decided"][1]["metric"], "best_val_acc");
    assert_eq!(
        (group["epochs_trained"].as_u64(), group["full_grid_epochs"].as_u64()),
        (Some(3 * 2 + 4), Some(18))
    );
    let selection = json(&halved.join("selection.json"));
    assert_eq!(selection["final.mnist5k.mlae.s0"]["selected"], runs[best].as_str());
    assert_eq!(run_state(&halved, "final.mnist5k.mlae.s0").as_deref(), Some("finished"));
    let status = stdout(&run_ok(xtask_real(&cache).arg("sweep").arg("--status").arg(&halved)));
    assert_eq!(status.lines().filter(|l| l.starts_with("paused ")).count(), 2, "{status}");

    // Again: nothing is due and nothing runs.
    run_ok(&mut sweep(&halved, &["--search", "halving"]));
    for r in &runs {
        assert_eq!(launches(&halved, r).len(), if *r == runs[best] { 2 } else { 1 }, "{r}");
    }

    // The full grid trains the same runs without pauses: the survivor is that very run, and each
    // rung score is the val200 accuracy the unpaused run has at epoch 2.
    run_ok(&mut sweep(&full, &[]));
    let metrics = |dir: &Path, run: &str| -> Vec<serde_json::Value> {
        lines(&dir.join("runs").join(run).join("metrics.jsonl")).iter().map(|l| without_timings(l)).collect()
    };
    assert_eq!(metrics(&halved, &runs[best]), metrics(&full, &runs[best]));
    let (a, b) = (summary(&halved, &runs[best]), summary(&full, &runs[best]));
    for k in ["test_acc", "best_val_acc", "selected_epoch", "steps"] {
        assert_eq!(a[k], b[k], "{k}");
    }
    for (r, s) in runs.iter().zip(&scores) {
        assert_eq!(metrics(&full, r)[1]["eval"]["val200"]["acc"].as_f64(), Some(*s), "{r}");
    }
    assert_eq!(
        summary(&halved, "final.mnist5k.mlae.s0")["test_acc"],
        summary(&full, "final.mnist5k.mlae.s0")["test_acc"]
    );
}

/// Copies a directory tree (a sweep directory, to split it in a test).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
