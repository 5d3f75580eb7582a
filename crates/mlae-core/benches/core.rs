//! Benchmarks of mlae-core at ViT-B/16 sizes: `cargo bench -p mlae-core`.
//!
//! - similarity of one qkv layer (8 experts, 768 -> 2304), and of a whole 12-layer adapter;
//! - mask sampling for one layer and for every layer of a step (to set against a training step);
//! - merging one layer's experts into dW, and DMLoRA's branch weights.

use criterion::{Criterion, criterion_group, criterion_main};
use mlae_core::{
    AdapterPlan, AdapterSpec, DmloraSpec, MaskSampler, MlaeSpec, SimilarityReport,
    dmlora::branch_weights_into, expert_similarity, merge_delta,
};
use ndarray::{Array1, Array2};
use std::hint::black_box;

/// A deterministic matrix with entries in [-1, 1) (an LCG; the values do not matter).
fn mat(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    Array2::from_shape_simple_fn((rows, cols), || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

const DIM: usize = 768;
const QKV: usize = 3 * 768;

fn similarity(c: &mut Criterion) {
    let mut g = c.benchmark_group("similarity");
    let a = mat(8, DIM, 1);
    let b = mat(8, QKV, 2);
    g.bench_function("vit_b_qkv_layer_8x1", |bench| {
        bench.iter(|| expert_similarity(black_box(a.view()), black_box(b.view()), 1))
    });
    g.bench_function("vit_b_qkv_layer_4x2", |bench| {
        bench.iter(|| expert_similarity(black_box(a.view()), black_box(b.view()), 2))
    });
    let layers: Vec<(Array2<f32>, Array2<f32>)> =
        (0..12).map(|l| (mat(8, DIM, 10 + l), mat(8, QKV, 100 + l))).collect();
    g.bench_function("vit_b_qkv_12_layers_report", |bench| {
        bench.iter(|| {
            SimilarityReport::from_layers(
                layers
                    .iter()
                    .enumerate()
                    .map(|(i, (a, b))| (format!("blocks.{i}.attn.qkv"), a.view(), b.view(), 1)),
            )
        })
    });
    g.finish();
}

fn masks(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    let sampler = MaskSampler::new(0);
    let mut buf = [0.0f32; 8];
    let mut step = 0u64;
    g.bench_function("layer_8_experts_p0.5", |bench| {
        bench.iter(|| {
            step += 1;
            sampler.layer_scales_into(black_box(step), 3, 0.5, &mut buf);
            black_box(&buf);
        })
    });
    let spec =
        AdapterSpec { mlae: MlaeSpec { expert_dropout: 0.5, ..Default::default() }, ..Default::default() };
    let AdapterPlan::Mlae(plan) = spec.resolve(12).unwrap() else { unreachable!("an mlae spec") };
    let mut bufs: Vec<Vec<f32>> = plan.layers.iter().map(|l| vec![0.0; l.experts]).collect();
    g.bench_function("step_12_layers_8_experts_p0.5", |bench| {
        bench.iter(|| {
            step += 1;
            for (i, (l, out)) in plan.layers.iter().zip(bufs.iter_mut()).enumerate() {
                sampler.layer_scales_into(black_box(step), i, l.expert_dropout, out);
            }
            black_box(&bufs);
        })
    });
    let spec = DmloraSpec { branches: 4, ..Default::default() };
    let mut w = [0.0f32; 4];
    g.bench_function("dmlora_branch_weights_4", |bench| {
        bench.iter(|| {
            step += 1;
            branch_weights_into(&sampler, &spec, black_box(step % 10_000), 10_000, 3, &mut w);
            black_box(&w);
        })
    });
    g.finish();
}

fn merge(c: &mut Criterion) {
    let mut g = c.benchmark_group("merge");
    let a = mat(8, DIM, 1);
    let b = mat(8, QKV, 2);
    let lambda = Array1::from_elem(8, 0.5f32);
    g.bench_function("vit_b_qkv_layer_r8", |bench| {
        bench.iter(|| merge_delta(black_box(a.view()), black_box(b.view()), lambda.view(), None, 1))
    });
    g.finish();
}

criterion_group!(benches, similarity, masks, merge);
criterion_main!(benches);
