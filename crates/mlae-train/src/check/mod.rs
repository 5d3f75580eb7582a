//! `mlae-cli check`: whether training and inference work on a device, as verdicts.
//!
//! The steps, in order: [`Step::Doctor`] (libtorch, the CUDA stack, the device), a short
//! training on learnable generated images in fp32 and in bf16 whose loss must fall
//! ([`crate::bench::bench_train`] on [`BenchData::Patterns`]), the merged adapter against the
//! unmerged one ([`crate::bench::bench_infer`]), and the logits of one batch on a CUDA
//! device against the CPU's ([`crate::bench::parity`]; not applicable on the CPU). Each step
//! ends PASS, FAIL or SKIPPED with the reason and its figures; the rules are in [`rules`].
//!
//! [`run`] runs every step in this process; `mlae-cli check` runs each step after the doctor
//! in a child process of its own (`--step`), so that each peak-memory figure is the step's
//! own (the GPU probe counts the whole device) and a crash fails one step, not the report.

pub mod rules;
mod steps;

use crate::bench::{BenchConfig, BenchData, InferBench, ParityReport, TrainBench};
use crate::config::Precision;
use mlae_core::{AdapterSpec, MlaeSpec, TargetLayer};
use mlae_vit::{Preset, VitConfig};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::Device;

pub use steps::run_step;

/// Classes of the generated images, MLAE experts (rank 1) and their dropout, on `qkv`.
pub const CLASSES: i64 = 4;
pub const EXPERTS: usize = 8;
pub const DROPOUT: f64 = 0.5;

/// The outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Fail,
    Skipped,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "SKIPPED",
        }
    }
}

/// The steps of the check, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Doctor,
    TrainFp32,
    TrainBf16,
    Merge,
    Parity,
}

impl Step {
    pub const ALL: [Step; 5] = [Step::Doctor, Step::TrainFp32, Step::TrainBf16, Step::Merge, Step::Parity];

    /// The step's name on the command line and in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Step::Doctor => "doctor",
            Step::TrainFp32 => "train-fp32",
            Step::TrainBf16 => "train-bf16",
            Step::Merge => "merge",
            Step::Parity => "parity",
        }
    }

    /// The step in words, for the report.
    pub fn title(self) -> &'static str {
        match self {
            Step::Doctor => "doctor",
            Step::TrainFp32 => "training fp32",
            Step::TrainBf16 => "training bf16",
            Step::Merge => "merged inference",
            Step::Parity => "parity",
        }
    }
}

impl std::str::FromStr for Step {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Step::ALL.into_iter().find(|st| st.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Step::ALL.iter().map(|st| st.name()).collect();
            format!("unknown step `{s}`; one of {}", names.join(", "))
        })
    }
}

/// One step's verdict, why, and what it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub step: Step,
    pub verdict: Verdict,
    /// The figures behind a PASS or a FAIL, or why the step was skipped.
    pub reason: String,
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figures: Option<Figures>,
}

impl StepReport {
    pub fn skipped(step: Step, reason: impl Into<String>) -> Self {
        StepReport { step, verdict: Verdict::Skipped, reason: reason.into(), seconds: 0.0, figures: None }
    }

    pub fn failed(step: Step, reason: impl Into<String>, seconds: f64) -> Self {
        StepReport { step, verdict: Verdict::Fail, reason: reason.into(), seconds, figures: None }
    }
}

/// What a step measured, as `{"train": {...}}` in JSON (externally tagged: serde cannot read
/// the number-keyed maps of [`InferBench`] back through an internal tag).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Figures {
    Doctor(DoctorFigures),
    Train(TrainFigures),
    Merge(MergeFigures),
    Parity(ParityFigures),
}

/// The runtime as the doctor step saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoctorFigures {
    pub libtorch_version: Option<String>,
    /// Whether `libtorch_cuda.so` is loaded (a CUDA build of libtorch).
    pub libtorch_cuda: bool,
    /// CUDA and cuDNN versions libtorch was built with.
    pub cuda_built: Option<String>,
    pub cudnn_built: Option<String>,
    /// The NVIDIA driver in words (asked directly, not through libtorch).
    pub driver: String,
    pub torch_cuda_devices: i64,
    /// The driver's GPUs, `cuda:N name (memory, compute capability)`.
    pub gpus: Vec<String>,
    /// Why libtorch sees no CUDA device, when it sees none.
    pub cuda_problem: Option<String>,
    pub cores: usize,
    pub torch_threads: i32,
}

/// A training step's figures: the benchmark's and the loss rule's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainFigures {
    pub precision: Precision,
    /// Mean loss of the first and of the last quarter of the steps.
    pub loss_first_quarter: f64,
    pub loss_last_quarter: f64,
    pub bench: TrainBench,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeFigures {
    pub batch: usize,
    pub tolerance: f64,
    pub bench: InferBench,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityFigures {
    pub fp32_tolerance: f64,
    pub bf16_tolerance: f64,
    /// The fp32 figure the verdict reads (the one without TF32, see [`rules::parity_verdict`]).
    pub fp32_judged: String,
    pub report: ParityReport,
}

/// What the check trains and measures: a GPU budget or the CPU's small one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckConfig {
    pub vit: VitConfig,
    pub adapter: AdapterSpec,
    /// Training batch, timed steps and warm-up steps (the loss rule reads all of them).
    pub batch: usize,
    pub steps: usize,
    pub warmup: usize,
    /// Merged inference: batch, timed forwards per variant and round, rounds.
    pub infer_batch: usize,
    pub infer_steps: usize,
    pub infer_rounds: usize,
    pub parity_batch: usize,
    pub seed: u64,
}

impl CheckConfig {
    /// On a GPU ViT-B/16 at 224 px, batch 32, 30 steps; on the CPU the same network at 32 px,
    /// batch 8, 12 steps (a few seconds per step on two cores).
    pub fn for_device(cuda: bool) -> Self {
        let adapter = AdapterSpec {
            targets: vec![TargetLayer::Qkv],
            mlae: MlaeSpec {
                experts: EXPERTS,
                expert_rank: 1,
                expert_dropout: DROPOUT,
                ..Default::default()
            },
            ..Default::default()
        };
        let (size, batch, steps, warmup, infer_steps, infer_rounds) =
            if cuda { (224, 32, 30, 3, 10, 2) } else { (32, 8, 12, 2, 4, 1) };
        CheckConfig {
            vit: VitConfig::from_preset(Preset::VitB16, size, CLASSES),
            adapter,
            batch,
            steps,
            warmup,
            infer_batch: batch,
            infer_steps,
            infer_rounds,
            parity_batch: 8,
            seed: 0,
        }
    }

    /// Another network or image size (the classes stay [`CLASSES`]).
    pub fn set_model(&mut self, preset: Preset, image_size: i64) {
        self.vit = VitConfig::from_preset(preset, image_size, CLASSES);
    }

    /// The benchmark of one step on `device`.
    fn bench(&self, device: Device, precision: Precision) -> BenchConfig {
        BenchConfig {
            vit: self.vit.clone(),
            adapter: self.adapter.clone(),
            batch: self.batch,
            steps: self.steps,
            warmup: self.warmup,
            rounds: 1,
            infer_batches: vec![self.infer_batch],
            device,
            seed: self.seed,
            precision,
            data: BenchData::Patterns,
        }
    }
}

/// The doctor step's outcome: its report and the device the other steps run on (none when
/// the requested one cannot be used).
#[derive(Debug, Clone)]
pub struct Doctor {
    pub report: StepReport,
    pub device: Option<Device>,
    /// The device in words, e.g. `cuda:0 NVIDIA H100` or `cpu (16 threads)`.
    pub device_label: String,
}

/// Reason of the steps after a doctor that found no usable device.
pub const NO_DEVICE: &str = "not run: the requested device cannot be used (see doctor)";

/// The runtime, the CUDA stack and the device `requested` (`auto`, `cpu`, `cuda`, `cuda:N`).
pub fn doctor(requested: &str) -> Doctor {
    let start = Instant::now();
    let info = mlae_vit::runtime::runtime_info();
    let problem = info.cuda_problem().map(|p| p.to_string());
    let device = crate::config::resolve_device("--device", requested);
    let (verdict, reason) = rules::doctor_verdict(
        info.libtorch_version.as_deref(),
        info.version_ok(),
        &device,
        problem.as_deref(),
    );
    let c = &info.cuda;
    let figures = DoctorFigures {
        libtorch_version: info.libtorch_version.clone(),
        libtorch_cuda: c.libtorch_cuda,
        cuda_built: c.built_cuda.map(|v| mlae_vit::cuda::cuda_version_text(v as i32)),
        cudnn_built: c.built_cudnn.map(mlae_vit::cuda::cudnn_version_text),
        driver: c.driver.describe(),
        torch_cuda_devices: info.cuda_device_count,
        gpus: info.gpus.iter().map(|g| g.describe()).collect(),
        cuda_problem: problem,
        cores: info.available_cores,
        torch_threads: info.torch_threads,
    };
    let device = device.ok();
    Doctor {
        report: StepReport {
            step: Step::Doctor,
            verdict,
            reason,
            seconds: start.elapsed().as_secs_f64(),
            figures: Some(Figures::Doctor(figures)),
        },
        device,
        device_label: device.map_or("none".into(), |d| info.device_label(d)),
    }
}

/// The whole check, as `mlae-cli check` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The `--device` asked for.
    pub requested: String,
    /// The device the steps ran on (`cpu`, `cuda:0`); none when it could not be used.
    pub device: Option<String>,
    pub device_label: String,
    pub cuda: bool,
    pub config: CheckConfig,
    pub steps: Vec<StepReport>,
    pub seconds: f64,
}

impl CheckReport {
    pub fn new(
        requested: &str,
        doctor: &Doctor,
        config: CheckConfig,
        steps: Vec<StepReport>,
        seconds: f64,
    ) -> Self {
        CheckReport {
            requested: requested.into(),
            device: doctor.device.map(device_name),
            device_label: doctor.device_label.clone(),
            cuda: doctor.device.is_some_and(|d| d.is_cuda()),
            config,
            steps,
            seconds,
        }
    }

    pub fn failures(&self) -> impl Iterator<Item = &StepReport> {
        self.steps.iter().filter(|s| s.verdict == Verdict::Fail)
    }

    /// True when no step failed (skipped steps say why, and do not fail the check).
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }
}

/// `cpu` or `cuda:N`, as `--device` takes it.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// Every step in this process: the doctor, then the others on its device with the config
/// `configure` gives for it (`true`: a CUDA device).
pub fn run(requested: &str, configure: impl FnOnce(bool) -> CheckConfig) -> CheckReport {
    let start = Instant::now();
    let doctor = doctor(requested);
    let cfg = configure(doctor.device.is_some_and(|d| d.is_cuda()));
    let mut steps = vec![doctor.report.clone()];
    for step in &Step::ALL[1..] {
        steps.push(match doctor.device {
            Some(device) => run_step(*step, &cfg, device),
            None => StepReport::skipped(*step, NO_DEVICE),
        });
    }
    CheckReport::new(requested, &doctor, cfg, steps, start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> CheckConfig {
        let mut cfg = CheckConfig::for_device(false);
        cfg.vit = VitConfig::from_preset(Preset::VitTi16, 16, CLASSES);
        (cfg.vit.patch_size, cfg.vit.dim, cfg.vit.depth, cfg.vit.heads, cfg.vit.mlp_dim) = (8, 32, 2, 2, 64);
        (cfg.batch, cfg.steps, cfg.warmup, cfg.infer_batch, cfg.infer_steps, cfg.parity_batch) =
            (4, 6, 1, 2, 1, 2);
        cfg
    }

    #[test]
    fn the_cpu_check_runs_every_step_and_applies_the_rules() {
        let report = run("cpu", |cuda| {
            assert!(!cuda);
            tiny()
        });
        let names: Vec<Step> = report.steps.iter().map(|s| s.step).collect();
        assert_eq!(names, Step::ALL);
        assert_eq!((report.device.as_deref(), report.cuda), (Some("cpu"), false));
        let by = |s: Step| report.steps.iter().find(|r| r.step == s).unwrap();
        assert_eq!(by(Step::Doctor).verdict, Verdict::Pass, "{:?}", by(Step::Doctor));
        assert_eq!(by(Step::Merge).verdict, Verdict::Pass, "{:?}", by(Step::Merge));
        let parity = by(Step::Parity);
        assert_eq!(parity.verdict, Verdict::Skipped);
        assert!(parity.reason.starts_with("not applicable: no CUDA device"), "{}", parity.reason);
        for step in [Step::TrainFp32, Step::TrainBf16] {
            let r = by(step);
            let Some(Figures::Train(t)) = &r.figures else { panic!("{r:?}") };
            assert_eq!(t.bench.losses.len(), 7, "{r:?}");
            // The verdict is the rule's on the recorded losses, whichever it is for 6 steps.
            assert_eq!(r.verdict, rules::loss_verdict(&t.bench.losses).0, "{r:?}");
        }
        // The report survives the trip through JSON that `mlae-cli check` makes per step
        // (serde_json may move a float's last bit: the figures are compared by kind).
        for s in &report.steps {
            let back: StepReport = serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap();
            assert_eq!((back.step, back.verdict, &back.reason), (s.step, s.verdict, &s.reason));
            let kind = |f: &Option<Figures>| f.as_ref().map(std::mem::discriminant);
            assert_eq!(kind(&back.figures), kind(&s.figures));
        }
    }

    #[test]
    fn a_device_that_cannot_be_used_fails_the_doctor_and_skips_the_rest() {
        let report = run("cuda:7", |_| tiny());
        if tch::Cuda::device_count() > 7 {
            return;
        }
        assert_eq!(report.steps[0].verdict, Verdict::Fail);
        assert!(report.steps[0].reason.contains("--device = cuda:7"), "{}", report.steps[0].reason);
        assert!(report.steps[1..].iter().all(|s| s.verdict == Verdict::Skipped && s.reason == NO_DEVICE));
        assert!(!report.passed());
        assert_eq!(report.device, None);
    }

    #[test]
    fn steps_parse_from_their_names() {
        for s in Step::ALL {
            assert_eq!(s.name().parse::<Step>(), Ok(s));
        }
        assert!("train".parse::<Step>().unwrap_err().contains("train-fp32"));
    }
}
