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

/// An adapter attached to a linear layer, with its place in the plan.
struct Attached {
    /// The layer's index in the plan: the `layer` of its mask draws.
    index: usize,
    layer: Box<dyn AdapterLayer>,
}

/// A linear layer of a block: the frozen base, and the adapter the plan puts on it, if any,
/// with this layer's own merge state. Merged, the forward is the base's alone (base-model
/// speed); unmerged, the adapter's.
pub struct AdaptedLinear {
    pub(crate) base: Linear,
    adapter: Option<Attached>,
    merged: bool,
}

impl AdaptedLinear {
    /// A layer without adapter.
    pub(crate) fn new(base: Linear) -> Self {
        AdaptedLinear { base, adapter: None, merged: false }
    }

    /// The frozen layer.
    pub fn base(&self) -> &Linear {
        &self.base
    }

    /// The adapter, if the plan puts one here.
    pub fn adapter(&self) -> Option<&dyn AdapterLayer> {
        self.adapter.as_ref().map(|a| a.layer.as_ref())
    }

    /// Whether the adapter is folded into the base weight.
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// Attaches `layer` as plan entry `index`, replacing any adapter; the layer must be unmerged.
    pub(crate) fn attach(&mut self, index: usize, mut layer: Box<dyn AdapterLayer>) {
        debug_assert!(!self.merged, "attach to a merged layer");
        layer.rebase(&self.base);
        self.adapter = Some(Attached { index, layer });
    }

    /// Tells the adapter that the base weights were replaced (see [`AdapterLayer::rebase`]).
    pub(crate) fn rebase(&mut self) {
        if let Some(a) = &mut self.adapter {
            debug_assert!(!self.merged, "rebase of a merged layer");
            a.layer.rebase(&self.base);
        }
    }

    /// Removes the adapter, if any; the layer must be unmerged.
    pub(crate) fn detach(&mut self) {
        debug_assert!(!self.merged, "detach from a merged layer");
        self.adapter = None;
    }

    /// The layer on `x: (batch, tokens, in)`, computing in `kind`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        kind: Kind,
        ctx: &crate::model::ForwardCtx,
        sampler: &mlae_core::MaskSampler,
    ) -> Tensor {
        match &self.adapter {
            Some(a) if !self.merged => {
                let (b, n) = (x.size()[0], x.size()[1]);
                let x2 = x.flatten(0, 1);
                let actx = AdapterCtx {
                    train: ctx.train,
                    step: ctx.step,
                    total_steps: ctx.total_steps,
                    layer: a.index,
                    sampler,
                };
                a.layer.forward_frozen(&x2, &self.base, kind, &actx).view([b, n, -1])
            }
            _ => self.base.forward(x, kind),
        }
    }

    /// The weight with the adapter merged in (f32, no gradient), computed on the fly unless
    /// merged already; for exports.
    pub(crate) fn merged_weight(&self) -> Tensor {
        tch::no_grad(|| {
            let w = self.base.weight.to_kind(Kind::Float);
            match &self.adapter {
                Some(a) if !self.merged => a.layer.merged_weight(&w),
                _ => w,
            }
        })
    }

    /// Folds the adapter into the base weight. Computed in f32; a bf16 weight is rounded once.
    /// Returns whether there was an adapter to merge; merging twice is an error.
    pub(crate) fn merge(&mut self) -> Result<bool> {
        if self.merged {
            return Err(VitError::Config("the adapter is already merged".into()));
        }
        let Some(a) = &mut self.adapter else { return Ok(false) };
        let w = &mut self.base.weight;
        tch::no_grad(|| store(w, a.layer.merge(&w.to_kind(Kind::Float))));
        self.merged = true;
        Ok(true)
    }

    /// Undoes [`AdaptedLinear::merge`]; unmerging an unmerged layer is an error.
    pub(crate) fn unmerge(&mut self) -> Result<()> {
        let (true, Some(a)) = (self.merged, &mut self.adapter) else {
            return Err(VitError::Config("the adapter is not merged".into()));
        };
        let w = &mut self.base.weight;
        tch::no_grad(|| store(w, a.layer.unmerge(&w.to_kind(Kind::Float))));
        self.merged = false;
        Ok(())
    }
}

/// Writes the f32 `value` into the weight `w` in place, in `w`'s kind (a bf16 weight is
/// rounded once), so the tensor keeps its identity.
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
