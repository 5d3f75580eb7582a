//! Masked LoRA experts (the paper's method): per adapted layer, n experts of rank k, each
//! with its own coefficient lambda, masked by strategy (none, fixed, stochastic, mixed) and a
//! per-block pattern. The layer math is in [`crate::merge`] and [`crate::mask`]; this module
//! holds the `[adapter.mlae]` section, its resolution into per-layer experts and dropout, and
//! the parameter count.

use crate::error::SpecError;
use crate::mask::MaskSampler;
use crate::method::{Method, MethodPlan, Section};
use crate::names::named_enum;
use crate::params::{ModelDims, layer_in_out};
use crate::pattern::{self, LayerPattern};
use crate::stages::{ParamRole, TrainSchedule};
use crate::target::{LayerSite, TargetLayer, check_targets, sites};
use serde::{Deserialize, Serialize};

/// How MLAE masks experts (paper section 3.3 and Fig. 2). Serde names are lowercase.
///
/// ```
/// use mlae_core::MaskStrategy;
/// assert_eq!(MaskStrategy::default(), MaskStrategy::Stochastic);
/// assert_eq!("mixed".parse::<MaskStrategy>().unwrap(), MaskStrategy::Mixed);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskStrategy {
    /// No masking: every expert always on (the "decomposition + adaptive" ablation rows).
    None,
    /// Permanently masked experts: a per-block allocation, no dropout.
    Fixed,
    /// Expert dropout with a per-block probability, same experts in every block (the paper's
    /// method with the uniform pattern).
    #[default]
    Stochastic,
    /// The fixed per-block allocation plus the same expert dropout
    /// `adapter.mlae.expert_dropout` everywhere.
    Mixed,
}

named_enum!(MaskStrategy, "adapter.mlae.mask.strategy", {
    None => "none", Fixed => "fixed", Stochastic => "stochastic", Mixed => "mixed",
});

/// `[adapter.mlae.mask]`: strategy, per-block pattern or explicit lists, and the seed of the
/// random pattern. See [`Mlae::resolve`] for how they combine.
///
/// ```
/// use mlae_core::{MaskSpec, MaskStrategy, LayerPattern};
/// let m: MaskSpec = toml::from_str("strategy = 'mixed'\npattern = 'random'\nseed = 3").unwrap();
/// assert_eq!((m.strategy, m.pattern, m.seed), (MaskStrategy::Mixed, LayerPattern::Random, 3));
/// assert!(toml::from_str::<MaskSpec>("strategy = 'fixed'\nexperts = 3").is_err()); // unknown field
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskSpec {
    /// none | fixed | stochastic | mixed. Default stochastic.
    pub strategy: MaskStrategy,
    /// uniform | incremental | decremental | hourglass | protruding | random. Default uniform.
    pub pattern: LayerPattern,
    /// Explicit experts per block (fixed/mixed), one entry per block, each >= 1. Overrides a
    /// uniform pattern; giving it with another pattern is an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experts_per_layer: Option<Vec<usize>>,
    /// Explicit expert dropout per block (stochastic), one entry per block, each in [0, 1).
    /// Overrides a uniform pattern; giving it with another pattern is an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expert_dropout_per_layer: Option<Vec<f64>>,
    /// Seed of the random allocation pattern (not of the training masks).
    pub seed: u64,
}

/// `[adapter.mlae]`.
///
/// ```
/// use mlae_core::MlaeSpec;
/// let s: MlaeSpec = toml::from_str("experts = 4\nexpert_rank = 2\nexpert_dropout = 0.5").unwrap();
/// assert_eq!((s.experts, s.expert_rank, s.expert_dropout, s.coeff_init), (4, 2, 0.5, 1.0));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlaeSpec {
    /// n: experts per layer (before fixed masks take some away). Default 8.
    pub experts: usize,
    /// k: rank of each expert (the paper's 8x1 / 4x2 / 2x4 ablation keeps n k fixed). A
    /// layer's total rank is `experts * expert_rank`. Default 1.
    pub expert_rank: usize,
    /// Initial value of every coefficient lambda (paper: searched over 1/8 .. 4). Finite and
    /// non-zero (zero would leave A, B and lambda without gradient). Default 1.
    pub coeff_init: f64,
    /// Whether the coefficients lambda train (the paper's "adaptive coefficients"). `false`
    /// keeps every lambda at `coeff_init` for the whole run, for Table 5's rows without them
    /// (the run's `trainable_params` then leaves them out). Default true.
    pub adaptive_coeffs: bool,
    /// p: the probability that an expert is dropped at a training step, the same in every
    /// block (stochastic + uniform, and mixed). In [0, 1). Default 0.
    pub expert_dropout: f64,
    /// The masks. Default stochastic + uniform.
    pub mask: MaskSpec,
}

impl Default for MlaeSpec {
    fn default() -> Self {
        MlaeSpec {
            experts: 8,
            expert_rank: 1,
            coeff_init: 1.0,
            adaptive_coeffs: true,
            expert_dropout: 0.0,
            mask: MaskSpec::default(),
        }
    }
}

/// Read whole by kind mlae.
impl Section for MlaeSpec {}

/// Kind `mlae`.
#[derive(Debug)]
pub struct Mlae;

impl Method for Mlae {
    type Section = MlaeSpec;
    type Plan = MlaePlan;
    const ADAPTS_LAYERS: bool = true;
    const KEY_SETTINGS: &'static [&'static str] = &[
        "adapter.mlae.experts",
        "adapter.mlae.expert_rank",
        "adapter.mlae.expert_dropout",
        "adapter.mlae.coeff_init",
        "adapter.mlae.adaptive_coeffs",
        "adapter.mlae.mask.strategy",
        "adapter.mlae.mask.pattern",
    ];

    fn validate(s: &MlaeSpec, targets: &[TargetLayer]) -> Result<(), SpecError> {
        SpecError::check_unit_open("adapter.mlae.expert_dropout", s.expert_dropout)?;
        SpecError::check_live_scale("adapter.mlae.coeff_init", s.coeff_init)?;
        check_targets(targets)?;
        SpecError::check_positive("adapter.mlae.experts", s.experts)?;
        SpecError::check_positive("adapter.mlae.expert_rank", s.expert_rank)?;
        validate_mask(s)
    }

    fn label(s: &MlaeSpec) -> String {
        let frozen = if s.adaptive_coeffs { "" } else { "-frozen" };
        format!("mlae-{}x{}-p{}-init{}{frozen}", s.experts, s.expert_rank, s.expert_dropout, s.coeff_init)
    }

    /// Expands the mask for a model with `depth` blocks:
    /// - `none`: `experts` experts everywhere, no dropout;
    /// - `stochastic`: `experts` experts everywhere, dropout from the pattern (uniform:
    ///   `expert_dropout`) or `expert_dropout_per_layer`;
    /// - `fixed`: experts from the pattern (uniform: `experts`) or `experts_per_layer`, no
    ///   dropout;
    /// - `mixed`: experts as for fixed, `expert_dropout` everywhere.
    ///
    /// The paper's named patterns exist for 12 blocks only; other depths need an explicit
    /// list (the random pattern is defined by its constraints and works at any depth).
    ///
    /// ```
    /// use mlae_core::{AdapterPlan, AdapterSpec, LayerPattern, MaskSpec, MaskStrategy, MlaeSpec};
    /// let mask = MaskSpec { strategy: MaskStrategy::Mixed, pattern: LayerPattern::Incremental, ..Default::default() };
    /// let spec = AdapterSpec { mlae: MlaeSpec { expert_dropout: 0.5, mask, ..Default::default() }, ..Default::default() };
    /// let AdapterPlan::Mlae(plan) = spec.resolve(12).unwrap() else { unreachable!() };
    /// let experts: Vec<usize> = plan.layers.iter().map(|l| l.experts).collect();
    /// assert_eq!(experts, [2, 2, 2, 6, 6, 6, 10, 10, 10, 14, 14, 14]);
    /// assert!(plan.layers.iter().all(|l| l.expert_dropout == 0.5));
    /// assert_eq!(spec.resolve(6).unwrap_err().field(), "adapter.mlae.mask.pattern");
    /// ```
    fn resolve(s: &MlaeSpec, targets: &[TargetLayer], depth: usize) -> Result<MlaePlan, SpecError> {
        let (experts, dropout) = per_block(s, depth)?;
        let layers = sites(targets, depth)
            .into_iter()
            .map(|site| MlaeLayerPlan {
                site,
                experts: experts[site.block],
                expert_rank: s.expert_rank,
                expert_dropout: dropout[site.block],
            })
            .collect();
        Ok(MlaePlan {
            coeff_init: s.coeff_init,
            adaptive_coeffs: s.adaptive_coeffs,
            strategy: s.mask.strategy,
            layers,
        })
    }

    /// Stochastic expert dropout; a mixed mask with its own experts per block (so layers
    /// differ in rank) and rank-2 experts; and all experts always on with frozen coefficients.
    fn examples(depth: usize) -> Vec<MlaeSpec> {
        let stochastic = MlaeSpec { experts: 4, expert_dropout: 0.5, coeff_init: 0.5, ..Default::default() };
        let mixed = MlaeSpec {
            experts: 4,
            expert_rank: 2,
            expert_dropout: 0.5,
            mask: MaskSpec {
                strategy: MaskStrategy::Mixed,
                experts_per_layer: Some((0..depth).map(|b| if b % 2 == 0 { 1 } else { 3 }).collect()),
                ..Default::default()
            },
            ..Default::default()
        };
        let frozen = MlaeSpec {
            experts: 3,
            coeff_init: 2.0,
            adaptive_coeffs: false,
            mask: MaskSpec { strategy: MaskStrategy::None, ..Default::default() },
            ..Default::default()
        };
        vec![stochastic, mixed, frozen]
    }
}

fn validate_mask(s: &MlaeSpec) -> Result<(), SpecError> {
    let m = &s.mask;
    let strategy = m.strategy;
    let named = m.pattern != LayerPattern::Uniform;
    if let Some(list) = &m.experts_per_layer {
        if !matches!(strategy, MaskStrategy::Fixed | MaskStrategy::Mixed) {
            return Err(SpecError::invalid(
                "adapter.mlae.mask.experts_per_layer",
                format!("only fixed and mixed masks allocate experts per block (strategy is {strategy})"),
            ));
        }
        if named {
            return Err(SpecError::invalid(
                "adapter.mlae.mask.experts_per_layer",
                format!("give either this list or pattern = \"{}\", not both", m.pattern),
            ));
        }
        if let Some(i) = list.iter().position(|&e| e == 0) {
            return Err(SpecError::invalid(
                format!("adapter.mlae.mask.experts_per_layer[{i}]"),
                "must be at least 1 (leave the block out of the adapter instead)",
            ));
        }
    }
    if let Some(list) = &m.expert_dropout_per_layer {
        if strategy != MaskStrategy::Stochastic {
            return Err(SpecError::invalid(
                "adapter.mlae.mask.expert_dropout_per_layer",
                format!(
                    "only stochastic masks take an expert dropout per block (strategy is {strategy}; mixed \
                     uses adapter.mlae.expert_dropout everywhere)"
                ),
            ));
        }
        if named {
            return Err(SpecError::invalid(
                "adapter.mlae.mask.expert_dropout_per_layer",
                format!("give either this list or pattern = \"{}\", not both", m.pattern),
            ));
        }
        for (i, &p) in list.iter().enumerate() {
            SpecError::check_unit_open(format!("adapter.mlae.mask.expert_dropout_per_layer[{i}]"), p)?;
        }
    }
    match strategy {
        MaskStrategy::None | MaskStrategy::Fixed if s.expert_dropout != 0.0 => Err(SpecError::invalid(
            "adapter.mlae.expert_dropout",
            format!(
                "{} has no effect with adapter.mlae.mask.strategy = \"{strategy}\"; use strategy \
                 \"stochastic\" or \"mixed\", or expert_dropout = 0",
                s.expert_dropout
            ),
        )),
        MaskStrategy::None if named => Err(SpecError::invalid(
            "adapter.mlae.mask.pattern",
            format!("\"{}\" has no effect with strategy = \"none\"", m.pattern),
        )),
        MaskStrategy::Stochastic if m.pattern == LayerPattern::Random => Err(SpecError::invalid(
            "adapter.mlae.mask.pattern",
            "\"random\" is an allocation pattern for fixed and mixed masks; stochastic masks have no \
             random pattern (use expert_dropout_per_layer for your own per-block dropout)",
        )),
        MaskStrategy::Stochastic
            if (named || m.expert_dropout_per_layer.is_some()) && s.expert_dropout != 0.0 =>
        {
            Err(SpecError::invalid(
                "adapter.mlae.expert_dropout",
                format!(
                    "{} conflicts with the per-block dropout of {}; set expert_dropout = 0",
                    s.expert_dropout,
                    if named {
                        "adapter.mlae.mask.pattern"
                    } else {
                        "adapter.mlae.mask.expert_dropout_per_layer"
                    }
                ),
            ))
        }
        MaskStrategy::Fixed | MaskStrategy::Mixed if named && s.experts != pattern::PAPER_EXPERTS => {
            Err(SpecError::invalid(
                "adapter.mlae.experts",
                format!(
                    "the \"{}\" allocation is defined for {} experts per block on average (the paper's \
                     budget) but experts = {}; set experts = {} or give adapter.mlae.mask.experts_per_layer",
                    m.pattern,
                    pattern::PAPER_EXPERTS,
                    s.experts,
                    pattern::PAPER_EXPERTS
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Experts and expert dropout of every block.
fn per_block(s: &MlaeSpec, depth: usize) -> Result<(Vec<usize>, Vec<f64>), SpecError> {
    let m = &s.mask;
    let allocation = || -> Result<Vec<usize>, SpecError> {
        match &m.experts_per_layer {
            Some(list) if list.len() != depth => Err(SpecError::WrongLength {
                field: "adapter.mlae.mask.experts_per_layer".into(),
                len: list.len(),
                depth,
            }),
            Some(list) => Ok(list.clone()),
            None => m.pattern.fixed_experts(depth, s.experts, m.seed),
        }
    };
    Ok(match m.strategy {
        MaskStrategy::None => (vec![s.experts; depth], vec![0.0; depth]),
        MaskStrategy::Fixed => (allocation()?, vec![0.0; depth]),
        MaskStrategy::Mixed => (allocation()?, vec![s.expert_dropout; depth]),
        MaskStrategy::Stochastic => {
            let ps = match &m.expert_dropout_per_layer {
                Some(list) if list.len() != depth => {
                    return Err(SpecError::WrongLength {
                        field: "adapter.mlae.mask.expert_dropout_per_layer".into(),
                        len: list.len(),
                        depth,
                    });
                }
                Some(list) => list.clone(),
                None => m.pattern.stochastic_dropout(depth, s.expert_dropout)?,
            };
            (vec![s.experts; depth], ps)
        }
    })
}

/// One adapted layer of MLAE: `experts` experts of rank `expert_rank` (fixed-masked experts
/// are not allocated at all), each dropped with probability `expert_dropout` during training.
///
/// ```
/// use mlae_core::{AdapterPlan, AdapterSpec, TargetLayer};
/// let AdapterPlan::Mlae(plan) = AdapterSpec::default().resolve(12).unwrap() else { unreachable!() };
/// let l = &plan.layers[3];
/// assert_eq!((l.site.block, l.site.target, l.experts, l.expert_rank, l.expert_dropout), (3, TargetLayer::Qkv, 8, 1, 0.0));
/// assert_eq!(l.rank(), 8);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlaeLayerPlan {
    /// Where the layer is.
    pub site: LayerSite,
    /// Allocated experts.
    pub experts: usize,
    /// Rank of each expert.
    pub expert_rank: usize,
    /// Probability that an expert is dropped at a training step, in [0, 1).
    pub expert_dropout: f64,
}

impl MlaeLayerPlan {
    /// Total rank of the layer's update: `experts * expert_rank` (rows of the stacked A and B).
    pub fn rank(&self) -> usize {
        self.experts * self.expert_rank
    }

    /// `n (k (in + out) + 1)`: A, B and one lambda per expert.
    pub fn params(&self, dims: &ModelDims) -> usize {
        let (i, o) = layer_in_out(self.site.target, dims);
        self.rank() * (i + o) + self.experts
    }
}

/// A resolved MLAE adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlaePlan {
    /// Initial value of every lambda.
    pub coeff_init: f64,
    /// Whether the lambdas train (`false`: frozen at `coeff_init`). Absent in plans stored
    /// before the switch existed, which all trained them.
    #[serde(default = "adaptive_by_default")]
    pub adaptive_coeffs: bool,
    /// The mask strategy the plan came from.
    pub strategy: MaskStrategy,
    /// The adapted layers, in plan order.
    pub layers: Vec<MlaeLayerPlan>,
}

impl MlaePlan {
    /// The layer of a site, if it is adapted.
    pub fn layer(&self, block: usize, target: TargetLayer) -> Option<&MlaeLayerPlan> {
        self.layers.iter().find(|l| l.site.block == block && l.site.target == target)
    }

    /// Sum of the layers' ranks.
    pub fn total_rank(&self) -> usize {
        self.layers.iter().map(MlaeLayerPlan::rank).sum()
    }

    /// Whether any layer drops experts during training.
    pub fn has_expert_dropout(&self) -> bool {
        self.layers.iter().any(|l| l.expert_dropout > 0.0)
    }

    /// The mask scales of every layer at one training step, in plan order.
    ///
    /// ```
    /// use mlae_core::{AdapterPlan, AdapterSpec, MaskSampler, MlaeSpec};
    /// let spec = AdapterSpec { mlae: MlaeSpec { expert_dropout: 0.5, ..Default::default() }, ..Default::default() };
    /// let AdapterPlan::Mlae(plan) = spec.resolve(12).unwrap() else { unreachable!() };
    /// let all = plan.scales_at(&MaskSampler::new(0), 7);
    /// assert_eq!(all.len(), 12);
    /// assert_eq!(all[4], MaskSampler::new(0).layer_scales(7, 4, 8, 0.5));
    /// ```
    pub fn scales_at(&self, sampler: &MaskSampler, step: u64) -> Vec<Vec<f32>> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| sampler.layer_scales(step, i, l.experts, l.expert_dropout))
            .collect()
    }
}

fn adaptive_by_default() -> bool {
    true
}

/// One stage; the coefficients train unless `adaptive_coeffs` is off.
///
/// ```
/// use mlae_core::{AdapterPlan, AdapterSpec, MlaeSpec, ParamRole, TrainSchedule};
/// let spec = AdapterSpec { mlae: MlaeSpec { adaptive_coeffs: false, ..Default::default() }, ..Default::default() };
/// let AdapterPlan::Mlae(plan) = spec.resolve(12).unwrap() else { unreachable!() };
/// assert!(!plan.trains(ParamRole::Coefficient, 0));
/// assert!(plan.trains(ParamRole::Adapter, 0) && plan.trains(ParamRole::Head, 0));
/// assert!(!plan.ever_trains(ParamRole::Coefficient));
/// ```
impl TrainSchedule for MlaePlan {
    fn trains(&self, role: ParamRole, _stage: usize) -> bool {
        role != ParamRole::Coefficient || self.adaptive_coeffs
    }

    fn ever_trains(&self, role: ParamRole) -> bool {
        self.trains(role, 0)
    }

    fn describe(&self, _total_steps: u64) -> Option<String> {
        (!self.adaptive_coeffs).then(|| {
            format!("MLAE coefficients frozen at {} (adapter.mlae.adaptive_coeffs = false)", self.coeff_init)
        })
    }
}

impl MethodPlan for MlaePlan {
    fn sites(&self) -> Vec<LayerSite> {
        self.layers.iter().map(|l| l.site).collect()
    }

    /// The layer's allocated experts times their rank (fixed masks allocate fewer).
    fn update_rank(&self, site: LayerSite) -> usize {
        self.layer(site.block, site.target).map_or(0, MlaeLayerPlan::rank)
    }

    /// A, B and lambda of every layer, frozen lambdas included: they are part of the
    /// adapter (stored, merged), as the paper counts it.
    fn adapter_params(&self, dims: &ModelDims) -> usize {
        self.layers.iter().map(|l| l.params(dims)).sum()
    }

    /// The lambdas when they do not train.
    fn frozen_adapter_params(&self, _dims: &ModelDims) -> usize {
        if self.adaptive_coeffs { 0 } else { self.layers.iter().map(|l| l.experts).sum() }
    }
}

#[cfg(test)]
#[path = "mlae_tests.rs"]
mod tests;
