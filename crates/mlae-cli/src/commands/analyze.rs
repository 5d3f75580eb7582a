//! `mlae-cli analyze`: what the experts of trained runs learned (paper section 4.3). The work
//! is in `mlae_train::analysis`; this file parses arguments and prints a summary.

use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use mlae_train::analysis::{self, ExpertMapOptions, MapScale};
use mlae_train::evaluator::WhichCheckpoint;
use mlae_vit::TargetLayer;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    #[command(subcommand)]
    pub command: AnalyzeCommand,
}

#[derive(Debug, Subcommand)]
pub enum AnalyzeCommand {
    /// Expert cosine similarity per adapted layer and per run (paper A.4, Figures 4 and 5).
    Similarity(SimilarityArgs),
    /// Per-expert feature maps of one block over some images (paper Figures 6 and 7).
    Experts(ExpertsArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    Best,
    Last,
}

impl From<Which> for WhichCheckpoint {
    fn from(w: Which) -> Self {
        match w {
            Which::Best => WhichCheckpoint::Best,
            Which::Last => WhichCheckpoint::Last,
        }
    }
}

/// Similarity of the experts of each adapted layer: expert i is the matrix
/// lambda_i B_i^T A_i (for LoRA the rank-1 product column_i(B) row_i(A) times alpha/r, for
/// DMLoRA branch i times s/K), flattened; the layer's value is the mean cosine over the pairs
/// i < j, the run's the mean over its layers (paper appendix A.4). Cosine ignores the size of
/// the coefficients but not their sign.
///
/// Writes into --out: similarity.json (every matrix and mean), similarity_<k>_<run>.png (one
/// heatmap of the r x r matrix per layer plus their mean, 4 panels per row, 220 px each, a
/// 50 px colour bar from -1 to +1 below) and similarity_means.png (the runs' means as bars,
/// grouped by task, one colour per method).
#[derive(Debug, Args)]
pub struct SimilarityArgs {
    /// A run directory (a finished or interrupted `mlae-cli finetune` run). Repeat to compare.
    #[arg(long = "run", value_name = "DIR", required = true)]
    pub runs: Vec<PathBuf>,
    /// Name of each run in the plots, one per --run in the same order (default: the method,
    /// or the directory name when two runs of a task share a method).
    #[arg(long = "label", value_name = "NAME")]
    pub labels: Vec<String>,
    /// Output directory (default: <run>/analysis for one run; required for several).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Which checkpoint of each run.
    #[arg(long, value_enum, default_value = "last")]
    pub checkpoint: Which,
}

/// Where each expert of one block acts on an image. For patch token t (the class token is
/// excluded) with input x_t to the adapted linear layer (for qkv: the block's first LayerNorm
/// output; computed at inference, every expert on and unscaled), expert i adds
/// c_{i,t} = B_i^T diag(lambda_i) A_i x_t to that layer's output. The map shows
/// ||c_{i,t}||_2 (rank-1 experts: |lambda_i| |a_i . x_t| ||b_i||_2) over the patch grid,
/// upsampled bilinearly and laid over the grey image. LoRA's experts are its r rank-1
/// components times alpha/r.
///
/// Images go through the run's evaluation transform and normalisation. Writes into --out
/// experts_block<N>_<target>.png (rows: images; columns: the image, then experts 1..n; each
/// cell --cell px square under a 24 px label row, so (1 + n) * cell wide and
/// 24 + images * cell high) and experts_block<N>_<target>.json (every value).
#[derive(Debug, Args)]
pub struct ExpertsArgs {
    /// The run directory.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Image files (any format the data loader reads).
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// Block index, from 0 as in the tensor names (`blocks.N`); the paper's "Block 9" of 12
    /// is 8 here if it counts from 1.
    #[arg(long)]
    pub block: usize,
    /// Which adapted linear layer of the block (default: the first adapted of qkv, proj,
    /// fc1, fc2).
    #[arg(long, value_name = "qkv|proj|fc1|fc2")]
    pub target: Option<TargetLayer>,
    /// Colour scale (min to max): `map` scales every cell on its own (where does each
    /// expert act), `image` shares one scale per row (which expert acts most in this image),
    /// `expert` one scale per column (the same expert across images).
    #[arg(long, value_enum, default_value = "map")]
    pub scale: Scale,
    /// Side of one grid cell in pixels.
    #[arg(long, default_value_t = 160)]
    pub cell: u32,
    /// Output directory (default: <run>/analysis).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Which checkpoint of the run.
    #[arg(long, value_enum, default_value = "last")]
    pub checkpoint: Which,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Scale {
    Map,
    Image,
    Expert,
}

impl From<Scale> for MapScale {
    fn from(s: Scale) -> Self {
        match s {
            Scale::Map => MapScale::Map,
            Scale::Image => MapScale::Image,
            Scale::Expert => MapScale::Expert,
        }
    }
}

pub fn run(args: &AnalyzeArgs) -> Result<ExitCode> {
    match &args.command {
        AnalyzeCommand::Similarity(a) => similarity(a),
        AnalyzeCommand::Experts(a) => experts(a),
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.4}"))
}

fn similarity(args: &SimilarityArgs) -> Result<ExitCode> {
    let out = match (&args.out, args.runs.as_slice()) {
        (Some(o), _) => o.clone(),
        (None, [one]) => one.join("analysis"),
        (None, _) => bail!("--out is required when comparing several runs"),
    };
    let result = analysis::similarity(&args.runs, &args.labels, args.checkpoint.into(), &out)?;
    println!("| run | task | method | mean | per layer |");
    println!("|---|---|---|---|---|");
    for r in &result.runs {
        let per: Vec<String> = r.layers.iter().map(|l| fmt_opt(l.mean)).collect();
        println!("| {} | {} | {} | {} | {} |", r.label, r.task, r.method, fmt_opt(r.mean), per.join(" "));
    }
    println!("wrote {}", out.join("similarity.json").display());
    for r in &result.runs {
        println!("wrote {}", out.join(&r.heatmap).display());
    }
    println!("wrote {}", out.join(&result.bar_chart).display());
    Ok(ExitCode::SUCCESS)
}

fn experts(args: &ExpertsArgs) -> Result<ExitCode> {
    let out = args.out.clone().unwrap_or_else(|| args.run.join("analysis"));
    let opts = ExpertMapOptions {
        block: args.block,
        target: args.target,
        scale: args.scale.into(),
        cell: args.cell,
        checkpoint: args.checkpoint.into(),
    };
    let result = analysis::expert_maps(&args.run, &args.images, &opts, &out)?;
    let m = &result.maps;
    println!(
        "block {} {}: {} experts of rank {}, {} images, {}x{} patch grid",
        m.block,
        m.target,
        m.experts,
        m.expert_rank,
        m.sizes.len(),
        m.grid.0,
        m.grid.1
    );
    println!("wrote {} ({}x{} px)", out.join(&result.png).display(), result.png_size.0, result.png_size.1);
    Ok(ExitCode::SUCCESS)
}
