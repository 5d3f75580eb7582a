//! Inference throughput of the base model, the unmerged adapter and the merged adapter.

use super::config::{BenchConfig, check, median, preprocess, randomise_adapters};
use crate::config::Precision;
use crate::error::{Result, TrainError};
use mlae_core::{AdapterKind, AdapterSpec};
use mlae_vit::{AdaptedVit, ForwardCtx};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Inference throughput: `img_per_s[variant][batch]`, variants `base`, `unmerged`, `merged`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferBench {
    pub img_per_s: BTreeMap<String, BTreeMap<usize, f64>>,
    /// Largest |logit difference| between the merged and the unmerged model on one batch: the
    /// merged model computes the same function.
    pub merge_max_abs_diff: f64,
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
