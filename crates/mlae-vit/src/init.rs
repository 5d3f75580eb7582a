//! Seeded parameter initialisation that does not touch libtorch's global RNG.
//!
//! Every tensor's values are a pure function of (seed, tensor name, element index): a
//! counter-based hash (mlae-core's SplitMix64 finaliser) gives uniform numbers, which libtorch turns into
//! the wanted distribution. So a model's initial state does not depend on the device, the
//! order tensors are created in, or what the training loop did to the global RNG.

use mlae_core::rng::{GOLDEN, mix64};
use tch::{Device, Kind, Tensor};

/// FNV-1a of a name, so that streams are keyed by what they initialise.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Uniform numbers in the open interval (0, 1), 24 random bits each (exact in f32).
fn open_uniform(seed: u64, name: &str, n: usize) -> Vec<f32> {
    let key = mix64(seed ^ mix64(name_hash(name)));
    (0..n as u64)
        .map(|i| {
            let bits = mix64(key.wrapping_add(i.wrapping_mul(GOLDEN))) >> 40;
            (bits as f32 + 0.5) / (1u64 << 24) as f32
        })
        .collect()
}

fn numel(shape: &[i64]) -> usize {
    shape.iter().product::<i64>() as usize
}

/// U(lo, hi), the distribution of PyTorch's `kaiming_uniform_(a = sqrt(5))` with
/// `lo = -hi = -1/sqrt(fan_in)` (LoRA's A, the default init of `nn.Linear` and `nn.Conv2d`).
pub(crate) fn uniform(seed: u64, name: &str, shape: &[i64], lo: f64, hi: f64, device: Device) -> Tensor {
    let u = Tensor::from_slice(&open_uniform(seed, name, numel(shape))).view(shape);
    (u * (hi - lo) + lo).to_device(device)
}

/// timm's `trunc_normal_(std = std)`: N(0, std^2) truncated to its default bounds, which are
/// absolute values, -2 and 2, not multiples of std. For the usual std 0.02 that is +-100 std, so
/// the draw is a plain normal (reading the bounds as +-2 std narrows it to 0.88 std).
pub(crate) fn trunc_normal(seed: u64, name: &str, shape: &[i64], std: f64, device: Device) -> Tensor {
    trunc_normal_between(seed, name, shape, std, -2.0, 2.0, device)
}

/// N(0, std^2), by the same inverse CDF (clipped at +-5.3 std by the 24-bit uniforms).
pub(crate) fn normal(seed: u64, name: &str, shape: &[i64], std: f64, device: Device) -> Tensor {
    trunc_normal_between(seed, name, shape, std, f64::NEG_INFINITY, f64::INFINITY, device)
}

/// The standard normal CDF, `erfc(-x / sqrt 2) / 2` (libtorch's erfc, in f64).
fn std_normal_cdf(x: f64) -> f64 {
    Tensor::from(-x / std::f64::consts::SQRT_2).erfc().double_value(&[]) / 2.0
}

/// N(0, std^2) truncated to `[a, b]` (absolute bounds, as PyTorch's and timm's
/// `trunc_normal_` take them), by inverse CDF as they do it: uniform on `[Phi(a/std),
/// Phi(b/std)]`, then `std sqrt(2) erfinv(2u - 1)`, clamped to `[a, b]` against rounding.
fn trunc_normal_between(
    seed: u64,
    name: &str,
    shape: &[i64],
    std: f64,
    a: f64,
    b: f64,
    device: Device,
) -> Tensor {
    let (lo, hi) = (std_normal_cdf(a / std), std_normal_cdf(b / std));
    let u = Tensor::from_slice(&open_uniform(seed, name, numel(shape))).view(shape).to_kind(Kind::Double);
    let p = u * (hi - lo) + lo;
    let z = (p * 2.0 - 1.0).erfinv() * (std * std::f64::consts::SQRT_2);
    z.clamp(a, b).to_kind(Kind::Float).to_device(device)
}

/// A constant tensor.
pub(crate) fn full(shape: &[i64], value: f64, device: Device) -> Tensor {
    Tensor::full(shape, value, (Kind::Float, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a = uniform(7, "a", &[64], -1.0, 1.0, Device::Cpu);
        assert!(a.equal(&uniform(7, "a", &[64], -1.0, 1.0, Device::Cpu)));
        assert!(!a.equal(&uniform(7, "b", &[64], -1.0, 1.0, Device::Cpu)));
        assert!(!a.equal(&uniform(8, "a", &[64], -1.0, 1.0, Device::Cpu)));
        // a prefix of a longer stream is the shorter stream
        let long = uniform(7, "a", &[128], -1.0, 1.0, Device::Cpu);
        assert!(long.narrow(0, 0, 64).equal(&a));
    }

    #[test]
    fn distributions_have_the_stated_moments_and_bounds() {
        let n = 200_000;
        let u = uniform(1, "u", &[n], -0.5, 0.5, Device::Cpu);
        assert!(u.abs().max().double_value(&[]) < 0.5);
        assert!(u.mean(Kind::Double).double_value(&[]).abs() < 0.01);
        // timm's bounds are absolute: at std 0.02 the draw is the plain normal, so about 4.55 %
        // of it lies beyond 2 std (none would, were the bounds read as +-2 std) ...
        let t = trunc_normal(1, "t", &[n], 0.02, Device::Cpu);
        assert!(t.equal(&normal(1, "t", &[n], 0.02, Device::Cpu)));
        let sd = t.std(true).double_value(&[]);
        assert!((sd - 0.02).abs() < 1.5e-4, "{sd}");
        let beyond = t.abs().gt(0.04).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        assert!((beyond - 0.0455).abs() < 0.002, "{beyond}");
        // ... while at std 1 the bounds cut at +-2 std: variance 1 - 2 * 2 phi(2) / (2 Phi(2) - 1) = 0.7737
        let t = trunc_normal(1, "t1", &[n], 1.0, Device::Cpu);
        assert!(t.abs().max().double_value(&[]) <= 2.0);
        let sd = t.std(true).double_value(&[]);
        assert!((sd - 0.7737f64.sqrt()).abs() < 5e-3, "{sd}");
        // and timm's own draw of `trunc_normal_(std=1)` (make_vit_fixtures.py) agrees
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/timm_init_stats.json");
        let timm: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let timm_sd = timm["trunc_normal_std1"]["std"].as_f64().unwrap();
        assert!((sd - timm_sd).abs() < 5e-3, "ours {sd}, timm {timm_sd}");
        let asym = trunc_normal_between(1, "t2", &[n], 1.0, -1.0, 3.0, Device::Cpu);
        assert!(asym.min().double_value(&[]) >= -1.0 && asym.max().double_value(&[]) <= 3.0);
        // mean of N(0, 1) on [-1, 3]: (phi(-1) - phi(3)) / (Phi(3) - Phi(-1)) = 0.2830
        let mean = asym.mean(Kind::Double).double_value(&[]);
        assert!((mean - 0.2830).abs() < 0.01, "{mean}");
        let z = normal(1, "z", &[n], 3.0, Device::Cpu);
        assert!((z.std(true).double_value(&[]) - 3.0).abs() < 0.03);
        assert!(z.mean(Kind::Double).double_value(&[]).abs() < 0.03);
    }
}
