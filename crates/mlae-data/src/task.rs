//! Opening a task: from a (benchmark, task, root) triple to the task folder, its split files
//! and (for FGVC's JSON layout) its class-id mapping, and reading a split's items. No pixels
//! are touched here.

use crate::catalogue::{Benchmark, TaskSpec};
use crate::error::{DataError, Location, Result, io_err};
use crate::holdout::HoldoutSplit;
use crate::manifest::Domain;
use crate::split_file::{Item, SplitList, parse_list, read_json_entries};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a task's data is: the trainer's `[data]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSource {
    pub benchmark: Benchmark,
    pub task: String,
    /// The benchmark root: the folder that holds the task folders.
    pub root: PathBuf,
    /// Held-out splits carved from `train` (`data.split`; folder tasks only).
    pub split: Option<HoldoutSplit>,
}

/// An opened task: its manifest entry resolved against a root folder.
#[derive(Debug, Clone)]
pub struct Task {
    pub benchmark: Benchmark,
    pub name: String,
    pub num_classes: usize,
    /// The task folder.
    pub dir: PathBuf,
    /// VTAB-1k group, for VTAB tasks.
    pub domain: Option<Domain>,
    /// Exact sizes of the splits that have one (from the manifest).
    pub expected_sizes: BTreeMap<String, usize>,
    pub(crate) splits: Vec<(String, PathBuf)>,
    pub(crate) format: SplitFormat,
    /// Whether split files may name images outside the task folder (`data.allow_outside_paths`).
    pub allow_outside_paths: bool,
    /// Class names by label, where the data names them (folder names, `classes.txt`).
    pub(crate) class_names: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub(crate) enum SplitFormat {
    /// `path label` lines, paths relative to the task folder.
    ListFile,
    /// JSON objects path -> class id, paths relative to `image_dir`; `class_ids` sorted.
    Json { image_dir: PathBuf, class_ids: Vec<i64> },
    /// Image folders, listed (and held-out splits drawn) when the task was opened: split
    /// name -> items, labelled and sorted.
    Folder { items: BTreeMap<String, Vec<Item>> },
}

/// Opens a task: checks that its folder exists and, for FGVC, builds the class-id mapping
/// from the split files; lists a folder task's images. List files are read by [`Task::split`].
pub fn open_task(src: &DataSource) -> Result<Task> {
    if src.split.is_some() && src.benchmark != Benchmark::Folder {
        return Err(DataError::Invalid(format!(
            "data.split: held-out splits are drawn from folder tasks only, not from {} (whose splits \
             are files); remove data.split",
            src.benchmark
        )));
    }
    match src.benchmark {
        Benchmark::List => return open_list_task(src),
        Benchmark::Folder => return crate::folder::open_folder_task(src),
        _ => {}
    }
    let spec = src.benchmark.task(&src.task)?;
    let dir = resolve_task_dir(&src.root, &spec)?;
    let class_ids = match spec.image_dir {
        None => None,
        Some(_) => {
            let (ids, mut failures) = json_class_ids(&spec, &dir);
            if !failures.is_empty() {
                return Err(failures.swap_remove(0).1);
            }
            if ids.len() > spec.classes {
                return Err(DataError::ClassCount {
                    dir,
                    task: spec.name,
                    expected: spec.classes,
                    found: ids.len(),
                });
            }
            if ids.len() < spec.classes {
                tracing::warn!(
                    "{}: the split files hold {} distinct class ids, {} has {} classes; \
                     ids are remapped by sorting, so labels may not match another copy",
                    dir.display(),
                    ids.len(),
                    spec.name,
                    spec.classes
                );
            }
            Some(ids)
        }
    };
    Ok(task_from_spec(spec, dir, class_ids))
}

/// A task from its manifest entry and folder; `class_ids` (sorted) for JSON layouts.
pub(crate) fn task_from_spec(spec: TaskSpec, dir: PathBuf, class_ids: Option<Vec<i64>>) -> Task {
    let splits = spec.splits.iter().map(|(name, file)| (name.clone(), dir.join(file))).collect();
    let format = match (&spec.image_dir, class_ids) {
        (Some(image_dir), Some(class_ids)) => SplitFormat::Json { image_dir: dir.join(image_dir), class_ids },
        _ => SplitFormat::ListFile,
    };
    Task {
        benchmark: spec.benchmark,
        name: spec.name,
        num_classes: spec.classes,
        dir,
        domain: spec.domain,
        expected_sizes: spec.sizes,
        splits,
        format,
        allow_outside_paths: false,
        class_names: None,
    }
}

/// The sorted distinct integer class ids of a JSON task's split files that exist, and the
/// files that could not be read or parsed.
pub(crate) fn json_class_ids(spec: &TaskSpec, dir: &Path) -> (Vec<i64>, Vec<(PathBuf, DataError)>) {
    let mut ids = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for (_, file) in &spec.splits {
        let path = dir.join(file);
        if !path.is_file() {
            continue;
        }
        match read_json_entries(&path) {
            Ok(entries) => ids.extend(entries.iter().filter_map(|(_, v)| v.as_i64())),
            Err(e) => failures.push((path, e)),
        }
    }
    (ids.into_iter().collect(), failures)
}

/// The task folder: `<root>/<folder>` as the manifest says; `<root>/<name>` is accepted too,
/// because FGVC copies are often unpacked under the short name.
pub(crate) fn resolve_task_dir(root: &Path, spec: &TaskSpec) -> Result<PathBuf> {
    let primary = root.join(&spec.folder);
    if primary.is_dir() {
        return Ok(primary);
    }
    let alias = root.join(&spec.name);
    if alias.is_dir() {
        return Ok(alias);
    }
    let files = spec.splits.iter().map(|(_, f)| f.as_str()).collect::<Vec<_>>().join(", ");
    // Every demo task comes from one command (downloaded or generated), so name it.
    let build = if spec.benchmark == Benchmark::Demo { "; `cargo xtask fetch-demo` builds it" } else { "" };
    Err(DataError::MissingTaskDir {
        dir: primary,
        hint: format!(
            "{} task {} expects <root>/{}/ holding {files}{build}",
            spec.benchmark, spec.name, spec.folder
        ),
    })
}

/// File holding the class names of a `list` task, one a line; optional.
pub const CLASSES_FILE: &str = "classes.txt";

/// A `list` task: every `*.txt` in `<root>/<task>/` except `classes.txt` is a split. The class
/// count is the number of non-empty lines of `classes.txt` when present, otherwise inferred
/// as the largest label in any split file plus one.
fn open_list_task(src: &DataSource) -> Result<Task> {
    let dir = src.root.join(&src.task);
    if !dir.is_dir() {
        return Err(DataError::MissingTaskDir {
            dir,
            hint: "a list task expects <root>/<task>/ holding <split>.txt files of `path label` lines".into(),
        });
    }
    let splits = list_split_files(&dir)?;
    if splits.is_empty() {
        return Err(DataError::Invalid(format!(
            "{}: no split files (<split>.txt with `path label` lines) in the task folder",
            dir.display()
        )));
    }
    let (num_classes, class_names) = list_num_classes(&dir, &splits)?;
    Ok(Task {
        benchmark: Benchmark::List,
        name: src.task.clone(),
        num_classes,
        dir,
        domain: None,
        expected_sizes: BTreeMap::new(),
        splits,
        format: SplitFormat::ListFile,
        allow_outside_paths: false,
        class_names,
    })
}

/// The class count of a list task and its class names: the non-empty lines of `classes.txt`,
/// else the largest parseable label of the split files plus one and no names (bad lines are
/// left to [`Task::split`]).
fn list_num_classes(dir: &Path, splits: &[(String, PathBuf)]) -> Result<(usize, Option<Vec<String>>)> {
    let classes_file = dir.join(CLASSES_FILE);
    if classes_file.is_file() {
        // A class name need not be UTF-8: names are only shown, so they are read lossily.
        let bytes = std::fs::read(&classes_file).map_err(io_err(&classes_file))?;
        let names: Vec<String> = bytes
            .split(|&b| b == b'\n')
            .map(<[u8]>::trim_ascii)
            .filter(|l| !l.is_empty())
            .map(|l| String::from_utf8_lossy(l).trim().to_string())
            .collect();
        let n = names.len();
        if n < 2 {
            return Err(DataError::Invalid(format!(
                "{}: lists {n} class names; a task needs at least 2",
                classes_file.display()
            )));
        }
        return Ok((n, Some(names)));
    }
    let mut max = -1i64;
    for (_, path) in splits {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        max = parse_list(&bytes, path, dir).0.iter().map(|i| i.label).fold(max, i64::max);
    }
    let n = (max + 1).max(0) as usize;
    if n < 2 {
        return Err(DataError::Invalid(format!(
            "{}: cannot infer the class count (largest label {max}); add a {CLASSES_FILE} with one class name a line",
            dir.display()
        )));
    }
    tracing::info!(
        "{}: no {CLASSES_FILE}; {n} classes inferred from the largest label in the split files",
        dir.display()
    );
    Ok((n, None))
}

/// The `*.txt` files of a list task folder other than `classes.txt`, sorted by name.
pub(crate) fn list_split_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.is_file()
            && path.extension().is_some_and(|e| e == "txt")
            && path.file_name().is_some_and(|n| n != CLASSES_FILE)
            && let Some(stem) = path.file_stem()
        {
            out.push((stem.to_string_lossy().into_owned(), path));
        }
    }
    out.sort();
    Ok(out)
}

impl Task {
    /// The class names by label: the folder names of a folder task, the lines of a list
    /// task's `classes.txt`, otherwise the labels as decimal numbers (`"0"`, `"1"`, ...).
    pub fn class_names(&self) -> Vec<String> {
        match &self.class_names {
            Some(names) => names.clone(),
            None => (0..self.num_classes).map(|i| i.to_string()).collect(),
        }
    }

    /// Whether [`Self::class_names`] comes from the data rather than the label numbers.
    pub fn has_class_names(&self) -> bool {
        self.class_names.is_some()
    }

    /// The split names, in manifest order (sorted file names for `list`, sorted folder and
    /// held-out split names for `folder`).
    pub fn split_names(&self) -> Vec<String> {
        self.splits.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The file of a split (a folder task's split folder; for a held-out split, `train/`).
    pub fn split_file(&self, name: &str) -> Result<&Path> {
        self.splits.iter().find(|(n, _)| n == name).map(|(_, p)| p.as_path()).ok_or_else(|| {
            DataError::UnknownSplit {
                task: self.name.clone(),
                split: name.into(),
                known: self.split_names().join(", "),
            }
        })
    }

    /// Reads a split: every line or entry parsed, every label in `0..num_classes`, at least
    /// one item. The first problem found is the error; `mlae-cli data check` lists them all.
    pub fn split(&self, name: &str) -> Result<SplitList> {
        let (list, problems) = self.read_split(name)?;
        if let Some(p) = problems.into_iter().next() {
            return Err(p);
        }
        if list.items.is_empty() {
            return Err(DataError::EmptySplit { path: list.source });
        }
        Ok(list)
    }

    /// Reads a split, collecting per-item problems instead of stopping at the first. Errors
    /// only when the file itself is missing or unreadable.
    pub(crate) fn read_split(&self, name: &str) -> Result<(SplitList, Vec<DataError>)> {
        let path = self.split_file(name)?.to_path_buf();
        let folder = matches!(self.format, SplitFormat::Folder { .. });
        if !folder && !path.is_file() {
            return Err(DataError::MissingSplitFile { path, split: name.into(), task: self.name.clone() });
        }
        let mut problems = Vec::new();
        let (items, json) = match &self.format {
            // Listed under the task folder and labelled from it when opened: nothing to parse,
            // no path outside, no label out of range.
            SplitFormat::Folder { items } => {
                let items = items.get(name).cloned().unwrap_or_default();
                return Ok((SplitList { name: name.into(), source: path, items, json: false }, problems));
            }
            SplitFormat::ListFile => {
                let bytes = std::fs::read(&path).map_err(io_err(&path))?;
                let (items, bad) = parse_list(&bytes, &path, &self.dir);
                problems.extend(bad.into_iter().map(|(at, message)| DataError::BadEntry { at, message }));
                (items, false)
            }
            SplitFormat::Json { image_dir, class_ids } => {
                let mut items = Vec::new();
                for (i, (key, value)) in read_json_entries(&path)?.into_iter().enumerate() {
                    let at = Location::new(&path, i + 1, true);
                    match value.as_i64() {
                        Some(id) => match class_ids.binary_search(&id) {
                            Ok(label) => items.push(Item { path: image_dir.join(&key), label: label as i64, line: i + 1 }),
                            // The mapping was built from these files when the task was opened.
                            Err(_) => problems.push(DataError::BadEntry {
                                at,
                                message: format!("`{key}`: class id {id} was not in the split files when the task was opened (did a file change?)"),
                            }),
                        },
                        None => problems.push(DataError::BadEntry {
                            at,
                            message: format!("`{key}`: the class id {value} is not an integer"),
                        }),
                    }
                }
                (items, true)
            }
        };
        let (items, outside) =
            crate::paths::keep_inside(items, &path, &self.dir, json, self.allow_outside_paths);
        problems.extend(outside);
        for item in &items {
            if item.label < 0 || item.label as usize >= self.num_classes {
                problems.push(DataError::LabelOutOfRange {
                    at: Location::new(&path, item.line, json),
                    label: item.label,
                    task: self.name.clone(),
                    classes: self.num_classes,
                });
            }
        }
        problems.sort_by_key(|p| match p {
            DataError::BadEntry { at, .. } | DataError::LabelOutOfRange { at, .. } => at.line,
            _ => 0,
        });
        Ok((SplitList { name: name.into(), source: path, items, json }, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_that_is_not_utf8_fails_at_the_line() {
        let tmp = tempfile::tempdir().unwrap();
        let task = tmp.path().join("mine");
        std::fs::create_dir_all(&task).unwrap();
        std::fs::write(task.join("train.txt"), b"a.png 0\nb.png 1\nimages/caf\xe9.png 1\n").unwrap();
        let src = DataSource {
            benchmark: Benchmark::List,
            task: "mine".into(),
            root: tmp.path().into(),
            split: None,
        };
        let err = open_task(&src).and_then(|t| t.split("train")).unwrap_err().to_string();
        let at = format!("{}:3", task.join("train.txt").display());
        assert!(err.starts_with(&at) && err.contains("not UTF-8"), "{err}");
    }
}
