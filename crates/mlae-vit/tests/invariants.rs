//! PEFT's invariants and this crate's own guarantees, on the tiny timm ViT of the fixtures.

mod common;

use common::*;
use mlae_core::{
    AdapterKind, AdapterSpec, DmloraSpec, LoraSpec, MaskSpec, MaskStrategy, MlaeSpec, TargetLayer,
    count_params,
};
use mlae_vit::{AdaptedVit, ForwardCtx, HeadLoad, ParamRole, Preset, StateDict, VitConfig, VitError};
use tch::{Device, Kind, Tensor};

/// Every adapter kind on every target layer, with the kind's dropout on (so training-mode
/// paths are exercised) and per-layer expert counts for MLAE.
fn adapter_specs() -> Vec<AdapterSpec> {
    let all = TargetLayer::WHOLE.to_vec();
    vec![
        AdapterSpec {
            kind: AdapterKind::Lora,
            targets: all.clone(),
            lora: LoraSpec { rank: 4, alpha: Some(8.0), input_dropout: 0.2, ..Default::default() },
            ..Default::default()
        },
        AdapterSpec {
            kind: AdapterKind::LoraDropout,
            targets: all.clone(),
            lora: LoraSpec { rank: 4, update_dropout: 0.3, ..Default::default() },
            ..Default::default()
        },
        AdapterSpec {
            kind: AdapterKind::Mlae,
            targets: all.clone(),
            mlae: MlaeSpec { experts: 4, expert_dropout: 0.5, coeff_init: 0.5, ..Default::default() },
            ..Default::default()
        },
        AdapterSpec {
            kind: AdapterKind::Mlae,
            targets: vec![TargetLayer::Qkv, TargetLayer::Fc2],
            mlae: MlaeSpec {
                experts: 4,
                expert_rank: 2,
                expert_dropout: 0.5,
                mask: MaskSpec {
                    strategy: MaskStrategy::Mixed,
                    experts_per_layer: Some(vec![1, 3]),
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        },
        AdapterSpec {
            kind: AdapterKind::Dmlora,
            targets: all.clone(),
            dmlora: DmloraSpec { branch_rank: 2, ..Default::default() },
            ..Default::default()
        },
        AdapterSpec {
            kind: AdapterKind::Dora,
            targets: all,
            lora: LoraSpec { rank: 4, alpha: Some(8.0), input_dropout: 0.2, ..Default::default() },
            ..Default::default()
        },
        // q and v as slices of the fused qkv (the lineage's LoRA placement), beside a whole layer
        AdapterSpec {
            kind: AdapterKind::Lora,
            targets: vec![TargetLayer::Q, TargetLayer::V, TargetLayer::Fc1],
            lora: LoraSpec { rank: 4, alpha: Some(8.0), input_dropout: 0.2, ..Default::default() },
            ..Default::default()
        },
        AdapterSpec {
            kind: AdapterKind::Mlae,
            targets: vec![TargetLayer::V, TargetLayer::K, TargetLayer::Q],
            mlae: MlaeSpec { experts: 4, expert_dropout: 0.5, coeff_init: 0.5, ..Default::default() },
            ..Default::default()
        },
        AdapterSpec {
            kind: AdapterKind::Dora,
            targets: vec![TargetLayer::V],
            lora: LoraSpec { rank: 4, alpha: Some(8.0), ..Default::default() },
            ..Default::default()
        },
    ]
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

fn linear_probe() -> AdapterSpec {
    AdapterSpec { kind: AdapterKind::LinearProbe, ..Default::default() }
}

#[test]
fn fresh_adapters_leave_the_outputs_unchanged() {
    let _rng = rng_lock();
    let x = input(3, 0);
    let base = tiny_model(&linear_probe(), 7);
    let want = base.forward_t(&x, &ForwardCtx::eval());
    for spec in adapter_specs() {
        let m = tiny_model(&spec, 7);
        assert!(m.forward_t(&x, &ForwardCtx::eval()).equal(&want), "{} at eval", spec.kind);
        // training mode too: masks and dropout act on a zero update
        tch::manual_seed(1);
        let train = m.forward_t(&x, &ForwardCtx::train(3, 10));
        assert!(train.equal(&want), "{} in training", spec.kind);
    }
}

/// A few steps of plain SGD on the trainable tensors, as a training loop would do.
fn sgd_steps(m: &AdaptedVit, steps: u64) {
    let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
    let params = m.trainable();
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

#[test]
fn training_changes_only_adapter_and_head_parameters() {
    let _rng = rng_lock();
    let mut specs = adapter_specs();
    specs.push(linear_probe());
    for spec in specs {
        let m = tiny_model(&spec, 3);
        let before_backbone = backbone_snapshot(&m);
        let before: Vec<(String, Tensor)> =
            m.trainable().into_iter().map(|(n, t, _)| (n, t.copy())).collect();
        sgd_steps(&m, 6);
        for (name, t) in &before_backbone {
            let now = m.tensor(name).unwrap();
            assert!(now.equal(t), "{}: frozen {name} changed", spec.kind);
            assert!(
                !now.requires_grad() && !now.grad().defined(),
                "{}: frozen {name} has a gradient",
                spec.kind
            );
        }
        for ((name, now, role), (_, was)) in m.trainable().into_iter().zip(&before) {
            assert!(matches!(
                role,
                ParamRole::Adapter | ParamRole::Coefficient | ParamRole::BranchScale | ParamRole::Head
            ));
            assert!(now.requires_grad());
            assert!(!now.equal(was), "{}: trainable {name} did not change", spec.kind);
        }
    }
}

#[test]
fn full_fine_tuning_trains_the_backbone() {
    let _rng = rng_lock();
    let m = tiny_model(&AdapterSpec { kind: AdapterKind::Full, ..Default::default() }, 3);
    let before = backbone_snapshot(&m);
    assert_eq!(m.trainable().len(), before.len() + 2);
    assert!(m.trainable().iter().take(before.len()).all(|(_, _, r)| *r == ParamRole::Backbone));
    sgd_steps(&m, 2);
    let changed = before.iter().filter(|(n, t)| !m.tensor(n).unwrap().equal(t)).count();
    assert_eq!(changed, before.len(), "every backbone tensor gets a gradient in full fine-tuning");
}

#[test]
fn merged_equals_unmerged_and_unmerge_restores_the_weights() {
    let x = input(3, 5);
    for spec in adapter_specs() {
        let mut m = tiny_model(&spec, 11);
        randomize_trainable(&m, 11);
        let unmerged = m.forward_t(&x, &ForwardCtx::eval());
        // each adapted layer's weight (a q/k/v slice: its rows of the fused qkv's)
        let rows = |t: Tensor, target: TargetLayer| match target.qkv_slice() {
            Some(i) => {
                let n = t.size()[0] / 3;
                t.narrow(0, i as i64 * n, n)
            }
            None => t,
        };
        let fused_name = |l: &mlae_core::LayerSite| {
            format!("blocks.{}.{}.weight", l.block, l.target.fused().module_path())
        };
        let weights: Vec<(mlae_core::LayerSite, Tensor)> = m
            .plan()
            .sites()
            .into_iter()
            .map(|l| (l, rows(m.tensor(&fused_name(&l)).unwrap(), l.target).copy()))
            .collect();
        m.merge().unwrap();
        assert!(m.is_merged());
        assert!(matches!(m.merge(), Err(VitError::Config(_))));
        let merged = m.forward_t(&x, &ForwardCtx::eval());
        assert_close(&format!("merged vs unmerged logits ({})", spec.kind), &merged, &unmerged, 1e-5);
        assert!(
            max_abs_diff(&unmerged, &tiny_model(&linear_probe(), 11).forward_t(&x, &ForwardCtx::eval()))
                > 1e-3
        );
        // a merged model skips the adapter path: changing the adapters changes nothing
        tch::no_grad(|| {
            for (name, mut t, role) in m.trainable() {
                if role != ParamRole::Head {
                    let _ = t.fill_(3.0);
                    let _ = name;
                }
            }
        });
        assert!(m.forward_t(&x, &ForwardCtx::eval()).equal(&merged), "{}", spec.kind);
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
            if spec.kind == AdapterKind::Dora {
                // DoRA's unmerge divides by the merge's m/n, then subtracts: a few roundings
                assert_close(&format!("DoRA unmerged {name}"), &now, w, 1e-5);
            } else {
                // one rounding of W + dW: |error| <= ulp(|W| + |dW|) <= 2^-23 (|W| + |dW|)
                let bound = (w.abs() + a.merged_delta(w).abs()) * f64::from(f32::EPSILON);
                assert_eq!(err.le_tensor(&bound).all().int64_value(&[]), 1, "{}: {name}", spec.kind);
            }
            worst = worst.max(err.max().double_value(&[]));
        }
        eprintln!("merge/unmerge round trip ({}): max abs weight error {worst:.3e}", spec.kind);
        assert_close(
            &format!("after unmerge ({})", spec.kind),
            &m.forward_t(&x, &ForwardCtx::eval()),
            &unmerged,
            1e-5,
        );
    }
}

#[test]
fn merged_timm_export_is_the_merged_model() {
    let x = input(2, 9);
    let tmp = tempfile::tempdir().unwrap();
    for spec in adapter_specs() {
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
            &format!("merged timm export ({})", spec.kind),
            &plain.forward_t(&x, &ForwardCtx::eval()),
            &want,
            1e-5,
        );
    }
}

#[test]
fn adapter_checkpoints_round_trip_bit_exactly() {
    let x = input(2, 4);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("adapter.safetensors");
    let mut specs = adapter_specs();
    specs.push(AdapterSpec { kind: AdapterKind::Full, ..Default::default() });
    for spec in specs {
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
            assert!(ta.equal(tb), "{}: {na} differs after the round trip", spec.kind);
            assert!(tb.requires_grad());
        }
        assert!(m.forward_t(&x, &ForwardCtx::eval()).equal(&other.forward_t(&x, &ForwardCtx::eval())));
    }
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
fn parameter_counts_agree_with_mlae_core() {
    let mut specs = adapter_specs();
    specs.push(linear_probe());
    specs.push(AdapterSpec { kind: AdapterKind::Full, ..Default::default() });
    let cfg = tiny_vit(32);
    for spec in specs {
        let m = AdaptedVit::new(&cfg, &spec, 0, Device::Cpu).unwrap();
        let want = count_params(m.plan(), &cfg.dims());
        assert_eq!(m.param_count(), want, "{}", spec.kind);
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
    // merged in bf16: one more rounding of the weights
    let unmerged = m.forward_t(&x, &ForwardCtx::eval());
    m.merge().unwrap();
    assert_eq!(m.tensor("blocks.0.attn.qkv.weight").unwrap().kind(), Kind::BFloat16);
    let scale = want.abs().max().double_value(&[]);
    assert_close(
        "bf16 merged vs unmerged (relative)",
        &(m.forward_t(&x, &ForwardCtx::eval()) / scale),
        &(unmerged / scale),
        3e-2,
    );
    m.unmerge().unwrap();
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
