//! What a forward pass tells the layers: [`ForwardCtx`] for the model, [`AdapterCtx`] for one
//! adapted layer. A leaf module, so the model, its blocks and the adapters all import it and
//! none of them imports another to get it.

use mlae_core::MaskSampler;
use tch::{Device, Tensor};

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

    /// What plan layer `layer` sees of this pass, with its row of the pass's step weights.
    pub fn for_layer<'a>(
        &self,
        layer: usize,
        sampler: &'a MaskSampler,
        weights: Option<&'a Tensor>,
    ) -> AdapterCtx<'a> {
        AdapterCtx {
            train: self.train,
            step: self.step,
            total_steps: self.total_steps,
            layer,
            sampler,
            weights,
        }
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
    /// This layer's row of the forward's [`StepWeights`] (what its
    /// [`crate::AdapterLayer::step_weights`] gave, already on the device), when the model
    /// built one; an adapter run on its own (`None`) computes and uploads its own.
    pub weights: Option<&'a Tensor>,
}

/// The per-layer weights that adapters draw on the host for one forward pass (MLAE's expert
/// mask scales, DMLoRA's branch weights), uploaded together: one host-to-device copy per
/// forward instead of one per adapted layer (each of which would stall a CUDA stream).
#[derive(Debug)]
pub struct StepWeights {
    /// A view of the uploaded table per plan layer, `None` for a layer that asked for none.
    rows: Vec<Option<Tensor>>,
}

impl StepWeights {
    /// Uploads `per_layer` (by plan index) to `device` in one copy; `None` when no layer has
    /// any.
    pub fn upload(per_layer: Vec<Option<Vec<f32>>>, device: Device) -> Option<StepWeights> {
        if per_layer.iter().all(Option::is_none) {
            return None;
        }
        let flat: Vec<f32> = per_layer.iter().flatten().flatten().copied().collect();
        let table = crate::transfer::upload_f32(&flat, device);
        let mut offset = 0i64;
        let rows = per_layer
            .iter()
            .map(|w| {
                w.as_ref().map(|w| {
                    let row = table.narrow(0, offset, w.len() as i64);
                    offset += w.len() as i64;
                    row
                })
            })
            .collect();
        Some(StepWeights { rows })
    }

    /// The row of plan layer `layer`, if it has one.
    pub fn get(&self, layer: usize) -> Option<&Tensor> {
        self.rows.get(layer).and_then(Option::as_ref)
    }
}
