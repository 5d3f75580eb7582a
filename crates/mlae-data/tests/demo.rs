//! The csv.gz -> VTAB-layout conversion on a tiny generated csv.gz.

use flate2::{Compression, write::GzEncoder};
use mlae_data::demo::{TaskState, build_task, parse_csv_gz, stratified_splits, task_state};
use mlae_data::manifest::{CsvSource, DemoTask};
use mlae_data::{Benchmark, DataError, DataSource, Transform, load_images, open_task};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

const SPLITS: [&str; 4] = ["train800", "val200", "train800val200", "test"];

/// `rows` 4x4 images with values 0..=16 (pixel j of row i is (i + j) % 17), labels sorted by
/// class like the real MNIST-5k file, gzip-compressed.
fn csv_gz(rows: usize, classes: usize) -> Vec<u8> {
    let mut text = String::new();
    for i in 0..rows {
        let values: Vec<String> = (0..16).map(|j| ((i + j) % 17).to_string()).collect();
        text.push_str(&format!("{},{}\n", values.join(","), i * classes / rows));
    }
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap()
}

fn task(rows: usize, train: usize, val: usize, test: usize) -> DemoTask {
    let sizes: BTreeMap<String, usize> =
        [("train800", train), ("val200", val), ("train800val200", train + val), ("test", test)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
    DemoTask {
        name: "mnist5k".into(),
        title: "tiny".into(),
        folder: "mnist5k".into(),
        classes: 4,
        sizes,
        seed: 0,
        source: CsvSource {
            package: "pkg".into(),
            version: "1.0".into(),
            member: "data/tiny.csv.gz".into(),
            rows,
            side: 4,
            max_value: 16,
        },
    }
}

fn splits() -> Vec<String> {
    SPLITS.map(String::from).to_vec()
}

#[test]
fn csv_rows_are_parsed_and_scaled_to_0_255() {
    let t = task(40, 16, 4, 12);
    let rows = parse_csv_gz(&csv_gz(40, 4), &t.source, 4, "tiny").unwrap();
    assert_eq!((rows.side, rows.labels.len(), rows.pixels.len()), (4, 40, 40 * 16));
    // Row 1, pixel 15: (1 + 15) % 17 = 16 = max -> 255; row 0 pixel 0: 0 -> 0; 8 -> 128 (rounded).
    assert_eq!((rows.pixels[16 + 15], rows.pixels[0], rows.pixels[8]), (255, 0, 128));
    assert_eq!(rows.labels.iter().filter(|&&l| l == 3).count(), 10);
}

#[test]
fn bad_csv_rows_name_the_row() {
    let t = task(3, 1, 1, 1);
    let gz = |text: &str| {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let row = |v: &str, label: &str| format!("{}{v},{label}\n", "0,".repeat(15));
    let cases = [
        (row("0", "0") + &row("17", "1") + &row("0", "2"), "row 2", "0..=16"),
        (row("0", "0") + &row("0", "1") + &row("0", "4"), "row 3", "label `4`"),
        (row("0", "0") + "1,2,3\n", "row 2", "3 values, expected 17"),
        (row("0", "0") + &row("0", "1"), "row 2", "2 rows, expected 3"),
    ];
    for (text, at, what) in cases {
        let err = parse_csv_gz(&gz(&text), &t.source, 4, "tiny.csv.gz").unwrap_err();
        assert!(matches!(err, DataError::Csv { .. }));
        let msg = err.to_string();
        assert!(msg.contains(at) && msg.contains(what), "{msg}");
    }
    assert!(parse_csv_gz(b"plain text", &t.source, 4, "x").unwrap_err().to_string().contains("gzip"));
}

#[test]
fn splits_are_disjoint_stratified_and_seeded() {
    let labels: Vec<i64> = (0..200).map(|i| (i / 50) as i64).collect();
    let t = task(200, 40, 12, 60);
    let s = stratified_splits(&labels, 4, &t.sizes, 0).unwrap();
    assert_eq!((s.train800.len(), s.val200.len(), s.test.len()), (40, 12, 60));
    let all: BTreeSet<usize> = s.train800.iter().chain(&s.val200).chain(&s.test).copied().collect();
    assert_eq!(all.len(), 112, "no row is in two splits");
    let per_class = |rows: &[usize]| {
        let mut c = [0usize; 4];
        rows.iter().for_each(|&r| c[labels[r] as usize] += 1);
        c
    };
    assert_eq!(per_class(&s.train800), [10; 4]);
    assert_eq!(per_class(&s.val200), [3; 4]);
    assert_eq!(per_class(&s.test), [15; 4]);
    // Shuffled: the rows are not in file order, and classes are interleaved.
    assert!(s.train800.windows(2).any(|w| w[0] > w[1]));
    assert_eq!(s, stratified_splits(&labels, 4, &t.sizes, 0).unwrap());
    assert_ne!(s, stratified_splits(&labels, 4, &t.sizes, 1).unwrap());
}

#[test]
fn uneven_classes_get_their_share_and_test_can_take_the_rest() {
    // 3 classes of 7, 5 and 3 rows; 10 for training, the 5 left for test.
    let labels: Vec<i64> = [0; 7].into_iter().chain([1; 5]).chain([2; 3]).collect();
    let t = task(15, 8, 2, 5);
    let s = stratified_splits(&labels, 3, &t.sizes, 4).unwrap();
    let mut trainval = [0usize; 3];
    s.train800.iter().chain(&s.val200).for_each(|&r| trainval[labels[r] as usize] += 1);
    // Shares of 10 out of 15: 4.67, 3.33, 2 -> 5, 3, 2 by largest remainder.
    assert_eq!(trainval, [5, 3, 2]);
    assert_eq!(s.test.len(), 5);
    let too_many = task(15, 8, 2, 6);
    assert!(stratified_splits(&labels, 3, &too_many.sizes, 0).is_err());
}

#[test]
fn a_built_task_loads_like_a_vtab_task_and_is_recognised_as_current() {
    let tmp = tempfile::tempdir().unwrap();
    let t = task(60, 20, 8, 24);
    let gz = csv_gz(60, 4);
    assert_eq!(task_state(&t, &splits(), tmp.path()), TaskState::Missing);
    let built = build_task(&gz, &t, tmp.path()).unwrap();
    assert_eq!(built.dir, tmp.path().join("mnist5k"));
    let counts: Vec<(&str, usize)> = built.splits.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    assert_eq!(counts, [("train800", 20), ("val200", 8), ("train800val200", 28), ("test", 24)]);
    assert!(built.bytes > 0);
    assert_eq!(task_state(&t, &splits(), tmp.path()), TaskState::Current);
    // Nothing but the task folder is left behind.
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["mnist5k"]);

    // The real loader reads it: grey PNGs come out as RGB with R = G = B.
    let task = open_task(&DataSource {
        benchmark: Benchmark::Demo,
        task: "mnist5k".into(),
        root: tmp.path().into(),
    })
    .unwrap();
    let test = task.split("test").unwrap();
    assert_eq!(test.len(), 24);
    let set = load_images(&test, &Transform::vtab(8), task.num_classes, None, 0).unwrap();
    assert!(set.pixels().chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    let rows = parse_csv_gz(&gz, &t.source, 4, "tiny").unwrap();
    let first_row: usize = test.items[0].path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    assert_eq!(test.items[0].label, rows.labels[first_row]);

    // Rebuilding with another seed replaces the folder; a stamp from another seed is stale.
    let mut other = t.clone();
    other.seed = 9;
    assert!(matches!(task_state(&other, &splits(), tmp.path()), TaskState::Stale(r) if r.contains("seed")));
    build_task(&gz, &other, tmp.path()).unwrap();
    assert_eq!(task_state(&other, &splits(), tmp.path()), TaskState::Current);

    // A damaged folder is stale, not current.
    let rebuilt = open_task(&DataSource {
        benchmark: Benchmark::Demo,
        task: "mnist5k".into(),
        root: tmp.path().into(),
    })
    .unwrap();
    std::fs::remove_file(&rebuilt.split("val200").unwrap().items[1].path).unwrap();
    match task_state(&other, &splits(), tmp.path()) {
        TaskState::Stale(reason) => assert!(reason.contains("missing image"), "{reason}"),
        s => panic!("{s:?}"),
    }
}

#[test]
fn a_failed_build_leaves_nothing_that_looks_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = task(60, 20, 8, 24);
    t.source.rows = 61; // the csv has 60: parsing fails before anything is written
    assert!(build_task(&csv_gz(60, 4), &t, tmp.path()).is_err());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    assert_eq!(task_state(&t, &splits(), tmp.path()), TaskState::Missing);
}
