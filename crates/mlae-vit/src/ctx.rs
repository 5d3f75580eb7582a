//! What a forward pass tells the layers: [`ForwardCtx`] for the model, [`AdapterCtx`] for one
//! adapted layer. A leaf module, so the model, its blocks and the adapters all import it and
//! none of them imports another to get it.

use mlae_core::MaskSampler;

/// What a forward pass needs to know: training or inference, and the step clock that masks,
/// DMLoRA's schedule and nothing else read. Dropout and drop-path draw from libtorch's RNG,
/// which the training loop seeds per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForwardCtx {
    pub train: bool,
    pub step: u64,
    pub total_steps: u64,
}

impl ForwardCtx {
    /// Inference: every expert on and unscaled, no dropout, no drop-path.
    pub fn eval() -> Self {
        ForwardCtx { train: false, step: 0, total_steps: 0 }
    }

    /// Training step `step` of `total_steps`.
    pub fn train(step: u64, total_steps: u64) -> Self {
        ForwardCtx { train: true, step, total_steps }
    }
}

/// What an adapter needs to know about the current forward pass.
#[derive(Debug, Clone, Copy)]
pub struct AdapterCtx<'a> {
    /// Training (masks, dropout on) or inference (all experts on, unscaled).
    pub train: bool,
    /// The training step, the clock of masks and schedules.
    pub step: u64,
    /// Total training steps, for DMLoRA's schedule.
    pub total_steps: u64,
    /// This layer's index in the plan's sites ([`mlae_core::AdapterPlan::sites`], the `layer`
    /// of the mask draws).
    pub layer: usize,
    /// The run's mask sampler.
    pub sampler: &'a MaskSampler,
}
