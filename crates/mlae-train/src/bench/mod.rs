//! Throughput and memory of training and inference (`mlae-cli bench`, paper Table 3).
//!
//! Training runs the trainer's step exactly (a resident uint8 dataset indexed on the device,
//! normalisation, forward, cross-entropy, the loss read back, AdamW, the accuracy count) on
//! random images, so the figure is what a real run gets per step, without data decoding.
//! Inference times the base model (no adapter), the adapter unmerged and the adapter merged
//! into the weights, interleaved per batch size so that drift on a shared machine hits all
//! three alike. Each figure is a median over timed iterations.
//!
//! For `cargo xtask gpu-check` the training can also run in bf16 on learnable generated
//! images ([`BenchData::Patterns`]) and record every loss, so that one short run shows that
//! training works on a device, not only how fast it is; [`parity`] compares the logits of a
//! fixed batch on a CUDA device with the CPU's.

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

/// The trainer's preprocessing with ImageNet mean/std (the values do not change the cost).
fn preprocess(precision: Precision, device: Device) -> Preprocess {
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
    let mut losses = Vec::with_capacity(total as usize);
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
        losses.push(last_loss);
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
    let prep = preprocess(Precision::Fp32, device);
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

/// Logits of one fixed batch on a CUDA device against the CPU's ([`parity`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityReport {
    pub batch: usize,
    /// Largest |logit| on the CPU in fp32: the scale of the differences below.
    pub cpu_logit_max_abs: f64,
    /// Largest |logit difference|, both sides in fp32 (libtorch's default settings).
    pub fp32_max_abs_diff: f64,
    /// The same with cuDNN switched off on the device (no TF32 convolution in the patch
    /// embedding), to tell TF32 from a real difference when the figure above is large.
    pub fp32_no_cudnn_max_abs_diff: f64,
    /// Largest |logit difference|, both sides computing in bf16 (fp32 trainable weights).
    pub bf16_max_abs_diff: f64,
}

/// fp32 matrix-product throughput of this libtorch on `device`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatmulPeak {
    /// Side of the square products.
    pub size: i64,
    /// The faster of the two paths below, in GFLOP/s: the peak.
    pub gflops: f64,
    /// `torch.matmul` (the BLAS libtorch links, MKL on x86).
    pub blas_gflops: f64,
    /// The same product as a oneDNN 1x1 convolution, the CPU path of mlae-vit's frozen linear
    /// layers (on AMD CPUs MKL does not use AVX-512 and oneDNN does); `None` on CUDA.
    pub onednn_gflops: Option<f64>,
    pub threads: i32,
}

/// The machine's measured fp32 matmul peak: `warmup + steps` products of two random
/// `size x size` matrices per path, timed one by one (each read back), `2 size^3` / median
/// time. The training step's achieved FLOP/s is stated as a fraction of it; a large square
/// product is the best case of a GEMM library, so the fraction says how far the step's mixed,
/// smaller products (and its other work) are from it.
pub fn matmul_peak(device: Device, size: i64, warmup: usize, steps: usize) -> Result<MatmulPeak> {
    if size < 1 || steps == 0 {
        return Err(TrainError::Bench(format!("matmul size {size} and steps {steps} must be at least 1")));
    }
    tch::manual_seed(0);
    let a = Tensor::randn([size, size], (Kind::Float, device));
    let b = Tensor::randn([size, size], (Kind::Float, device));
    let flops = 2.0 * (size as f64).powi(3);
    let time = |f: &dyn Fn() -> Tensor| {
        let mut times = Vec::with_capacity(steps);
        tch::no_grad(|| {
            for i in 0..warmup + steps {
                let start = Instant::now();
                let _ = f().double_value(&[0, 0]);
                if i >= warmup {
                    times.push(start.elapsed().as_secs_f64());
                }
            }
        });
        flops / median(&times) / 1e9
    };
    let blas_gflops = time(&|| a.matmul(&b));
    let onednn_gflops = (device == Device::Cpu && tch::utils::has_mkldnn())
        .then(|| time(&|| mlae_vit::linear::linear_onednn(&a, &b, None)));
    Ok(MatmulPeak {
        size,
        gflops: blas_gflops.max(onednn_gflops.unwrap_or(0.0)),
        blas_gflops,
        onednn_gflops,
        threads: tch::get_num_threads(),
    })
}

/// The same model (device-independent seeded initialisation, adapters given random values
/// on the CPU and copied) and the same [`pattern_images`] batch of `cfg.batch` images, in
/// inference mode on the CPU and on `cfg.device`, in fp32 and in bf16.
pub fn parity(cfg: &BenchConfig) -> Result<ParityReport> {
    check(cfg)?;
    let device = cfg.device;
    if !device.is_cuda() {
        return Err(TrainError::Bench(
            "parity compares a CUDA device with the CPU; the device is the CPU".into(),
        ));
    }
    compare_with_cpu(cfg)
}

/// [`parity`] without the device check (the unit test runs it CPU against CPU).
fn compare_with_cpu(cfg: &BenchConfig) -> Result<ParityReport> {
    let device = cfg.device;
    let cpu = Device::Cpu;
    let mut on_cpu = AdaptedVit::new(&cfg.vit, &cfg.adapter, cfg.seed, cpu)?;
    randomise_adapters(&on_cpu, cfg.seed);
    let mut on_device = AdaptedVit::new(&cfg.vit, &cfg.adapter, cfg.seed, device)?;
    tch::no_grad(|| {
        for ((_, mut dst, _), (_, src, _)) in on_device.trainable().into_iter().zip(on_cpu.trainable()) {
            dst.copy_(&src);
        }
    });
    let (images, _) =
        pattern_images(cfg.batch as i64, cfg.vit.image_size, cfg.vit.num_classes, cfg.seed, cpu);
    let x = preprocess(Precision::Fp32, cpu).apply(&images);
    let ctx = ForwardCtx::eval();
    let logits = |m: &AdaptedVit, x: &Tensor| {
        tch::no_grad(|| m.forward_t(&x.to_device(m.device()), &ctx).to_kind(Kind::Float).to_device(cpu))
    };
    let max_abs = |t: &Tensor| t.abs().max().double_value(&[]);
    let reference = logits(&on_cpu, &x);
    let fp32_max_abs_diff = max_abs(&(logits(&on_device, &x) - &reference));
    let cudnn = tch::Cuda::user_enabled_cudnn();
    tch::Cuda::set_user_enabled_cudnn(false);
    let fp32_no_cudnn_max_abs_diff = max_abs(&(logits(&on_device, &x) - &reference));
    tch::Cuda::set_user_enabled_cudnn(cudnn);
    on_cpu.set_compute_kind(Kind::BFloat16);
    on_device.set_compute_kind(Kind::BFloat16);
    let xb = x.to_kind(Kind::BFloat16);
    let bf16_max_abs_diff = max_abs(&(logits(&on_device, &xb) - logits(&on_cpu, &xb)));
    tracing::debug!("parity: fp32 {fp32_max_abs_diff:.3e}, bf16 {bf16_max_abs_diff:.3e}");
    Ok(ParityReport {
        batch: cfg.batch,
        cpu_logit_max_abs: max_abs(&reference),
        fp32_max_abs_diff,
        fp32_no_cudnn_max_abs_diff,
        bf16_max_abs_diff,
    })
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
            precision: Precision::Fp32,
            data: BenchData::Random,
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
        assert!(parity(&tiny()).unwrap_err().to_string().contains("CUDA"));
    }

    /// The parity plumbing (same weights, same batch, bf16 casts) with the CPU on both sides:
    /// identical logits; the CUDA comparison itself needs a GPU.
    #[test]
    fn parity_against_the_cpu_itself_is_exact() {
        let p = compare_with_cpu(&tiny()).unwrap();
        assert_eq!(p.batch, 4);
        assert!(p.cpu_logit_max_abs > 0.0);
        assert_eq!((p.fp32_max_abs_diff, p.fp32_no_cudnn_max_abs_diff, p.bf16_max_abs_diff), (0.0, 0.0, 0.0));
    }

    #[test]
    fn pattern_images_are_deterministic_and_show_their_class() {
        let (a, la) = pattern_images(8, 16, 4, 3, Device::Cpu);
        let (b, lb) = pattern_images(8, 16, 4, 3, Device::Cpu);
        assert_eq!(a.size(), [8, 16, 16, 3]);
        assert_eq!(a.kind(), Kind::Uint8);
        assert!(a.equal(&b) && la.equal(&lb));
        assert_eq!(Vec::<i64>::try_from(&la).unwrap(), [0, 1, 2, 3, 0, 1, 2, 3]);
        // Class 3 brightens the lower right quadrant.
        let img = a.get(3).to_kind(Kind::Float);
        let lower_right = img.narrow(0, 8, 8).narrow(1, 8, 8).mean(Kind::Float).double_value(&[]);
        let upper_left = img.narrow(0, 0, 8).narrow(1, 0, 8).mean(Kind::Float).double_value(&[]);
        assert!(lower_right > upper_left + 100.0, "{lower_right} vs {upper_left}");
    }

    /// bf16 on learnable images: every loss is recorded and the loss falls.
    #[test]
    fn bf16_training_on_patterns_records_a_falling_loss() {
        let cfg = BenchConfig {
            precision: Precision::Bf16,
            data: BenchData::Patterns,
            steps: 30,
            warmup: 2,
            batch: 8,
            adapter: AdapterSpec {
                mlae: mlae_core::MlaeSpec { experts: 4, expert_dropout: 0.0, ..Default::default() },
                ..Default::default()
            },
            ..tiny()
        };
        let t = bench_train(&cfg).unwrap();
        assert_eq!(t.losses.len(), 32);
        assert_eq!(*t.losses.last().unwrap(), t.last_loss);
        // A tiny model at the benchmark's small learning rate: slowly, but it falls.
        let head: f64 = t.losses[..8].iter().sum::<f64>() / 8.0;
        let tail: f64 = t.losses[24..].iter().sum::<f64>() / 8.0;
        assert!(tail < head * 0.99, "{:?}", t.losses);
    }
}
