//! DMLoRA: its `[adapter.dmlora]` section, plan, parameter count, training schedule (the two
//! stages) and pure math (branch weights, the gradual branch-dropout ramp).
//!
//! Only the abstract of the DMLoRA paper (Fang et al., ECCV 2024) is known, and no public code.
//! **Taken from the abstract:** several up/down branch pairs per adapted layer; branches
//! gradually dropped out as training proceeds; a 2-stage learning scalar, i.e. a learned scale
//! factor for each layer's DMLoRA module; reparameterisable, so no cost at inference.
//! **Everything else is this project's reading** of it, not the authors' design:
//!
//! - A layer holds K branches `(A_k, B_k)` of rank r (`adapter.dmlora.branches`,
//!   `adapter.dmlora.branch_rank`), each initialised like a LoRA on its own (A Kaiming-uniform with
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
//!   the main schedule's shape; unset, it is the main rate ([`DmloraPlan`]'s
//!   [`TrainSchedule`]). The stage is a function of the step alone, so it survives resume.
//!
//! Progress is measured as `step / total_steps` (the fraction of training done before the step),
//! the convention of learning-rate schedules.

use crate::error::SpecError;
use crate::mask::{MaskSampler, fill_scales};
use crate::method::{Method, MethodPlan, Section};
use crate::names::named_enum;
use crate::params::{ModelDims, layer_in_out};
use crate::rng::DOMAIN_DMLORA_MASK;
use crate::stages::{ParamRole, TrainSchedule};
use crate::target::{LayerSite, TargetLayer, check_targets, sites};
use ndarray::Array1;
use serde::{Deserialize, Serialize};

/// The shape of DMLoRA's branch-dropout ramp. Serde names are lowercase.
///
/// ```
/// use mlae_core::RampShape;
/// assert!((RampShape::Cosine.interpolate(0.0, 0.5, 0.5) - 0.25).abs() < 1e-15);
/// assert!(RampShape::Cosine.interpolate(0.0, 0.5, 0.25) < RampShape::Linear.interpolate(0.0, 0.5, 0.25));
/// assert_eq!(RampShape::Linear.interpolate(0.0, 0.5, 0.25), 0.125);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RampShape {
    /// Straight line from start to end.
    #[default]
    Linear,
    /// Half cosine: slow at both ends, `start + (end - start) (1 - cos(pi u)) / 2`.
    Cosine,
}

named_enum!(RampShape, "adapter.dmlora.schedule", { Linear => "linear", Cosine => "cosine" });

impl RampShape {
    /// The value at position `u` in [0, 1] (clamped) between `start` and `end`. Monotone in `u`.
    pub fn interpolate(self, start: f64, end: f64, u: f64) -> f64 {
        let u = u.clamp(0.0, 1.0);
        let w = match self {
            RampShape::Linear => u,
            RampShape::Cosine => 0.5 * (1.0 - (std::f64::consts::PI * u).cos()),
        };
        start + (end - start) * w
    }
}

/// `[adapter.dmlora]`. Only the DMLoRA abstract is known; every choice below is this
/// project's reading of it, not the authors' code (see the module docs).
///
/// ```
/// use mlae_core::{DmloraSpec, RampShape};
/// let d: DmloraSpec = toml::from_str("branches = 2\nbranch_rank = 4\nschedule = 'cosine'").unwrap();
/// assert_eq!((d.branches, d.branch_rank), (2, 4));
/// assert_eq!(d.schedule, RampShape::Cosine);
/// assert_eq!(d.p_end, DmloraSpec::default().p_end);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DmloraSpec {
    /// K: up/down branch pairs per layer. Default 4.
    pub branches: usize,
    /// r: the rank of each branch; a layer's total rank is `branches * branch_rank`. Default 8.
    pub branch_rank: usize,
    /// Branch drop probability before the ramp (early training). Default 0 (all branches).
    pub p_start: f64,
    /// Branch drop probability after the ramp. Default 0.5.
    pub p_end: f64,
    /// linear | cosine. Default linear.
    pub schedule: RampShape,
    /// Fraction of training where the ramp starts. Default 0.
    pub ramp_start: f64,
    /// Fraction of training where the ramp reaches `p_end`. Default 0.7, so `p_end` holds for a
    /// tenth of training before stage 2.
    pub ramp_end: f64,
    /// Fraction of training where stage 2 starts (branches frozen and all on; only the
    /// per-layer scales and the head train). 1.0 = never. Default 0.8.
    pub stage2_start: f64,
    /// The per-layer scales' learning rate at the first step of stage 2, decaying from there
    /// with the main schedule's shape (the head stays on the main schedule); `None` keeps the
    /// main learning rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage2_lr: Option<f64>,
    /// Initial per-layer scale s_l, finite and non-zero (zero would leave the branches and
    /// the scale without gradient). Default 1: the update starts as the plain mean of the
    /// branches.
    pub scale_init: f64,
}

impl Default for DmloraSpec {
    fn default() -> Self {
        DmloraSpec {
            branches: 4,
            branch_rank: 8,
            p_start: 0.0,
            p_end: 0.5,
            schedule: RampShape::Linear,
            ramp_start: 0.0,
            ramp_end: 0.7,
            stage2_start: 0.8,
            stage2_lr: None,
            scale_init: 1.0,
        }
    }
}

/// Read whole by kind dmlora.
impl Section for DmloraSpec {}

/// Kind `dmlora`.
#[derive(Debug)]
pub struct Dmlora;

impl Method for Dmlora {
    type Section = DmloraSpec;
    type Plan = DmloraPlan;
    const ADAPTS_LAYERS: bool = true;
    const KEY_SETTINGS: &'static [&'static str] = &["adapter.dmlora.branches", "adapter.dmlora.branch_rank"];

    fn validate(d: &DmloraSpec, targets: &[TargetLayer]) -> Result<(), SpecError> {
        check_targets(targets)?;
        SpecError::check_positive("adapter.dmlora.branches", d.branches)?;
        SpecError::check_positive("adapter.dmlora.branch_rank", d.branch_rank)?;
        SpecError::check_unit_open("adapter.dmlora.p_start", d.p_start)?;
        SpecError::check_unit_open("adapter.dmlora.p_end", d.p_end)?;
        SpecError::check_unit_closed("adapter.dmlora.ramp_start", d.ramp_start)?;
        SpecError::check_unit_closed("adapter.dmlora.ramp_end", d.ramp_end)?;
        if d.ramp_end < d.ramp_start {
            return Err(SpecError::invalid(
                "adapter.dmlora.ramp_end",
                format!("{} is before ramp_start = {}", d.ramp_end, d.ramp_start),
            ));
        }
        if !(d.stage2_start.is_finite() && d.stage2_start > 0.0 && d.stage2_start <= 1.0) {
            return Err(SpecError::out_of_range("adapter.dmlora.stage2_start", d.stage2_start, "(0, 1]"));
        }
        if let Some(lr) = d.stage2_lr
            && !(lr.is_finite() && lr > 0.0)
        {
            return Err(SpecError::out_of_range("adapter.dmlora.stage2_lr", lr, "(0, inf)"));
        }
        // Zero would be a dead adapter: with s_l = 0 and B = 0 at the start, s_l, A and B all
        // get zero gradients forever (MLAE's coeff_init has the same rule).
        SpecError::check_live_scale("adapter.dmlora.scale_init", d.scale_init)
    }

    fn label(d: &DmloraSpec) -> String {
        format!("dmlora-k{}-r{}", d.branches, d.branch_rank)
    }

    fn resolve(d: &DmloraSpec, targets: &[TargetLayer], depth: usize) -> Result<DmloraPlan, SpecError> {
        Ok(DmloraPlan { spec: d.clone(), layers: sites(targets, depth) })
    }

    /// The documented defaults with rank-2 branches; and branches dropped from the first step
    /// on a cosine ramp, a scale other than 1 and a stage-2 rate.
    fn examples(_depth: usize) -> Vec<DmloraSpec> {
        let plain = DmloraSpec { branch_rank: 2, ..Default::default() };
        let busy = DmloraSpec {
            branches: 3,
            branch_rank: 2,
            p_start: 0.5,
            p_end: 0.5,
            schedule: RampShape::Cosine,
            stage2_start: 0.9,
            stage2_lr: Some(0.01),
            scale_init: 0.5,
            ..Default::default()
        };
        vec![plain, busy]
    }
}

/// A resolved DMLoRA adapter: the same K branches of rank r on every adapted layer, stacked
/// in MLAE's layout (`A: (K r, in)`, branch k in rows `k r .. (k + 1) r`), and the section's
/// schedule.
///
/// ```
/// use mlae_core::{AdapterKind, AdapterPlan, AdapterSpec, DmloraSpec};
/// let dmlora = DmloraSpec { branches: 4, branch_rank: 2, ..Default::default() };
/// let AdapterPlan::Dmlora(plan) = AdapterSpec { kind: AdapterKind::Dmlora, dmlora, ..Default::default() }
///     .resolve(12)
///     .unwrap() else { unreachable!() };
/// assert_eq!((plan.layers.len(), plan.rank()), (12, 8));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmloraPlan {
    /// The section: branches, their rank, the ramp and the stages.
    pub spec: DmloraSpec,
    /// The adapted layers, in plan order.
    pub layers: Vec<LayerSite>,
}

impl DmloraPlan {
    /// Total rank of a layer's update, `branches * branch_rank`.
    pub fn rank(&self) -> usize {
        self.spec.branches * self.spec.branch_rank
    }
}

impl MethodPlan for DmloraPlan {
    fn sites(&self) -> Vec<LayerSite> {
        self.layers.clone()
    }

    fn update_rank(&self, site: LayerSite) -> usize {
        if self.layers.contains(&site) { self.rank() } else { 0 }
    }

    /// `K r (in + out) + 1` per layer: the branches and the layer's scale.
    fn adapter_params(&self, dims: &ModelDims) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let (i, o) = layer_in_out(l.target, dims);
                self.rank() * (i + o) + 1
            })
            .sum()
    }
}

/// Two stages: in stage 2 (index 1) the branches (role [`ParamRole::Adapter`]) are frozen,
/// and the per-layer scales ([`ParamRole::BranchScale`]) take `stage2_lr` when it is set.
///
/// ```
/// use mlae_core::{DmloraPlan, DmloraSpec, ParamRole, TrainSchedule};
/// let plan = DmloraPlan { spec: DmloraSpec { stage2_start: 0.8, stage2_lr: Some(0.05), ..Default::default() }, layers: vec![] };
/// assert_eq!((plan.stage(79, 100), plan.stage(80, 100)), (0, 1));
/// assert!(!plan.trains(ParamRole::Adapter, 1) && plan.trains(ParamRole::BranchScale, 1));
/// let main = |step: u64| 1.0 - step as f64 / 100.0;
/// assert_eq!(plan.lr(ParamRole::BranchScale, 80, 100, &main), 0.05);
/// assert_eq!(plan.lr(ParamRole::Head, 80, 100, &main), main(80));
/// ```
impl TrainSchedule for DmloraPlan {
    fn stage(&self, step: u64, total_steps: u64) -> usize {
        usize::from(in_stage2(&self.spec, step, total_steps))
    }

    fn stage_start(&self, stage: usize, total_steps: u64) -> Option<u64> {
        match stage {
            0 => (total_steps > 0).then_some(0),
            1 => stage2_start_step(&self.spec, total_steps),
            _ => None,
        }
    }

    fn trains(&self, role: ParamRole, stage: usize) -> bool {
        !(stage == 1 && role == ParamRole::Adapter)
    }

    /// The scales' rate in stage 2 is `stage2_lr` at the first step of stage 2, then decays
    /// with the main schedule's shape, `stage2_lr * main(step) / main(stage2 start)`. So
    /// `stage2_lr` is the rate the scales have when stage 2 begins (not a peak to be rescaled
    /// by how far the cosine has already decayed), and leaving it unset is the same as
    /// setting it to the main rate at that step. Everything else follows `main`.
    fn lr(&self, role: ParamRole, step: u64, total_steps: u64, main: &dyn Fn(u64) -> f64) -> f64 {
        let lr = main(step);
        if role != ParamRole::BranchScale || !in_stage2(&self.spec, step, total_steps) {
            return lr;
        }
        let start = stage2_start_step(&self.spec, total_steps).unwrap_or(step);
        let at_start = main(start);
        match self.spec.stage2_lr {
            Some(s2) if at_start > 0.0 => s2 * lr / at_start,
            Some(s2) => s2,
            None => lr,
        }
    }

    fn describe(&self, total_steps: u64) -> Option<String> {
        let d = &self.spec;
        let p = |step| branch_drop_prob(d, step, total_steps);
        Some(match stage2_start_step(d, total_steps) {
            Some(s) => format!(
                "DMLoRA: {} branches per layer, drop probability {:.3} at step 0 -> {:.3} at step {}; stage 2 \
                 (branches frozen, scales and head train) from step {s} of {total_steps}",
                d.branches,
                p(0),
                p(s - 1),
                s - 1,
            ),
            None => format!(
                "DMLoRA: {} branches per layer, drop probability {:.3} at step 0 -> {:.3} at the end; no \
                 stage 2 in {total_steps} steps",
                d.branches,
                p(0),
                p(total_steps.saturating_sub(1)),
            ),
        })
    }

    fn describe_stage(&self, _stage: usize, since: u64, step: u64, total_steps: u64) -> String {
        let when = if since == step {
            format!("begins at step {step}")
        } else {
            format!("since step {since} (resumed at step {step})")
        };
        format!(
            "DMLoRA stage 2 {when} of {total_steps}: branches frozen and all on; the per-layer scales and \
             the head train on"
        )
    }
}

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
/// (sampler seed, step, layer); `layer` is the layer's index in the plan ([`DmloraPlan::layers`]).
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
#[path = "dmlora_tests.rs"]
mod tests;
