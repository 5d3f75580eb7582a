//! The demo's generated tasks, built as the manifest defines them: exactly balanced splits in
//! the VTAB layout, and byte-identical builds.

use mlae_data::demo::{STAMP_FILE, TaskState, task_state};
use mlae_data::manifest::{self, DemoSource, DemoTask};
use mlae_data::structured::build_task;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn generated_tasks() -> Vec<&'static DemoTask> {
    let m = manifest::demo().unwrap();
    m.tasks.iter().filter(|t| matches!(t.source, DemoSource::Generated(_))).collect()
}

/// (image path, label) of each line of `<dir>/<split>.txt`.
fn list(dir: &Path, split: &str) -> Vec<(String, usize)> {
    std::fs::read_to_string(dir.join(format!("{split}.txt")))
        .unwrap()
        .lines()
        .map(|l| {
            let (path, label) = l.rsplit_once(' ').unwrap();
            (path.to_string(), label.parse().unwrap())
        })
        .collect()
}

/// Every file under `dir`, relative path -> bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn generated_tasks_have_exactly_balanced_vtab_splits_and_pass_the_check() {
    let m = manifest::demo().unwrap();
    let tasks = generated_tasks();
    assert_eq!(tasks.len(), 3);
    let root = tempfile::tempdir().unwrap();
    for task in tasks {
        assert_eq!(task_state(task, &m.splits, root.path()), TaskState::Missing);
        let built = build_task(task, root.path()).unwrap();
        let got: Vec<(&str, usize)> = built.splits.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        assert_eq!(got, [("train800", 800), ("val200", 200), ("train800val200", 1000), ("test", 1000)]);
        // Decodes every image and checks every list against the manifest's sizes and classes.
        assert_eq!(task_state(task, &m.splits, root.path()), TaskState::Current, "{}", task.name);
        let dir = root.path().join(&task.folder);
        for (split, n) in [("train800", 800), ("val200", 200), ("train800val200", 1000), ("test", 1000)] {
            let mut counts = vec![0usize; task.classes];
            list(&dir, split).iter().for_each(|(_, l)| counts[*l] += 1);
            assert!(counts.iter().all(|&c| c == n / task.classes), "{} {split}: {counts:?}", task.name);
        }
        let (train, val) = (list(&dir, "train800"), list(&dir, "val200"));
        let both: BTreeSet<_> = train.iter().chain(&val).cloned().collect();
        assert_eq!(both.len(), 1000, "{}: train800 and val200 are disjoint", task.name);
        assert_eq!(both, list(&dir, "train800val200").into_iter().collect::<BTreeSet<_>>(), "{}", task.name);
        assert!(list(&dir, "test").iter().all(|(p, _)| p.starts_with("images/test/")));
        // The lists are not runs of one class.
        assert!(train.windows(2).filter(|w| w[0].1 == w[1].1).count() < 200, "{}", task.name);
        let img = image::open(dir.join(&train[0].0)).unwrap();
        assert_eq!((img.width(), img.height(), img.color()), (64, 64, image::ColorType::L8));
    }
}

#[test]
fn a_second_build_is_byte_identical() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for task in generated_tasks() {
        build_task(task, a.path()).unwrap();
        build_task(task, b.path()).unwrap();
        let (fa, fb) = (files(&a.path().join(&task.folder)), files(&b.path().join(&task.folder)));
        assert_eq!(fa.len(), 2000 + 4 + 1, "{}: images, lists and {STAMP_FILE}", task.name);
        assert!(fa == fb, "{}: two builds differ", task.name);
    }
    // The three tasks draw different images.
    let first = |t: &DemoTask| std::fs::read(a.path().join(&t.folder).join("images/test/00000.png")).unwrap();
    let pngs: BTreeSet<Vec<u8>> = generated_tasks().into_iter().map(first).collect();
    assert_eq!(pngs.len(), 3);
}
