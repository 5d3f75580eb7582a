//! Benchmarks, tasks and splits: from a (benchmark, task, root) triple to the list of image
//! files and labels of a split. No pixels are touched here.

use crate::error::{DataError, Location, Result, io_err};
use crate::manifest::{self, Domain};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Which layout (and manifest) a dataset follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Benchmark {
    /// VTAB-1k, NOAH/SPT layout (`data-manifests/vtab-1k.toml`).
    Vtab,
    /// FGVC, VPT layout (`data-manifests/fgvc.toml`).
    Fgvc,
    /// Demo tasks built by `cargo xtask fetch-demo`, VTAB layout (`data-manifests/demo.toml`).
    Demo,
    /// A user's own data: `<root>/<task>/<split>.txt` list files, any split names.
    List,
}

impl Benchmark {
    /// Every benchmark, in documentation order.
    pub const ALL: [Benchmark; 4] = [Benchmark::Vtab, Benchmark::Fgvc, Benchmark::Demo, Benchmark::List];

    /// The lowercase name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Vtab => "vtab",
            Benchmark::Fgvc => "fgvc",
            Benchmark::Demo => "demo",
            Benchmark::List => "list",
        }
    }

    /// The tasks the manifest lists (empty for `List`, which has no manifest).
    pub fn tasks(self) -> Result<Vec<TaskSpec>> {
        Ok(match self {
            Benchmark::Vtab => {
                let m = manifest::vtab()?;
                m.tasks
                    .iter()
                    .map(|t| TaskSpec {
                        benchmark: self,
                        name: t.name.clone(),
                        title: t.title.clone(),
                        folder: t.folder.clone(),
                        classes: t.classes,
                        domain: Some(t.domain),
                        splits: m.splits.iter().map(|s| (s.clone(), format!("{s}.txt"))).collect(),
                        sizes: t.sizes.clone(),
                        image_dir: None,
                    })
                    .collect()
            }
            Benchmark::Demo => {
                let m = manifest::demo()?;
                m.tasks.iter().map(|t| TaskSpec::from_demo(t, &m.splits)).collect()
            }
            Benchmark::Fgvc => manifest::fgvc()?
                .datasets
                .iter()
                .map(|d| TaskSpec {
                    benchmark: self,
                    name: d.name.clone(),
                    title: d.title.clone(),
                    folder: d.folder.clone(),
                    classes: d.classes,
                    domain: None,
                    splits: vec![
                        ("train".into(), d.splits.train.clone()),
                        ("val".into(), d.splits.val.clone()),
                        ("test".into(), d.splits.test.clone()),
                    ],
                    sizes: BTreeMap::new(),
                    image_dir: Some(d.image_dir.clone()),
                })
                .collect(),
            Benchmark::List => Vec::new(),
        })
    }

    /// The manifest entry of one task, or an error listing the known names.
    pub fn task(self, name: &str) -> Result<TaskSpec> {
        let tasks = self.tasks()?;
        let known = tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ");
        tasks.iter().find(|t| t.name == name).cloned().ok_or_else(|| DataError::UnknownTask {
            benchmark: self.name().into(),
            task: name.into(),
            known,
        })
    }
}

impl fmt::Display for Benchmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Benchmark {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Benchmark::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("unknown benchmark `{s}`; expected one of vtab, fgvc, demo, list"))
    }
}

/// What the manifest says about one task, independent of where the data lives.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub benchmark: Benchmark,
    pub name: String,
    pub title: String,
    /// Folder under the benchmark root.
    pub folder: String,
    pub classes: usize,
    /// VTAB-1k group, for VTAB tasks.
    pub domain: Option<Domain>,
    /// (split name, file name relative to the task folder), in manifest order.
    pub splits: Vec<(String, String)>,
    /// Exact sizes of the splits that have one.
    pub sizes: BTreeMap<String, usize>,
    /// For JSON layouts: the folder image paths are relative to ("" = the task folder).
    pub image_dir: Option<String>,
}

impl TaskSpec {
    /// The spec of a demo task (VTAB layout) with the given split names.
    pub fn from_demo(t: &manifest::DemoTask, splits: &[String]) -> TaskSpec {
        TaskSpec {
            benchmark: Benchmark::Demo,
            name: t.name.clone(),
            title: t.title.clone(),
            folder: t.folder.clone(),
            classes: t.classes,
            domain: None,
            splits: splits.iter().map(|s| (s.clone(), format!("{s}.txt"))).collect(),
            sizes: t.sizes.clone(),
            image_dir: None,
        }
    }
}

/// Where a task's data is: the trainer's `[data]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSource {
    pub benchmark: Benchmark,
    pub task: String,
    /// The benchmark root: the folder that holds the task folders.
    pub root: PathBuf,
}

/// One image of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The image file (the list's relative path joined to the task or image folder).
    pub path: PathBuf,
    /// Class index in `0..num_classes` (FGVC ids already remapped).
    pub label: i64,
    /// 1-based line of the list file, or entry number of the JSON file.
    pub line: usize,
}

/// The items of one split, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitList {
    pub name: String,
    /// The list or JSON file.
    pub source: PathBuf,
    pub items: Vec<Item>,
    /// Whether `source` is a JSON file (item `line`s are then entry numbers).
    pub json: bool,
}

impl SplitList {
    /// Where item `i` is listed, for error messages.
    pub fn location(&self, i: usize) -> Location {
        Location::new(&self.source, self.items[i].line, self.json)
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the split has no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
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
}

#[derive(Debug, Clone)]
pub(crate) enum SplitFormat {
    /// `path label` lines, paths relative to the task folder.
    ListFile,
    /// JSON objects path -> class id, paths relative to `image_dir`; `class_ids` sorted.
    Json { image_dir: PathBuf, class_ids: Vec<i64> },
}

/// Opens a task: checks that its folder exists and, for FGVC, builds the class-id mapping
/// from the split files. List files are read by [`Task::split`].
pub fn open_task(src: &DataSource) -> Result<Task> {
    if src.benchmark == Benchmark::List {
        return open_list_task(src);
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
    Err(DataError::MissingTaskDir {
        dir: primary,
        hint: format!(
            "{} task {} expects <root>/{}/ holding {files}",
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
    let num_classes = list_num_classes(&dir, &splits)?;
    Ok(Task {
        benchmark: Benchmark::List,
        name: src.task.clone(),
        num_classes,
        dir,
        domain: None,
        expected_sizes: BTreeMap::new(),
        splits,
        format: SplitFormat::ListFile,
    })
}

/// The class count of a list task: the non-empty lines of `classes.txt`, else the largest
/// parseable label of the split files plus one (bad lines are left to [`Task::split`]).
pub(crate) fn list_num_classes(dir: &Path, splits: &[(String, PathBuf)]) -> Result<usize> {
    let classes_file = dir.join(CLASSES_FILE);
    if classes_file.is_file() {
        // Only counted: a class name need not be UTF-8.
        let bytes = std::fs::read(&classes_file).map_err(io_err(&classes_file))?;
        let n = bytes.split(|&b| b == b'\n').filter(|l| !l.trim_ascii().is_empty()).count();
        if n < 2 {
            return Err(DataError::Invalid(format!(
                "{}: lists {n} class names; a task needs at least 2",
                classes_file.display()
            )));
        }
        return Ok(n);
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
    Ok(n)
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
    /// The split names, in manifest order (sorted file names for `list`).
    pub fn split_names(&self) -> Vec<String> {
        self.splits.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The file of a split.
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
        if !path.is_file() {
            return Err(DataError::MissingSplitFile { path, split: name.into(), task: self.name.clone() });
        }
        let mut problems = Vec::new();
        let (items, json) = match &self.format {
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

/// Parses `path label` lines. Blank lines and lines starting with `#` are skipped; the label
/// is the last whitespace-separated field, so paths may contain spaces. Returns the items and
/// the lines that could not be parsed, a line that is not UTF-8 text among them (the other
/// lines are still read, so `data check` lists every such line).
pub(crate) fn parse_list(bytes: &[u8], file: &Path, base: &Path) -> (Vec<Item>, Vec<(Location, String)>) {
    let mut items = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let at = Location::new(file, i + 1, false);
        let line = match std::str::from_utf8(raw) {
            Ok(text) => text.trim(),
            Err(e) => {
                bad.push((at, not_utf8(raw, e.valid_up_to())));
                continue;
            }
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((path, label)) = line.rsplit_once(char::is_whitespace) else {
            bad.push((at, format!("`{line}` has no label; expected `<image path> <label>`")));
            continue;
        };
        match label.parse::<i64>() {
            Ok(label) => items.push(Item { path: base.join(path.trim_end()), label, line: i + 1 }),
            Err(_) => bad.push((at, format!("label `{label}` is not an integer (line `{line}`)"))),
        }
    }
    (items, bad)
}

/// What is wrong with a list line that is not UTF-8 text: the line as far as it can be shown,
/// and the first offending byte with its column.
fn not_utf8(raw: &[u8], valid_up_to: usize) -> String {
    let shown = String::from_utf8_lossy(raw.trim_ascii());
    format!(
        "the line is not UTF-8 text (byte 0x{:02x} at column {}): `{shown}`; save the file as UTF-8",
        raw[valid_up_to],
        valid_up_to + 1
    )
}

/// The entries of a JSON object in file order (serde_json's map would sort them).
pub(crate) fn read_json_entries(path: &Path) -> Result<Vec<(String, serde_json::Value)>> {
    struct Entries(Vec<(String, serde_json::Value)>);
    impl<'de> Deserialize<'de> for Entries {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Entries;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object mapping image paths to class ids")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> std::result::Result<Entries, A::Error> {
                    let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                    while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                        out.push(entry);
                    }
                    Ok(Entries(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    let text = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice::<Entries>(&text)
        .map(|e| e.0)
        .map_err(|e| DataError::Json { path: path.to_path_buf(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lines_parse_with_spaces_comments_and_crlf() {
        let text = "images/a.jpg 3\r\n\n# a comment\nimages/my photo.png 0\n";
        let (items, bad) = parse_list(text.as_bytes(), Path::new("t.txt"), Path::new("/d"));
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], Item { path: PathBuf::from("/d/images/a.jpg"), label: 3, line: 1 });
        assert_eq!(items[1].path, PathBuf::from("/d/images/my photo.png"));
        assert_eq!(items[1].line, 4);
    }

    #[test]
    fn bad_list_lines_name_the_line() {
        let (items, bad) = parse_list(b"a.jpg 1\nb.jpg\nc.jpg x\n", Path::new("t.txt"), Path::new("/d"));
        assert_eq!(items.len(), 1);
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].0.to_string(), "t.txt:2");
        assert!(bad[0].1.contains("no label"), "{}", bad[0].1);
        assert!(bad[1].1.contains("`x` is not an integer"), "{}", bad[1].1);
    }

    #[test]
    fn a_list_line_that_is_not_utf8_names_the_file_and_line() {
        // `caf\xe9` is Latin-1; the lines around it still parse.
        let (items, bad) =
            parse_list(b"a.jpg 1\r\nimages/caf\xe9.jpg 2\nc.jpg 0\n", Path::new("t.txt"), Path::new("/d"));
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].line, 3);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0.to_string(), "t.txt:2");
        assert!(bad[0].1.contains("not UTF-8") && bad[0].1.contains("0xe9 at column 11"), "{}", bad[0].1);
    }

    #[test]
    fn a_split_that_is_not_utf8_fails_at_the_line() {
        let tmp = tempfile::tempdir().unwrap();
        let task = tmp.path().join("mine");
        std::fs::create_dir_all(&task).unwrap();
        std::fs::write(task.join("train.txt"), b"a.png 0\nb.png 1\nimages/caf\xe9.png 1\n").unwrap();
        let src = DataSource { benchmark: Benchmark::List, task: "mine".into(), root: tmp.path().into() };
        let err = open_task(&src).and_then(|t| t.split("train")).unwrap_err().to_string();
        let at = format!("{}:3", task.join("train.txt").display());
        assert!(err.starts_with(&at) && err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn benchmarks_parse_from_their_names() {
        for b in Benchmark::ALL {
            assert_eq!(b.name().parse::<Benchmark>().unwrap(), b);
            assert_eq!(serde_json::to_string(&b).unwrap(), format!("\"{b}\""));
        }
        assert!("imagenet".parse::<Benchmark>().unwrap_err().contains("vtab, fgvc, demo, list"));
    }

    #[test]
    fn unknown_tasks_list_the_known_ones() {
        let err = Benchmark::Vtab.task("cifar10").unwrap_err().to_string();
        assert!(err.contains("no task `cifar10`") && err.contains("cifar, caltech101"), "{err}");
        assert_eq!(Benchmark::Fgvc.task("cub").unwrap().splits[0], ("train".into(), "train.json".into()));
    }
}
