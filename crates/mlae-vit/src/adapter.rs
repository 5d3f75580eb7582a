//! Adapter layers: the trainable low-rank update that sits beside a frozen linear layer.
//!
//! One type per adapter kind, all behind [`AdapterLayer`], so the model treats them alike:
//! it computes the frozen layer's output `base = x W^T + b` and hands it to the adapter, which
//! returns `base + update(x)`. Each update is ONE rank-r product (`x A^T`, a per-row scale,
//! then `@ B` fused into the base output with `addmm`), never r separate products.
//!
//! Layouts: LoRA keeps PEFT's (`A: (r, in)`, `B: (out, r)`) so its export is a copy; MLAE and
//! DMLoRA keep the official MLAE layer's (`A: (n k, in)`, `B: (n k, out)`, expert i in rows
//! `i k .. (i+1) k`), the layout of mlae-core's math.

use crate::error::{Result, VitError};
use crate::init;
use mlae_core::{AdapterKind, DmloraSpec, LayerPlan, MaskSampler, PeftLora};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// What a trainable tensor is, so the training loop can treat groups differently (DMLoRA's
/// stage 2 freezes `Adapter` tensors and keeps training `BranchScale` and `Head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamRole {
    /// The classification head.
    Head,
    /// Low-rank factors A and B.
    Adapter,
    /// MLAE's per-expert coefficients lambda.
    Coefficient,
    /// DMLoRA's per-layer scale s_l.
    BranchScale,
    /// A backbone weight (trainable only in `full` fine-tuning).
    Backbone,
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
    /// This layer's index in [`mlae_core::AdapterPlan::layers`] (the `layer` of the mask draws).
    pub layer: usize,
    /// The run's mask sampler.
    pub sampler: &'a MaskSampler,
}

/// An adapter as experts in MLAE's layout, whatever its kind: the update at inference is
/// `dW = b^T diag(coefficients, each repeated expert_rank times) a`. For LoRA the experts are
/// the r rank-1 outer products with coefficient alpha / r; for DMLoRA the branches with
/// coefficient s_l / K. Analysis tools (expert similarity) read adapters through this.
#[derive(Debug)]
pub struct ExpertFactors {
    /// `(n k, in)`.
    pub a: Tensor,
    /// `(n k, out)`.
    pub b: Tensor,
    /// `(n,)`.
    pub coefficients: Tensor,
    /// k.
    pub expert_rank: usize,
}

/// The interface every adapter kind implements.
pub trait AdapterLayer: Send {
    /// The adapter kind.
    fn kind(&self) -> AdapterKind;
    /// The layer's plan (block, target, experts, rank, dropout).
    fn layer_plan(&self) -> &LayerPlan;
    /// `base + update(x)` for `x: (m, in)` and the frozen layer's output `base: (m, out)`,
    /// computed in the kind of `x` (trainable f32 tensors are cast, so gradients reach them).
    fn forward(&self, x: &Tensor, base: Tensor, ctx: &AdapterCtx<'_>) -> Tensor;
    /// The update at inference as a weight, `dW: (out, in)`, f32, without gradient.
    fn merged_delta(&self) -> Tensor;
    /// The trainable tensors: name suffix (e.g. `mlae_A`), tensor, role.
    fn params(&self) -> Vec<(&'static str, &Tensor, ParamRole)>;
    /// The adapter in MLAE's expert layout (copies, without gradient).
    fn factors(&self) -> ExpertFactors;
    /// The adapter as an exact PEFT LoRA (coefficients folded into B by mlae-core).
    fn to_peft(&self) -> Result<PeftLora>;
}

/// Casts a tensor to `kind` only when needed (a bf16 forward uses the f32 master weights).
pub(crate) fn cast(t: &Tensor, kind: Kind) -> Tensor {
    if t.kind() == kind { t.shallow_clone() } else { t.to_kind(kind) }
}

/// A trainable leaf tensor.
fn param(t: Tensor) -> Tensor {
    t.set_requires_grad(true)
}

/// PyTorch's `kaiming_uniform_(a = sqrt(5))` for a `(rows, fan_in)` weight: U(+-1/sqrt(fan_in)).
fn kaiming_a(seed: u64, name: &str, rows: i64, fan_in: i64, device: Device) -> Tensor {
    let bound = 1.0 / (fan_in as f64).sqrt();
    init::uniform(seed, name, &[rows, fan_in], -bound, bound, device)
}

/// Per-row weights `c_i` repeated `k` times (`repeat_interleave`), skipped for k = 1.
fn repeat_rows(c: Tensor, k: usize) -> Tensor {
    if k == 1 { c } else { c.repeat_interleave_self_int(k as i64, 0, None) }
}

/// `B^T diag(c) A` for MLAE's layout: `a (rows, in)`, `b (rows, out)`, `c (rows,)`.
fn stacked_delta(a: &Tensor, b: &Tensor, c: &Tensor) -> Tensor {
    tch::no_grad(|| (b.to_kind(Kind::Float) * c.unsqueeze(1)).tr().mm(&a.to_kind(Kind::Float)))
}

/// A tensor as an ndarray matrix (copied to the CPU).
pub(crate) fn to_array2(t: &Tensor) -> Result<ndarray::Array2<f32>> {
    let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let (r, c) = t.size2()?;
    let v = Vec::<f32>::try_from(t.view(-1))?;
    ndarray::Array2::from_shape_vec((r as usize, c as usize), v)
        .map_err(|e| VitError::Config(format!("internal shape error: {e}")))
}

/// A tensor as an ndarray vector (copied to the CPU).
pub(crate) fn to_array1(t: &Tensor) -> Result<ndarray::Array1<f32>> {
    let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    Ok(ndarray::Array1::from_vec(Vec::<f32>::try_from(t.view(-1))?))
}

/// Shared construction arguments.
pub(crate) struct Init<'a> {
    pub plan: &'a LayerPlan,
    pub in_dim: i64,
    pub out_dim: i64,
    pub seed: u64,
    /// Prefix of the tensor names, `blocks.N.attn.qkv`.
    pub name: &'a str,
    pub device: Device,
}

/// Plain LoRA with PEFT's semantics: `base(x) + scale * B A dropout(x)`.
pub struct LoraLayer {
    plan: LayerPlan,
    a: Tensor,
    b: Tensor,
    scale: f64,
    dropout: f64,
}

impl LoraLayer {
    /// A: Kaiming-uniform(a = sqrt 5), B: zero, as PEFT initialises them.
    pub(crate) fn new(init: &Init<'_>, scale: f64, dropout: f64) -> Self {
        let r = init.plan.rank() as i64;
        LoraLayer {
            plan: init.plan.clone(),
            a: param(kaiming_a(init.seed, &format!("{}.lora_A", init.name), r, init.in_dim, init.device)),
            b: param(Tensor::zeros([init.out_dim, r], (Kind::Float, init.device))),
            scale,
            dropout,
        }
    }
}

impl AdapterLayer for LoraLayer {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Lora
    }

    fn layer_plan(&self) -> &LayerPlan {
        &self.plan
    }

    fn forward(&self, x: &Tensor, base: Tensor, ctx: &AdapterCtx<'_>) -> Tensor {
        let kind = x.kind();
        let x =
            if ctx.train && self.dropout > 0.0 { x.dropout(self.dropout, true) } else { x.shallow_clone() };
        let mut h = x.mm(&cast(&self.a, kind).tr());
        if self.scale != 1.0 {
            h = h.g_mul_scalar(self.scale);
        }
        base.addmm(&h, &cast(&self.b, kind).tr())
    }

    fn merged_delta(&self) -> Tensor {
        tch::no_grad(|| self.b.to_kind(Kind::Float).mm(&self.a.to_kind(Kind::Float)) * self.scale)
    }

    fn params(&self) -> Vec<(&'static str, &Tensor, ParamRole)> {
        vec![("lora_A", &self.a, ParamRole::Adapter), ("lora_B", &self.b, ParamRole::Adapter)]
    }

    fn factors(&self) -> ExpertFactors {
        let r = self.plan.rank() as i64;
        ExpertFactors {
            a: self.a.detach().copy(),
            b: self.b.detach().tr().contiguous(),
            coefficients: Tensor::full([r], self.scale, (Kind::Float, self.a.device())),
            expert_rank: 1,
        }
    }

    fn to_peft(&self) -> Result<PeftLora> {
        let rank = self.plan.rank();
        Ok(PeftLora {
            lora_a: to_array2(&self.a)?,
            lora_b: to_array2(&self.b)?,
            rank,
            alpha: self.scale * rank as f64,
        })
    }
}

/// LoRA with dropout on the update's output, `base(x) + dropout(scale * B A x)`: the paper's
/// "LoRA+Dropout" baseline (Fig. 4).
pub struct LoraDropoutLayer {
    inner: LoraLayer,
    dropout: f64,
}

impl LoraDropoutLayer {
    /// Initialised as [`LoraLayer`].
    pub(crate) fn new(init: &Init<'_>, scale: f64, dropout: f64) -> Self {
        LoraDropoutLayer { inner: LoraLayer::new(init, scale, 0.0), dropout }
    }
}

impl AdapterLayer for LoraDropoutLayer {
    fn kind(&self) -> AdapterKind {
        AdapterKind::LoraDropout
    }

    fn layer_plan(&self) -> &LayerPlan {
        &self.inner.plan
    }

    fn forward(&self, x: &Tensor, base: Tensor, ctx: &AdapterCtx<'_>) -> Tensor {
        if !(ctx.train && self.dropout > 0.0) {
            return self.inner.forward(x, base, ctx);
        }
        let kind = x.kind();
        let l = &self.inner;
        let mut h = x.mm(&cast(&l.a, kind).tr());
        if l.scale != 1.0 {
            h = h.g_mul_scalar(l.scale);
        }
        base + h.mm(&cast(&l.b, kind).tr()).dropout(self.dropout, true)
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

/// Masked LoRA experts (the paper's method, the official layer's semantics):
/// `base(x) + ((x A^T) * repeat_k(lambda * s)) B`, with `s` the expert mask scales of
/// [`MaskSampler`] for (seed, step, layer) during training and all ones at inference.
pub struct MlaeLayer {
    plan: LayerPlan,
    a: Tensor,
    b: Tensor,
    lambda: Tensor,
}

impl MlaeLayer {
    /// A: Kaiming-uniform(a = sqrt 5) per row (every expert its own initial state), B: zero,
    /// lambda: `coeff_init`.
    pub(crate) fn new(init: &Init<'_>, coeff_init: f64) -> Self {
        let (n, r) = (init.plan.experts as i64, init.plan.rank() as i64);
        MlaeLayer {
            plan: init.plan.clone(),
            a: param(kaiming_a(init.seed, &format!("{}.mlae_A", init.name), r, init.in_dim, init.device)),
            b: param(Tensor::zeros([r, init.out_dim], (Kind::Float, init.device))),
            lambda: param(init::full(&[n], coeff_init, init.device)),
        }
    }

    /// A layer from given tensors, `a: (n k, in)`, `b: (n k, out)`, `lambda: (n,)` with n and k
    /// from `plan` (copied, f32, trainable). For tests and tools that need an MLAE layer
    /// outside a model.
    pub fn from_tensors(plan: &LayerPlan, a: &Tensor, b: &Tensor, lambda: &Tensor) -> Result<Self> {
        let (n, r) = (plan.experts as i64, plan.rank() as i64);
        let ok = a.dim() == 2 && b.dim() == 2 && a.size()[0] == r && b.size()[0] == r && lambda.size() == [n];
        if !ok {
            return Err(VitError::Config(format!(
                "MLAE layer of {n} experts of rank {}: A {:?}, B {:?}, lambda {:?} do not fit (n k, in), \
                 (n k, out), (n,)",
                plan.expert_rank,
                a.size(),
                b.size(),
                lambda.size()
            )));
        }
        let p = |t: &Tensor| param(t.detach().to_kind(Kind::Float).copy());
        Ok(MlaeLayer { plan: plan.clone(), a: p(a), b: p(b), lambda: p(lambda) })
    }

    /// The forward with explicit per-expert mask scales (`None`: all on, unscaled). The model
    /// passes [`MaskSampler::layer_scales`]; tests pass their own.
    pub fn forward_with_scales(&self, x: &Tensor, base: Tensor, scales: Option<&[f32]>) -> Tensor {
        let kind = x.kind();
        let coeff = match scales {
            Some(s) => {
                assert_eq!(s.len(), self.plan.experts, "one mask scale per expert");
                &self.lambda * Tensor::from_slice(s).to_device(self.lambda.device())
            }
            None => self.lambda.shallow_clone(),
        };
        let coeff = repeat_rows(coeff, self.plan.expert_rank);
        let h = x.mm(&cast(&self.a, kind).tr()) * cast(&coeff, kind);
        base.addmm(&h, &cast(&self.b, kind))
    }
}

impl AdapterLayer for MlaeLayer {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Mlae
    }

    fn layer_plan(&self) -> &LayerPlan {
        &self.plan
    }

    fn forward(&self, x: &Tensor, base: Tensor, ctx: &AdapterCtx<'_>) -> Tensor {
        if ctx.train && self.plan.p > 0.0 {
            let s = ctx.sampler.layer_scales(ctx.step, ctx.layer, self.plan.experts, self.plan.p);
            self.forward_with_scales(x, base, Some(&s))
        } else {
            self.forward_with_scales(x, base, None)
        }
    }

    fn merged_delta(&self) -> Tensor {
        let c = tch::no_grad(|| repeat_rows(self.lambda.to_kind(Kind::Float), self.plan.expert_rank));
        stacked_delta(&self.a, &self.b, &c)
    }

    fn params(&self) -> Vec<(&'static str, &Tensor, ParamRole)> {
        vec![
            ("mlae_A", &self.a, ParamRole::Adapter),
            ("mlae_B", &self.b, ParamRole::Adapter),
            ("mlae_lambda", &self.lambda, ParamRole::Coefficient),
        ]
    }

    fn factors(&self) -> ExpertFactors {
        ExpertFactors {
            a: self.a.detach().copy(),
            b: self.b.detach().copy(),
            coefficients: self.lambda.detach().copy(),
            expert_rank: self.plan.expert_rank,
        }
    }

    fn to_peft(&self) -> Result<PeftLora> {
        let (a, b, l) = (to_array2(&self.a)?, to_array2(&self.b)?, to_array1(&self.lambda)?);
        mlae_core::check_expert_shapes(a.view(), b.view(), Some(l.len()), None, self.plan.expert_rank)?;
        Ok(mlae_core::to_peft_lora(a.view(), b.view(), l.view(), self.plan.expert_rank))
    }
}

/// DMLoRA as this project reads its abstract (`mlae_core::dmlora` lists what comes from the
/// paper and what is our choice): K branches of rank r stacked in MLAE's layout, each
/// initialised like a LoRA, and one learnable per-layer scale s_l;
/// `base(x) + s_l * ((x A^T) * repeat_r(w)) B`. The branch weights w come from
/// [`mlae_core::dmlora::branch_weights`] during training (`m_k / (K (1 - p))`, p from the
/// gradual-dropout schedule, 0 in stage 2) and are 1/K at inference, so the merged update is
/// `s_l / K * sum_k B_k^T A_k` and the PEFT export one LoRA of rank K r. Freezing the branches
/// in stage 2 is the training loop's job (their role is [`ParamRole::Adapter`], the scale's
/// [`ParamRole::BranchScale`]).
pub struct DmloraLayer {
    plan: LayerPlan,
    spec: DmloraSpec,
    a: Tensor,
    b: Tensor,
    scale: Tensor,
}

impl DmloraLayer {
    /// A: Kaiming-uniform(a = sqrt 5) (each branch its own rows), B: zero, s_l: `scale_init`.
    pub(crate) fn new(init: &Init<'_>, spec: &DmloraSpec) -> Self {
        let r = init.plan.rank() as i64;
        DmloraLayer {
            plan: init.plan.clone(),
            spec: spec.clone(),
            a: param(kaiming_a(init.seed, &format!("{}.dmlora_A", init.name), r, init.in_dim, init.device)),
            b: param(Tensor::zeros([r, init.out_dim], (Kind::Float, init.device))),
            scale: param(init::full(&[1], spec.scale_init, init.device)),
        }
    }

    fn branch_coefficients(&self, weights: &[f32]) -> Tensor {
        let w = Tensor::from_slice(weights).to_device(self.scale.device());
        repeat_rows(&self.scale * w, self.plan.expert_rank)
    }
}

impl AdapterLayer for DmloraLayer {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Dmlora
    }

    fn layer_plan(&self) -> &LayerPlan {
        &self.plan
    }

    fn forward(&self, x: &Tensor, base: Tensor, ctx: &AdapterCtx<'_>) -> Tensor {
        let kind = x.kind();
        let w = if ctx.train {
            mlae_core::dmlora::branch_weights(ctx.sampler, &self.spec, ctx.step, ctx.total_steps, ctx.layer)
        } else {
            mlae_core::dmlora::branch_weights_inference(self.plan.experts)
        };
        let h = x.mm(&cast(&self.a, kind).tr()) * cast(&self.branch_coefficients(&w), kind);
        base.addmm(&h, &cast(&self.b, kind))
    }

    fn merged_delta(&self) -> Tensor {
        let w = mlae_core::dmlora::branch_weights_inference(self.plan.experts);
        let c = tch::no_grad(|| self.branch_coefficients(&w).to_kind(Kind::Float));
        stacked_delta(&self.a, &self.b, &c)
    }

    fn params(&self) -> Vec<(&'static str, &Tensor, ParamRole)> {
        vec![
            ("dmlora_A", &self.a, ParamRole::Adapter),
            ("dmlora_B", &self.b, ParamRole::Adapter),
            ("dmlora_scale", &self.scale, ParamRole::BranchScale),
        ]
    }

    fn factors(&self) -> ExpertFactors {
        let s = self.scale.double_value(&[0]) as f32;
        let c = mlae_core::dmlora::branch_coefficients(self.plan.experts, s);
        ExpertFactors {
            a: self.a.detach().copy(),
            b: self.b.detach().copy(),
            coefficients: Tensor::from_slice(c.as_slice().expect("contiguous")).to_device(self.a.device()),
            expert_rank: self.plan.expert_rank,
        }
    }

    fn to_peft(&self) -> Result<PeftLora> {
        let s = self.scale.double_value(&[0]) as f32;
        let c = mlae_core::dmlora::branch_coefficients(self.plan.experts, s);
        let (a, b) = (to_array2(&self.a)?, to_array2(&self.b)?);
        mlae_core::check_expert_shapes(a.view(), b.view(), Some(c.len()), None, self.plan.expert_rank)?;
        Ok(mlae_core::to_peft_lora(a.view(), b.view(), c.view(), self.plan.expert_rank))
    }
}

/// Builds the adapter of one planned layer.
pub(crate) fn build(plan: &mlae_core::AdapterPlan, init: &Init<'_>) -> Result<Box<dyn AdapterLayer>> {
    Ok(match plan.kind {
        AdapterKind::Lora => Box::new(LoraLayer::new(init, plan.lora_scale, plan.lora_dropout)),
        AdapterKind::LoraDropout => Box::new(LoraDropoutLayer::new(init, plan.lora_scale, plan.lora_dropout)),
        AdapterKind::Mlae => Box::new(MlaeLayer::new(init, plan.coeff_init)),
        AdapterKind::Dmlora => {
            let spec = plan
                .dmlora
                .as_ref()
                .ok_or_else(|| VitError::Config("a dmlora plan without adapter.dmlora settings".into()))?;
            Box::new(DmloraLayer::new(init, spec))
        }
        AdapterKind::LinearProbe | AdapterKind::Full => {
            return Err(VitError::Config(format!("adapter kind {} has no adapter layers", plan.kind)));
        }
    })
}
