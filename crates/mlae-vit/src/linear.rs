//! Linear layers: the frozen base ([`Linear`], with its oneDNN fast path) and the adapted
//! layer that owns a base, its optional adapter and its merge state ([`AdaptedLinear`], the
//! counterpart of PEFT's `LoraLayer`).

use crate::adapter::{AdapterCtx, AdapterLayer, cast};
use crate::error::{Result, VitError};
use tch::{Kind, Tensor};

/// A frozen linear layer `x W^T + b`, `W: (out, in)`, in timm's layout.
pub struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    /// The weight `(out, in)`, sharing storage with the model.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `(out,)`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `x W^T + b` for `x: (..., in)`, computed in `kind` (the weights are cast when they are
    /// stored in another); fp32 on the CPU goes through oneDNN (see [`linear_onednn`]).
    pub fn forward(&self, x: &Tensor, kind: Kind) -> Tensor {
        if crate::runtime::onednn_linear_applies(x, kind) {
            return linear_onednn(x, &self.weight, self.bias.as_ref());
        }
        x.linear(&cast(&self.weight, kind), self.bias.as_ref().map(|b| cast(b, kind)))
    }
}

/// `x W^T + b` for `x: (..., in)` as a 1x1 convolution of the rows of `x` seen as one
/// channels-last image `(1, in, rows, 1)`: libtorch runs that on oneDNN (on this project's
/// CPUs 10-20 % faster than the BLAS behind `linear`, see `runtime::set_onednn_linear`),
/// reading `x` and writing the output in place without any layout copy, forward and backward.
/// The result is the same function with the same autograd (gradients for `x`, and for the
/// weight and bias when they require one).
pub fn linear_onednn(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let mut size = x.size();
    let inn = *size.last().expect("linear input has a feature dimension");
    let out = weight.size()[0];
    let rows = x.numel() as i64 / inn.max(1);
    let image = x.reshape([1, rows, 1, inn]).permute([0, 3, 1, 2]);
    let y = image.conv2d(&weight.view([out, inn, 1, 1]), bias, [1, 1], [0, 0], [1, 1], 1);
    *size.last_mut().expect("non-empty") = out;
    // (1, out, rows, 1) channels-last is (rows, out) row-major: a view, no copy.
    y.permute([0, 2, 3, 1]).reshape(size)
}

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

impl Linear {
    /// Output rows `first .. first + n` of this layer as a layer of its own (views of the
    /// weight and bias, sharing storage): what a slice adapter sees as its frozen layer.
    pub(crate) fn rows(&self, first: i64, n: i64) -> Linear {
        Linear {
            weight: self.weight.narrow(0, first, n),
            bias: self.bias.as_ref().map(|b| b.narrow(0, first, n)),
        }
    }
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

    /// Puts `layer` on this linear layer (on its slice, for a q/k/v target) as the plan's
    /// `index`-th adapted layer, and shows it its frozen layer ([`AdapterLayer::rebase`]).
    pub(crate) fn attach(&mut self, index: usize, mut layer: Box<dyn AdapterLayer>) {
        debug_assert!(!self.merged, "attach to a merged layer");
        let rows = layer.site().target.qkv_slice().map(|i| {
            let n = self.base.weight.size()[0] / 3;
            (i as i64 * n, n)
        });
        match rows {
            Some((first, n)) => layer.rebase(&self.base.rows(first, n)),
            None => layer.rebase(&self.base),
        }
        self.adapters.push(Attached { index, layer, rows });
    }

    /// Tells the adapters that the frozen weights were replaced (a loaded backbone).
    pub(crate) fn rebase(&mut self) {
        debug_assert!(!self.merged, "rebase of a merged layer");
        for a in &mut self.adapters {
            match a.rows {
                Some((first, n)) => a.layer.rebase(&self.base.rows(first, n)),
                None => a.layer.rebase(&self.base),
            }
        }
    }

    /// Removes the adapters (the model is about to get new ones).
    pub(crate) fn detach(&mut self) {
        debug_assert!(!self.merged, "detach from a merged layer");
        self.adapters.clear();
    }

    /// `x: (batch, tokens, in)` through the base and, unless merged, the adapters. A slice
    /// adapter adds its update to its rows of the output only (`slice_scatter`, out of place,
    /// so gradients flow), exactly as an adapter on a separate q, k or v layer would.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        kind: Kind,
        ctx: &crate::model::ForwardCtx,
        sampler: &mlae_core::MaskSampler,
    ) -> Tensor {
        if self.merged || self.adapters.is_empty() {
            return self.base.forward(x, kind);
        }
        let (b, n) = (x.size()[0], x.size()[1]);
        let x2 = x.flatten(0, 1);
        let actx = |a: &Attached| AdapterCtx {
            train: ctx.train,
            step: ctx.step,
            total_steps: ctx.total_steps,
            layer: a.index,
            sampler,
        };
        let mut y = None;
        for a in self.adapters.iter().filter(|a| a.rows.is_none()) {
            y = Some(a.layer.forward_frozen(&x2, &self.base, kind, &actx(a)));
        }
        let mut y = y.unwrap_or_else(|| self.base.forward(&x2, kind));
        for a in &self.adapters {
            let Some((first, rows)) = a.rows else { continue };
            let part = if a.layer.kind() == mlae_core::AdapterKind::Dora {
                // DoRA's update reads its frozen rows (their norms): give it the slice as a layer
                a.layer.forward_frozen(&x2, &self.base.rows(first, rows), kind, &actx(a))
            } else {
                a.layer.forward(&x2, y.narrow(1, first, rows), &actx(a))
            };
            y = y.slice_scatter(&part, 1, Some(first), Some(first + rows), 1);
        }
        y.view([b, n, -1])
    }

    /// The weight with the adapters folded in (f32, no gradient), computed without changing
    /// the layer; the base weight when merged already or without adapters.
    pub(crate) fn merged_weight(&self) -> Tensor {
        tch::no_grad(|| {
            let w = self.base.weight.to_kind(Kind::Float);
            if self.merged {
                return w;
            }
            self.adapters.iter().fold(w, |w, a| match a.rows {
                None => a.layer.merged_weight(&w),
                Some((first, n)) => {
                    let part = a.layer.merged_weight(&w.narrow(0, first, n));
                    w.slice_scatter(&part, 0, Some(first), Some(first + n), 1)
                }
            })
        })
    }

    /// Folds the adapters into the base weight (`W += dW`); `Ok(false)` without adapters.
    pub(crate) fn merge(&mut self) -> Result<bool> {
        if self.merged {
            return Err(VitError::Config("the adapter is already merged".into()));
        }
        if self.adapters.is_empty() {
            return Ok(false);
        }
        let w = &mut self.base.weight;
        tch::no_grad(|| {
            let mut merged = w.to_kind(Kind::Float);
            for a in &mut self.adapters {
                merged = match a.rows {
                    None => a.layer.merge(&merged),
                    Some((first, n)) => {
                        let part = a.layer.merge(&merged.narrow(0, first, n));
                        merged.slice_scatter(&part, 0, Some(first), Some(first + n), 1)
                    }
                };
            }
            store(w, merged)
        });
        self.merged = true;
        Ok(true)
    }

    /// Undoes [`AdaptedLinear::merge`], in the reverse order.
    pub(crate) fn unmerge(&mut self) -> Result<()> {
        if !self.merged || self.adapters.is_empty() {
            return Err(VitError::Config("the adapter is not merged".into()));
        }
        let w = &mut self.base.weight;
        tch::no_grad(|| {
            let mut base = w.to_kind(Kind::Float);
            for a in self.adapters.iter_mut().rev() {
                base = match a.rows {
                    None => a.layer.unmerge(&base),
                    Some((first, n)) => {
                        let part = a.layer.unmerge(&base.narrow(0, first, n));
                        base.slice_scatter(&part, 0, Some(first), Some(first + n), 1)
                    }
                };
            }
            store(w, base)
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn onednn_linear_is_linear_with_the_same_gradients() {
        tch::manual_seed(0);
        let opts = (Kind::Float, Device::Cpu);
        // Rows over the threshold, in a (batch, tokens, in) input as the blocks pass it.
        let x = Tensor::randn([4, 300, 24], opts).set_requires_grad(true);
        let w = (Tensor::randn([40, 24], opts) * 0.1).set_requires_grad(true);
        let b = Tensor::randn([40], opts).set_requires_grad(true);
        let fast = linear_onednn(&x, &w, Some(&b));
        let reference = x.linear(&w, Some(&b));
        assert_eq!(fast.size(), [4, 300, 40]);
        assert!(max_diff(&fast, &reference) < 1e-5);
        let g = Tensor::randn([4, 300, 40], opts);
        let grads =
            |y: &Tensor| Tensor::run_backward(&[(y * &g).sum(Kind::Float)], &[&x, &w, &b], false, false);
        for (a, r) in grads(&fast).iter().zip(grads(&reference).iter()) {
            assert!(max_diff(a, r) < 1e-3 * (1.0 + r.abs().max().double_value(&[])), "{}", max_diff(a, r));
        }
        // A frozen weight: only the input gets a gradient.
        let wf = w.detach();
        let y = linear_onednn(&x, &wf, None);
        let gx = Tensor::run_backward(&[y.sum(Kind::Float)], &[&x], false, false);
        let want = Tensor::ones([4, 300, 40], opts).matmul(&wf);
        assert!(max_diff(&gx[0], &want) < 1e-4);
    }
}
