//! `mlae-cli eval`: accuracy of a run's weights on a split, optionally with its logits.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use mlae_train::config::Protocol;
use mlae_train::trainer::{self, EvalSource, WhichCheckpoint};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    Best,
    Last,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The run directory (its config says which data, model and backbone).
    #[arg(long)]
    pub run: PathBuf,
    /// Split to evaluate (default: the run's test split).
    #[arg(long)]
    pub split: Option<String>,
    /// Checkpoint: `last` (default for the paper protocol, whose reported accuracy is the
    /// final epoch's) or `best` (default for the val protocol: the selected epoch).
    #[arg(long, value_enum, conflicts_with_all = ["adapter", "merged"])]
    pub checkpoint: Option<Which>,
    /// Evaluate an exported adapter file (`export --format adapter`) on the run's backbone.
    #[arg(long, value_name = "FILE", conflicts_with = "merged")]
    pub adapter: Option<PathBuf>,
    /// Evaluate an exported merged model (`export --format merged`) with no adapter.
    #[arg(long, value_name = "FILE")]
    pub merged: Option<PathBuf>,
    /// Write the logits as float32 [N, C] in the split's order (.npy).
    #[arg(long, value_name = "FILE.npy")]
    pub dump_logits: Option<PathBuf>,
}

pub fn run(args: &EvalArgs) -> Result<ExitCode> {
    let cfg = trainer::load_run_config(&args.run)?;
    let source = match (&args.adapter, &args.merged, args.checkpoint) {
        (Some(a), _, _) => EvalSource::Adapter(a.clone()),
        (_, Some(m), _) => EvalSource::Merged(m.clone()),
        (_, _, Some(Which::Best)) => EvalSource::Checkpoint(WhichCheckpoint::Best),
        (_, _, Some(Which::Last)) => EvalSource::Checkpoint(WhichCheckpoint::Last),
        _ if cfg.data.protocol == Protocol::Val => EvalSource::Checkpoint(WhichCheckpoint::Best),
        _ => EvalSource::Checkpoint(WhichCheckpoint::Last),
    };
    let (result, logits, classes) = trainer::evaluate_run(&args.run, args.split.as_deref(), &source)?;
    if let Some(path) = &args.dump_logits {
        let t = tch::Tensor::from_slice(&logits).view([result.n as i64, classes as i64]);
        t.write_npy(path).with_context(|| format!("cannot write {}", path.display()))?;
        println!("logits: {} ({} x {classes}, float32)", path.display(), result.n);
    }
    let split = args.split.clone().unwrap_or_else(|| cfg.test_split());
    println!("{split}: {} images, loss {:.4}", result.n, result.loss);
    println!("accuracy: {:.4}", result.acc);
    Ok(ExitCode::SUCCESS)
}
