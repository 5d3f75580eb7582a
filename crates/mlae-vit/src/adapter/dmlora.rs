//! DMLoRA as this project reads its abstract (`mlae_core::dmlora` lists what comes from the
//! paper and what is our choice).

use super::stacked_delta;
use super::{AdapterCtx, AdapterLayer, ExpertFactors, Init, ParamRole, cast, kaiming_a, param, repeat_rows};
use crate::error::Result;
use crate::init;
use crate::linear::Linear;
use crate::tensor_io::to_array2;
use mlae_core::{AdapterKind, DmloraPlan, DmloraSpec, LayerSite, PeftLora};
use tch::{Kind, Tensor};

/// K branches of rank r stacked in MLAE's layout, each initialised like a LoRA, and one
/// learnable per-layer scale s_l;
/// `base(x) + s_l * ((x A^T) * repeat_r(w)) B`. The branch weights w come from
/// [`mlae_core::dmlora::branch_weights`] during training (`m_k / (K (1 - p))`, p from the
/// gradual-dropout schedule, 0 in stage 2) and are 1/K at inference, so the merged update is
/// `s_l / K * sum_k B_k^T A_k` and the PEFT export one LoRA of rank K r. Freezing the branches
/// in stage 2 is the training loop's job (their role is [`ParamRole::Adapter`], the scale's
/// [`ParamRole::BranchScale`]).
pub struct DmloraLayer {
    site: LayerSite,
    spec: DmloraSpec,
    a: Tensor,
    b: Tensor,
    scale: Tensor,
}

impl DmloraLayer {
    /// The layer of a `dmlora` plan, with its branch schedule and scale init.
    pub(crate) fn build(plan: &DmloraPlan, init: &Init<'_>) -> Self {
        Self::new(init, &plan.spec)
    }

    /// A: Kaiming-uniform(a = sqrt 5) (each branch its own rows), B: zero, s_l: `scale_init`.
    pub(crate) fn new(init: &Init<'_>, spec: &DmloraSpec) -> Self {
        let r = (spec.branches * spec.branch_rank) as i64;
        DmloraLayer {
            site: init.site,
            spec: spec.clone(),
            a: param(kaiming_a(init.seed, &format!("{}.dmlora_A", init.name), r, init.in_dim, init.device)),
            b: param(Tensor::zeros([r, init.out_dim], (Kind::Float, init.device))),
            scale: param(init::full(&[1], spec.scale_init, init.device)),
        }
    }

    fn branch_coefficients(&self, weights: &[f32]) -> Tensor {
        let w = crate::transfer::upload_f32(weights, self.scale.device());
        repeat_rows(&self.scale * w, self.spec.branch_rank)
    }

    /// The branch weights of this forward: training's schedule, or 1/K at inference.
    fn weights(&self, ctx: &AdapterCtx<'_>) -> Vec<f32> {
        if ctx.train {
            mlae_core::dmlora::branch_weights(ctx.sampler, &self.spec, ctx.step, ctx.total_steps, ctx.layer)
        } else {
            mlae_core::dmlora::branch_weights_inference(self.spec.branches)
        }
    }
}

impl AdapterLayer for DmloraLayer {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Dmlora
    }

    fn site(&self) -> LayerSite {
        self.site
    }

    fn forward(&self, _frozen: &Linear, x: &Tensor, base: Tensor, ctx: &AdapterCtx<'_>) -> Tensor {
        let kind = x.kind();
        let coeff = match ctx.weights {
            Some(w) => repeat_rows(&self.scale * w, self.spec.branch_rank),
            None => self.branch_coefficients(&self.weights(ctx)),
        };
        let h = x.mm(&cast(&self.a, kind).tr()) * cast(&coeff, kind);
        base.addmm(&h, &cast(&self.b, kind))
    }

    fn step_weights(&self, ctx: &AdapterCtx<'_>) -> Option<Vec<f32>> {
        Some(self.weights(ctx))
    }

    fn merged_delta(&self, _w: &Tensor) -> Tensor {
        let w = mlae_core::dmlora::branch_weights_inference(self.spec.branches);
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
        let c = mlae_core::dmlora::branch_coefficients(self.spec.branches, s);
        ExpertFactors {
            a: self.a.detach().copy(),
            b: self.b.detach().copy(),
            coefficients: Tensor::from_slice(c.as_slice().expect("contiguous")).to_device(self.a.device()),
            expert_rank: self.spec.branch_rank,
        }
    }

    fn to_peft(&self) -> Result<PeftLora> {
        let s = self.scale.double_value(&[0]) as f32;
        let c = mlae_core::dmlora::branch_coefficients(self.spec.branches, s);
        let (a, b) = (to_array2(&self.a)?, to_array2(&self.b)?);
        mlae_core::check_expert_shapes(a.view(), b.view(), Some(c.len()), None, self.spec.branch_rank)?;
        Ok(mlae_core::to_peft_lora(a.view(), b.view(), c.view(), self.spec.branch_rank))
    }
}
