//! What a fine-tuning method is to mlae-core: the [`Method`] trait (its config section and
//! how that resolves into the method's own plan), the [`Section`] trait (what the registry
//! needs of a section beyond serde) and the [`MethodPlan`] trait (what every plan answers:
//! where its layers go, how large their updates are, how many parameters they hold, its
//! training schedule).
//!
//! The methods themselves are in [`crate::methods`], one module each, tied together by the
//! registry there.

use crate::error::SpecError;
use crate::params::ModelDims;
use crate::stages::TrainSchedule;
use crate::target::{LayerSite, TargetLayer};
use serde::{Serialize, Serializer};

/// A fine-tuning method: its `[adapter.<section>]` table and its resolution into a plan.
pub trait Method {
    /// The config section the method reads (`()` for a method without one). Two methods may
    /// read the same section (lora and lora-dropout read `[adapter.lora]`).
    type Section: Section;
    /// The resolved method for one model.
    type Plan: MethodPlan;
    /// Whether the method puts adapter layers beside the backbone's linear layers (and so
    /// reads `adapter.targets`).
    const ADAPTS_LAYERS: bool;
    /// The keys a reader checks first in a run's config (dotted paths), e.g. in a sweep plan.
    const KEY_SETTINGS: &'static [&'static str] = &[];
    /// Keys of a shared section that this method does not read (another method that reads the
    /// section does), e.g. `update_dropout` for lora. A config of this kind that writes one
    /// is refused, naming the key, and a stored spec leaves them out.
    const UNREAD_KEYS: &'static [&'static str] = &[];

    /// Checks every field the method reads; the error names the field. Fields the method
    /// does not read are not checked: a config cannot set them (it is refused when read),
    /// and a spec built in code may leave anything there.
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

    /// Valid sections for a model of `depth` blocks that between them switch on every feature
    /// of the method (dropout, per-block settings, scales other than 1), setting only keys the
    /// method reads. Conformance tests (mlae-vit's) build the method's layers from these, so a
    /// new method is tested from its registry line alone.
    fn examples(depth: usize) -> Vec<Self::Section>;
}

/// A method's config section, as the registry reads and writes it.
pub trait Section: Clone + Default + PartialEq + std::fmt::Debug + Serialize {
    /// Writes the section without the keys in `unread` (the keys of a shared section that a
    /// method does not read). The default writes every key: a section read whole.
    fn serialize_read<S: Serializer>(&self, unread: &[&str], serializer: S) -> Result<S::Ok, S::Error> {
        let _ = unread;
        self.serialize(serializer)
    }

    /// Sets the keys in `unread` back to their defaults: the section as
    /// [`Section::serialize_read`] writes it and a reader gets it back.
    fn reset(&mut self, unread: &[&str]) {
        let _ = unread;
    }
}

impl Section for () {}

/// What every resolved method answers, whatever it is.
pub trait MethodPlan: TrainSchedule {
    /// The adapted layers in plan order (block by block, then `adapter.targets` order); the
    /// index of a layer here is the `layer` of its mask draws. Empty for methods without
    /// adapter layers.
    fn sites(&self) -> Vec<LayerSite>;

    /// The rank of the update on `site`: the rows of the low-rank pair an adapted layer adds
    /// to every product (MLAE's experts x expert rank, DMLoRA's branches x branch rank,
    /// LoRA's r); 0 for a layer without adapter. What the FLOP count reads.
    fn update_rank(&self, site: LayerSite) -> usize;

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
