//! `mlae-cli eval`: accuracy of a run's weights on a split, optionally with its logits.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use mlae_train::evaluator::{ModelSource, OpenRun, WhichCheckpoint};
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
    /// Do not write the per-class accuracy and confusion matrix (CSV and PNG) into the run's
    /// `results/<split>/`.
    #[arg(long)]
    pub no_per_class: bool,
    /// Write the logits as float32 [N, C] in the split's order (.npy).
    #[arg(long, value_name = "FILE.npy")]
    pub dump_logits: Option<PathBuf>,
}

pub fn run(args: &EvalArgs) -> Result<ExitCode> {
    // Opens the run for inference only: no training data, no optimizer.
    let run = OpenRun::open(&args.run)?;
    let source = match (&args.adapter, &args.merged, args.checkpoint) {
        (Some(a), _, _) => ModelSource::Adapter(a.clone()),
        (_, Some(m), _) => ModelSource::Merged(m.clone()),
        (_, _, Some(Which::Best)) => ModelSource::Checkpoint(WhichCheckpoint::Best),
        (_, _, Some(Which::Last)) => ModelSource::Checkpoint(WhichCheckpoint::Last),
        _ => ModelSource::Checkpoint(WhichCheckpoint::reported(run.cfg.data.protocol)),
    };
    let out = run.evaluate(args.split.as_deref(), &source)?;
    let (result, classes) = (&out.result, out.classes);
    if let Some(path) = &args.dump_logits {
        let t = tch::Tensor::from_slice(&out.logits).view([result.n as i64, classes as i64]);
        t.write_npy(path).with_context(|| format!("cannot write {}", path.display()))?;
        println!("logits: {} ({} x {classes}, float32)", path.display(), result.n);
    }
    println!("{}: {} images, loss {:.4}", out.split, result.n, result.loss);
    println!("accuracy: {:.4}", result.acc);
    if !args.no_per_class {
        let layout = mlae_train::rundir::RunLayout::new(&args.run);
        let names = run.class_names()?;
        let matrix = mlae_train::per_class::write_per_class(&layout, &out.split, &names, out.confusion)?;
        println!("weakest classes: {}", mlae_train::per_class::weakest(&matrix, 3));
        println!("per-class accuracy and confusion matrix: {}", layout.results_dir(&out.split).display());
    }
    Ok(ExitCode::SUCCESS)
}
