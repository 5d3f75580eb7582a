//! Each adapter kind against its formula written out term by term, and against mlae-core's
//! merge and export math.

mod common;

use common::*;
use mlae_core::{
    AdapterKind, AdapterSpec, DmloraSpec, LoraSpec, MaskSampler, MlaeSpec, TargetLayer, UpdateDropoutOn,
    dmlora, merge_delta,
};
use mlae_vit::{AdaptedVit, AdapterCtx, AdapterLayer, ForwardCtx, LayerSite, Linear};
use tch::{Device, Kind, Tensor};

/// A tiny model with randomised adapters and the adapter of block 1's qkv.
fn adapted(spec: &AdapterSpec) -> AdaptedVit {
    let m = tiny_model(spec, 21);
    randomize_trainable(&m, 21);
    m
}

/// Block 1's frozen qkv layer, which the adapter of [`adapted`] sits on.
fn qkv1(m: &AdaptedVit) -> &Linear {
    m.linear(LayerSite { block: 1, target: TargetLayer::Qkv }).unwrap().base()
}

/// The update of block 1's qkv adapter as a weight, for the frozen weight under it.
fn qkv1_delta(m: &AdaptedVit) -> Tensor {
    m.linear(LayerSite { block: 1, target: TargetLayer::Qkv }).unwrap().delta(TargetLayer::Qkv).unwrap()
}

fn qkv_input() -> (Tensor, Tensor) {
    (det_randn(&[10, 32], 3), det_randn(&[10, 96], 4))
}

fn param(a: &dyn AdapterLayer, suffix: &str) -> Tensor {
    a.params().into_iter().find(|(n, _, _)| *n == suffix).unwrap().1.detach()
}

fn arr2(t: &Tensor) -> ndarray::Array2<f32> {
    let (r, c) = t.size2().unwrap();
    ndarray::Array2::from_shape_vec(
        (r as usize, c as usize),
        Vec::<f32>::try_from(t.contiguous().view(-1)).unwrap(),
    )
    .unwrap()
}

#[test]
fn dmlora_is_the_scaled_weighted_sum_of_its_branches() {
    let dm = DmloraSpec {
        branches: 3,
        branch_rank: 2,
        p_start: 0.5,
        p_end: 0.5,
        stage2_start: 0.9,
        ..Default::default()
    };
    let spec = AdapterSpec { kind: AdapterKind::Dmlora, dmlora: dm.clone(), ..Default::default() };
    let m = adapted(&spec);
    let a = m.adapter(1, TargetLayer::Qkv).unwrap();
    let (x, base) = qkv_input();
    let (am, bm, s) =
        (param(a, "dmlora_A"), param(a, "dmlora_B"), param(a, "dmlora_scale").double_value(&[0]));
    let sampler = MaskSampler::new(m.seed());
    let layer = 1; // block 1's qkv is the second layer of the plan
    let mut dropped = false;
    for step in [0u64, 5, 50, 95] {
        for train in [true, false] {
            let w = if train {
                dmlora::branch_weights(&sampler, &dm, step, 100, layer)
            } else {
                dmlora::branch_weights_inference(3)
            };
            dropped |= w.contains(&0.0);
            // base + s * sum_k w_k B_k^T A_k x, one branch at a time
            let mut want = base.copy();
            for (k, &wk) in w.iter().enumerate() {
                let (ak, bk) = (am.narrow(0, 2 * k as i64, 2), bm.narrow(0, 2 * k as i64, 2));
                want += x.mm(&ak.tr()).mm(&bk) * (s * wk as f64);
            }
            let ctx = AdapterCtx { train, step, total_steps: 100, layer, sampler: &sampler, weights: None };
            let got = a.forward(qkv1(&m), &x, base.shallow_clone(), &ctx);
            assert!(max_abs_diff(&got, &want) < 1e-5, "step {step}, train {train}");
        }
    }
    assert!(dropped, "p = 0.5 drops some branch in training");
    // merged: s / K per branch, mlae-core's merge
    let c = dmlora::branch_coefficients(3, s as f32);
    let want = merge_delta(arr2(&am).view(), arr2(&bm).view(), c.view(), None, 2);
    assert!(max_abs_diff(&qkv1_delta(&m), &tensor2(&want)) < 1e-6);
    let lora = a.to_peft().unwrap();
    assert!(max_abs_diff(&tensor2(&lora.delta()), &tensor2(&want)) < 1e-6);
    assert_eq!((lora.rank, lora.alpha), (6, 6.0));
}

#[test]
fn mlae_merge_and_export_agree_with_mlae_core() {
    let mlae = MlaeSpec { experts: 4, expert_rank: 2, expert_dropout: 0.5, ..Default::default() };
    let spec = AdapterSpec { mlae, ..Default::default() };
    let m = adapted(&spec);
    let a = m.adapter(1, TargetLayer::Qkv).unwrap();
    let (am, bm, l) = (param(a, "mlae_A"), param(a, "mlae_B"), param(a, "mlae_lambda"));
    let l = ndarray::Array1::from_vec(Vec::<f32>::try_from(&l).unwrap());
    let want = merge_delta(arr2(&am).view(), arr2(&bm).view(), l.view(), None, 2);
    assert!(max_abs_diff(&qkv1_delta(&m), &tensor2(&want)) < 1e-6);
    let lora = a.to_peft().unwrap();
    assert_eq!((lora.rank, lora.alpha, lora.scaling()), (8, 8.0, 1.0));
    assert!(max_abs_diff(&tensor2(&lora.delta()), &tensor2(&want)) < 1e-6);
    // factors are the stored tensors, in MLAE's layout
    let f = a.factors();
    assert!(f.a.equal(&am) && f.b.equal(&bm) && f.expert_rank == 2);
    // inference = base + x dW^T
    let (x, base) = qkv_input();
    let sampler = MaskSampler::new(m.seed());
    let ctx =
        AdapterCtx { train: false, step: 0, total_steps: 1, layer: 1, sampler: &sampler, weights: None };
    let got = a.forward(qkv1(&m), &x, base.shallow_clone(), &ctx);
    assert!(max_abs_diff(&got, &(&base + x.mm(&tensor2(&want).tr()))) < 1e-5);
}

#[test]
fn lora_kinds_place_their_dropout_where_they_say() {
    let _rng = rng_lock();
    let (x, base) = qkv_input();
    let sampler = MaskSampler::new(0);
    for kind in [AdapterKind::Lora, AdapterKind::LoraDropout] {
        // each kind reads its own dropout: 0.5 where it acts, the other one set to show it is ignored
        let (input_dropout, update_dropout) = if kind == AdapterKind::Lora { (0.5, 0.9) } else { (0.9, 0.5) };
        let lora =
            LoraSpec { rank: 4, alpha: Some(2.0), input_dropout, update_dropout, ..Default::default() };
        let spec = AdapterSpec { kind, lora, ..Default::default() };
        let m = adapted(&spec);
        let a = m.adapter(1, TargetLayer::Qkv).unwrap();
        let (am, bm) = (param(a, "lora_A"), param(a, "lora_B"));
        assert_eq!((am.size(), bm.size()), (vec![4, 32], vec![96, 4]));
        let scale = 0.5; // alpha / r
        let ctx =
            |train| AdapterCtx { train, step: 0, total_steps: 1, layer: 1, sampler: &sampler, weights: None };
        // eval: no dropout anywhere
        let want = &base + x.mm(&am.tr()).mm(&bm.tr()) * scale;
        assert!(max_abs_diff(&a.forward(qkv1(&m), &x, base.shallow_clone(), &ctx(false)), &want) < 1e-5);
        // train: the same libtorch RNG draw, applied on the input (lora) or the update (lora-dropout)
        tch::manual_seed(17);
        let got = a.forward(qkv1(&m), &x, base.shallow_clone(), &ctx(true));
        tch::manual_seed(17);
        let want = match kind {
            AdapterKind::Lora => &base + x.dropout(0.5, true).mm(&am.tr()).mm(&bm.tr()) * scale,
            _ => &base + (x.mm(&am.tr()) * scale).mm(&bm.tr()).dropout(0.5, true),
        };
        assert!(max_abs_diff(&got, &want) < 1e-5, "{kind}");
        assert!(
            max_abs_diff(&got, &a.forward(qkv1(&m), &x, base.shallow_clone(), &ctx(false))) > 1e-3,
            "{kind}: dropout acts"
        );
        // the export is PEFT's own layout, unscaled
        let lora = a.to_peft().unwrap();
        assert_eq!((lora.rank, lora.alpha), (4, 2.0));
        assert!(tensor2(&lora.lora_b).equal(&bm));
    }
}

#[test]
fn the_matrix_reading_drops_elements_of_dw_shared_by_the_batch() {
    let _rng = rng_lock();
    let sampler = MaskSampler::new(0);
    let lora = LoraSpec {
        rank: 4,
        update_dropout: 0.5,
        update_dropout_on: UpdateDropoutOn::Matrix,
        ..Default::default()
    };
    let spec = AdapterSpec { kind: AdapterKind::LoraDropout, lora, ..Default::default() };
    let m = adapted(&spec);
    let a = m.adapter(1, TargetLayer::Qkv).unwrap();
    let dw = qkv1_delta(&m); // (96, 32)
    let ctx =
        |train| AdapterCtx { train, step: 0, total_steps: 1, layer: 1, sampler: &sampler, weights: None };
    // x = the identity, twice: each row reads one column of the (dropped) dW
    let eye = Tensor::eye(32, (Kind::Float, Device::Cpu));
    let x = Tensor::cat(&[&eye, &eye], 0);
    let base = Tensor::zeros([64, 96], (Kind::Float, Device::Cpu));
    tch::manual_seed(5);
    let got = a.forward(qkv1(&m), &x, base.shallow_clone(), &ctx(true));
    let (first, second) = (got.narrow(0, 0, 32), got.narrow(0, 32, 32));
    assert!(first.equal(&second), "one mask per forward pass, shared by every row of the batch");
    // every element is 0 or dW / (1 - p), and about half are dropped
    let kept = first.ne(0.0);
    let scaled = dw.tr() * 2.0;
    assert!(max_abs_diff(&first.where_self(&kept, &scaled), &scaled) < 1e-5);
    let dropped = 1.0 - kept.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!((0.4..0.6).contains(&dropped), "dropped fraction {dropped}");
    // eval: exactly the LoRA
    let eval = a.forward(qkv1(&m), &x, base.shallow_clone(), &ctx(false));
    assert!(max_abs_diff(&eval.narrow(0, 0, 32), &dw.tr()) < 1e-5);
}

#[test]
fn the_models_mask_draws_follow_the_plan_order() {
    // qkv and fc1 of 2 blocks: plan layers 0..4; the layer index of each adapter's masks is its
    // place in the plan, so a model forward equals one assembled from explicit scales.
    let spec = AdapterSpec {
        targets: vec![TargetLayer::Fc1, TargetLayer::Qkv],
        mlae: MlaeSpec { expert_dropout: 0.5, ..Default::default() },
        ..Default::default()
    };
    let m = adapted(&spec);
    let order: Vec<String> = m.adapters().map(|a| a.site().name()).collect();
    assert_eq!(order, ["blocks.0.mlp.fc1", "blocks.0.attn.qkv", "blocks.1.mlp.fc1", "blocks.1.attn.qkv"]);
    let x = det_randn(&[2, 3, 32, 32], 5);
    let a = m.forward_t(&x, &ForwardCtx::train(7, 10));
    assert!(a.equal(&m.forward_t(&x, &ForwardCtx::train(7, 10))), "masks are a function of the step");
    assert!(!a.equal(&m.forward_t(&x, &ForwardCtx::train(8, 10))), "and change with it");
    assert!(!a.equal(&m.forward_t(&x, &ForwardCtx::eval())));
}
