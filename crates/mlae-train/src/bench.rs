//! Throughput and memory of training and inference (`mlae-cli bench`, paper Table 3).
//!
//! Training runs the trainer's step exactly (a resident uint8 dataset indexed on the device,
//! normalisation, forward, cross-entropy, the loss read back, AdamW, the accuracy count) on
//! random images, so the figure is what a real run gets per step, without data decoding.
//! Inference times the base model (no adapter), the adapter unmerged and the adapter merged
//! into the weights, interleaved per batch size so that drift on a shared machine hits all
//! three alike. Each figure is a median over timed iterations.

use crate::config::Precision;
use crate::error::{Result, TrainError};
use crate::evaluator::Preprocess;
use crate::metrics::{GpuMemProbe, peak_rss_mb};
use crate::optim::{AdamW, AdamWConfig, ParamGroup};
use mlae_core::{AdapterKind, AdapterSpec};
use mlae_vit::{AdaptedVit, ForwardCtx, ParamRole, VitConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Learning rate and weight decay of the benchmark's AdamW (their values do not change the cost).
pub const BENCH_LR: f64 = 5e-4;
pub const BENCH_WEIGHT_DECAY: f64 = 1e-4;

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
}

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
}

/// Inference throughput: `img_per_s[variant][batch]`, variants `base`, `unmerged`, `merged`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferBench {
    pub img_per_s: BTreeMap<String, BTreeMap<usize, f64>>,
    /// Largest |logit difference| between the merged and the unmerged model on one batch: the
    /// merged model computes the same function.
    pub merge_max_abs_diff: f64,
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
        "peak device memory in use, sampled after every step through the CUDA driver (cuMemGetInfo: \
         context + caching allocator), fresh process"
    } else {
        "peak resident set size of the process (VmHWM), fresh process"
    }
}

fn median(v: &[f64]) -> f64 {
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

/// The trainer's preprocessing with ImageNet mean/std in fp32 (the values do not change the cost).
fn preprocess(device: Device) -> Preprocess {
    Preprocess::new(mlae_data::Normalization::Imagenet, Precision::Fp32, device)
}

fn check(cfg: &BenchConfig) -> Result<()> {
    if cfg.batch == 0 || cfg.steps == 0 || cfg.rounds == 0 {
        return Err(TrainError::Bench("batch, steps and rounds must be at least 1".into()));
    }
    if cfg.infer_batches.contains(&0) {
        return Err(TrainError::Bench("inference batch sizes must be at least 1".into()));
    }
    cfg.vit.validate()?;
    Ok(())
}

/// Training throughput and peak memory. Run it in a fresh process: the peak is the process's.
pub fn bench_train(cfg: &BenchConfig) -> Result<TrainBench> {
    check(cfg)?;
    let device = cfg.device;
    tch::manual_seed(cfg.seed as i64);
    let mut probe = GpuMemProbe::new();
    let model = AdaptedVit::new(&cfg.vit, &cfg.adapter, cfg.seed, device)?;
    let size = cfg.vit.image_size;
    // A resident dataset of four batches, as the trainer keeps a deterministic split.
    let n = (4 * cfg.batch) as i64;
    let images = Tensor::randint(256, [n, size, size, 3], (Kind::Uint8, device));
    let labels = Tensor::randint(cfg.vit.num_classes, [n], (Kind::Int64, device));
    let prep = preprocess(device);
    let groups = vec![
        // One rate for everything: the bench times steps, not a method's schedule.
        ParamGroup { name: "all".into(), weight_decay: BENCH_WEIGHT_DECAY },
    ];
    let params: Vec<(String, Tensor, usize)> =
        model.trainable().into_iter().map(|(name, t, _)| (name, t, 0)).collect();
    let trainable_params = params.iter().map(|(_, t, _)| t.numel()).sum();
    let mut opt = AdamW::new(AdamWConfig::default(), groups, params);
    let setup_mem_mb = if device.is_cuda() { mem_now(device, &mut probe) } else { current_rss_mb() };

    let total = (cfg.warmup + cfg.steps) as u64;
    let mut step_seconds = Vec::with_capacity(cfg.steps);
    let mut last_loss = f64::NAN;
    let order: Vec<i64> = (0..n).collect();
    for step in 0..total {
        let start = Instant::now();
        // The trainer's step (Session::run): seed, batch, forward, loss, backward, update, count.
        tch::manual_seed((cfg.seed ^ step) as i64);
        let first = (step as usize % 4) * cfg.batch;
        let index = Tensor::from_slice(&order[first..first + cfg.batch]).to_device(device);
        let x = prep.apply(&images.index_select(0, &index));
        let y = labels.index_select(0, &index);
        let logits = model.forward_t(&x, &ForwardCtx::train(step, total)).to_kind(Kind::Float);
        let loss = logits.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, 0.0);
        last_loss = loss.double_value(&[]);
        opt.zero_grad();
        loss.backward();
        opt.step(&[BENCH_LR]);
        let _correct =
            tch::no_grad(|| logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]));
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

/// Gives every zero-initialised adapter factor random values, so that the merged weights
/// differ from the base model's (timing does not depend on the values; the merge check does).
fn randomise_adapters(model: &AdaptedVit, seed: u64) {
    tch::manual_seed(seed as i64);
    tch::no_grad(|| {
        for (_, mut t, role) in model.trainable() {
            if role == ParamRole::Adapter && t.abs().max().double_value(&[]) == 0.0 {
                t.copy_(&(Tensor::randn(t.size(), (Kind::Float, t.device())) * 0.01));
            }
        }
    });
}

/// Inference throughput of the base model, the unmerged adapter and the merged adapter.
pub fn bench_infer(cfg: &BenchConfig) -> Result<InferBench> {
    check(cfg)?;
    let device = cfg.device;
    if !cfg.adapter.kind.has_adapter() {
        return Err(TrainError::Bench(format!(
            "adapter kind {} has nothing to merge; inference compares base, unmerged and merged adapters",
            cfg.adapter.kind
        )));
    }
    let base_spec = AdapterSpec { kind: AdapterKind::LinearProbe, ..cfg.adapter.clone() };
    // The same seed gives the same backbone and head to all three.
    let base = AdaptedVit::new(&cfg.vit, &base_spec, cfg.seed, device)?;
    let unmerged = AdaptedVit::new(&cfg.vit, &cfg.adapter, cfg.seed, device)?;
    randomise_adapters(&unmerged, cfg.seed);
    let mut merged = AdaptedVit::new(&cfg.vit, &cfg.adapter, cfg.seed, device)?;
    tch::no_grad(|| {
        for ((_, mut dst, _), (_, src, _)) in merged.trainable().into_iter().zip(unmerged.trainable()) {
            dst.copy_(&src);
        }
    });
    merged.merge()?;
    let variants: [(&str, &AdaptedVit); 3] = [("base", &base), ("unmerged", &unmerged), ("merged", &merged)];
    let ctx = ForwardCtx::eval();
    let size = cfg.vit.image_size;
    let prep = preprocess(device);
    let sync = |t: &Tensor| {
        // Reading one value back waits for the device, as a real caller would.
        let _ = t.double_value(&[0, 0]);
    };
    let merge_max_abs_diff = tch::no_grad(|| {
        let x = prep.apply(&Tensor::randint(256, [2, size, size, 3], (Kind::Uint8, device)));
        (unmerged.forward_t(&x, &ctx) - merged.forward_t(&x, &ctx)).abs().max().double_value(&[])
    });
    let mut times: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    for round in 0..cfg.rounds {
        for &bs in &cfg.infer_batches {
            let x = prep.apply(&Tensor::randint(256, [bs as i64, size, size, 3], (Kind::Uint8, device)));
            for (v, (name, model)) in variants.iter().enumerate() {
                tch::no_grad(|| {
                    for i in 0..cfg.warmup + cfg.steps {
                        let start = Instant::now();
                        let logits = model.forward_t(&x, &ctx);
                        sync(&logits);
                        let secs = start.elapsed().as_secs_f64();
                        if i >= cfg.warmup {
                            times.entry((v, bs)).or_default().push(secs);
                        }
                    }
                });
                tracing::debug!("inference round {round} batch {bs} {name} done");
            }
        }
    }
    let mut img_per_s: BTreeMap<String, BTreeMap<usize, f64>> = BTreeMap::new();
    for ((v, bs), t) in &times {
        img_per_s.entry(variants[*v].0.to_string()).or_default().insert(*bs, *bs as f64 / median(t));
    }
    Ok(InferBench { img_per_s, merge_max_abs_diff })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> BenchConfig {
        let mut vit = VitConfig::from_preset(mlae_vit::Preset::VitTi16, 16, 5);
        (vit.patch_size, vit.dim, vit.depth, vit.heads, vit.mlp_dim) = (8, 32, 2, 2, 64);
        BenchConfig {
            vit,
            adapter: AdapterSpec {
                mlae: mlae_core::MlaeSpec { experts: 4, expert_dropout: 0.5, ..Default::default() },
                ..Default::default()
            },
            batch: 4,
            steps: 3,
            warmup: 1,
            rounds: 1,
            infer_batches: vec![1, 2],
            device: Device::Cpu,
            seed: 0,
        }
    }

    #[test]
    fn train_and_infer_report_every_figure() {
        let cfg = tiny();
        let t = bench_train(&cfg).unwrap();
        assert_eq!(t.step_seconds.len(), 3);
        assert!(t.train_img_per_s > 0.0 && t.peak_mem_mb >= t.setup_mem_mb && t.setup_mem_mb > 0.0);
        assert_eq!(t.trainable_params, 2 * 4 * (32 + 96 + 1) + 32 * 5 + 5);
        let i = bench_infer(&cfg).unwrap();
        for v in ["base", "unmerged", "merged"] {
            assert_eq!(i.img_per_s[v].keys().copied().collect::<Vec<_>>(), [1, 2], "{v}");
        }
        assert!(i.merge_max_abs_diff < 1e-4, "{}", i.merge_max_abs_diff);
        let probe =
            BenchConfig { adapter: AdapterSpec { kind: AdapterKind::LinearProbe, ..cfg.adapter }, ..tiny() };
        assert!(bench_infer(&probe).unwrap_err().to_string().contains("nothing to merge"));
        assert!(bench_train(&BenchConfig { steps: 0, ..tiny() }).is_err());
    }
}
