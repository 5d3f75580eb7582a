//! Full fine-tuning: every backbone weight trains, with the head. No config section, no
//! adapter layers.

use crate::error::SpecError;
use crate::method::{Method, MethodPlan};
use crate::params::ModelDims;
use crate::stages::TrainSchedule;
use crate::target::{LayerSite, TargetLayer};
use serde::{Deserialize, Serialize};

/// The method (kind `full`).
#[derive(Debug)]
pub struct Full;

/// Its plan: the backbone itself trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FullPlan;

impl Method for Full {
    type Section = ();
    type Plan = FullPlan;
    const ADAPTS_LAYERS: bool = false;

    fn validate(_: &(), _: &[TargetLayer]) -> Result<(), SpecError> {
        Ok(())
    }

    fn label(_: &()) -> String {
        "full".into()
    }

    fn resolve(_: &(), _: &[TargetLayer], _: usize) -> Result<FullPlan, SpecError> {
        Ok(FullPlan)
    }

    fn examples(_: usize) -> Vec<()> {
        vec![()]
    }
}

impl TrainSchedule for FullPlan {}

impl MethodPlan for FullPlan {
    fn sites(&self) -> Vec<LayerSite> {
        Vec::new()
    }

    fn update_rank(&self, _: LayerSite) -> usize {
        0
    }

    fn adapter_params(&self, _: &ModelDims) -> usize {
        0
    }

    fn trains_backbone(&self) -> bool {
        true
    }
}
