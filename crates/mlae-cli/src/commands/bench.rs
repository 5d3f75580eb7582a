//! `mlae-cli bench`: training and inference throughput and peak memory (paper Table 3). The
//! work is in `mlae_train::bench`; `cargo xtask bench --against pytorch` runs this command and
//! the PyTorch reference side by side.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use mlae_core::flops::{StepFlops, Trained, train_step_flops};
use mlae_core::{AdapterKind, AdapterSpec, DmloraSpec, LoraSpec, MlaeSpec, TargetLayer};
use mlae_train::bench::{self, BenchConfig, BenchData};
use mlae_train::config::Precision;
use mlae_vit::{Preset, VitConfig};
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Training step throughput and peak memory.
    Train,
    /// Inference throughput of the base model, the unmerged and the merged adapter.
    Infer,
    /// Both, training first (the peak memory is then the training peak).
    All,
    /// Logits of one fixed batch on the CUDA `--device` against the CPU's, in fp32 and bf16
    /// (`--batch` images; used by `cargo xtask gpu-check`).
    Parity,
    /// fp32 throughput of square `--matmul-size` products on `--device` (median of
    /// `--steps`): the peak that the training step's FLOP/s is a fraction of.
    Peak,
}

/// Training compute precision (`train.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    Fp32,
    /// bf16 compute, fp32 master weights for everything trained.
    Bf16,
}

/// What the training part trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataArg {
    /// Random pixels and labels (nothing to learn).
    Random,
    /// Generated images whose class shows (a bright quadrant and a tint): the loss falls.
    Patterns,
}

/// Training throughput (images/s of the trainer's full step: batch from a resident dataset,
/// normalisation, forward, cross-entropy, backward, AdamW, accuracy count; median over steps)
/// and peak memory (CPU: the process's peak resident set; CUDA: peak device memory in use),
/// then inference throughput of the base model, the adapter unmerged and the adapter merged
/// (median per batch size, the three interleaved). Random weights and images: speed does not
/// depend on them. For a clean peak-memory figure run `--mode train` in its own process.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "all")]
    pub mode: Mode,
    /// Architecture preset.
    #[arg(long, default_value = "vit-s16")]
    pub preset: Preset,
    #[arg(long, default_value_t = 224)]
    pub image_size: i64,
    /// Training batch size.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Inference batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub infer_batches: Vec<usize>,
    /// Fine-tuning method (`adapter.kind`).
    #[arg(long, default_value = "mlae")]
    pub adapter: AdapterKind,
    /// `adapter.mlae.experts` (mlae), `adapter.lora.rank` (lora, lora-dropout) or
    /// `adapter.dmlora.branch_rank` (dmlora).
    #[arg(long, default_value_t = 8)]
    pub experts: usize,
    /// Rank of each MLAE expert (`adapter.mlae.expert_rank`).
    #[arg(long, default_value_t = 1)]
    pub expert_rank: usize,
    /// `adapter.mlae.expert_dropout` (mlae), `adapter.lora.input_dropout` (lora) or
    /// `adapter.lora.update_dropout` (lora-dropout).
    #[arg(long, default_value_t = 0.5)]
    pub dropout: f64,
    /// Adapted layers of every block.
    #[arg(long, value_delimiter = ',', default_value = "qkv")]
    pub targets: Vec<TargetLayer>,
    /// Classes of the head.
    #[arg(long, default_value_t = 100)]
    pub classes: i64,
    /// Timed iterations (training steps; forward passes per variant, batch size and round).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed iterations before them.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Inference rounds (the variants are interleaved within each).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// libtorch CPU threads (default: libtorch's, one per core).
    #[arg(long)]
    pub threads: Option<i32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training compute precision (inference is timed in fp32).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: PrecisionArg,
    /// Training images; the JSON report has the loss of every step.
    #[arg(long, value_enum, default_value = "random")]
    pub data: DataArg,
    /// Override the preset: patch size.
    #[arg(long)]
    pub patch_size: Option<i64>,
    /// Override the preset: width.
    #[arg(long)]
    pub dim: Option<i64>,
    /// Override the preset: number of blocks.
    #[arg(long)]
    pub depth: Option<i64>,
    /// Override the preset: attention heads.
    #[arg(long)]
    pub heads: Option<i64>,
    /// Override the preset: MLP width.
    #[arg(long)]
    pub mlp_dim: Option<i64>,
    /// Side of the square products of `--mode peak`.
    #[arg(long, default_value_t = 2048)]
    pub matmul_size: i64,
    /// Print one JSON object with every figure (and the resolved architecture) as the last line.
    #[arg(long)]
    pub json: bool,
}

fn vit_config(a: &BenchArgs) -> VitConfig {
    let mut v = VitConfig::from_preset(a.preset, a.image_size, a.classes);
    v.patch_size = a.patch_size.unwrap_or(v.patch_size);
    v.dim = a.dim.unwrap_or(v.dim);
    v.depth = a.depth.unwrap_or(v.depth);
    v.heads = a.heads.unwrap_or(v.heads);
    v.mlp_dim = a.mlp_dim.unwrap_or(v.mlp_dim);
    v
}

/// The training step's matrix-product FLOPs per image (`mlae_core::flops`), for this bench's
/// model and method: what trains is what the method's plan says (its sites and their update
/// ranks, whether the backbone trains).
fn train_flops(cfg: &BenchConfig) -> Result<StepFlops> {
    let plan = cfg.adapter.resolve(cfg.vit.depth as usize).context("adapter options")?;
    Ok(train_step_flops(&cfg.vit.dims(), &Trained::of(&plan)))
}

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let device = mlae_train::config::resolve_device("--device", &args.device).map_err(anyhow::Error::msg)?;
    if let Some(n) = args.threads {
        if n < 1 {
            bail!("--threads must be at least 1");
        }
        tch::set_num_threads(n);
    }
    // Each flag sets the key of every method that has one; the kind reads its own.
    let adapter = AdapterSpec {
        kind: args.adapter,
        targets: args.targets.clone(),
        mlae: MlaeSpec {
            experts: args.experts,
            expert_rank: args.expert_rank,
            expert_dropout: args.dropout,
            ..Default::default()
        },
        lora: LoraSpec {
            rank: args.experts,
            input_dropout: args.dropout,
            update_dropout: args.dropout,
            ..Default::default()
        },
        dmlora: DmloraSpec { branch_rank: args.experts, ..Default::default() },
    };
    adapter.validate().context("adapter options")?;
    let cfg = BenchConfig {
        vit: vit_config(args),
        adapter,
        batch: args.batch,
        steps: args.steps,
        warmup: args.warmup,
        rounds: args.rounds,
        infer_batches: args.infer_batches.clone(),
        device,
        seed: args.seed,
        precision: match args.precision {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Bf16 => Precision::Bf16,
        },
        data: match args.data {
            DataArg::Random => BenchData::Random,
            DataArg::Patterns => BenchData::Patterns,
        },
    };
    let info = mlae_vit::runtime::runtime_info();
    let v = &cfg.vit;
    println!(
        "{} (patch {}, dim {}, depth {}, heads {}, mlp {}) at {} px, {} {} on {}, device {}",
        args.preset,
        v.patch_size,
        v.dim,
        v.depth,
        v.heads,
        v.mlp_dim,
        v.image_size,
        cfg.adapter.kind,
        args.targets.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(","),
        info.device_label(device),
        info.libtorch_version.as_deref().unwrap_or("libtorch ?")
    );
    let mut json = serde_json::json!({
        "impl": "rust",
        "arch": v,
        "adapter": cfg.adapter,
        "batch": cfg.batch,
        "threads": tch::get_num_threads(),
        "device": info.device_label(device),
        "libtorch": info.libtorch_version,
        "onednn_linear": mlae_vit::runtime::onednn_linear_enabled(),
        "allocator_tuned": mlae_vit::runtime::allocator_tuned(),
        "precision": cfg.precision,
        "data": cfg.data,
    });
    if matches!(args.mode, Mode::Train | Mode::All) {
        let t = bench::bench_train(&cfg)?;
        println!(
            "train: {:.2} img/s (batch {}, {:?}, median of {} steps); loss {:.4} -> {:.4}",
            t.train_img_per_s,
            cfg.batch,
            cfg.precision,
            t.step_seconds.len(),
            t.losses.first().copied().unwrap_or(f64::NAN),
            t.last_loss
        );
        println!(
            "peak memory: {:.0} MiB ({:.0} MiB after set-up); {}",
            t.peak_mem_mb, t.setup_mem_mb, t.mem_measure
        );
        let flops = train_flops(&cfg)?;
        println!(
            "training step: {:.3} GFLOP per image in matrix products ({:.1} GFLOP/s achieved)",
            flops.step() / 1e9,
            flops.step() * t.train_img_per_s / 1e9
        );
        json["train_flops_per_image"] = serde_json::to_value(flops)?;
        json["train"] = serde_json::to_value(&t)?;
        json["train_img_per_s"] = t.train_img_per_s.into();
        json["peak_mem_mb"] = t.peak_mem_mb.into();
    }
    if matches!(args.mode, Mode::Infer | Mode::All) {
        let r = bench::bench_infer(&cfg)?;
        println!("inference img/s (median):");
        println!(
            "| variant | {} |",
            cfg.infer_batches.iter().map(|b| format!("bs {b}")).collect::<Vec<_>>().join(" | ")
        );
        println!("|---|{}", "---|".repeat(cfg.infer_batches.len()));
        for variant in ["base", "unmerged", "merged"] {
            let row: Vec<String> =
                cfg.infer_batches.iter().map(|b| format!("{:.2}", r.img_per_s[variant][b])).collect();
            println!("| {variant} | {} |", row.join(" | "));
        }
        println!("merged vs unmerged logits: max |diff| {:.2e}", r.merge_max_abs_diff);
        if let Some(m) = r.img_per_s["merged"].get(&16) {
            json["infer_img_per_s_bs16"] = (*m).into();
        }
        json["infer"] = serde_json::to_value(&r)?;
    }
    if args.mode == Mode::Parity {
        let p = bench::parity(&cfg)?;
        println!(
            "logits of {} images, {} against the CPU: fp32 max |diff| {:.2e} ({:.2e} without cuDNN), \
             bf16 max |diff| {:.2e}; largest |logit| {:.3}",
            p.batch,
            info.device_label(device),
            p.fp32_max_abs_diff,
            p.fp32_no_cudnn_max_abs_diff,
            p.bf16_max_abs_diff,
            p.cpu_logit_max_abs
        );
        json["parity"] = serde_json::to_value(&p)?;
    }
    if args.mode == Mode::Peak {
        let p = bench::matmul_peak(device, args.matmul_size, args.warmup, args.steps)?;
        println!(
            "fp32 matmul {n} x {n} x {n}: {:.1} GFLOP/s (BLAS {:.1}, oneDNN {}; median of {} products, {} threads)",
            p.gflops,
            p.blas_gflops,
            p.onednn_gflops.map_or("-".into(), |g| format!("{g:.1}")),
            args.steps,
            p.threads,
            n = p.size
        );
        json["matmul_peak"] = serde_json::to_value(&p)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&json)?);
    }
    Ok(ExitCode::SUCCESS)
}
