//! `cargo xtask gpu-check --pack DIR`: the check as a folder that runs on a GPU machine
//! without network (`bash DIR/run.sh OUTDIR`).

use super::{GpuCheckArgs, binaries, elf};
use crate::util;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The packed folder must stay under this.
pub const PACK_LIMIT_BYTES: u64 = 60_000_000;
/// The files of a packed folder; `@GLIBC@` becomes the glibc version the binaries need.
const RUN_SH: &str = include_str!("../../gpu-pack/run.sh");
const PACK_README: &str = include_str!("../../gpu-pack/README.txt");
const GLIBC_MARK: &str = "@GLIBC@";
/// Marks a folder as written by `--pack`, so that a later `--pack` may replace it.
const PACK_MARKER: &str = ".mlae-gpu-pack";

/// Refuses an engine that cannot use a GPU: one linked against a CPU-only libtorch has no
/// `libtorch_cuda.so` among its libraries, and on the GPU machine it would run the CPU variant.
pub fn require_cuda_engine(engine: &Path) -> Result<()> {
    let needs = elf::read(engine)?;
    if !needs.needed.iter().any(|n| n == "libtorch_cuda.so") {
        bail!(
            "{} is a CPU-only engine: it does not link libtorch_cuda.so (it links {}). Build it against the \
             CUDA build of torch 2.11.0 (`cargo xtask setup` installs it into .venv) before packing the GPU check",
            engine.display(),
            needs.needed.join(", ")
        );
    }
    Ok(())
}

/// The newest glibc version any of `binaries` needs.
pub fn glibc_needed(binaries: &[PathBuf]) -> Result<Vec<u32>> {
    let mut newest: Option<Vec<u32>> = None;
    for b in binaries {
        if let Some(v) = elf::read(b)?.glibc {
            newest = Some(newest.map_or(v.clone(), |n| n.max(v)));
        }
    }
    newest.context("no packed binary names a glibc version (not a glibc build?)")
}

/// Writes the packed folder and returns its size in bytes.
pub fn pack(dir: &Path, args: &GpuCheckArgs) -> Result<u64> {
    let dir = util::absolute(dir);
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)?.next().is_none();
        if !empty && !dir.join(PACK_MARKER).is_file() {
            bail!("{} exists and is not a folder written by --pack; choose another", dir.display());
        }
    }
    let bins = binaries(args)?;
    require_cuda_engine(&bins.join("mlae-engine"))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    util::step(&format!("packing the GPU check into {}", dir.display()));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(dir.join("python"))?;
    std::fs::write(dir.join(PACK_MARKER), "written by `cargo xtask gpu-check --pack`\n")?;
    let xtask = std::env::current_exe().context("cannot locate the running xtask")?;
    let mut packed = Vec::new();
    for (src, name) in
        [(bins.join("mlae-cli"), "mlae-cli"), (bins.join("mlae-engine"), "mlae-engine"), (xtask, "xtask")]
    {
        let dst = bin.join(name);
        std::fs::copy(&src, &dst).with_context(|| format!("cannot copy {}", src.display()))?;
        // Debug information is most of a binary's size; the check does not need it.
        util::run(Command::new("strip").arg(&dst))
            .with_context(|| format!("cannot strip {} (binutils' `strip` is needed)", dst.display()))?;
        packed.push(dst);
    }
    let glibc = elf::version_text(&glibc_needed(&packed)?);
    let script = args.script.clone().unwrap_or_else(|| util::root().join("xtask/python/bench_pytorch.py"));
    std::fs::copy(&script, dir.join("python/bench_pytorch.py"))
        .with_context(|| format!("cannot copy {}", script.display()))?;
    std::fs::write(dir.join("run.sh"), RUN_SH.replace(GLIBC_MARK, &glibc))?;
    std::fs::write(dir.join("README.txt"), PACK_README.replace(GLIBC_MARK, &glibc))?;
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [dir.join("run.sh"), bin.join("mlae-cli"), bin.join("mlae-engine"), bin.join("xtask")] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    let size = crate::util::dir_size(&dir)?.bytes;
    if size >= PACK_LIMIT_BYTES {
        bail!(
            "{} is {:.1} MB, over the {:.0} MB limit of the packed check",
            dir.display(),
            size as f64 / 1e6,
            PACK_LIMIT_BYTES as f64 / 1e6
        );
    }
    println!(
        "packed {} ({:.1} MB, limit {:.0} MB; the binaries need glibc {glibc} or newer)",
        dir.display(),
        size as f64 / 1e6,
        PACK_LIMIT_BYTES as f64 / 1e6
    );
    println!("on the GPU machine (no network needed): bash {}/run.sh OUTDIR", dir.display());
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_without_libtorch_cuda_is_refused() {
        // This test binary links no libtorch at all: as CPU-only as an engine can be.
        let exe = std::env::current_exe().unwrap();
        let err = require_cuda_engine(&exe).unwrap_err().to_string();
        assert!(err.contains("is a CPU-only engine: it does not link libtorch_cuda.so"), "{err}");
        assert!(err.contains("libc.so.6"), "{err}");
        let v = glibc_needed(&[exe]).unwrap();
        assert_eq!(v[0], 2);
        assert!(RUN_SH.contains(GLIBC_MARK) && PACK_README.contains(GLIBC_MARK));
    }
}
