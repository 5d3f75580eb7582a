//! Masked LoRA experts, the paper's method, with the official layer's semantics.

use super::stacked_delta;
use super::{AdapterCtx, AdapterLayer, ExpertFactors, Init, ParamRole, cast, kaiming_a, param, repeat_rows};
use crate::error::{Result, VitError};
use crate::init;
use crate::linear::Linear;
use crate::tensor_io::{to_array1, to_array2};
use mlae_core::{AdapterKind, LayerSite, MlaeLayerPlan, MlaePlan, PeftLora};
use tch::{Kind, Tensor};

/// `base(x) + ((x A^T) * repeat_k(lambda * s)) B`, with `s` the expert mask scales of
/// [`mlae_core::MaskSampler`] for (seed, step, layer) during training and all ones at inference.
pub struct MlaeLayer {
    plan: MlaeLayerPlan,
    a: Tensor,
    b: Tensor,
    lambda: Tensor,
}

impl MlaeLayer {
    /// The layer of an `mlae` plan: its experts and expert dropout, lambda starting at the
    /// plan's coefficient init.
    pub(crate) fn build(plan: &MlaePlan, init: &Init<'_>) -> Self {
        Self::new(init, &plan.layers[init.layer], plan.coeff_init)
    }

    /// A: Kaiming-uniform(a = sqrt 5) per row (every expert its own initial state), B: zero,
    /// lambda: `coeff_init`.
    pub(crate) fn new(init: &Init<'_>, plan: &MlaeLayerPlan, coeff_init: f64) -> Self {
        let (n, r) = (plan.experts as i64, plan.rank() as i64);
        MlaeLayer {
            plan: *plan,
            a: param(kaiming_a(init.seed, &format!("{}.mlae_A", init.name), r, init.in_dim, init.device)),
            b: param(Tensor::zeros([r, init.out_dim], (Kind::Float, init.device))),
            lambda: param(init::full(&[n], coeff_init, init.device)),
        }
    }

    /// A layer from given tensors, `a: (n k, in)`, `b: (n k, out)`, `lambda: (n,)` with n and k
    /// from `plan` (copied, f32, trainable). For tests and tools that need an MLAE layer
    /// outside a model.
    pub fn from_tensors(plan: &MlaeLayerPlan, a: &Tensor, b: &Tensor, lambda: &Tensor) -> Result<Self> {
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
        Ok(MlaeLayer { plan: *plan, a: p(a), b: p(b), lambda: p(lambda) })
    }

    /// The forward with explicit per-expert mask scales (`None`: all on, unscaled). The model
    /// passes [`mlae_core::MaskSampler::layer_scales`]; tests pass their own.
    pub fn forward_with_scales(&self, x: &Tensor, base: Tensor, scales: Option<&[f32]>) -> Tensor {
        let scales = scales.map(|s| {
            assert_eq!(s.len(), self.plan.experts, "one mask scale per expert");
            crate::transfer::upload_f32(s, self.lambda.device())
        });
        self.forward_with(x, base, scales)
    }

    /// Whether the forward `ctx` masks experts (training with expert dropout).
    fn masks(&self, ctx: &AdapterCtx<'_>) -> bool {
        ctx.train && self.plan.expert_dropout > 0.0
    }

    /// The forward with the mask scales already on the device (`None`: all on, unscaled).
    fn forward_with(&self, x: &Tensor, base: Tensor, scales: Option<Tensor>) -> Tensor {
        let kind = x.kind();
        let coeff = match scales {
            Some(s) => &self.lambda * s,
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

    fn site(&self) -> LayerSite {
        self.plan.site
    }

    fn forward(&self, _frozen: &Linear, x: &Tensor, base: Tensor, ctx: &AdapterCtx<'_>) -> Tensor {
        if !self.masks(ctx) {
            return self.forward_with(x, base, None);
        }
        match ctx.weights {
            Some(scales) => self.forward_with(x, base, Some(scales.shallow_clone())),
            // run on its own, outside a model's forward: draw and upload this layer's scales
            None => self.forward_with_scales(x, base, self.step_weights(ctx).as_deref()),
        }
    }

    /// Training with expert dropout: the step's mask scales of this layer.
    fn step_weights(&self, ctx: &AdapterCtx<'_>) -> Option<Vec<f32>> {
        self.masks(ctx).then(|| {
            ctx.sampler.layer_scales(ctx.step, ctx.layer, self.plan.experts, self.plan.expert_dropout)
        })
    }

    fn merged_delta(&self, _w: &Tensor) -> Tensor {
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
