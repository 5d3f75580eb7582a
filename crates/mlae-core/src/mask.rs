//! Expert-level dropout masks, reproducible from (seed, step).
//!
//! Semantics follow the official MLAE layer: at every training step each adapted layer draws
//! one Bernoulli keep-mask over its experts (shared by the whole batch, not per sample); a kept
//! expert's coefficient is scaled by 1 / (1 - p) (inverted dropout), a dropped one by 0. At
//! inference every expert is on and unscaled. Fixed-masked experts are never allocated (see
//! [`crate::MlaeLayerPlan::experts`]), so they are off by construction.
//!
//! The keep decision for expert `i` of layer `l` at step `t` is a pure function of
//! (seed, t, l, i) (a counter-based hash RNG), so a run resumed at step `t` replays the same
//! masks, and the result never depends on the thread count or the order of calls.

use crate::rng::{DOMAIN_MLAE_MASK, nth_u64, stream_key, unit_f64};

/// Draws MLAE's per-step expert masks. Cheap to copy; holds only the seed.
///
/// ```
/// use mlae_core::MaskSampler;
/// let s = MaskSampler::new(0);
/// let m = s.layer_scales(100, 3, 8, 0.5);
/// assert_eq!(m.len(), 8);
/// assert!(m.iter().all(|&x| x == 0.0 || x == 2.0)); // dropped, or kept and scaled by 1/(1-p)
/// assert_eq!(m, MaskSampler::new(0).layer_scales(100, 3, 8, 0.5)); // replayable
/// assert_eq!(s.layer_scales(100, 3, 8, 0.0), vec![1.0; 8]); // p = 0: all on, unscaled
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaskSampler {
    seed: u64,
}

impl MaskSampler {
    /// A sampler for one training run; use the run's seed.
    pub fn new(seed: u64) -> Self {
        MaskSampler { seed }
    }

    /// The seed this sampler was made with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Whether expert `expert` of layer `layer` is kept at training step `step` with drop
    /// probability `p` (always true for `p == 0`).
    ///
    /// ```
    /// use mlae_core::MaskSampler;
    /// let s = MaskSampler::new(9);
    /// let kept = (0..8).filter(|&i| s.keep(5, 0, i, 0.5)).count() as f32;
    /// assert_eq!(s.layer_scales(5, 0, 8, 0.5).iter().sum::<f32>(), kept * 2.0);
    /// ```
    pub fn keep(&self, step: u64, layer: usize, expert: usize, p: f64) -> bool {
        keep_draw(stream_key(self.seed, DOMAIN_MLAE_MASK, step, layer as u64), expert, p)
    }

    /// Per-expert scales for one layer at one training step: 0 for dropped experts,
    /// 1 / (1 - p) for kept ones; `p == 0` gives all 1.0. `layer` is the layer's index in
    /// the plan ([`crate::MlaePlan::layers`]).
    ///
    /// # Panics
    /// If `p` is not in [0, 1) (the spec's validation rules such values out).
    ///
    /// ```
    /// use mlae_core::MaskSampler;
    /// let m = MaskSampler::new(1).layer_scales(0, 0, 4, 0.75);
    /// assert!(m.iter().all(|&x| x == 0.0 || x == 4.0));
    /// ```
    pub fn layer_scales(&self, step: u64, layer: usize, n: usize, p: f64) -> Vec<f32> {
        let mut out = vec![0.0; n];
        self.layer_scales_into(step, layer, p, &mut out);
        out
    }

    /// [`MaskSampler::layer_scales`] into a caller's buffer (one entry per expert), so a
    /// training loop allocates nothing per step.
    ///
    /// ```
    /// use mlae_core::MaskSampler;
    /// let s = MaskSampler::new(3);
    /// let mut buf = [0.0f32; 8];
    /// s.layer_scales_into(12, 1, 0.5, &mut buf);
    /// assert_eq!(buf.to_vec(), s.layer_scales(12, 1, 8, 0.5));
    /// ```
    pub fn layer_scales_into(&self, step: u64, layer: usize, p: f64, out: &mut [f32]) {
        fill_scales(self.seed, DOMAIN_MLAE_MASK, step, layer, p, 1.0, out);
    }

    /// Scales at inference (and evaluation): every expert on, unscaled.
    ///
    /// ```
    /// assert_eq!(mlae_core::MaskSampler::inference_scales(3), vec![1.0; 3]);
    /// ```
    pub fn inference_scales(n: usize) -> Vec<f32> {
        vec![1.0; n]
    }
}

#[inline(always)]
fn keep_draw(key: u64, i: usize, p: f64) -> bool {
    p == 0.0 || unit_f64(nth_u64(key, i as u64)) >= p
}

/// Fills `out[i]` with `kept_value / (1 - p)` or 0. Shared by MLAE masks and DMLoRA branches.
pub(crate) fn fill_scales(
    seed: u64,
    domain: u64,
    step: u64,
    layer: usize,
    p: f64,
    kept_value: f64,
    out: &mut [f32],
) {
    assert!((0.0..1.0).contains(&p), "drop probability {p} is outside [0, 1)");
    let kept = (kept_value / (1.0 - p)) as f32;
    if p == 0.0 {
        out.fill(kept);
        return;
    }
    let key = stream_key(seed, domain, step, layer as u64);
    for (i, o) in out.iter_mut().enumerate() {
        *o = if keep_draw(key, i, p) { kept } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Keep rate over `steps` steps of one layer with `n` experts.
    fn keep_rate(seed: u64, layer: usize, n: usize, p: f64, steps: u64) -> f64 {
        let s = MaskSampler::new(seed);
        let mut buf = vec![0.0f32; n];
        let mut kept = 0usize;
        for t in 0..steps {
            s.layer_scales_into(t, layer, p, &mut buf);
            kept += buf.iter().filter(|&&x| x != 0.0).count();
        }
        kept as f64 / (n as u64 * steps) as f64
    }

    #[test]
    fn keep_rate_matches_one_minus_p() {
        // 80,000 draws: sd of the rate <= 0.0018, tolerance 0.01 is > 5 sd.
        for p in [0.1, 0.3, 0.5, 0.7, 0.9] {
            let rate = keep_rate(0, 0, 8, p, 10_000);
            assert!((rate - (1.0 - p)).abs() < 0.01, "p={p}: keep rate {rate}");
        }
    }

    #[test]
    fn kept_experts_carry_inverted_scale_and_expectation_is_one() {
        let s = MaskSampler::new(4);
        let p = 0.7;
        let mut total = 0.0f64;
        let steps = 20_000;
        for t in 0..steps {
            for x in s.layer_scales(t, 2, 8, p) {
                assert!(x == 0.0 || (x - (1.0 / 0.3f32)).abs() < 1e-6);
                total += x as f64;
            }
        }
        let mean = total / (8 * steps) as f64;
        assert!((mean - 1.0).abs() < 0.03, "E[scale] = {mean}");
    }

    #[test]
    fn per_expert_and_per_layer_rates_are_even_and_steps_are_uncorrelated() {
        let s = MaskSampler::new(17);
        let p = 0.5;
        let steps = 8_000u64;
        let mut per_expert = [0u32; 8];
        let mut same_as_prev = 0u32;
        let mut prev = s.layer_scales(0, 5, 8, p);
        for t in 1..=steps {
            let m = s.layer_scales(t, 5, 8, p);
            for i in 0..8 {
                per_expert[i] += (m[i] != 0.0) as u32;
                same_as_prev += (m[i] == prev[i]) as u32;
            }
            prev = m;
        }
        for c in per_expert {
            // 8,000 draws at 0.5: sd ~45; 300 is > 6 sd.
            assert!((c as i64 - 4_000).abs() < 300, "{per_expert:?}");
        }
        // Independent steps agree half the time.
        let agree = same_as_prev as f64 / (8 * steps) as f64;
        assert!((agree - 0.5).abs() < 0.02, "{agree}");
        // Different layers at the same step are different streams.
        let differ =
            (0..2_000u64).filter(|&t| s.layer_scales(t, 0, 8, p) != s.layer_scales(t, 1, 8, p)).count();
        assert!(differ > 1_950, "{differ}");
    }

    #[test]
    fn replay_is_independent_of_threads_and_order() {
        let s = MaskSampler::new(99);
        let serial: Vec<Vec<f32>> =
            (0..64u64).map(|t| s.layer_scales(t, (t % 12) as usize, 8, 0.5)).collect();
        let threaded: Vec<Vec<f32>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..64u64)
                .rev()
                .map(|t| scope.spawn(move || (t, s.layer_scales(t, (t % 12) as usize, 8, 0.5))))
                .collect();
            let mut got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            got.sort_by_key(|(t, _)| *t);
            got.into_iter().map(|(_, m)| m).collect()
        });
        assert_eq!(serial, threaded);
        // A resumed run (fresh sampler, same seed) replays step 40 exactly.
        assert_eq!(MaskSampler::new(99).layer_scales(40, 4, 8, 0.5), serial[40]);
        // Another seed gives other masks.
        let fifty = |s: MaskSampler| (0..50u64).map(|t| s.layer_scales(t, 0, 8, 0.5)).collect::<Vec<_>>();
        assert_ne!(fifty(MaskSampler::new(100)), fifty(s));
    }

    #[test]
    fn prefix_property_n_does_not_change_earlier_experts() {
        // Expert i's draw does not depend on how many experts the layer has.
        let s = MaskSampler::new(5);
        let short = s.layer_scales(3, 1, 4, 0.4);
        let long = s.layer_scales(3, 1, 14, 0.4);
        assert_eq!(short[..], long[..4]);
    }

    #[test]
    #[should_panic(expected = "outside [0, 1)")]
    fn p_of_one_panics() {
        MaskSampler::new(0).layer_scales(0, 0, 8, 1.0);
    }

    proptest! {
        #[test]
        fn reproducible_from_seed_and_step(seed in any::<u64>(), step in any::<u64>(), layer in 0usize..48,
                                           n in 1usize..32, p in 0.0f64..0.99) {
            let a = MaskSampler::new(seed).layer_scales(step, layer, n, p);
            let b = MaskSampler::new(seed).layer_scales(step, layer, n, p);
            prop_assert_eq!(&a, &b);
            let kept = (1.0 / (1.0 - p)) as f32;
            prop_assert!(a.iter().all(|&x| x == 0.0 || x == kept));
            for (i, x) in a.iter().enumerate() {
                prop_assert_eq!(*x != 0.0, MaskSampler::new(seed).keep(step, layer, i, p));
            }
        }

        #[test]
        fn keep_rate_within_tolerance_for_any_seed(seed in any::<u64>(), p in 0.05f64..0.95) {
            // 16,000 draws: sd <= 0.004; tolerance 0.025 is > 6 sd.
            let rate = keep_rate(seed, 3, 8, p, 2_000);
            prop_assert!((rate - (1.0 - p)).abs() < 0.025, "p={} rate={}", p, rate);
        }
    }
}
