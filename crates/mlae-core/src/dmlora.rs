//! DMLoRA's pure math: branch weights, the gradual branch-dropout schedule and the two stages.
//!
//! Only the abstract of the DMLoRA paper (Fang et al., ECCV 2024) is known, and no public code.
//! **Taken from the abstract:** several up/down branch pairs per adapted layer; branches
//! gradually dropped out as training proceeds; a 2-stage learning scalar, i.e. a learned scale
//! factor for each layer's DMLoRA module; reparameterisable, so no cost at inference.
//! **Everything else is this project's reading** of it, not the authors' design:
//!
//! - A layer holds K branches `(A_k, B_k)` of rank r (`adapter.dmlora.branches`,
//!   `adapter.experts`), each initialised like a LoRA on its own (A Kaiming-uniform with
//!   a = sqrt 5, B zero), and one learnable scale `s_l` (initialised to `scale_init`, 1).
//!   Stacked, `A` is `(K r, in)` and `B` `(K r, out)` with branch k in rows `k r .. (k + 1) r`:
//!   the MLAE layout with K "experts" of rank r.
//! - Output: `base(x) + s_l * sum_k w_k B_k^T A_k x`. During training branch k is weighted
//!   `w_k = m_k / (K (1 - p))` with `m_k ~ Bernoulli(1 - p)`: the surviving branches summed
//!   and divided by the expected number of survivors (inverted dropout), so the expectation
//!   is the mean of all K branches. If every branch happens to drop, the update is zero that
//!   step. At inference (and in stage 2) every branch gets `1 / K`, the plain mean. So the
//!   merged update is `dW = s_l / K * sum_k B_k^T A_k` ([`branch_coefficients`] +
//!   [`crate::merge_delta`]), and the PEFT export is one LoRA of rank `K r`.
//! - Gradual dropout: the drop probability p follows a ramp from `p_start` (default 0, all
//!   branches) to `p_end` (default 0.5) between the training fractions `ramp_start` (0) and
//!   `ramp_end` (0.7), linear or half-cosine, constant outside it. The schedule sets a
//!   probability, not a number of branches: the survivors vary from step to step around
//!   `K (1 - p)`. Masks are drawn like MLAE's: one per layer per step, shared by the
//!   batch, a pure function of (seed, step, layer) from a stream separate from MLAE's (its
//!   own domain tag in the counter-based RNG), so a resumed run replays them.
//! - Two stages: from the fraction `stage2_start` on (default 0.8), the branches are frozen
//!   (no gradient, no optimizer update, no weight decay) and all on (p = 0, the inference
//!   form); the per-layer scales train, and the head keeps training on the main schedule.
//!   Stage 1 trains branches, scales and head together at the main learning rate. The
//!   scales' rate in stage 2 is `stage2_lr` at the first step of stage 2, then decays with
//!   the main schedule's shape; unset, it is the main rate (the training loop's
//!   `group_lrs`). The stage is a function of the step alone, so it survives resume.
//!
//! Progress is measured as `step / total_steps` (the fraction of training done before the step),
//! the convention of learning-rate schedules.

use crate::mask::{MaskSampler, fill_scales};
use crate::rng::DOMAIN_DMLORA_MASK;
use crate::spec::DmloraSpec;
use ndarray::Array1;

/// The fraction of training done before `step`: `step / total_steps`, clamped to [0, 1]
/// (`total_steps == 0` counts as 1).
///
/// ```
/// assert_eq!(mlae_core::dmlora::progress(25, 100), 0.25);
/// assert_eq!(mlae_core::dmlora::progress(500, 100), 1.0);
/// ```
pub fn progress(step: u64, total_steps: u64) -> f64 {
    (step as f64 / total_steps.max(1) as f64).clamp(0.0, 1.0)
}

/// Whether `step` is in stage 2 (branches frozen, only scales and head train).
/// `stage2_start = 1.0` means never.
///
/// ```
/// use mlae_core::{in_stage2, DmloraSpec};
/// let spec = DmloraSpec { stage2_start: 0.8, ..Default::default() };
/// assert!(!in_stage2(&spec, 79, 100));
/// assert!(in_stage2(&spec, 80, 100));
/// assert!(!in_stage2(&DmloraSpec { stage2_start: 1.0, ..spec }, 99, 100));
/// ```
pub fn in_stage2(spec: &DmloraSpec, step: u64, total_steps: u64) -> bool {
    spec.stage2_start < 1.0 && progress(step, total_steps) >= spec.stage2_start
}

/// The first step of stage 2, if it comes before `total_steps`.
///
/// ```
/// use mlae_core::{dmlora::stage2_start_step, DmloraSpec};
/// assert_eq!(stage2_start_step(&DmloraSpec { stage2_start: 0.8, ..Default::default() }, 1000), Some(800));
/// assert_eq!(stage2_start_step(&DmloraSpec { stage2_start: 1.0, ..Default::default() }, 1000), None);
/// ```
pub fn stage2_start_step(spec: &DmloraSpec, total_steps: u64) -> Option<u64> {
    if spec.stage2_start >= 1.0 || total_steps == 0 {
        return None;
    }
    // ceil(f * total), nudged to agree exactly with `in_stage2` despite rounding
    let mut s = (spec.stage2_start * total_steps as f64).ceil() as u64;
    while s > 0 && in_stage2(spec, s - 1, total_steps) {
        s -= 1;
    }
    while s < total_steps && !in_stage2(spec, s, total_steps) {
        s += 1;
    }
    (s < total_steps).then_some(s)
}

/// The branch drop probability at `step`: `p_start` before the ramp, `p_end` after it, the
/// ramp's shape in between, and 0 in stage 2 (frozen branches, all on).
///
/// ```
/// use mlae_core::{branch_drop_prob, DmloraSpec, RampShape};
/// let spec = DmloraSpec {
///     p_start: 0.0, p_end: 0.6, schedule: RampShape::Linear,
///     ramp_start: 0.2, ramp_end: 0.8, stage2_start: 0.9, ..Default::default()
/// };
/// assert_eq!(branch_drop_prob(&spec, 10, 100), 0.0);
/// assert!((branch_drop_prob(&spec, 50, 100) - 0.3).abs() < 1e-12);
/// assert_eq!(branch_drop_prob(&spec, 85, 100), 0.6);
/// assert_eq!(branch_drop_prob(&spec, 95, 100), 0.0); // stage 2
/// ```
pub fn branch_drop_prob(spec: &DmloraSpec, step: u64, total_steps: u64) -> f64 {
    if in_stage2(spec, step, total_steps) {
        return 0.0;
    }
    let t = progress(step, total_steps);
    if t >= spec.ramp_end {
        return spec.p_end;
    }
    if t <= spec.ramp_start {
        return spec.p_start;
    }
    let u = (t - spec.ramp_start) / (spec.ramp_end - spec.ramp_start);
    spec.schedule.interpolate(spec.p_start, spec.p_end, u)
}

/// Per-branch weights of one layer at a training step: `m_k / (K (1 - p))` with p from
/// [`branch_drop_prob`], written into `out` (one entry per branch). Reproducible from
/// (sampler seed, step, layer); `layer` is the layer's index in [`crate::AdapterPlan::layers`].
///
/// ```
/// use mlae_core::{dmlora::branch_weights_into, DmloraSpec, MaskSampler};
/// let spec = DmloraSpec { branches: 4, p_start: 0.5, p_end: 0.5, stage2_start: 1.0, ..Default::default() };
/// let mut w = [0.0f32; 4];
/// branch_weights_into(&MaskSampler::new(0), &spec, 10, 100, 2, &mut w);
/// assert!(w.iter().all(|&x| x == 0.0 || x == 0.5)); // 1 / (4 * (1 - 0.5))
/// ```
pub fn branch_weights_into(
    sampler: &MaskSampler,
    spec: &DmloraSpec,
    step: u64,
    total_steps: u64,
    layer: usize,
    out: &mut [f32],
) {
    let p = branch_drop_prob(spec, step, total_steps);
    let k = out.len().max(1) as f64;
    fill_scales(sampler.seed(), DOMAIN_DMLORA_MASK, step, layer, p, 1.0 / k, out);
}

/// [`branch_weights_into`] returning a new vector of `spec.branches` weights.
///
/// ```
/// use mlae_core::{dmlora::branch_weights, DmloraSpec, MaskSampler};
/// let spec = DmloraSpec { branches: 2, p_start: 0.0, ..Default::default() };
/// assert_eq!(branch_weights(&MaskSampler::new(1), &spec, 0, 100, 0), vec![0.5, 0.5]);
/// ```
pub fn branch_weights(
    sampler: &MaskSampler,
    spec: &DmloraSpec,
    step: u64,
    total_steps: u64,
    layer: usize,
) -> Vec<f32> {
    let mut out = vec![0.0; spec.branches];
    branch_weights_into(sampler, spec, step, total_steps, layer, &mut out);
    out
}

/// Branch weights at inference: the mean of all K branches, `1 / K` each.
///
/// ```
/// assert_eq!(mlae_core::dmlora::branch_weights_inference(4), vec![0.25; 4]);
/// ```
pub fn branch_weights_inference(branches: usize) -> Vec<f32> {
    vec![1.0 / branches as f32; branches]
}

/// Per-branch coefficients `s_l / K` that turn a DMLoRA layer into MLAE form: with them,
/// [`crate::merge_delta`] (expert rank = branch rank r) gives the merged update and
/// [`crate::to_peft_lora`] the exact rank-`K r` LoRA export.
///
/// ```
/// use mlae_core::{dmlora::branch_coefficients, merge_delta};
/// use ndarray::array;
/// // K = 2 branches of rank 1, scale 3: dW = 3 * (b0 a0 + b1 a1) / 2
/// let a = array![[1.0f32, 0.0], [0.0, 1.0]];
/// let b = array![[2.0f32], [4.0]];
/// let dw = merge_delta(a.view(), b.view(), branch_coefficients(2, 3.0).view(), None, 1);
/// assert_eq!(dw, array![[3.0, 6.0]]);
/// ```
pub fn branch_coefficients(branches: usize, scale: f32) -> Array1<f32> {
    Array1::from_elem(branches, scale / branches as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RampShape;
    use proptest::prelude::*;

    fn spec(shape: RampShape) -> DmloraSpec {
        DmloraSpec {
            branches: 4,
            p_start: 0.0,
            p_end: 0.5,
            schedule: shape,
            ramp_start: 0.1,
            ramp_end: 0.7,
            stage2_start: 0.85,
            ..Default::default()
        }
    }

    #[test]
    fn schedule_start_and_end_rates() {
        for shape in RampShape::ALL {
            let s = spec(*shape);
            let total = 1_000;
            assert_eq!(branch_drop_prob(&s, 0, total), 0.0);
            assert_eq!(branch_drop_prob(&s, 100, total), 0.0);
            assert_eq!(branch_drop_prob(&s, 700, total), 0.5);
            assert_eq!(branch_drop_prob(&s, 849, total), 0.5);
            assert_eq!(branch_drop_prob(&s, 850, total), 0.0); // stage 2: all branches on
            assert!(in_stage2(&s, 999, total));
            let mid = branch_drop_prob(&s, 400, total);
            assert!((mid - 0.25).abs() < 1e-12, "{shape}: {mid}"); // both shapes cross the middle at u = 1/2
        }
        // cosine starts slower than linear
        assert!(
            branch_drop_prob(&spec(RampShape::Cosine), 200, 1000)
                < branch_drop_prob(&spec(RampShape::Linear), 200, 1000)
        );
        // a step ramp
        let step =
            DmloraSpec { ramp_start: 0.5, ramp_end: 0.5, stage2_start: 1.0, ..spec(RampShape::Linear) };
        assert_eq!(branch_drop_prob(&step, 499, 1000), 0.0);
        assert_eq!(branch_drop_prob(&step, 500, 1000), 0.5);
    }

    #[test]
    fn stage2_start_step_matches_the_predicate() {
        for total in [1u64, 7, 10, 100, 999, 1000] {
            for f in [0.05, 0.1, 0.3, 0.5, 0.8, 0.85, 0.999, 1.0] {
                let s = DmloraSpec { stage2_start: f, ..Default::default() };
                let brute = (0..total).find(|&t| in_stage2(&s, t, total));
                assert_eq!(stage2_start_step(&s, total), brute, "total {total} f {f}");
            }
        }
    }

    #[test]
    fn branch_weights_preserve_the_mean_in_expectation() {
        let s = DmloraSpec { p_start: 0.6, p_end: 0.6, stage2_start: 1.0, ..Default::default() };
        let sampler = MaskSampler::new(3);
        let steps = 20_000u64;
        let mut sum = 0.0f64;
        let mut kept = 0usize;
        for t in 0..steps {
            let w = branch_weights(&sampler, &s, t, steps, 1);
            assert!(w.iter().all(|&x| x == 0.0 || (x - 0.25 / 0.4).abs() < 1e-6));
            sum += w.iter().map(|&x| x as f64).sum::<f64>();
            kept += w.iter().filter(|&&x| x != 0.0).count();
        }
        // E[sum of weights] = 1 (the mean of K branches); keep rate 0.4 within 0.01 (> 7 sd)
        assert!((sum / steps as f64 - 1.0).abs() < 0.02);
        assert!((kept as f64 / (4 * steps) as f64 - 0.4).abs() < 0.01);
        // stage 2 and inference: all branches, 1/K
        let s2 = DmloraSpec { stage2_start: 0.5, ..s };
        assert_eq!(branch_weights(&sampler, &s2, 60, 100, 0), branch_weights_inference(4));
    }

    #[test]
    fn branch_masks_are_separate_from_expert_masks() {
        let s = DmloraSpec { p_start: 0.5, p_end: 0.5, stage2_start: 1.0, branches: 8, ..Default::default() };
        let sampler = MaskSampler::new(0);
        let same = (0..500u64)
            .filter(|&t| {
                let b: Vec<bool> =
                    branch_weights(&sampler, &s, t, 500, 0).iter().map(|&x| x != 0.0).collect();
                let m: Vec<bool> = sampler.layer_scales(t, 0, 8, 0.5).iter().map(|&x| x != 0.0).collect();
                b == m
            })
            .count();
        assert!(same < 10, "{same}");
    }

    proptest! {
        #[test]
        fn schedule_is_monotone_in_stage1(p_start in 0.0f64..0.99, p_end in 0.0f64..0.99, a in 0.0f64..1.0,
                                          b in 0.0f64..1.0, cosine in any::<bool>(), total in 1u64..3000) {
            let s = DmloraSpec {
                p_start, p_end, ramp_start: a.min(b), ramp_end: a.max(b), stage2_start: 1.0,
                schedule: if cosine { RampShape::Cosine } else { RampShape::Linear }, ..Default::default()
            };
            let ps: Vec<f64> = (0..total).map(|t| branch_drop_prob(&s, t, total)).collect();
            let (lo, hi) = (p_start.min(p_end), p_start.max(p_end));
            prop_assert!(ps.iter().all(|p| *p >= lo - 1e-12 && *p <= hi + 1e-12));
            let up = p_end >= p_start;
            for w in ps.windows(2) {
                let ok = if up { w[1] >= w[0] - 1e-12 } else { w[1] <= w[0] + 1e-12 };
                prop_assert!(ok, "not monotone: {:?}", w);
            }
            prop_assert_eq!(ps[0], if s.ramp_end > 0.0 { p_start } else { p_end });
        }

        #[test]
        fn branch_masks_reproducible(seed in any::<u64>(), step in 0u64..10_000, layer in 0usize..48) {
            let s = DmloraSpec { p_start: 0.3, p_end: 0.7, stage2_start: 1.0, ..Default::default() };
            let a = branch_weights(&MaskSampler::new(seed), &s, step, 10_000, layer);
            let b = branch_weights(&MaskSampler::new(seed), &s, step, 10_000, layer);
            prop_assert_eq!(a, b);
        }
    }
}
