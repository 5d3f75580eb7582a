//! A counter-based random stream: augmentation draws must be a pure function of (seed, epoch,
//! image index) so that a batch is the same whatever the thread count or the order in which
//! workers pick images. SplitMix64 seeded by a hash of the coordinates does that.

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Domain tags keep streams for different purposes independent under the same seed.
pub(crate) const DOMAIN_CROP: u64 = 0x6d6c_6165_6372_6f70; // "mlaecrop"
pub(crate) const DOMAIN_DEMO_SPLIT: u64 = 0x6d6c_6165_6465_6d6f; // "mlaedemo"

/// SplitMix64's output function: a bijective 64-bit finaliser with full avalanche.
#[inline(always)]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One SplitMix64 stream whose starting state hashes the coordinates.
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64, domain: u64, a: u64, b: u64) -> Self {
        let mut h = mix64(seed.wrapping_add(GOLDEN));
        for x in [domain, a, b] {
            h = mix64(h ^ mix64(x.wrapping_add(GOLDEN)));
        }
        Rng { state: h }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in [0, 1), 53 bits.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub(crate) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform integer in [0, n), n > 0, without modulo bias (rejection sampling).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
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
    fn streams_are_pure_functions_of_their_coordinates() {
        let draw = |b: u64| {
            let mut r = Rng::new(7, DOMAIN_CROP, 3, b);
            (0..4).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }

    #[test]
    fn below_is_roughly_uniform() {
        let mut r = Rng::new(1, DOMAIN_DEMO_SPLIT, 0, 0);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            counts[r.below(5) as usize] += 1;
        }
        // Each bin expects 10,000; 5 sigma of a binomial(50k, 0.2) is about 450.
        assert!(counts.iter().all(|&c| (9_550..=10_450).contains(&c)), "{counts:?}");
        let x = r.uniform(2.0, 3.0);
        assert!((2.0..3.0).contains(&x));
    }
}
