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
}
