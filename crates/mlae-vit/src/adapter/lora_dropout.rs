//! LoRA with dropout on the update's output: the paper's "LoRA+Dropout" baseline (Fig. 4).

use super::{AdapterCtx, AdapterLayer, ExpertFactors, Init, LoraLayer, ParamRole, cast};
use crate::error::Result;
use mlae_core::{AdapterKind, LayerSite, LoraPlan, PeftLora};
use tch::Tensor;

/// `base(x) + dropout(scale * B A x)`: a [`LoraLayer`] without input dropout whose update is
/// dropped as a whole output; at inference (and in its merge and export) exactly a LoRA.
pub struct LoraDropoutLayer {
    inner: LoraLayer,
    dropout: f64,
}

impl LoraDropoutLayer {
    /// The layer of a `lora-dropout` plan: rank r, scale alpha / r, dropout on the update.
    pub(crate) fn build(plan: &LoraPlan, init: &Init<'_>) -> Self {
        Self::new(init, plan.rank, plan.scale, plan.update_dropout)
    }

    /// Initialised as [`LoraLayer`]; `dropout` on the update's output.
    pub(crate) fn new(init: &Init<'_>, rank: usize, scale: f64, dropout: f64) -> Self {
        LoraDropoutLayer { inner: LoraLayer::new(init, rank, scale, 0.0), dropout }
    }
}

impl AdapterLayer for LoraDropoutLayer {
    fn kind(&self) -> AdapterKind {
        AdapterKind::LoraDropout
    }

    fn site(&self) -> LayerSite {
        self.inner.site
    }

    fn forward(&self, x: &Tensor, base: Tensor, ctx: &AdapterCtx<'_>) -> Tensor {
        if !(ctx.train && self.dropout > 0.0) {
            return self.inner.forward(x, base, ctx);
        }
        let kind = x.kind();
        let l = &self.inner;
        base + l.hidden(x, kind).mm(&cast(&l.b, kind).tr()).dropout(self.dropout, true)
    }

    fn merged_delta(&self) -> Tensor {
        self.inner.merged_delta()
    }

    fn params(&self) -> Vec<(&'static str, &Tensor, ParamRole)> {
        self.inner.params()
    }

    fn factors(&self) -> ExpertFactors {
        self.inner.factors()
    }

    fn to_peft(&self) -> Result<PeftLora> {
        self.inner.to_peft()
    }
}
