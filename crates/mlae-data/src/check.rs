//! `mlae-cli data check`: validates a dataset tree against its manifest and lists every
//! problem, per task and split, instead of stopping at the first one as the loaders do.
//! Training on a half-copied dataset wastes hours; this finds that in seconds to minutes.

use crate::catalogue::{Benchmark, TaskSpec};
use crate::error::{DataError, Location, Result};
use crate::split_file::{SplitList, imbalance_note};
use crate::task::{
    DataSource, Task, json_class_ids, list_split_files, open_task, resolve_task_dir, task_from_spec,
};
use crate::transform::decode_rgb;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// How thorough the image check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Decode every image fully (finds truncated files); otherwise only the header is read.
    pub decode: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { decode: true }
    }
}

/// One thing wrong with a dataset tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The task folder does not exist.
    MissingTaskDir { dir: PathBuf, hint: String },
    /// A split's list or JSON file does not exist.
    MissingSplitFile { file: PathBuf },
    /// A split file that cannot be read or is not valid JSON.
    UnreadableSplitFile { file: PathBuf, message: String },
    /// A list line or JSON entry that cannot be parsed.
    BadEntry { at: Location, message: String },
    /// A label outside `0..classes`.
    LabelOutOfRange { at: Location, label: i64, classes: usize },
    /// The class ids of a JSON task do not fit its class count.
    ClassCount { dir: PathBuf, expected: usize, found: usize },
    /// A listed image that does not exist.
    MissingImage { at: Location, image: PathBuf },
    /// A listed image that cannot be read or decoded (truncated, not an image, ...).
    UnreadableImage { at: Location, image: PathBuf, message: String },
    /// A split whose entry count differs from the manifest's.
    WrongSize { file: PathBuf, expected: usize, found: usize },
    /// A split file with no entries.
    EmptySplit { file: PathBuf },
    /// A class folder of a folder task's `train` split holding no image.
    EmptyClass { dir: PathBuf },
    /// A class folder of a folder task's split that `train` does not have.
    UnknownClass { dir: PathBuf, split: String },
    /// An image directly in a folder task's split folder, outside any class folder.
    LooseFile { path: PathBuf },
    /// Anything else that stops a task from being opened, explained.
    Other { message: String },
}

impl Problem {
    /// A short category name: `missing`, `unreadable`, `bad entry`, `out of range`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::MissingTaskDir { .. }
            | Problem::MissingSplitFile { .. }
            | Problem::MissingImage { .. } => "missing",
            Problem::UnreadableSplitFile { .. } | Problem::UnreadableImage { .. } => "unreadable",
            Problem::BadEntry { .. } => "bad entry",
            Problem::LabelOutOfRange { .. } | Problem::ClassCount { .. } => "out of range",
            Problem::WrongSize { .. } => "wrong size",
            Problem::EmptySplit { .. } | Problem::EmptyClass { .. } => "empty",
            Problem::UnknownClass { .. } => "unknown class",
            Problem::LooseFile { .. } => "loose file",
            Problem::Other { .. } => "invalid",
        }
    }

    pub(crate) fn from_error(e: DataError) -> Problem {
        match e {
            DataError::BadEntry { at, message } => Problem::BadEntry { at, message },
            DataError::LabelOutOfRange { at, label, classes, .. } => {
                Problem::LabelOutOfRange { at, label, classes }
            }
            DataError::MissingTaskDir { dir, hint } => Problem::MissingTaskDir { dir, hint },
            DataError::MissingSplitFile { path, .. } => Problem::MissingSplitFile { file: path },
            DataError::Io { path, source } => {
                Problem::UnreadableSplitFile { file: path, message: source.to_string() }
            }
            DataError::Json { path, message } => Problem::UnreadableSplitFile { file: path, message },
            DataError::EmptySplit { path } => Problem::EmptySplit { file: path },
            DataError::ClassCount { dir, expected, found, .. } => {
                Problem::ClassCount { dir, expected, found }
            }
            DataError::UnknownClass { dir, split, .. } => Problem::UnknownClass { dir, split },
            DataError::LooseImage { path, .. } => Problem::LooseFile { path },
            other => Problem::Other { message: other.to_string() },
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MissingTaskDir { dir, hint } => {
                write!(f, "missing task folder {} ({hint})", dir.display())
            }
            Problem::MissingSplitFile { file } => write!(f, "missing split file {}", file.display()),
            Problem::UnreadableSplitFile { file, message } => {
                write!(f, "unreadable {}: {message}", file.display())
            }
            Problem::BadEntry { at, message } => write!(f, "{at}: {message}"),
            Problem::LabelOutOfRange { at, label, classes } => {
                write!(f, "{at}: label {label} out of range (0..={})", classes.saturating_sub(1))
            }
            Problem::ClassCount { dir, expected, found } => write!(
                f,
                "{}: the split files hold {found} distinct class ids, the manifest says {expected} classes",
                dir.display()
            ),
            Problem::MissingImage { at, image } => write!(f, "{at}: missing image {}", image.display()),
            Problem::UnreadableImage { at, image, message } => {
                write!(f, "{at}: unreadable image {}: {message}", image.display())
            }
            Problem::WrongSize { file, expected, found } => {
                write!(f, "{}: {found} entries, the manifest expects {expected}", file.display())
            }
            Problem::EmptySplit { file } => write!(f, "{}: no entries", file.display()),
            Problem::EmptyClass { dir } => {
                write!(
                    f,
                    "{}: class folder without images (the class has nothing to train on)",
                    dir.display()
                )
            }
            Problem::UnknownClass { dir, split } => write!(
                f,
                "{}: class folder of split `{split}` that the train split does not have",
                dir.display()
            ),
            Problem::LooseFile { path } => {
                write!(
                    f,
                    "{}: image outside any class folder (expected <split>/<class>/<image>)",
                    path.display()
                )
            }
            Problem::Other { message } => f.write_str(message),
        }
    }
}

/// The result of checking one split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitReport {
    pub split: String,
    pub file: PathBuf,
    /// Entries found (parseable or not).
    pub entries: usize,
    /// The manifest's exact size, if it has one.
    pub expected: Option<usize>,
    pub problems: Vec<Problem>,
    /// Worth knowing but not wrong (class imbalance, skipped files); do not fail the check.
    pub notes: Vec<String>,
}

/// The result of checking one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskReport {
    pub task: String,
    pub dir: PathBuf,
    /// Class count (manifest, `classes.txt` or inferred); 0 when the task could not be opened.
    pub classes: usize,
    /// Problems that concern the task as a whole.
    pub problems: Vec<Problem>,
    pub splits: Vec<SplitReport>,
}

impl TaskReport {
    /// Every problem of the task and its splits.
    pub fn all_problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().chain(self.splits.iter().flat_map(|s| &s.problems))
    }

    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.all_problems().next().is_none()
    }
}

/// The result of `data check`: one report per task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub benchmark: Benchmark,
    pub root: PathBuf,
    pub tasks: Vec<TaskReport>,
}

impl CheckReport {
    /// Whether every task is complete and readable.
    pub fn is_ok(&self) -> bool {
        self.tasks.iter().all(TaskReport::is_ok)
    }

    /// Total number of problems.
    pub fn problem_count(&self) -> usize {
        self.tasks.iter().map(|t| t.all_problems().count()).sum()
    }
}

/// At most this many problems are printed per split; the rest are counted.
const SHOWN_PER_SPLIT: usize = 10;

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bad = self.tasks.iter().filter(|t| !t.is_ok()).count();
        writeln!(f, "{} at {}: {} task(s) checked", self.benchmark, self.root.display(), self.tasks.len())?;
        for t in &self.tasks {
            let sizes: Vec<String> = t
                .splits
                .iter()
                .map(|s| match s.expected {
                    Some(e) if e != s.entries => format!("{} {}/{e}", s.split, s.entries),
                    _ => format!("{} {}", s.split, s.entries),
                })
                .collect();
            let n = t.all_problems().count();
            let status = if n == 0 { "ok  ".to_string() } else { "FAIL".to_string() };
            write!(f, "{status} {} ({} classes)", t.task, t.classes)?;
            if !sizes.is_empty() {
                write!(f, ": {}", sizes.join(", "))?;
            }
            if n > 0 {
                write!(f, " -- {n} problem(s) in {}", t.dir.display())?;
            }
            writeln!(f)?;
            for p in &t.problems {
                writeln!(f, "       - {p}")?;
            }
            for s in t.splits.iter().filter(|s| !s.problems.is_empty() || !s.notes.is_empty()) {
                writeln!(f, "     {}:", s.split)?;
                for note in &s.notes {
                    writeln!(f, "       - note: {note}")?;
                }
                for p in s.problems.iter().take(SHOWN_PER_SPLIT) {
                    writeln!(f, "       - [{}] {p}", p.kind())?;
                }
                if s.problems.len() > SHOWN_PER_SPLIT {
                    writeln!(f, "       ... and {} more", s.problems.len() - SHOWN_PER_SPLIT)?;
                }
            }
        }
        if bad == 0 {
            write!(f, "all {} task(s) ok", self.tasks.len())
        } else {
            write!(f, "{bad} of {} task(s) have problems ({} in all)", self.tasks.len(), self.problem_count())
        }
    }
}

/// Checks one task (`task`) or every task of a benchmark under `root`. For `list` without a
/// task, every folder of `root` holding a `.txt` file is a task; for `folder`, every folder of
/// `root` not starting with `.`. Errors only for an unknown task name, an unreadable root or
/// (`folder`) a root that is itself a task folder; everything wrong inside the tree is in the
/// report.
pub fn check(
    benchmark: Benchmark,
    root: &Path,
    task: Option<&str>,
    opts: &CheckOptions,
) -> Result<CheckReport> {
    let names: Vec<String> = match (benchmark, task) {
        (Benchmark::List, Some(t)) => vec![t.to_string()],
        (Benchmark::List, None) => {
            let mut names = Vec::new();
            let entries =
                std::fs::read_dir(root).map_err(|source| DataError::Io { path: root.into(), source })?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() && list_split_files(&path).is_ok_and(|s| !s.is_empty()) {
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
            names.sort();
            names
        }
        (Benchmark::Folder, Some(t)) => vec![t.to_string()],
        (Benchmark::Folder, None) => crate::folder::task_names(root)?,
        (b, Some(t)) => vec![b.task(t)?.name],
        (b, None) => b.tasks()?.into_iter().map(|t| t.name).collect(),
    };
    let tasks = names.iter().map(|name| check_task(benchmark, root, name, opts)).collect::<Result<_>>()?;
    Ok(CheckReport { benchmark, root: root.to_path_buf(), tasks })
}

impl TaskReport {
    /// The report of task `name` in `dir` before anything is checked.
    pub(crate) fn empty(name: &str, dir: PathBuf) -> Self {
        TaskReport { task: name.into(), dir, classes: 0, problems: Vec::new(), splits: Vec::new() }
    }
}

fn check_task(benchmark: Benchmark, root: &Path, name: &str, opts: &CheckOptions) -> Result<TaskReport> {
    if benchmark == Benchmark::Folder {
        return Ok(crate::folder::check_folder_task(root, name, opts));
    }
    if benchmark != Benchmark::List {
        return Ok(check_spec(&benchmark.task(name)?, root, opts));
    }
    let mut report = TaskReport::empty(name, root.join(name));
    match open_task(&DataSource { benchmark, task: name.into(), root: root.into(), split: None }) {
        Ok(task) => check_splits(&task, Vec::new(), &mut report, opts),
        Err(e) => report.problems.push(Problem::from_error(e)),
    }
    Ok(report)
}

/// Checks one task described by a manifest entry (also used for demo tasks built in tests).
pub(crate) fn check_spec(spec: &TaskSpec, root: &Path, opts: &CheckOptions) -> TaskReport {
    let mut report = TaskReport {
        task: spec.name.clone(),
        dir: root.join(&spec.folder),
        classes: spec.classes,
        problems: Vec::new(),
        splits: Vec::new(),
    };
    match resolve_task_dir(root, spec) {
        Ok(dir) => {
            let (task, file_failures) = open_leniently(spec.clone(), dir, &mut report);
            check_splits(&task, file_failures, &mut report, opts);
        }
        Err(e) => report.problems.push(Problem::from_error(e)),
    }
    report
}

/// Reads every split of an opened task and checks its entries and images.
pub(crate) fn check_splits(
    task: &Task,
    file_failures: Vec<(PathBuf, Problem)>,
    report: &mut TaskReport,
    opts: &CheckOptions,
) {
    report.dir = task.dir.clone();
    report.classes = task.num_classes;
    let mut lists: Vec<(SplitReport, Option<SplitList>)> = Vec::new();
    for (split, file) in &task.splits {
        let expected = task.expected_sizes.get(split).copied();
        let mut sr = SplitReport {
            split: split.clone(),
            file: file.clone(),
            entries: 0,
            expected,
            problems: Vec::new(),
            notes: Vec::new(),
        };
        if let Some((_, p)) = file_failures.iter().find(|(f, _)| f == file) {
            sr.problems.push(p.clone());
            lists.push((sr, None));
            continue;
        }
        match task.read_split(split) {
            Ok((list, problems)) => {
                let bad_entries = problems.iter().filter(|p| matches!(p, DataError::BadEntry { .. })).count();
                sr.entries = list.len() + bad_entries;
                sr.problems.extend(problems.into_iter().map(Problem::from_error));
                if sr.entries == 0 {
                    sr.problems.push(Problem::EmptySplit { file: file.clone() });
                } else if let Some(e) = expected
                    && e != sr.entries
                {
                    sr.problems.push(Problem::WrongSize {
                        file: file.clone(),
                        expected: e,
                        found: sr.entries,
                    });
                }
                lists.push((sr, Some(list)));
            }
            Err(e) => {
                sr.problems.push(Problem::from_error(e));
                lists.push((sr, None));
            }
        }
    }
    check_images(&mut lists, opts);
    let names = task.class_names();
    for (sr, list) in &mut lists {
        if let Some(list) = list {
            sr.notes.extend(imbalance_note(list, &names));
        }
    }
    report.splits = lists.into_iter().map(|(sr, _)| sr).collect();
}

/// A task from its manifest entry without failing: a JSON file that cannot be parsed is
/// returned as a problem of its split, a class-id count above the manifest's is a task problem.
fn open_leniently(spec: TaskSpec, dir: PathBuf, report: &mut TaskReport) -> (Task, Vec<(PathBuf, Problem)>) {
    let mut file_failures = Vec::new();
    let class_ids = spec.image_dir.is_some().then(|| {
        let (ids, failures) = json_class_ids(&spec, &dir);
        file_failures.extend(failures.into_iter().map(|(f, e)| (f, Problem::from_error(e))));
        if ids.len() > spec.classes {
            report.problems.push(Problem::ClassCount {
                dir: dir.clone(),
                expected: spec.classes,
                found: ids.len(),
            });
        }
        ids
    });
    (task_from_spec(spec, dir, class_ids), file_failures)
}

/// Opens every distinct image of the task once (in parallel) and files a problem under each
/// split that lists a bad one.
fn check_images(lists: &mut [(SplitReport, Option<SplitList>)], opts: &CheckOptions) {
    let mut paths: Vec<PathBuf> = lists
        .iter()
        .flat_map(|(_, l)| l.iter().flat_map(|l| l.items.iter().map(|i| i.path.clone())))
        .collect();
    paths.sort();
    paths.dedup();
    let verdicts: Vec<Option<Result<(), String>>> = paths.par_iter().map(|p| check_image(p, opts)).collect();
    let verdicts: BTreeMap<PathBuf, Option<Result<(), String>>> = paths.into_iter().zip(verdicts).collect();
    for (sr, list) in lists.iter_mut() {
        let Some(list) = list else { continue };
        let mut found = Vec::new();
        for (i, item) in list.items.iter().enumerate() {
            let at = list.location(i);
            match &verdicts[item.path.as_path()] {
                None => found.push(Problem::MissingImage { at, image: item.path.clone() }),
                Some(Err(message)) => found.push(Problem::UnreadableImage {
                    at,
                    image: item.path.clone(),
                    message: message.clone(),
                }),
                Some(Ok(())) => {}
            }
        }
        sr.problems.extend(found);
        sr.problems.sort_by_key(problem_line);
    }
}

fn problem_line(p: &Problem) -> usize {
    match p {
        Problem::BadEntry { at, .. }
        | Problem::LabelOutOfRange { at, .. }
        | Problem::MissingImage { at, .. }
        | Problem::UnreadableImage { at, .. } => at.line,
        _ => usize::MAX,
    }
}

/// `None`: missing; `Some(Err)`: unreadable; `Some(Ok)`: fine.
fn check_image(path: &Path, opts: &CheckOptions) -> Option<Result<(), String>> {
    if !path.is_file() {
        return None;
    }
    if opts.decode {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return Some(Err(e.to_string())),
        };
        return Some(decode_rgb(&bytes).map(|_| ()));
    }
    let dims = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| e.to_string())
        .and_then(|r| r.into_dimensions().map_err(|e| e.to_string()));
    Some(
        dims.and_then(|(w, h)| if w == 0 || h == 0 { Err("the image has no pixels".into()) } else { Ok(()) }),
    )
}
