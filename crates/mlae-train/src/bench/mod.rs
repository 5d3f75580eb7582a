//! Throughput and memory of training and inference (`mlae-cli bench`, paper Table 3).
//!
//! Training runs the trainer's own step, [`crate::step::TrainStep`] (seeding, forward,
//! cross-entropy, the loss read back, backward, clipping as the default recipe sets it, AdamW
//! over the trainer's per-role parameter groups, the non-finite check, the accuracy count),
//! on a resident uint8 dataset indexed on the device and normalised as the trainer does, so
//! the figure is what a real run gets per step, without data decoding.
//! Inference times the base model (no adapter), the adapter unmerged and the adapter merged
//! into the weights, interleaved per batch size so that drift on a shared machine hits all
//! three alike. Each figure is a median over timed iterations.
//!
//! For `cargo xtask gpu-check` the training can also run in bf16 on learnable generated
//! images ([`BenchData::Patterns`]) and record every loss, so that one short run shows that
//! training works on a device, not only how fast it is; [`parity`] compares the logits of a
//! fixed batch on a CUDA device with the CPU's.

mod config;
mod infer;
mod parity;
mod peak;
mod train;

pub use config::{BENCH_LR, BENCH_WEIGHT_DECAY, BenchConfig, BenchData, pattern_images};
pub use infer::{InferBench, bench_infer};
pub use parity::{ParityReport, parity};
pub use peak::{MatmulPeak, matmul_peak};
pub use train::{TrainBench, bench_train, mem_measure};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Precision;
    use mlae_core::{AdapterKind, AdapterSpec};
    use mlae_vit::VitConfig;
    use tch::{Device, Kind};

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
        let p = parity::compare_with_cpu(&tiny()).unwrap();
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
