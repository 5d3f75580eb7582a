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

use crate::{setup, util};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The reference's packages, pinned (torchvision must stay 0.26.0: another version would
/// replace torch 2.11.0, which the build links).
const PY_PACKAGES: [&str; 4] = ["torch==2.11.0", "torchvision==0.26.0", "timm==1.0.31", "peft==0.21.2"];

/// The figures that get a `<figure>: rust=<x> pytorch=<y> ratio=<rust/pytorch>` line.
const RATIO_FIGURES: [&str; 3] = ["train_img_per_s", "peak_mem_mb", "infer_img_per_s_bs16"];

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

/// One side's results, figure -> value per round.
#[derive(Debug, Default)]
struct Side {
    figures: std::collections::BTreeMap<String, Vec<f64>>,
}

impl Side {
    fn push(&mut self, name: &str, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.figures.entry(name.to_string()).or_default().push(v);
        }
    }

    fn median(&self, name: &str) -> Option<f64> {
        self.figures.get(name).map(|v| median(v))
    }

    /// The figures of one process's JSON report (train or infer).
    fn add_report(&mut self, v: &Value) {
        if let Some(t) = v.get("train") {
            self.push("train_img_per_s", t["train_img_per_s"].as_f64());
            self.push("peak_mem_mb", t["peak_mem_mb"].as_f64());
            self.push("setup_mem_mb", t["setup_mem_mb"].as_f64());
            self.push("train_delta_mem_mb", diff(t["peak_mem_mb"].as_f64(), t["setup_mem_mb"].as_f64()));
            self.push("compile_seconds", t["compile_seconds"].as_f64());
        }
        if let Some(Value::Object(variants)) = v.get("infer").and_then(|i| i.get("img_per_s")) {
            for (variant, by_batch) in variants {
                if let Value::Object(by_batch) = by_batch {
                    for (bs, ips) in by_batch {
                        self.push(&format!("infer_{variant}_img_per_s_bs{bs}"), ips.as_f64());
                    }
                }
            }
            self.push("infer_img_per_s_bs16", v["infer_img_per_s_bs16"].as_f64());
        }
    }
}

fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?)
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
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

/// The training step's achieved FLOP/s (its matrix-product FLOPs per image, from
/// `mlae_core::flops`, times images/s) as a fraction of the measured fp32 matmul peak, per side.
fn peak_lines(flops_per_image: f64, peak_gflops: f64, rust: &Side, sides: &[(&str, &Side)]) -> String {
    let mut s = format!(
        "training step: {:.3} GFLOP per image in matrix products; fp32 matmul peak {:.1} GFLOP/s \
         (median of the rounds' `mlae-cli bench --mode peak`)\n",
        flops_per_image / 1e9,
        peak_gflops
    );
    let mut line = String::from("train_peak_fraction:");
    let all = std::iter::once(("rust", rust)).chain(sides.iter().copied());
    for (name, side) in all {
        if let Some(ips) = side.median("train_img_per_s") {
            let achieved = ips * flops_per_image / 1e9;
            let name = if name == "pytorch" { "eager" } else { name };
            s.push_str(&format!(
                "  {name}: {achieved:.1} GFLOP/s = {:.1} % of peak\n",
                100.0 * achieved / peak_gflops
            ));
            line.push_str(&format!(" {name}={:.4}", achieved / peak_gflops));
        }
    }
    s.push_str(&line);
    s.push('\n');
    s
}

fn mem_note(device: &str) -> &'static str {
    if device == "cpu" {
        "peak resident set size (VmHWM / ru_maxrss) of a fresh process per side that only trains; \
         `set-up` is the resident set before the first step, `growth` the peak minus it"
    } else {
        "peak device memory in use (cuMemGetInfo: CUDA context + caching allocator), sampled after every \
         step in a fresh process per side"
    }
}

fn report_line(side: &str, mode: &str, v: &Value) {
    match mode {
        "train" => eprintln!(
            "{side}: train {} img/s, peak memory {} MiB",
            v["train_img_per_s"].as_f64().map_or("?".into(), fmt),
            v["peak_mem_mb"].as_f64().map_or("?".into(), fmt)
        ),
        _ => eprintln!(
            "{side}: merged inference at batch 16 {} img/s",
            v["infer_img_per_s_bs16"].as_f64().map_or("-".into(), fmt)
        ),
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 { format!("{v:.1}") } else { format!("{v:.2}") }
}

/// The `<figure>: rust=<x> pytorch=<y> ratio=<rust/pytorch>` lines: against eager under the
/// figure's name, against the compiled reference as `<figure>_compiled`.
fn ratio_lines(rust: &Side, sides: &[(&str, &Side)]) -> String {
    let mut s = String::new();
    for (side, other) in sides {
        let suffix = if *side == "compiled" { "_compiled" } else { "" };
        for f in RATIO_FIGURES {
            if let (Some(r), Some(p)) = (rust.median(f), other.median(f)) {
                s.push_str(&format!("{f}{suffix}: rust={} pytorch={} ratio={:.3}\n", fmt(r), fmt(p), r / p));
            }
        }
    }
    s
}

/// The Markdown table: one row per figure, Rust, each reference side and Rust's ratio to it.
fn table(rust: &Side, sides: &[(&str, &Side)]) -> String {
    let mut names: Vec<&String> = rust.figures.keys().filter(|n| *n != "compile_seconds").collect();
    let order = |n: &str| -> (usize, usize, String) {
        let group = match n {
            "train_img_per_s" => 0,
            "peak_mem_mb" => 1,
            "setup_mem_mb" => 2,
            "train_delta_mem_mb" => 3,
            _ if n.starts_with("infer_base") => 4,
            _ if n.starts_with("infer_unmerged") => 5,
            _ if n.starts_with("infer_merged") => 6,
            _ => 7,
        };
        let bs = n.rsplit("_bs").next().and_then(|b| b.parse().ok()).unwrap_or(0);
        (group, bs, n.to_string())
    };
    names.sort_by_key(|n| order(n));
    let head = |side: &str| if side == "compiled" { "pytorch compiled" } else { "pytorch eager" };
    let mut s = String::from("| figure | rust |");
    for (side, _) in sides {
        s.push_str(&format!(" {} |", head(side)));
    }
    for (side, _) in sides {
        s.push_str(&format!(" rust/{} |", head(side)));
    }
    s.push_str(&format!("\n|{}\n", "---|".repeat(2 + 2 * sides.len())));
    let cell = |v: Option<f64>| v.map_or("-".to_string(), fmt);
    for n in names {
        let r = rust.median(n);
        s.push_str(&format!("| {} | {} |", describe(n), cell(r)));
        for (_, side) in sides {
            s.push_str(&format!(" {} |", cell(side.median(n))));
        }
        for (_, side) in sides {
            let ratio = r.zip(side.median(n)).map_or("-".to_string(), |(r, p)| format!("{:.3}", r / p));
            s.push_str(&format!(" {ratio} |"));
        }
        s.push('\n');
    }
    s
}

/// A readable name for a figure key.
fn describe(key: &str) -> String {
    match key {
        "train_img_per_s" => "train img/s (`train_img_per_s`)".into(),
        "peak_mem_mb" => "peak memory MiB (`peak_mem_mb`)".into(),
        "setup_mem_mb" => "set-up memory MiB".into(),
        "train_delta_mem_mb" => "training growth MiB (peak - set-up)".into(),
        "infer_img_per_s_bs16" => "merged inference img/s bs 16 (`infer_img_per_s_bs16`)".into(),
        k => match k.strip_prefix("infer_").and_then(|r| r.split_once("_img_per_s_bs")) {
            Some((variant, bs)) => format!("inference img/s, {variant}, bs {bs}"),
            None => k.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fraction_of_peak_is_flops_times_throughput_over_the_peak() {
        let side = |ips: f64| {
            let mut s = Side::default();
            s.push("train_img_per_s", Some(ips));
            s
        };
        let (rust, eager) = (side(10.0), side(5.0));
        // 2 GFLOP per image at 10 img/s = 20 GFLOP/s of a 100 GFLOP/s peak
        let out = peak_lines(2e9, 100.0, &rust, &[("pytorch", &eager)]);
        assert!(out.contains("rust: 20.0 GFLOP/s = 20.0 % of peak"), "{out}");
        assert!(out.contains("eager: 10.0 GFLOP/s = 10.0 % of peak"), "{out}");
        assert!(out.ends_with("train_peak_fraction: rust=0.2000 eager=0.1000\n"), "{out}");
    }

    #[test]
    fn reports_become_medians_ratios_and_a_table() {
        let mut rust = Side::default();
        let mut torch = Side::default();
        for (ips, mem) in [(10.0, 500.0), (12.0, 520.0), (11.0, 510.0)] {
            rust.add_report(&serde_json::json!({
                "train": {"train_img_per_s": ips, "peak_mem_mb": mem, "setup_mem_mb": 300.0}
            }));
            torch.add_report(&serde_json::json!({
                "train": {"train_img_per_s": ips / 2.0, "peak_mem_mb": mem * 2.0, "setup_mem_mb": 600.0}
            }));
        }
        rust.add_report(&serde_json::json!({
            "infer": {"img_per_s": {"base": {"16": 40.0}, "merged": {"16": 39.0}}},
            "infer_img_per_s_bs16": 39.0
        }));
        torch.add_report(&serde_json::json!({
            "infer": {"img_per_s": {"base": {"16": 20.0}, "merged": {"16": 19.5}}},
            "infer_img_per_s_bs16": 19.5
        }));
        assert_eq!(rust.median("train_img_per_s"), Some(11.0));
        assert_eq!(rust.median("train_delta_mem_mb"), Some(210.0));
        assert_eq!(torch.median("peak_mem_mb"), Some(1020.0));
        let t = table(&rust, &[("pytorch", &torch)]);
        assert!(t.starts_with("| figure | rust | pytorch eager | rust/pytorch eager |\n"), "{t}");
        assert!(t.contains("| train img/s (`train_img_per_s`) | 11.00 | 5.50 | 2.000 |"), "{t}");
        assert!(t.contains("| inference img/s, merged, bs 16 | 39.00 | 19.50 | 2.000 |"), "{t}");
        let rows: Vec<&str> = t.lines().skip(2).collect();
        assert!(rows[0].starts_with("| train img/s"), "{t}");
        assert!(rows[1].starts_with("| peak memory"), "{t}");
        assert!(rows.last().unwrap().contains("infer_img_per_s_bs16"), "{t}");
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);

        // The compiled reference: its own columns, only the figures it measured (inference
        // compiled covers the merged model), its compile time kept out of the table.
        let mut compiled = Side::default();
        compiled.add_report(&serde_json::json!({
            "train": {"train_img_per_s": 22.0, "peak_mem_mb": 400.0, "setup_mem_mb": 300.0, "compile_seconds": 70.0}
        }));
        compiled.add_report(&serde_json::json!({
            "infer": {"img_per_s": {"merged": {"16": 78.0}}}, "infer_img_per_s_bs16": 78.0
        }));
        let sides = [("pytorch", &torch), ("compiled", &compiled)];
        let t = table(&rust, &sides);
        assert!(
            t.contains("| train img/s (`train_img_per_s`) | 11.00 | 5.50 | 22.00 | 2.000 | 0.500 |"),
            "{t}"
        );
        assert!(t.contains("| inference img/s, base, bs 16 | 40.00 | 20.00 | - | 2.000 | - |"), "{t}");
        assert!(!t.contains("compile_seconds"), "{t}");
        assert_eq!(compiled.median("compile_seconds"), Some(70.0));
        let lines = ratio_lines(&rust, &sides);
        assert!(lines.contains("train_img_per_s: rust=11.00 pytorch=5.50 ratio=2.000\n"), "{lines}");
        assert!(
            lines.contains("train_img_per_s_compiled: rust=11.00 pytorch=22.00 ratio=0.500\n"),
            "{lines}"
        );
        assert!(lines.contains("peak_mem_mb_compiled: rust=510.0 pytorch=400.0 ratio=1.275\n"), "{lines}");
    }

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
