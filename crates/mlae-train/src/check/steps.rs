//! The steps after the doctor: each runs one benchmark of [`crate::bench`] and applies its
//! rule. A step never returns an error: a failure, a panic inside libtorch included, is its
//! FAIL with the reason.

use super::rules::{self, MERGE_TOL, PARITY_BF16, PARITY_FP32};
use super::{CheckConfig, Figures, MergeFigures, ParityFigures, Step, StepReport, TrainFigures, Verdict};
use crate::bench;
use crate::config::Precision;
use std::time::Instant;
use tch::Device;

/// Runs `step` (not the doctor) on `device`, timed.
pub fn run_step(step: Step, cfg: &CheckConfig, device: Device) -> StepReport {
    let start = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match step {
        Step::Doctor => Err("the doctor step is `check::doctor`".to_string()),
        Step::TrainFp32 => train(cfg, device, Precision::Fp32),
        Step::TrainBf16 => match bf16_applies(device) {
            Ok(()) => train(cfg, device, Precision::Bf16),
            Err(why) => Ok((Verdict::Skipped, why, None)),
        },
        Step::Merge => merge(cfg, device),
        Step::Parity => parity(cfg, device),
    }));
    let seconds = start.elapsed().as_secs_f64();
    let outcome = outcome.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(no message)".into());
        Err(format!("panicked: {what}"))
    });
    match outcome {
        Ok((verdict, reason, figures)) => StepReport { step, verdict, reason, seconds, figures },
        Err(e) => StepReport::failed(step, e, seconds),
    }
}

type Outcome = Result<(Verdict, String, Option<Figures>), String>;

/// [`rules::bf16_applies`] for `device`, with its compute capability from the driver.
fn bf16_applies(device: Device) -> Result<(), String> {
    let Device::Cuda(i) = device else { return Ok(()) };
    let info = mlae_vit::runtime::runtime_info();
    let gpu = info.gpus.iter().find(|g| g.index == i);
    rules::bf16_applies(true, &info.device_label(device), gpu.and_then(|g| g.compute_capability))
}

fn train(cfg: &CheckConfig, device: Device, precision: Precision) -> Outcome {
    let t = bench::bench_train(&cfg.bench(device, precision)).map_err(|e| e.to_string())?;
    let (verdict, note) = rules::loss_verdict(&t.losses);
    let (first, last) = rules::loss_ends(&t.losses).unwrap_or((f64::NAN, f64::NAN));
    let reason = format!("{note}; {:.2} img/s, peak {:.0} MiB", t.train_img_per_s, t.peak_mem_mb);
    let figures = TrainFigures { precision, loss_first_quarter: first, loss_last_quarter: last, bench: t };
    Ok((verdict, reason, Some(Figures::Train(figures))))
}

fn merge(cfg: &CheckConfig, device: Device) -> Outcome {
    let bench_cfg = bench::BenchConfig {
        steps: cfg.infer_steps,
        warmup: 1,
        rounds: cfg.infer_rounds,
        ..cfg.bench(device, Precision::Fp32)
    };
    let r = bench::bench_infer(&bench_cfg).map_err(|e| e.to_string())?;
    let (verdict, note) = rules::merge_verdict(r.merge_max_abs_diff);
    let ips = |v: &str| r.img_per_s.get(v).and_then(|m| m.get(&cfg.infer_batch)).copied().unwrap_or(f64::NAN);
    let reason =
        format!("{note}; merged {:.2} img/s = {:.3} x base", ips("merged"), ips("merged") / ips("base"));
    let figures = MergeFigures { batch: cfg.infer_batch, tolerance: MERGE_TOL, bench: r };
    Ok((verdict, reason, Some(Figures::Merge(figures))))
}

fn parity(cfg: &CheckConfig, device: Device) -> Outcome {
    if !device.is_cuda() {
        return Ok((
            Verdict::Skipped,
            "not applicable: no CUDA device in use (comparing the CPU with itself would prove nothing)"
                .into(),
            None,
        ));
    }
    let bench_cfg = bench::BenchConfig { batch: cfg.parity_batch, ..cfg.bench(device, Precision::Fp32) };
    let p = bench::parity(&bench_cfg).map_err(|e| e.to_string())?;
    let (verdict, reason) = rules::parity_verdict(&p);
    let figures = ParityFigures {
        fp32_tolerance: PARITY_FP32,
        bf16_tolerance: PARITY_BF16,
        fp32_judged: "fp32_no_cudnn_max_abs_diff".into(),
        report: p,
    };
    Ok((verdict, reason, Some(Figures::Parity(figures))))
}
