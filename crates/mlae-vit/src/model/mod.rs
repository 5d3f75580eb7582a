//! The ViT (timm's layout and names) with adapters on its linear layers.
//!
//! Frozen and trainable tensors live apart: the backbone's tensors never require grad (except
//! in `full` fine-tuning), and [`AdaptedVit::trainable`] hands the optimizer exactly the head
//! and adapter tensors. Autograd therefore records nothing for frozen weights, and a linear
//! probe's backbone forward builds no graph at all.
//!
//! Each linear layer of a block is an [`AdaptedLinear`] that owns its frozen weight, its
//! adapter and its merge state; each [`block`] runs its own forward; the model loops over them.

mod backbone;
pub mod block;

pub(crate) use backbone::{Backbone, fresh_head};
pub use block::LayerHook;

use crate::adapted::AdaptedLinear;
use crate::adapter::{self, AdapterLayer, ParamRole};
use crate::config::VitConfig;
use crate::ctx::{ForwardCtx, StepWeights};
use crate::error::{Result, VitError};
use crate::linear::{Linear, cast};
use crate::pos_embed::{PosResize, resample_pos_embed};
use block::{Pass, Rows};
use mlae_core::{AdapterPlan, AdapterSpec, LayerSite, MaskSampler, ParamCount, TargetLayer};
use std::ops::ControlFlow;
use tch::{Device, Kind, Tensor};

/// A ViT with a fine-tuning method attached: adapters on the planned linear layers (or none,
/// for `linear-probe` and `full`) and a classification head.
pub struct AdaptedVit {
    pub(crate) cfg: VitConfig,
    pub(crate) spec: AdapterSpec,
    pub(crate) plan: AdapterPlan,
    pub(crate) seed: u64,
    sampler: MaskSampler,
    pub(crate) device: Device,
    compute_kind: Kind,
    pub(crate) backbone: Backbone,
    pub(crate) head: Linear,
    /// The adapted layers in plan order (the order of [`AdaptedVit::trainable`]; the index is
    /// the `layer` of the mask draws).
    adapted: Vec<LayerSite>,
    /// The user's choice of position-table resize ([`AdaptedVit::set_pos_resize`]); `None`
    /// follows the checkpoint's convention.
    pub(crate) pos_resize: Option<PosResize>,
    /// The convention of the checkpoint loaded last (timm's until one is loaded).
    pub(crate) checkpoint_pos_resize: PosResize,
    /// What the head's outputs mean ([`AdaptedVit::set_class_names`]), carried by exports.
    pub(crate) class_names: Option<Vec<String>>,
    /// See [`AdaptedVit::set_explicit_attention`].
    explicit_attention: bool,
}

impl std::fmt::Debug for AdaptedVit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptedVit")
            .field("config", &self.cfg)
            .field("kind", &self.plan.kind())
            .field("adapted_layers", &self.adapted.len())
            .field("device", &self.device)
            .field("compute_kind", &self.compute_kind)
            .field("merged", &self.is_merged())
            .finish()
    }
}

impl AdaptedVit {
    /// A randomly initialised model with the adapters of `spec`. `seed` drives the
    /// initialisation of every tensor (adapters, head, and the backbone until a checkpoint is
    /// loaded) and is the [`MaskSampler`] seed of the expert masks.
    ///
    /// The head is timm's `trunc_normal_(std = 0.02)` (bounds +-2 absolute, so in effect
    /// N(0, 0.02^2)) with zero bias, as timm initialises a fresh classifier. Adapter A
    /// matrices are Kaiming-uniform(a = sqrt 5) = U(+-1/sqrt(in)), B zero, so a fresh adapter
    /// leaves the model's outputs unchanged.
    pub fn new(cfg: &VitConfig, spec: &AdapterSpec, seed: u64, device: Device) -> Result<Self> {
        cfg.validate()?;
        let plan = spec.resolve(cfg.depth as usize)?;
        let mut backbone = Backbone::random(cfg, seed, device);
        if plan.trains_backbone() {
            for (_, t) in backbone.tensors_mut() {
                *t = t.set_requires_grad(true);
            }
        }
        let (w, b) = fresh_head(cfg, seed, device);
        let head = Linear { weight: w.set_requires_grad(true), bias: Some(b.set_requires_grad(true)) };
        let mut model = AdaptedVit {
            cfg: cfg.clone(),
            spec: spec.clone(),
            plan: plan.clone(),
            seed,
            sampler: MaskSampler::new(seed),
            device,
            compute_kind: Kind::Float,
            backbone,
            head,
            adapted: Vec::new(),
            pos_resize: None,
            checkpoint_pos_resize: PosResize::Antialias,
            class_names: None,
            explicit_attention: false,
        };
        model.build_adapters(&plan)?;
        Ok(model)
    }

    /// (Re)builds the adapters of `plan`, freshly initialised, on an unmerged model.
    pub(crate) fn build_adapters(&mut self, plan: &AdapterPlan) -> Result<()> {
        let dims = self.cfg.dims();
        // Build them all before attaching any, so an error leaves the model as it was.
        let sites = plan.sites();
        let mut built = Vec::with_capacity(sites.len());
        for (i, site) in sites.into_iter().enumerate() {
            let (inn, out) = mlae_core::layer_in_out(site.target, &dims);
            let name = site.name();
            let init = adapter::Init {
                site,
                layer: i,
                in_dim: inn as i64,
                out_dim: out as i64,
                seed: self.seed,
                name: &name,
                device: self.device,
            };
            built.push((site, adapter::build(plan, &init)?));
        }
        for id in std::mem::take(&mut self.adapted) {
            self.layer_mut(id).detach();
        }
        for (i, (id, a)) in built.into_iter().enumerate() {
            self.layer_mut(id).attach(i, a);
            self.adapted.push(id);
        }
        self.plan = plan.clone();
        Ok(())
    }

    /// The model's configuration.
    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// The adapter specification the model was built from.
    pub fn spec(&self) -> &AdapterSpec {
        &self.spec
    }

    /// The resolved adapter plan (one entry per adapted layer, in mask-draw order).
    pub fn plan(&self) -> &AdapterPlan {
        &self.plan
    }

    /// The initialisation and mask seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The kind the forward computes in (f32 unless [`AdaptedVit::set_compute_kind`]).
    pub fn compute_kind(&self) -> Kind {
        self.compute_kind
    }

    /// Whether the adapters are merged into the frozen weights (asks every adapted layer).
    pub fn is_merged(&self) -> bool {
        self.adapted.iter().any(|&id| self.layer(id).is_merged())
    }

    /// A linear layer of a block (frozen base, adapter, merge state), if the block exists.
    pub fn linear(&self, id: LayerSite) -> Option<&AdaptedLinear> {
        Some(self.backbone.blocks.get(id.block)?.linear(id.target))
    }

    fn layer(&self, id: LayerSite) -> &AdaptedLinear {
        self.backbone.blocks[id.block].linear(id.target)
    }

    fn layer_mut(&mut self, id: LayerSite) -> &mut AdaptedLinear {
        self.backbone.blocks[id.block].linear_mut(id.target)
    }

    /// The adapter on a linear layer, if any (A, B, coefficients through
    /// [`AdapterLayer::factors`]).
    pub fn adapter(&self, block: usize, target: TargetLayer) -> Option<&dyn AdapterLayer> {
        self.linear(LayerSite { block, target })?.adapter_for(target)
    }

    /// Every adapter, in plan order.
    pub fn adapters(&self) -> impl Iterator<Item = &dyn AdapterLayer> {
        self.adapted
            .iter()
            .map(|&id| self.layer(id).adapter_for(id.target).expect("an adapted layer has an adapter"))
    }

    /// Tells every adapter that its frozen layer's weights were replaced (a loaded backbone).
    pub(crate) fn rebase_adapters(&mut self) {
        for id in self.adapted_linears() {
            self.layer_mut(id).rebase();
        }
    }

    /// The linear layers that hold adapters, each once (q and v slices share the fused qkv),
    /// in plan order.
    fn adapted_linears(&self) -> Vec<LayerSite> {
        let mut out: Vec<LayerSite> = Vec::new();
        for id in &self.adapted {
            let fused = LayerSite { block: id.block, target: id.target.fused() };
            if !out.contains(&fused) {
                out.push(fused);
            }
        }
        out
    }

    /// Every linear layer holding adapters, once each, with its id, in plan order.
    pub(crate) fn adapted_layers(&self) -> impl Iterator<Item = (LayerSite, &AdaptedLinear)> {
        self.adapted_linears().into_iter().map(|id| (id, self.layer(id)))
    }

    /// Any tensor of the model by its name (`pos_embed`, `blocks.0.attn.qkv.weight`,
    /// `blocks.0.attn.qkv.mlae_A`, `head.weight`, ...), sharing storage with the model.
    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        if let Some((_, t)) = self.backbone.tensors().into_iter().find(|(n, _)| n == name) {
            return Some(t.shallow_clone());
        }
        self.trainable().into_iter().find(|(n, _, _)| n == name).map(|(_, t, _)| t)
    }

    fn backbone_trainable(&self) -> bool {
        self.plan.trains_backbone()
    }

    /// The trainable tensors, in a stable order (backbone in timm order for `full`, then the
    /// adapters in plan order, then the head), with timm-style names such as
    /// `blocks.3.attn.qkv.mlae_lambda` or `head.weight`. The tensors share storage with the
    /// model (an optimizer updating them updates the model); they are f32 whatever the
    /// compute kind.
    pub fn trainable(&self) -> Vec<(String, Tensor, ParamRole)> {
        let mut v = Vec::new();
        if self.backbone_trainable() {
            for (name, t) in self.backbone.tensors() {
                v.push((name, t.shallow_clone(), ParamRole::Backbone));
            }
        }
        for a in self.adapters() {
            let prefix = a.site().name();
            for (suffix, t, role) in a.params() {
                v.push((format!("{prefix}.{suffix}"), t.shallow_clone(), role));
            }
        }
        v.push(("head.weight".to_string(), self.head.weight.shallow_clone(), ParamRole::Head));
        if let Some(b) = &self.head.bias {
            v.push(("head.bias".to_string(), b.shallow_clone(), ParamRole::Head));
        }
        v
    }

    /// Parameter counts from the real tensors (they agree with [`mlae_core::count_params`]).
    pub fn param_count(&self) -> ParamCount {
        let n = |t: &Tensor| t.numel();
        let backbone: usize = self.backbone.tensors().iter().map(|(_, t)| n(t)).sum();
        let head = n(&self.head.weight) + self.head.bias.as_ref().map_or(0, n);
        let adapter: usize = self.adapters().flat_map(|a| a.params()).map(|(_, t, _)| n(t)).sum();
        // tensors the method's schedule never trains (frozen MLAE coefficients) are not counted
        let schedule = self.plan().schedule();
        let trainable = self
            .trainable()
            .iter()
            .filter(|(_, _, role)| schedule.ever_trains(*role))
            .map(|(_, t, _)| n(t))
            .sum();
        ParamCount { adapter, head, backbone, trainable, total: backbone + head + adapter }
    }

    /// Computes the matrix products (patch embedding, linear layers, attention, head) in
    /// `kind` (e.g. `Kind::BFloat16`), as autocast does: their frozen weights are stored in
    /// `kind` (autocast's cast, made once), while the norms, the class token, the position
    /// table, the layer scales and the residual stream stay fp32, and the trainable tensors
    /// stay f32 master weights cast in the forward. Casting back to f32 later does not restore
    /// the precision the cast lost.
    pub fn set_compute_kind(&mut self, kind: Kind) {
        if !self.backbone_trainable() {
            for (name, t) in self.backbone.tensors_mut() {
                if t.kind() != kind && is_matmul_weight(&name) {
                    *t = t.to_kind(kind);
                }
            }
        }
        self.compute_kind = kind;
    }

    /// Computes attention written out, `softmax(q k^T / sqrt(d)) v` with plain matmuls (timm's
    /// non-fused path), instead of libtorch's fused `scaled_dot_product_attention`. Why: on
    /// CUDA the fused kernels' backward accumulates with atomics, so two runs differ in their
    /// last bits; written out, attention is matmuls and a softmax, repeatable once cuBLAS is
    /// (`train.deterministic`). It costs memory (the score matrix is kept for the backward)
    /// and time. Off by default.
    pub fn set_explicit_attention(&mut self, on: bool) {
        self.explicit_attention = on;
    }

    /// Whether attention is written out (see [`AdaptedVit::set_explicit_attention`]).
    pub fn explicit_attention(&self) -> bool {
        self.explicit_attention
    }

    /// Logits `(batch, classes)`, f32, for images `(batch, channels, h, w)` (f32 or the
    /// compute kind). Any image size works: when the patch grid differs from the configured
    /// one, the position table is resampled on the fly (in the convention of the loaded
    /// checkpoint or the one chosen, see [`AdaptedVit::set_pos_resize`]).
    ///
    /// # Panics
    /// On an input of the wrong shape (see [`AdaptedVit::try_forward_t`]).
    pub fn forward_t(&self, x: &Tensor, ctx: &ForwardCtx) -> Tensor {
        self.try_forward_t(x, ctx).unwrap_or_else(|e| panic!("AdaptedVit::forward_t: {e}"))
    }

    /// [`AdaptedVit::forward_t`], returning an error for an input of the wrong shape.
    pub fn try_forward_t(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let logits = self.run(x, ctx, Rows::ClassToken, &mut |_, _| ControlFlow::Continue(()))?;
        Ok(logits.continue_value().expect("the hook never stops the forward"))
    }

    /// [`AdaptedVit::try_forward_t`] that shows `hook` the input `(batch, tokens, in)` of every
    /// linear layer (adapted or not) in forward order, for analysis tools; the hook stops the
    /// forward by returning `ControlFlow::Break(())`, and then the result is `None`. Here every
    /// block computes every token (the plain forward computes only the class token in the last
    /// block), so the hook sees whole activations; the logits are the same.
    pub fn forward_with(
        &self,
        x: &Tensor,
        ctx: &ForwardCtx,
        hook: &mut LayerHook<'_>,
    ) -> Result<Option<Tensor>> {
        Ok(self.run(x, ctx, Rows::All, hook)?.continue_value())
    }

    /// The forward, `last` saying which tokens the last block computes.
    fn run(
        &self,
        x: &Tensor,
        ctx: &ForwardCtx,
        last: Rows,
        hook: &mut LayerHook<'_>,
    ) -> Result<ControlFlow<(), Tensor>> {
        let mut h = self.embed(x)?;
        let kind = self.compute_kind;
        let weights = self.step_weights(ctx);
        let pass = Pass {
            cfg: &self.cfg,
            ctx,
            kind,
            sampler: &self.sampler,
            weights: weights.as_ref(),
            explicit_attention: self.explicit_attention,
        };
        let depth = self.backbone.blocks.len();
        for blk in &self.backbone.blocks {
            // Only the class token leaves the last block: there, the other tokens serve as
            // keys and values only, so its queries, projection and MLP run on one token.
            let rows = if blk.index + 1 == depth { last } else { Rows::All };
            h = match blk.forward(h, &pass, rows, hook) {
                ControlFlow::Continue(h) => h,
                ControlFlow::Break(()) => return Ok(ControlFlow::Break(())),
            };
        }
        // The final norm is per token, so normalising only the class token is timm's result.
        let cls = self.backbone.norm.forward(&h.select(1, 0), self.cfg.eps);
        Ok(ControlFlow::Continue(self.head.forward(&cast(&cls, kind), kind).to_kind(Kind::Float)))
    }

    /// Every adapter's host-drawn weights for the forward `ctx`, in one upload.
    fn step_weights(&self, ctx: &ForwardCtx) -> Option<StepWeights> {
        let mut per_layer: Vec<Option<Vec<f32>>> = vec![None; self.adapted.len()];
        for (_, layer) in self.adapted_layers() {
            for (index, w) in layer.step_weights(ctx, &self.sampler) {
                per_layer[index] = w;
            }
        }
        StepWeights::upload(per_layer, self.device)
    }

    /// The input of one linear layer (`(batch, tokens, in)`, f32, no grad) at inference, for
    /// analysis tools: [`AdaptedVit::forward_with`], stopped at that layer.
    pub fn layer_input(&self, x: &Tensor, block: usize, target: TargetLayer) -> Result<Tensor> {
        if block >= self.backbone.blocks.len() {
            return Err(VitError::Config(format!(
                "block {block} does not exist; the model has {} blocks",
                self.backbone.blocks.len()
            )));
        }
        // a q/k/v slice reads the fused qkv's input
        let want = LayerSite { block, target: target.fused() };
        let mut input = None;
        tch::no_grad(|| {
            self.forward_with(x, &ForwardCtx::eval(), &mut |id, t| {
                if id == want {
                    input = Some(t.to_kind(Kind::Float));
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            })
        })?;
        Ok(input.expect("every linear layer of an existing block is observed"))
    }

    /// Patch embedding, class token and position table: `(batch, tokens, dim)`.
    fn embed(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let p = self.cfg.patch_size;
        if size.len() != 4 || size[1] != self.cfg.in_chans || size[2] < p || size[3] < p {
            return Err(VitError::Config(format!(
                "input has shape {size:?}; expected (batch, {}, h, w) with h, w >= {p}",
                self.cfg.in_chans
            )));
        }
        let kind = self.compute_kind;
        let bb = &self.backbone;
        let t = cast(x, kind).conv2d(
            &cast(&bb.patch_weight, kind),
            Some(cast(&bb.patch_bias, kind)),
            [p, p],
            [0, 0],
            [1, 1],
            1,
        );
        let (gh, gw) = (size[2] / p, size[3] / p);
        // The residual stream starts in fp32 in any compute kind (autocast promotes the
        // concatenation with the fp32 class token, and the sum with the position table).
        let f = Kind::Float;
        let t = cast(&t, f).flatten(2, 3).transpose(1, 2);
        let cls = cast(&bb.cls_token, f).expand([size[0], -1, -1], false);
        let g = self.cfg.grid();
        let pos = if (gh, gw) == (g, g) {
            cast(&bb.pos_embed, f)
        } else {
            resample_pos_embed(&cast(&bb.pos_embed, f), (gh, gw), 1, self.pos_resize())?
        };
        Ok(Tensor::cat(&[cls, t], 1) + pos)
    }

    /// Folds every adapter into its frozen weight (`W += dW`, per layer), so the forward is the
    /// base model's (no adapter path at all, base-model speed). Computed and stored in f32; a
    /// model whose frozen weights are stored in bf16 is refused. A merged model is for inference and export: its adapters get no
    /// gradient. Models without adapters (`linear-probe`, `full`) have nothing to merge.
    pub fn merge(&mut self) -> Result<()> {
        if self.is_merged() {
            return Err(VitError::Config("the adapters are already merged".into()));
        }
        // A bf16 weight would round most of a small update away (and unmerge could not undo it).
        if let Some(id) =
            self.adapted_linears().into_iter().find(|id| self.layer(*id).base.weight.kind() != Kind::Float)
        {
            return Err(VitError::Config(format!(
                "cannot merge into {}: its frozen weight is stored in {:?}, which would round the update; \
                 merge a model loaded in fp32 (mlae-cli export does)",
                id.name(),
                self.layer(id).base.weight.kind()
            )));
        }
        for id in self.adapted_linears() {
            self.layer_mut(id).merge()?;
        }
        Ok(())
    }

    /// Undoes [`AdaptedVit::merge`] (`W -= dW`, dW recomputed bit-identically from the same
    /// factors). In f32 the weights come back to within one rounding of `W + dW` (|error| <=
    /// ulp(|W| + |dW|)); exactly where that sum is exact.
    pub fn unmerge(&mut self) -> Result<()> {
        if !self.is_merged() {
            return Err(VitError::Config("the adapters are not merged".into()));
        }
        for id in self.adapted_linears() {
            if self.layer(id).is_merged() {
                self.layer_mut(id).unmerge()?;
            }
        }
        Ok(())
    }
}

/// Whether a backbone tensor (timm name) feeds a matrix product: what autocast casts to the
/// compute kind. Norms, the class token, the position table and layer scales stay fp32.
fn is_matmul_weight(name: &str) -> bool {
    ["patch_embed.proj.", ".attn.qkv.", ".attn.proj.", ".mlp.fc1.", ".mlp.fc2."]
        .iter()
        .any(|p| name.contains(p))
        && (name.ends_with(".weight") || name.ends_with(".bias"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlae_core::AdapterSpec;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    fn tiny_cfg() -> VitConfig {
        VitConfig {
            preset: None,
            patch_size: 4,
            dim: 16,
            depth: 3,
            heads: 2,
            mlp_dim: 32,
            in_chans: 3,
            image_size: 16,
            num_classes: 5,
            qkv_bias: true,
            layer_scale: true,
            layer_scale_init: 0.5,
            drop_path: 0.0,
            eps: 1e-6,
        }
    }

    /// Attention written out gives the fused kernel's logits and adapter gradients (to float
    /// rounding), and switching it off again gives the default path's exact logits.
    #[test]
    fn written_out_attention_matches_the_fused_kernel() {
        tch::manual_seed(3);
        let cfg = tiny_cfg();
        let mlae = mlae_core::MlaeSpec { experts: 2, ..Default::default() };
        let spec = AdapterSpec { mlae, targets: vec![TargetLayer::Qkv], ..Default::default() };
        let mut model = AdaptedVit::new(&cfg, &spec, 7, Device::Cpu).unwrap();
        // a trained-looking adapter, so that its gradient is not trivial
        tch::no_grad(|| {
            for (_, mut t, _) in model.trainable() {
                let noise = Tensor::randn_like(&t) * 0.1;
                let _ = t.g_add_(&noise);
            }
        });
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let run = |model: &AdaptedVit| {
            let logits = model.forward_t(&x, &ForwardCtx::eval());
            let grads = tch::Tensor::run_backward(
                &[logits.square().sum(Kind::Float)],
                &model.trainable().into_iter().map(|(_, t, _)| t).collect::<Vec<_>>(),
                false,
                false,
            );
            (logits.detach(), grads)
        };
        let (fused, fused_grads) = run(&model);
        model.set_explicit_attention(true);
        let (explicit, explicit_grads) = run(&model);
        assert!(max_diff(&fused, &explicit) < 1e-5, "{}", max_diff(&fused, &explicit));
        for (a, b) in fused_grads.iter().zip(&explicit_grads) {
            assert!(max_diff(a, b) < 1e-5, "{}", max_diff(a, b));
        }
        model.set_explicit_attention(false);
        assert!(run(&model).0.equal(&fused), "off again, the default path");
    }

    /// The model's forward (class token only in the last block) against every block computed
    /// on every token, for logits and for the adapters' gradients.
    #[test]
    fn the_last_block_on_the_class_token_changes_nothing() {
        tch::manual_seed(1);
        let cfg = tiny_cfg();
        let targets = vec![TargetLayer::Qkv, TargetLayer::Proj, TargetLayer::Fc1, TargetLayer::Fc2];
        let mlae = mlae_core::MlaeSpec { experts: 3, expert_dropout: 0.5, ..Default::default() };
        let spec = AdapterSpec { mlae, targets, ..Default::default() };
        let model = AdaptedVit::new(&cfg, &spec, 7, Device::Cpu).unwrap();
        tch::no_grad(|| {
            for (_, mut t, _) in model.trainable() {
                t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.2));
            }
        });
        let x = Tensor::randn([3, 3, 16, 16], (Kind::Float, Device::Cpu));
        // the observed forward computes every token in every block
        let mut seen = Vec::new();
        let mut full = |ctx: &ForwardCtx| {
            seen.clear();
            let mut hook = |id: LayerSite, _: &Tensor| {
                seen.push(id);
                ControlFlow::Continue(())
            };
            model.forward_with(&x, ctx, &mut hook).unwrap().unwrap()
        };
        let params: Vec<Tensor> = model.trainable().into_iter().map(|(_, t, _)| t).collect();
        for ctx in [ForwardCtx::eval(), ForwardCtx::train(3, 10)] {
            let (fast, reference) = (model.forward_t(&x, &ctx), full(&ctx));
            assert!(max_diff(&fast, &reference) < 1e-5, "{ctx:?}");
            let g_fast = Tensor::run_backward(&[fast.sum(Kind::Float)], &params, false, false);
            let g_ref = Tensor::run_backward(&[reference.sum(Kind::Float)], &params, false, false);
            for (a, r) in g_fast.iter().zip(&g_ref) {
                assert!(max_diff(a, r) < 1e-4, "{ctx:?}: {}", max_diff(a, r));
            }
        }
        // the hook saw every linear layer once, in forward order
        let order: Vec<String> = seen.iter().map(LayerSite::name).collect();
        assert_eq!(order.len(), 3 * 4);
        assert_eq!(
            order[..4],
            ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
        );
        assert_eq!(order[11], "blocks.2.mlp.fc2");
    }

    /// In bf16 the residual stream between blocks is fp32, as under autocast; the matrix
    /// products compute in bf16.
    #[test]
    fn the_residual_stream_stays_fp32_in_bf16() {
        let spec = AdapterSpec { targets: vec![TargetLayer::Qkv, TargetLayer::Fc2], ..Default::default() };
        let mut model = AdaptedVit::new(&tiny_cfg(), &spec, 3, Device::Cpu).unwrap();
        model.set_compute_kind(Kind::BFloat16);
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let ctx = ForwardCtx::train(0, 10);
        let mut h = model.embed(&x).unwrap();
        assert_eq!(h.kind(), Kind::Float);
        let pass = Pass {
            cfg: &model.cfg,
            ctx: &ctx,
            kind: Kind::BFloat16,
            sampler: &model.sampler,
            weights: None,
            explicit_attention: false,
        };
        for blk in &model.backbone.blocks {
            let mut kinds = Vec::new();
            let mut hook = |id: LayerSite, t: &Tensor| {
                kinds.push((id.target, t.kind()));
                ControlFlow::Continue(())
            };
            h = blk.forward(h, &pass, Rows::All, &mut hook).continue_value().unwrap();
            assert_eq!(h.kind(), Kind::Float, "block {} output", blk.index);
            // the norms hand fp32 to qkv and fc1; attention and GELU hand bf16 to proj and fc2
            let want = [Kind::Float, Kind::BFloat16, Kind::Float, Kind::BFloat16];
            assert_eq!(kinds.iter().map(|k| k.1).collect::<Vec<_>>(), want, "block {}", blk.index);
        }
        assert_eq!(model.forward_t(&x, &ctx).kind(), Kind::Float);
    }

    #[test]
    fn merge_state_is_per_layer() {
        let spec = AdapterSpec { targets: vec![TargetLayer::Fc1], ..Default::default() };
        let mut model = AdaptedVit::new(&tiny_cfg(), &spec, 3, Device::Cpu).unwrap();
        let fc1 = LayerSite { block: 1, target: TargetLayer::Fc1 };
        let qkv = LayerSite { block: 1, target: TargetLayer::Qkv };
        tch::no_grad(|| {
            for (_, mut t, _) in model.trainable() {
                t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.2));
            }
        });
        let before = model.linear(fc1).unwrap().base().weight().copy();
        let delta = model.linear(fc1).unwrap().delta(TargetLayer::Fc1).unwrap();
        assert!(!model.is_merged());
        model.merge().unwrap();
        assert!(model.linear(fc1).unwrap().is_merged());
        assert!(!model.linear(qkv).unwrap().is_merged(), "a layer without adapter has nothing to merge");
        assert!(model.linear(fc1).unwrap().base().weight().equal(&(&before + &delta)));
        assert!(model.linear(LayerSite { block: 3, target: TargetLayer::Fc1 }).is_none());
        model.unmerge().unwrap();
        assert!(!model.is_merged() && !model.linear(fc1).unwrap().is_merged());
        assert!(max_diff(model.linear(fc1).unwrap().base().weight(), &before) < 1e-6);
        // without adapters there is nothing to merge, and nothing is merged
        let mut probe = AdaptedVit::new(
            &tiny_cfg(),
            &AdapterSpec { kind: mlae_core::AdapterKind::LinearProbe, ..Default::default() },
            3,
            Device::Cpu,
        )
        .unwrap();
        probe.merge().unwrap();
        assert!(!probe.is_merged());
        assert!(probe.unmerge().is_err());
    }
}
