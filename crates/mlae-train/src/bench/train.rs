//! Training throughput and memory: the trainer's own step on a resident dataset.

use super::config::{
    BENCH_LR, BENCH_WEIGHT_DECAY, BenchConfig, BenchData, check, median, pattern_images, preprocess,
};
use crate::config::{Precision, TrainConfig};
use crate::error::{Result, TrainError};
use crate::metrics::{GpuMemProbe, peak_rss_mb};
use crate::step::{TrainStep, param_groups};
use mlae_vit::{AdaptedVit, ForwardCtx};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Training throughput and memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainBench {
    /// Batch / median step time.
    pub train_img_per_s: f64,
    /// Every timed step, in seconds.
    pub step_seconds: Vec<f64>,
    /// CPU: peak resident memory of this process (VmHWM); CUDA: peak device memory in use.
    pub peak_mem_mb: f64,
    /// The same measure once the model, data and optimizer exist, before the first step.
    pub setup_mem_mb: f64,
    /// What `peak_mem_mb` measures, in words.
    pub mem_measure: String,
    pub trainable_params: usize,
    /// The loss of the last step (a sanity check that training did something finite).
    pub last_loss: f64,
    /// The loss of every step, warm-up included, in order.
    #[serde(default)]
    pub losses: Vec<f64>,
}

/// Peak memory so far on `device` (see [`TrainBench::peak_mem_mb`]).
fn mem_now(device: Device, probe: &mut GpuMemProbe) -> f64 {
    if device.is_cuda() {
        probe.sample();
        probe.peak_mb()
    } else {
        peak_rss_mb()
    }
}

/// What [`mem_now`] measures on `device`.
pub fn mem_measure(device: Device) -> &'static str {
    if device.is_cuda() {
        "peak device memory in use as the CUDA driver reports it (cuMemGetInfo, sampled after every \
         step): the CUDA context, the caching allocator's whole reserve and any other process on the \
         GPU, so an upper bound of what the tensors need; fresh process"
    } else {
        "peak resident set size of the process (VmHWM), fresh process"
    }
}

/// Training throughput and peak memory. Run it in a fresh process: the peak is the process's.
pub fn bench_train(cfg: &BenchConfig) -> Result<TrainBench> {
    check(cfg)?;
    let device = cfg.device;
    tch::manual_seed(cfg.seed as i64);
    let mut probe = GpuMemProbe::new();
    let mut model = AdaptedVit::new(&cfg.vit, &cfg.adapter, cfg.seed, device)?;
    if cfg.precision == Precision::Bf16 {
        model.set_compute_kind(Kind::BFloat16);
    }
    let size = cfg.vit.image_size;
    // A resident dataset of four batches, as the trainer keeps a deterministic split.
    let n = (4 * cfg.batch) as i64;
    let (images, labels) = match cfg.data {
        BenchData::Random => (
            Tensor::randint(256, [n, size, size, 3], (Kind::Uint8, device)),
            Tensor::randint(cfg.vit.num_classes, [n], (Kind::Int64, device)),
        ),
        BenchData::Patterns => pattern_images(n, size, cfg.vit.num_classes, cfg.seed, device),
    };
    let prep = preprocess(cfg.precision, device);
    // The trainer's optimizer (one group per role) and step with the default recipe's loss
    // and clipping; every group at one rate (the bench times steps, not a method's schedule).
    let mut optim = param_groups(&model, BENCH_WEIGHT_DECAY);
    let recipe = TrainConfig::default();
    let train_step =
        TrainStep { seed: cfg.seed, label_smoothing: recipe.label_smoothing, grad_clip: recipe.grad_clip };
    let lrs = vec![BENCH_LR; optim.group_roles.len()];
    let trainable_params = model.trainable().iter().map(|(_, t, _)| t.numel()).sum();
    let setup_mem_mb = if device.is_cuda() { mem_now(device, &mut probe) } else { current_rss_mb() };

    let total = (cfg.warmup + cfg.steps) as u64;
    let mut step_seconds = Vec::with_capacity(cfg.steps);
    let mut last_loss = f64::NAN;
    let mut losses = Vec::with_capacity(total as usize);
    let order: Vec<i64> = (0..n).collect();
    for step in 0..total {
        let start = Instant::now();
        // The trainer's batch (a resident split indexed on the device, then normalised) and step.
        let first = (step as usize % 4) * cfg.batch;
        let index = Tensor::from_slice(&order[first..first + cfg.batch]).to_device(device);
        let x = prep.apply(&images.index_select(0, &index));
        let y = labels.index_select(0, &index);
        let outcome = train_step
            .run(&model, &mut optim.opt, (&x, &y), ForwardCtx::train(step, total), &lrs)
            .map_err(|e| TrainError::Bench(format!("training step {step}: {}", e.what)))?;
        last_loss = outcome.loss;
        losses.push(last_loss);
        let secs = start.elapsed().as_secs_f64();
        if device.is_cuda() {
            probe.sample();
        }
        if step as usize >= cfg.warmup {
            step_seconds.push(secs);
        }
        tracing::debug!("train step {step}: {secs:.3} s, loss {last_loss:.4}");
    }
    if !last_loss.is_finite() {
        return Err(TrainError::Bench(format!("the loss became {last_loss}")));
    }
    Ok(TrainBench {
        train_img_per_s: cfg.batch as f64 / median(&step_seconds),
        step_seconds,
        peak_mem_mb: mem_now(device, &mut probe),
        setup_mem_mb,
        mem_measure: mem_measure(device).into(),
        trainable_params,
        last_loss,
        losses,
    })
}

/// Current resident memory of this process in MiB (`VmRSS`).
fn current_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
