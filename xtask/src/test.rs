//! `cargo xtask test`: the project's one test command (README and `.ci/run` call it).

use crate::util::{cargo, run as sh, step};
use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Only run the tests (skip rustfmt and clippy).
    #[arg(long)]
    pub quick: bool,
}

pub fn run(args: &TestArgs) -> Result<()> {
    crate::setup::ensure()?;
    if !args.quick {
        step("rustfmt");
        sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
        step("clippy");
        sh(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    }
    step("tests");
    sh(cargo().args(["test", "--workspace"]))?;
    step("all checks passed");
    Ok(())
}
