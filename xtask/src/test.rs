//! `cargo xtask test`: the project's one test command (README and `.ci/run` call it).

use crate::util::{cargo, output, run as sh, step};
use anyhow::{Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Only run the tests (skip rustfmt and clippy).
    #[arg(long)]
    pub quick: bool,
}

/// What the Python-side checks need (mlae-vit's `check_exports.py`: timm and PEFT load the
/// exports); pinned like the fixture generators'.
pub const PYTHON_CHECK_PACKAGES: &[&str] =
    &["torch==2.11.0", "torchvision==0.26.0", "timm==1.0.31", "peft==0.21.2", "safetensors==0.8.0"];

pub fn run(args: &TestArgs) -> Result<()> {
    let python = crate::setup::ensure_python()?;
    step("set-up: Python packages for the export checks");
    crate::setup::pip_install(&python, PYTHON_CHECK_PACKAGES)?;
    if !args.quick {
        step("rustfmt");
        sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
        step("clippy");
        sh(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    }
    step("layering: the libtorch-free crates and xtask build without libtorch");
    check_no_libtorch()?;
    step("tests");
    // The timm/PEFT checks skip without a suitable Python; here they must run. Every test
    // binary runs, so one failure does not hide the others.
    sh(cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("MLAE_PYTHON", &python)
        .env("MLAE_REQUIRE_PYTHON_CHECKS", "1"))?;
    step("all checks passed");
    Ok(())
}

/// The crates people use without libtorch, and xtask, which must build before libtorch exists.
pub const LIBTORCH_FREE: &[&str] = &[
    "mlae-core",
    "mlae-data",
    "mlae-formats",
    "mlae-plot",
    "mlae-tensorboard",
    "mlae-sweep",
    "mlae-report",
    "xtask",
];

/// The crates people use without libtorch must not pull in `tch`/`torch-sys`, even through a
/// build or dev dependency of a normal build (`cargo tree` over normal and build edges).
fn check_no_libtorch() -> Result<()> {
    for krate in LIBTORCH_FREE {
        let tree = output(cargo().args(["tree", "-p", krate, "-e", "normal,build", "--prefix", "none"]))?;
        let torch: Vec<&str> =
            tree.lines().filter(|l| l.starts_with("tch ") || l.starts_with("torch-sys ")).collect();
        if !torch.is_empty() {
            bail!("{krate} depends on libtorch through {}; it must build without it", torch.join(", "));
        }
        println!("{krate}: no tch / torch-sys in its dependency tree");
    }
    Ok(())
}
