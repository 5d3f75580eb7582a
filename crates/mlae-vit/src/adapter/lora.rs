//! Plain LoRA with PEFT's semantics: `base(x) + scale * B A dropout(x)`.

use super::{AdapterCtx, AdapterLayer, ExpertFactors, Init, ParamRole, PeftLayer, cast, kaiming_a, param};
use crate::error::Result;
use crate::linear::Linear;
use crate::tensor_io::to_array2;
use mlae_core::{AdapterKind, LayerSite, LoraPlan, PeftLora};
use tch::{Kind, Tensor};

/// Plain LoRA in PEFT's layout (`A: (r, in)`, `B: (out, r)`), dropout on the input.
pub struct LoraLayer {
    pub(super) site: LayerSite,
    rank: usize,
    pub(super) a: Tensor,
    pub(super) b: Tensor,
    pub(super) scale: f64,
    dropout: f64,
}

impl LoraLayer {
    /// The layer of a `lora` plan: rank r, scale alpha / r, PEFT's input dropout.
    pub(crate) fn build(plan: &LoraPlan, init: &Init<'_>) -> Self {
        Self::new(init, plan.rank, plan.scale, plan.input_dropout)
    }

    /// A: Kaiming-uniform(a = sqrt 5), B: zero, as PEFT initialises them; `dropout` on the
    /// input.
    pub(crate) fn new(init: &Init<'_>, rank: usize, scale: f64, dropout: f64) -> Self {
        let r = rank as i64;
        LoraLayer {
            site: init.site,
            rank,
            a: param(kaiming_a(init.seed, &format!("{}.lora_A", init.name), r, init.in_dim, init.device)),
            b: param(Tensor::zeros([init.out_dim, r], (Kind::Float, init.device))),
            scale,
            dropout,
        }
    }

    /// `scale * x A^T`, the rank-r hidden of the update.
    pub(super) fn hidden(&self, x: &Tensor, kind: Kind) -> Tensor {
        let h = x.mm(&cast(&self.a, kind).tr());
        if self.scale != 1.0 { h.g_mul_scalar(self.scale) } else { h }
    }
}

impl AdapterLayer for LoraLayer {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Lora
    }

    fn site(&self) -> LayerSite {
        self.site
    }

    fn forward(&self, _frozen: &Linear, x: &Tensor, base: Tensor, ctx: &AdapterCtx<'_>) -> Tensor {
        let kind = x.kind();
        let x =
            if ctx.train && self.dropout > 0.0 { x.dropout(self.dropout, true) } else { x.shallow_clone() };
        base.addmm(&self.hidden(&x, kind), &cast(&self.b, kind).tr())
    }

    fn merged_delta(&self, _w: &Tensor) -> Tensor {
        tch::no_grad(|| self.b.to_kind(Kind::Float).mm(&self.a.to_kind(Kind::Float)) * self.scale)
    }

    fn params(&self) -> Vec<(&'static str, &Tensor, ParamRole)> {
        vec![("lora_A", &self.a, ParamRole::Adapter), ("lora_B", &self.b, ParamRole::Adapter)]
    }

    fn factors(&self) -> ExpertFactors {
        let r = self.rank as i64;
        ExpertFactors {
            a: self.a.detach().copy(),
            b: self.b.detach().tr().contiguous(),
            coefficients: Tensor::full([r], self.scale, (Kind::Float, self.a.device())),
            expert_rank: 1,
        }
    }

    fn to_peft(&self) -> Result<PeftLora> {
        let rank = self.rank;
        Ok(PeftLora {
            lora_a: to_array2(&self.a)?,
            lora_b: to_array2(&self.b)?,
            rank,
            alpha: self.scale * rank as f64,
        })
    }

    /// PEFT's LoRA, with this layer's input dropout as `lora_dropout`.
    fn peft_layer(&self) -> Result<PeftLayer> {
        let mut layer = PeftLayer::lora(self.to_peft()?);
        layer.config.insert("lora_dropout".into(), self.dropout.into());
        Ok(layer)
    }
}
