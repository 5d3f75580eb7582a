//! `data check` on generated trees: every kind of problem is found and reported.

mod common;

use common::*;
use mlae_data::{Benchmark, CheckOptions, Problem, check};

const FULL: CheckOptions = CheckOptions { decode: true };

#[test]
fn a_clean_list_tree_passes() {
    let tmp = tempfile::tempdir().unwrap();
    vtab_task(tmp.path(), "mine", 3, 1, 2, 3);
    let report = check(Benchmark::List, tmp.path(), None, &FULL).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.tasks.len(), 1);
    let t = &report.tasks[0];
    assert_eq!(t.classes, 3);
    let entries: Vec<(&str, usize)> = t.splits.iter().map(|s| (s.split.as_str(), s.entries)).collect();
    assert_eq!(entries, [("test", 2), ("train800", 3), ("train800val200", 4), ("val200", 1)]);
    let text = report.to_string();
    assert!(text.contains("ok   mine (3 classes)") && text.ends_with("all 1 task(s) ok"), "{text}");
}

#[test]
fn every_kind_of_problem_is_found_on_a_vtab_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = vtab_task(tmp.path(), "dtd", 4, 2, 5, 47);
    // train800: a line without a label, a label >= 47.
    let train = std::fs::read_to_string(dir.join("train800.txt")).unwrap();
    let mut lines: Vec<String> = train.lines().map(String::from).collect();
    lines[1] = lines[1].rsplit_once(' ').unwrap().0.to_string();
    lines[2] = format!("{} 47", lines[2].rsplit_once(' ').unwrap().0);
    write_text(&dir.join("train800.txt"), &(lines.join("\n") + "\n"));
    // val200: the list file is gone.
    std::fs::remove_file(dir.join("val200.txt")).unwrap();
    // test: one image truncated, one missing, one not an image.
    let test = std::fs::read_to_string(dir.join("test.txt")).unwrap();
    let paths: Vec<String> = test.lines().map(|l| l.rsplit_once(' ').unwrap().0.to_string()).collect();
    truncate(&dir.join(&paths[0]), 0.5);
    std::fs::remove_file(dir.join(&paths[2])).unwrap();
    write_text(&dir.join(&paths[4]), "<html>not found</html>");

    let report = check(Benchmark::Vtab, tmp.path(), Some("dtd"), &FULL).unwrap();
    assert!(!report.is_ok());
    let t = &report.tasks[0];
    assert_eq!((t.task.as_str(), t.classes), ("dtd", 47));
    let split = |name: &str| t.splits.iter().find(|s| s.split == name).unwrap();

    let train = split("train800");
    assert_eq!((train.entries, train.expected), (4, Some(800)));
    let kinds: Vec<&str> = train.problems.iter().map(Problem::kind).collect();
    assert_eq!(kinds, ["bad entry", "out of range", "wrong size"], "{report}");
    assert!(matches!(&train.problems[0], Problem::BadEntry { at, .. } if at.line == 2));
    assert!(
        matches!(&train.problems[1], Problem::LabelOutOfRange { at, label: 47, classes: 47 } if at.line == 3)
    );

    let val = split("val200");
    assert!(
        matches!(&val.problems[..], [Problem::MissingSplitFile { file }] if file.ends_with("dtd/val200.txt"))
    );

    let test = split("test");
    assert_eq!(test.expected, None, "test sizes are not fixed by the manifest");
    let found: Vec<(&str, usize)> = test
        .problems
        .iter()
        .map(|p| match p {
            Problem::UnreadableImage { at, .. } | Problem::MissingImage { at, .. } => (p.kind(), at.line),
            other => panic!("unexpected {other}"),
        })
        .collect();
    assert_eq!(found, [("unreadable", 1), ("missing", 3), ("unreadable", 5)]);

    let text = report.to_string();
    for needle in [
        "FAIL dtd (47 classes)",
        "train800 4/800",
        "dtd/train800.txt:2",
        "[out of range]",
        "[wrong size]",
        "missing split file",
        "truncated JPEG",
        "dtd/test.txt:3: missing image",
        "1 of 1 task(s) have problems",
    ] {
        assert!(text.contains(needle), "`{needle}` not in:\n{text}");
    }
    assert_eq!(report.problem_count(), 1 + 3 + 1 + 3);
}

#[test]
fn a_quick_check_reads_headers_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = vtab_task(tmp.path(), "mine", 2, 1, 2, 2);
    let test = std::fs::read_to_string(dir.join("test.txt")).unwrap();
    let first = test.lines().next().unwrap().rsplit_once(' ').unwrap().0.to_string();
    truncate(&dir.join(&first), 0.5);
    let quick = check(Benchmark::List, tmp.path(), Some("mine"), &CheckOptions { decode: false }).unwrap();
    assert!(quick.is_ok(), "a cut JPEG still has a readable header:\n{quick}");
    let full = check(Benchmark::List, tmp.path(), Some("mine"), &FULL).unwrap();
    assert_eq!(full.problem_count(), 1, "{full}");
}

#[test]
fn missing_task_folders_and_empty_splits_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = vtab_task(tmp.path(), "eurosat", 2, 1, 1, 10);
    write_text(&dir.join("test.txt"), "");
    let report = check(Benchmark::Vtab, tmp.path(), None, &FULL).unwrap();
    assert_eq!(report.tasks.len(), 19);
    let missing =
        report.tasks.iter().filter(|t| matches!(&t.problems[..], [Problem::MissingTaskDir { .. }])).count();
    assert_eq!(missing, 18);
    let eurosat = report.tasks.iter().find(|t| t.task == "eurosat").unwrap();
    let test = eurosat.splits.iter().find(|s| s.split == "test").unwrap();
    assert!(matches!(&test.problems[..], [Problem::EmptySplit { .. }]), "{report}");
    let err = check(Benchmark::Vtab, tmp.path(), Some("imagenet"), &FULL).unwrap_err().to_string();
    assert!(err.contains("no task `imagenet`"), "{err}");
    let vtab = report.tasks.iter().find(|t| t.task != "eurosat").unwrap().problems[0].to_string();
    assert!(!vtab.contains("fetch-demo"), "a VTAB folder is the user's download: {vtab}");
    let demo = check(Benchmark::Demo, tmp.path(), Some("count"), &FULL).unwrap();
    let hint = demo.tasks[0].problems[0].to_string();
    assert!(
        hint.contains("missing task folder") && hint.contains("`cargo xtask fetch-demo` builds it"),
        "{hint}"
    );
}

#[test]
fn fgvc_problems_are_reported_per_split() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fgvc_dataset(tmp.path(), "CUB_200_2011", "images", &[1, 2, 3], 3);
    write_text(&dir.join("val.json"), "{\"a.jpg\": 1");
    std::fs::remove_file(dir.join("test.json")).unwrap();
    let report = check(Benchmark::Fgvc, tmp.path(), Some("cub"), &FULL).unwrap();
    let t = &report.tasks[0];
    assert!(t.problems.is_empty(), "{report}");
    let kinds: Vec<Vec<&str>> =
        t.splits.iter().map(|s| s.problems.iter().map(Problem::kind).collect()).collect();
    assert_eq!(kinds, [vec![], vec!["unreadable"], vec!["missing"]], "{report}");
    assert_eq!(t.splits[0].entries, 3);
}

#[test]
fn a_list_task_that_cannot_be_opened_is_one_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_png_grey(&dir.join("a.png"), 3, 3, 0);
    write_text(&dir.join("train.txt"), "a.png 0\n");
    write_text(&dir.join("classes.txt"), "only-one\n");
    let report = check(Benchmark::List, tmp.path(), Some("tiny"), &FULL).unwrap();
    let t = &report.tasks[0];
    assert!(
        matches!(&t.problems[..], [Problem::Other { message }] if message.contains("at least 2")),
        "{report}"
    );
}
