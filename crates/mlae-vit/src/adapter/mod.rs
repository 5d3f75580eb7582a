//! Adapter layers: the trainable update that sits beside a frozen linear layer.
//!
//! One module per adapter kind ([`lora`], [`lora_dropout`], [`mlae`], [`dmlora`], [`dora`]),
//! all behind [`AdapterLayer`], and one registry, [`build`], that maps a kind to its
//! constructor: a new kind is its module plus one line there. The frozen layer and its merge
//! state live in [`crate::adapted::AdaptedLinear`], which owns the adapter.
//!
//! The adapted layer computes the frozen layer's output `base = x W^T + b` and hands the
//! adapter its frozen layer, the input and `base` ([`AdapterLayer::forward`]); the adapter
//! returns `base + update(x)`. Each update is ONE rank-r product (`x A^T`, a per-row
//! scale, then `@ B` fused into the base output with `addmm`), never r separate products.
//!
//! Layouts: LoRA keeps PEFT's (`A: (r, in)`, `B: (out, r)`) so its export is a copy; MLAE and
//! DMLoRA keep the official MLAE layer's (`A: (n k, in)`, `B: (n k, out)`, expert i in rows
//! `i k .. (i+1) k`), the layout of mlae-core's math.

pub mod dmlora;
pub mod dora;
pub mod lora;
pub mod lora_dropout;
pub mod mlae;

pub use dmlora::DmloraLayer;
pub use dora::DoraLayer;
pub use lora::LoraLayer;
pub use lora_dropout::LoraDropoutLayer;
pub use mlae::MlaeLayer;

pub use crate::ctx::AdapterCtx;
use crate::error::{Result, VitError};
use crate::init;
use crate::linear::{Linear, cast};
use crate::tensor_io::from_array2;
use mlae_core::{AdapterKind, AdapterPlan, LayerSite, PeftLora};
use tch::{Device, Kind, Tensor};

/// What a trainable tensor is (mlae-core's, so that a method's schedule can name roles).
pub use mlae_core::ParamRole;

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

/// One adapted layer as a PEFT LoRA adapter directory stores it; the exporter writes the keys
/// under `base_model.model.<layer name>.` and gathers the config fields.
#[derive(Debug)]
pub struct PeftLayer {
    /// Tensors by their key after the layer name (`lora_A.weight` `(r, in)`, `lora_B.weight`
    /// `(out, r)`, and whatever else the kind stores), f32.
    pub tensors: Vec<(String, Tensor)>,
    /// PEFT's `r` for this layer (the default, or a `rank_pattern` entry).
    pub rank: usize,
    /// PEFT's `lora_alpha` for this layer (the default, or an `alpha_pattern` entry).
    pub alpha: f64,
    /// Further `adapter_config.json` fields the kind sets (`lora_dropout`, `use_dora`, ...). They
    /// are model-wide in PEFT, so every layer of a model must agree on them.
    pub config: serde_json::Map<String, serde_json::Value>,
}

impl PeftLayer {
    /// A plain LoRA layer (`lora_A.weight`, `lora_B.weight`) with no further config fields.
    pub fn lora(lora: PeftLora) -> Self {
        PeftLayer {
            tensors: vec![
                ("lora_A.weight".to_string(), from_array2(&lora.lora_a)),
                ("lora_B.weight".to_string(), from_array2(&lora.lora_b)),
            ],
            rank: lora.rank,
            alpha: lora.alpha,
            config: serde_json::Map::new(),
        }
    }
}

/// The interface every adapter kind implements.
pub trait AdapterLayer: Send {
    /// The adapter kind.
    fn kind(&self) -> AdapterKind;
    /// Where the layer is (block, target).
    fn site(&self) -> LayerSite;
    /// The adapted layer's output: the one call through which every kind gets what it needs,
    /// as PEFT hands its layer variants the host layer, the input and the base result.
    /// `frozen` is the frozen layer under the adapter (its rows, for a q/k/v slice), `x:
    /// (m, in)` the input and `base: (m, out)` the frozen layer's output `x W^T + b`, both in
    /// the compute kind; the result is `base + update(x)` in that kind (trainable f32 tensors
    /// are cast, so gradients reach them). Most kinds read `x` and `base` only; one whose
    /// update reads the frozen weight (DoRA's weight norm) reads `frozen`.
    fn forward(&self, frozen: &Linear, x: &Tensor, base: Tensor, ctx: &AdapterCtx<'_>) -> Tensor;
    /// The weights this layer draws on the host for the forward `ctx` describes (MLAE's
    /// expert mask scales, DMLoRA's branch weights), or `None`. The model gathers every
    /// layer's into one upload per forward ([`crate::ctx::StepWeights`]) and hands each its
    /// row as [`AdapterCtx::weights`].
    fn step_weights(&self, ctx: &AdapterCtx<'_>) -> Option<Vec<f32>> {
        let _ = ctx;
        None
    }
    /// Called when the frozen layer under this adapter is set or its weights replaced (on
    /// attach, and after a backbone checkpoint is loaded; before any saved adapter tensors are
    /// restored). A kind whose parameters start from the frozen weight (DoRA's magnitude)
    /// initialises them here; the default does nothing. Nothing of `frozen` is kept.
    fn attach(&mut self, frozen: &Linear) {
        let _ = frozen;
    }
    /// The update at inference as a weight, `dW: (out, in)`, f32, without gradient, for the
    /// frozen weight `w: (out, in)` (f32) it would be added to.
    fn merged_delta(&self, w: &Tensor) -> Tensor;
    /// The merged weight `W'` for the frozen weight `w: (out, in)` (f32), without gradient:
    /// `W + dW` unless the kind says otherwise. Merged exports compute it on the fly.
    fn merged_weight(&self, w: &Tensor) -> Tensor {
        w + self.merged_delta(w)
    }
    /// Merges into `w` (f32), returning `W'`: [`AdapterLayer::merged_weight`], unless the kind
    /// must remember what it merged (for its unmerge).
    fn merge(&mut self, w: &Tensor) -> Tensor {
        self.merged_weight(w)
    }
    /// Undoes [`AdapterLayer::merge`]: `W` from `W'` (f32), `W' - dW` with dW recomputed
    /// bit-identically from the same factors unless the kind says otherwise (the update of
    /// the kinds that use this default does not read `w`).
    fn unmerge(&mut self, merged: &Tensor) -> Tensor {
        merged - self.merged_delta(merged)
    }
    /// The trainable tensors: name suffix (e.g. `mlae_A`), tensor, role.
    fn params(&self) -> Vec<(&'static str, &Tensor, ParamRole)>;
    /// The adapter in MLAE's expert layout (copies, without gradient).
    fn factors(&self) -> ExpertFactors;
    /// The low-rank update as an exact PEFT LoRA (coefficients folded into B by mlae-core).
    fn to_peft(&self) -> Result<PeftLora>;
    /// The layer as PEFT stores it: by default the LoRA of [`AdapterLayer::to_peft`] and no
    /// further config fields.
    fn peft_layer(&self) -> Result<PeftLayer> {
        Ok(PeftLayer::lora(self.to_peft()?))
    }
}

/// Shared construction arguments.
pub(crate) struct Init<'a> {
    pub site: LayerSite,
    /// The layer's index in the plan's sites.
    pub layer: usize,
    pub in_dim: i64,
    pub out_dim: i64,
    pub seed: u64,
    /// Prefix of the tensor names, `blocks.N.attn.qkv`.
    pub name: &'a str,
    pub device: Device,
}

/// The registry: the layer of each method, built from the method's own plan (mlae-core's
/// `methods` module; the constructor reads what it needs). A new method is its module plus
/// one line here (and its mlae-core module and registry line).
pub(crate) fn build(plan: &AdapterPlan, init: &Init<'_>) -> Result<Box<dyn AdapterLayer>> {
    Ok(match plan {
        AdapterPlan::Lora(p) => Box::new(LoraLayer::build(p, init)),
        AdapterPlan::LoraDropout(p) => Box::new(LoraDropoutLayer::build(p, init)),
        AdapterPlan::Mlae(p) => Box::new(MlaeLayer::build(p, init)),
        AdapterPlan::Dmlora(p) => Box::new(DmloraLayer::build(p, init)),
        AdapterPlan::Dora(p) => Box::new(DoraLayer::build(p, init)),
        AdapterPlan::LinearProbe(_) | AdapterPlan::Full(_) => {
            return Err(VitError::Config(format!("adapter kind {} has no adapter layers", plan.kind())));
        }
    })
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
