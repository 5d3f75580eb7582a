//! The Debian packages the demo tasks come from: found in `<cache>/debs/` by the manifest's
//! SHA-256, downloaded with `apt-get download` otherwise, and read with `dpkg-deb -x`.

use crate::util::{self, file_name, human, set_mode_644};
use anyhow::{Context, Result, bail};
use mlae_data::demo::IdxMembers;
use mlae_data::manifest::DebSource;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The file name the archive gives the .deb (the last part of the manifest's `url`), which is
/// also the name `apt-get download` writes.
pub(super) fn deb_file_name(src: &DebSource) -> Result<String> {
    let name = src.url.rsplit('/').next().unwrap_or_default();
    if !name.ends_with(".deb") || !name.starts_with(&format!("{}_", src.package)) {
        bail!("demo.toml: url {} does not end in a .deb of {}", src.url, src.package);
    }
    Ok(name.to_string())
}

/// `<cache>/debs/<name>.deb` when it is there with the manifest's SHA-256.
pub(super) fn find_deb(dir: &Path, src: &DebSource) -> Result<Option<PathBuf>> {
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
pub(super) fn ensure_deb(cache: &Path, src: &DebSource) -> Result<PathBuf> {
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
pub(super) fn read_deb_members(deb: &Path, src: &DebSource) -> Result<IdxMembers> {
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

pub(super) fn sha256_of_file(path: &Path) -> Result<String> {
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
