//! GPU-vs-CPU logit parity: the same model and batch on a CUDA device and on the CPU.

use super::config::{BenchConfig, check, pattern_images, preprocess, randomise_adapters};
use crate::config::Precision;
use crate::error::{Result, TrainError};
use mlae_vit::{AdaptedVit, ForwardCtx};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

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
pub(super) fn compare_with_cpu(cfg: &BenchConfig) -> Result<ParityReport> {
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
