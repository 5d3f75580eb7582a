//! One pre-norm transformer block (timm's `Block`), with its own forward, and the hook through
//! which analysis tools observe the input of every linear layer.

use crate::adapted::AdaptedLinear;
use crate::config::VitConfig;
use crate::ctx::{ForwardCtx, StepWeights};
use crate::linear::cast;
use mlae_core::{LayerSite, MaskSampler, TargetLayer};
use std::ops::ControlFlow;
use tch::{Kind, Tensor};

/// Called with the input `(batch, tokens, in)` of every linear layer, in forward order;
/// `ControlFlow::Break(())` stops the forward there (see [`crate::AdaptedVit::forward_with`]).
pub type LayerHook<'a> = dyn FnMut(LayerSite, &Tensor) -> ControlFlow<()> + 'a;

/// Which tokens a block computes its output for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    /// Every token (every block but the last, and observed forwards).
    All,
    /// Only the class token, the only one the head reads after the last block.
    ClassToken,
}

/// What every block of one forward pass shares.
pub(crate) struct Pass<'a> {
    pub cfg: &'a VitConfig,
    pub ctx: &'a ForwardCtx,
    /// The kind the pass computes in.
    pub kind: Kind,
    pub sampler: &'a MaskSampler,
    /// The forward's host-drawn adapter weights, uploaded once.
    pub weights: Option<&'a StepWeights>,
    /// Attention written out instead of the fused kernel ([`attention`]).
    pub explicit_attention: bool,
}

pub(crate) struct Norm {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Norm {
    /// LayerNorm in fp32 whatever the compute kind, as autocast runs it: the residual stream
    /// it reads is fp32, and so is its output until a matrix product casts it.
    pub(crate) fn forward(&self, x: &Tensor, eps: f64) -> Tensor {
        let d = self.weight.size()[0];
        let f = Kind::Float;
        cast(x, f).layer_norm([d], Some(cast(&self.weight, f)), Some(cast(&self.bias, f)), eps, true)
    }
}

pub(crate) struct Block {
    /// The block's index in the model, from 0.
    pub index: usize,
    pub norm1: Norm,
    pub qkv: AdaptedLinear,
    pub proj: AdaptedLinear,
    pub ls1: Option<Tensor>,
    pub norm2: Norm,
    pub fc1: AdaptedLinear,
    pub fc2: AdaptedLinear,
    pub ls2: Option<Tensor>,
}

/// Lists a block's tensors with their timm names (after `blocks.N.`), by `&` or `&mut`.
macro_rules! block_tensors {
    ($b:expr, $($r:tt)+) => {{
        let b = $b;
        let mut v = Vec::with_capacity(14);
        v.push(("norm1.weight", $($r)+ b.norm1.weight));
        v.push(("norm1.bias", $($r)+ b.norm1.bias));
        v.push(("attn.qkv.weight", $($r)+ b.qkv.base.weight));
        if let Some(t) = $($r)+ b.qkv.base.bias { v.push(("attn.qkv.bias", t)); }
        v.push(("attn.proj.weight", $($r)+ b.proj.base.weight));
        if let Some(t) = $($r)+ b.proj.base.bias { v.push(("attn.proj.bias", t)); }
        if let Some(t) = $($r)+ b.ls1 { v.push(("ls1.gamma", t)); }
        v.push(("norm2.weight", $($r)+ b.norm2.weight));
        v.push(("norm2.bias", $($r)+ b.norm2.bias));
        v.push(("mlp.fc1.weight", $($r)+ b.fc1.base.weight));
        if let Some(t) = $($r)+ b.fc1.base.bias { v.push(("mlp.fc1.bias", t)); }
        v.push(("mlp.fc2.weight", $($r)+ b.fc2.base.weight));
        if let Some(t) = $($r)+ b.fc2.base.bias { v.push(("mlp.fc2.bias", t)); }
        if let Some(t) = $($r)+ b.ls2 { v.push(("ls2.gamma", t)); }
        v
    }};
}
pub(crate) use block_tensors;

impl Block {
    /// The linear layer holding `target` (the fused qkv for a q/k/v slice).
    pub(crate) fn linear(&self, target: TargetLayer) -> &AdaptedLinear {
        match target.fused() {
            TargetLayer::Qkv => &self.qkv,
            TargetLayer::Proj => &self.proj,
            TargetLayer::Fc1 => &self.fc1,
            TargetLayer::Fc2 => &self.fc2,
            TargetLayer::Q | TargetLayer::K | TargetLayer::V => unreachable!("fused() maps slices to qkv"),
        }
    }

    pub(crate) fn linear_mut(&mut self, target: TargetLayer) -> &mut AdaptedLinear {
        match target.fused() {
            TargetLayer::Qkv => &mut self.qkv,
            TargetLayer::Proj => &mut self.proj,
            TargetLayer::Fc1 => &mut self.fc1,
            TargetLayer::Fc2 => &mut self.fc2,
            TargetLayer::Q | TargetLayer::K | TargetLayer::V => unreachable!("fused() maps slices to qkv"),
        }
    }

    /// Shows `x` to the hook as the input of `target`, then runs that layer on it.
    fn apply(
        &self,
        target: TargetLayer,
        x: &Tensor,
        pass: &Pass<'_>,
        hook: &mut LayerHook<'_>,
    ) -> ControlFlow<(), Tensor> {
        hook(LayerSite { block: self.index, target }, x)?;
        // The matrix product is where autocast casts to the compute kind.
        let x = cast(x, pass.kind);
        ControlFlow::Continue(self.linear(target).forward(
            &x,
            pass.kind,
            pass.ctx,
            pass.sampler,
            pass.weights,
        ))
    }

    /// The block on tokens `x: (batch, tokens, dim)`. With [`Rows::ClassToken`] it returns
    /// `(batch, 1, dim)`: the class token's output, exactly as in the full block (attention
    /// still reads every token's keys and values). In bf16 it does what autocast does: the
    /// linear layers and attention compute in bf16, the norms, the layer scales and the
    /// residual adds in fp32, so the residual stream `x` stays fp32.
    pub(crate) fn forward(
        &self,
        x: Tensor,
        pass: &Pass<'_>,
        rows: Rows,
        hook: &mut LayerHook<'_>,
    ) -> ControlFlow<(), Tensor> {
        let (eps, train) = (pass.cfg.eps, pass.ctx.train);
        let rate = pass.cfg.drop_path_at(self.index);
        let (b, n, d) = x.size3().expect("tokens are (batch, tokens, dim)");
        let heads = pass.cfg.heads;

        let y = self.norm1.forward(&x, eps);
        let qkv = self.apply(TargetLayer::Qkv, &y, pass, hook)?;
        let qkv = qkv.view([b, n, 3, heads, d / heads]).permute([2, 0, 3, 1, 4]);
        // `unbind`, not three `select`s: its backward stacks the three gradients into one
        // tensor, where each select's backward would fill a zero tensor of qkv's full size.
        let qkv = qkv.unbind(0);
        let (k, v) = (&qkv[1], &qkv[2]);
        let (q, x, n) = match rows {
            Rows::All => (qkv[0].shallow_clone(), x, n),
            Rows::ClassToken => (qkv[0].narrow(2, 0, 1), x.narrow(1, 0, 1), 1),
        };
        let o = attention(&q, k, v, pass.explicit_attention);
        let o = o.transpose(1, 2).reshape([b, n, d]);
        let mut o = self.apply(TargetLayer::Proj, &o, pass, hook)?;
        if let Some(g) = &self.ls1 {
            o = o.g_mul(&cast(g, Kind::Float));
        }
        let x = x + drop_path(cast(&o, Kind::Float), rate, train);

        let y = self.norm2.forward(&x, eps);
        let hdn = self.apply(TargetLayer::Fc1, &y, pass, hook)?.gelu("none");
        let mut o = self.apply(TargetLayer::Fc2, &hdn, pass, hook)?;
        if let Some(g) = &self.ls2 {
            o = o.g_mul(&cast(g, Kind::Float));
        }
        ControlFlow::Continue(x + drop_path(cast(&o, Kind::Float), rate, train))
    }
}

/// Scaled dot-product attention of `(batch, heads, tokens, head_dim)` queries, keys and values:
/// libtorch's fused kernel, or with `explicit` written out as timm's non-fused path does
/// (scaled queries, matmul, softmax, matmul; see [`crate::AdaptedVit::set_explicit_attention`]).
/// The softmax runs in f32 whatever the compute kind, as autocast runs timm's.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, explicit: bool) -> Tensor {
    if !explicit {
        return Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, false, None, false);
    }
    let head_dim = q.size()[3] as f64;
    let scores = (q * head_dim.powf(-0.5)).matmul(&k.transpose(-2, -1));
    scores.softmax(-1, Kind::Float).to_kind(q.kind()).matmul(v)
}

/// Per-sample stochastic depth (timm's `drop_path`, scaled by 1/keep).
fn drop_path(x: Tensor, rate: f64, train: bool) -> Tensor {
    if !train || rate == 0.0 {
        return x;
    }
    let keep = 1.0 - rate;
    let mut mask = Tensor::empty([x.size()[0], 1, 1], (x.kind(), x.device()));
    let mask = mask.bernoulli_float_(keep) / keep;
    x * mask
}
