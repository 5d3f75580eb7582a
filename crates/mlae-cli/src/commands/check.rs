//! `mlae-cli check`: whether training and inference work on a device, as PASS / FAIL /
//! SKIPPED verdicts with reasons and figures (`mlae_train::check`). Exits 1 when a step fails.
//!
//! The doctor runs here; every later step runs in a child process of this binary
//! (`check --step NAME`), so that each step's peak memory is its own (the GPU probe counts the
//! whole device) and a crash inside libtorch fails that step, not the whole report.

use anyhow::{Context, Result};
use clap::Args;
use mlae_train::check::{self, CheckConfig, CheckReport, Figures, Step, StepReport};
use mlae_vit::Preset;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

/// Doctor, a short training on learnable generated images in fp32 and bf16 (the loss must
/// fall), the merged adapter against the unmerged one (same logits), and on CUDA the logits
/// of one batch against the CPU's. Budget: ViT-B/16 at 224 px, batch 32, 30 steps on a GPU;
/// 32 px, batch 8, 12 steps on the CPU.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// `auto` (CUDA when libtorch sees a device, else the CPU), `cpu`, `cuda` or `cuda:N`. A
    /// CUDA device that cannot be used fails the check, saying why (a CPU-only libtorch, the
    /// driver, or no GPU visible).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print the report as one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Architecture preset [default: vit-b16].
    #[arg(long)]
    pub preset: Option<Preset>,
    /// Image size [default: 224 on CUDA, 32 on the CPU].
    #[arg(long)]
    pub image_size: Option<i64>,
    /// Training batch [default: 32 on CUDA, 8 on the CPU].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Timed training steps (the loss rule reads them) [default: 30 on CUDA, 12 on the CPU].
    #[arg(long)]
    pub steps: Option<usize>,
    /// libtorch CPU threads (default: libtorch's, one per core).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Run only this step here, on `--device` as given, and print its JSON (how the whole
    /// check runs each step after the doctor).
    #[arg(long, hide = true)]
    pub step: Option<Step>,
}

/// The budget for the device, changed by the flags.
fn config(args: &CheckArgs, cuda: bool) -> CheckConfig {
    let mut cfg = CheckConfig::for_device(cuda);
    if args.preset.is_some() || args.image_size.is_some() {
        let size = args.image_size.unwrap_or(cfg.vit.image_size);
        cfg.set_model(args.preset.unwrap_or(Preset::VitB16), size);
    }
    cfg.batch = args.batch.unwrap_or(cfg.batch);
    cfg.steps = args.steps.unwrap_or(cfg.steps);
    cfg
}

pub fn run(args: &CheckArgs) -> Result<ExitCode> {
    if let Some(n) = args.threads {
        anyhow::ensure!(n >= 1, "--threads must be at least 1");
        tch::set_num_threads(n);
    }
    if let Some(step) = args.step {
        let device =
            mlae_train::config::resolve_device("--device", &args.device).map_err(anyhow::Error::msg)?;
        let report = match step {
            Step::Doctor => check::doctor(&args.device).report,
            _ => check::run_step(step, &config(args, device.is_cuda()), device),
        };
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.device.parse::<mlae_train::config::DeviceSpec>().is_err() {
        anyhow::bail!("--device: `{}` is not one of auto, cpu, cuda, cuda:N", args.device);
    }
    let start = Instant::now();
    let doctor = check::doctor(&args.device);
    let cfg = config(args, doctor.device.is_some_and(|d| d.is_cuda()));
    progress(&doctor.report);
    let mut steps = vec![doctor.report.clone()];
    for &step in &Step::ALL[1..] {
        let report = match doctor.device {
            Some(device) => in_child(step, args, &check::device_name(device))?,
            None => StepReport::skipped(step, check::NO_DEVICE),
        };
        progress(&report);
        steps.push(report);
    }
    let report = CheckReport::new(&args.device, &doctor, cfg, steps, start.elapsed().as_secs_f64());
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn progress(r: &StepReport) {
    tracing::info!("{}: {} ({:.1} s): {}", r.step.title(), r.verdict.word(), r.seconds, r.reason);
}

/// Runs `step` in a child process of this binary with the same budget flags; its report, or
/// a FAIL saying how the child ended.
fn in_child(step: Step, args: &CheckArgs, device: &str) -> Result<StepReport> {
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    let mut cmd = Command::new(&exe);
    cmd.args(["check", "--step", step.name(), "--device", device]);
    if let Some(p) = args.preset {
        cmd.arg("--preset").arg(p.to_string());
    }
    for (flag, value) in [
        ("--image-size", args.image_size.map(|v| v.to_string())),
        ("--batch", args.batch.map(|v| v.to_string())),
        ("--steps", args.steps.map(|v| v.to_string())),
        ("--threads", args.threads.map(|v| v.to_string())),
    ] {
        if let Some(v) = value {
            cmd.args([flag, &v]);
        }
    }
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {} for the {} step", exe.display(), step.name()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    Ok(match serde_json::from_str::<StepReport>(last) {
        Ok(r) if out.status.success() && r.step == step => r,
        _ => StepReport::failed(
            step,
            format!("its process ended with {} and no report: {}", out.status, tail(&stderr, 6)),
            start.elapsed().as_secs_f64(),
        ),
    })
}

/// The last `n` non-empty lines of `text`, on one line.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The report as text: the runtime, then one row per step.
fn text(r: &CheckReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "MLAE check on {}, --device {}, {:.0} s", r.device_label, r.requested, r.seconds);
    if let Some(Figures::Doctor(d)) = r.steps.first().and_then(|s| s.figures.as_ref()) {
        let _ = writeln!(
            s,
            "libtorch {} ({}), NVIDIA driver: {}",
            d.libtorch_version.as_deref().unwrap_or("unknown"),
            match (&d.cuda_built, &d.cudnn_built) {
                (Some(c), n) => format!("CUDA build: CUDA {c}, cuDNN {}", n.as_deref().unwrap_or("none")),
                _ => "CPU-only build".into(),
            },
            d.driver
        );
        for g in &d.gpus {
            let _ = writeln!(s, "  {g}");
        }
    }
    let v = &r.config.vit;
    let _ = writeln!(
        s,
        "model: {} at {} px, batch {}, {} + {} warm-up steps, MLAE {} experts on qkv, {} classes\n",
        v.preset.map_or("custom".into(), |p| p.to_string()),
        v.image_size,
        r.config.batch,
        r.config.steps,
        r.config.warmup,
        r.config.adapter.mlae.experts,
        v.num_classes
    );
    let _ = writeln!(s, "| step | verdict | seconds | reason |\n|---|---|---|---|");
    for st in &r.steps {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {} |",
            st.step.title(),
            st.verdict.word(),
            st.seconds,
            st.reason
        );
    }
    let failed: Vec<&str> = r.failures().map(|f| f.step.title()).collect();
    let _ = writeln!(
        s,
        "\nresult: {}",
        if failed.is_empty() {
            "PASS (every step passed or was skipped for the reason given)".to_string()
        } else {
            format!("FAIL ({})", failed.join(", "))
        }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_follows_the_device_and_the_flags() {
        let args = CheckArgs {
            device: "cpu".into(),
            json: false,
            preset: None,
            image_size: None,
            batch: None,
            steps: None,
            threads: None,
            step: None,
        };
        assert_eq!(config(&args, false), CheckConfig::for_device(false));
        assert_eq!(config(&args, true).vit.image_size, 224);
        let args = CheckArgs { preset: Some(Preset::VitTi16), steps: Some(5), ..args };
        let cfg = config(&args, false);
        assert_eq!((cfg.vit.dim, cfg.vit.image_size, cfg.steps, cfg.batch), (192, 32, 5, 8));
        assert_eq!(mlae_train::check::Verdict::Skipped.word(), "SKIPPED");
    }
}
