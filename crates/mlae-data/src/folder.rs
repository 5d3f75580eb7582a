//! The image-folder layout (`benchmark = "folder"`), as torchvision's ImageFolder and timm
//! read it: `<root>/<task>/<split>/<class>/<image>`, images (JPEG, PNG) at any depth under
//! the class folder. Every folder of the task is a split; the classes are the sorted folder
//! names of `train`, the split a run trains on, so a label means the same class whichever
//! other splits exist. Names starting with `.` are skipped at every level, as are files that
//! are not images (by extension).

use crate::catalogue::Benchmark;
use crate::check::{CheckOptions, Problem, TaskReport, check_splits};
use crate::error::{DataError, Result, io_err};
use crate::holdout::{HoldoutSplit, TRAIN_SPLIT};
use crate::single::IMAGE_EXTENSIONS;
use crate::split_file::Item;
use crate::task::{CLASSES_FILE, DataSource, SplitFormat, Task};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Deeper than this under a class folder is taken for a symlink loop.
const MAX_DEPTH: usize = 32;

/// One split folder as found on disk.
pub(crate) struct ScannedSplit {
    pub name: String,
    pub dir: PathBuf,
    /// Labelled images, class by class, each class's files sorted by path.
    pub items: Vec<Item>,
    /// Unknown class folders, loose images, bad names, unreadable folders.
    pub problems: Vec<DataError>,
    /// Class folders holding no image.
    pub empty_classes: Vec<PathBuf>,
    /// Files skipped because they are not images (by extension).
    pub skipped: Vec<PathBuf>,
}

/// A folder task as found on disk: its folder (absolute), classes and splits (sorted).
pub(crate) struct Scan {
    pub dir: PathBuf,
    pub classes: Vec<String>,
    pub splits: Vec<ScannedSplit>,
}

const HINT: &str = "a folder task expects <root>/<task>/train/<class>/<image> (and optionally val/ and \
                    test/ laid out alike, or data.split to hold images out of train)";

/// The task folders under `root` (every folder not starting with `.`), for `data check`; a
/// root that is itself a task folder is an error saying what to pass instead.
pub(crate) fn task_names(root: &Path) -> Result<Vec<String>> {
    if root.join(TRAIN_SPLIT).is_dir() {
        return Err(DataError::Invalid(format!(
            "{}: this is a task folder (it has train/); pass its parent as --root and its name as --task",
            root.display()
        )));
    }
    Ok(entries(root)?.into_iter().filter(|e| e.is_dir).map(|e| e.name).collect())
}

/// Lists a folder task. Errors only when there is no task to list (no folder, no `train/`,
/// fewer than two classes); what is wrong inside a split is in its `problems`.
pub(crate) fn scan(root: &Path, task: &str) -> Result<Scan> {
    let dir = root.join(task);
    let dir = std::path::absolute(&dir).map_err(io_err(&dir))?;
    if !dir.is_dir() {
        return Err(DataError::MissingTaskDir { dir, hint: HINT.into() });
    }
    let split_dirs: Vec<Entry> = entries(&dir)?.into_iter().filter(|e| e.is_dir).collect();
    let Some(train) = split_dirs.iter().find(|e| e.name == TRAIN_SPLIT) else {
        let found: Vec<&str> = split_dirs.iter().map(|e| e.name.as_str()).collect();
        return Err(DataError::Invalid(format!(
            "{}: no `train` folder (found {}); {HINT}",
            dir.display(),
            if found.is_empty() { "no folders".to_string() } else { found.join(", ") }
        )));
    };
    let classes: Vec<String> =
        entries(&train.path)?.into_iter().filter(|e| e.is_dir).map(|e| e.name).collect();
    if classes.len() < 2 {
        return Err(DataError::Invalid(format!(
            "{}: {} class folder(s); a task needs at least 2 ({HINT})",
            train.path.display(),
            classes.len()
        )));
    }
    let splits = split_dirs.into_iter().map(|e| scan_split(e.name, e.path, &classes)).collect();
    Ok(Scan { dir, classes, splits })
}

/// A non-hidden folder entry; `name` is lossy for names that are not UTF-8.
struct Entry {
    name: String,
    raw: std::ffi::OsString,
    path: PathBuf,
    is_dir: bool,
}

/// The entries of a folder not starting with `.`, sorted by name.
fn entries(dir: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let raw = entry.file_name();
        if raw.as_encoded_bytes().first() == Some(&b'.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: a linked class folder or image counts as one.
        out.push(Entry { name: raw.to_string_lossy().into_owned(), raw, is_dir: path.is_dir(), path });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.raw.cmp(&b.raw)));
    Ok(out)
}

fn is_image(path: &Path) -> bool {
    crate::single::is_image_path(path)
}

fn scan_split(name: String, dir: PathBuf, classes: &[String]) -> ScannedSplit {
    let mut s = ScannedSplit {
        name,
        dir,
        items: Vec::new(),
        problems: Vec::new(),
        empty_classes: Vec::new(),
        skipped: Vec::new(),
    };
    if s.name == "classes" {
        s.problems.push(DataError::BadName {
            path: s.dir.clone(),
            message: format!("a split cannot be named `classes`: its list would replace {CLASSES_FILE}"),
        });
    }
    let list = match entries(&s.dir) {
        Ok(list) => list,
        Err(e) => {
            s.problems.push(e);
            return s;
        }
    };
    let mut by_class: Vec<Vec<PathBuf>> = vec![Vec::new(); classes.len()];
    for e in list {
        if !e.is_dir {
            if is_image(&e.path) {
                s.problems.push(DataError::LooseImage { path: e.path, split: s.name.clone() });
            } else {
                s.skipped.push(e.path);
            }
            continue;
        }
        let Ok(label) = classes.binary_search(&e.name) else {
            s.problems.push(DataError::UnknownClass {
                dir: e.path,
                class: e.name,
                split: s.name.clone(),
                known: known_classes(classes),
            });
            continue;
        };
        if s.name == TRAIN_SPLIT
            && let Some(message) = class_name_problem(&e.raw)
        {
            s.problems.push(DataError::BadName { path: e.path.clone(), message });
        }
        let mut files = Vec::new();
        walk(&e.path, &e.path, 0, &mut files, &mut s);
        if files.is_empty() {
            s.empty_classes.push(e.path);
        }
        files.sort();
        by_class[label] = files;
    }
    s.items = by_class
        .into_iter()
        .enumerate()
        .flat_map(|(label, files)| files.into_iter().map(move |path| (label, path)))
        .enumerate()
        .map(|(i, (label, path))| Item { path, label: label as i64, line: i + 1 })
        .collect();
    s
}

/// The train split's class names for a message: the first ten, and the count of the rest.
fn known_classes(classes: &[String]) -> String {
    const SHOWN: usize = 10;
    let shown = classes.iter().take(SHOWN).map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
    match classes.len().saturating_sub(SHOWN) {
        0 => shown,
        rest => format!("{shown} and {rest} more"),
    }
}

/// Collects the images under `dir` (a class folder or one of its subfolders).
fn walk(class_dir: &Path, dir: &Path, depth: usize, files: &mut Vec<PathBuf>, s: &mut ScannedSplit) {
    let list = match entries(dir) {
        Ok(list) => list,
        Err(e) => return s.problems.push(e),
    };
    for e in list {
        if e.is_dir {
            if depth >= MAX_DEPTH {
                s.problems.push(DataError::Invalid(format!(
                    "{}: folders nested more than {MAX_DEPTH} deep under a class folder (a symlink loop?)",
                    e.path.display()
                )));
            } else {
                walk(class_dir, &e.path, depth + 1, files, s);
            }
        } else if is_image(&e.path) {
            let rel = e.path.strip_prefix(class_dir).expect("walked from the class folder");
            if let Some(message) = file_name_problem(rel) {
                s.problems.push(DataError::BadName { path: e.path.clone(), message });
            }
            files.push(e.path);
        } else {
            s.skipped.push(e.path);
        }
    }
}

/// Why a class folder's name cannot be a line of `classes.txt`, if it cannot.
pub(crate) fn class_name_problem(name: &OsStr) -> Option<String> {
    let Some(name) = name.to_str() else {
        return Some("the class folder's name is not UTF-8".into());
    };
    if name.contains(['\n', '\r']) {
        Some("the class name holds a line break".into())
    } else if name.trim() != name {
        Some("the class name starts or ends with whitespace, which classes.txt would lose".into())
    } else {
        None
    }
}

/// Why an image's path (below its class folder) cannot be written in a list file.
pub(crate) fn file_name_problem(rel: &Path) -> Option<String> {
    let Some(rel) = rel.to_str() else {
        return Some("the path is not UTF-8, which a list file needs".into());
    };
    if rel.contains(['\n', '\r']) {
        Some("the path holds a line break, which a list file cannot".into())
    } else if rel.ends_with(char::is_whitespace) {
        Some("the name ends with whitespace, which a list file would lose".into())
    } else {
        None
    }
}

/// Opens a folder task: lists it, refuses it on the first problem found, and draws the
/// held-out splits of `src.split`.
pub(crate) fn open_folder_task(src: &DataSource) -> Result<Task> {
    let mut scan = scan(&src.root, &src.task)?;
    for s in &mut scan.splits {
        if !s.problems.is_empty() {
            return Err(s.problems.swap_remove(0));
        }
        for dir in &s.empty_classes {
            tracing::warn!("{}: class folder without images", dir.display());
        }
    }
    let mut task = task_from_scan(&src.task, &scan);
    if let Some(h) = &src.split {
        hold_out(&mut task, h)?;
    }
    Ok(task)
}

fn task_from_scan(name: &str, scan: &Scan) -> Task {
    Task {
        benchmark: Benchmark::Folder,
        name: name.into(),
        num_classes: scan.classes.len(),
        dir: scan.dir.clone(),
        domain: None,
        expected_sizes: BTreeMap::new(),
        splits: scan.splits.iter().map(|s| (s.name.clone(), s.dir.clone())).collect(),
        format: SplitFormat::Folder {
            items: scan.splits.iter().map(|s| (s.name.clone(), s.items.clone())).collect(),
        },
        allow_outside_paths: false,
        class_names: Some(scan.classes.clone()),
    }
}

/// Replaces `train` by the held-out splits and what remains of it, class by class (see
/// [`HoldoutSplit::assign`]). A held-out split may not shadow a split folder.
fn hold_out(task: &mut Task, h: &HoldoutSplit) -> Result<()> {
    h.validate()?;
    let SplitFormat::Folder { items } = &mut task.format else { unreachable!("a folder task") };
    for name in h.fractions.keys() {
        if let Some((_, dir)) = task.splits.iter().find(|(n, _)| n == name) {
            return Err(DataError::Invalid(format!(
                "data.split.{name}: the task has a `{name}` split folder already ({}); hold images out \
                 under another name, or remove data.split to use the folder",
                dir.display()
            )));
        }
    }
    let train = items.remove(TRAIN_SPLIT).expect("a folder task has a train split");
    let train_dir = task.dir.join(TRAIN_SPLIT);
    let names = task.class_names.clone().expect("a folder task names its classes");
    let mut parts: BTreeMap<String, Vec<Item>> = h
        .fractions
        .keys()
        .map(String::as_str)
        .chain([TRAIN_SPLIT])
        .map(|k| (k.to_string(), Vec::new()))
        .collect();
    for (label, class) in names.iter().enumerate() {
        let files: Vec<Item> = train.iter().filter(|i| i.label == label as i64).cloned().collect();
        for (split, taken) in h.assign(class, &files) {
            parts.get_mut(&split).expect("assign returns the configured splits").extend(taken);
        }
    }
    for (split, mut list) in parts {
        for (i, item) in list.iter_mut().enumerate() {
            item.line = i + 1;
        }
        if split != TRAIN_SPLIT {
            task.splits.push((split.clone(), train_dir.clone()));
        }
        items.insert(split, list);
    }
    task.splits.sort();
    Ok(())
}

/// `data check` of one folder task: the listing's problems, the images, notes on empty class
/// folders outside `train`, skipped files and a task with `train` alone.
pub(crate) fn check_folder_task(root: &Path, name: &str, opts: &CheckOptions) -> TaskReport {
    let mut report = TaskReport::empty(name, root.join(name));
    let scan = match scan(root, name) {
        Ok(scan) => scan,
        Err(e) => {
            report.problems.push(Problem::from_error(e));
            return report;
        }
    };
    let task = task_from_scan(name, &scan);
    check_splits(&task, Vec::new(), &mut report, opts);
    let only_train = scan.splits.len() == 1;
    for s in scan.splits {
        let sr = report.splits.iter_mut().find(|r| r.split == s.name).expect("one report per split");
        sr.problems.extend(s.problems.into_iter().map(Problem::from_error));
        for dir in s.empty_classes {
            if s.name == TRAIN_SPLIT {
                sr.problems.push(Problem::EmptyClass { dir });
            } else {
                sr.notes.push(format!("class folder without images: {}", dir.display()));
            }
        }
        if let Some(first) = s.skipped.first() {
            sr.notes.push(format!(
                "{} file(s) skipped as not {}, e.g. {}",
                s.skipped.len(),
                IMAGE_EXTENSIONS.join("/"),
                first.display()
            ));
        }
        if only_train {
            sr.notes.push(
                "train is the only split: add val/ and test/ folders, or set data.split to hold images out"
                    .into(),
            );
        }
    }
    report
}
