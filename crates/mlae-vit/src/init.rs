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

/// N(0, std^2) truncated to +-2 std, by inverse CDF: uniform on [Phi(-2), Phi(2)], then
/// `sqrt(2) erfinv(2u - 1)`. timm's `trunc_normal_(std=0.02)` truncates at +-2 absolute,
/// i.e. +-100 std, which is the plain normal in practice; +-2 std is the usual intent.
pub(crate) fn trunc_normal(seed: u64, name: &str, shape: &[i64], std: f64, device: Device) -> Tensor {
    normal_between(seed, name, shape, std, 2.0, device)
}

/// N(0, std^2), by the same inverse CDF (clipped at +-5.3 std by the 24-bit uniforms).
pub(crate) fn normal(seed: u64, name: &str, shape: &[i64], std: f64, device: Device) -> Tensor {
    normal_between(seed, name, shape, std, f64::INFINITY, device)
}

fn normal_between(seed: u64, name: &str, shape: &[i64], std: f64, bound: f64, device: Device) -> Tensor {
    // Phi(-bound) = erfc(bound / sqrt 2) / 2; only bound = 2 and infinity are used.
    let lo = if bound.is_finite() { 0.022_750_131_948_179_2 } else { 0.0 };
    let u = Tensor::from_slice(&open_uniform(seed, name, numel(shape))).view(shape).to_kind(Kind::Double);
    let p = u * (1.0 - 2.0 * lo) + lo;
    let z = (p * 2.0 - 1.0).erfinv() * std::f64::consts::SQRT_2;
    (z * std).to_kind(Kind::Float).to_device(device)
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
        let t = trunc_normal(1, "t", &[n], 0.02, Device::Cpu);
        assert!(t.abs().max().double_value(&[]) <= 0.04 + 1e-7);
        // variance of a standard normal truncated at +-2 is 0.7737
        let sd = t.std(true).double_value(&[]);
        assert!((sd - 0.02 * 0.7737f64.sqrt()).abs() < 2e-4, "{sd}");
        let z = normal(1, "z", &[n], 3.0, Device::Cpu);
        assert!((z.std(true).double_value(&[]) - 3.0).abs() < 0.03);
        assert!(z.mean(Kind::Double).double_value(&[]).abs() < 0.03);
    }
}
