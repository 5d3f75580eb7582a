//! DoRA (`adapter.kind = "dora"`) against PEFT (`use_dora=True`): the fixture
//! `peft_dora.safetensors` (`xtask/python/make_vit_fixtures.py`, `dora_fixture`) holds one PEFT
//! DoRA layer's output and gradients, the merged weights and the model's logits. fp32 on the
//! CPU, tolerance 1e-5 (max abs diff), as the other golden tests.
//!
//! The first tests pin PEFT's semantics with the formulas written out here (per output row,
//! `y = base + (m/n - 1) (x W^T) + (m/n) s (x A^T B^T)` with `n = ||W + s B A||` detached, and the
//! merge `W' = (m/n) (W + s B A)`; the bias is never rescaled); the `dora_kind_*` tests run the
//! toolkit's own `dora` layer in the model against the same fixture.

mod common;

use common::*;
use mlae_core::{AdapterKind, AdapterSpec, LoraSpec, MaskSampler, TargetLayer};
use mlae_vit::{AdaptedVit, AdapterCtx, ForwardCtx, LayerSite};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-5;
/// The fixture's `lora_alpha / r` (8 / 4).
const SCALE: f64 = 2.0;
const LAYERS: [&str; 2] = ["blocks.0.attn.qkv", "blocks.1.attn.qkv"];

/// The magnitude PEFT starts from: the L2 norm of each output row of `w (out, in)` (B is zero at
/// init, so `W + s B A = W`).
fn dora_magnitude_init(w: &Tensor) -> Tensor {
    tch::no_grad(|| w.to_kind(Kind::Float).norm_scalaropt_dim(2.0, [1], false))
}

/// `n = ||W + s B A||` per output row, without gradient: PEFT (after the DoRA paper, section 4.3)
/// treats the norm as a constant, so A and B get gradient only through the low-rank term.
fn dora_weight_norm(w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Tensor {
    tch::no_grad(|| {
        let v = w.to_kind(Kind::Float) + b.to_kind(Kind::Float).mm(&a.to_kind(Kind::Float)) * scale;
        v.norm_scalaropt_dim(2.0, [1], false)
    })
}

/// The layer's output `y: (rows, out)` for `x: (rows, in)` and the frozen output `base = x W^T + b`.
/// `dropped`: the training input after dropout (PEFT then recomputes the base term `x W^T` from
/// it, while `base` keeps the undropped input); `None` at inference, where `x W^T = base - b`.
#[allow(clippy::too_many_arguments)]
fn dora_forward(
    x: &Tensor,
    base: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    magnitude: &Tensor,
    scale: f64,
    dropped: Option<&Tensor>,
) -> Tensor {
    let n = dora_weight_norm(w, a, b, scale);
    let factor = (magnitude / n).unsqueeze(0);
    let (xd, xw) = match dropped {
        Some(xd) => (xd.shallow_clone(), xd.mm(&w.tr())),
        None => (x.shallow_clone(), bias.map_or_else(|| base.shallow_clone(), |bias| base - bias)),
    };
    let lora = (xd.mm(&a.tr()) * scale).mm(&b.tr());
    base + (&factor - 1.0) * xw + factor * lora
}

/// PEFT's merge: `W' = (m / n) (W + s B A)` per output row, n from the unmerged W.
fn dora_merge(w: &Tensor, a: &Tensor, b: &Tensor, magnitude: &Tensor, scale: f64) -> Tensor {
    tch::no_grad(|| {
        let n = dora_weight_norm(w, a, b, scale);
        let v = w + b.mm(a) * scale;
        (magnitude / n).unsqueeze(1) * v
    })
}

/// The exact inverse of [`dora_merge`], given the norm n of the unmerged weight (PEFT caches it at
/// merge time: it cannot be recomputed from W').
fn dora_unmerge(
    merged: &Tensor,
    a: &Tensor,
    b: &Tensor,
    magnitude: &Tensor,
    n: &Tensor,
    scale: f64,
) -> Tensor {
    tch::no_grad(|| merged / (magnitude / n).unsqueeze(1) - b.mm(a) * scale)
}

fn leaf(t: &Tensor) -> Tensor {
    t.detach().copy().set_requires_grad(true)
}

#[test]
fn magnitude_starts_at_the_row_norms_of_w() {
    let f = tensors("peft_dora.safetensors");
    let sd = checkpoint("tiny_vit.safetensors");
    for layer in LAYERS {
        let w = sd.get(&format!("{layer}.weight")).unwrap();
        let init = dora_magnitude_init(w);
        assert_close(&format!("{layer} magnitude init"), &init, &f[&format!("{layer}.magnitude_init")], TOL);
        let m = &f[&format!("{layer}.lora_magnitude_vector")];
        assert!(max_abs_diff(&init, m) > 1e-2, "the fixture's magnitude must be moved from its init");
    }
}

#[test]
fn layer_output_and_gradients_match_peft() {
    let f = tensors("peft_dora.safetensors");
    let (w, bias) = (&f["layer.w"], &f["layer.b"]);
    let layer = LAYERS[0];
    for case in ["eval", "train"] {
        let x = leaf(&f["layer.x"]);
        let a = leaf(&f[&format!("{layer}.lora_A")]);
        let b = leaf(&f[&format!("{layer}.lora_B")]);
        let m = leaf(&f[&format!("{layer}.lora_magnitude_vector")]);
        let x2 = x.flatten(0, 1);
        let base = x2.linear(w, Some(bias));
        let dropped = (case == "train").then(|| &x2 * f["layer.train.mask"].flatten(0, 1));
        let y = dora_forward(&x2, &base, w, Some(bias), &a, &b, &m, SCALE, dropped.as_ref());
        let y = y.view_as(&f["layer.g"]);
        assert_close(&format!("DoRA layer y ({case})"), &y, &f[&format!("layer.{case}.y")], TOL);
        (&y * &f["layer.g"]).sum(Kind::Float).backward();
        for (what, t, key) in [("dL/dm", &m, "grad_m"), ("dL/dA", &a, "grad_a"), ("dL/dB", &b, "grad_b")] {
            assert_close(
                &format!("DoRA {what} ({case})"),
                &t.grad(),
                &f[&format!("layer.{case}.{key}")],
                TOL,
            );
        }
        assert_close(&format!("DoRA dL/dx ({case})"), &x.grad(), &f[&format!("layer.{case}.grad_x")], TOL);
    }
    // the fixtures tell the two DoRA cases and plain LoRA apart
    assert!(max_abs_diff(&f["layer.eval.y"], &f["layer.train.y"]) > 1e-2, "dropout must change y");
    let x2 = f["layer.x"].flatten(0, 1);
    let (a, b) = (&f[&format!("{layer}.lora_A")], &f[&format!("{layer}.lora_B")]);
    let lora = (x2.linear(w, Some(bias)) + (x2.mm(&a.tr()) * SCALE).mm(&b.tr())).view_as(&f["layer.g"]);
    assert!(max_abs_diff(&lora, &f["layer.eval.y"]) > 1e-2, "DoRA must differ from LoRA");
}

#[test]
fn the_weight_norm_is_detached_as_in_peft() {
    // the same forward with the norm on the gradient graph gives other A and B gradients, so the
    // match above pins PEFT's detach
    let f = tensors("peft_dora.safetensors");
    let (w, bias, layer) = (&f["layer.w"], &f["layer.b"], LAYERS[0]);
    let x2 = f["layer.x"].flatten(0, 1);
    let a = leaf(&f[&format!("{layer}.lora_A")]);
    let b = leaf(&f[&format!("{layer}.lora_B")]);
    let m = &f[&format!("{layer}.lora_magnitude_vector")];
    let n = (w + b.mm(&a) * SCALE).norm_scalaropt_dim(2.0, [1], false);
    let factor = (m / n).unsqueeze(0);
    let lora = (x2.mm(&a.tr()) * SCALE).mm(&b.tr());
    let y = x2.linear(w, Some(bias)) + (&factor - 1.0) * x2.mm(&w.tr()) + factor * lora;
    (y.view_as(&f["layer.g"]) * &f["layer.g"]).sum(Kind::Float).backward();
    let d = max_abs_diff(&a.grad(), &f["layer.eval.grad_a"]);
    assert!(d > 1e-2, "an attached norm changes dL/dA by only {d:e}");
}

#[test]
fn merged_weights_match_peft_and_unmerge_exactly() {
    let f = tensors("peft_dora.safetensors");
    let sd = checkpoint("tiny_vit.safetensors");
    for layer in LAYERS {
        let w = sd.get(&format!("{layer}.weight")).unwrap();
        let (a, b) = (&f[&format!("{layer}.lora_A")], &f[&format!("{layer}.lora_B")]);
        let m = &f[&format!("{layer}.lora_magnitude_vector")];
        let merged = dora_merge(w, a, b, m, SCALE);
        assert_close(&format!("{layer} merged weight"), &merged, &f[&format!("merged.{layer}.weight")], TOL);
        let bias = sd.get(&format!("{layer}.bias")).unwrap();
        assert!(f[&format!("merged.{layer}.bias")].equal(bias), "PEFT leaves the bias as it is");
        let n = dora_weight_norm(w, a, b, SCALE);
        let back = dora_unmerge(&merged, a, b, m, &n, SCALE);
        assert_close(&format!("{layer} unmerged weight"), &back, w, TOL);
    }
}

#[test]
fn the_merged_model_gives_peft_dora_logits() {
    // the whole model through our merge: the tiny ViT with the two qkv weights replaced by
    // `dora_merge` must give the logits of PEFT's unmerged DoRA model
    let f = tensors("peft_dora.safetensors");
    let mut sd = checkpoint("tiny_vit.safetensors");
    for layer in LAYERS {
        let name = format!("{layer}.weight");
        let (a, b) = (&f[&format!("{layer}.lora_A")], &f[&format!("{layer}.lora_B")]);
        let m = &f[&format!("{layer}.lora_magnitude_vector")];
        let slot = sd.tensors.iter_mut().find(|(n, _)| *n == name).unwrap();
        slot.1 = dora_merge(&slot.1, a, b, m, SCALE);
    }
    let probe = AdapterSpec { kind: AdapterKind::LinearProbe, ..Default::default() };
    let mut model = AdaptedVit::new(&tiny_vit(32), &probe, 0, Device::Cpu).unwrap();
    model.load_state_dict(&sd).unwrap();
    let logits = model.forward_t(&f["x"], &ForwardCtx::eval());
    assert_close("merged DoRA model vs PEFT DoRA logits", &logits, &f["logits"], TOL);
    assert_close("merged DoRA model vs PEFT merge_and_unload", &logits, &f["merged_logits"], TOL);
    let base = tiny_model(&probe, 0).forward_t(&f["x"], &ForwardCtx::eval());
    assert!(max_abs_diff(&logits, &base) > 1e-2, "the fixture's DoRA must change the logits");
}

/// The fixture's DoRA (r 4, alpha 8, on qkv) as the toolkit's `dora` kind on the tiny ViT.
fn dora_model() -> AdaptedVit {
    let spec = AdapterSpec {
        kind: AdapterKind::Dora,
        targets: vec![TargetLayer::Qkv],
        lora: LoraSpec { rank: 4, alpha: Some(8.0), ..Default::default() },
        ..Default::default()
    };
    tiny_model(&spec, 3)
}

/// Copies the fixture's trained A, B and m into the model.
fn load_fixture_adapter(model: &AdaptedVit, f: &std::collections::HashMap<String, Tensor>) {
    for layer in LAYERS {
        for key in ["lora_A", "lora_B", "lora_magnitude_vector"] {
            let name = format!("{layer}.{key}");
            let mut t = model.tensor(&name).unwrap_or_else(|| panic!("the model has no {name}"));
            tch::no_grad(|| t.copy_(&f[&name]));
        }
    }
}

#[test]
fn dora_kind_starts_at_the_row_norms_and_leaves_the_model_unchanged() {
    let f = tensors("peft_dora.safetensors");
    let model = dora_model();
    for layer in LAYERS {
        let m = model.tensor(&format!("{layer}.lora_magnitude_vector")).unwrap();
        assert_close(
            &format!("{layer} magnitude after load"),
            &m,
            &f[&format!("{layer}.magnitude_init")],
            TOL,
        );
    }
    let probe = tiny_model(&AdapterSpec { kind: AdapterKind::LinearProbe, ..Default::default() }, 3);
    let x = &f["x"];
    assert_close(
        "fresh DoRA vs base model",
        &model.forward_t(x, &ForwardCtx::eval()),
        &probe.forward_t(x, &ForwardCtx::eval()),
        TOL,
    );
    let names: Vec<String> = model.trainable().into_iter().map(|(n, _, _)| n).collect();
    assert!(names.contains(&"blocks.1.attn.qkv.lora_magnitude_vector".to_string()), "{names:?}");
    let count = model.param_count();
    // per layer: r (in + out) + out = 4 (32 + 96) + 96
    assert_eq!(count.adapter, 2 * (4 * (32 + 96) + 96));
    assert_eq!(count.adapter, mlae_core::count_params(model.plan(), &tiny_vit(32).dims()).adapter);
}

#[test]
fn dora_kind_gives_peft_logits_and_gradients() {
    let f = tensors("peft_dora.safetensors");
    let model = dora_model();
    load_fixture_adapter(&model, &f);
    let logits = model.forward_t(&f["x"], &ForwardCtx::eval());
    assert_close("dora kind vs PEFT DoRA logits", &logits, &f["logits"], TOL);
    (&logits * &f["g"]).sum(Kind::Float).backward();
    for layer in LAYERS {
        for key in ["lora_A", "lora_B", "lora_magnitude_vector"] {
            let name = format!("{layer}.{key}");
            let t = model.tensor(&name).unwrap();
            assert_close(&format!("dL/d {name}"), &t.grad(), &f[&format!("grad.{name}")], TOL);
        }
    }
}

#[test]
fn dora_kind_layer_with_input_dropout_follows_peft() {
    // PEFT's training forward with dropout (checked above against the fixture's fixed mask by
    // `dora_forward`): the layer's own dropout draw, replayed with the same torch seed
    let f = tensors("peft_dora.safetensors");
    let spec = AdapterSpec {
        kind: AdapterKind::Dora,
        targets: vec![TargetLayer::Qkv],
        lora: LoraSpec { rank: 4, alpha: Some(8.0), input_dropout: 0.25, ..Default::default() },
        ..Default::default()
    };
    let model = tiny_model(&spec, 3);
    load_fixture_adapter(&model, &f);
    let layer = model.adapter(0, TargetLayer::Qkv).unwrap();
    let frozen = model.linear(LayerSite { block: 0, target: TargetLayer::Qkv }).unwrap().base();
    let (w, bias) =
        (model.tensor("blocks.0.attn.qkv.weight").unwrap(), model.tensor("blocks.0.attn.qkv.bias").unwrap());
    let x2 = f["layer.x"].flatten(0, 1);
    let base = x2.linear(&w, Some(&bias));
    let sampler = MaskSampler::new(0);
    let ctx =
        |train| AdapterCtx { train, step: 0, total_steps: 1, layer: 0, sampler: &sampler, weights: None };
    tch::manual_seed(11);
    let y = layer.forward(frozen, &x2, base.shallow_clone(), &ctx(true));
    tch::manual_seed(11);
    let dropped = x2.dropout(0.25, true);
    let (a, b, m) = (
        &f["blocks.0.attn.qkv.lora_A"],
        &f["blocks.0.attn.qkv.lora_B"],
        &f["blocks.0.attn.qkv.lora_magnitude_vector"],
    );
    let want = dora_forward(&x2, &base, &w, Some(&bias), a, b, m, SCALE, Some(&dropped));
    assert_close("dora kind, training with input dropout", &y, &want, TOL);
    let eval = layer.forward(frozen, &x2, base.shallow_clone(), &ctx(false));
    assert_close("dora kind, eval", &eval.view_as(&f["layer.g"]), &f["layer.eval.y"], TOL);
    assert!(max_abs_diff(&y, &eval) > 1e-2, "dropout must change the training output");
}

#[test]
fn dora_kind_merges_to_peft_weights_and_unmerges() {
    let f = tensors("peft_dora.safetensors");
    let mut model = dora_model();
    load_fixture_adapter(&model, &f);
    let before: Vec<Tensor> =
        LAYERS.iter().map(|l| model.tensor(&format!("{l}.weight")).unwrap().copy()).collect();
    let unmerged_logits = model.forward_t(&f["x"], &ForwardCtx::eval());
    model.merge().unwrap();
    for layer in LAYERS {
        let w = model.tensor(&format!("{layer}.weight")).unwrap();
        assert_close(
            &format!("{layer} merged by the dora kind"),
            &w,
            &f[&format!("merged.{layer}.weight")],
            TOL,
        );
        let b = model.tensor(&format!("{layer}.bias")).unwrap();
        assert!(b.equal(&f[&format!("merged.{layer}.bias")]), "the bias is not rescaled");
    }
    let merged_logits = model.forward_t(&f["x"], &ForwardCtx::eval());
    assert_close("merged dora kind vs PEFT merge_and_unload", &merged_logits, &f["merged_logits"], TOL);
    assert_close("merged vs unmerged dora kind", &merged_logits, &unmerged_logits, TOL);
    model.unmerge().unwrap();
    for (layer, w0) in LAYERS.iter().zip(&before) {
        let w = model.tensor(&format!("{layer}.weight")).unwrap();
        assert_close(&format!("{layer} after unmerge"), &w, w0, 1e-6);
    }
}
