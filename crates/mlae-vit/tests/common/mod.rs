//! Shared helpers of the integration tests: fixtures, tiny configs, comparisons.
#![allow(dead_code)]

use mlae_core::AdapterSpec;
use mlae_vit::{AdaptedVit, CheckpointFormat, StateDict, VitConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

/// Every tensor of a fixture file, by name.
pub fn tensors(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}")).into_iter().collect()
}

pub fn checkpoint(name: &str) -> StateDict {
    mlae_vit::read_checkpoint(&fixture(name), Some(CheckpointFormat::Timm)).unwrap()
}

/// The tiny timm ViT of the fixtures (`make_vit_fixtures.py`, TINY_VIT).
pub fn tiny_vit(image_size: i64) -> VitConfig {
    VitConfig {
        preset: None,
        patch_size: 8,
        dim: 32,
        depth: 2,
        heads: 2,
        mlp_dim: 128,
        in_chans: 3,
        image_size,
        num_classes: 5,
        qkv_bias: true,
        layer_scale: false,
        layer_scale_init: 1e-5,
        drop_path: 0.0,
        eps: 1e-6,
    }
}

/// The tiny DINOv2-style model of the fixtures (TINY_DINOV2).
pub fn tiny_dinov2(image_size: i64) -> VitConfig {
    VitConfig { patch_size: 7, num_classes: 3, layer_scale: true, ..tiny_vit(image_size) }
}

/// A model of `spec` with the tiny ViT backbone loaded.
pub fn tiny_model(spec: &AdapterSpec, seed: u64) -> AdaptedVit {
    let mut m = AdaptedVit::new(&tiny_vit(32), spec, seed, Device::Cpu).unwrap();
    m.load_state_dict(&checkpoint("tiny_vit.safetensors")).unwrap();
    m
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// Asserts `max |a - b| <= tol` and prints the measured difference (run with --nocapture).
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let d = max_abs_diff(a, b);
    eprintln!("{what}: max abs diff {d:.3e} (tolerance {tol:.0e})");
    assert!(d <= tol, "{what}: max abs diff {d:e} > {tol:e}");
}

/// Gives every trainable tensor random values (seeded), so exports and merges are exercised
/// with non-zero B, non-unit coefficients and a trained head.
pub fn randomize_trainable(m: &AdaptedVit, seed: i64) {
    tch::manual_seed(seed);
    tch::no_grad(|| {
        for (name, mut t, _) in m.trainable() {
            let noise = Tensor::randn(t.size(), (Kind::Float, t.device())) * 0.2;
            if name.ends_with("lambda") || name.ends_with("scale") {
                let _ = t.g_add_(&noise);
            } else {
                let _ = t.g_add_(&(noise * 0.5));
            }
        }
    });
}
