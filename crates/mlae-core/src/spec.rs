//! The adapter specification (what a config's `[adapter]` table says) and its resolution into
//! an [`AdapterPlan`]: one [`LayerPlan`] per adapted linear layer, with patterns expanded.
//!
//! Rules, so that a config never silently means something else:
//! - unknown fields are errors (`deny_unknown_fields`), unknown names are serde errors;
//! - every number is range-checked, and the error names the field;
//! - sections a kind does not use are not validated (`mask` is MLAE's, `dmlora` is DMLoRA's),
//!   so one sweep config can switch `kind` without editing the rest;
//! - within the settings a kind does use, contradictions are errors (e.g. `dropout = 0.5` with
//!   `mask.strategy = "fixed"`, which would otherwise be ignored).

use crate::error::SpecError;
use crate::pattern;
use serde::{Deserialize, Serialize};

/// Implements `ALL`, `as_str`, `Display` and `FromStr` for a unit-only enum whose serde names
/// are given explicitly (they must match the `rename_all` rule on the enum).
macro_rules! named_enum {
    ($ty:ident, $field:literal, { $($var:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$var),+];

            /// The name used in configs (identical to the serde name).
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$var => $s),+ }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = SpecError;

            fn from_str(s: &str) -> Result<Self, SpecError> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| SpecError::Unknown {
                    field: $field.to_string(),
                    value: s.to_string(),
                    expected: Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                })
            }
        }
    };
}

/// Which fine-tuning method. Serde names are kebab-case (`linear-probe`, `lora-dropout`, ...).
///
/// ```
/// use mlae_core::AdapterKind;
/// let k: AdapterKind = "lora-dropout".parse().unwrap();
/// assert_eq!(k, AdapterKind::LoraDropout);
/// assert!(k.has_adapter());
/// assert!(!AdapterKind::LinearProbe.has_adapter());
/// assert_eq!("lora_dropout".parse::<AdapterKind>().unwrap_err().field(), "adapter.kind");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterKind {
    /// Train only the classification head.
    LinearProbe,
    /// Train every backbone parameter and the head.
    Full,
    /// Plain LoRA, `base(x) + scale * B A dropout(x)` (PEFT's placement of dropout).
    Lora,
    /// LoRA with dropout on the update's output, `base(x) + dropout(scale * B A x)` (the
    /// paper's "LoRA+Dropout" baseline of Fig. 4).
    LoraDropout,
    /// Masked LoRA experts (the paper's method).
    #[default]
    Mlae,
    /// Dropout-mixture LoRA: several LoRA branches per layer, gradually dropped out.
    Dmlora,
}

named_enum!(AdapterKind, "adapter.kind", {
    LinearProbe => "linear-probe", Full => "full", Lora => "lora",
    LoraDropout => "lora-dropout", Mlae => "mlae", Dmlora => "dmlora",
});

impl AdapterKind {
    /// Whether this kind adds low-rank layers to the backbone (the others train the head or
    /// the whole backbone).
    pub fn has_adapter(self) -> bool {
        matches!(self, AdapterKind::Lora | AdapterKind::LoraDropout | AdapterKind::Mlae | AdapterKind::Dmlora)
    }
}

/// A linear layer of a ViT block that an adapter can wrap. Serde names are lowercase.
///
/// ```
/// use mlae_core::TargetLayer;
/// assert_eq!(TargetLayer::Qkv.module_path(), "attn.qkv");
/// assert_eq!("fc2".parse::<TargetLayer>().unwrap(), TargetLayer::Fc2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetLayer {
    /// The fused query/key/value projection, dim -> 3 dim (the paper's placement).
    Qkv,
    /// The attention output projection, dim -> dim.
    Proj,
    /// The first MLP layer, dim -> mlp_dim.
    Fc1,
    /// The second MLP layer, mlp_dim -> dim.
    Fc2,
}

named_enum!(TargetLayer, "adapter.targets", { Qkv => "qkv", Proj => "proj", Fc1 => "fc1", Fc2 => "fc2" });

impl TargetLayer {
    /// The module path inside a timm block (`blocks.N.<path>`), as used by timm and PEFT keys.
    pub fn module_path(self) -> &'static str {
        match self {
            TargetLayer::Qkv => "attn.qkv",
            TargetLayer::Proj => "attn.proj",
            TargetLayer::Fc1 => "mlp.fc1",
            TargetLayer::Fc2 => "mlp.fc2",
        }
    }
}

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
    /// Expert-level dropout with a per-block probability, same experts in every block (the
    /// paper's method with the uniform pattern).
    #[default]
    Stochastic,
    /// The fixed per-block allocation plus the same expert dropout `adapter.dropout` everywhere.
    Mixed,
}

named_enum!(MaskStrategy, "adapter.mask.strategy", {
    None => "none", Fixed => "fixed", Stochastic => "stochastic", Mixed => "mixed",
});

/// How a mask varies over the blocks (paper A.5). For fixed/mixed masks the pattern gives the
/// number of experts per block; for stochastic masks, the dropout probability per block. The
/// paper's values are for 12 blocks (see [`crate::pattern`]).
///
/// ```
/// use mlae_core::LayerPattern;
/// assert_eq!(LayerPattern::Hourglass.fixed_experts(12, 8, 0).unwrap().iter().sum::<usize>(), 96);
/// assert!(LayerPattern::Hourglass.fixed_experts(24, 8, 0).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerPattern {
    /// The same everywhere: `adapter.experts` experts, or `adapter.dropout` dropout.
    #[default]
    Uniform,
    /// More experts (lower dropout) in later blocks.
    Incremental,
    /// More experts (lower dropout) in earlier blocks.
    Decremental,
    /// Many experts (low dropout) at both ends, few in the middle.
    Hourglass,
    /// Few experts (high dropout) at both ends, many in the middle.
    Protruding,
    /// Fixed/mixed only: seeded random counts in 1..=14 with mean 8.
    Random,
}

named_enum!(LayerPattern, "adapter.mask.pattern", {
    Uniform => "uniform", Incremental => "incremental", Decremental => "decremental",
    Hourglass => "hourglass", Protruding => "protruding", Random => "random",
});

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

/// MLAE's masks: strategy, per-block pattern or explicit lists, and the seed of the random
/// pattern. See [`AdapterSpec::resolve`] for how they combine.
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
    /// Explicit dropout per block (stochastic), one entry per block, each in [0, 1). Overrides
    /// a uniform pattern; giving it with another pattern is an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_per_layer: Option<Vec<f64>>,
    /// Seed of the random allocation pattern (not of the training masks).
    pub seed: u64,
}

/// DMLoRA's settings. Only the DMLoRA abstract is known; every choice below is this project's
/// reading of it, not the authors' code (see [`crate::dmlora`]).
///
/// ```
/// use mlae_core::{DmloraSpec, RampShape};
/// let d: DmloraSpec = toml::from_str("branches = 2\nschedule = 'cosine'").unwrap();
/// assert_eq!(d.branches, 2);
/// assert_eq!(d.schedule, RampShape::Cosine);
/// assert_eq!(d.p_end, DmloraSpec::default().p_end);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DmloraSpec {
    /// K: up/down branch pairs per layer, each of rank `adapter.experts`. Default 4.
    pub branches: usize,
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

/// What to fine-tune and how: the `[adapter]` table of an experiment config.
///
/// Every field has a default, so `kind = "lora"` alone is a complete spec.
///
/// ```
/// use mlae_core::{AdapterKind, AdapterSpec, TargetLayer};
/// #[derive(serde::Deserialize)]
/// struct Config { adapter: AdapterSpec }
/// let c: Config = toml::from_str("[adapter]\nkind = 'lora'").unwrap();
/// assert_eq!(c.adapter.kind, AdapterKind::Lora);
/// assert_eq!(c.adapter.targets, vec![TargetLayer::Qkv]);
/// assert_eq!(c.adapter.experts, 8);
/// c.adapter.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdapterSpec {
    /// The method. Default mlae.
    pub kind: AdapterKind,
    /// Which linear layers of every block get an adapter. Default `[qkv]`.
    pub targets: Vec<TargetLayer>,
    /// r: experts per layer for MLAE; the rank for lora / lora-dropout; the rank of each
    /// branch for dmlora. Default 8.
    pub experts: usize,
    /// k: rank of each MLAE expert (the paper's 8x1 / 4x2 / 2x4 ablation keeps r k fixed).
    /// A layer's total rank is `experts * expert_rank`. Ignored by other kinds. Default 1.
    pub expert_rank: usize,
    /// Initial value of every MLAE coefficient lambda (paper: searched over 1/8 .. 4). Must be
    /// finite and non-zero (zero would leave A, B and lambda without gradient). Default 1.
    pub coeff_init: f64,
    /// LoRA's alpha: the update is scaled by alpha / r. `None` means alpha = r (scale 1).
    /// Used by lora and lora-dropout only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
    /// MLAE: the uniform expert-dropout p (stochastic + uniform, and mixed). lora: dropout on
    /// the adapter's input. lora-dropout: dropout on the update's output. In [0, 1). Default 0.
    pub dropout: f64,
    /// MLAE's masks. Default stochastic + uniform.
    pub mask: MaskSpec,
    /// DMLoRA's settings (kind = dmlora).
    pub dmlora: DmloraSpec,
}

impl Default for AdapterSpec {
    fn default() -> Self {
        AdapterSpec {
            kind: AdapterKind::Mlae,
            targets: vec![TargetLayer::Qkv],
            experts: 8,
            expert_rank: 1,
            coeff_init: 1.0,
            lora_alpha: None,
            dropout: 0.0,
            mask: MaskSpec::default(),
            dmlora: DmloraSpec::default(),
        }
    }
}

/// One adapted linear layer after resolving patterns.
///
/// For MLAE, `experts` experts of rank `expert_rank`, dropped with probability `p` during
/// training. For lora / lora-dropout, `experts` is the rank and `expert_rank` is 1. For dmlora,
/// `experts` is the number of branches K and `expert_rank` the rank of each branch, so the
/// stacked A is `(K r, in)` with branch k in rows `k r .. (k+1) r`, exactly the MLAE layout;
/// `p` is 0 there because the branch drop probability follows a schedule
/// ([`crate::branch_drop_prob`]).
///
/// ```
/// use mlae_core::{AdapterSpec, TargetLayer};
/// let plan = AdapterSpec::default().resolve(12).unwrap();
/// let l = &plan.layers[3];
/// assert_eq!((l.block, l.target, l.experts, l.expert_rank, l.p), (3, TargetLayer::Qkv, 8, 1, 0.0));
/// assert_eq!(l.rank(), 8);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerPlan {
    /// Block index, from 0.
    pub block: usize,
    /// Which linear layer of the block.
    pub target: TargetLayer,
    /// Allocated experts (fixed-masked experts are not allocated at all).
    pub experts: usize,
    /// Rank of each expert.
    pub expert_rank: usize,
    /// Expert dropout probability of this layer during training, in [0, 1).
    pub p: f64,
}

impl LayerPlan {
    /// Total rank of the layer's update: `experts * expert_rank` (rows of the stacked A and B).
    pub fn rank(&self) -> usize {
        self.experts * self.expert_rank
    }

    /// A stable name, `blocks.<block>.<module path>`, as in timm and PEFT keys.
    ///
    /// ```
    /// # use mlae_core::AdapterSpec;
    /// let plan = AdapterSpec::default().resolve(12).unwrap();
    /// assert_eq!(plan.layers[2].name(), "blocks.2.attn.qkv");
    /// ```
    pub fn name(&self) -> String {
        format!("blocks.{}.{}", self.block, self.target.module_path())
    }
}

/// A resolved adapter: what to build, layer by layer. Layers are ordered block by block, and
/// within a block in the order of `adapter.targets`. The index of a layer in `layers` is the
/// `layer` argument of [`crate::MaskSampler`], so masks stay reproducible from (seed, step).
///
/// ```
/// use mlae_core::{AdapterKind, AdapterSpec};
/// let spec = AdapterSpec { kind: AdapterKind::Lora, lora_alpha: Some(16.0), ..Default::default() };
/// let plan = spec.resolve(12).unwrap();
/// assert_eq!(plan.layers.len(), 12);
/// assert_eq!(plan.lora_scale, 2.0); // alpha / r = 16 / 8
/// assert_eq!(plan.total_rank(), 96);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterPlan {
    /// The method.
    pub kind: AdapterKind,
    /// Number of blocks of the model the plan was resolved for.
    pub depth: usize,
    /// The adapted layers (empty for linear-probe and full).
    pub layers: Vec<LayerPlan>,
    /// MLAE: initial value of every lambda.
    pub coeff_init: f64,
    /// lora / lora-dropout: alpha / r. 1 for the other kinds (MLAE scales only by lambda, as
    /// the official layer does; DMLoRA by its learned per-layer scale).
    pub lora_scale: f64,
    /// lora: input dropout; lora-dropout: dropout on the update's output; 0 otherwise (MLAE's
    /// expert dropout is per layer, in `layers[i].p`).
    pub lora_dropout: f64,
    /// MLAE: the mask strategy the plan came from (`None` for other kinds).
    pub mask_strategy: Option<MaskStrategy>,
    /// DMLoRA's settings when kind = dmlora.
    pub dmlora: Option<DmloraSpec>,
}

impl AdapterPlan {
    /// The plan of one layer, if it is adapted.
    pub fn layer(&self, block: usize, target: TargetLayer) -> Option<&LayerPlan> {
        self.layers.iter().find(|l| l.block == block && l.target == target)
    }

    /// Sum of the layers' ranks.
    pub fn total_rank(&self) -> usize {
        self.layers.iter().map(LayerPlan::rank).sum()
    }

    /// Whether any layer drops experts during training.
    pub fn has_expert_dropout(&self) -> bool {
        self.layers.iter().any(|l| l.p > 0.0)
    }
}

fn check_unit_open(field: impl Into<String>, v: f64) -> Result<(), SpecError> {
    if v.is_finite() && (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(SpecError::out_of_range(field, v, "[0, 1)"))
    }
}

fn check_unit_closed(field: impl Into<String>, v: f64) -> Result<(), SpecError> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(SpecError::out_of_range(field, v, "[0, 1]"))
    }
}

impl AdapterSpec {
    /// Checks every field the chosen kind uses; the error names the field.
    ///
    /// ```
    /// use mlae_core::{AdapterSpec, MaskSpec, MaskStrategy};
    /// assert!(AdapterSpec::default().validate().is_ok());
    /// let zero = AdapterSpec { experts: 0, ..Default::default() };
    /// assert_eq!(zero.validate().unwrap_err().to_string(), "adapter.experts: must be at least 1");
    /// let fixed = AdapterSpec {
    ///     dropout: 0.3,
    ///     mask: MaskSpec { strategy: MaskStrategy::Fixed, ..Default::default() },
    ///     ..Default::default()
    /// };
    /// assert_eq!(fixed.validate().unwrap_err().field(), "adapter.dropout");
    /// ```
    pub fn validate(&self) -> Result<(), SpecError> {
        check_unit_open("adapter.dropout", self.dropout)?;
        if !self.coeff_init.is_finite() || self.coeff_init == 0.0 {
            return Err(SpecError::out_of_range("adapter.coeff_init", self.coeff_init, "finite, non-zero"));
        }
        if let Some(alpha) = self.lora_alpha
            && !(alpha.is_finite() && alpha > 0.0)
        {
            return Err(SpecError::out_of_range("adapter.lora_alpha", alpha, "(0, inf)"));
        }
        if !self.kind.has_adapter() {
            return Ok(());
        }
        if self.targets.is_empty() {
            return Err(SpecError::invalid(
                "adapter.targets",
                "is empty; list at least one of qkv, proj, fc1, fc2",
            ));
        }
        for (i, t) in self.targets.iter().enumerate() {
            if self.targets[..i].contains(t) {
                return Err(SpecError::invalid("adapter.targets", format!("{t} is listed twice")));
            }
        }
        if self.experts == 0 {
            return Err(SpecError::invalid("adapter.experts", "must be at least 1"));
        }
        match self.kind {
            AdapterKind::Mlae => self.validate_mlae(),
            AdapterKind::Dmlora => self.validate_dmlora(),
            _ => Ok(()),
        }
    }

    fn validate_mlae(&self) -> Result<(), SpecError> {
        if self.expert_rank == 0 {
            return Err(SpecError::invalid("adapter.expert_rank", "must be at least 1"));
        }
        let m = &self.mask;
        let strategy = m.strategy;
        let named = m.pattern != LayerPattern::Uniform;
        if let Some(list) = &m.experts_per_layer {
            if !matches!(strategy, MaskStrategy::Fixed | MaskStrategy::Mixed) {
                return Err(SpecError::invalid(
                    "adapter.mask.experts_per_layer",
                    format!("only fixed and mixed masks allocate experts per block (strategy is {strategy})"),
                ));
            }
            if named {
                return Err(SpecError::invalid(
                    "adapter.mask.experts_per_layer",
                    format!("give either this list or pattern = \"{}\", not both", m.pattern),
                ));
            }
            if let Some(i) = list.iter().position(|&e| e == 0) {
                return Err(SpecError::invalid(
                    format!("adapter.mask.experts_per_layer[{i}]"),
                    "must be at least 1 (leave the block out of the adapter instead)",
                ));
            }
        }
        if let Some(list) = &m.p_per_layer {
            if strategy != MaskStrategy::Stochastic {
                return Err(SpecError::invalid(
                    "adapter.mask.p_per_layer",
                    format!(
                        "only stochastic masks take a dropout per block (strategy is {strategy}; mixed uses \
                         adapter.dropout everywhere)"
                    ),
                ));
            }
            if named {
                return Err(SpecError::invalid(
                    "adapter.mask.p_per_layer",
                    format!("give either this list or pattern = \"{}\", not both", m.pattern),
                ));
            }
            for (i, &p) in list.iter().enumerate() {
                check_unit_open(format!("adapter.mask.p_per_layer[{i}]"), p)?;
            }
        }
        match strategy {
            MaskStrategy::None | MaskStrategy::Fixed if self.dropout != 0.0 => {
                return Err(SpecError::invalid(
                    "adapter.dropout",
                    format!(
                        "{} has no effect with adapter.mask.strategy = \"{strategy}\"; use strategy \
                         \"stochastic\" or \"mixed\", or dropout = 0",
                        self.dropout
                    ),
                ));
            }
            MaskStrategy::None if named => {
                return Err(SpecError::invalid(
                    "adapter.mask.pattern",
                    format!("\"{}\" has no effect with strategy = \"none\"", m.pattern),
                ));
            }
            MaskStrategy::Stochastic if m.pattern == LayerPattern::Random => {
                return Err(SpecError::invalid(
                    "adapter.mask.pattern",
                    "\"random\" is an allocation pattern for fixed and mixed masks; stochastic masks \
                     have no random pattern (use p_per_layer for your own per-block dropout)",
                ));
            }
            MaskStrategy::Stochastic if (named || m.p_per_layer.is_some()) && self.dropout != 0.0 => {
                return Err(SpecError::invalid(
                    "adapter.dropout",
                    format!(
                        "{} conflicts with the per-block dropout of {}; set dropout = 0",
                        self.dropout,
                        if named { "adapter.mask.pattern" } else { "adapter.mask.p_per_layer" }
                    ),
                ));
            }
            MaskStrategy::Fixed | MaskStrategy::Mixed if named && self.experts != pattern::PAPER_EXPERTS => {
                return Err(SpecError::invalid(
                    "adapter.experts",
                    format!(
                        "the \"{}\" allocation is defined for {} experts per block on average (the paper's \
                         budget) but experts = {}; set experts = {} or give adapter.mask.experts_per_layer",
                        m.pattern,
                        pattern::PAPER_EXPERTS,
                        self.experts,
                        pattern::PAPER_EXPERTS
                    ),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn validate_dmlora(&self) -> Result<(), SpecError> {
        let d = &self.dmlora;
        if d.branches == 0 {
            return Err(SpecError::invalid("adapter.dmlora.branches", "must be at least 1"));
        }
        check_unit_open("adapter.dmlora.p_start", d.p_start)?;
        check_unit_open("adapter.dmlora.p_end", d.p_end)?;
        check_unit_closed("adapter.dmlora.ramp_start", d.ramp_start)?;
        check_unit_closed("adapter.dmlora.ramp_end", d.ramp_end)?;
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
        if !d.scale_init.is_finite() || d.scale_init == 0.0 {
            return Err(SpecError::out_of_range(
                "adapter.dmlora.scale_init",
                d.scale_init,
                "finite, non-zero",
            ));
        }
        Ok(())
    }

    /// The LoRA scale alpha / r (1 when `lora_alpha` is `None`).
    ///
    /// ```
    /// use mlae_core::AdapterSpec;
    /// assert_eq!(AdapterSpec { lora_alpha: Some(4.0), experts: 8, ..Default::default() }.lora_scale(), 0.5);
    /// assert_eq!(AdapterSpec::default().lora_scale(), 1.0);
    /// ```
    pub fn lora_scale(&self) -> f64 {
        match self.lora_alpha {
            Some(alpha) if self.experts > 0 => alpha / self.experts as f64,
            _ => 1.0,
        }
    }

    /// Validates, then expands patterns for a model with `depth` blocks.
    ///
    /// MLAE semantics per strategy:
    /// - `none`: `experts` experts everywhere, p = 0;
    /// - `stochastic`: `experts` experts everywhere, p from the pattern (uniform: `dropout`) or
    ///   `p_per_layer`;
    /// - `fixed`: experts from the pattern (uniform: `experts`) or `experts_per_layer`, p = 0;
    /// - `mixed`: experts as for fixed, p = `dropout` everywhere.
    ///
    /// The paper's named patterns exist for 12 blocks only; other depths need an explicit list
    /// (the random pattern is defined by its constraints and works at any depth).
    ///
    /// ```
    /// use mlae_core::{AdapterSpec, LayerPattern, MaskSpec, MaskStrategy};
    /// let spec = AdapterSpec {
    ///     dropout: 0.5,
    ///     mask: MaskSpec { strategy: MaskStrategy::Mixed, pattern: LayerPattern::Incremental, ..Default::default() },
    ///     ..Default::default()
    /// };
    /// let plan = spec.resolve(12).unwrap();
    /// let experts: Vec<usize> = plan.layers.iter().map(|l| l.experts).collect();
    /// assert_eq!(experts, [2, 2, 2, 6, 6, 6, 10, 10, 10, 14, 14, 14]);
    /// assert!(plan.layers.iter().all(|l| l.p == 0.5));
    /// let err = spec.resolve(6).unwrap_err();
    /// assert_eq!(err.field(), "adapter.mask.pattern");
    /// ```
    pub fn resolve(&self, depth: usize) -> Result<AdapterPlan, SpecError> {
        self.validate()?;
        if depth == 0 {
            return Err(SpecError::invalid("model.depth", "the model has no blocks"));
        }
        let mut plan = AdapterPlan {
            kind: self.kind,
            depth,
            layers: Vec::new(),
            coeff_init: self.coeff_init,
            lora_scale: 1.0,
            lora_dropout: 0.0,
            mask_strategy: None,
            dmlora: None,
        };
        let (experts, ranks, ps): (Vec<usize>, usize, Vec<f64>) = match self.kind {
            AdapterKind::LinearProbe | AdapterKind::Full => return Ok(plan),
            AdapterKind::Lora | AdapterKind::LoraDropout => {
                plan.lora_scale = self.lora_scale();
                plan.lora_dropout = self.dropout;
                (vec![self.experts; depth], 1, vec![0.0; depth])
            }
            AdapterKind::Dmlora => {
                plan.dmlora = Some(self.dmlora.clone());
                (vec![self.dmlora.branches; depth], self.experts, vec![0.0; depth])
            }
            AdapterKind::Mlae => {
                plan.mask_strategy = Some(self.mask.strategy);
                let (e, p) = self.resolve_mlae(depth)?;
                (e, self.expert_rank, p)
            }
        };
        plan.layers = (0..depth)
            .flat_map(|block| {
                let (e, p) = (experts[block], ps[block]);
                self.targets.iter().map(move |&target| LayerPlan {
                    block,
                    target,
                    experts: e,
                    expert_rank: ranks,
                    p,
                })
            })
            .collect();
        Ok(plan)
    }

    fn resolve_mlae(&self, depth: usize) -> Result<(Vec<usize>, Vec<f64>), SpecError> {
        let m = &self.mask;
        let allocation = || -> Result<Vec<usize>, SpecError> {
            match &m.experts_per_layer {
                Some(list) if list.len() != depth => Err(SpecError::WrongLength {
                    field: "adapter.mask.experts_per_layer".into(),
                    len: list.len(),
                    depth,
                }),
                Some(list) => Ok(list.clone()),
                None => m.pattern.fixed_experts(depth, self.experts, m.seed),
            }
        };
        Ok(match m.strategy {
            MaskStrategy::None => (vec![self.experts; depth], vec![0.0; depth]),
            MaskStrategy::Fixed => (allocation()?, vec![0.0; depth]),
            MaskStrategy::Mixed => (allocation()?, vec![self.dropout; depth]),
            MaskStrategy::Stochastic => {
                let ps = match &m.p_per_layer {
                    Some(list) if list.len() != depth => {
                        return Err(SpecError::WrongLength {
                            field: "adapter.mask.p_per_layer".into(),
                            len: list.len(),
                            depth,
                        });
                    }
                    Some(list) => list.clone(),
                    None => m.pattern.stochastic_dropout(depth, self.dropout)?,
                };
                (vec![self.experts; depth], ps)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlae(strategy: MaskStrategy, pattern: LayerPattern) -> AdapterSpec {
        AdapterSpec { mask: MaskSpec { strategy, pattern, ..Default::default() }, ..Default::default() }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        adapter: AdapterSpec,
    }

    fn parse(s: &str) -> Result<AdapterSpec, String> {
        toml::from_str::<Config>(s).map(|c| c.adapter).map_err(|e| e.to_string())
    }

    #[test]
    fn toml_defaults_and_round_trip() {
        let s = parse("[adapter]\nkind = \"lora\"\n").unwrap();
        assert_eq!(s, AdapterSpec { kind: AdapterKind::Lora, ..AdapterSpec::default() });
        let s = parse(
            "[adapter]\nkind = 'mlae'\ntargets = ['qkv', 'fc1']\nexperts = 4\nexpert_rank = 2\n\
             coeff_init = 0.25\ndropout = 0.7\n[adapter.mask]\nstrategy = 'mixed'\npattern = 'random'\nseed = 5\n",
        )
        .unwrap();
        assert_eq!(s.targets, [TargetLayer::Qkv, TargetLayer::Fc1]);
        assert_eq!((s.experts, s.expert_rank, s.coeff_init, s.dropout), (4, 2, 0.25, 0.7));
        assert_eq!(s.mask.seed, 5);
        let back: AdapterSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        // a resolved config can be written back as TOML (None fields are left out)
        let mut full = s.clone();
        full.mask.experts_per_layer = Some(vec![8; 12]);
        full.lora_alpha = Some(16.0);
        for spec in [s.clone(), full] {
            let text = toml::to_string(&spec).unwrap();
            assert_eq!(toml::from_str::<AdapterSpec>(&text).unwrap(), spec, "{text}");
        }
        let all =
            parse("[adapter]\nkind = 'dmlora'\n[adapter.dmlora]\nbranches = 3\nstage2_lr = 0.01\n").unwrap();
        assert_eq!((all.dmlora.branches, all.dmlora.stage2_lr), (3, Some(0.01)));
    }

    #[test]
    fn every_kind_name_parses_in_toml() {
        for k in AdapterKind::ALL {
            let s = parse(&format!("[adapter]\nkind = '{k}'\n")).unwrap();
            assert_eq!(s.kind, *k);
        }
        for t in TargetLayer::ALL {
            assert_eq!(parse(&format!("[adapter]\ntargets = ['{t}']\n")).unwrap().targets, [*t]);
        }
        for p in LayerPattern::ALL {
            let s = parse(&format!("[adapter.mask]\npattern = '{p}'\n")).unwrap();
            assert_eq!(s.mask.pattern, *p);
        }
        for m in MaskStrategy::ALL {
            assert_eq!(parse(&format!("[adapter.mask]\nstrategy = '{m}'\n")).unwrap().mask.strategy, *m);
        }
    }

    #[test]
    fn unknown_names_and_fields_are_rejected_with_the_key() {
        let e = parse("[adapter.mask]\npattern = 'zigzag'\n").unwrap_err();
        assert!(e.contains("zigzag") && e.contains("pattern") && e.contains("hourglass"), "{e}");
        let e = parse("[adapter]\nkind = 'lora'\nrank = 4\n").unwrap_err();
        assert!(e.contains("rank") && e.contains("unknown field"), "{e}");
        let e = parse("[adapter.dmlora]\nbranch = 4\n").unwrap_err();
        assert!(e.contains("branch") && e.contains("unknown field"), "{e}");
        let e = parse("[adapter]\ntargets = ['qkv', 'mlp']\n").unwrap_err();
        assert!(e.contains("mlp") && e.contains("targets"), "{e}");
        let e = "zigzag".parse::<LayerPattern>().unwrap_err();
        assert_eq!(e.field(), "adapter.mask.pattern");
        assert!(e.to_string().contains("uniform, incremental"), "{e}");
    }

    fn err(spec: &AdapterSpec, depth: usize) -> SpecError {
        spec.resolve(depth).unwrap_err()
    }

    #[test]
    fn invalid_numbers_name_their_field() {
        for p in [1.0, 1.2, -0.1, f64::NAN] {
            let e = err(&AdapterSpec { dropout: p, ..Default::default() }, 12);
            assert_eq!(e.field(), "adapter.dropout", "{e}");
            assert!(e.to_string().contains("outside [0, 1)"), "{e}");
        }
        let e = err(&AdapterSpec { dropout: 1.2, ..Default::default() }, 12);
        assert_eq!(e.to_string(), "adapter.dropout: 1.2 is outside [0, 1)");
        assert_eq!(err(&AdapterSpec { experts: 0, ..Default::default() }, 12).field(), "adapter.experts");
        let lora0 = AdapterSpec { kind: AdapterKind::Lora, experts: 0, ..Default::default() };
        assert_eq!(err(&lora0, 12).field(), "adapter.experts");
        assert_eq!(
            err(&AdapterSpec { expert_rank: 0, ..Default::default() }, 12).field(),
            "adapter.expert_rank"
        );
        assert_eq!(
            err(&AdapterSpec { coeff_init: 0.0, ..Default::default() }, 12).field(),
            "adapter.coeff_init"
        );
        assert_eq!(
            err(&AdapterSpec { lora_alpha: Some(-1.0), ..Default::default() }, 12).field(),
            "adapter.lora_alpha"
        );
        assert_eq!(
            err(&AdapterSpec { targets: vec![], ..Default::default() }, 12).field(),
            "adapter.targets"
        );
        let twice = AdapterSpec { targets: vec![TargetLayer::Qkv, TargetLayer::Qkv], ..Default::default() };
        assert!(err(&twice, 12).to_string().contains("qkv is listed twice"));
        assert_eq!(err(&AdapterSpec::default(), 0).field(), "model.depth");
    }

    #[test]
    fn lists_must_match_depth() {
        let mut s = mlae(MaskStrategy::Fixed, LayerPattern::Uniform);
        s.mask.experts_per_layer = Some(vec![8; 11]);
        let e = err(&s, 12);
        assert_eq!(
            e.to_string(),
            "adapter.mask.experts_per_layer: has 11 entries but the model has 12 blocks"
        );
        s.mask.experts_per_layer = Some(vec![4, 0, 4]);
        assert_eq!(err(&s, 3).field(), "adapter.mask.experts_per_layer[1]");
        let mut s = mlae(MaskStrategy::Stochastic, LayerPattern::Uniform);
        s.mask.p_per_layer = Some(vec![0.1; 13]);
        assert_eq!(err(&s, 12).field(), "adapter.mask.p_per_layer");
        s.mask.p_per_layer = Some(vec![0.1, 1.5]);
        assert_eq!(err(&s, 2).to_string(), "adapter.mask.p_per_layer[1]: 1.5 is outside [0, 1)");
    }

    #[test]
    fn contradictions_are_rejected() {
        // stochastic + random
        let e = err(&mlae(MaskStrategy::Stochastic, LayerPattern::Random), 12);
        assert_eq!(e.field(), "adapter.mask.pattern");
        assert!(e.to_string().contains("random"), "{e}");
        // dropout ignored by none / fixed
        for st in [MaskStrategy::None, MaskStrategy::Fixed] {
            let s = AdapterSpec { dropout: 0.3, ..mlae(st, LayerPattern::Uniform) };
            assert_eq!(err(&s, 12).field(), "adapter.dropout");
        }
        // dropout with a per-block stochastic pattern
        let s = AdapterSpec { dropout: 0.3, ..mlae(MaskStrategy::Stochastic, LayerPattern::Hourglass) };
        assert_eq!(err(&s, 12).field(), "adapter.dropout");
        // pattern with none
        assert_eq!(
            err(&mlae(MaskStrategy::None, LayerPattern::Incremental), 12).field(),
            "adapter.mask.pattern"
        );
        // list with a named pattern, list with the wrong strategy
        let mut s = mlae(MaskStrategy::Fixed, LayerPattern::Incremental);
        s.mask.experts_per_layer = Some(vec![8; 12]);
        assert_eq!(err(&s, 12).field(), "adapter.mask.experts_per_layer");
        let mut s = mlae(MaskStrategy::Stochastic, LayerPattern::Uniform);
        s.mask.experts_per_layer = Some(vec![8; 12]);
        assert_eq!(err(&s, 12).field(), "adapter.mask.experts_per_layer");
        let mut s = mlae(MaskStrategy::Mixed, LayerPattern::Uniform);
        s.mask.p_per_layer = Some(vec![0.5; 12]);
        assert_eq!(err(&s, 12).field(), "adapter.mask.p_per_layer");
        // paper allocation patterns assume 8 experts
        let s = AdapterSpec { experts: 4, ..mlae(MaskStrategy::Fixed, LayerPattern::Protruding) };
        assert_eq!(err(&s, 12).field(), "adapter.experts");
    }

    #[test]
    fn unused_sections_are_not_validated() {
        let mut s =
            AdapterSpec { kind: AdapterKind::Lora, ..mlae(MaskStrategy::Stochastic, LayerPattern::Random) };
        s.dmlora.branches = 0;
        assert!(s.resolve(12).is_ok());
        let lp =
            AdapterSpec { kind: AdapterKind::LinearProbe, targets: vec![], experts: 0, ..Default::default() };
        let plan = lp.resolve(12).unwrap();
        assert!(plan.layers.is_empty());
    }

    #[test]
    fn dmlora_fields_are_checked() {
        let base = AdapterSpec { kind: AdapterKind::Dmlora, ..Default::default() };
        let with = |f: &dyn Fn(&mut DmloraSpec)| {
            let mut s = base.clone();
            f(&mut s.dmlora);
            s.resolve(12).err().map(|e| e.field().to_string())
        };
        assert_eq!(with(&|_| {}), None);
        assert_eq!(with(&|d| d.branches = 0).as_deref(), Some("adapter.dmlora.branches"));
        assert_eq!(with(&|d| d.p_start = 1.0).as_deref(), Some("adapter.dmlora.p_start"));
        assert_eq!(with(&|d| d.p_end = -0.5).as_deref(), Some("adapter.dmlora.p_end"));
        assert_eq!(with(&|d| d.ramp_start = 1.5).as_deref(), Some("adapter.dmlora.ramp_start"));
        assert_eq!(
            with(&|d| {
                d.ramp_start = 0.6;
                d.ramp_end = 0.5
            })
            .as_deref(),
            Some("adapter.dmlora.ramp_end")
        );
        assert_eq!(with(&|d| d.stage2_start = 0.0).as_deref(), Some("adapter.dmlora.stage2_start"));
        assert_eq!(with(&|d| d.stage2_lr = Some(0.0)).as_deref(), Some("adapter.dmlora.stage2_lr"));
        assert_eq!(with(&|d| d.scale_init = f64::INFINITY).as_deref(), Some("adapter.dmlora.scale_init"));
        assert_eq!(with(&|d| d.scale_init = 0.0).as_deref(), Some("adapter.dmlora.scale_init"));
        assert_eq!(with(&|d| d.scale_init = -0.5), None, "a negative scale still trains");
    }

    #[test]
    fn resolve_semantics() {
        // none
        let plan = mlae(MaskStrategy::None, LayerPattern::Uniform).resolve(12).unwrap();
        assert!(plan.layers.iter().all(|l| l.experts == 8 && l.p == 0.0));
        assert_eq!(plan.mask_strategy, Some(MaskStrategy::None));
        // stochastic uniform uses dropout
        let s = AdapterSpec { dropout: 0.7, ..mlae(MaskStrategy::Stochastic, LayerPattern::Uniform) };
        assert!(s.resolve(5).unwrap().layers.iter().all(|l| l.experts == 8 && l.p == 0.7));
        // stochastic pattern
        let plan = mlae(MaskStrategy::Stochastic, LayerPattern::Protruding).resolve(12).unwrap();
        let ps: Vec<f64> = plan.layers.iter().map(|l| l.p).collect();
        assert_eq!(ps, pattern::STOCHASTIC_PROTRUDING);
        assert!(plan.layers.iter().all(|l| l.experts == 8));
        // stochastic explicit list at another depth
        let mut s = mlae(MaskStrategy::Stochastic, LayerPattern::Uniform);
        s.mask.p_per_layer = Some(vec![0.0, 0.5, 0.9]);
        let plan = s.resolve(3).unwrap();
        assert_eq!(plan.layers.iter().map(|l| l.p).collect::<Vec<_>>(), [0.0, 0.5, 0.9]);
        // fixed explicit list, 2 targets, expert rank 2
        let mut s = AdapterSpec {
            targets: vec![TargetLayer::Fc1, TargetLayer::Qkv],
            expert_rank: 2,
            ..mlae(MaskStrategy::Fixed, LayerPattern::Uniform)
        };
        s.mask.experts_per_layer = Some(vec![1, 3]);
        let plan = s.resolve(2).unwrap();
        let got: Vec<_> =
            plan.layers.iter().map(|l| (l.block, l.target, l.experts, l.expert_rank, l.p)).collect();
        assert_eq!(
            got,
            [
                (0, TargetLayer::Fc1, 1, 2, 0.0),
                (0, TargetLayer::Qkv, 1, 2, 0.0),
                (1, TargetLayer::Fc1, 3, 2, 0.0),
                (1, TargetLayer::Qkv, 3, 2, 0.0)
            ]
        );
        assert_eq!(plan.total_rank(), 16);
        assert_eq!(plan.layer(1, TargetLayer::Qkv).unwrap().experts, 3);
        assert!(plan.layer(1, TargetLayer::Proj).is_none());
        // fixed uniform = experts everywhere
        assert!(
            mlae(MaskStrategy::Fixed, LayerPattern::Uniform)
                .resolve(7)
                .unwrap()
                .layers
                .iter()
                .all(|l| l.experts == 8)
        );
        // mixed random: seeded, reproducible, mean 8
        let mut s = AdapterSpec { dropout: 0.5, ..mlae(MaskStrategy::Mixed, LayerPattern::Random) };
        s.mask.seed = 11;
        let a = s.resolve(12).unwrap();
        assert_eq!(a, s.resolve(12).unwrap());
        assert_eq!(a.layers.iter().map(|l| l.experts).sum::<usize>(), 96);
        assert!(a.layers.iter().all(|l| l.p == 0.5 && (1..=14).contains(&l.experts)));
        // dmlora
        let plan =
            AdapterSpec { kind: AdapterKind::Dmlora, experts: 2, ..Default::default() }.resolve(12).unwrap();
        assert!(plan.layers.iter().all(|l| l.experts == 4 && l.expert_rank == 2 && l.p == 0.0));
        assert_eq!(plan.dmlora, Some(DmloraSpec::default()));
        // lora-dropout keeps its dropout in the plan
        let plan = AdapterSpec { kind: AdapterKind::LoraDropout, dropout: 0.1, ..Default::default() }
            .resolve(12)
            .unwrap();
        assert_eq!((plan.lora_dropout, plan.lora_scale), (0.1, 1.0));
        assert!(!plan.has_expert_dropout());
        let plan_json = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<AdapterPlan>(&plan_json).unwrap(), plan);
    }

    #[test]
    fn ramp_shapes() {
        for shape in RampShape::ALL {
            assert_eq!(shape.interpolate(0.1, 0.6, 0.0), 0.1);
            assert!((shape.interpolate(0.1, 0.6, 1.0) - 0.6).abs() < 1e-15);
            assert_eq!(shape.interpolate(0.1, 0.6, 2.0), shape.interpolate(0.1, 0.6, 1.0));
        }
    }
}
