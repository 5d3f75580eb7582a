//! What a fine-tuning method is to mlae-core: the [`Method`] trait (its config section and
//! how that resolves into the method's own plan) and the [`MethodPlan`] trait (what every
//! plan answers: where its layers go, how many parameters they hold, its training schedule).
//!
//! The methods themselves are in [`crate::methods`], one module each, tied together by the
//! registry there.

use crate::error::SpecError;
use crate::params::ModelDims;
use crate::stages::TrainSchedule;
use crate::target::{LayerSite, TargetLayer};

/// A fine-tuning method: its `[adapter.<section>]` table and its resolution into a plan.
pub trait Method {
    /// The config section the method reads (`()` for a method without one). Two methods may
    /// read the same section (lora and lora-dropout read `[adapter.lora]`).
    type Section;
    /// The resolved method for one model.
    type Plan: MethodPlan;
    /// Whether the method puts adapter layers beside the backbone's linear layers (and so
    /// reads `adapter.targets`).
    const ADAPTS_LAYERS: bool;
    /// The keys a reader checks first in a run's config (dotted paths), e.g. in a sweep plan.
    const KEY_SETTINGS: &'static [&'static str] = &[];

    /// Checks every field the method reads; the error names the field. Fields the method
    /// does not read are not checked, so one config can switch `adapter.kind` without
    /// editing the rest.
    fn validate(section: &Self::Section, targets: &[TargetLayer]) -> Result<(), SpecError>;

    /// A short label of the method and its main settings for run names, e.g.
    /// `mlae-8x1-p0.5-init1` (run directories are named by it: keep it stable).
    fn label(section: &Self::Section) -> String;

    /// Resolves a validated section for a model of `depth >= 1` blocks (errors only for what
    /// depends on the depth, e.g. per-block lists).
    fn resolve(
        section: &Self::Section,
        targets: &[TargetLayer],
        depth: usize,
    ) -> Result<Self::Plan, SpecError>;
}

/// What every resolved method answers, whatever it is.
pub trait MethodPlan: TrainSchedule {
    /// The adapted layers in plan order (block by block, then `adapter.targets` order); the
    /// index of a layer here is the `layer` of its mask draws. Empty for methods without
    /// adapter layers.
    fn sites(&self) -> Vec<LayerSite>;

    /// Parameters of the adapter layers on a model of size `dims`.
    fn adapter_params(&self, dims: &ModelDims) -> usize;

    /// Of those, the ones that never train (frozen MLAE coefficients): not trainable.
    fn frozen_adapter_params(&self, dims: &ModelDims) -> usize {
        let _ = dims;
        0
    }

    /// Whether the backbone's own weights train (full fine-tuning).
    fn trains_backbone(&self) -> bool {
        false
    }
}
