//! What a benchmark runs: its config, the images it trains on, and the helpers every figure
//! shares (the trainer's preprocessing, the checks, the median).

use crate::config::Precision;
use crate::error::{Result, TrainError};
use crate::evaluator::Preprocess;
use mlae_core::AdapterSpec;
pub(super) use mlae_core::stats::median;
use mlae_vit::{AdaptedVit, ParamRole, VitConfig};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Learning rate and weight decay of the benchmark's AdamW (their values do not change the cost).
pub const BENCH_LR: f64 = 5e-4;
pub const BENCH_WEIGHT_DECAY: f64 = 1e-4;

/// The images the training benchmark trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchData {
    /// Uniform random pixels and labels: nothing to learn (speed does not depend on them).
    #[default]
    Random,
    /// [`pattern_images`]: the class is visible in the image, so the loss must fall.
    Patterns,
}

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub vit: VitConfig,
    pub adapter: AdapterSpec,
    /// Training batch size.
    pub batch: usize,
    /// Timed iterations (training steps, or forward passes per variant, batch size and round).
    pub steps: usize,
    /// Untimed iterations before them.
    pub warmup: usize,
    /// Rounds of inference timing (variants interleaved within each).
    pub rounds: usize,
    pub infer_batches: Vec<usize>,
    pub device: Device,
    pub seed: u64,
    /// Training compute precision (the trainer's `train.precision`); inference is fp32.
    pub precision: Precision,
    /// What the training benchmark trains on.
    pub data: BenchData,
}

/// The trainer's preprocessing with ImageNet mean/std (the values do not change the cost).
pub(super) fn preprocess(precision: Precision, device: Device) -> Preprocess {
    Preprocess::new(mlae_data::Normalization::Imagenet, precision, device)
}

/// `n` uint8 NHWC images of `size` px whose class can be learnt, and their labels (cycling
/// through `classes`): class `c` brightens quadrant `c % 4` and tints the image by `c`, with
/// uniform noise on top. Built on the CPU from `seed` (the same images on every device), then
/// moved to `device`.
pub fn pattern_images(n: i64, size: i64, classes: i64, seed: u64, device: Device) -> (Tensor, Tensor) {
    let long = (Kind::Int64, Device::Cpu);
    let labels = Tensor::arange(n, long).remainder(classes);
    let upper_half = Tensor::arange(size, long).ge(size / 2).to_kind(Kind::Int64);
    // 0 1 / 2 3: the quadrant of each pixel.
    let quadrant = upper_half.view([1, size]) + upper_half.view([size, 1]) * 2;
    let bright = quadrant.unsqueeze(0).eq_tensor(&labels.remainder(4).view([n, 1, 1])).to_kind(Kind::Float)
        * 120.0
        + 40.0;
    let tint = (labels.view([n, 1]) * 53 + Tensor::arange(3, long).view([1, 3]) * 29)
        .remainder(48)
        .to_kind(Kind::Float)
        .view([n, 1, 1, 3]);
    tch::manual_seed(seed as i64);
    let noise = Tensor::randint(64, [n, size, size, 3], (Kind::Float, Device::Cpu));
    let images = (bright.unsqueeze(-1) + tint + noise).clamp(0.0, 255.0).to_kind(Kind::Uint8);
    (images.to_device(device), labels.to_device(device))
}

pub(super) fn check(cfg: &BenchConfig) -> Result<()> {
    if cfg.batch == 0 || cfg.steps == 0 || cfg.rounds == 0 {
        return Err(TrainError::Bench("batch, steps and rounds must be at least 1".into()));
    }
    if cfg.infer_batches.contains(&0) {
        return Err(TrainError::Bench("inference batch sizes must be at least 1".into()));
    }
    cfg.vit.validate()?;
    Ok(())
}

/// Gives every zero-initialised adapter factor random values, so that the merged weights
/// differ from the base model's (timing does not depend on the values; the merge check does).
pub(super) fn randomise_adapters(model: &AdaptedVit, seed: u64) {
    tch::manual_seed(seed as i64);
    tch::no_grad(|| {
        for (_, mut t, role) in model.trainable() {
            if role == ParamRole::Adapter && t.abs().max().double_value(&[]) == 0.0 {
                t.copy_(&(Tensor::randn(t.size(), (Kind::Float, t.device())) * 0.01));
            }
        }
    });
}
