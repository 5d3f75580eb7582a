//! Small helpers shared by the xtask commands.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Prints a step header so that a long log reads as a list of steps.
pub fn step(msg: &str) {
    eprintln!("\n==> {msg}");
}

/// Runs a command with inherited stdio, failing with the command line and exit status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    eprintln!("$ {line}");
    let status = cmd.status().with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its trimmed stdout; stderr is kept for the error message.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd.output().with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr).trim_end());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `cargo` as the one running us (respects rustup toolchains and CARGO overrides).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// `p` made absolute against the working directory (paths recorded in a sweep must not
/// depend on where a later command runs).
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or(p.into())
    }
}

/// A measured figure for a table cell or a log line: one decimal from 100 up, two below. A
/// non-finite value (a figure that was not measured, or the NaN median of no values) is `-`,
/// as an empty cell is, rather than a `NaN` that reads like a measurement.
pub fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// What [`dir_size`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirSize {
    pub bytes: u64,
    pub files: usize,
}

/// Total size and number of the files under `dir`, recursively. Symbolic links are not
/// followed (a link counts as a file of its own size), so a link can neither loop nor count a
/// tree twice; an unreadable folder or entry is an error naming it.
pub fn dir_size(dir: &Path) -> Result<DirSize> {
    let mut total = DirSize::default();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let meta = entry.metadata().with_context(|| format!("cannot stat {}", entry.path().display()))?;
        if meta.is_dir() {
            let sub = dir_size(&entry.path())?;
            total.bytes += sub.bytes;
            total.files += sub.files;
        } else {
            total.bytes += meta.len();
            total.files += 1;
        }
    }
    Ok(total)
}

/// A byte count for people: B, KiB or MiB with one decimal.
pub fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The last component of `p`, or "" where it has none.
pub fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Makes `path` an ordinary readable file (0644): temporary files are created 0600.
pub fn set_mode_644(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("cannot set the permissions of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_have_two_decimals_below_100_and_a_dash_when_missing() {
        assert_eq!(fmt(5.5), "5.50");
        assert_eq!(fmt(-0.125), "-0.12");
        assert_eq!(fmt(510.0), "510.0");
        assert_eq!(fmt(f64::NAN), "-");
        assert_eq!(fmt(f64::INFINITY), "-");
    }

    #[test]
    fn dir_size_counts_files_in_subfolders_and_fails_on_a_missing_folder() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        std::fs::write(tmp.path().join("x"), [0u8; 10]).unwrap();
        std::fs::write(tmp.path().join("a/b/y"), [0u8; 5]).unwrap();
        assert_eq!(dir_size(tmp.path()).unwrap(), DirSize { bytes: 15, files: 2 });
        let err = format!("{:#}", dir_size(&tmp.path().join("none")).unwrap_err());
        assert!(err.contains("cannot list") && err.contains("none"), "{err}");
    }

    #[test]
    fn byte_counts_read_as_b_kib_or_mib() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
