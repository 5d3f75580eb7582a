//! The adapted linear layer: a frozen [`Linear`], the adapters the plan puts on it and its
//! merge state (the counterpart of PEFT's `LoraLayer`). It hands every adapter the same three
//! things, whatever the kind: its frozen layer, the input and the frozen output
//! ([`AdapterLayer::forward`]), so it never needs to know which kind it holds.

use crate::adapter::AdapterLayer;
use crate::ctx::{ForwardCtx, StepWeights};
use crate::error::{Result, VitError};
use crate::linear::Linear;
use tch::{Kind, Tensor};

/// An adapter attached to a linear layer, with its place in the plan and, for a q/k/v
/// slice of qkv, the output rows it adapts.
struct Attached {
    index: usize,
    layer: Box<dyn AdapterLayer>,
    /// `(first row, rows)` of the base's output for a slice target; `None`: the whole layer.
    rows: Option<(i64, i64)>,
}

/// A linear layer of a block: the frozen base, and the adapters the plan puts on it (one on
/// the whole layer, or one per q/k/v slice of a fused qkv), with this layer's own merge state.
/// Merged, the forward is the base's alone (base-model speed); unmerged, the adapters'.
pub struct AdaptedLinear {
    pub(crate) base: Linear,
    adapters: Vec<Attached>,
    merged: bool,
}

impl AdaptedLinear {
    /// A layer without adapter.
    pub(crate) fn new(base: Linear) -> Self {
        AdaptedLinear { base, adapters: Vec::new(), merged: false }
    }

    /// The frozen layer.
    pub fn base(&self) -> &Linear {
        &self.base
    }

    /// What every adapter of this layer draws on the host for the forward `ctx`, by plan index
    /// (see [`StepWeights`]).
    pub(crate) fn step_weights(
        &self,
        ctx: &ForwardCtx,
        sampler: &mlae_core::MaskSampler,
    ) -> Vec<(usize, Option<Vec<f32>>)> {
        if self.merged {
            return Vec::new();
        }
        self.adapters
            .iter()
            .map(|a| (a.index, a.layer.step_weights(&ctx.for_layer(a.index, sampler, None))))
            .collect()
    }

    /// The adapter on the whole layer, or else the first slice adapter, if the plan puts one here.
    pub fn adapter(&self) -> Option<&dyn AdapterLayer> {
        self.adapters.first().map(|a| a.layer.as_ref())
    }

    /// The adapter for `target` (the layer itself, or one of its q/k/v slices).
    pub fn adapter_for(&self, target: mlae_core::TargetLayer) -> Option<&dyn AdapterLayer> {
        self.adapters.iter().find(|a| a.layer.site().target == target).map(|a| a.layer.as_ref())
    }

    /// Whether the adapters are folded into the base weight.
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// The frozen layer an adapter sees: the whole layer, or its rows for a q/k/v slice
    /// (views sharing storage).
    fn frozen_for(&self, rows: Option<(i64, i64)>) -> Linear {
        match rows {
            Some((first, n)) => self.base.rows(first, n),
            None => self.base.view(),
        }
    }

    /// Puts `layer` on this linear layer (on its slice, for a q/k/v target) as the plan's
    /// `index`-th adapted layer, and shows it its frozen layer ([`AdapterLayer::attach`]).
    pub(crate) fn attach(&mut self, index: usize, mut layer: Box<dyn AdapterLayer>) {
        debug_assert!(!self.merged, "attach to a merged layer");
        let rows = layer.site().target.qkv_slice().map(|i| {
            let n = self.base.weight.size()[0] / 3;
            (i as i64 * n, n)
        });
        layer.attach(&self.frozen_for(rows));
        self.adapters.push(Attached { index, layer, rows });
    }

    /// Tells the adapters that the frozen weights were replaced (a loaded backbone).
    pub(crate) fn rebase(&mut self) {
        debug_assert!(!self.merged, "rebase of a merged layer");
        for i in 0..self.adapters.len() {
            let frozen = self.frozen_for(self.adapters[i].rows);
            self.adapters[i].layer.attach(&frozen);
        }
    }

    /// Removes the adapters (the model is about to get new ones).
    pub(crate) fn detach(&mut self) {
        debug_assert!(!self.merged, "detach from a merged layer");
        self.adapters.clear();
    }

    /// `x: (batch, tokens, in)` through the base and, unless merged, the adapters. Every
    /// adapter gets its frozen layer, the input and the frozen output of its rows; a slice
    /// adapter's result replaces its rows of the output only (`slice_scatter`, out of place, so
    /// gradients flow), exactly as an adapter on a separate q, k or v layer would.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        kind: Kind,
        ctx: &ForwardCtx,
        sampler: &mlae_core::MaskSampler,
        weights: Option<&StepWeights>,
    ) -> Tensor {
        if self.merged || self.adapters.is_empty() {
            return self.base.forward(x, kind);
        }
        let (b, n) = (x.size()[0], x.size()[1]);
        let x2 = x.flatten(0, 1);
        let mut y = self.base.forward(&x2, kind);
        for a in &self.adapters {
            let actx = ctx.for_layer(a.index, sampler, weights.and_then(|w| w.get(a.index)));
            let frozen = self.frozen_for(a.rows);
            y = match a.rows {
                None => a.layer.forward(&frozen, &x2, y, &actx),
                Some((first, rows)) => {
                    let part = a.layer.forward(&frozen, &x2, y.narrow(1, first, rows), &actx);
                    y.slice_scatter(&part, 1, Some(first), Some(first + rows), 1)
                }
            };
        }
        y.view([b, n, -1])
    }

    /// `f` applied to the rows `rows` of the weight `w` (all of it for `None`), the result put
    /// back in their place: the one step behind merged weights, merge and unmerge.
    fn on_rows(rows: Option<(i64, i64)>, w: Tensor, f: impl FnOnce(&Tensor) -> Tensor) -> Tensor {
        match rows {
            None => f(&w),
            Some((first, n)) => {
                let part = f(&w.narrow(0, first, n));
                w.slice_scatter(&part, 0, Some(first), Some(first + n), 1)
            }
        }
    }

    /// The weight with the adapters folded in (f32, no gradient), computed without changing
    /// the layer; the base weight when merged already or without adapters.
    pub(crate) fn merged_weight(&self) -> Tensor {
        tch::no_grad(|| {
            let w = self.base.weight.to_kind(Kind::Float);
            if self.merged {
                return w;
            }
            self.adapters.iter().fold(w, |w, a| Self::on_rows(a.rows, w, |w| a.layer.merged_weight(w)))
        })
    }

    /// The update the adapter on `target` adds at inference, `dW: (out, in)` of its rows
    /// (f32, no gradient), for the frozen weight as it is now (unmerged).
    pub fn delta(&self, target: mlae_core::TargetLayer) -> Option<Tensor> {
        let a = self.adapters.iter().find(|a| a.layer.site().target == target)?;
        let w = self.frozen_for(a.rows).weight.to_kind(Kind::Float);
        Some(tch::no_grad(|| a.layer.merged_delta(&w)))
    }

    /// Folds the adapters into the base weight (`W += dW`); `Ok(false)` without adapters.
    pub(crate) fn merge(&mut self) -> Result<bool> {
        if self.merged {
            return Err(VitError::Config("the adapter is already merged".into()));
        }
        if self.adapters.is_empty() {
            return Ok(false);
        }
        let w = tch::no_grad(|| self.base.weight.to_kind(Kind::Float));
        let merged = tch::no_grad(|| {
            self.adapters.iter_mut().fold(w, |w, a| Self::on_rows(a.rows, w, |w| a.layer.merge(w)))
        });
        tch::no_grad(|| store(&mut self.base.weight, merged));
        self.merged = true;
        Ok(true)
    }

    /// Undoes [`AdaptedLinear::merge`], in the reverse order.
    pub(crate) fn unmerge(&mut self) -> Result<()> {
        if !self.merged || self.adapters.is_empty() {
            return Err(VitError::Config("the adapter is not merged".into()));
        }
        let w = tch::no_grad(|| self.base.weight.to_kind(Kind::Float));
        let base = tch::no_grad(|| {
            self.adapters.iter_mut().rev().fold(w, |w, a| Self::on_rows(a.rows, w, |w| a.layer.unmerge(w)))
        });
        tch::no_grad(|| store(&mut self.base.weight, base));
        self.merged = false;
        Ok(())
    }
}

/// Writes `value` (f32) into the weight, in the weight's kind.
fn store(w: &mut Tensor, value: Tensor) {
    if w.kind() == Kind::Float {
        w.copy_(&value);
    } else {
        w.copy_(&value.to_kind(w.kind()));
    }
}
