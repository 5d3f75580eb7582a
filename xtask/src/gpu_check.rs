//! `cargo xtask gpu-check`: whether the GPU path works and how fast it is, within 8 minutes,
//! and `--pack DIR`, the same check as a folder that runs on a machine without network
//! (`bash DIR/run.sh OUTDIR`).
//!
//! The verdicts are `mlae-cli check`'s (mlae-train's `check` module holds the steps and the
//! PASS / FAIL rules). This command does the chores around it, in order:
//! 1. builds the release binaries (or takes `--bin-dir`);
//! 2. runs `mlae-cli check --json` (through the launcher, as a user starts it): doctor,
//!    training in fp32 and bf16 (the loss must fall), merged inference, and GPU-CPU parity,
//!    which thus runs before any `torch.compile` can eat the time budget;
//! 3. runs `bench_pytorch.py --vit plain` (the same step in plain torch, no timm), eager and
//!    `torch.compile`d, fp32 and bf16, beside the Rust training figures;
//! 4. writes `gpu-check.md` (tables, PASS / FAIL / SKIPPED with reasons, and
//!    `<figure>: rust=… pytorch=… ratio=…` lines), `gpu-check.json` (every child's JSON) and
//!    `logs/` (every child's output).
//!
//! xtask never links libtorch: it drives the release `mlae-cli` and Python as subprocesses.

mod elf;
mod pack;
mod report;
mod runner;

use crate::{bench, setup, util};
use anyhow::{Context, Result, bail};
use clap::Args;
use report::{Row, Status};
use runner::{Runner, TOTAL_LIMIT};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct GpuCheckArgs {
    /// Instead of running the check, write a folder with the release binaries (stripped), the
    /// PyTorch script and `run.sh` for a machine without network (`bash DIR/run.sh OUTDIR`).
    /// The engine must link libtorch_cuda.so.
    #[arg(long, value_name = "DIR")]
    pub pack: Option<PathBuf>,
    /// Where the report goes (`gpu-check.md`, `gpu-check.json`, `logs/`) [default: target/gpu-check].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The Python with torch for the PyTorch side [default: $MLAE_PYTHON, else the project venv].
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Take `mlae-cli`, `mlae-engine` (and, for `--pack`, nothing else) from this folder
    /// instead of a release build (the packed folder runs this way).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// The PyTorch reference [default: xtask/python/bench_pytorch.py of this checkout].
    #[arg(long, value_name = "PATH")]
    pub script: Option<PathBuf>,
    /// `auto` (CUDA when libtorch sees a device, else the CPU variant), `cpu`, `cuda` or
    /// `cuda:N` (fails, saying why, when that device cannot be used).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Architecture preset [default: vit-b16].
    #[arg(long)]
    pub preset: Option<String>,
    /// Image size [default: 224 on CUDA, 32 on the CPU].
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Training batch [default: 32 on CUDA, 8 on the CPU].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Timed training steps (the loss check reads them) [default: 30 on CUDA, 12 on the CPU].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Skip the torch.compile runs of the PyTorch side (compiling takes minutes on a small
    /// CPU); the default run has them.
    #[arg(long)]
    pub no_compile: bool,
}

/// Where the binaries come from: `--bin-dir`, or a release build.
fn binaries(args: &GpuCheckArgs) -> Result<PathBuf> {
    match &args.bin_dir {
        Some(dir) => {
            let dir = util::absolute(dir);
            for b in ["mlae-cli", "mlae-engine"] {
                if !dir.join(b).is_file() {
                    bail!("--bin-dir {}: no `{b}` there", dir.display());
                }
            }
            Ok(dir)
        }
        None => {
            setup::ensure()?;
            let engine = bench::build_release()?;
            Ok(engine.parent().expect("the engine lives in a folder").to_path_buf())
        }
    }
}

/// `--python`, `$MLAE_PYTHON`, or the project venv's (which may not exist: the PyTorch side
/// says so).
fn python(args: &GpuCheckArgs) -> PathBuf {
    args.python
        .clone()
        .or_else(|| std::env::var_os("MLAE_PYTHON").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(setup::venv_python)
}

fn valid_device(d: &str) -> bool {
    ["auto", "cpu", "cuda"].contains(&d) || d.strip_prefix("cuda:").is_some_and(|n| n.parse::<u32>().is_ok())
}

/// `mlae-cli check --json` with the budget flags given.
fn check_cmd(bins: &Path, args: &GpuCheckArgs) -> Command {
    let mut c = Command::new(bins.join("mlae-cli"));
    c.env("MLAE_LOG", "warn").args(["check", "--json", "--device", &args.device]);
    for (flag, value) in [
        ("--preset", args.preset.clone()),
        ("--image-size", args.image_size.map(|v| v.to_string())),
        ("--batch", args.batch.map(|v| v.to_string())),
        ("--steps", args.steps.map(|v| v.to_string())),
    ] {
        if let Some(v) = value {
            c.args([flag, &v]);
        }
    }
    c
}

pub fn run(args: &GpuCheckArgs) -> Result<()> {
    if let Some(dir) = &args.pack {
        return pack::pack(dir, args).map(|_| ());
    }
    if !valid_device(&args.device) {
        bail!("--device must be auto, cpu, cuda or cuda:N, not `{}`", args.device);
    }
    let out = util::absolute(&args.out.clone().unwrap_or_else(|| util::root().join("target/gpu-check")));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    // A previous run's logs would read as this run's.
    let _ = std::fs::remove_dir_all(out.join("logs"));
    let bins = binaries(args)?;
    let script = util::absolute(
        &args.script.clone().unwrap_or_else(|| util::root().join("xtask/python/bench_pytorch.py")),
    );
    let python = python(args);
    let mut runner = Runner::new(&out);

    util::step("mlae-cli check: doctor, training fp32 and bf16, merged inference, parity");
    // The verdicts come first and may take what is left of the budget; PyTorch gets the rest.
    let check = runner.run("check", &mut check_cmd(&bins, args), TOTAL_LIMIT, true).json;
    let mut rows = match &check {
        Ok(c) => report::check_rows(c),
        Err(e) => vec![Row { step: "1-4. mlae-cli check".into(), status: Status::Fail, note: e.clone() }],
    };
    let empty = json!({});
    let c = check.as_ref().unwrap_or(&empty);
    // The PyTorch side runs where the check ran.
    let device = c["device"].as_str().map(String::from);
    let mut pytorch = Vec::new();
    for precision in ["fp32", "bf16"] {
        let rust = report::train_step(c, precision);
        for compiled in [false, true] {
            let variant = if compiled { "compiled" } else { "eager" };
            let step = format!("5. pytorch {variant} {precision}");
            let skip = if compiled && args.no_compile {
                Some("skipped by --no-compile".to_string())
            } else if device.is_none() {
                Some("no device to run on (see 1. doctor)".to_string())
            } else if rust.and_then(|r| r["verdict"].as_str()) == Some("SKIPPED") {
                Some(format!("the Rust {precision} step was skipped"))
            } else if rust.and_then(report::train_bench).is_none() {
                Some(format!("no Rust {precision} result to compare with (its step failed)"))
            } else {
                None
            };
            if let Some(why) = skip {
                rows.push(Row { step, status: Status::Skipped, note: why });
                pytorch.push((precision, variant, None));
                continue;
            }
            let (rust, device) = (rust.expect("checked above"), device.as_deref().expect("checked above"));
            util::step(&format!("pytorch {variant}, {precision}"));
            let child = runner.run(
                &format!("pytorch-{variant}-{precision}"),
                &mut pytorch_cmd(&python, &script, c, device, precision, compiled),
                Duration::from_secs(if compiled { 150 } else { 120 }),
                false,
            );
            let (status, note) = match &child.json {
                Ok(p) => (Status::Pass, report::pytorch_note(rust, p)),
                Err(e) => (Status::Fail, e.clone()),
            };
            rows.push(Row { step, status, note });
            pytorch.push((precision, variant, child.json.ok()));
        }
    }

    let total = runner.started.elapsed().as_secs_f64();
    let md = report::markdown(c, &rows, &pytorch, &python, total);
    let md_path = out.join("gpu-check.md");
    std::fs::write(&md_path, &md).with_context(|| format!("cannot write {}", md_path.display()))?;
    let raw = json!({
        "device": device, "cuda": c["cuda"].as_bool().unwrap_or(false), "total_seconds": total,
        "steps": rows.iter().map(|o| json!({"step": o.step, "status": o.status.word(), "note": o.note})).collect::<Vec<_>>(),
        "check": check.as_ref().ok(),
        "children": runner.raw,
    });
    std::fs::write(out.join("gpu-check.json"), serde_json::to_string_pretty(&raw)?)?;
    println!("{md}");
    eprintln!("report: {}", md_path.display());
    let failed: Vec<String> =
        rows.iter().filter(|r| r.status == Status::Fail).map(|r| format!("{}: {}", r.step, r.note)).collect();
    if !failed.is_empty() {
        bail!(
            "{} step(s) of the GPU check failed (see {}):\n  {}",
            failed.len(),
            md_path.display(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// `bench_pytorch.py --mode train --vit plain` on the architecture and budget the check used.
fn pytorch_cmd(
    python: &Path,
    script: &Path,
    check: &Value,
    device: &str,
    precision: &str,
    compiled: bool,
) -> Command {
    let cfg = &check["config"];
    let arch = &cfg["vit"];
    let num = |v: &Value| v.as_i64().map_or("0".into(), |v| v.to_string());
    let int = |k: &str| num(&arch[k]);
    let flag = |k: &str| if arch[k].as_bool().unwrap_or(false) { "1" } else { "0" };
    let experts = num(&cfg["adapter"]["mlae"]["experts"]);
    let dropout = cfg["adapter"]["mlae"]["expert_dropout"].as_f64().unwrap_or(0.5).to_string();
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args(["--mode", "train", "--vit", "plain", "--precision", precision])
        .args(["--image-size", &int("image_size"), "--patch-size", &int("patch_size")])
        .args(["--dim", &int("dim"), "--depth", &int("depth"), "--heads", &int("heads")])
        .args(["--mlp-dim", &int("mlp_dim"), "--classes", &int("num_classes")])
        .args(["--qkv-bias", flag("qkv_bias"), "--layer-scale", flag("layer_scale")])
        .args(["--layer-scale-init", &arch["layer_scale_init"].as_f64().unwrap_or(1e-5).to_string()])
        .args(["--batch", &num(&cfg["batch"]), "--adapter", "mlae", "--targets", "qkv"])
        .args(["--experts", &experts, "--expert-rank", "1", "--dropout", &dropout])
        .args(["--steps", &num(&cfg["steps"]), "--warmup", &num(&cfg["warmup"])])
        .args(["--rounds", "1", "--device", device]);
    if compiled {
        cmd.arg("--compile");
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_checked_before_anything_runs() {
        for d in ["auto", "cpu", "cuda", "cuda:1"] {
            assert!(valid_device(d), "{d}");
        }
        for d in ["gpu", "cuda:", "cuda:x", ""] {
            assert!(!valid_device(d), "{d}");
        }
    }

    #[test]
    fn the_pytorch_side_trains_what_the_check_trained() {
        let check = json!({"config": {
            "vit": {"image_size": 32, "patch_size": 16, "dim": 768, "depth": 12, "heads": 12, "mlp_dim": 3072,
                    "num_classes": 4, "qkv_bias": true, "layer_scale": false, "layer_scale_init": 1e-5},
            "adapter": {"mlae": {"experts": 8, "expert_dropout": 0.5}},
            "batch": 8, "steps": 12, "warmup": 2}});
        let cmd = pytorch_cmd(Path::new("py"), Path::new("b.py"), &check, "cuda:0", "bf16", true);
        let line = util::describe(&cmd);
        for part in [
            "--image-size 32 --patch-size 16",
            "--classes 4",
            "--qkv-bias 1 --layer-scale 0",
            "--batch 8",
            "--experts 8",
            "--dropout 0.5",
            "--steps 12 --warmup 2",
            "--device cuda:0 --compile",
            "--precision bf16",
        ] {
            assert!(line.contains(part), "{part}: {line}");
        }
    }
}
