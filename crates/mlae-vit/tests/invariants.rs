//! PEFT's invariants and this crate's own guarantees, on the tiny timm ViT of the fixtures.
//!
//! The conformance tests (`conformance_*`) run over every kind of mlae-core's registry
//! (`AdapterKind::ALL`), each with the examples the registry gives for it, on whole layers and on
//! q/k/v slices of the fused qkv: a new kind gets all of them from its registry line, and no kind
//! is named there (but the plain backbone they compare with). What a check needs to know of a
//! kind it asks the kind (whether it has adapter layers, whether its plan trains the backbone,
//! which roles its schedule trains, whether its layer merges as W + dW).

mod common;

use common::*;
use mlae_core::{AdapterKind, AdapterSpec, LoraSpec, MlaeSpec, TargetLayer, count_params};
use mlae_vit::{AdaptedVit, CheckpointFormat, ForwardCtx, HeadLoad, ParamRole, Preset, StateDict, VitConfig};
use std::collections::{BTreeSet, HashMap};
use tch::{Device, Kind, Tensor};

/// The conformance specs: every registered kind with each of its examples (mlae-core's
/// `AdapterKind::examples`, which switch on the kind's dropout, per-block settings and
/// scales), a kind with adapter layers on all four whole layers, on q and v slices beside a
/// whole layer, and on all three slices.
fn conformance_specs() -> Vec<AdapterSpec> {
    let depth = tiny_vit(32).depth as usize;
    let placements: [&[TargetLayer]; 3] = [
        TargetLayer::WHOLE,
        &[TargetLayer::Q, TargetLayer::V, TargetLayer::Fc1],
        &[TargetLayer::V, TargetLayer::K, TargetLayer::Q],
    ];
    let mut specs = Vec::new();
    for kind in AdapterKind::ALL {
        for example in kind.examples(depth) {
            if kind.has_adapter() {
                specs.extend(
                    placements.iter().map(|t| AdapterSpec { targets: t.to_vec(), ..example.clone() }),
                );
            } else {
                specs.push(example);
            }
        }
    }
    specs
}

/// A spec as a message names it: kind, label, targets.
fn what(spec: &AdapterSpec) -> String {
    let targets: Vec<&str> = spec.targets.iter().map(|t| t.as_str()).collect();
    format!("{} ({}, targets {})", spec.kind, spec.label(), targets.join(","))
}

/// The plain backbone and head (the model every fresh adapter must reproduce).
fn linear_probe() -> AdapterSpec {
    AdapterSpec { kind: AdapterKind::LinearProbe, ..Default::default() }
}

#[test]
fn conformance_covers_every_registered_kind() {
    let specs = conformance_specs();
    let kinds: BTreeSet<&str> = specs.iter().map(|s| s.kind.as_str()).collect();
    let all: BTreeSet<&str> = AdapterKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(kinds, all);
    for s in &specs {
        eprintln!("conformance spec: {}", what(s));
    }
    eprintln!(
        "conformance kinds: {}",
        AdapterKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
    );
}

#[test]
fn conformance_fresh_adapters_leave_the_outputs_unchanged() {
    let _rng = rng_lock();
    let x = input(3, 0);
    let want = tiny_model(&linear_probe(), 7).forward_t(&x, &ForwardCtx::eval());
    for spec in conformance_specs() {
        let m = tiny_model(&spec, 7);
        assert!(m.forward_t(&x, &ForwardCtx::eval()).equal(&want), "{} at eval", what(&spec));
        // training mode too: masks and dropout act on a zero update
        tch::manual_seed(1);
        let train = m.forward_t(&x, &ForwardCtx::train(3, 10));
        assert!(train.equal(&want), "{} in training", what(&spec));
    }
}

/// Training moves exactly the trainable tensors: each of them, and no frozen one (the
/// backbone's weights are trainable only when the kind's plan trains the backbone, and then
/// every one of them moves).
#[test]
fn conformance_training_changes_only_the_trainable_tensors() {
    let _rng = rng_lock();
    for spec in conformance_specs() {
        let w = what(&spec);
        let m = tiny_model(&spec, 3);
        let full = m.plan().trains_backbone();
        let before_backbone = backbone_snapshot(&m);
        let before: Vec<(String, Tensor, ParamRole)> =
            m.trainable().into_iter().map(|(n, t, r)| (n, t.copy(), r)).collect();
        let names: BTreeSet<&str> = before.iter().map(|(n, _, _)| n.as_str()).collect();
        if full {
            // every backbone tensor, then the head
            assert_eq!(before.len(), before_backbone.len() + 2, "{w}");
            assert!(
                before.iter().take(before_backbone.len()).all(|(_, _, r)| *r == ParamRole::Backbone),
                "{w}"
            );
        }
        sgd_steps(&m, 6);
        for (name, t) in &before_backbone {
            let now = m.tensor(name).unwrap();
            if full {
                assert!(names.contains(name.as_str()), "{w}: {name} is not trainable");
                assert!(!now.equal(t), "{w}: every backbone tensor gets a gradient; {name} did not move");
            } else {
                assert!(!names.contains(name.as_str()), "{w}: {name} is trainable");
                assert!(now.equal(t), "{w}: frozen {name} changed");
                assert!(!now.requires_grad() && !now.grad().defined(), "{w}: frozen {name} has a gradient");
            }
        }
        let roles: &[ParamRole] = if full {
            &[ParamRole::Backbone, ParamRole::Head]
        } else {
            &[ParamRole::Adapter, ParamRole::Coefficient, ParamRole::BranchScale, ParamRole::Head]
        };
        let after = m.trainable();
        assert_eq!(after.len(), before.len(), "{w}");
        let schedule = m.plan().schedule();
        for ((name, now, role), (_, was, _)) in after.into_iter().zip(&before) {
            assert!(roles.contains(&role), "{w}: {name} has role {role:?}");
            assert!(now.requires_grad(), "{w}: {name}");
            if schedule.ever_trains(role) {
                assert!(!now.equal(was), "{w}: trainable {name} did not change");
            } else {
                assert!(now.equal(was), "{w}: {name} ({role:?}) never trains but changed");
            }
        }
    }
}

/// A q/v slice adapter is an adapter on a separate q or v layer: its update lands in its rows
/// of the fused qkv only, the k rows keep the frozen weight, and it merges exactly.
#[test]
fn slice_adapters_change_only_their_rows_of_qkv_and_merge_exactly() {
    let _rng = rng_lock();
    let spec = AdapterSpec {
        kind: AdapterKind::Lora,
        targets: vec![TargetLayer::Q, TargetLayer::V],
        lora: LoraSpec { rank: 4, alpha: Some(8.0), ..Default::default() },
        ..Default::default()
    };
    let mut m = tiny_model(&spec, 5);
    randomize_trainable(&m, 6);
    let x = input(2, 1);
    let unmerged = m.forward_t(&x, &ForwardCtx::eval());
    let w0 = m.tensor("blocks.1.attn.qkv.weight").unwrap().copy();
    let d = w0.size()[1];
    // the same update by hand: rows [0, d) get 2 B_q A_q, rows [2d, 3d) get 2 B_v A_v
    let t = |n: &str| m.tensor(&format!("blocks.1.attn.{n}")).unwrap();
    let dq = t("q.lora_B").mm(&t("q.lora_A")) * 2.0;
    let dv = t("v.lora_B").mm(&t("v.lora_A")) * 2.0;
    assert_eq!(t("q.lora_A").size(), [4, d]);
    assert_eq!(t("v.lora_B").size(), [d, 4]);
    m.merge().unwrap();
    let w = m.tensor("blocks.1.attn.qkv.weight").unwrap();
    assert_close("q rows", &w.narrow(0, 0, d), &(w0.narrow(0, 0, d) + dq), 1e-6);
    assert!(w.narrow(0, d, d).equal(&w0.narrow(0, d, d)), "the k rows are untouched");
    assert_close("v rows", &w.narrow(0, 2 * d, d), &(w0.narrow(0, 2 * d, d) + dv), 1e-6);
    assert_close("merged logits", &m.forward_t(&x, &ForwardCtx::eval()), &unmerged, 1e-5);
    m.unmerge().unwrap();
    assert_close("unmerged weight", &m.tensor("blocks.1.attn.qkv.weight").unwrap(), &w0, 1e-6);
    // qkv and one of its slices cannot both be adapted
    let both = AdapterSpec { targets: vec![TargetLayer::Qkv, TargetLayer::V], ..Default::default() };
    let err = both.resolve(2).unwrap_err().to_string();
    assert!(err.contains("adapter.targets") && err.contains("slice of qkv"), "{err}");
}

fn input(batch: i64, seed: u64) -> Tensor {
    det_randn(&[batch, 3, 32, 32], seed)
}

/// A few steps of plain SGD on the trainable tensors that the method's schedule ever trains
/// (frozen MLAE coefficients are trainable tensors it never trains), as a training loop would do.
fn sgd_steps(m: &AdaptedVit, steps: u64) {
    let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
    let schedule = m.plan().schedule();
    let params: Vec<_> = m.trainable().into_iter().filter(|(_, _, r)| schedule.ever_trains(*r)).collect();
    for step in 0..steps {
        tch::manual_seed(step as i64);
        let logits = m.forward_t(&input(4, 100 + step), &ForwardCtx::train(step, steps));
        let loss = logits.cross_entropy_for_logits(&y);
        for (_, t, _) in &params {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        loss.backward();
        tch::no_grad(|| {
            for (_, t, _) in &params {
                let g = t.grad();
                if g.defined() {
                    let mut t = t.shallow_clone();
                    let _ = t.g_sub_(&(g * 0.1));
                }
            }
        });
    }
}

fn backbone_snapshot(m: &AdaptedVit) -> Vec<(String, Tensor)> {
    let names: Vec<String> = checkpoint("tiny_vit.safetensors")
        .tensors
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !n.starts_with("head."))
        .collect();
    names.into_iter().map(|n| (n.clone(), m.tensor(&n).unwrap().copy())).collect()
}

/// An adapted layer's weight rows: a q/k/v slice's rows of the fused qkv, else the whole weight.
fn rows(t: Tensor, target: TargetLayer) -> Tensor {
    match target.qkv_slice() {
        Some(i) => {
            let n = t.size()[0] / 3;
            t.narrow(0, i as i64 * n, n)
        }
        None => t,
    }
}

fn fused_name(site: &mlae_core::LayerSite) -> String {
    format!("blocks.{}.{}.weight", site.block, site.target.fused().module_path())
}

/// Whether the layer's merged weight is `W + dW` (the layer's own `merged_delta`): then merge
/// and unmerge are one rounding each. A kind with its own merge (DoRA rescales the rows)
/// answers no.
fn merges_additively(a: &dyn mlae_vit::AdapterLayer, w: &Tensor) -> bool {
    a.merged_weight(w).equal(&(w + a.merged_delta(w)))
}

#[test]
fn conformance_merged_equals_unmerged_and_unmerge_restores_the_weights() {
    let x = input(3, 5);
    let plain = tiny_model(&linear_probe(), 11).forward_t(&x, &ForwardCtx::eval());
    for spec in conformance_specs().into_iter().filter(|s| s.kind.has_adapter()) {
        let w_ = what(&spec);
        let mut m = tiny_model(&spec, 11);
        randomize_trainable(&m, 11);
        let unmerged = m.forward_t(&x, &ForwardCtx::eval());
        let sites = m.plan().sites();
        let weights: Vec<(mlae_core::LayerSite, Tensor)> =
            sites.iter().map(|l| (*l, rows(m.tensor(&fused_name(l)).unwrap(), l.target).copy())).collect();
        let fused_before: HashMap<String, Tensor> =
            sites.iter().map(|l| (fused_name(l), m.tensor(&fused_name(l)).unwrap().copy())).collect();
        // each layer's exact LoRA export is its update, for a kind that merges W + dW
        for (site, w) in &weights {
            let a = m.adapter(site.block, site.target).unwrap();
            if merges_additively(a, w) {
                let lora = a.to_peft().unwrap();
                assert!(
                    max_abs_diff(&tensor2(&lora.delta()), &a.merged_delta(w)) < 1e-6,
                    "{w_}: {}",
                    site.name()
                );
            }
        }
        m.merge().unwrap();
        assert!(m.is_merged());
        assert!(matches!(m.merge(), Err(mlae_vit::VitError::Config(_))));
        let merged = m.forward_t(&x, &ForwardCtx::eval());
        assert_close(&format!("merged vs unmerged logits ({w_})"), &merged, &unmerged, 1e-5);
        assert!(max_abs_diff(&unmerged, &plain) > 1e-3, "{w_}: the randomised adapters change the logits");
        // a slice merges into its rows only: the rows of a fused qkv that nothing adapts keep W
        for (name, before) in fused_before.iter().filter(|(n, _)| n.ends_with("attn.qkv.weight")) {
            for slice in [TargetLayer::Q, TargetLayer::K, TargetLayer::V] {
                let adapted = sites
                    .iter()
                    .any(|l| fused_name(l) == *name && (l.target == slice || l.target == TargetLayer::Qkv));
                if !adapted {
                    let (now, was) =
                        (rows(m.tensor(name).unwrap(), slice), rows(before.shallow_clone(), slice));
                    assert!(now.equal(&was), "{w_}: the {slice} rows of {name} are not adapted but changed");
                }
            }
        }
        // a merged model skips the adapter path: changing the adapters changes nothing
        tch::no_grad(|| {
            for (_, mut t, role) in m.trainable() {
                if role != ParamRole::Head {
                    let _ = t.fill_(3.0);
                }
            }
        });
        assert!(m.forward_t(&x, &ForwardCtx::eval()).equal(&merged), "{w_}");
        // unmerge with the factors the merge used
        let mut m = tiny_model(&spec, 11);
        randomize_trainable(&m, 11);
        m.merge().unwrap();
        m.unmerge().unwrap();
        let mut worst = 0.0f64;
        for (site, w) in &weights {
            let name = &site.name();
            let now = rows(m.tensor(&fused_name(site)).unwrap(), site.target);
            let a = m.adapter(site.block, site.target).unwrap();
            let err = (&now - w).abs();
            if merges_additively(a, w) {
                // one rounding of W + dW: |error| <= ulp(|W| + |dW|) <= 2^-23 (|W| + |dW|)
                let bound = (w.abs() + a.merged_delta(w).abs()) * f64::from(f32::EPSILON);
                assert_eq!(err.le_tensor(&bound).all().int64_value(&[]), 1, "{w_}: {name}");
            } else {
                // a kind with its own merge (DoRA's unmerge divides by the merge's m/n, then
                // subtracts): a few roundings
                assert_close(&format!("unmerged {name} ({w_})"), &now, w, 1e-5);
            }
            worst = worst.max(err.max().double_value(&[]));
        }
        eprintln!("merge/unmerge round trip ({w_}): max abs weight error {worst:.3e}");
        assert_close(
            &format!("after unmerge ({w_})"),
            &m.forward_t(&x, &ForwardCtx::eval()),
            &unmerged,
            1e-5,
        );
    }
}

#[test]
fn conformance_merged_timm_export_is_the_merged_model() {
    let x = input(2, 9);
    let tmp = tempfile::tempdir().unwrap();
    for spec in conformance_specs() {
        let m = tiny_model(&spec, 2);
        randomize_trainable(&m, 2);
        let want = m.forward_t(&x, &ForwardCtx::eval());
        let path = tmp.path().join("merged.safetensors");
        m.export_merged_timm(&path).unwrap();
        // loaded as a plain backbone with its head, it reproduces the adapted model
        let mut plain = AdaptedVit::new(&tiny_vit(32), &linear_probe(), 0, Device::Cpu).unwrap();
        let report = plain.load_backbone(&path, None).unwrap();
        assert_eq!(report.head, HeadLoad::Loaded);
        assert!(report.unused.is_empty(), "{:?}", report.unused);
        assert_close(
            &format!("merged timm export ({})", what(&spec)),
            &plain.forward_t(&x, &ForwardCtx::eval()),
            &want,
            1e-5,
        );
    }
}

/// The backbone a PEFT adapter directory describes, applied as PEFT applies it at inference:
/// each target module's weight becomes `W + (alpha/r) B A`, or with a magnitude vector (DoRA)
/// `m (W + (alpha/r) B A) / ||W + (alpha/r) B A||` per output row; the head comes from
/// `modules_to_save`.
fn apply_peft(dir: &std::path::Path, base: &StateDict) -> StateDict {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    let t: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("adapter_model.safetensors")).unwrap().into_iter().collect();
    assert_eq!(cfg["use_rslora"], false);
    let layer = |name: &str, key: &str, default: &serde_json::Value| {
        cfg[key].get(name).unwrap_or(default).as_f64().unwrap()
    };
    let mut tensors: Vec<(String, Tensor)> =
        base.tensors.iter().map(|(k, v)| (k.clone(), v.copy())).collect();
    for name in cfg["target_modules"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()) {
        let scale = layer(name, "alpha_pattern", &cfg["lora_alpha"]) / layer(name, "rank_pattern", &cfg["r"]);
        let key = |suffix: &str| format!("base_model.model.{name}.{suffix}");
        let (a, b) = (&t[&key("lora_A.weight")], &t[&key("lora_B.weight")]);
        let weight = format!("{name}.weight");
        let (_, w) = tensors.iter_mut().find(|(k, _)| *k == weight).unwrap();
        let adapted = &*w + b.mm(a) * scale;
        *w = match t.get(&key("lora_magnitude_vector")) {
            Some(m) => {
                assert_eq!(cfg["use_dora"], true);
                let norm = adapted.norm_scalaropt_dim(2.0, [1], true);
                &adapted * (m.unsqueeze(1) / norm)
            }
            None => adapted,
        };
    }
    for (k, v) in tensors.iter_mut() {
        if k.starts_with("head.") {
            *v = t[&format!("base_model.model.{k}")].copy();
        }
    }
    StateDict { tensors, format: CheckpointFormat::Timm }
}

#[test]
fn conformance_peft_export_is_the_adapted_model() {
    let x = input(2, 6);
    let tmp = tempfile::tempdir().unwrap();
    let base = checkpoint("tiny_vit.safetensors");
    for spec in conformance_specs() {
        let w_ = what(&spec);
        let m = tiny_model(&spec, 4);
        randomize_trainable(&m, 4);
        let dir = tmp.path().join(format!("peft-{}", spec.label()));
        let exported = m.export_peft(&dir);
        if !spec.kind.has_adapter() {
            let e = exported.unwrap_err().to_string();
            assert!(e.contains("merged timm model"), "{w_}: {e}");
            continue;
        }
        match exported {
            Ok(()) => {}
            // a slice a kind cannot stack into one PEFT LoRA on qkv: the error says what to
            // export instead; whole layers always go to PEFT
            Err(e) if spec.targets.iter().any(|t| t.qkv_slice().is_some()) => {
                let e = e.to_string();
                assert!(e.contains("slice") && e.contains("merged"), "{w_}: {e}");
                eprintln!("PEFT export ({w_}): refused, {e}");
                continue;
            }
            Err(e) => panic!("{w_}: {e}"),
        }
        let mut plain = AdaptedVit::new(&tiny_vit(32), &linear_probe(), 0, Device::Cpu).unwrap();
        assert_eq!(plain.load_state_dict(&apply_peft(&dir, &base)).unwrap().head, HeadLoad::Loaded);
        assert_close(
            &format!("PEFT export applied ({w_})"),
            &plain.forward_t(&x, &ForwardCtx::eval()),
            &m.forward_t(&x, &ForwardCtx::eval()),
            1e-5,
        );
    }
}

#[test]
fn conformance_adapter_checkpoints_round_trip_bit_exactly() {
    let x = input(2, 4);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("adapter.safetensors");
    for spec in conformance_specs() {
        let m = tiny_model(&spec, 5);
        randomize_trainable(&m, 5);
        m.save_adapter(&path).unwrap();
        // a model built with another spec and seed takes the file's spec
        let mut other = tiny_model(&linear_probe(), 99);
        other.load_adapter(&path).unwrap();
        assert_eq!(other.spec(), m.spec());
        assert_eq!(other.plan(), m.plan());
        let (a, b) = (m.trainable(), other.trainable());
        assert_eq!(a.len(), b.len());
        for ((na, ta, ra), (nb, tb, rb)) in a.iter().zip(&b) {
            assert_eq!((na, ra), (nb, rb));
            assert!(ta.equal(tb), "{}: {na} differs after the round trip", what(&spec));
            assert!(tb.requires_grad());
        }
        assert!(m.forward_t(&x, &ForwardCtx::eval()).equal(&other.forward_t(&x, &ForwardCtx::eval())));
    }
}

#[test]
fn conformance_parameter_counts_agree_with_mlae_core() {
    let cfg = tiny_vit(32);
    for spec in conformance_specs() {
        let m = AdaptedVit::new(&cfg, &spec, 0, Device::Cpu).unwrap();
        let want = count_params(&spec.resolve(cfg.depth as usize).unwrap(), &cfg.dims());
        assert_eq!(m.param_count(), want, "{}", what(&spec));
    }
    // the paper's budget: 8 experts on qkv of the 12 blocks of ViT-B/16
    let cfg = VitConfig::from_preset(Preset::VitB16, 224, 100);
    let m = AdaptedVit::new(&cfg, &AdapterSpec::default(), 0, Device::Cpu).unwrap();
    let c = m.param_count();
    assert_eq!(c.adapter, 295_008);
    assert_eq!(c, count_params(m.plan(), &cfg.dims()));
    assert_eq!(c.trainable, 295_008 + 76_900);
}

#[test]
fn adapter_files_for_another_backbone_are_rejected_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("adapter.safetensors");
    tiny_model(&AdapterSpec::default(), 0).save_adapter(&path).unwrap();
    let cfg = VitConfig { num_classes: 7, ..tiny_vit(32) };
    let mut m = AdaptedVit::new(&cfg, &AdapterSpec::default(), 0, Device::Cpu).unwrap();
    let e = m.load_adapter(&path).unwrap_err().to_string();
    assert!(e.contains("adapter.safetensors") && e.contains("5 classes") && e.contains("7 classes"), "{e}");
    let cfg = VitConfig { dim: 64, heads: 2, ..tiny_vit(32) };
    let mut m = AdaptedVit::new(&cfg, &AdapterSpec::default(), 0, Device::Cpu).unwrap();
    let e = m.load_adapter(&path).unwrap_err().to_string();
    assert!(e.contains("width 32") && e.contains("width 64"), "{e}");
    // not an adapter file at all
    let e = m.load_adapter(&fixture("tiny_vit.safetensors")).unwrap_err().to_string();
    assert!(e.contains("not an MLAE adapter checkpoint"), "{e}");
}

#[test]
fn loading_errors_name_the_key_and_both_shapes() {
    let sd = checkpoint("tiny_vit.safetensors");
    let without = |skip: &str| StateDict {
        tensors: sd
            .tensors
            .iter()
            .filter(|(k, _)| k != skip)
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect(),
        format: sd.format,
    };
    let mut m = AdaptedVit::new(&tiny_vit(32), &AdapterSpec::default(), 0, Device::Cpu).unwrap();
    let before = m.tensor("blocks.0.attn.qkv.weight").unwrap().copy();
    let e = m.load_state_dict(&without("blocks.1.mlp.fc2.bias")).unwrap_err().to_string();
    assert!(e.contains("missing key `blocks.1.mlp.fc2.bias`"), "{e}");
    // a failed load leaves the model as it was
    assert!(m.tensor("blocks.0.attn.qkv.weight").unwrap().equal(&before));

    let mut bad = without("");
    for (k, t) in bad.tensors.iter_mut() {
        if k == "blocks.0.mlp.fc1.weight" {
            *t = t.narrow(0, 0, 100);
        }
    }
    let e = m.load_state_dict(&bad).unwrap_err().to_string();
    assert!(
        e.contains("blocks.0.mlp.fc1.weight") && e.contains("[100, 32]") && e.contains("[128, 32]"),
        "{e}"
    );

    // another class count: fresh head, reported
    let mut m =
        AdaptedVit::new(&VitConfig { num_classes: 9, ..tiny_vit(32) }, &linear_probe(), 0, Device::Cpu)
            .unwrap();
    let head = m.tensor("head.weight").unwrap().copy();
    let mut extra = without("");
    extra.tensors.push(("mask_token".into(), Tensor::zeros([1, 32], (Kind::Float, Device::Cpu))));
    let report = m.load_state_dict(&extra).unwrap();
    assert!(matches!(&report.head, HeadLoad::Fresh(why) if why.contains("5 classes") && why.contains('9')));
    assert!(m.tensor("head.weight").unwrap().equal(&head));
    let mut unused = report.unused.clone();
    unused.sort();
    assert_eq!(unused, ["head.bias", "head.weight", "mask_token"]);
    assert!(report.to_string().contains("fresh head"));

    // a head loaded earlier is replaced by a fresh one when the next checkpoint's does not fit
    let mut m = AdaptedVit::new(&tiny_vit(32), &linear_probe(), 4, Device::Cpu).unwrap();
    let fresh = m.tensor("head.weight").unwrap().copy();
    assert_eq!(m.load_state_dict(&sd).unwrap().head, HeadLoad::Loaded);
    assert!(!m.tensor("head.weight").unwrap().equal(&fresh));
    let mut three = without("");
    for (k, t) in three.tensors.iter_mut() {
        if k.starts_with("head.") {
            *t = t.narrow(0, 0, 3);
        }
    }
    assert!(matches!(m.load_state_dict(&three).unwrap().head, HeadLoad::Fresh(_)));
    assert!(m.tensor("head.weight").unwrap().equal(&fresh));
    assert_eq!(m.tensor("head.bias").unwrap().abs().sum(Kind::Float).double_value(&[]), 0.0);

    // a layer-scale checkpoint into a model without layer-scale
    let e = m.load_state_dict(&checkpoint("tiny_dinov2.safetensors")).unwrap_err().to_string();
    assert!(e.contains("ls1.gamma") || e.contains("ls2.gamma"), "{e}");
}

/// One statistic of timm's init, from `timm_init_stats.json` (`make_vit_fixtures.py`).
fn timm_stat(draw: &str, stat: &str) -> f64 {
    let text = std::fs::read_to_string(fixture("timm_init_stats.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json[draw][stat].as_f64().unwrap_or_else(|| panic!("{draw}.{stat} missing"))
}

#[test]
fn the_fresh_head_is_timms_init() {
    // timm's head: trunc_normal_(std=.02) with bounds +-2 absolute, i.e. a plain N(0, 0.02^2);
    // the same model and class count as the timm draw, so both have 384,000 values
    let cfg = VitConfig::from_preset(Preset::VitS16, 224, 1000);
    let m = AdaptedVit::new(&cfg, &linear_probe(), 0, Device::Cpu).unwrap();
    let w = m.tensor("head.weight").unwrap().to_kind(Kind::Double);
    let timm = |stat| timm_stat("head_vit_small_patch16_224_1000", stat);
    assert_eq!(w.numel() as f64, timm("numel"));
    let frac_beyond = |t: f64| w.abs().gt(t).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
    // sampling errors at n = 384,000: std 2.3e-5, fractions 3.4e-4 (2 std) and 8.4e-5 (3 std)
    let ours = [
        ("std", w.std(true).double_value(&[]), 2e-4),
        ("mean", w.mean(Kind::Double).double_value(&[]), 2e-4),
        ("beyond_2std", frac_beyond(0.04), 3e-3),
        ("beyond_3std", frac_beyond(0.06), 8e-4),
    ];
    for (stat, value, tol) in ours {
        assert!((value - timm(stat)).abs() < tol, "head {stat}: ours {value}, timm {}", timm(stat));
    }
    // the largest of 384,000 normal draws lies near 4.5 std for both (a cut at 2 std: 0.04)
    let max = w.abs().max().double_value(&[]);
    assert!((max / timm("max_abs") - 1.0).abs() < 0.2, "head max |w|: ours {max}, timm {}", timm("max_abs"));
    assert_eq!(m.tensor("head.bias").unwrap().abs().max().double_value(&[]), 0.0);
    // adapter A: U(+-1/sqrt(in)), B: 0, lambda: coeff_init
    let m = AdaptedVit::new(
        &cfg,
        &AdapterSpec { mlae: MlaeSpec { coeff_init: 0.25, ..Default::default() }, ..Default::default() },
        0,
        Device::Cpu,
    )
    .unwrap();
    let a = m.tensor("blocks.0.attn.qkv.mlae_A").unwrap();
    assert_eq!(a.size(), [8, 384]);
    let bound = 1.0 / 384f64.sqrt();
    assert!(a.abs().max().double_value(&[]) < bound);
    assert!((a.std(true).double_value(&[]) - bound / 3f64.sqrt()).abs() < 2e-3);
    assert_eq!(m.tensor("blocks.0.attn.qkv.mlae_B").unwrap().abs().max().double_value(&[]), 0.0);
    assert!(m.tensor("blocks.5.attn.qkv.mlae_lambda").unwrap().equal(&Tensor::full(
        [8],
        0.25,
        (Kind::Float, Device::Cpu)
    )));
    // experts start in distinct states, and layers differ from one another
    assert!(!a.get(0).equal(&a.get(1)));
    assert!(!a.equal(&m.tensor("blocks.1.attn.qkv.mlae_A").unwrap()));
}

#[test]
fn bf16_compute_runs_and_stays_close_to_fp32() {
    let _rng = rng_lock();
    let x = input(4, 8);
    let spec =
        AdapterSpec { mlae: MlaeSpec { expert_dropout: 0.5, ..Default::default() }, ..Default::default() };
    let m32 = tiny_model(&spec, 1);
    randomize_trainable(&m32, 1);
    let want = m32.forward_t(&x, &ForwardCtx::eval());
    let mut m = tiny_model(&spec, 1);
    randomize_trainable(&m, 1);
    m.set_compute_kind(Kind::BFloat16);
    assert_eq!(m.tensor("blocks.0.attn.qkv.weight").unwrap().kind(), Kind::BFloat16);
    assert!(m.trainable().iter().all(|(_, t, _)| t.kind() == Kind::Float));
    for input in [x.shallow_clone(), x.to_kind(Kind::BFloat16)] {
        let got = m.forward_t(&input, &ForwardCtx::eval());
        assert_eq!(got.kind(), Kind::Float);
        let scale = want.abs().max().double_value(&[]);
        assert_close(
            "bf16 vs fp32 logits (relative to max |logit|)",
            &(&got / scale),
            &(&want / scale),
            3e-2,
        );
    }
    // Merging into bf16 storage would round the update away: refused, the weights untouched.
    let before = m.tensor("blocks.0.attn.qkv.weight").unwrap().copy();
    let err = m.merge().unwrap_err().to_string();
    assert!(err.contains("blocks.0.attn.qkv") && err.contains("fp32"), "{err}");
    assert!(m.tensor("blocks.0.attn.qkv.weight").unwrap().equal(&before));
    assert!(!m.is_merged());
    // a training step (drop-path on) puts f32 gradients on the f32 master weights
    let mut m =
        AdaptedVit::new(&VitConfig { drop_path: 0.2, ..tiny_vit(32) }, &spec, 1, Device::Cpu).unwrap();
    m.load_state_dict(&checkpoint("tiny_vit.safetensors")).unwrap();
    randomize_trainable(&m, 1);
    m.set_compute_kind(Kind::BFloat16);
    let logits = m.forward_t(&x.to_kind(Kind::BFloat16), &ForwardCtx::train(0, 10));
    logits.cross_entropy_for_logits(&Tensor::from_slice(&[0i64, 1, 2, 3])).backward();
    for (name, t, _) in m.trainable() {
        let g = t.grad();
        assert!(g.defined() && g.kind() == Kind::Float, "{name}");
    }
}

#[test]
fn layer_input_is_what_each_linear_layer_sees() {
    let sd = checkpoint("tiny_vit.safetensors");
    let w: std::collections::HashMap<&str, &Tensor> =
        sd.tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let m = tiny_model(&AdapterSpec::default(), 0);
    let x = input(2, 3);
    // block 0 by hand from the checkpoint
    let t =
        x.conv2d(w["patch_embed.proj.weight"], Some(w["patch_embed.proj.bias"]), [8, 8], [0, 0], [1, 1], 1);
    let t = t.flatten(2, 3).transpose(1, 2);
    let t = Tensor::cat(&[w["cls_token"].expand([2, -1, -1], false), t], 1) + w["pos_embed"];
    let ln = |x: &Tensor, n: &str| {
        x.layer_norm([32], Some(w[&*format!("{n}.weight")]), Some(w[&*format!("{n}.bias")]), 1e-6, false)
    };
    let lin = |x: &Tensor, n: &str| x.linear(w[&*format!("{n}.weight")], Some(w[&*format!("{n}.bias")]));
    let y = ln(&t, "blocks.0.norm1");
    let qkv = lin(&y, "blocks.0.attn.qkv").view([2, 17, 3, 2, 16]).permute([2, 0, 3, 1, 4]);
    let att =
        (qkv.get(0).matmul(&qkv.get(1).transpose(-2, -1)) / 4.0).softmax(-1, Kind::Float).matmul(&qkv.get(2));
    let o = att.transpose(1, 2).reshape([2, 17, 32]);
    let t2 = &t + lin(&o, "blocks.0.attn.proj");
    let y2 = ln(&t2, "blocks.0.norm2");
    let h = lin(&y2, "blocks.0.mlp.fc1").gelu("none");
    for (target, want) in
        [(TargetLayer::Qkv, &y), (TargetLayer::Proj, &o), (TargetLayer::Fc1, &y2), (TargetLayer::Fc2, &h)]
    {
        let got = m.layer_input(&x, 0, target).unwrap();
        assert_close(&format!("layer_input {target}"), &got, want, 1e-5);
        assert!(!got.requires_grad());
    }
    assert!(m.layer_input(&x, 2, TargetLayer::Qkv).is_err());
    // accessors
    let a = m.adapter(1, TargetLayer::Qkv).unwrap();
    assert_eq!(a.site().name(), "blocks.1.attn.qkv");
    let f = a.factors();
    assert_eq!(
        (f.a.size(), f.b.size(), f.coefficients.size(), f.expert_rank),
        (vec![8, 32], vec![8, 96], vec![8], 1)
    );
    assert!(m.adapter(1, TargetLayer::Fc1).is_none());
    assert_eq!(m.plan().sites().len(), 2);
}

#[test]
fn drop_path_is_per_sample_in_training_and_off_at_eval() {
    let _rng = rng_lock();
    let cfg = VitConfig { drop_path: 0.5, ..tiny_vit(32) };
    let mut m = AdaptedVit::new(&cfg, &linear_probe(), 0, Device::Cpu).unwrap();
    m.load_state_dict(&checkpoint("tiny_vit.safetensors")).unwrap();
    let plain = tiny_model(&linear_probe(), 0);
    // 16 copies of one image: with per-sample drop-path their logits differ in training
    let x = input(1, 2).repeat([16, 1, 1, 1]);
    assert!(m.forward_t(&x, &ForwardCtx::eval()).equal(&plain.forward_t(&x, &ForwardCtx::eval())));
    tch::manual_seed(0);
    let y = m.forward_t(&x, &ForwardCtx::train(0, 1));
    let distinct = (0..16).filter(|&i| !y.get(i).equal(&y.get(0))).count();
    assert!(distinct > 0, "drop-path must act per sample");
    tch::manual_seed(0);
    assert!(m.forward_t(&x, &ForwardCtx::train(0, 1)).equal(&y), "libtorch's RNG drives drop-path");
}

#[test]
fn trainable_names_and_roles_are_stable() {
    let spec = AdapterSpec {
        kind: AdapterKind::Dmlora,
        targets: vec![TargetLayer::Fc1, TargetLayer::Qkv],
        ..Default::default()
    };
    let m = tiny_model(&spec, 0);
    let names: Vec<(String, ParamRole)> = m.trainable().into_iter().map(|(n, _, r)| (n, r)).collect();
    let want = [
        ("blocks.0.mlp.fc1.dmlora_A", ParamRole::Adapter),
        ("blocks.0.mlp.fc1.dmlora_B", ParamRole::Adapter),
        ("blocks.0.mlp.fc1.dmlora_scale", ParamRole::BranchScale),
        ("blocks.0.attn.qkv.dmlora_A", ParamRole::Adapter),
        ("blocks.0.attn.qkv.dmlora_B", ParamRole::Adapter),
        ("blocks.0.attn.qkv.dmlora_scale", ParamRole::BranchScale),
    ];
    for (got, (n, r)) in names.iter().zip(want) {
        assert_eq!((got.0.as_str(), got.1), (n, r));
    }
    assert_eq!(names.len(), 4 * 3 + 2);
    assert_eq!(
        names[12..],
        [("head.weight".to_string(), ParamRole::Head), ("head.bias".to_string(), ParamRole::Head)]
    );
    assert_eq!(m.tensor("blocks.1.mlp.fc1.dmlora_A").unwrap().size(), [4 * 8, 32]);
}
