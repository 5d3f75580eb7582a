//! The report's tables on chosen numbers whose means are easy to check by hand, and the
//! published rows against their printed averages.

use crate::flat::flat_tables;
use crate::published::load_published;
use crate::results::{RunResult, Table, group_means, mean};
use crate::vtab::vtab_tables;
use mlae_data::{Benchmark, TaskGroup};
use mlae_sweep::grid::Stage;
use std::path::{Path, PathBuf};

fn published_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/published/mlae-paper.toml")
}

pub(crate) fn r(task: &str, row: &str, seed: u64, acc: f64) -> RunResult {
    RunResult {
        task: task.into(),
        row: row.into(),
        seed,
        protocol: "paper".into(),
        stage: Stage::Run,
        acc,
        best_test_acc: None,
        val_acc: None,
        backbone_params: Some(3e5),
        wall_seconds: Some(60.0),
        epochs: 10,
        run: format!("{task}.{row}.s{seed}"),
    }
}

fn small() -> Vec<TaskGroup> {
    let group = |name: &str, tasks: &[&str]| TaskGroup {
        name: name.into(),
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
    };
    vec![group("Natural", &["a", "b"]), group("Specialized", &["c"]), group("Structured", &["d", "e", "f"])]
}

#[test]
fn the_vtab_average_is_the_mean_of_group_means() {
    let results: Vec<RunResult> =
        [("a", 80.0), ("b", 90.0), ("c", 70.0), ("d", 60.0), ("e", 30.0), ("f", 30.0)]
            .into_iter()
            .map(|(t, a)| r(t, "mlae", 0, a))
            .collect();
    let t = Table::new(&results);
    let (gm, avg) = group_means(|task| t.cell("mlae", task), &small());
    assert_eq!(gm, vec![Some(85.0), Some(70.0), Some(40.0)]);
    // (85 + 70 + 40) / 3 = 65, where the plain mean over the six tasks would be 60.
    assert!((avg.unwrap() - 65.0).abs() < 1e-12);
}

#[test]
fn seeds_average_with_their_spread_and_partial_groups_stay_empty() {
    let results = vec![r("a", "mlae", 0, 89.0), r("a", "mlae", 1, 90.0), r("a", "mlae", 42, 91.5)];
    let t = Table::new(&results);
    assert!((t.cell("mlae", "a").unwrap() - 90.166_666_666_666_67).abs() < 1e-9);
    assert_eq!(t.spread("mlae", "a"), Some((89.0, 91.5, 3)));
    let (gm, avg) = group_means(|task| t.cell("mlae", task), &small());
    assert_eq!(gm, vec![None, None, None], "a group with a missing task has no mean");
    assert_eq!(avg, None);
}

/// Chosen accuracies whose means are easy to check by hand, through the report's tables.
#[test]
fn the_tables_print_vtab_group_means_and_fgvc_seed_spreads() {
    let published = load_published(&published_path()).unwrap();
    let run = |task: &str, seed: u64, acc: f64| RunResult {
        backbone_params: Some(295_008.0),
        ..r(task, "mlae", seed, acc)
    };
    // VTAB-1k: Natural 490 / 7 = 70.0, Specialized 300 / 4 = 75.0, Structured 360 / 8 = 45.0.
    let vtab_acc = [
        ("cifar", 70.0),
        ("caltech101", 80.0),
        ("dtd", 90.0),
        ("oxford_flowers102", 60.0),
        ("oxford_iiit_pet", 50.0),
        ("svhn", 40.0),
        ("sun397", 100.0),
        ("patch_camelyon", 80.0),
        ("eurosat", 90.0),
        ("resisc45", 70.0),
        ("diabetic_retinopathy", 60.0),
        ("clevr_count", 10.0),
        ("clevr_dist", 20.0),
        ("dmlab", 30.0),
        ("kitti", 40.0),
        ("dsprites_loc", 50.0),
        ("dsprites_ori", 60.0),
        ("smallnorb_azi", 70.0),
        ("smallnorb_ele", 80.0),
    ];
    let vtab = Benchmark::Vtab.task_groups().unwrap();
    let table = Table::new(&vtab_acc.iter().map(|(t, a)| run(t, 0, *a)).collect::<Vec<_>>());
    let (mut md, mut csv) = (String::new(), String::new());
    vtab_tables(&table, &vtab, Some(&published.vtab), &mut md, &mut csv);
    let row = md.lines().find(|l| l.starts_with("| mlae |")).unwrap();
    // The average is the mean of the group means, 63.3 (the mean over the 19 tasks: 60.5).
    assert!(row.ends_with("| 70.0 | 75.0 | 45.0 | 63.3 |"), "{row}");
    assert!(row.starts_with("| mlae | paper | 0.30 | 1.0 | 70.0 | 80.0 |"), "{row}");
    assert!(md.contains("| MLAE **(published)** | paper (published) | 0.30 | - | 77.8 |"), "{md}");
    assert!(md.contains("| 84.0 | 87.5 | 64.8 | 78.8 |"), "published MLAE group means and average: {md}");
    assert!(
        md.contains("| LoRA **(published)** |") && md.contains("74.6\\*"),
        "a computed average is marked"
    );
    assert!(csv.contains("ours,mlae,paper,average,average,,63.3333,"), "{csv}");
    assert!(csv.contains("ours,mlae,paper,Structured,group,,45.0000,"), "{csv}");
    assert!(csv.contains("ours,mlae,paper,sun397,task,1,100.0000,100.0000,100.0000,"), "{csv}");
    assert!(csv.contains("published,MLAE,paper,average,average,,78.8000,"), "{csv}");

    // FGVC over seeds 0, 1, 42. Per dataset: cub 82, nabirds 71, flowers 98, dogs 90,
    // cars 85 -> mean 426 / 5 = 85.20; seed means 424 / 5 = 84.80, 426 / 5 = 85.20,
    // 428 / 5 = 85.60.
    let fgvc_acc = [
        ("cub", [80.0, 82.0, 84.0]),
        ("nabirds", [70.0, 70.0, 73.0]),
        ("oxford_flowers", [99.0, 98.0, 97.0]),
        ("stanford_dogs", [90.0, 91.0, 89.0]),
        ("stanford_cars", [85.0, 85.0, 85.0]),
    ];
    let results: Vec<RunResult> = fgvc_acc
        .iter()
        .flat_map(|(t, accs)| [0, 1, 42].into_iter().zip(accs).map(|(s, a)| run(t, s, *a)))
        .collect();
    let fgvc = Benchmark::Fgvc.task_groups().unwrap();
    let (mut md, mut csv) = (String::new(), String::new());
    flat_tables(&Table::new(&results), ("fgvc", &fgvc), Some(&published.fgvc), &mut md, &mut csv);
    let row = md.lines().find(|l| l.starts_with("| mlae |")).unwrap();
    assert!(
        row.contains("| 82.00 ± 2.00 (n=3) | 71.00 ± 1.73 (n=3) | 98.00 ± 1.00 (n=3) |"),
        "mean ± sample std over seeds: {row}"
    );
    assert!(row.ends_with("| 85.20 ± 0.40 (n=3) |"), "the std of the per-seed means: {row}");
    assert!(!md.contains("val200 accuracy"), "no val table without val runs: {md}");
    assert!(md.contains(
        "| MLAE **(published)** | paper (published) | 0.29 | - | 89.6 (89.6-89.6, n=3) | 85.0 (84.5-85.3, n=3)"
    ));
    assert!(md.contains("| 90.86 (90.78-90.94, n=3) |"), "{md}");
    assert!(csv.contains("ours,mlae,paper,cub,task,3,82.0000,80.0000,84.0000,"), "{csv}");
}

#[test]
fn published_task_names_must_be_the_manifests() {
    let real = published_path();
    let text = std::fs::read_to_string(&real).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("published.toml");
    std::fs::write(&bad, text.replacen("\"smallnorb_ele\"]", "\"smallnorb_elevation\"]", 1)).unwrap();
    let err = load_published(&bad).unwrap_err().to_string();
    assert!(err.contains("vtab.tasks") && err.contains("published.toml"), "{err}");
}

#[test]
fn the_published_rows_match_their_printed_averages() {
    let p = load_published(&published_path()).unwrap();
    // The published file lists the tasks in the paper's column order (Tables 1 and 11);
    // the manifests must list them in the same order, which is the report's.
    let vtab = Benchmark::Vtab.task_groups().unwrap();
    assert_eq!(p.vtab.tasks, Benchmark::Vtab.task_names().unwrap());
    assert_eq!(p.fgvc.tasks, Benchmark::Fgvc.task_names().unwrap());
    let methods =
        |b: &crate::published::PublishedBench| b.rows.iter().map(|r| r.method.clone()).collect::<Vec<_>>();
    // Every method row of Table 1 (VTAB-1k) and Table 2 (FGVC), in the paper's order; FGVC also
    // keeps Table 11's linear probing.
    assert_eq!(
        methods(&p.vtab),
        [
            "Full fine-tuning",
            "Linear probing",
            "VPT-Deep",
            "Adapter",
            "AdaptFormer",
            "LoRA",
            "NOAH",
            "FacT",
            "SSF",
            "RepAdapter",
            "SPT-LoRA",
            "GLoRA (0.29M)",
            "GLoRA (0.86M)",
            "MLAE"
        ]
    );
    assert_eq!(
        methods(&p.fgvc),
        ["Full fine-tuning", "Linear probing", "Adapter", "LoRA-8", "SSF", "VPT-Deep", "SPT-LoRA", "MLAE"]
    );
    for row in &p.vtab.rows {
        let by = row.by_task(&p.vtab.tasks);
        assert_eq!(row.acc.len(), p.vtab.tasks.len(), "{}", row.method);
        let printed = row.average;
        if by.len() == p.vtab.tasks.len() {
            let (_, avg) = group_means(|t| by.get(t).copied(), &vtab);
            let avg = avg.unwrap();
            // The paper's averages are the mean of group means rounded to the nearest 0.1,
            // except four (see the file's header) that sit within 0.1 of it.
            let off = ["Full fine-tuning", "Linear probing", "GLoRA (0.29M)", "GLoRA (0.86M)"];
            let tolerance = if off.contains(&row.method.as_str()) { 0.1 } else { 0.05 + 1e-9 };
            if let Some(printed) = printed {
                assert!((avg - printed).abs() < tolerance, "{}: {avg} vs {printed}", row.method);
            }
        } else {
            // Cells left out as illegible: the printed average must be reachable with the
            // missing cells anywhere in [0, 100].
            assert!(row.note.is_some(), "{}: left-out cells need a note", row.method);
            let bound =
                |fill: f64| group_means(|t| Some(by.get(t).copied().unwrap_or(fill)), &vtab).1.unwrap();
            let printed = printed.expect("a row with left-out cells keeps its printed average");
            assert!(
                bound(0.0) - 0.1 < printed && printed < bound(100.0) + 0.1,
                "{}: {printed} outside [{}, {}]",
                row.method,
                bound(0.0),
                bound(100.0)
            );
        }
    }
    for row in p.fgvc.rows.iter().filter(|r| !r.acc.is_empty()) {
        let m = mean(&row.acc).unwrap();
        assert!((m - row.mean.unwrap()).abs() < 0.02, "{}: {m}", row.method);
        for (s, printed) in row.per_seed.iter().zip(&row.seed_means) {
            assert!((mean(s).unwrap() - printed).abs() < 0.005, "{}: {s:?}", row.method);
        }
    }
}

/// A cell left out as illegible (`nan`) prints as "-", leaves its group without a mean, and
/// keeps the printed average; a left-out cell without a note is refused.
#[test]
fn left_out_published_cells_print_as_missing() {
    let published = load_published(&published_path()).unwrap();
    let vtab = Benchmark::Vtab.task_groups().unwrap();
    let (mut md, mut csv) = (String::new(), String::new());
    vtab_tables(&Table::new(&[]), &vtab, Some(&published.vtab), &mut md, &mut csv);
    let row = md.lines().find(|l| l.starts_with("| AdaptFormer **(published)** |")).unwrap();
    assert!(
        row.starts_with("| AdaptFormer **(published)** | paper (published) | 0.16 | - | - | 91.2 |"),
        "{row}"
    );
    // Natural has two left-out cells; Specialized 339.5 / 4 = 84.875, Structured 470.6 / 8 = 58.825.
    assert!(row.ends_with("| 41.1 | - | 84.9 | 58.8 | 74.7 |"), "{row}");
    assert!(!md.contains("NaN") && !csv.contains("NaN"), "{md}");
    assert!(csv.contains("published,AdaptFormer,paper,cifar,task,,,"), "{csv}");
    assert!(md.contains("\\* AdaptFormer: In our text copy"), "the note is a footnote: {md}");

    let text = std::fs::read_to_string(published_path()).unwrap();
    let start = text.find("method = \"AdaptFormer\"").unwrap();
    let note = start + text[start..].find("note = ").unwrap();
    let end = note + text[note..].find("\n\n").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("published.toml");
    std::fs::write(&bad, format!("{}{}", &text[..note], &text[end..])).unwrap();
    let err = load_published(&bad).unwrap_err().to_string();
    assert!(err.contains("AdaptFormer") && err.contains("note"), "{err}");
}

/// Runs that selected on val200 get a second table with their val accuracy.
#[test]
fn val_runs_show_their_val_accuracy_beside_test() {
    let groups = vec![TaskGroup { name: "demo".into(), tasks: vec!["a".into(), "b".into()] }];
    let run = |task: &str, row: &str, seed: u64, acc: f64, val: Option<f64>| RunResult {
        protocol: if val.is_some() { "val" } else { "paper" }.into(),
        val_acc: val,
        ..r(task, row, seed, acc)
    };
    let results = vec![
        run("a", "p=0.5", 0, 90.0, Some(92.0)),
        run("a", "p=0.5", 1, 92.0, Some(96.0)),
        run("b", "p=0.5", 0, 80.0, Some(84.0)),
        run("b", "p=0.5", 1, 80.0, Some(86.0)),
        run("a", "test-only", 0, 50.0, None),
        run("b", "test-only", 0, 60.0, None),
    ];
    let (mut md, mut csv) = (String::new(), String::new());
    flat_tables(&Table::new(&results), ("demo", &groups), None, &mut md, &mut csv);
    let test_row = md.lines().find(|l| l.starts_with("| p=0.5 | val |")).unwrap();
    // seed means on test: (90 + 80) / 2 = 85, (92 + 80) / 2 = 86
    assert!(
        test_row.ends_with("| 91.00 ± 1.41 (n=2) | 80.00 ± 0.00 (n=2) | 85.50 ± 0.71 (n=2) |"),
        "{test_row}"
    );
    let (_, val) = md.split_once("val200 accuracy of the same runs").expect("a val table");
    let val_row = val.lines().find(|l| l.starts_with("| p=0.5 |")).unwrap();
    // seed means on val: (92 + 84) / 2 = 88, (96 + 86) / 2 = 91
    assert_eq!(val_row, "| p=0.5 | 94.00 ± 2.83 (n=2) | 85.00 ± 1.41 (n=2) | 89.50 ± 2.12 (n=2) |");
    assert!(!val.contains("test-only"), "paper-protocol rows have no val accuracy: {val}");
}

#[test]
fn a_second_sweeps_rows_keep_apart_from_the_firsts_of_the_same_name() {
    let mut results = vec![r("a", "mlae", 0, 90.0), r("a", "lora", 0, 91.0)];
    let finals = vec![r("a", "mlae", 0, 94.0), r("a", "dora", 0, 92.0)];
    crate::build::merge_rows(&mut results, finals, "demo-search");
    let t = Table::new(&results);
    assert_eq!(t.cell("mlae", "a"), Some(90.0), "the first grid's mlae is not averaged with the other's");
    assert_eq!(t.cell("mlae (demo-search)", "a"), Some(94.0));
    assert_eq!(t.cell("dora", "a"), Some(92.0), "a name only one grid has stays as it is");
    assert_eq!(t.cell("lora", "a"), Some(91.0));
}

fn record(set: &[&str]) -> mlae_sweep::SweepRecord {
    mlae_sweep::SweepRecord {
        grid: "demo-epochs".into(),
        grid_path: "configs/grids/demo-epochs.toml".into(),
        benchmark: "demo".into(),
        set: set.iter().map(|s| s.to_string()).collect(),
        data_root: None,
        checkpoint: None,
    }
}

#[test]
fn directories_of_one_grid_and_overrides_are_one_experiment() {
    use crate::build::Experiment;
    let a = Experiment::of("demo-epochs", &record(&["train.epochs=30", "train.lr=1e-3"]));
    let b = Experiment::of("demo-epochs", &record(&["train.lr=1e-3", "train.epochs=30"]));
    assert_eq!(a, b, "the order of the overrides does not matter");
    let c = Experiment::of("demo-epochs", &record(&["train.epochs=100"]));
    assert_ne!(a, c, "another training length is another experiment");
    assert_eq!(c.name(), "demo-epochs, train.epochs=100");
    assert_ne!(
        Experiment::of("demo-epochs, halving", &record(&[])),
        Experiment::of("demo-epochs", &record(&[]))
    );
    assert_eq!(Experiment::of("demo-epochs", &record(&[])).name(), "demo-epochs");
}

#[test]
fn seeds_from_two_directories_of_one_experiment_join_and_a_repeated_seed_is_refused() {
    let dir = mlae_sweep::SweepDir { root: "runs/sweeps/seed-1".into() };
    let mut results = vec![r("a", "lora", 0, 90.0)];
    crate::build::join_rows(&mut results, vec![r("a", "lora", 1, 92.0), r("b", "lora", 0, 80.0)], &dir)
        .unwrap();
    let t = Table::new(&results);
    assert_eq!(t.cell("lora", "a"), Some(91.0), "the two seeds average in one row");
    assert_eq!(t.cell("lora", "b"), Some(80.0));
    let err =
        crate::build::join_rows(&mut results, vec![r("c", "lora", 0, 70.0), r("a", "lora", 1, 93.0)], &dir)
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("runs/sweeps/seed-1") && err.contains("a.lora.s1") && err.contains("each seed once"),
        "{err}"
    );
    assert_eq!(results.len(), 3, "nothing of the refused directory was added");
}

#[test]
fn the_demos_opt_in_tasks_are_columns_only_where_a_sweep_ran_them() {
    let names = |groups: Vec<TaskGroup>| -> Vec<(String, Vec<String>)> {
        groups.into_iter().map(|g| (g.name, g.tasks)).collect()
    };
    let image = ["mnist5k", "digits", "fashion_mnist"].map(String::from).to_vec();
    let default = vec![r("mnist5k", "mlae", 0, 90.0)];
    let got = names(crate::build::report_groups(Benchmark::Demo, &default).unwrap());
    assert_eq!(got, [("Image tasks".to_string(), image.clone())]);
    let with_count = vec![r("mnist5k", "mlae", 0, 90.0), r("count", "mlae", 0, 50.0)];
    let got = names(crate::build::report_groups(Benchmark::Demo, &with_count).unwrap());
    assert_eq!(got, [("Image tasks".to_string(), image), ("Structured tasks".into(), vec!["count".into()])]);
    let vtab = crate::build::report_groups(Benchmark::Vtab, &[]).unwrap();
    assert_eq!(vtab, Benchmark::Vtab.task_groups().unwrap(), "VTAB-1k has no opt-in tasks");
}

/// Tasks in several groups (the demo's image and structured tasks): each group's mean after
/// its tasks, and the Mean as the mean of the group means with its spread over seeds.
#[test]
fn grouped_flat_tables_show_group_means_and_their_mean() {
    let group = |name: &str, tasks: &[&str]| TaskGroup {
        name: name.into(),
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
    };
    let groups = vec![group("Image tasks", &["a", "b"]), group("Structured tasks", &["c"])];
    // seed 0: image (90 + 80) / 2 = 85, structured 50 -> 67.5; seed 1: image (92 + 82) / 2 = 87,
    // structured 60 -> 73.5. Group means 86 and 55, Mean 70.5 ± std(67.5, 73.5) = 4.24.
    let results = vec![
        r("a", "lora", 0, 90.0),
        r("b", "lora", 0, 80.0),
        r("c", "lora", 0, 50.0),
        r("a", "lora", 1, 92.0),
        r("b", "lora", 1, 82.0),
        r("c", "lora", 1, 60.0),
        r("a", "part", 0, 70.0),
        r("b", "part", 0, 70.0),
    ];
    let (mut md, mut csv) = (String::new(), String::new());
    flat_tables(&Table::new(&results), ("demo", &groups), None, &mut md, &mut csv);
    assert!(
        md.contains("| a | b | Image tasks (mean) | c | Structured tasks (mean) | Mean |"),
        "group columns after their tasks: {md}"
    );
    let lora = md.lines().find(|l| l.starts_with("| lora |")).unwrap();
    assert!(lora.contains("| 86.00 ± 1.41 (n=2) |"), "image group mean: {lora}");
    assert!(lora.contains("| 55.00 ± 7.07 (n=2) |"), "structured group mean: {lora}");
    assert!(lora.ends_with("| 70.50 ± 4.24 (n=2) |"), "mean of the group means: {lora}");
    let part = md.lines().find(|l| l.starts_with("| part |")).unwrap();
    assert!(part.ends_with("| 70.00 | - | - | - |"), "a missing group has no mean, nor has the Mean: {part}");
    assert!(csv.contains("ours,lora,paper,Image tasks,group,,86.0000,,,,,\n"), "{csv}");
    assert!(csv.contains("ours,lora,paper,mean,mean,,70.5000,,,,,\n"), "{csv}");
    assert!(md.contains("mean of the group means"), "the footnote says how the Mean is made");
}

#[test]
fn curve_lines_are_named_by_the_overrides_that_set_their_sweeps_apart() {
    let records = [
        record(&["train.epochs=10", "train.threads=2"]),
        record(&["train.threads=2", "train.epochs = 30"]),
        record(&["train.epochs=10", "train.threads=2", "train.lr=0.002"]),
        record(&["train.lr=0.002", "train.epochs=30", "train.threads=2"]),
    ];
    let names = crate::curve::line_overrides(&records);
    assert_eq!(
        names,
        ["", "", "train.lr=0.002", "train.lr=0.002"],
        "the length and shared ones are not named"
    );
    let one_experiment = crate::curve::line_overrides(&records[..2]);
    assert_eq!(one_experiment, ["", ""], "a curve of one experiment names lines by variant only");
    let mut other = record(&["train.epochs=10"]);
    other.data_root = Some("/data/b".into());
    assert_eq!(crate::curve::line_overrides(&[record(&[]), other]), ["", "data root /data/b"]);
}
