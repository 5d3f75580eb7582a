//! The crate's error type. Every variant names the file (and the list line or JSON entry)
//! at fault, so a user can fix their data without reading code.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where an item comes from: a line of a list file, or an entry of a JSON split file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The split file.
    pub file: PathBuf,
    /// 1-based line of a list file, or 1-based entry number of a JSON object.
    pub line: usize,
    /// Whether `line` counts JSON entries rather than lines.
    pub json: bool,
}

impl Location {
    pub(crate) fn new(file: &Path, line: usize, json: bool) -> Self {
        Location { file: file.to_path_buf(), line, json }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.json {
            write!(f, "{} (entry {})", self.file.display(), self.line)
        } else {
            write!(f, "{}:{}", self.file.display(), self.line)
        }
    }
}

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// An embedded manifest does not parse or is inconsistent (a build defect, caught by tests).
    #[error("data manifest {name}: {message}")]
    Manifest {
        /// The manifest file name, e.g. `vtab-1k.toml`.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A task name the benchmark's manifest does not list.
    #[error("{benchmark} has no task `{task}`; known tasks: {known}")]
    UnknownTask {
        /// The benchmark, lowercase.
        benchmark: String,
        /// The name given.
        task: String,
        /// The manifest's task names, comma-separated.
        known: String,
    },
    /// The task folder is not where the layout says it should be.
    #[error("task folder {} not found: {hint}", dir.display())]
    MissingTaskDir {
        /// The folder looked for.
        dir: PathBuf,
        /// The expected layout.
        hint: String,
    },
    /// A split name the task does not have.
    #[error("task {task} has no split `{split}`; splits: {known}")]
    UnknownSplit {
        /// The task.
        task: String,
        /// The split asked for.
        split: String,
        /// The task's splits, comma-separated.
        known: String,
    },
    /// The list or JSON file of a split does not exist.
    #[error("split file {} is missing (split `{split}` of task {task})", path.display())]
    MissingSplitFile {
        /// The file looked for.
        path: PathBuf,
        /// The split.
        split: String,
        /// The task.
        task: String,
    },
    /// A list line or JSON entry that cannot be parsed.
    #[error("{at}: {message}")]
    BadEntry {
        /// The line or entry.
        at: Location,
        /// What is wrong, with the offending text.
        message: String,
    },
    /// A label outside `0..num_classes`.
    #[error("{at}: label {label} is out of range: task {task} has {classes} classes (labels 0..={})", classes.saturating_sub(1))]
    LabelOutOfRange {
        /// The line or entry.
        at: Location,
        /// The label as found (after remapping for FGVC).
        label: i64,
        /// The task.
        task: String,
        /// The task's class count.
        classes: usize,
    },
    /// A JSON split file with a syntax error or a value of the wrong type.
    #[error("{}: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// serde_json's message (with line and column).
        message: String,
    },
    /// The class ids found in the split files do not fit the manifest's class count.
    #[error("{}: the split files hold {found} distinct class ids but {task} has {expected} classes", dir.display())]
    ClassCount {
        /// The task folder.
        dir: PathBuf,
        /// The task.
        task: String,
        /// Class count from the manifest.
        expected: usize,
        /// Distinct ids found.
        found: usize,
    },
    /// A buffer the allocator could not give (an image size far too large, say).
    #[error("cannot allocate {bytes} bytes for {what}: not enough memory")]
    OutOfMemory {
        /// The size asked for.
        bytes: usize,
        /// What it was for.
        what: String,
    },
    /// A split with no images.
    #[error("{}: the split is empty", path.display())]
    EmptySplit {
        /// The split file.
        path: PathBuf,
    },
    /// An image that is missing, unreadable, truncated or in an unsupported format.
    #[error("{} (listed at {at}): {message}", image.display())]
    Image {
        /// The image file.
        image: PathBuf,
        /// The list line or JSON entry that names it.
        at: Location,
        /// What went wrong.
        message: String,
    },
    /// A CSV row of demo data that cannot be used.
    #[error("{source_name}, row {row}: {message}")]
    Csv {
        /// The file (or archive member) the rows come from.
        source_name: String,
        /// 1-based row.
        row: usize,
        /// What is wrong.
        message: String,
    },
    /// An IDX file (MNIST's format) of demo data that cannot be used.
    #[error("{source_name}: {message}")]
    Idx {
        /// The file (or archive member) the images or labels come from.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// A transform with impossible parameters, or one a set type does not support.
    #[error("transform {transform}: {message}")]
    Transform {
        /// The transform, debug-formatted.
        transform: String,
        /// What is wrong.
        message: String,
    },
    /// An image file given on its own (not through a split) that cannot be read or decoded.
    #[error("{}: {message}", path.display())]
    Unreadable {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A class folder of a folder task's split other than `train` that `train` does not have.
    #[error("{}: class folder `{class}` of split `{split}` is not a class of the train split (whose class folders are {known})", dir.display())]
    UnknownClass {
        /// The class folder.
        dir: PathBuf,
        /// Its name.
        class: String,
        /// The split it is in.
        split: String,
        /// The train split's class names, comma-separated (the first ten).
        known: String,
    },
    /// An image directly in a folder task's split folder, which belongs to no class.
    #[error("{}: an image directly in split folder `{split}/`; images go in class folders, `{split}/<class>/<image>`", path.display())]
    LooseImage {
        /// The image.
        path: PathBuf,
        /// The split.
        split: String,
    },
    /// A file or folder name that a list file or `classes.txt` cannot hold (not UTF-8, a line
    /// break, whitespace the format trims).
    #[error("{}: {message}; rename it", path.display())]
    BadName {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with the name.
        message: String,
    },
    /// Any other invalid argument, explained in the message.
    #[error("{0}")]
    Invalid(String),
}

/// Shorthand for the crate's results.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Wraps an `io::Error` with the path it concerns, for `map_err`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}
