//! Linear probing: the backbone stays frozen and only the classification head trains. No
//! config section, no adapter layers.

use crate::error::SpecError;
use crate::method::{Method, MethodPlan};
use crate::params::ModelDims;
use crate::stages::TrainSchedule;
use crate::target::{LayerSite, TargetLayer};
use serde::{Deserialize, Serialize};

/// The method (kind `linear-probe`).
#[derive(Debug)]
pub struct LinearProbe;

/// Its plan: nothing to build beside the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LinearProbePlan;

impl Method for LinearProbe {
    type Section = ();
    type Plan = LinearProbePlan;
    const ADAPTS_LAYERS: bool = false;

    fn validate(_: &(), _: &[TargetLayer]) -> Result<(), SpecError> {
        Ok(())
    }

    fn label(_: &()) -> String {
        "linear".into()
    }

    fn resolve(_: &(), _: &[TargetLayer], _: usize) -> Result<LinearProbePlan, SpecError> {
        Ok(LinearProbePlan)
    }

    fn examples(_: usize) -> Vec<()> {
        vec![()]
    }
}

impl TrainSchedule for LinearProbePlan {}

impl MethodPlan for LinearProbePlan {
    fn sites(&self) -> Vec<LayerSite> {
        Vec::new()
    }

    fn update_rank(&self, _: LayerSite) -> usize {
        0
    }

    fn adapter_params(&self, _: &ModelDims) -> usize {
        0
    }
}
