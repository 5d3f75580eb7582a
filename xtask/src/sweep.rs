//! `cargo xtask sweep`: the command line of mlae-sweep. Expands a grid into `mlae-cli
//! finetune` runs, runs them locally or on Slurm, resumes after a kill, and never mixes
//! results from a changed config; the work is in the mlae-sweep crate.

use crate::util::{self, step};
use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use mlae_sweep::slurm::SlurmOptions;
use mlae_sweep::{Executor as SweepExecutor, SearchMode, SweepDir, SweepRequest};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Executor {
    /// Run on this machine: --jobs at a time, spread over --devices.
    Local,
    /// Submit a Slurm job array (one array index per run).
    Slurm,
}

/// How a search grid searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Search {
    /// Every setting trains the whole schedule (appendix A.2).
    Full,
    /// Successive halving: every setting trains a short budget, the best third on val goes
    /// on (rungs at E/9, E/3, E epochs for 9 settings); see mlae-sweep's halving module.
    Halving,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// vtab, fgvc or demo.
    #[arg(long, required_unless_present = "status")]
    pub benchmark: Option<String>,
    /// A grid under configs/grids (paper, search, ablation-masking, baselines) or a path to one.
    #[arg(long, default_value = "paper")]
    pub grid: String,
    /// Only these tasks, comma-separated (default: every task of the benchmark but the demo's opt-in
    /// ones, which run only when named here).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Seeds, comma-separated (default: the grid's for the benchmark).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Only these variants of the grid, comma-separated (default: every one), e.g. one method on
    /// more tasks or seeds without running the others again.
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// Benchmark root: sets data.root for every run.
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Pretrained backbone: sets model.checkpoint for every run.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Override a config key for every run, e.g. --set train.epochs=2 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Runs at once (default: one per device in --devices, else 1).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// GPUs to spread runs over, e.g. 0,1 (each run sees one through CUDA_VISIBLE_DEVICES).
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Print the plan (and for Slurm the script) without running or writing anything; the
    /// last line is `runs: N`. Every run's whole config is checked first.
    #[arg(long)]
    pub dry_run: bool,
    /// Sweep directory (default: runs/sweeps/<benchmark>-<grid>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The mlae-cli binary (default: target/release/mlae-cli, built first).
    #[arg(long, value_name = "PATH")]
    pub cli: Option<PathBuf>,
    /// Show the state of every run of a sweep directory, and exit.
    #[arg(long, value_name = "DIR")]
    pub status: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "local")]
    pub executor: Executor,
    /// Search grids (with [select]): train every setting to the end, or successive halving.
    #[arg(long, value_enum, default_value = "full")]
    pub search: Search,
    /// Slurm partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm generic resources per run, e.g. gpu:1.
    #[arg(long)]
    pub gres: Option<String>,
    /// Slurm time limit per run, [D-]HH:MM:SS.
    #[arg(long)]
    pub time: Option<String>,
    /// Slurm: at most this many array tasks at once.
    #[arg(long)]
    pub array_limit: Option<usize>,
}

pub fn run(args: &SweepArgs) -> Result<()> {
    if let Some(dir) = &args.status {
        print!("{}", mlae_sweep::status::report(&SweepDir { root: util::absolute(dir) })?);
        return Ok(());
    }
    let root = util::root();
    // A grid given as a path is taken from the working directory, a name from configs/grids.
    let grid = if args.grid.contains('/') || args.grid.ends_with(".toml") {
        util::absolute(Path::new(&args.grid)).display().to_string()
    } else {
        args.grid.clone()
    };
    let request = SweepRequest {
        root: root.clone(),
        benchmark: args.benchmark.clone().unwrap_or_default(),
        grid,
        tasks: args.tasks.clone(),
        seeds: args.seeds.clone(),
        variants: args.variants.clone(),
        data_root: args.data_root.as_deref().map(util::absolute),
        checkpoint: args.checkpoint.as_deref().map(util::absolute),
        set: args.set.clone(),
        out: args.out.as_deref().map(util::absolute),
        executor: match args.executor {
            Executor::Local => SweepExecutor::Local,
            Executor::Slurm => SweepExecutor::Slurm,
        },
        jobs: args.jobs,
        devices: args.devices.clone(),
        slurm: SlurmOptions {
            cli: args
                .cli
                .as_deref()
                .map(util::absolute)
                .unwrap_or_else(|| root.join("target/release/mlae-cli")),
            workdir: root.clone(),
            partition: args.partition.clone(),
            gres: args.gres.clone(),
            time: args.time.clone(),
            array_limit: args.array_limit,
        },
        search: match args.search {
            Search::Full => SearchMode::Full,
            Search::Halving => SearchMode::Halving,
        },
    };
    let planned = mlae_sweep::plan(request)?;
    if args.dry_run {
        print!("{}", planned.dry_run()?);
        return Ok(());
    }
    planned.check_executor()?;
    let cli = resolve_cli(args)?;
    print!("{}", planned.execute(cli)?);
    Ok(())
}

/// The mlae-cli binary: --cli, else the release build (built now, after the set-up).
fn resolve_cli(args: &SweepArgs) -> Result<PathBuf> {
    if let Some(c) = &args.cli {
        let c = util::absolute(c);
        if !c.is_file() {
            bail!("--cli {}: no such file", c.display());
        }
        return Ok(c);
    }
    crate::setup::ensure()?;
    step("building mlae-cli (release)");
    util::run(util::cargo().args(["build", "--release", "-p", "mlae-cli"]))?;
    Ok(util::root().join("target/release/mlae-cli"))
}
