//! DoRA, weight-decomposed low-rank adaptation (Liu et al., 2024), as PEFT implements it with
//! `use_dora=True`: a LoRA update `s B A` plus a trainable magnitude `m`, one value per output
//! row, so the adapted weight is `W' = m * (W + s B A) / ||W + s B A||` (row norms, detached
//! in the forward as in the DoRA paper's section 4.3). It reads `[adapter.lora]` as kind lora
//! does (rank, alpha, and PEFT's `input_dropout`), so a LoRA config switches to DoRA by
//! `adapter.kind` alone.

use super::lora::{Lora, LoraSpec, low_rank_params};
use crate::error::SpecError;
use crate::method::{Method, MethodPlan};
use crate::params::ModelDims;
use crate::stages::TrainSchedule;
use crate::target::{LayerSite, TargetLayer};
use serde::{Deserialize, Serialize};

/// Kind `dora`.
#[derive(Debug)]
pub struct Dora;

impl Method for Dora {
    type Section = LoraSpec;
    type Plan = DoraPlan;
    const ADAPTS_LAYERS: bool = true;
    const KEY_SETTINGS: &'static [&'static str] = Lora::KEY_SETTINGS;
    const UNREAD_KEYS: &'static [&'static str] = Lora::UNREAD_KEYS;

    /// LoRA's own checks: rank, alpha and `input_dropout` (PEFT's `lora_dropout`).
    fn validate(s: &LoraSpec, targets: &[TargetLayer]) -> Result<(), SpecError> {
        Lora::validate(s, targets)
    }

    fn label(s: &LoraSpec) -> String {
        format!("dora-r{}", s.rank)
    }

    fn resolve(s: &LoraSpec, targets: &[TargetLayer], depth: usize) -> Result<DoraPlan, SpecError> {
        let lora = Lora::resolve(s, targets, depth)?;
        Ok(DoraPlan {
            rank: lora.rank,
            scale: lora.scale,
            input_dropout: lora.input_dropout,
            layers: lora.layers,
        })
    }

    fn examples(depth: usize) -> Vec<LoraSpec> {
        Lora::examples(depth)
    }
}

/// A resolved DoRA: the same rank, scale and input dropout on every adapted layer.
///
/// ```
/// use mlae_core::{AdapterKind, AdapterPlan, AdapterSpec, LoraSpec, ModelDims};
/// let spec = AdapterSpec { kind: AdapterKind::Dora, lora: LoraSpec { alpha: Some(16.0), ..Default::default() }, ..Default::default() };
/// let plan = spec.resolve(12).unwrap();
/// let AdapterPlan::Dora(dora) = &plan else { unreachable!() };
/// assert_eq!((dora.rank, dora.scale, dora.layers.len()), (8, 2.0, 12));
/// // LoRA's r (in + out) per layer, plus one magnitude per output row
/// assert_eq!(plan.count_params(&ModelDims::vit_b16(100, 224)).adapter, 12 * (8 * (768 + 2304) + 2304));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoraPlan {
    /// r.
    pub rank: usize,
    /// alpha / r.
    pub scale: f64,
    /// Dropout on the adapter's input (PEFT's `lora_dropout`).
    pub input_dropout: f64,
    /// The adapted layers, in plan order.
    pub layers: Vec<LayerSite>,
}

impl TrainSchedule for DoraPlan {}

impl MethodPlan for DoraPlan {
    fn sites(&self) -> Vec<LayerSite> {
        self.layers.clone()
    }

    fn update_rank(&self, site: LayerSite) -> usize {
        if self.layers.contains(&site) { self.rank } else { 0 }
    }

    /// LoRA's `r (in + out)` (A and B) plus `out` (the magnitude) per layer.
    fn adapter_params(&self, dims: &ModelDims) -> usize {
        low_rank_params(&self.layers, self.rank, true, dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_lora_section_and_names_its_fields() {
        let t = [TargetLayer::Qkv, TargetLayer::Fc2];
        let s = LoraSpec { rank: 4, input_dropout: 0.1, update_dropout: 0.9, ..Default::default() };
        let p = Dora::resolve(&s, &t, 3).unwrap();
        assert_eq!((p.rank, p.input_dropout, p.layers.len()), (4, 0.1, 6));
        let e = Dora::validate(&LoraSpec { input_dropout: 1.0, ..Default::default() }, &t).unwrap_err();
        assert_eq!(e.field(), "adapter.lora.input_dropout");
        assert_eq!(Dora::label(&s), "dora-r4");
        let dims = ModelDims::vit_b16(10, 224);
        assert_eq!(p.adapter_params(&dims), 3 * (4 * (768 + 2304) + 2304 + 4 * (3072 + 768) + 768));
    }
}
