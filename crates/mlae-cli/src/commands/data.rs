//! `mlae-cli data ...`: dataset tools that need no model.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use mlae_data::{Benchmark, CheckOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Validate a dataset tree against its manifest (data-manifests/*.toml) or layout: list what
    /// is missing, unreadable, out of range or the wrong size, per task (for folder: empty or
    /// unknown class folders, loose images), with notes on class imbalance; exit 1 on any problem.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// vtab, fgvc, demo, list or folder (<root>/<task>/<split>/<class>/<image>).
    #[arg(long)]
    pub benchmark: Benchmark,
    /// Benchmark root, the folder holding the task folders (default for demo: <cache>/demo).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Only this task (default: every task of the manifest; for list and folder, every task folder).
    #[arg(long)]
    pub task: Option<String>,
    /// Read image headers only instead of decoding every image (faster; misses truncated files).
    #[arg(long)]
    pub quick: bool,
}

pub fn run(args: &DataArgs) -> Result<ExitCode> {
    match &args.command {
        DataCommand::Check(a) => check(a),
    }
}

fn check(a: &CheckArgs) -> Result<ExitCode> {
    let root = match (&a.root, a.benchmark) {
        (Some(root), _) => root.clone(),
        (None, Benchmark::Demo) => mlae_data::cache_dir().join("demo"),
        (None, b) => bail!("--root is required for --benchmark {b}"),
    };
    let report = mlae_data::check(a.benchmark, &root, a.task.as_deref(), &CheckOptions { decode: !a.quick })?;
    println!("{report}");
    Ok(if report.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
