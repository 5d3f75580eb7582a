//! The csv.gz -> VTAB-layout and IDX -> VTAB-layout conversions on tiny generated files.

use flate2::{Compression, write::GzEncoder};
use mlae_data::demo::{
    IdxMembers, STAMP_FILE, TaskState, build_deb_task, build_task, parse_csv_gz, parse_idx_gz, pooled_splits,
    stratified_splits, task_state,
};
use mlae_data::manifest::{CsvSource, DebSource, DemoGroup, DemoSource, DemoTask, IdxFiles};
use mlae_data::{Benchmark, DataError, DataSource, Transform, load_images, open_task};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

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
        group: DemoGroup::Image,
        opt_in: false,
        sizes,
        seed: 0,
        licence: None,
        source: DemoSource::Pypi(CsvSource {
            package: "pkg".into(),
            version: "1.0".into(),
            member: "data/tiny.csv.gz".into(),
            rows,
            side: 4,
            max_value: 16,
        }),
    }
}

fn csv(t: &DemoTask) -> &CsvSource {
    match &t.source {
        DemoSource::Pypi(src) => src,
        s => panic!("not a csv source: {s:?}"),
    }
}

fn splits() -> Vec<String> {
    SPLITS.map(String::from).to_vec()
}

#[test]
fn csv_rows_are_parsed_and_scaled_to_0_255() {
    let t = task(40, 16, 4, 12);
    let rows = parse_csv_gz(&csv_gz(40, 4), csv(&t), 4, "tiny").unwrap();
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
        let err = parse_csv_gz(&gz(&text), csv(&t), 4, "tiny.csv.gz").unwrap_err();
        assert!(matches!(err, DataError::Csv { .. }));
        let msg = err.to_string();
        assert!(msg.contains(at) && msg.contains(what), "{msg}");
    }
    assert!(parse_csv_gz(b"plain text", csv(&t), 4, "x").unwrap_err().to_string().contains("gzip"));
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
        split: None,
    })
    .unwrap();
    let test = task.split("test").unwrap();
    assert_eq!(test.len(), 24);
    let set = load_images(&test, &Transform::vtab(8), task.num_classes, None, 0).unwrap();
    assert!(set.pixels().chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    let rows = parse_csv_gz(&gz, csv(&t), 4, "tiny").unwrap();
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
        split: None,
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
    if let DemoSource::Pypi(src) = &mut t.source {
        src.rows = 61; // the csv has 60: parsing fails before anything is written
    }
    assert!(build_task(&csv_gz(60, 4), &t, tmp.path()).is_err());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    assert_eq!(task_state(&t, &splits(), tmp.path()), TaskState::Missing);
}

/// A gzip-compressed IDX file of unsigned bytes.
fn idx_gz(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut raw = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        raw.extend(d.to_be_bytes());
    }
    raw.extend(data);
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

/// `n` 4x4 images (pixel j of image i is (start + 16 i + j) % 256) and their labels, sorted by
/// class like the real files are not (so the test sees the shuffle), gzip-compressed IDX.
fn idx_pool(n: usize, classes: usize, start: usize) -> (Vec<u8>, Vec<u8>, Vec<i64>) {
    let pixels: Vec<u8> = (0..n * 16).map(|k| ((start + k) % 256) as u8).collect();
    let labels: Vec<i64> = (0..n).map(|i| (i * classes / n) as i64).collect();
    let label_bytes: Vec<u8> = labels.iter().map(|&l| l as u8).collect();
    (idx_gz(&[n as u32, 4, 4], &pixels), idx_gz(&[n as u32], &label_bytes), labels)
}

fn deb_task(train_rows: usize, test_rows: usize, train: usize, val: usize, test: usize) -> DemoTask {
    let mut t = task(0, train, val, test);
    t.name = "tiny_deb".into();
    t.folder = "tiny_deb".into();
    t.licence = Some("MIT".into());
    let files = |prefix: &str, rows: usize| IdxFiles {
        images: format!("{prefix}-images-idx3-ubyte.gz"),
        labels: format!("{prefix}-labels-idx1-ubyte.gz"),
        rows,
    };
    t.source = DemoSource::Debian(DebSource {
        package: "dataset-tiny".into(),
        version: "0.1-1".into(),
        archive: "Debian test main".into(),
        url: "https://deb.example/pool/dataset-tiny_0.1-1_all.deb".into(),
        sha256: "0".repeat(64),
        dir: "usr/share/datasets/tiny".into(),
        train: files("train", train_rows),
        test: files("t10k", test_rows),
        side: 4,
    });
    t
}

fn members(train_rows: usize, test_rows: usize) -> (IdxMembers, Vec<i64>, Vec<i64>) {
    let (train_images, train_labels, train) = idx_pool(train_rows, 4, 0);
    let (test_images, test_labels, test) = idx_pool(test_rows, 4, 100);
    (IdxMembers { train_images, train_labels, test_images, test_labels }, train, test)
}

#[test]
fn idx_files_are_parsed_and_every_header_and_label_checked() {
    let t = deb_task(12, 8, 4, 2, 4);
    let DemoSource::Debian(src) = &t.source else { unreachable!() };
    let (images, labels, expected) = idx_pool(12, 4, 5);
    let rows = parse_idx_gz(&images, &labels, &src.train, 4, 4).unwrap();
    assert_eq!((rows.side, rows.labels.clone(), rows.pixels.len()), (4, expected, 12 * 16));
    assert_eq!((rows.pixels[0], rows.pixels[16 + 3]), (5, 24), "pixel values are kept as they are");

    let err = |images: &[u8], labels: &[u8]| {
        let e = parse_idx_gz(images, labels, &src.train, 4, 4).unwrap_err();
        assert!(matches!(e, DataError::Idx { .. }), "{e:?}");
        e.to_string()
    };
    let px = vec![0u8; 12 * 16];
    let msg = err(&idx_gz(&[12, 4, 5], &vec![0; 12 * 20]), &labels);
    assert!(
        msg.starts_with("train-images-idx3-ubyte.gz: dimensions [12, 4, 5], expected [12, 4, 4]"),
        "{msg}"
    );
    let msg = err(&idx_gz(&[12, 4, 4], &px[..100]), &labels);
    assert!(msg.contains("100 data bytes, expected 192"), "{msg}");
    let msg = err(&images, &idx_gz(&[12, 4, 4], &px));
    assert!(msg.starts_with("train-labels-idx1-ubyte.gz: magic") && msg.contains("1 dimensions"), "{msg}");
    let msg = err(&images, &idx_gz(&[11], &[0; 11]));
    assert!(msg.contains("dimensions [11], expected [12]"), "{msg}");
    let mut bad = vec![0u8; 12];
    bad[7] = 4;
    let msg = err(&images, &idx_gz(&[12], &bad));
    assert!(msg.contains("item 7: label 4 is not in 0..4"), "{msg}");
    assert!(err(b"plain", &labels).contains("not gzip"));
    let wide = {
        // Element type 0x0d (float) instead of unsigned byte.
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&idx_gz(&[12, 4, 4], &px)[..]).read_to_end(&mut raw).unwrap();
        raw[2] = 0x0d;
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&raw).unwrap();
        gz.finish().unwrap()
    };
    assert!(err(&wide, &labels).contains("magic [00, 00, 0d, 03]"));
}

#[test]
fn pooled_splits_draw_train_from_the_training_pool_and_test_from_the_test_pool() {
    let train: Vec<i64> = (0..200).map(|i| (i / 50) as i64).collect();
    let test: Vec<i64> = (0..100).map(|i| (i % 4) as i64).collect();
    let t = task(0, 40, 12, 20);
    let s = pooled_splits(&train, &test, 4, &t.sizes, 3).unwrap();
    assert_eq!((s.train800.len(), s.val200.len(), s.test.len()), (40, 12, 20));
    let per_class = |labels: &[i64], rows: &[usize]| {
        let mut c = [0usize; 4];
        rows.iter().for_each(|&r| c[labels[r] as usize] += 1);
        c
    };
    assert_eq!(per_class(&train, &s.train800), [10; 4]);
    assert_eq!(per_class(&train, &s.val200), [3; 4]);
    assert_eq!(per_class(&test, &s.test), [5; 4]);
    assert!(s.test.iter().all(|&r| r < 100), "test rows index the test pool");
    let trainval: BTreeSet<usize> = s.train800.iter().chain(&s.val200).copied().collect();
    assert_eq!(trainval.len(), 52);
    // train800 and val200 are what the single-pool split draws when it draws no test rows.
    let mut no_test = t.sizes.clone();
    no_test.insert("test".into(), 0);
    let single = stratified_splits(&train, 4, &no_test, 3).unwrap();
    assert_eq!((&s.train800, &s.val200), (&single.train800, &single.val200));
    assert_eq!(s, pooled_splits(&train, &test, 4, &t.sizes, 3).unwrap());
    assert_ne!(s.test, pooled_splits(&train, &test, 4, &t.sizes, 4).unwrap().test);
    let too_many = task(0, 40, 12, 101);
    assert!(pooled_splits(&train, &test, 4, &too_many.sizes, 3).is_err());
}

#[test]
fn a_deb_task_builds_loads_and_records_its_source_licence_and_subsampling() {
    let tmp = tempfile::tempdir().unwrap();
    let t = deb_task(60, 40, 12, 4, 8);
    let (m, train_labels, test_labels) = members(60, 40);
    assert_eq!(task_state(&t, &splits(), tmp.path()), TaskState::Missing);
    let built = build_deb_task(&m, &t, tmp.path()).unwrap();
    let counts: Vec<(&str, usize)> = built.splits.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    assert_eq!(counts, [("train800", 12), ("val200", 4), ("train800val200", 16), ("test", 8)]);
    assert_eq!(task_state(&t, &splits(), tmp.path()), TaskState::Current);
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["tiny_deb"]);

    let stamp = std::fs::read_to_string(built.dir.join(STAMP_FILE)).unwrap();
    let stamp_toml: toml::Table = stamp.parse().unwrap_or_else(|e| panic!("{e}\n{stamp}"));
    assert_eq!(stamp_toml["source"].as_str(), Some("dataset-tiny=0.1-1:usr/share/datasets/tiny"));
    assert_eq!(stamp_toml["archive"].as_str(), Some("Debian test main"));
    assert_eq!(stamp_toml["url"].as_str(), Some("https://deb.example/pool/dataset-tiny_0.1-1_all.deb"));
    assert_eq!(stamp_toml["licence"].as_str(), Some("MIT"));
    assert_eq!(stamp_toml["seed"].as_integer(), Some(0));
    let subsample = stamp_toml["subsample"].as_str().unwrap();
    assert!(
        subsample.contains("train800val200 = 16 of the 60 images of train-images-idx3-ubyte.gz")
            && subsample.contains("test = 8 of the 40 images of t10k-images-idx3-ubyte.gz"),
        "{subsample}"
    );
    let sha = |b: &[u8]| {
        use sha2::Digest;
        sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect::<String>()
    };
    assert_eq!(
        stamp_toml["sha256"]["t10k-labels-idx1-ubyte.gz"].as_str(),
        Some(sha(&m.test_labels).as_str())
    );

    // The real loader reads it (as a list-file task: this tiny task is not in the manifest);
    // each image is the one its name indexes in its own pool.
    let opened = open_task(&DataSource {
        benchmark: Benchmark::List,
        task: "tiny_deb".into(),
        root: tmp.path().into(),
        split: None,
    })
    .unwrap();
    let pools = [("train800val200", &train_labels, 0usize), ("test", &test_labels, 100)];
    for (split, labels, start) in pools {
        let items = opened.split(split).unwrap().items;
        for item in &items {
            let row: usize = item.path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            assert!(
                item.path.parent().unwrap().ends_with(format!("images/{split}")),
                "{}",
                item.path.display()
            );
            assert_eq!(item.label, labels[row], "{}", item.path.display());
            let img = image::open(&item.path).unwrap().into_luma8();
            assert_eq!(img.dimensions(), (4, 4));
            let expected: Vec<u8> = (0..16).map(|j| ((start + 16 * row + j) % 256) as u8).collect();
            assert_eq!(img.into_raw(), expected, "{}", item.path.display());
        }
    }

    // Another licence or source is another stamp: the folder is stale and is rebuilt.
    let mut other = t.clone();
    other.licence = Some("CC0".into());
    assert!(matches!(task_state(&other, &splits(), tmp.path()), TaskState::Stale(_)));
    build_deb_task(&m, &other, tmp.path()).unwrap();
    assert_eq!(task_state(&other, &splits(), tmp.path()), TaskState::Current);
    // A csv build of a Debian task (and the reverse) is refused.
    assert!(build_task(&csv_gz(60, 4), &t, tmp.path()).is_err());
    assert!(build_deb_task(&m, &task(60, 20, 8, 24), tmp.path()).is_err());
}

#[test]
fn a_pypi_stamp_is_unchanged_by_the_debian_fields() {
    // Tasks built before Debian sources existed stay current: same four lines.
    let tmp = tempfile::tempdir().unwrap();
    let t = task(60, 20, 8, 24);
    let built = build_task(&csv_gz(60, 4), &t, tmp.path()).unwrap();
    let stamp = std::fs::read_to_string(built.dir.join(STAMP_FILE)).unwrap();
    let keys: Vec<&str> = stamp.lines().map(|l| l.split(" = ").next().unwrap()).collect();
    assert_eq!(keys, ["source", "seed", "layout", "sha256"], "{stamp}");
    assert!(stamp.starts_with("source = \"pkg==1.0:data/tiny.csv.gz\"\nseed = 0\nlayout = 1\nsha256 = \""));
}
