//! LoRA, and the paper's LoRA+Dropout baseline: one rank-r update `scale * B A` per adapted
//! layer, `scale = alpha / r`. Both kinds read `[adapter.lora]`:
//!
//! - `lora`: PEFT's semantics, `base(x) + scale * B A dropout(x)` (`input_dropout`);
//! - `lora-dropout`: dropout on the update's output, `base(x) + dropout(scale * B A x)`
//!   (`update_dropout`), the "LoRA+Dropout" of the MLAE paper's Fig. 4.
//!
//! Each kind reads its own dropout and ignores the other's, so one task config can carry
//! both (the baselines grid runs both kinds on the same task configs).

use crate::error::SpecError;
use crate::method::{Method, MethodPlan};
use crate::params::{ModelDims, layer_in_out};
use crate::stages::TrainSchedule;
use crate::target::{LayerSite, TargetLayer, check_targets, sites};
use serde::{Deserialize, Serialize};

/// `[adapter.lora]`.
///
/// ```
/// use mlae_core::LoraSpec;
/// let s: LoraSpec = toml::from_str("rank = 4\nalpha = 8.0\ninput_dropout = 0.1").unwrap();
/// assert_eq!((s.rank, s.scale(), s.input_dropout, s.update_dropout), (4, 2.0, 0.1, 0.0));
/// assert!(toml::from_str::<LoraSpec>("dropout = 0.1").is_err()); // unknown field
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSpec {
    /// r, the rank of the update. Default 8.
    pub rank: usize,
    /// LoRA's alpha: the update is scaled by alpha / r. `None` means alpha = r (scale 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Kind lora: dropout on the adapter's input x (PEFT's `lora_dropout`). In [0, 1).
    /// Default 0.
    pub input_dropout: f64,
    /// Kind lora-dropout: dropout on the update's output `scale * B A x`. In [0, 1).
    /// Default 0.
    pub update_dropout: f64,
    /// Kind lora-dropout: what `update_dropout` drops. The paper's "dropout directly on dW"
    /// reads two ways; `output` (the default) drops elements of `dW x`, `matrix` drops
    /// elements of the matrix `dW` itself (one mask per forward pass, shared by the batch).
    pub update_dropout_on: UpdateDropoutOn,
}

/// Where kind lora-dropout drops (`adapter.lora.update_dropout_on`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateDropoutOn {
    /// Elements of the update's output `scale * B A x` (per token).
    #[default]
    Output,
    /// Elements of `dW = scale * B A` (DropConnect on the update; per forward pass).
    Matrix,
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec {
            rank: 8,
            alpha: None,
            input_dropout: 0.0,
            update_dropout: 0.0,
            update_dropout_on: UpdateDropoutOn::Output,
        }
    }
}

impl LoraSpec {
    /// The LoRA scale alpha / r (1 when `alpha` is `None`).
    ///
    /// ```
    /// use mlae_core::LoraSpec;
    /// assert_eq!(LoraSpec { alpha: Some(4.0), rank: 8, ..Default::default() }.scale(), 0.5);
    /// assert_eq!(LoraSpec::default().scale(), 1.0);
    /// ```
    pub fn scale(&self) -> f64 {
        match self.alpha {
            Some(alpha) if self.rank > 0 => alpha / self.rank as f64,
            _ => 1.0,
        }
    }

    fn validate_common(&self, targets: &[TargetLayer]) -> Result<(), SpecError> {
        check_targets(targets)?;
        SpecError::check_positive("adapter.lora.rank", self.rank)?;
        if let Some(alpha) = self.alpha
            && !(alpha.is_finite() && alpha > 0.0)
        {
            return Err(SpecError::out_of_range("adapter.lora.alpha", alpha, "(0, inf)"));
        }
        Ok(())
    }

    fn plan(
        &self,
        targets: &[TargetLayer],
        depth: usize,
        input_dropout: f64,
        update_dropout: f64,
    ) -> LoraPlan {
        LoraPlan {
            rank: self.rank,
            scale: self.scale(),
            input_dropout,
            update_dropout,
            update_dropout_on: self.update_dropout_on,
            layers: sites(targets, depth),
        }
    }
}

/// Kind `lora`.
#[derive(Debug)]
pub struct Lora;

/// Kind `lora-dropout`.
#[derive(Debug)]
pub struct LoraDropout;

impl Method for Lora {
    type Section = LoraSpec;
    type Plan = LoraPlan;
    const ADAPTS_LAYERS: bool = true;
    const KEY_SETTINGS: &'static [&'static str] = &["adapter.lora.rank", "adapter.lora.input_dropout"];

    fn validate(s: &LoraSpec, targets: &[TargetLayer]) -> Result<(), SpecError> {
        s.validate_common(targets)?;
        SpecError::check_unit_open("adapter.lora.input_dropout", s.input_dropout)
    }

    fn label(s: &LoraSpec) -> String {
        format!("lora-r{}", s.rank)
    }

    fn resolve(s: &LoraSpec, targets: &[TargetLayer], depth: usize) -> Result<LoraPlan, SpecError> {
        Ok(s.plan(targets, depth, s.input_dropout, 0.0))
    }
}

impl Method for LoraDropout {
    type Section = LoraSpec;
    type Plan = LoraPlan;
    const ADAPTS_LAYERS: bool = true;
    const KEY_SETTINGS: &'static [&'static str] =
        &["adapter.lora.rank", "adapter.lora.update_dropout", "adapter.lora.update_dropout_on"];

    fn validate(s: &LoraSpec, targets: &[TargetLayer]) -> Result<(), SpecError> {
        s.validate_common(targets)?;
        SpecError::check_unit_open("adapter.lora.update_dropout", s.update_dropout)
    }

    fn label(s: &LoraSpec) -> String {
        let on = if s.update_dropout_on == UpdateDropoutOn::Matrix { "-matrix" } else { "" };
        format!("lora-dropout-r{}-p{}{on}", s.rank, s.update_dropout)
    }

    fn resolve(s: &LoraSpec, targets: &[TargetLayer], depth: usize) -> Result<LoraPlan, SpecError> {
        Ok(s.plan(targets, depth, 0.0, s.update_dropout))
    }
}

/// A resolved LoRA (either kind): the same rank, scale and dropouts on every adapted layer.
/// Exactly one of the dropouts can be non-zero: `input_dropout` for kind lora,
/// `update_dropout` for kind lora-dropout.
///
/// ```
/// use mlae_core::{AdapterKind, AdapterPlan, AdapterSpec, LoraSpec};
/// let lora = LoraSpec { alpha: Some(16.0), input_dropout: 0.1, update_dropout: 0.3, ..Default::default() };
/// let spec = AdapterSpec { kind: AdapterKind::Lora, lora, ..Default::default() };
/// let AdapterPlan::Lora(plan) = spec.resolve(12).unwrap() else { unreachable!() };
/// assert_eq!(plan.layers.len(), 12);
/// assert_eq!((plan.scale, plan.input_dropout, plan.update_dropout), (2.0, 0.1, 0.0)); // alpha / r = 16 / 8
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraPlan {
    /// r.
    pub rank: usize,
    /// alpha / r.
    pub scale: f64,
    /// Dropout on the adapter's input (kind lora).
    pub input_dropout: f64,
    /// Dropout on the update (kind lora-dropout).
    pub update_dropout: f64,
    /// What `update_dropout` drops: the update's output or the matrix dW.
    #[serde(default)]
    pub update_dropout_on: UpdateDropoutOn,
    /// The adapted layers, in plan order.
    pub layers: Vec<LayerSite>,
}

impl TrainSchedule for LoraPlan {}

impl MethodPlan for LoraPlan {
    fn sites(&self) -> Vec<LayerSite> {
        self.layers.clone()
    }

    /// `r (in + out)` per layer (A and B).
    fn adapter_params(&self, dims: &ModelDims) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let (i, o) = layer_in_out(l.target, dims);
                self.rank * (i + o)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_reads_its_own_dropout() {
        let s = LoraSpec { input_dropout: 0.2, update_dropout: 1.5, ..Default::default() };
        // lora does not read update_dropout, so its value is not checked
        assert_eq!(Lora::resolve(&s, &[TargetLayer::Qkv], 2).unwrap().input_dropout, 0.2);
        Lora::validate(&s, &[TargetLayer::Qkv]).unwrap();
        let e = LoraDropout::validate(&s, &[TargetLayer::Qkv]).unwrap_err();
        assert_eq!(e.to_string(), "adapter.lora.update_dropout: 1.5 is outside [0, 1)");
        let s = LoraSpec { input_dropout: 0.2, update_dropout: 0.4, ..Default::default() };
        let p = LoraDropout::resolve(&s, &[TargetLayer::Qkv], 2).unwrap();
        assert_eq!((p.input_dropout, p.update_dropout), (0.0, 0.4));
        assert_eq!(p.update_dropout_on, UpdateDropoutOn::Output, "the default reading");
    }

    #[test]
    fn the_matrix_reading_is_a_key_with_two_values() {
        let s: LoraSpec = toml::from_str("update_dropout = 0.5\nupdate_dropout_on = 'matrix'").unwrap();
        let p = LoraDropout::resolve(&s, &[TargetLayer::Qkv], 1).unwrap();
        assert_eq!(p.update_dropout_on, UpdateDropoutOn::Matrix);
        assert_eq!(LoraDropout::label(&s), "lora-dropout-r8-p0.5-matrix");
        let e = toml::from_str::<LoraSpec>("update_dropout_on = 'weights'").unwrap_err();
        assert!(e.to_string().contains("output") && e.to_string().contains("matrix"), "{e}");
        // a plan written before the key existed still reads
        let old: LoraPlan = serde_json::from_str(
            r#"{"rank":8,"scale":1.0,"input_dropout":0.0,"update_dropout":0.5,"layers":[]}"#,
        )
        .unwrap();
        assert_eq!(old.update_dropout_on, UpdateDropoutOn::Output);
    }

    #[test]
    fn invalid_numbers_name_their_field() {
        let t = [TargetLayer::Qkv];
        let field = |s: LoraSpec| Lora::validate(&s, &t).unwrap_err().field().to_string();
        assert_eq!(field(LoraSpec { rank: 0, ..Default::default() }), "adapter.lora.rank");
        assert_eq!(field(LoraSpec { alpha: Some(-1.0), ..Default::default() }), "adapter.lora.alpha");
        assert_eq!(
            field(LoraSpec { input_dropout: 1.0, ..Default::default() }),
            "adapter.lora.input_dropout"
        );
        assert_eq!(Lora::validate(&LoraSpec::default(), &[]).unwrap_err().field(), "adapter.targets");
    }

    #[test]
    fn counts() {
        let dims = ModelDims::vit_b16(100, 224);
        let p = Lora::resolve(&LoraSpec::default(), &[TargetLayer::Qkv], 12).unwrap();
        assert_eq!(p.adapter_params(&dims), 12 * 8 * 3072);
        let p = Lora::resolve(&LoraSpec { rank: 4, ..Default::default() }, &[TargetLayer::Fc2], 2).unwrap();
        assert_eq!(p.adapter_params(&dims), 2 * 4 * (3072 + 768));
    }
}
