//! `cargo xtask bench [--against pytorch]`: training and inference throughput and peak memory
//! of the Rust path (`mlae-cli bench`, release build), optionally beside the PyTorch reference
//! `xtask/python/bench_pytorch.py` (timm + MLAE from the paper's formula, or PEFT's LoRA; same
//! shapes, same optimizer, same step), both eager and `torch.compile`d (inductor, default
//! mode; compile time reported apart, never in the step time). `--shape quickstart` is the
//! quickstart's workload (DINOv2 ViT-S/14 at 56 px, 17 tokens, batch 64), where per-op
//! overhead dominates.
//!
//! Every measurement is a fresh child process, so each side's peak memory is its own; xtask
//! itself never links libtorch. Rounds interleave the two sides (training: Rust then Python,
//! then Python then Rust, ...; inference likewise), and the table shows medians over rounds of
//! each round's median, because the machine may be shared and noisy. It is a benchmark, not a
//! test: it fails only when a side fails.

mod results;

use crate::{setup, util};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use mlae_core::stats::median;
use results::{Side, mem_note, peak_lines, ratio_lines, report_line, table};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The reference's packages, pinned (torchvision must stay 0.26.0: another version would
/// replace torch 2.11.0, which the build links).
const PY_PACKAGES: [&str; 4] = ["torch==2.11.0", "torchvision==0.26.0", "timm==1.0.31", "peft==0.21.2"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Against {
    /// timm's ViT in eager PyTorch with an MLAE layer written from the paper (PEFT for LoRA).
    Pytorch,
}

/// Named workloads that set the model, image size, batch and classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// The quickstart's: DINOv2 ViT-S/14 at 56 px (4 x 4 patches + class token), batch 64,
    /// 10 classes.
    Quickstart,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A named workload; it overrides --preset, --image-size, --batch and --classes.
    #[arg(long, value_enum)]
    pub shape: Option<Shape>,
    /// With --against pytorch: skip the torch.compile'd reference (it compiles for minutes on
    /// a small CPU).
    #[arg(long)]
    pub no_compiled: bool,
    /// Also run the reference implementation, interleaved, and print ratios.
    #[arg(long, value_enum)]
    pub against: Option<Against>,
    #[arg(long, default_value = "vit-s16")]
    pub preset: String,
    #[arg(long, default_value_t = 224)]
    pub image_size: u32,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// mlae or lora (the reference has both); the Rust side alone takes any adapter kind.
    #[arg(long, default_value = "mlae")]
    pub adapter: String,
    #[arg(long, default_value_t = 8)]
    pub experts: usize,
    #[arg(long, default_value_t = 1)]
    pub expert_rank: usize,
    #[arg(long, default_value_t = 0.5)]
    pub dropout: f64,
    #[arg(long, default_value = "qkv")]
    pub targets: String,
    #[arg(long, default_value_t = 100)]
    pub classes: usize,
    /// Timed training steps per process (and forward passes per variant and batch size).
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Processes per side and mode; the sides alternate.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value = "1,4,16")]
    pub infer_batches: String,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads for both sides (default: each library's default, one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Skip the inference part.
    #[arg(long)]
    pub no_infer: bool,
}

/// The last line of a child's stdout, parsed as JSON.
fn last_json(out: &str, what: &str) -> Result<Value> {
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .with_context(|| format!("{what} printed no JSON report; its output was:\n{out}"))
}

fn run_rust(engine: &Path, args: &BenchArgs, mode: &str) -> Result<Value> {
    let mut cmd = Command::new(engine);
    cmd.args(["bench", "--json", "--mode", mode, "--preset", &args.preset])
        .args(["--image-size", &args.image_size.to_string(), "--batch", &args.batch.to_string()])
        .args(["--adapter", &args.adapter, "--experts", &args.experts.to_string()])
        .args(["--expert-rank", &args.expert_rank.to_string(), "--dropout", &args.dropout.to_string()])
        .args(["--targets", &args.targets, "--classes", &args.classes.to_string()])
        .args(["--steps", &args.steps.to_string(), "--warmup", &args.warmup.to_string(), "--rounds", "1"])
        .args(["--infer-batches", &args.infer_batches, "--device", &args.device])
        .env("MLAE_LOG", "warn");
    if let Some(t) = args.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    last_json(&util::output(&mut cmd)?, "mlae-cli bench")
}

fn run_python(
    python: &Path,
    script: &Path,
    arch: &Value,
    args: &BenchArgs,
    mode: &str,
    compiled: bool,
) -> Result<Value> {
    let int = |k: &str| arch[k].as_i64().map(|v| v.to_string()).with_context(|| format!("arch.{k} missing"));
    let flag = |k: &str| if arch[k].as_bool().unwrap_or(false) { "1" } else { "0" };
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args(["--mode", mode, "--image-size", &int("image_size")?, "--patch-size", &int("patch_size")?])
        .args(["--dim", &int("dim")?, "--depth", &int("depth")?, "--heads", &int("heads")?])
        .args(["--mlp-dim", &int("mlp_dim")?, "--classes", &int("num_classes")?])
        .args(["--qkv-bias", flag("qkv_bias"), "--layer-scale", flag("layer_scale")])
        .args(["--layer-scale-init", &arch["layer_scale_init"].as_f64().unwrap_or(1e-5).to_string()])
        .args(["--batch", &args.batch.to_string(), "--infer-batches", &args.infer_batches])
        .args(["--adapter", &args.adapter, "--targets", &args.targets])
        .args(["--experts", &args.experts.to_string(), "--expert-rank", &args.expert_rank.to_string()])
        .args(["--dropout", &args.dropout.to_string(), "--steps", &args.steps.to_string()])
        .args(["--warmup", &args.warmup.to_string(), "--rounds", "1", "--device", &args.device]);
    if let Some(t) = args.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    if compiled {
        cmd.arg("--compile");
    }
    last_json(&util::output(&mut cmd)?, "bench_pytorch.py")
}

/// Builds the release `mlae-cli` (the launcher and the engine) and returns the engine.
pub(crate) fn build_release() -> Result<PathBuf> {
    util::step("release build of mlae-cli");
    util::run(util::cargo().args(["build", "--release", "--package", "mlae-cli"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::root().join("target"));
    // The engine directly: the launcher only checks libtorch and execs it.
    Ok(target.join("release").join("mlae-engine"))
}

/// The arguments with the named workload's settings applied.
fn with_shape(args: &BenchArgs) -> BenchArgs {
    let mut a = args.clone();
    if let Some(Shape::Quickstart) = args.shape {
        (a.preset, a.image_size, a.batch, a.classes) = ("dinov2-s14".into(), 56, 64, 10);
    }
    a
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let args = &with_shape(args);
    if args.rounds == 0 || args.steps == 0 {
        bail!("--rounds and --steps must be at least 1");
    }
    if args.warmup == 0 && args.against.is_some() && !args.no_compiled {
        bail!("--warmup must be at least 1 for the compiled reference (its first step compiles)");
    }
    let against = args.against.is_some();
    if against && !["mlae", "lora"].contains(&args.adapter.as_str()) {
        bail!("--against pytorch compares mlae or lora; `{}` has no reference", args.adapter);
    }
    setup::ensure()?;
    let engine = build_release()?;
    let python = if against {
        let py = setup::ensure_python()?;
        setup::pip_install(&py, &PY_PACKAGES)?;
        Some(py)
    } else {
        None
    };
    let script = util::root().join("xtask/python/bench_pytorch.py");
    let (mut rust, mut torch, mut compiled) = (Side::default(), Side::default(), Side::default());
    let with_compiled = against && !args.no_compiled;
    let mut arch = Value::Null;
    let mut modes = vec!["train"];
    if !args.no_infer {
        modes.push("infer");
    }
    let mut rust_meta = Value::Null;
    let mut py_meta = Value::Null;
    let mut peaks: Vec<f64> = Vec::new();
    let mut flops_per_image: Option<f64> = None;
    for mode in modes {
        for round in 0..args.rounds {
            // Rust first in even rounds (the reference needs the architecture Rust reports).
            let order = if round % 2 == 0 { [true, false] } else { [false, true] };
            for is_rust in order {
                if is_rust {
                    util::step(&format!("{mode} round {}/{}: rust", round + 1, args.rounds));
                    let v = run_rust(&engine, args, mode)?;
                    arch = v["arch"].clone();
                    if mode == "train" {
                        let f = &v["train_flops_per_image"];
                        flops_per_image =
                            f["forward"].as_f64().zip(f["backward"].as_f64()).map(|(a, b)| a + b);
                        util::step(&format!("matmul peak round {}/{}", round + 1, args.rounds));
                        let p = run_rust(&engine, args, "peak")?;
                        peaks.extend(p["matmul_peak"]["gflops"].as_f64());
                    }
                    report_line("rust", mode, &v);
                    rust.add_report(&v);
                    rust_meta = v;
                } else if let Some(py) = &python {
                    util::step(&format!("{mode} round {}/{}: pytorch eager", round + 1, args.rounds));
                    let v = run_python(py, &script, &arch, args, mode, false)?;
                    report_line("pytorch", mode, &v);
                    torch.add_report(&v);
                    py_meta = v;
                    if with_compiled {
                        util::step(&format!("{mode} round {}/{}: pytorch compiled", round + 1, args.rounds));
                        let v = run_python(py, &script, &arch, args, mode, true)?;
                        report_line("pytorch compiled", mode, &v);
                        compiled.add_report(&v);
                    }
                }
            }
        }
    }
    println!();
    println!(
        "{} at {} px, batch {}, {} r={} (rank {} each) on {}, dropout {}, {} device, threads rust={} pytorch={}",
        args.preset,
        args.image_size,
        args.batch,
        args.adapter,
        args.experts,
        args.expert_rank,
        args.targets,
        args.dropout,
        args.device,
        rust_meta["threads"],
        py_meta["threads"]
    );
    println!(
        "rust: mlae-cli bench (release, libtorch {}); pytorch: {}",
        rust_meta["libtorch"].as_str().unwrap_or("?"),
        if against {
            format!(
                "torch {} + timm {} eager{}{}",
                py_meta["torch"].as_str().unwrap_or("?"),
                py_meta["timm"].as_str().unwrap_or("?"),
                if with_compiled { " and torch.compile (inductor, default mode)" } else { "" },
                if args.adapter == "lora" { " + PEFT LoRA" } else { ", MLAE layer from the paper's formula" }
            )
        } else {
            "not run".into()
        }
    );
    println!("medians over {} processes per side; memory: {}", args.rounds, mem_note(&args.device));
    println!();
    let sides: Vec<(&str, &Side)> = match (against, with_compiled) {
        (false, _) => vec![],
        (true, false) => vec![("pytorch", &torch)],
        (true, true) => vec![("pytorch", &torch), ("compiled", &compiled)],
    };
    print!("{}", table(&rust, &sides));
    if let Some(c) = compiled.median("compile_seconds") {
        println!("\ntorch.compile time (first training step, not in the step time): {c:.1} s");
    }
    if let Some(f) = flops_per_image.filter(|_| !peaks.is_empty()) {
        println!();
        print!("{}", peak_lines(f, median(&peaks), &rust, &sides));
    }
    if against {
        println!();
        print!("{}", ratio_lines(&rust, &sides));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quickstart_shape_sets_model_size_and_batch() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let a = with_shape(&Cli::parse_from(["bench", "--shape", "quickstart", "--batch", "8"]).bench);
        assert_eq!((a.preset.as_str(), a.image_size, a.batch, a.classes), ("dinov2-s14", 56, 64, 10));
        let a = with_shape(&Cli::parse_from(["bench", "--batch", "8"]).bench);
        assert_eq!((a.preset.as_str(), a.image_size, a.batch), ("vit-s16", 224, 8));
    }

    #[test]
    fn a_missing_report_is_an_error_that_shows_the_output() {
        let err = last_json("some log\nno json here", "bench_pytorch.py").unwrap_err();
        assert!(format!("{err:#}").contains("no json here"));
    }
}
