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

/// Pseudo-random values with mean 0 and variance 1 (uniform on +-sqrt 3), a pure function of
/// (shape, seed). Tests run in parallel threads that share libtorch's global RNG, so test data
/// never comes from it.
pub fn det_randn(shape: &[i64], seed: u64) -> Tensor {
    let n: i64 = shape.iter().product();
    let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^= x >> 31;
            let u = (x >> 40) as f64 / (1u64 << 24) as f64;
            ((2.0 * u - 1.0) * 3f64.sqrt()) as f32
        })
        .collect();
    Tensor::from_slice(&v).view(shape)
}

/// Serialises the tests that draw from libtorch's global RNG (dropout, drop-path), so that a
/// seeded draw is not disturbed by another test thread.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gives every trainable tensor pseudo-random values (a function of `seed` and the tensor's
/// place), so exports and merges are exercised with non-zero B, non-unit coefficients and a
/// trained head.
pub fn randomize_trainable(m: &AdaptedVit, seed: u64) {
    tch::no_grad(|| {
        for (i, (name, mut t, _)) in m.trainable().into_iter().enumerate() {
            let noise = det_randn(&t.size(), seed * 1000 + i as u64).to_device(t.device()) * 0.2;
            let noise = if name.ends_with("lambda") || name.ends_with("scale") { noise } else { noise * 0.5 };
            let _ = t.g_add_(&noise);
        }
    });
}

/// An ndarray matrix (mlae-core's merge and export math) as a tensor.
pub fn tensor2(a: &ndarray::Array2<f32>) -> Tensor {
    let (r, c) = a.dim();
    Tensor::from_slice(a.as_standard_layout().as_slice().unwrap()).view([r as i64, c as i64])
}
