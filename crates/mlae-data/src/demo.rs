//! The demo tasks: small real datasets that package registries carry (csv.gz files in PyPI
//! wheels, IDX files in Debian packages), turned into VTAB-layout task folders (PNG images plus
//! the four list files) so that the quickstart and the tests run the real loaders on real
//! images. The download lives in `cargo xtask fetch-demo`; the conversion lives here, where it
//! can be tested without a network. The generated tasks (`crate::structured`) are written by
//! the same code.

use crate::catalogue::TaskSpec;
use crate::check::{CheckOptions, check_spec};
use crate::error::{DataError, Result, io_err};
use crate::manifest::{CsvSource, DemoSource, DemoTask, IdxFiles};
use crate::rng::{DOMAIN_DEMO_SPLIT, Rng};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Written last into a built task folder: what it was built from.
pub const STAMP_FILE: &str = "SOURCE.txt";
/// Bumped when the folder layout or the split procedure changes, so old builds are redone.
const LAYOUT_VERSION: u32 = 1;

/// Rows of a demo csv: grey images scaled to 0..=255, and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoRows {
    pub side: usize,
    /// `labels.len() * side * side` bytes, row-major per image.
    pub pixels: Vec<u8>,
    pub labels: Vec<i64>,
}

/// Parses a gzip-compressed csv of `side * side` pixel values in `0..=max_value` then a label
/// per row (integers; `3.0` is accepted), checking the row count and every value.
pub fn parse_csv_gz(gz: &[u8], src: &CsvSource, classes: usize, source_name: &str) -> Result<DemoRows> {
    let bad = |row: usize, message: String| DataError::Csv { source_name: source_name.into(), row, message };
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .map_err(|e| bad(0, format!("not gzip text: {e}")))?;
    let side = src.side as usize;
    let fields = side * side + 1;
    let mut pixels = Vec::with_capacity(src.rows * side * side);
    let mut labels = Vec::with_capacity(src.rows);
    let max = src.max_value as u64;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let row = i + 1;
        let values: Vec<&str> = line.trim().split(',').collect();
        if values.len() != fields {
            return Err(bad(
                row,
                format!("{} values, expected {fields} ({side}x{side} pixels and a label)", values.len()),
            ));
        }
        let parse = |s: &str| -> Option<u64> {
            let v: f64 = s.trim().parse().ok()?;
            (v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64).then_some(v as u64)
        };
        for (col, s) in values[..fields - 1].iter().enumerate() {
            match parse(s) {
                Some(v) if v <= max => pixels.push(((v * 510 + max) / (2 * max)) as u8),
                _ => {
                    return Err(bad(
                        row,
                        format!("column {}: `{s}` is not an integer in 0..={max}", col + 1),
                    ));
                }
            }
        }
        match parse(values[fields - 1]) {
            Some(l) if (l as usize) < classes => labels.push(l as i64),
            _ => {
                return Err(bad(
                    row,
                    format!("label `{}` is not an integer in 0..{classes}", values[fields - 1]),
                ));
            }
        }
    }
    if labels.len() != src.rows {
        return Err(bad(labels.len(), format!("{} rows, expected {}", labels.len(), src.rows)));
    }
    Ok(DemoRows { side, pixels, labels })
}

/// The four gzip-compressed IDX files of a Debian source, as read from the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxMembers {
    pub train_images: Vec<u8>,
    pub train_labels: Vec<u8>,
    pub test_images: Vec<u8>,
    pub test_labels: Vec<u8>,
}

/// Parses a gzip-compressed IDX image file (`u8`, n x side x side) and its label file (`u8`,
/// n), checking the magic numbers, the dimensions, the item count and every label. Pixel values
/// are kept as they are (0..=255).
pub fn parse_idx_gz(
    images_gz: &[u8],
    labels_gz: &[u8],
    files: &IdxFiles,
    side: u32,
    classes: usize,
) -> Result<DemoRows> {
    let side = side as usize;
    let images = read_idx(images_gz, &files.images, &[files.rows, side, side])?;
    let labels = read_idx(labels_gz, &files.labels, &[files.rows])?;
    let labels = labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if (l as usize) < classes {
                Ok(l as i64)
            } else {
                Err(DataError::Idx {
                    source_name: files.labels.clone(),
                    message: format!("item {i}: label {l} is not in 0..{classes}"),
                })
            }
        })
        .collect::<Result<Vec<i64>>>()?;
    Ok(DemoRows { side, pixels: images, labels })
}

/// The data of a gzip-compressed IDX file of unsigned bytes with exactly the dimensions `dims`.
fn read_idx(gz: &[u8], name: &str, dims: &[usize]) -> Result<Vec<u8>> {
    let bad = |message: String| DataError::Idx { source_name: name.into(), message };
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut bytes).map_err(|e| bad(format!("not gzip: {e}")))?;
    let header = 4 + 4 * dims.len();
    if bytes.len() < 4 {
        return Err(bad(format!("{} bytes, too short for an IDX header", bytes.len())));
    }
    // The magic number: two zero bytes, the element type (0x08: unsigned byte), the rank.
    if bytes[..3] != [0, 0, 0x08] || bytes[3] as usize != dims.len() {
        return Err(bad(format!(
            "magic {:02x?}, expected [00, 00, 08, {:02x}] (unsigned bytes, {} dimensions)",
            &bytes[..4],
            dims.len(),
            dims.len()
        )));
    }
    if bytes.len() < header {
        return Err(bad(format!("{} bytes, too short for an IDX header", bytes.len())));
    }
    let got: Vec<usize> =
        bytes[4..header].chunks(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    if got != dims {
        return Err(bad(format!("dimensions {got:?}, expected {dims:?}")));
    }
    let len: usize = dims.iter().product();
    if bytes.len() != header + len {
        return Err(bad(format!("{} data bytes, expected {len}", bytes.len() - header)));
    }
    bytes.drain(..header);
    Ok(bytes)
}

/// Row indices of each split, in shuffled order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSplits {
    pub train800: Vec<usize>,
    pub val200: Vec<usize>,
    pub test: Vec<usize>,
}

/// Splits `per_class` items into `total` by largest remainder: class `c` gets
/// `floor(n_c * total / n)` plus one for the classes with the largest remainders (ties to the
/// lower class), so every class keeps its share.
fn allocate(per_class: &[usize], total: usize) -> Vec<usize> {
    let n: usize = per_class.iter().sum();
    if n == 0 {
        return vec![0; per_class.len()];
    }
    let mut quota: Vec<usize> = per_class.iter().map(|&c| c * total / n).collect();
    let mut order: Vec<usize> = (0..per_class.len()).collect();
    order.sort_by_key(|&c| (std::cmp::Reverse(per_class[c] * total % n), c));
    let mut left = total - quota.iter().sum::<usize>();
    for c in order {
        if left == 0 {
            break;
        }
        if quota[c] < per_class[c] {
            quota[c] += 1;
            left -= 1;
        }
    }
    quota
}

/// A seeded, class-stratified split: rows are shuffled, then each class gives its share to
/// train800val200 (its first rows in shuffled order), of which its share again to train800 and
/// the rest to val200; test takes each class's share of the rows left. Lists are in a second
/// seeded shuffled order.
pub fn stratified_splits(
    labels: &[i64],
    classes: usize,
    sizes: &BTreeMap<String, usize>,
    seed: u64,
) -> Result<DemoSplits> {
    let (n_train, n_val, n_test) = split_sizes(sizes)?;
    stratified(labels, classes, [n_train, n_val, n_test], seed, 0)
}

/// The splits of a source with separate training and test images: train800 and val200 are
/// drawn from `train_labels` exactly as [`stratified_splits`] draws them (same seed, same
/// stream), test from `test_labels` the same way on its own stream. Test indices are rows of
/// the test pool.
pub fn pooled_splits(
    train_labels: &[i64],
    test_labels: &[i64],
    classes: usize,
    sizes: &BTreeMap<String, usize>,
    seed: u64,
) -> Result<DemoSplits> {
    let (n_train, n_val, n_test) = split_sizes(sizes)?;
    let trainval = stratified(train_labels, classes, [n_train, n_val, 0], seed, 0)?;
    let test = stratified(test_labels, classes, [0, 0, n_test], seed, 1)?;
    Ok(DemoSplits { train800: trainval.train800, val200: trainval.val200, test: test.test })
}

pub(crate) fn split_sizes(sizes: &BTreeMap<String, usize>) -> Result<(usize, usize, usize)> {
    let size = |name: &str| {
        sizes.get(name).copied().ok_or_else(|| DataError::Invalid(format!("demo task sizes lack `{name}`")))
    };
    Ok((size("train800")?, size("val200")?, size("test")?))
}

/// `counts` = [train800, val200, test] rows drawn from `labels`, on random stream `stream`.
fn stratified(
    labels: &[i64],
    classes: usize,
    counts: [usize; 3],
    seed: u64,
    stream: u64,
) -> Result<DemoSplits> {
    let [n_train, n_val, n_test] = counts;
    if n_train + n_val + n_test > labels.len() {
        return Err(DataError::Invalid(format!(
            "the splits need {} rows but there are {}",
            n_train + n_val + n_test,
            labels.len()
        )));
    }
    let mut order: Vec<usize> = (0..labels.len()).collect();
    let mut rng = Rng::new(seed, DOMAIN_DEMO_SPLIT, stream, 0);
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for &row in &order {
        by_class[labels[row] as usize].push(row);
    }
    let counts: Vec<usize> = by_class.iter().map(Vec::len).collect();
    let trainval = allocate(&counts, n_train + n_val);
    let train = allocate(&trainval, n_train);
    let rest: Vec<usize> = counts.iter().zip(&trainval).map(|(c, t)| c - t).collect();
    let test = allocate(&rest, n_test);
    // split[row]: 0 train800, 1 val200, 2 test, 3 unused.
    let mut split = vec![3u8; labels.len()];
    for (c, rows) in by_class.iter().enumerate() {
        for (k, &row) in rows.iter().enumerate() {
            split[row] = if k < train[c] {
                0
            } else if k < trainval[c] {
                1
            } else if k < trainval[c] + test[c] {
                2
            } else {
                3
            };
        }
    }
    // List order: a second shuffle, so that no list starts with a run of one class (the
    // selection above takes each class's first rows, which cluster by class along `order`).
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let pick = |s: u8| order.iter().copied().filter(|&r| split[r] == s).collect::<Vec<_>>();
    Ok(DemoSplits { train800: pick(0), val200: pick(1), test: pick(2) })
}

/// What a build wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltTask {
    pub dir: PathBuf,
    /// (split, entries) in list-file order.
    pub splits: Vec<(String, usize)>,
    /// Bytes written (images and list files).
    pub bytes: u64,
}

/// Whether a task folder is usable as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    Missing,
    /// Built from the manifest's source with the manifest's seed, and `data check` passes.
    Current,
    /// Present but not usable as is; the reason.
    Stale(String),
}

/// `SOURCE.txt`: what the task was built from and how. `sha256` is the value of the last line
/// (the digest of what was read), which the staleness check ignores.
pub(crate) fn stamp_text(task: &DemoTask, sha256: &str) -> String {
    let mut text = format!("source = \"{}\"\n", task.source.describe());
    if let DemoSource::Debian(src) = &task.source {
        text += &format!("archive = \"{}\"\nurl = \"{}\"\n", src.archive, src.url);
        let size = |s: &str| task.sizes.get(s).copied().unwrap_or(0);
        text += &format!(
            "subsample = \"train800val200 = {} of the {} images of {} (train800 {}, val200 {}); test = {} \
             of the {} images of {}; class-stratified seeded shuffles\"\n",
            size("train800val200"),
            src.train.rows,
            src.train.images,
            size("train800"),
            size("val200"),
            size("test"),
            src.test.rows,
            src.test.images
        );
    }
    if let Some(licence) = &task.licence {
        text += &format!("licence = \"{licence}\"\n");
    }
    text + &format!("seed = {}\nlayout = {LAYOUT_VERSION}\nsha256 = {sha256}\n", task.seed)
}

/// Whether `<demo_root>/<folder>` was built from this task's source and passes `data check`.
pub fn task_state(task: &DemoTask, splits: &[String], demo_root: &Path) -> TaskState {
    let dir = demo_root.join(&task.folder);
    if !dir.exists() {
        return TaskState::Missing;
    }
    let Ok(stamp) = std::fs::read_to_string(dir.join(STAMP_FILE)) else {
        return TaskState::Stale(format!("no {STAMP_FILE}"));
    };
    let expected = stamp_text(task, "\"\"");
    let head = |s: &str| s.lines().filter(|l| !l.starts_with("sha256")).collect::<Vec<_>>().join("\n");
    if head(&stamp) != head(&expected) {
        return TaskState::Stale(format!("{STAMP_FILE} records another source, seed or layout"));
    }
    let report = check_spec(&TaskSpec::from_demo(task, splits), demo_root, &CheckOptions { decode: true });
    if report.is_ok() {
        TaskState::Current
    } else {
        let n = report.all_problems().count();
        let first = report.all_problems().next().map(ToString::to_string).unwrap_or_default();
        TaskState::Stale(format!("{n} problem(s), e.g. {first}"))
    }
}

/// Builds `<demo_root>/<folder>` of a `pypi` task from the csv.gz bytes: PNGs under
/// `images/train800val200/` and `images/test/` named by csv row, and the four list files.
/// Written into a temporary folder and renamed into place, so an interrupted build never
/// leaves a task that looks complete; an existing folder is replaced.
pub fn build_task(gz: &[u8], task: &DemoTask, demo_root: &Path) -> Result<BuiltTask> {
    let DemoSource::Pypi(src) = &task.source else {
        return Err(DataError::Invalid(format!("demo task {}: not a csv.gz (PyPI) source", task.name)));
    };
    let rows = parse_csv_gz(gz, src, task.classes, &task.source.describe())?;
    let splits = stratified_splits(&rows.labels, task.classes, &task.sizes, task.seed)?;
    let stamp = stamp_text(task, &format!("\"{}\"", sha2_hex(gz)));
    write_task(&rows, &rows, &splits, task, &stamp, demo_root)
}

/// Builds `<demo_root>/<folder>` of a `debian` task from its four IDX files: train800 and
/// val200 from the training images (PNGs under `images/train800val200/`, named by their index
/// in the training file), test from the test images (`images/test/`, by index in the test
/// file). Written like [`build_task`]; `SOURCE.txt` records each file's SHA-256.
pub fn build_deb_task(members: &IdxMembers, task: &DemoTask, demo_root: &Path) -> Result<BuiltTask> {
    let DemoSource::Debian(src) = &task.source else {
        return Err(DataError::Invalid(format!("demo task {}: not an IDX (Debian) source", task.name)));
    };
    let train =
        parse_idx_gz(&members.train_images, &members.train_labels, &src.train, src.side, task.classes)?;
    let test = parse_idx_gz(&members.test_images, &members.test_labels, &src.test, src.side, task.classes)?;
    let splits = pooled_splits(&train.labels, &test.labels, task.classes, &task.sizes, task.seed)?;
    let digests = [
        (&src.train.images, &members.train_images),
        (&src.train.labels, &members.train_labels),
        (&src.test.images, &members.test_images),
        (&src.test.labels, &members.test_labels),
    ]
    .map(|(name, bytes)| format!("\"{name}\" = \"{}\"", sha2_hex(bytes)));
    let stamp = stamp_text(task, &format!("{{ {} }}", digests.join(", ")));
    write_task(&train, &test, &splits, task, &stamp, demo_root)
}

/// Writes the task folder: train800 and val200 are rows of `trainval`, test rows of `test`
/// (the same rows for a single-pool source); each image is named by its row.
pub(crate) fn write_task(
    trainval: &DemoRows,
    test: &DemoRows,
    splits: &DemoSplits,
    task: &DemoTask,
    stamp: &str,
    demo_root: &Path,
) -> Result<BuiltTask> {
    std::fs::create_dir_all(demo_root).map_err(io_err(demo_root))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", task.folder))
        .suffix(".tmp")
        .tempdir_in(demo_root)
        .map_err(io_err(demo_root))?;
    let root = tmp.path();
    // Temporary folders are private (0700); the built task is an ordinary folder.
    crate::decoded::make_world_readable(root, true).map_err(io_err(root))?;
    let image_rel = |dir: &str, row: usize| format!("images/{dir}/{row:05}.png");
    let mut jobs: Vec<(&DemoRows, usize, String)> = Vec::new();
    for &row in splits.train800.iter().chain(&splits.val200) {
        jobs.push((trainval, row, image_rel("train800val200", row)));
    }
    for &row in &splits.test {
        jobs.push((test, row, image_rel("test", row)));
    }
    for dir in ["images/train800val200", "images/test"] {
        std::fs::create_dir_all(root.join(dir)).map_err(io_err(&root.join(dir)))?;
    }
    let bytes: Vec<Result<u64>> = jobs
        .par_iter()
        .map(|(rows, row, rel)| {
            let path = root.join(rel);
            let side = rows.side;
            let px = &rows.pixels[row * side * side..(row + 1) * side * side];
            image::save_buffer_with_format(
                &path,
                px,
                side as u32,
                side as u32,
                image::ExtendedColorType::L8,
                image::ImageFormat::Png,
            )
            .map_err(|e| DataError::Invalid(format!("{}: cannot write PNG: {e}", path.display())))?;
            Ok(std::fs::metadata(&path).map_err(io_err(&path))?.len())
        })
        .collect();
    let mut total = bytes.into_iter().sum::<Result<u64>>()?;
    let lines = |dir: &str, rows: &DemoRows, picked: &[usize]| -> String {
        picked.iter().map(|&r| format!("{} {}\n", image_rel(dir, r), rows.labels[r])).collect()
    };
    let trainval_rows: Vec<usize> = splits.train800.iter().chain(&splits.val200).copied().collect();
    let lists = [
        ("train800", lines("train800val200", trainval, &splits.train800)),
        ("val200", lines("train800val200", trainval, &splits.val200)),
        ("train800val200", lines("train800val200", trainval, &trainval_rows)),
        ("test", lines("test", test, &splits.test)),
    ];
    for (name, text) in &lists {
        let path = root.join(format!("{name}.txt"));
        std::fs::write(&path, text).map_err(io_err(&path))?;
        total += text.len() as u64;
    }
    std::fs::write(root.join(STAMP_FILE), stamp).map_err(io_err(root))?;

    let dest = demo_root.join(&task.folder);
    let built = tmp.keep();
    if dest.exists() {
        let old = demo_root.join(format!(".{}.old-{}", task.folder, std::process::id()));
        std::fs::rename(&dest, &old).map_err(io_err(&dest))?;
        std::fs::rename(&built, &dest).map_err(io_err(&dest))?;
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    } else {
        std::fs::rename(&built, &dest).map_err(io_err(&dest))?;
    }
    let splits = lists.iter().map(|(n, t)| (n.to_string(), t.lines().count())).collect();
    Ok(BuiltTask { dir: dest, splits, bytes: total })
}

pub(crate) fn sha2_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
