//! `mlae-cli export`: a trained run as an adapter checkpoint, a merged timm model, or a PEFT
//! LoRA adapter.

use anyhow::Result;
use clap::{Args, ValueEnum};
use mlae_train::evaluator::{self, WhichCheckpoint};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Adapter + head only (safetensors with the adapter spec in its metadata).
    Adapter,
    /// The whole model with the adapter merged into the frozen weights, timm layout
    /// (loadable with timm.create_model(..., pretrained_cfg_overlay=dict(file=...))).
    Merged,
    /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors); MLAE's
    /// coefficients are folded into B, so it is an exact rank-r LoRA.
    Peft,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long)]
    pub run: PathBuf,
    #[arg(long, value_enum)]
    pub format: Format,
    /// Output file (adapter, merged) or directory (peft).
    #[arg(long)]
    pub out: PathBuf,
    /// Use the best checkpoint instead of the last.
    #[arg(long)]
    pub best: bool,
}

pub fn run(args: &ExportArgs) -> Result<ExitCode> {
    let which = if args.best { WhichCheckpoint::Best } else { WhichCheckpoint::Last };
    let (_, mut model) = evaluator::load_run_model(&args.run, which)?;
    match args.format {
        Format::Adapter => model.save_adapter(&args.out)?,
        Format::Merged => {
            model.merge()?;
            model.export_merged_timm(&args.out)?;
        }
        Format::Peft => model.export_peft(&args.out)?,
    }
    println!("exported {:?} to {}", args.format, args.out.display());
    Ok(ExitCode::SUCCESS)
}
