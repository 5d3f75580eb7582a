//! LoRA with dropout on the update: the paper's "LoRA+Dropout" baseline (Fig. 4), on the
//! update's output `dW x` or, as the other reading of "dropout directly on dW", on the
//! matrix `dW` itself.

use super::{AdapterCtx, AdapterLayer, ExpertFactors, Init, LoraLayer, ParamRole, cast};
use crate::error::Result;
use crate::linear::Linear;
use mlae_core::{AdapterKind, LayerSite, LoraPlan, PeftLora, UpdateDropoutOn};
use tch::Tensor;

/// `base(x) + dropout(scale * B A x)` (or `base(x) + x dropout(scale * B A)^T` with the
/// matrix reading): a [`LoraLayer`] without input dropout whose update is dropped; at
/// inference (and in its merge and export) exactly a LoRA.
pub struct LoraDropoutLayer {
    inner: LoraLayer,
    dropout: f64,
    on: UpdateDropoutOn,
}

impl LoraDropoutLayer {
    /// The layer of a `lora-dropout` plan: rank r, scale alpha / r, dropout on the update.
    pub(crate) fn build(plan: &LoraPlan, init: &Init<'_>) -> Self {
        let mut layer = Self::new(init, plan.rank, plan.scale, plan.update_dropout);
        layer.on = plan.update_dropout_on;
        layer
    }

    /// Initialised as [`LoraLayer`]; `dropout` on the update's output.
    pub(crate) fn new(init: &Init<'_>, rank: usize, scale: f64, dropout: f64) -> Self {
        LoraDropoutLayer {
            inner: LoraLayer::new(init, rank, scale, 0.0),
            dropout,
            on: UpdateDropoutOn::Output,
        }
    }
}

impl AdapterLayer for LoraDropoutLayer {
    fn kind(&self) -> AdapterKind {
        AdapterKind::LoraDropout
    }

    fn site(&self) -> LayerSite {
        self.inner.site
    }

    fn forward(&self, frozen: &Linear, x: &Tensor, base: Tensor, ctx: &AdapterCtx<'_>) -> Tensor {
        if !(ctx.train && self.dropout > 0.0) {
            return self.inner.forward(frozen, x, base, ctx);
        }
        let kind = x.kind();
        let l = &self.inner;
        match self.on {
            UpdateDropoutOn::Output => {
                base + l.hidden(x, kind).mm(&cast(&l.b, kind).tr()).dropout(self.dropout, true)
            }
            UpdateDropoutOn::Matrix => {
                // dW = scale B A, (out, in): built each step, a few hundred thousand elements
                let delta = cast(&l.b, kind).mm(&cast(&l.a, kind)) * l.scale;
                base.addmm(x, &delta.dropout(self.dropout, true).tr())
            }
        }
    }

    fn merged_delta(&self, w: &Tensor) -> Tensor {
        self.inner.merged_delta(w)
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
