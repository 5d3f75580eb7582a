//! The image-folder layout on small trees generated on the fly: listing, class names, held-out
//! splits, `data check` and the run's list files read back as a list task.

mod common;

use common::*;
use mlae_data::{
    Benchmark, CheckOptions, DataSource, HoldoutSplit, Item, Task, Transform, load_images, open_task,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn src(benchmark: Benchmark, task: &str, root: &Path, split: Option<HoldoutSplit>) -> DataSource {
    DataSource { benchmark, task: task.into(), root: root.to_path_buf(), split }
}

fn open(task: &str, root: &Path, split: Option<HoldoutSplit>) -> mlae_data::Result<Task> {
    open_task(&src(Benchmark::Folder, task, root, split))
}

fn holdout(fractions: &[(&str, f64)], seed: u64) -> Option<HoldoutSplit> {
    Some(HoldoutSplit { fractions: fractions.iter().map(|(k, v)| (k.to_string(), *v)).collect(), seed })
}

fn png(path: &Path, seed: u32) {
    write_png_rgb(path, &photo(9, 7, seed));
}

/// `pets`: train/{cat: 3 (one nested, one `.PNG`), dog: 2, golden retriever: 2}, val without
/// golden retriever, test with every class; plus files that are not images and hidden ones.
fn pets(root: &Path) -> PathBuf {
    let t = root.join("pets");
    png(&t.join("train/cat/b.png"), 1);
    png(&t.join("train/cat/a.png"), 2);
    png(&t.join("train/cat/sub/deep/c.PNG"), 3);
    write_jpeg(&t.join("train/dog/d1.jpg"), 10, 8, 4);
    write_jpeg(&t.join("train/dog/d2.JPEG"), 10, 8, 5);
    png(&t.join("train/golden retriever/a b.png"), 6);
    png(&t.join("train/golden retriever/z.png"), 7);
    png(&t.join("val/cat/v.png"), 8);
    png(&t.join("val/dog/v.png"), 9);
    for (i, class) in ["cat", "dog", "golden retriever"].iter().enumerate() {
        png(&t.join(format!("test/{class}/t.png")), 20 + i as u32);
    }
    write_text(&t.join("train/cat/notes.txt"), "not an image\n");
    write_text(&t.join("train/.DS_Store"), "finder\n");
    png(&t.join("train/.hidden/x.png"), 30);
    png(&t.join("train/cat/.thumb.png"), 31);
    write_text(&t.join("README.md"), "files in the task folder are not splits\n");
    t
}

fn listing(task: &Task, split: &str) -> Vec<(String, i64)> {
    let list = task.split(split).unwrap();
    list.items
        .iter()
        .map(|i| (i.path.strip_prefix(&task.dir).unwrap().to_string_lossy().into_owned(), i.label))
        .collect()
}

#[test]
fn classes_are_the_sorted_train_folders_and_nested_images_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = pets(tmp.path());
    let task = open("pets", tmp.path(), None).unwrap();
    assert_eq!(task.class_names(), ["cat", "dog", "golden retriever"]);
    assert!(task.has_class_names());
    assert_eq!(task.num_classes, 3);
    assert_eq!(task.split_names(), ["test", "train", "val"]);
    assert_eq!(task.dir, dir);
    let pairs = |v: &[(&str, i64)]| v.iter().map(|(p, l)| (p.to_string(), *l)).collect::<Vec<_>>();
    assert_eq!(
        listing(&task, "train"),
        pairs(&[
            ("train/cat/a.png", 0),
            ("train/cat/b.png", 0),
            ("train/cat/sub/deep/c.PNG", 0),
            ("train/dog/d1.jpg", 1),
            ("train/dog/d2.JPEG", 1),
            ("train/golden retriever/a b.png", 2),
            ("train/golden retriever/z.png", 2),
        ])
    );
    let train = task.split("train").unwrap();
    assert_eq!(train.items.iter().map(|i| i.line).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
    assert!(train.items.iter().all(|i| i.path.is_absolute()));
    // a class missing from val is fine; its labels stay those of train
    assert_eq!(listing(&task, "val"), pairs(&[("val/cat/v.png", 0), ("val/dog/v.png", 1)]));
    let set = load_images(&train, &Transform::vtab(8), task.num_classes, None, 0).unwrap();
    assert_eq!((set.len, set.labels.clone()), (7, vec![0, 0, 0, 1, 1, 2, 2]));
}

#[test]
fn layout_mistakes_are_errors_naming_the_folder_or_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = pets(tmp.path());
    png(&dir.join("test/bird/x.png"), 40);
    let err = open("pets", tmp.path(), None).unwrap_err().to_string();
    assert!(err.contains("test/bird") && err.contains("`bird`") && err.contains("split `test`"), "{err}");
    std::fs::remove_dir_all(dir.join("test/bird")).unwrap();

    png(&dir.join("val/loose.png"), 41);
    let err = open("pets", tmp.path(), None).unwrap_err().to_string();
    assert!(err.contains("val/loose.png") && err.contains("class folders"), "{err}");
    std::fs::remove_file(dir.join("val/loose.png")).unwrap();
    open("pets", tmp.path(), None).unwrap();

    std::fs::rename(dir.join("train"), dir.join("training")).unwrap();
    let err = open("pets", tmp.path(), None).unwrap_err().to_string();
    assert!(err.contains("no `train` folder") && err.contains("training"), "{err}");
    let err = open("cats", tmp.path(), None).unwrap_err().to_string();
    assert!(err.contains("cats") && err.contains("<root>/<task>/train/<class>/<image>"), "{err}");
}

/// `only`: train/ alone, classes of 20, 10, 3 and 2 images.
fn only_train(root: &Path) {
    for (class, n) in [("a", 20), ("b", 10), ("c", 3), ("d", 2)] {
        for i in 0..n {
            png(&root.join(format!("only/train/{class}/{i:02}.png")), i);
        }
    }
}

fn per_class(task: &Task, split: &str) -> Vec<usize> {
    let mut counts = vec![0; task.num_classes];
    for item in task.split(split).unwrap().items {
        counts[item.label as usize] += 1;
    }
    counts
}

#[test]
fn held_out_splits_are_stratified_reproducible_and_leave_train_an_image_of_each_class() {
    let tmp = tempfile::tempdir().unwrap();
    only_train(tmp.path());
    let all = open("only", tmp.path(), None).unwrap().split("train").unwrap().items;
    let split = holdout(&[("val", 0.2), ("test", 0.1)], 0);
    let task = open("only", tmp.path(), split.clone()).unwrap();
    assert_eq!(task.split_names(), ["test", "train", "val"]);
    // round(fraction * n) per class, `test` drawn first (key order)
    assert_eq!(per_class(&task, "val"), [4, 2, 1, 0]);
    assert_eq!(per_class(&task, "test"), [2, 1, 0, 0]);
    assert_eq!(per_class(&task, "train"), [14, 7, 2, 2]);
    // a partition of the listing, each split in listing order and numbered from 1
    let mut union: Vec<Item> = Vec::new();
    for name in task.split_names() {
        let items = task.split(&name).unwrap().items;
        assert_eq!(items.iter().map(|i| i.line).collect::<Vec<_>>(), (1..=items.len()).collect::<Vec<_>>());
        assert!(items.windows(2).all(|w| (w[0].label, &w[0].path) < (w[1].label, &w[1].path)), "{name}");
        union.extend(items);
    }
    let key = |i: &Item| (i.path.clone(), i.label);
    let union: BTreeSet<_> = union.iter().map(key).collect();
    assert_eq!(union, all.iter().map(key).collect());
    // the same seed draws the same images; another seed others
    let paths = |t: &Task, s: &str| t.split(s).unwrap().items.into_iter().map(|i| i.path).collect::<Vec<_>>();
    let again = open("only", tmp.path(), split).unwrap();
    for s in ["train", "val", "test"] {
        assert_eq!(paths(&again, s), paths(&task, s), "{s}");
    }
    let other = open("only", tmp.path(), holdout(&[("val", 0.2), ("test", 0.1)], 1)).unwrap();
    assert_ne!(paths(&other, "val"), paths(&task, "val"));
    assert_eq!(per_class(&other, "val"), [4, 2, 1, 0], "the sizes do not depend on the seed");
    // large fractions still leave train an image of every class
    let greedy = open("only", tmp.path(), holdout(&[("val", 0.5), ("test", 0.45)], 0)).unwrap();
    assert!(per_class(&greedy, "train").iter().all(|&n| n >= 1), "{:?}", per_class(&greedy, "train"));
    assert_eq!(per_class(&greedy, "test"), [9, 5, 1, 1]);
}

#[test]
fn held_out_splits_refuse_a_split_folder_of_the_same_name_and_other_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    pets(tmp.path());
    let err = open("pets", tmp.path(), holdout(&[("val", 0.2)], 0)).unwrap_err().to_string();
    assert!(err.contains("data.split.val") && err.contains("pets/val"), "{err}");
    let task = open("pets", tmp.path(), holdout(&[("dev", 0.3)], 0)).unwrap();
    assert_eq!(task.split_names(), ["dev", "test", "train", "val"]);
    write_text(&tmp.path().join("mine/train.txt"), "a.png 0\nb.png 1\n");
    let err = open_task(&src(Benchmark::List, "mine", tmp.path(), holdout(&[("val", 0.2)], 0))).unwrap_err();
    assert!(err.to_string().contains("data.split") && err.to_string().contains("folder tasks only"), "{err}");
    let bad = holdout(&[("val", 1.2)], 0);
    let err = open("pets", tmp.path(), bad).unwrap_err().to_string();
    assert!(err.contains("data.split.val") && err.contains("(0, 1)"), "{err}");
}

#[test]
fn data_check_names_corrupt_images_empty_and_unknown_class_folders_and_loose_images() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = pets(tmp.path());
    for i in 0..6 {
        png(&dir.join(format!("train/cat/more{i}.png")), 50 + i);
    }
    truncate(&dir.join("train/cat/b.png"), 0.5);
    std::fs::create_dir_all(dir.join("train/empty class")).unwrap();
    png(&dir.join("test/bird/x.png"), 60);
    png(&dir.join("val/loose.png"), 61);
    only_train(tmp.path());
    let full = CheckOptions { decode: true };
    let report = mlae_data::check(Benchmark::Folder, tmp.path(), None, &full).unwrap();
    assert_eq!(report.tasks.iter().map(|t| t.task.as_str()).collect::<Vec<_>>(), ["only", "pets"]);
    let text = report.to_string();
    assert!(!report.is_ok(), "{text}");
    let pets = &report.tasks[1];
    assert_eq!(pets.classes, 4, "{text}");
    let split = |name: &str| pets.splits.iter().find(|s| s.split == name).unwrap();
    let train = split("train");
    let shown =
        |ps: &[mlae_data::Problem]| ps.iter().map(|p| format!("[{}] {p}", p.kind())).collect::<Vec<_>>();
    let problems = shown(&train.problems);
    assert!(
        problems.iter().any(|p| p.contains("unreadable") && p.contains("train/cat/b.png")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("[empty]") && p.contains("train/empty class")),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    // cat has 9 images, dog and golden retriever 2: a note, not a problem
    assert!(train.notes.iter().any(|n| n.contains("imbalance") && n.contains("`cat`")), "{:?}", train.notes);
    assert!(
        train.notes.iter().any(|n| n.contains("1 file(s) skipped") && n.contains("notes.txt")),
        "{:?}",
        train.notes
    );
    let test = shown(&split("test").problems);
    assert!(
        test.len() == 1 && test[0].contains("[unknown class]") && test[0].contains("test/bird"),
        "{test:?}"
    );
    let val = shown(&split("val").problems);
    assert!(val.len() == 1 && val[0].contains("[loose file]") && val[0].contains("val/loose.png"), "{val:?}");
    assert!(text.contains("note: class imbalance"), "{text}");
    // the train-only task is fine, with notes: imbalance and no other split
    let only = &report.tasks[0];
    assert!(only.is_ok(), "{text}");
    assert!(only.splits[0].notes.iter().any(|n| n.contains("data.split")), "{text}");

    let one = mlae_data::check(Benchmark::Folder, tmp.path(), Some("only"), &full).unwrap();
    assert!(one.is_ok() && one.tasks.len() == 1, "{one}");
    let err = mlae_data::check(Benchmark::Folder, &dir, None, &full).unwrap_err().to_string();
    assert!(err.contains("--task"), "{err}");
}

#[test]
fn run_files_read_back_as_a_list_task_with_the_same_items_and_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = pets(tmp.path());
    png(&dir.join("#extra/golden retriever/a b c.png"), 70);
    png(&dir.join("train/golden retriever/ lead.png"), 71);
    let task = open("pets", tmp.path(), holdout(&[("dev", 0.3)], 5)).unwrap();
    let run = tmp.path().join("run/data");
    task.write_run_files(&run).unwrap();
    let mut written: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, ["#extra.txt", "classes.txt", "dev.txt", "test.txt", "train.txt", "val.txt"]);
    let extra = std::fs::read_to_string(run.join("#extra.txt")).unwrap();
    assert_eq!(extra, "./#extra/golden retriever/a b c.png 2\n");
    // Beside the split folders, the lists make the same task a list task.
    for name in &written {
        std::fs::copy(run.join(name), dir.join(name)).unwrap();
    }
    let list = open_task(&src(Benchmark::List, "pets", tmp.path(), None)).unwrap();
    assert_eq!(list.split_names(), task.split_names());
    assert_eq!(list.class_names(), task.class_names());
    assert_eq!(list.num_classes, task.num_classes);
    for name in task.split_names() {
        let (a, b) = (task.split(&name).unwrap().items, list.split(&name).unwrap().items);
        assert_eq!(a, b, "{name}");
    }
    // and the folder task is unchanged by the list files beside its folders
    assert_eq!(
        open("pets", tmp.path(), holdout(&[("dev", 0.3)], 5)).unwrap().split_names(),
        task.split_names()
    );
}

#[test]
fn class_names_come_from_the_data_or_are_the_labels() {
    let tmp = tempfile::tempdir().unwrap();
    write_text(&tmp.path().join("mine/train.txt"), "a.png 0\nb.png 2\n");
    let list = |t: &str| open_task(&src(Benchmark::List, t, tmp.path(), None)).unwrap();
    let plain = list("mine");
    assert_eq!(
        (plain.class_names(), plain.has_class_names()),
        (vec!["0".into(), "1".into(), "2".into()], false)
    );
    std::fs::write(tmp.path().join("mine/classes.txt"), b"  tabby cat \r\n\nsiam\xe9se\ndog\n").unwrap();
    let named = list("mine");
    assert_eq!(named.class_names(), ["tabby cat", "siam\u{fffd}se", "dog"]);
    assert!(named.has_class_names());
    let run = tmp.path().join("run");
    named.write_run_files(&run).unwrap();
    assert_eq!(std::fs::read_to_string(run.join("classes.txt")).unwrap(), "tabby cat\nsiam\u{fffd}se\ndog\n");
    assert_eq!(std::fs::read_dir(&run).unwrap().count(), 1, "a list task's splits are files already");
}
