//! DoRA with PEFT's semantics (`use_dora=True`): LoRA's `A: (r, in)`, `B: (out, r)` and scale
//! `s`, plus a magnitude `m: (out,)`. With the row norms `n = ||W + s B A||` (taken without
//! gradient, as PEFT does after the DoRA paper's section 4.3):
//!
//! - forward: `y = base + (m/n - 1) (x W^T) + (m/n) s (x A^T) B^T`, where `base = x W^T + b` and,
//!   with input dropout in training, the two adapter terms read the dropped input;
//! - merge: `W' = (m/n) (W + s B A)`, the bias untouched; unmerge divides by the `m/n` of the
//!   merge, since `n` cannot be recomputed from `W'`.
//!
//! `m` starts at the row norms of the frozen weight (B is zero then): it is set on attach and
//! again after a backbone load ([`AdapterLayer::attach`]). The layer keeps no copy of the
//! frozen layer; every call that needs it is handed it.

use super::{AdapterCtx, AdapterLayer, ExpertFactors, Init, ParamRole, PeftLayer, cast, kaiming_a, param};
use crate::error::{Result, VitError};
use crate::linear::Linear;
use mlae_core::methods::dora::DoraPlan;
use mlae_core::{AdapterKind, LayerSite, PeftLora};
use tch::{Kind, Tensor};

/// A DoRA layer.
pub struct DoraLayer {
    site: LayerSite,
    rank: usize,
    a: Tensor,
    b: Tensor,
    magnitude: Tensor,
    scale: f64,
    dropout: f64,
    /// `m / n` of the last merge, for the exact unmerge.
    merged_factor: Option<Tensor>,
}

impl DoraLayer {
    /// The layer of a `dora` plan: LoRA's A (the same draw as kind lora) and zero B; the
    /// magnitude is set from the frozen weight on attach.
    pub(crate) fn build(plan: &DoraPlan, init: &Init<'_>) -> Self {
        let r = plan.rank as i64;
        DoraLayer {
            site: init.site,
            rank: plan.rank,
            a: param(kaiming_a(init.seed, &format!("{}.lora_A", init.name), r, init.in_dim, init.device)),
            b: param(Tensor::zeros([init.out_dim, r], (Kind::Float, init.device))),
            magnitude: param(Tensor::ones([init.out_dim], (Kind::Float, init.device))),
            scale: plan.scale,
            dropout: plan.input_dropout,
            merged_factor: None,
        }
    }

    /// `s B A`, f32, without gradient.
    fn low_rank(&self) -> Tensor {
        tch::no_grad(|| self.b.to_kind(Kind::Float).mm(&self.a.to_kind(Kind::Float)) * self.scale)
    }

    /// `n = ||W + s B A||` per output row, f32, without gradient.
    fn weight_norm(&self, w: &Tensor) -> Tensor {
        tch::no_grad(|| (w.to_kind(Kind::Float) + self.low_rank()).norm_scalaropt_dim(2.0, [1], false))
    }

    /// The output given the frozen output `base` and the frozen weight and bias.
    fn apply(
        &self,
        x: &Tensor,
        base: Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        ctx: &AdapterCtx<'_>,
    ) -> Tensor {
        let kind = x.kind();
        // m / n in f32 (the gradient reaches m), then cast; m/n - 1 is formed in f32 too, as
        // it is small and bf16 would round it to a multiple of 2^-7.
        let ratio = &self.magnitude / self.weight_norm(w);
        let (factor, factor_m1) = (cast(&ratio, kind), cast(&(&ratio - 1.0), kind));
        let (xd, xw) = if ctx.train && self.dropout > 0.0 {
            let xd = x.dropout(self.dropout, true);
            let xw = xd.mm(&cast(w, kind).tr());
            (xd, xw)
        } else {
            let xw = match bias {
                Some(b) => &base - cast(b, kind),
                None => base.shallow_clone(),
            };
            (x.shallow_clone(), xw)
        };
        let h = xd.mm(&cast(&self.a, kind).tr());
        let h = if self.scale != 1.0 { h.g_mul_scalar(self.scale) } else { h };
        let lora = h.mm(&cast(&self.b, kind).tr());
        base + factor_m1 * xw + factor * lora
    }
}

impl AdapterLayer for DoraLayer {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Dora
    }

    fn site(&self) -> LayerSite {
        self.site
    }

    fn forward(&self, frozen: &Linear, x: &Tensor, base: Tensor, ctx: &AdapterCtx<'_>) -> Tensor {
        self.apply(x, base, &frozen.weight, frozen.bias.as_ref(), ctx)
    }

    /// PEFT's magnitude init: `m = ||W + s B A||` per output row.
    fn attach(&mut self, frozen: &Linear) {
        let n = self.weight_norm(&frozen.weight);
        tch::no_grad(|| self.magnitude.copy_(&n));
    }

    /// `W' - W` for the frozen weight: `(m/n - 1) W + (m/n) s B A`.
    fn merged_delta(&self, w: &Tensor) -> Tensor {
        tch::no_grad(|| self.merged_weight(w) - w)
    }

    fn merged_weight(&self, w: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let factor = &self.magnitude / self.weight_norm(w);
            factor.unsqueeze(1) * (w + self.low_rank())
        })
    }

    fn merge(&mut self, w: &Tensor) -> Tensor {
        let factor = tch::no_grad(|| &self.magnitude / self.weight_norm(w));
        let merged = tch::no_grad(|| factor.unsqueeze(1) * (w + self.low_rank()));
        self.merged_factor = Some(factor);
        merged
    }

    fn unmerge(&mut self, merged: &Tensor) -> Tensor {
        let factor = self.merged_factor.take().expect("unmerge follows a merge");
        tch::no_grad(|| merged / factor.unsqueeze(1) - self.low_rank())
    }

    fn params(&self) -> Vec<(&'static str, &Tensor, ParamRole)> {
        vec![
            ("lora_A", &self.a, ParamRole::Adapter),
            ("lora_B", &self.b, ParamRole::Adapter),
            ("lora_magnitude_vector", &self.magnitude, ParamRole::Adapter),
        ]
    }

    /// The low-rank direction update `s B A` as r rank-1 experts of coefficient s; the
    /// magnitude is a per-row rescale, not an expert, and is left out.
    fn factors(&self) -> ExpertFactors {
        ExpertFactors {
            a: self.a.detach().copy(),
            b: self.b.detach().tr().contiguous(),
            coefficients: Tensor::full([self.rank as i64], self.scale, (Kind::Float, self.a.device())),
            expert_rank: 1,
        }
    }

    fn to_peft(&self) -> Result<PeftLora> {
        Err(VitError::Config(format!(
            "{}: a DoRA layer is not a plain LoRA (its magnitude rescales the frozen weight); export it \
             as a PEFT DoRA adapter (use_dora) or as a merged model",
            self.site.name()
        )))
    }

    /// PEFT's DoRA: `lora_A.weight`, `lora_B.weight`, `lora_magnitude_vector`, and
    /// `use_dora: true`.
    fn peft_layer(&self) -> Result<PeftLayer> {
        let f32 = |t: &Tensor| t.detach().to_kind(Kind::Float).contiguous();
        let mut config = serde_json::Map::new();
        config.insert("use_dora".into(), true.into());
        config.insert("lora_dropout".into(), self.dropout.into());
        Ok(PeftLayer {
            tensors: vec![
                ("lora_A.weight".into(), f32(&self.a)),
                ("lora_B.weight".into(), f32(&self.b)),
                ("lora_magnitude_vector".into(), f32(&self.magnitude)),
            ],
            rank: self.rank,
            alpha: self.scale * self.rank as f64,
            config,
        })
    }
}
