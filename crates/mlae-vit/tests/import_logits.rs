//! Every import format, loaded into the model, gives the reference logits computed in Python
//! by timm (ViT), transformers' Dinov2Model (DINOv2) and onnxruntime-checked weights
//! (`xtask/python/make_import_fixtures.py`). This closes the loop the exact-conversion tests in
//! `import_formats.rs` leave open: names and values are right *and* the model uses them right,
//! including the position-table resize convention of each source (plain bicubic for HF/ONNX).

mod common;

use common::assert_close;
use mlae_core::{AdapterKind, AdapterSpec};
use mlae_vit::{AdaptedVit, ForwardCtx, PosResize, VitConfig, read_checkpoint};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import").join(name)
}

fn reference() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture("reference.safetensors")).unwrap().into_iter().collect()
}

/// The tiny architecture of the import fixtures (TINY in make_import_fixtures.py).
fn tiny(image_size: i64, layer_scale: bool) -> VitConfig {
    VitConfig {
        preset: None,
        patch_size: 8,
        dim: 16,
        depth: 2,
        heads: 4,
        mlp_dim: 64,
        in_chans: 3,
        image_size,
        num_classes: 5,
        qkv_bias: true,
        layer_scale,
        layer_scale_init: 1e-5,
        drop_path: 0.0,
        eps: 1e-6,
    }
}

fn probe() -> AdapterSpec {
    AdapterSpec { kind: AdapterKind::LinearProbe, ..AdapterSpec::default() }
}

fn logits(model: &AdaptedVit, x: &Tensor) -> Tensor {
    tch::no_grad(|| model.forward_t(x, &ForwardCtx::eval()))
}

#[test]
fn vit_formats_give_timms_logits() {
    let r = reference();
    for (file, tol) in [
        ("vit_timm.safetensors", 1e-5),
        ("vit_google.npz", 1e-5),
        ("vit_google_deflated.npz", 1e-5),
        // bf16 weights: the reference is the f32 model, so only bf16 rounding of the weights.
        ("vit_timm_bf16.safetensors", 5e-2),
    ] {
        let mut m = AdaptedVit::new(&tiny(32, false), &probe(), 0, Device::Cpu).unwrap();
        let report = m.load_backbone(&fixture(file), None).unwrap();
        assert!(matches!(report.head, mlae_vit::HeadLoad::Loaded), "{file}: head not loaded: {report}");
        assert_close(&format!("{file} logits"), &logits(&m, &r["input_32"]), &r["vit_logits"], tol);
    }
}

#[test]
fn dinov2_formats_give_the_reference_logits_at_native_and_resized_grids() {
    let r = reference();
    for file in [
        "dinov2_timm.safetensors",
        "dinov2_hf.safetensors",
        "dinov2_hf_state_dict.safetensors",
        "dinov2_hf_classifier.safetensors",
        "dinov2_focus.onnx",
    ] {
        let mut sd = read_checkpoint(&fixture(file), None).unwrap();
        // The reference puts a linear probe on the CLS features; HF/ONNX files carry none.
        sd.tensors.retain(|(k, _)| !k.starts_with("head."));
        sd.tensors.push(("head.weight".into(), r["probe.weight"].shallow_clone()));
        sd.tensors.push(("head.bias".into(), r["probe.bias"].shallow_clone()));
        // The 32 px reference resizes the table HF's way; a timm-format file follows timm's
        // (anti-aliased) convention, checked against timm in golden.rs, so it is compared at
        // the native grid only.
        let sizes: &[(i64, &str)] = if file.starts_with("dinov2_timm") {
            &[(48, "dinov2_logits_48")]
        } else {
            &[(48, "dinov2_logits_48"), (32, "dinov2_logits_32")]
        };
        for &(size, want) in sizes {
            let mut m = AdaptedVit::new(&tiny(size, true), &probe(), 0, Device::Cpu).unwrap();
            m.load_state_dict(&sd).unwrap();
            let input = format!("input_{size}");
            assert_close(&format!("{file} at {size} px"), &logits(&m, &r[&input]), &r[want], 1e-5);
        }
    }
}

#[test]
fn hf_sources_resize_positions_without_antialiasing() {
    // The same table resized both ways differs clearly, so the convention matters.
    let sd = read_checkpoint(&fixture("dinov2_hf.safetensors"), None).unwrap();
    let pos = sd.get("pos_embed").unwrap();
    let plain = mlae_vit::resample_pos_embed(pos, (4, 4), 1, PosResize::Bicubic).unwrap();
    let timm = mlae_vit::resample_pos_embed(pos, (4, 4), 1, PosResize::Antialias).unwrap();
    let gap = (plain - timm).abs().max().double_value(&[]);
    assert!(gap > 1e-3, "the two conventions should disagree, got {gap}");
}
