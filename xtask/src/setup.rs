//! `cargo xtask setup`: libtorch from the package registry, nowhere else.
//!
//! tch 0.24 needs PyTorch 2.11.0 exactly. We install `torch==2.11.0` from PyPI into the
//! project venv `.venv` (git-ignored) and make `.libtorch` a link to its `torch` package;
//! `.cargo/config.toml` points torch-sys at `.libtorch`, and the build scripts bake an rpath
//! to it, so no variable has to be set by hand afterwards.

use crate::util::{self, output, step};
use anyhow::{Context, Result, bail};
use clap::Args;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PyTorch release tch 0.24 is built against.
pub const TORCH_VERSION: &str = "2.11.0";

#[derive(Debug, Args, Default)]
pub struct SetupArgs {
    /// Python used to create the venv (default: python3 on PATH).
    #[arg(long, env = "MLAE_PYTHON")]
    pub python: Option<PathBuf>,
    /// Use an existing libtorch instead of installing one: a directory holding `include/` and
    /// `lib/libtorch_cpu.so` (a libtorch zip, or the `torch` folder of any Python install).
    #[arg(long, conflicts_with = "reinstall")]
    pub libtorch: Option<PathBuf>,
    /// Replace the torch in `.venv` when it is not 2.11.0 (otherwise that is an error).
    #[arg(long)]
    pub reinstall: bool,
}

/// What the set-up leaves behind, for the commands that need Python or libtorch.
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct Env {
    /// The venv's Python, when the libtorch comes from the venv.
    pub venv_python: Option<PathBuf>,
    /// The libtorch root (holds `include/` and `lib/`).
    pub libtorch: PathBuf,
}

pub fn venv_dir() -> PathBuf {
    util::root().join(".venv")
}

fn link_path() -> PathBuf {
    util::root().join(".libtorch")
}

pub(crate) fn venv_python() -> PathBuf {
    venv_dir().join("bin").join("python")
}

pub fn run(args: &SetupArgs) -> Result<Env> {
    step("set-up: libtorch");
    if let Some(env_dir) = std::env::var_os("LIBTORCH") {
        let env_dir = PathBuf::from(env_dir);
        if env_dir != link_path() {
            eprintln!(
                "note: LIBTORCH={} is set in your environment; cargo builds against it, not .libtorch",
                env_dir.display()
            );
        }
    }
    if let Some(dir) = &args.libtorch {
        let dir =
            dir.canonicalize().with_context(|| format!("--libtorch {}: no such directory", dir.display()))?;
        check_libtorch_dir(&dir)?;
        point_link_at(&dir)?;
        eprintln!("using the libtorch at {} (.libtorch links to it)", dir.display());
        return Ok(Env { venv_python: None, libtorch: dir });
    }
    // Fast path: a valid link from an earlier set-up. No Python is started.
    if !args.reinstall
        && let Ok(target) = link_path().canonicalize()
        && check_libtorch_dir(&target).is_ok()
    {
        eprintln!("libtorch {TORCH_VERSION} already set up: .libtorch -> {}", target.display());
        let venv = venv_dir().canonicalize().unwrap_or_default();
        let venv_python = target.starts_with(venv).then(venv_python);
        return Ok(Env { venv_python, libtorch: target });
    }
    install_into_venv(args)
}

/// Runs the set-up with default options (used by commands that need libtorch or Python).
pub fn ensure() -> Result<Env> {
    run(&SetupArgs::default())
}

/// The venv's Python, for the Python-side tools (fixture generators, the PyTorch reference,
/// the export checks); with a libtorch from elsewhere, a venv without torch checks.
pub fn ensure_python() -> Result<PathBuf> {
    let env = ensure()?;
    match env.venv_python {
        Some(py) => Ok(py),
        None => {
            // A user-provided libtorch: the Python tools still get a venv, without torch checks.
            let py = venv_python();
            if !py.is_file() {
                create_venv(&base_python(None)?)?;
            }
            Ok(py)
        }
    }
}

/// Installs packages into the project venv with pip, skipping those already present at the
/// pinned version.
pub fn pip_install(python: &Path, packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|spec| {
            let (name, version) = spec.split_once("==").unwrap_or((spec, ""));
            let probe = format!(
                "import importlib.metadata as m, sys\ntry:\n  v = m.version({name:?})\nexcept Exception:\n  sys.exit(1)\nsys.exit(0 if not {version:?} or v == {version:?} else 1)"
            );
            !Command::new(python).args(["-c", &probe]).status().is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing into .venv: {}", missing.join(" "));
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pip", "install", "--no-input"]);
    if !std::io::stderr().is_terminal() {
        cmd.args(["--progress-bar", "off"]);
    }
    cmd.args(&missing);
    util::run(&mut cmd).with_context(|| {
        format!(
            "pip could not install {}; pip needs access to PyPI (or a PIP_INDEX_URL that carries them)",
            missing.join(" ")
        )
    })
}

fn base_python(explicit: Option<&Path>) -> Result<PathBuf> {
    let py = explicit.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("python3"));
    let version = Command::new(&py)
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match version {
        Some(v) => {
            eprintln!("python: {} ({v})", py.display());
            Ok(py)
        }
        None => bail!(
            "no working Python 3 found as `{}`: install Python 3.10+ with pip and venv, or pass --python PATH",
            py.display()
        ),
    }
}

fn create_venv(python: &Path) -> Result<()> {
    eprintln!("creating the project venv at {}", venv_dir().display());
    util::run(Command::new(python).args(["-m", "venv"]).arg(venv_dir()))
        .context("cannot create the venv; on Debian/Ubuntu install python3-venv (apt install python3-venv)")
}

/// What `import torch` in the venv reports.
struct TorchProbe {
    version: String,
    dir: PathBuf,
    cxx11_abi: bool,
}

fn probe_torch(python: &Path) -> Option<TorchProbe> {
    let script = "import os, torch\nprint(torch.__version__)\nprint(os.path.dirname(torch.__file__))\nprint(int(torch._C._GLIBCXX_USE_CXX11_ABI))";
    let out = Command::new(python).args(["-c", script]).output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    Some(TorchProbe {
        version: lines.next()?.trim().to_string(),
        dir: PathBuf::from(lines.next()?.trim()),
        cxx11_abi: lines.next()?.trim() == "1",
    })
}

fn install_into_venv(args: &SetupArgs) -> Result<Env> {
    let python = venv_python();
    if !python.is_file() {
        create_venv(&base_python(args.python.as_deref())?)?;
    }
    let installed = probe_torch(&python).map(|p| p.version);
    if needs_torch_install(installed.as_deref(), args.reinstall, &venv_dir())? {
        pip_install_torch(&python)?;
    }
    let probe = probe_torch(&python).context("torch was installed but `import torch` fails in .venv")?;
    if release(&probe.version) != TORCH_VERSION {
        bail!("the venv holds torch {} after installing; expected {TORCH_VERSION}", probe.version);
    }
    if !probe.cxx11_abi {
        bail!(
            "torch {} in .venv was built with the pre-C++11 ABI, which torch-sys cannot link",
            probe.version
        );
    }
    check_libtorch_dir(&probe.dir)?;
    point_link_at(&probe.dir)?;
    let size = output(Command::new("du").args(["-sh"]).arg(venv_dir()))
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    eprintln!(
        "libtorch {} ready: .libtorch -> {} (venv {} on disk)",
        probe.version,
        probe.dir.display(),
        size
    );
    Ok(Env { venv_python: Some(python), libtorch: probe.dir })
}

/// Whether the venv needs `torch==2.11.0` installed, given the torch it holds (if any): another
/// version is an error unless `--reinstall`, because silently replacing a user's torch could
/// break their other work in that venv.
fn needs_torch_install(installed: Option<&str>, reinstall: bool, venv: &Path) -> Result<bool> {
    match installed {
        Some(v) if release(v) == TORCH_VERSION => Ok(false),
        Some(v) if !reinstall => bail!(
            "the venv {} holds torch {v}, but tch 0.24 needs exactly {TORCH_VERSION}; \
             run `cargo xtask setup --reinstall` to replace it",
            venv.display()
        ),
        _ => Ok(true),
    }
}

fn pip_install_torch(python: &Path) -> Result<()> {
    let spec = format!("torch=={TORCH_VERSION}");
    eprintln!(
        "installing {spec} from PyPI into .venv (about 4.6 GB on disk, 1-3 minutes on a fast link; \
         the CUDA build, which also runs on CPU-only machines)"
    );
    let mut cmd = Command::new(python);
    // No wheel cache: it would keep another ~3.5 GB of CUDA wheels in ~/.cache/pip beside the
    // install, and a second install reuses the venv anyway.
    cmd.args(["-m", "pip", "install", "--no-input", "--no-cache-dir"]);
    if !std::io::stderr().is_terminal() {
        cmd.args(["--progress-bar", "off"]);
    }
    cmd.arg(&spec);
    util::run(&mut cmd).with_context(|| {
        format!(
            "pip could not install {spec}; pip needs access to PyPI (https://pypi.org) or a \
             PIP_INDEX_URL / PIP_FIND_LINKS that carries {spec}, and about 5 GB free in {}",
            util::root().display()
        )
    })
}

fn release(version: &str) -> &str {
    version.split('+').next().unwrap_or(version)
}

/// Checks that `dir` is a libtorch 2.11.0 root: headers, the CPU library and a version file.
fn check_libtorch_dir(dir: &Path) -> Result<()> {
    if !dir.join("lib").join("libtorch_cpu.so").is_file() {
        bail!("{} is not a libtorch: lib/libtorch_cpu.so is missing", dir.display());
    }
    if !dir.join("include").join("torch").is_dir() {
        bail!("{} is not a libtorch: include/torch is missing (headers are needed to build)", dir.display());
    }
    match libtorch_version(dir) {
        Some(v) if release(&v) == TORCH_VERSION => Ok(()),
        Some(v) => bail!("{} holds libtorch {v}, but tch 0.24 needs exactly {TORCH_VERSION}", dir.display()),
        None => bail!(
            "cannot tell the version of the libtorch at {} (no version.py or build-version)",
            dir.display()
        ),
    }
}

fn libtorch_version(dir: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("version.py")) {
        let line = text.lines().find(|l| l.trim_start().starts_with("__version__"))?;
        return Some(line.rsplit('=').next()?.trim().trim_matches(['\'', '"']).to_string());
    }
    std::fs::read_to_string(dir.join("build-version")).ok().map(|s| s.trim().to_string())
}

fn point_link_at(target: &Path) -> Result<()> {
    let link = link_path();
    if link.read_link().is_ok_and(|t| t == target) {
        return Ok(());
    }
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link).with_context(|| format!("cannot replace {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, &link).with_context(|| format!("cannot create {}", link.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_libtorch(version_py: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lib")).unwrap();
        std::fs::create_dir_all(dir.path().join("include/torch")).unwrap();
        std::fs::write(dir.path().join("lib/libtorch_cpu.so"), b"").unwrap();
        if let Some(v) = version_py {
            std::fs::write(dir.path().join("version.py"), format!("__version__ = '{v}'\n")).unwrap();
        }
        dir
    }

    #[test]
    fn accepts_the_expected_release_with_a_local_tag() {
        let dir = fake_libtorch(Some("2.11.0+cu130"));
        check_libtorch_dir(dir.path()).unwrap();
    }

    #[test]
    fn rejects_another_release_naming_both_versions() {
        let dir = fake_libtorch(Some("2.10.0+cpu"));
        let err = check_libtorch_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("2.10.0+cpu") && err.contains(TORCH_VERSION), "{err}");
    }

    #[test]
    fn rejects_a_directory_without_libtorch() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_libtorch_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("libtorch_cpu.so"), "{err}");
        let dir = fake_libtorch(None);
        let err = check_libtorch_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cannot tell the version"), "{err}");
    }

    #[test]
    fn a_missing_python_is_a_clear_error() {
        let err = base_python(Some(Path::new("/nonexistent/python3"))).unwrap_err().to_string();
        assert!(err.contains("no working Python 3") && err.contains("--python"), "{err}");
    }

    #[test]
    fn a_venv_with_another_torch_is_an_error_unless_reinstall() {
        let venv = Path::new("/x/.venv");
        let err = needs_torch_install(Some("2.5.1+cpu"), false, venv).unwrap_err().to_string();
        assert!(
            err.contains("2.5.1+cpu") && err.contains(TORCH_VERSION) && err.contains("--reinstall"),
            "{err}"
        );
        assert!(needs_torch_install(Some("2.5.1+cpu"), true, venv).unwrap());
        assert!(needs_torch_install(None, false, venv).unwrap());
        assert!(!needs_torch_install(Some("2.11.0+cu130"), false, venv).unwrap());
    }

    /// A "python" whose every command fails, as pip does without network.
    fn failing_python() -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let py = dir.path().join("python");
        std::fs::write(&py, "#!/bin/sh\necho 'ERROR: No matching distribution found' >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&py, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, py)
    }

    #[test]
    fn pip_failing_is_a_clear_error() {
        let (_dir, py) = failing_python();
        let err = format!("{:#}", pip_install_torch(&py).unwrap_err());
        assert!(err.contains("pip could not install torch==2.11.0") && err.contains("PyPI"), "{err}");
        let err = format!("{:#}", pip_install(&py, &["timm==1.0.31"]).unwrap_err());
        assert!(err.contains("pip could not install timm==1.0.31"), "{err}");
    }
}
