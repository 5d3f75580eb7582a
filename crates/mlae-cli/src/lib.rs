//! The commands behind `mlae-cli`. The binary is thin: parsing, logging set-up and exit
//! codes live here so that the end-to-end tests and the binary share one code path.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod commands;

/// Fine-tune vision transformers with Masked LoRA Experts (MLAE) and its baselines.
///
/// Users type `mlae-cli`, a launcher that execs the `mlae-engine` binary: `bin_name` keeps
/// help and usage lines saying `mlae-cli` instead of the engine's file name.
#[derive(Debug, Parser)]
#[command(name = "mlae-cli", bin_name = "mlae-cli", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing syntax), e.g. `info`, `debug`, `mlae_train=debug`.
    #[arg(long, global = true, env = "MLAE_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report the libtorch version and location, CUDA/cuDNN availability, devices and threads.
    Doctor(commands::doctor::DoctorArgs),
    /// Dataset tools: `data check` validates a VTAB-1k / FGVC / demo / list tree.
    Data(commands::data::DataArgs),
    /// Fine-tune a ViT from a config (or resume a run); ends with `test accuracy: 0.XXXX`.
    Finetune(commands::finetune::FinetuneArgs),
    /// Evaluate a run's checkpoint on a split; optionally dump the logits.
    Eval(commands::eval::EvalArgs),
    /// Classify image files and folders with a trained run: class names and probabilities.
    Predict(commands::predict::PredictArgs),
    /// Export a run: adapter checkpoint, merged timm model, or PEFT LoRA adapter.
    Export(commands::export::ExportArgs),
    /// Analyse trained adapters: expert similarity (paper A.4) and per-expert feature maps.
    Analyze(commands::analyze::AnalyzeArgs),
    /// Training and inference throughput and peak memory (paper Table 3).
    Bench(commands::bench::BenchArgs),
    /// Whether training and inference work on a device: PASS / FAIL / SKIPPED per step with
    /// reasons and figures (doctor, falling loss in fp32 and bf16, merge, GPU-CPU parity).
    Check(commands::check::CheckArgs),
}

/// Parses arguments, installs the log subscriber and runs the command.
pub fn main_entry() -> ExitCode {
    // Before any tensor exists: large freed buffers stay in the process (see the function).
    let tuned = mlae_vit::runtime::tune_allocator();
    let cli = Cli::parse();
    init_tracing(&cli.log);
    tracing::debug!("allocator tuned for tensor reuse: {tuned}");
    let result = match cli.command {
        Command::Doctor(args) => commands::doctor::run(&args),
        Command::Data(args) => commands::data::run(&args),
        Command::Finetune(args) => commands::finetune::run(&args),
        Command::Eval(args) => commands::eval::run(&args),
        Command::Predict(args) => commands::predict::run(&args),
        Command::Export(args) => commands::export::run(&args),
        Command::Analyze(args) => commands::analyze::run(&args),
        Command::Bench(args) => commands::bench::run(&args),
        Command::Check(args) => commands::check::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_text(&err));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line, `outer: inner: ...`, as anyhow's `{:#}` writes it, less
/// the causes whose text the cause before them already holds: the crates' error types write
/// the OS's words into their own message (`path: No such file or directory (os error 2)`) and
/// also return the `io::Error` as their source, which `{:#}` would print a second time.
pub fn error_text(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || previous.contains(&text) {
            previous = text;
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        previous = text;
    }
    out
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the crates' `Io` variants are: the OS's words in the message and as the source.
    #[derive(Debug)]
    struct Wrapped {
        path: String,
        source: std::io::Error,
    }
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}: {}", self.path, self.source)
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let os = || std::io::Error::from_raw_os_error(2);
        let words = os().to_string();
        let err = anyhow::Error::new(Wrapped { path: "a.toml".into(), source: os() });
        assert_eq!(format!("{err:#}"), format!("a.toml: {words}: {words}"), "anyhow repeats the cause");
        assert_eq!(error_text(&err), format!("a.toml: {words}"));
        // Context that adds words keeps them, and a cause that says something new is kept.
        let err =
            anyhow::Error::new(Wrapped { path: "a.toml".into(), source: os() }).context("loading the run");
        assert_eq!(error_text(&err), format!("loading the run: a.toml: {words}"));
        let err = anyhow::Error::new(os()).context("cannot install the Ctrl-C handler");
        assert_eq!(error_text(&err), format!("cannot install the Ctrl-C handler: {words}"));
    }
}
