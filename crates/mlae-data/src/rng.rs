//! Counter-based random streams: augmentation draws must be a pure function of (seed, epoch,
//! image index) so that a batch is the same whatever the thread count or the order in which
//! workers pick images. The generator is mlae-core's SplitMix64 (the workspace has one); the
//! domain tags here keep this crate's streams apart from each other and from mlae-core's.

pub(crate) use mlae_core::rng::SplitMix64 as Rng;

/// Domain tags keep streams for different purposes independent under the same seed.
pub(crate) const DOMAIN_CROP: u64 = 0x6d6c_6165_6372_6f70; // "mlaecrop"
pub(crate) const DOMAIN_DEMO_SPLIT: u64 = 0x6d6c_6165_6465_6d6f; // "mlaedemo"
pub(crate) const DOMAIN_GENERATED: u64 = 0x6d6c_6165_6765_6e65; // "mlaegene"
pub(crate) const DOMAIN_HOLDOUT: u64 = 0x6d6c_6165_686f_6c64; // "mlaehold"

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream this crate drew from before it used mlae-core's: demo splits and crops
    /// (and so every result on them) depend on it staying the same.
    fn former_stream(seed: u64, domain: u64, a: u64, b: u64, n: usize) -> Vec<u64> {
        const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
        let mix64 = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut h = mix64(seed.wrapping_add(GOLDEN));
        for x in [domain, a, b] {
            h = mix64(h ^ mix64(x.wrapping_add(GOLDEN)));
        }
        (0..n)
            .map(|_| {
                h = h.wrapping_add(GOLDEN);
                mix64(h)
            })
            .collect()
    }

    #[test]
    fn the_streams_are_the_ones_this_crate_always_drew() {
        for (seed, domain, a, b) in
            [(0, DOMAIN_DEMO_SPLIT, 0, 0), (7, DOMAIN_CROP, 3, 9), (u64::MAX, DOMAIN_CROP, 5, 0)]
        {
            let mut r = Rng::new(seed, domain, a, b);
            let got: Vec<u64> = (0..16).map(|_| r.next_u64()).collect();
            assert_eq!(got, former_stream(seed, domain, a, b, 16));
        }
    }

    #[test]
    fn streams_are_pure_functions_of_their_coordinates() {
        let draw = |b: u64| {
            let mut r = Rng::new(7, DOMAIN_CROP, 3, b);
            (0..4).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }
}
