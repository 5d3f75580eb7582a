//! The exports, loaded by the real timm and PEFT: `xtask/python/check_exports.py` must
//! reproduce the Rust logits from the merged timm file and from the PEFT adapter.
//!
//! Python: `$MLAE_PYTHON`, else `<workspace>/.venv/bin/python`. Without a Python that has timm
//! and PEFT the test says so and skips, unless `MLAE_REQUIRE_PYTHON_CHECKS=1` (CI sets it
//! through `cargo xtask test`), which makes that a failure.

mod common;

use common::*;
use mlae_core::{
    AdapterKind, AdapterSpec, DmloraSpec, LoraSpec, MaskSpec, MaskStrategy, MlaeSpec, TargetLayer,
};
use mlae_vit::{AdaptedVit, ForwardCtx, VitConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Tensor};

const TOLERANCE: f64 = 1e-5;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The Python to run, or why there is none.
fn python() -> Result<PathBuf, String> {
    let py = std::env::var_os("MLAE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv").join("bin").join("python"));
    let probe = Command::new(&py).args(["-c", "import timm, peft, safetensors, torch"]).output();
    match probe {
        Ok(o) if o.status.success() => Ok(py),
        Ok(o) => Err(format!(
            "{} cannot import timm/peft/safetensors/torch: {}",
            py.display(),
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
        )),
        Err(e) => Err(format!("cannot run {}: {e}", py.display())),
    }
}

struct Case {
    name: &'static str,
    cfg: VitConfig,
    backbone: &'static str,
    spec: AdapterSpec,
}

fn cases() -> Vec<Case> {
    let mlae_mixed = AdapterSpec {
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
    };
    vec![
        Case {
            name: "lora",
            cfg: tiny_vit(32),
            backbone: "tiny_vit.safetensors",
            spec: AdapterSpec {
                kind: AdapterKind::Lora,
                targets: vec![TargetLayer::Qkv, TargetLayer::Fc1],
                lora: LoraSpec { rank: 4, alpha: Some(8.0), ..Default::default() },
                ..Default::default()
            },
        },
        Case {
            name: "lora-dropout",
            cfg: tiny_vit(32),
            backbone: "tiny_vit.safetensors",
            spec: AdapterSpec {
                kind: AdapterKind::LoraDropout,
                lora: LoraSpec { update_dropout: 0.3, ..Default::default() },
                ..Default::default()
            },
        },
        Case {
            name: "mlae",
            cfg: tiny_vit(32),
            backbone: "tiny_vit.safetensors",
            spec: AdapterSpec::default(),
        },
        Case {
            name: "mlae-mixed-ranks",
            cfg: tiny_vit(32),
            backbone: "tiny_vit.safetensors",
            spec: mlae_mixed,
        },
        Case {
            name: "dmlora",
            cfg: tiny_vit(32),
            backbone: "tiny_vit.safetensors",
            spec: AdapterSpec {
                kind: AdapterKind::Dmlora,
                dmlora: DmloraSpec { branch_rank: 2, ..Default::default() },
                targets: vec![TargetLayer::Proj, TargetLayer::Qkv],
                ..Default::default()
            },
        },
        Case {
            name: "dora",
            cfg: tiny_vit(32),
            backbone: "tiny_vit.safetensors",
            spec: AdapterSpec {
                kind: AdapterKind::Dora,
                targets: vec![TargetLayer::Qkv, TargetLayer::Fc1],
                lora: LoraSpec { rank: 4, alpha: Some(8.0), input_dropout: 0.1, ..Default::default() },
                ..Default::default()
            },
        },
        // q and v as slices of the fused qkv: PEFT gets one exact LoRA on attn.qkv (the
        // slices' A stacked, B block-diagonal)
        Case {
            name: "lora-qv",
            cfg: tiny_vit(32),
            backbone: "tiny_vit.safetensors",
            spec: AdapterSpec {
                kind: AdapterKind::Lora,
                targets: vec![TargetLayer::Q, TargetLayer::V, TargetLayer::Fc1],
                lora: LoraSpec { rank: 4, alpha: Some(8.0), ..Default::default() },
                ..Default::default()
            },
        },
        Case {
            name: "mlae-qkv-slices",
            cfg: tiny_vit(32),
            backbone: "tiny_vit.safetensors",
            spec: AdapterSpec {
                targets: vec![TargetLayer::V, TargetLayer::Q, TargetLayer::K],
                ..Default::default()
            },
        },
        Case {
            name: "dinov2-mlae",
            cfg: tiny_dinov2(28),
            backbone: "tiny_dinov2.safetensors",
            spec: AdapterSpec { targets: TargetLayer::WHOLE.to_vec(), ..Default::default() },
        },
        Case {
            name: "full",
            cfg: tiny_vit(32),
            backbone: "tiny_vit.safetensors",
            spec: AdapterSpec { kind: AdapterKind::Full, ..Default::default() },
        },
    ]
}

fn save(path: &Path, name: &str, t: &Tensor) {
    Tensor::write_safetensors(&[(name, t.contiguous())], path).unwrap();
}

#[test]
fn timm_and_peft_reproduce_the_exports() {
    let py = match python() {
        Ok(py) => py,
        Err(why) if std::env::var("MLAE_REQUIRE_PYTHON_CHECKS").as_deref() == Ok("1") => {
            panic!("MLAE_REQUIRE_PYTHON_CHECKS=1 but {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED timm/PEFT export checks: {why} (set MLAE_PYTHON, or run `cargo xtask test`)");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut json_cases = Vec::new();
    for case in cases() {
        let mut m = AdaptedVit::new(&case.cfg, &case.spec, 3, Device::Cpu).unwrap();
        m.load_backbone(&fixture(case.backbone), None).unwrap();
        randomize_trainable(&m, 3);
        let g = case.cfg.image_size;
        let x = det_randn(&[2, 3, g, g], 4);
        let logits = m.forward_t(&x, &ForwardCtx::eval());
        std::fs::create_dir_all(dir.join(case.name)).unwrap();
        save(&dir.join(case.name).join("x.safetensors"), "x", &x);
        save(&dir.join(case.name).join("logits.safetensors"), "logits", &logits);
        m.export_merged_timm(&dir.join(case.name).join("merged.safetensors")).unwrap();
        let (timm_model, timm_kwargs) = case.cfg.timm_model();
        let mut c = serde_json::json!({
            "name": case.name,
            "timm_model": timm_model,
            "timm_kwargs": timm_kwargs,
            "input": format!("{}/x.safetensors", case.name),
            "logits": format!("{}/logits.safetensors", case.name),
            "merged": format!("{}/merged.safetensors", case.name),
        });
        if case.spec.kind.has_adapter() {
            m.export_peft(&dir.join(case.name).join("peft")).unwrap();
            c["peft"] = format!("{}/peft", case.name).into();
            c["base"] = fixture(case.backbone).to_string_lossy().into_owned().into();
        } else {
            assert!(m.export_peft(&dir.join("none")).is_err(), "{} has no LoRA to export", case.name);
        }
        json_cases.push(c);
    }
    let spec = serde_json::json!({ "tolerance": TOLERANCE, "cases": json_cases });
    std::fs::write(dir.join("cases.json"), spec.to_string()).unwrap();
    let script = workspace().join("xtask/python/check_exports.py");
    let out = Command::new(&py).arg(&script).arg(dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // every case was checked: merged for all, PEFT for the adapter kinds
    assert_eq!(stdout.lines().filter(|l| l.contains("(ok,")).count(), 10 + 9, "{stdout}");
}

#[test]
fn a_dora_slice_cannot_go_to_peft_and_the_error_says_what_to_export() {
    let spec = AdapterSpec {
        kind: AdapterKind::Dora,
        targets: vec![TargetLayer::V],
        lora: LoraSpec { rank: 4, ..Default::default() },
        ..Default::default()
    };
    let m = AdaptedVit::new(&tiny_vit(32), &spec, 3, Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let err = m.export_peft(&tmp.path().join("peft")).unwrap_err().to_string();
    assert!(err.contains("blocks.0.attn.qkv") && err.contains("v slice") && err.contains("merged"), "{err}");
}

#[test]
fn peft_config_uses_patterns_for_layers_of_other_ranks() {
    let spec = AdapterSpec {
        targets: vec![TargetLayer::Qkv, TargetLayer::Fc2],
        mlae: MlaeSpec {
            experts: 4,
            expert_rank: 2,
            mask: MaskSpec {
                strategy: MaskStrategy::Fixed,
                experts_per_layer: Some(vec![1, 3]),
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let m = tiny_model(&spec, 0);
    let tmp = tempfile::tempdir().unwrap();
    m.export_peft(tmp.path()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap())
            .unwrap();
    // ranks 2 (block 0) and 6 (block 1), two layers each: the tie goes to the smaller rank
    assert_eq!(cfg["r"], 2);
    assert_eq!(cfg["lora_alpha"], 2.0);
    assert_eq!(cfg["rank_pattern"]["blocks.1.attn.qkv"], 6);
    assert_eq!(cfg["alpha_pattern"]["blocks.1.mlp.fc2"], 6.0);
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["head"]));
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 4);
    let t: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(tmp.path().join("adapter_model.safetensors")).unwrap().into_iter().collect();
    assert_eq!(t["base_model.model.blocks.1.attn.qkv.lora_A.weight"].size(), [6, 32]);
    assert_eq!(t["base_model.model.blocks.1.attn.qkv.lora_B.weight"].size(), [96, 6]);
    assert_eq!(t["base_model.model.blocks.0.mlp.fc2.lora_A.weight"].size(), [2, 128]);
    assert_eq!(t["base_model.model.head.weight"].size(), [5, 32]);
    assert_eq!(t.len(), 4 * 2 + 2);
}
