//! The workspace's one SplitMix64: a counter-based hash RNG where every random number is a
//! pure function of (seed, domain, a, b, i). mlae-core draws masks and patterns from it;
//! mlae-data (augmentation, demo splits) and mlae-vit (initialisation) use the same functions.
//!
//! Masks must replay exactly when a run resumes at step `t`, whatever the thread count, so
//! nothing here carries state between calls: the value for expert `i` of layer `l` at step `t`
//! is `mix64(key(seed, domain, t, l) + (i + 1) * GOLDEN)`, i.e. element `i` of a SplitMix64
//! stream whose state is a hash of the coordinates. SplitMix64's output function is a
//! bijective 64-bit finaliser with full avalanche, which is what a counter-based generator needs.

/// 2^64 / phi, the SplitMix64 increment.
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

// Domain tags keep the streams of different consumers independent for the same seed (other
// crates define their own tags).
pub(crate) const DOMAIN_MLAE_MASK: u64 = 0x6d6c_6165_6d61_736b; // "mlaemask"
pub(crate) const DOMAIN_DMLORA_MASK: u64 = 0x646d_6c6f_7261_6d6b; // "dmloramk"
pub(crate) const DOMAIN_PATTERN: u64 = 0x7061_7474_6572_6e73; // "patterns"

/// SplitMix64's finaliser (Stafford's mix13 variant): a bijective avalanche mix of 64 bits.
///
/// ```
/// assert_eq!(mlae_core::rng::mix64(0), 0);
/// assert_ne!(mlae_core::rng::mix64(1), 1);
/// ```
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline(always)]
fn absorb(h: u64, x: u64) -> u64 {
    mix64(h ^ mix64(x.wrapping_add(GOLDEN)))
}

/// The state of the stream at coordinates (seed, domain, a, b).
#[inline]
pub fn stream_key(seed: u64, domain: u64, a: u64, b: u64) -> u64 {
    absorb(absorb(absorb(mix64(seed.wrapping_add(GOLDEN)), domain), a), b)
}

/// Element `i` of the stream with state `key`.
#[inline(always)]
pub fn nth_u64(key: u64, i: u64) -> u64 {
    mix64(key.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// The top 53 bits as a uniform number in [0, 1).
#[inline(always)]
pub fn unit_f64(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A sequential view of one stream: element `i` of `next_u64` is `nth_u64(key, i)`, i.e. a
/// SplitMix64 generator whose state starts at the hash of the coordinates.
///
/// ```
/// use mlae_core::rng::{SplitMix64, nth_u64, stream_key};
/// let mut r = SplitMix64::new(7, 1, 2, 3);
/// let key = stream_key(7, 1, 2, 3);
/// assert_eq!((r.next_u64(), r.next_u64()), (nth_u64(key, 0), nth_u64(key, 1)));
/// assert!(r.below(5) < 5);
/// ```
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    key: u64,
    counter: u64,
}

impl SplitMix64 {
    /// The stream at coordinates (seed, domain, a, b).
    pub fn new(seed: u64, domain: u64, a: u64, b: u64) -> Self {
        SplitMix64 { key: stream_key(seed, domain, a, b), counter: 0 }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let x = nth_u64(self.key, self.counter);
        self.counter += 1;
        x
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        unit_f64(self.next_u64())
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform integer in [0, n), n > 0, without modulo bias (rejection sampling).
    ///
    /// # Panics
    /// If `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SplitMix64::below(0)");
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_values_stay_in_range_and_look_uniform() {
        let key = stream_key(0, DOMAIN_MLAE_MASK, 0, 0);
        let n = 100_000u64;
        let mut buckets = [0u32; 10];
        for i in 0..n {
            let u = unit_f64(nth_u64(key, i));
            assert!((0.0..1.0).contains(&u));
            buckets[(u * 10.0) as usize] += 1;
        }
        // Each bucket expects 10,000 with sd ~95: 600 is more than 6 sd.
        for b in buckets {
            assert!((b as i64 - 10_000).abs() < 600, "{buckets:?}");
        }
    }

    #[test]
    fn below_is_roughly_uniform() {
        let mut r = SplitMix64::new(1, DOMAIN_PATTERN, 0, 0);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            counts[r.below(5) as usize] += 1;
        }
        // Each bin expects 10,000; 5 sigma of a binomial(50k, 0.2) is about 450.
        assert!(counts.iter().all(|&c| (9_550..=10_450).contains(&c)), "{counts:?}");
        let x = r.uniform(2.0, 3.0);
        assert!((2.0..3.0).contains(&x));
    }

    #[test]
    fn coordinates_give_different_streams() {
        let k = |s, d, a, b| stream_key(s, d, a, b);
        let base = k(1, DOMAIN_MLAE_MASK, 2, 3);
        assert_ne!(base, k(2, DOMAIN_MLAE_MASK, 2, 3));
        assert_ne!(base, k(1, DOMAIN_DMLORA_MASK, 2, 3));
        assert_ne!(base, k(1, DOMAIN_MLAE_MASK, 3, 2));
        assert_ne!(base, k(1, DOMAIN_MLAE_MASK, 2, 4));
        assert_eq!(base, k(1, DOMAIN_MLAE_MASK, 2, 3));
    }
}
