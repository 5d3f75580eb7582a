//! The frozen linear layer ([`Linear`], with its oneDNN fast path on the CPU) and [`cast`],
//! the one place a stored tensor meets the compute kind. A leaf module: everything that
//! computes with a frozen weight imports it, it imports nothing of the model.

use tch::{Kind, Tensor};
/// A frozen linear layer `x W^T + b`, `W: (out, in)`, in timm's layout.
pub struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    /// A frozen layer of `weight: (out, in)` and an optional `bias: (out,)`, stored as given
    /// (tools and tests that run an adapter outside a model build one).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Linear {
        Linear { weight, bias }
    }

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

impl Linear {
    /// The same layer as a second handle (views sharing storage).
    pub(crate) fn view(&self) -> Linear {
        Linear { weight: self.weight.shallow_clone(), bias: self.bias.as_ref().map(Tensor::shallow_clone) }
    }

    /// Output rows `first .. first + n` of this layer as a layer of its own (views of the
    /// weight and bias, sharing storage): what a slice adapter sees as its frozen layer.
    pub(crate) fn rows(&self, first: i64, n: i64) -> Linear {
        Linear {
            weight: self.weight.narrow(0, first, n),
            bias: self.bias.as_ref().map(|b| b.narrow(0, first, n)),
        }
    }
}

/// Casts a tensor to `kind` only when needed (a bf16 forward uses the f32 master weights).
pub(crate) fn cast(t: &Tensor, kind: Kind) -> Tensor {
    if t.kind() == kind { t.shallow_clone() } else { t.to_kind(kind) }
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
