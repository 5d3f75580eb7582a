//! The ViT (timm's layout and names) with adapter hooks on its linear layers.
//!
//! Frozen and trainable tensors live apart: the backbone's tensors never require grad (except
//! in `full` fine-tuning), and [`AdaptedVit::trainable`] hands the optimizer exactly the head
//! and adapter tensors. Autograd therefore records nothing for frozen weights, and a linear
//! probe's backbone forward builds no graph at all.

use crate::adapter::{self, AdapterCtx, AdapterLayer, ParamRole, cast};
use crate::config::VitConfig;
use crate::error::{Result, VitError};
use crate::init;
use crate::pos_embed::{PosResample, resample_pos_embed};
use mlae_core::{AdapterKind, AdapterPlan, AdapterSpec, MaskSampler, ParamCount, TargetLayer};
use tch::{Device, Kind, Tensor};

/// What a forward pass needs to know: training or inference, and the step clock that masks,
/// DMLoRA's schedule and nothing else read. Dropout and drop-path draw from libtorch's RNG,
/// which the training loop seeds per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForwardCtx {
    pub train: bool,
    pub step: u64,
    pub total_steps: u64,
}

impl ForwardCtx {
    /// Inference: every expert on and unscaled, no dropout, no drop-path.
    pub fn eval() -> Self {
        ForwardCtx { train: false, step: 0, total_steps: 0 }
    }

    /// Training step `step` of `total_steps`.
    pub fn train(step: u64, total_steps: u64) -> Self {
        ForwardCtx { train: true, step, total_steps }
    }
}

/// Which tokens a block computes its output for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Every token (every block but the last, and analysis).
    All,
    /// Only the class token, the only one the head reads after the last block.
    ClassToken,
}

pub(crate) struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor, kind: Kind) -> Tensor {
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
pub(crate) fn linear_onednn(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
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

pub(crate) struct Norm {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Norm {
    fn forward(&self, x: &Tensor, eps: f64, kind: Kind) -> Tensor {
        let d = self.weight.size()[0];
        x.layer_norm([d], Some(cast(&self.weight, kind)), Some(cast(&self.bias, kind)), eps, true)
    }
}

pub(crate) struct Block {
    pub norm1: Norm,
    pub qkv: Linear,
    pub proj: Linear,
    pub ls1: Option<Tensor>,
    pub norm2: Norm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub ls2: Option<Tensor>,
}

/// Lists a block's tensors with their timm names (after `blocks.N.`), by `&` or `&mut`.
macro_rules! block_tensors {
    ($b:expr, $($r:tt)+) => {{
        let b = $b;
        let mut v = Vec::with_capacity(14);
        v.push(("norm1.weight", $($r)+ b.norm1.weight));
        v.push(("norm1.bias", $($r)+ b.norm1.bias));
        v.push(("attn.qkv.weight", $($r)+ b.qkv.weight));
        if let Some(t) = $($r)+ b.qkv.bias { v.push(("attn.qkv.bias", t)); }
        v.push(("attn.proj.weight", $($r)+ b.proj.weight));
        if let Some(t) = $($r)+ b.proj.bias { v.push(("attn.proj.bias", t)); }
        if let Some(t) = $($r)+ b.ls1 { v.push(("ls1.gamma", t)); }
        v.push(("norm2.weight", $($r)+ b.norm2.weight));
        v.push(("norm2.bias", $($r)+ b.norm2.bias));
        v.push(("mlp.fc1.weight", $($r)+ b.fc1.weight));
        if let Some(t) = $($r)+ b.fc1.bias { v.push(("mlp.fc1.bias", t)); }
        v.push(("mlp.fc2.weight", $($r)+ b.fc2.weight));
        if let Some(t) = $($r)+ b.fc2.bias { v.push(("mlp.fc2.bias", t)); }
        if let Some(t) = $($r)+ b.ls2 { v.push(("ls2.gamma", t)); }
        v
    }};
}

impl Block {
    fn linear(&self, target: TargetLayer) -> &Linear {
        match target {
            TargetLayer::Qkv => &self.qkv,
            TargetLayer::Proj => &self.proj,
            TargetLayer::Fc1 => &self.fc1,
            TargetLayer::Fc2 => &self.fc2,
        }
    }
}

/// The frozen part: everything but the head.
pub(crate) struct Backbone {
    pub cls_token: Tensor,
    pub pos_embed: Tensor,
    pub patch_weight: Tensor,
    pub patch_bias: Tensor,
    pub blocks: Vec<Block>,
    pub norm: Norm,
}

impl Backbone {
    /// timm's initialisation (`init_weights_vit_timm`): linear weights trunc-normal(0.02) with
    /// zero bias, position table trunc-normal(0.02), class token normal(1e-6), patch
    /// convolution PyTorch's default U(+-1/sqrt(fan_in)), norms 1/0, layer-scale `layer_scale_init`.
    fn random(cfg: &VitConfig, seed: u64, device: Device) -> Backbone {
        let (d, h) = (cfg.dim, cfg.mlp_dim);
        let lin = |name: &str, out: i64, inn: i64, bias: bool| Linear {
            weight: init::trunc_normal(seed, name, &[out, inn], 0.02, device),
            bias: bias.then(|| Tensor::zeros([out], (Kind::Float, device))),
        };
        let norm = || Norm { weight: init::full(&[d], 1.0, device), bias: init::full(&[d], 0.0, device) };
        let ls = || cfg.layer_scale.then(|| init::full(&[d], cfg.layer_scale_init, device));
        let fan_in = cfg.in_chans * cfg.patch_size * cfg.patch_size;
        let bound = 1.0 / (fan_in as f64).sqrt();
        Backbone {
            cls_token: init::normal(seed, "cls_token", &[1, 1, d], 1e-6, device),
            pos_embed: init::trunc_normal(seed, "pos_embed", &[1, cfg.num_tokens(), d], 0.02, device),
            patch_weight: init::uniform(
                seed,
                "patch_embed.proj.weight",
                &[d, cfg.in_chans, cfg.patch_size, cfg.patch_size],
                -bound,
                bound,
                device,
            ),
            patch_bias: init::uniform(seed, "patch_embed.proj.bias", &[d], -bound, bound, device),
            blocks: (0..cfg.depth)
                .map(|i| {
                    let n = |s: &str| format!("blocks.{i}.{s}");
                    Block {
                        norm1: norm(),
                        qkv: lin(&n("attn.qkv.weight"), 3 * d, d, cfg.qkv_bias),
                        proj: lin(&n("attn.proj.weight"), d, d, true),
                        ls1: ls(),
                        norm2: norm(),
                        fc1: lin(&n("mlp.fc1.weight"), h, d, true),
                        fc2: lin(&n("mlp.fc2.weight"), d, h, true),
                        ls2: ls(),
                    }
                })
                .collect(),
            norm: norm(),
        }
    }

    /// Every tensor with its timm name, in timm's state-dict order.
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        let mut v = vec![
            ("cls_token".to_string(), &self.cls_token),
            ("pos_embed".to_string(), &self.pos_embed),
            ("patch_embed.proj.weight".to_string(), &self.patch_weight),
            ("patch_embed.proj.bias".to_string(), &self.patch_bias),
        ];
        for (i, b) in self.blocks.iter().enumerate() {
            v.extend(block_tensors!(b, &).into_iter().map(|(n, t)| (format!("blocks.{i}.{n}"), t)));
        }
        v.push(("norm.weight".to_string(), &self.norm.weight));
        v.push(("norm.bias".to_string(), &self.norm.bias));
        v
    }

    /// [`Backbone::tensors`], mutably (to cast or replace them).
    pub fn tensors_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut v = vec![
            ("cls_token".to_string(), &mut self.cls_token),
            ("pos_embed".to_string(), &mut self.pos_embed),
            ("patch_embed.proj.weight".to_string(), &mut self.patch_weight),
            ("patch_embed.proj.bias".to_string(), &mut self.patch_bias),
        ];
        for (i, b) in self.blocks.iter_mut().enumerate() {
            v.extend(block_tensors!(b, &mut).into_iter().map(|(n, t)| (format!("blocks.{i}.{n}"), t)));
        }
        v.push(("norm.weight".to_string(), &mut self.norm.weight));
        v.push(("norm.bias".to_string(), &mut self.norm.bias));
        v
    }
}

/// A fresh classifier as timm makes one: weight trunc-normal(std 0.02), bias 0.
pub(crate) fn fresh_head(cfg: &VitConfig, seed: u64, device: Device) -> (Tensor, Tensor) {
    (
        init::trunc_normal(seed, "head.weight", &[cfg.num_classes, cfg.dim], 0.02, device),
        Tensor::zeros([cfg.num_classes], (Kind::Float, device)),
    )
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

fn target_index(t: TargetLayer) -> usize {
    match t {
        TargetLayer::Qkv => 0,
        TargetLayer::Proj => 1,
        TargetLayer::Fc1 => 2,
        TargetLayer::Fc2 => 3,
    }
}

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
    /// In plan order; the index is the `layer` of the mask draws.
    pub(crate) adapters: Vec<Box<dyn AdapterLayer>>,
    /// `slots[block][target_index]` = index into `adapters`.
    slots: Vec<[Option<usize>; 4]>,
    pub(crate) merged: bool,
    /// How the position table is resized for inputs of another size: the convention of the
    /// checkpoint loaded last (timm's until one is loaded).
    pub(crate) pos_resample: PosResample,
}

impl std::fmt::Debug for AdaptedVit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptedVit")
            .field("config", &self.cfg)
            .field("kind", &self.plan.kind)
            .field("adapted_layers", &self.adapters.len())
            .field("device", &self.device)
            .field("compute_kind", &self.compute_kind)
            .field("merged", &self.merged)
            .finish()
    }
}

impl AdaptedVit {
    /// A randomly initialised model with the adapters of `spec`. `seed` drives the
    /// initialisation of every tensor (adapters, head, and the backbone until a checkpoint is
    /// loaded) and is the [`MaskSampler`] seed of the expert masks.
    ///
    /// The head is trunc-normal(std 0.02, cut at 2 std) with zero bias, as timm initialises a
    /// fresh classifier. Adapter A matrices are Kaiming-uniform(a = sqrt 5) = U(+-1/sqrt(in)),
    /// B zero, so a fresh adapter leaves the model's outputs unchanged.
    pub fn new(cfg: &VitConfig, spec: &AdapterSpec, seed: u64, device: Device) -> Result<Self> {
        cfg.validate()?;
        let plan = spec.resolve(cfg.depth as usize)?;
        let mut backbone = Backbone::random(cfg, seed, device);
        if plan.kind == AdapterKind::Full {
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
            adapters: Vec::new(),
            slots: vec![[None; 4]; cfg.depth as usize],
            merged: false,
            pos_resample: PosResample::Timm,
        };
        model.build_adapters(&plan)?;
        Ok(model)
    }

    /// (Re)builds the adapters of `plan`, freshly initialised.
    pub(crate) fn build_adapters(&mut self, plan: &AdapterPlan) -> Result<()> {
        let dims = self.cfg.dims();
        let mut adapters = Vec::with_capacity(plan.layers.len());
        let mut slots = vec![[None; 4]; self.cfg.depth as usize];
        for (i, layer) in plan.layers.iter().enumerate() {
            let (inn, out) = mlae_core::layer_in_out(layer.target, &dims);
            let name = layer.name();
            let init = adapter::Init {
                plan: layer,
                in_dim: inn as i64,
                out_dim: out as i64,
                seed: self.seed,
                name: &name,
                device: self.device,
            };
            adapters.push(adapter::build(plan, &init)?);
            slots[layer.block][target_index(layer.target)] = Some(i);
        }
        self.adapters = adapters;
        self.slots = slots;
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

    /// Whether the adapters are merged into the frozen weights.
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// The adapter on a linear layer, if any (A, B, coefficients through
    /// [`AdapterLayer::factors`]).
    pub fn adapter(&self, block: usize, target: TargetLayer) -> Option<&dyn AdapterLayer> {
        let i = self.slots.get(block)?[target_index(target)]?;
        Some(self.adapters[i].as_ref())
    }

    /// Every adapter, in plan order.
    pub fn adapters(&self) -> impl Iterator<Item = &dyn AdapterLayer> {
        self.adapters.iter().map(|a| a.as_ref())
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
        self.plan.kind == AdapterKind::Full
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
        for a in &self.adapters {
            let prefix = a.layer_plan().name();
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
        let adapter: usize = self.adapters.iter().flat_map(|a| a.params()).map(|(_, t, _)| n(t)).sum();
        let trainable = self.trainable().iter().map(|(_, t, _)| n(t)).sum();
        ParamCount { adapter, head, backbone, trainable, total: backbone + head + adapter }
    }

    /// Casts the frozen backbone to `kind` (e.g. `Kind::BFloat16`) and computes in it; the
    /// trainable tensors stay f32 master weights and are cast in the forward. Casting back to
    /// f32 later does not restore the precision the cast lost.
    pub fn set_compute_kind(&mut self, kind: Kind) {
        if !self.backbone_trainable() {
            for (_, t) in self.backbone.tensors_mut() {
                if t.kind() != kind {
                    *t = t.to_kind(kind);
                }
            }
        }
        self.compute_kind = kind;
    }

    /// Logits `(batch, classes)`, f32, for images `(batch, channels, h, w)` (f32 or the
    /// compute kind). Any image size works: when the patch grid differs from the configured
    /// one, the position table is resampled on the fly (in the convention of the loaded
    /// checkpoint, see [`PosResample`]).
    ///
    /// # Panics
    /// On an input of the wrong shape (see [`AdaptedVit::try_forward_t`]).
    pub fn forward_t(&self, x: &Tensor, ctx: &ForwardCtx) -> Tensor {
        self.try_forward_t(x, ctx).unwrap_or_else(|e| panic!("AdaptedVit::forward_t: {e}"))
    }

    /// [`AdaptedVit::forward_t`], returning an error for an input of the wrong shape.
    pub fn try_forward_t(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let mut h = self.embed(x)?;
        let depth = self.backbone.blocks.len();
        for i in 0..depth {
            // Only the class token leaves the last block: there, the other tokens serve as
            // keys and values only, so its queries, projection and MLP run on one token.
            let rows = if i + 1 == depth { Rows::ClassToken } else { Rows::All };
            h = self.block_forward(i, h, ctx, None, rows);
        }
        let kind = self.compute_kind;
        // The final norm is per token, so normalising only the class token is timm's result.
        let cls = self.backbone.norm.forward(&h.select(1, 0), self.cfg.eps, kind);
        Ok(self.head.forward(&cls, kind).to_kind(Kind::Float))
    }

    /// The input of one linear layer (`(batch, tokens, in)`, f32, no grad) at inference, for
    /// analysis tools.
    pub fn layer_input(&self, x: &Tensor, block: usize, target: TargetLayer) -> Result<Tensor> {
        if block >= self.backbone.blocks.len() {
            return Err(VitError::Config(format!(
                "block {block} does not exist; the model has {} blocks",
                self.backbone.blocks.len()
            )));
        }
        let ctx = ForwardCtx::eval();
        tch::no_grad(|| {
            let mut h = self.embed(x)?;
            for i in 0..block {
                h = self.block_forward(i, h, &ctx, None, Rows::All);
            }
            Ok(self.block_forward(block, h, &ctx, Some(target), Rows::All).to_kind(Kind::Float))
        })
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
        let t = t.flatten(2, 3).transpose(1, 2);
        let cls = cast(&bb.cls_token, kind).expand([size[0], -1, -1], false);
        let g = self.cfg.grid();
        let pos = if (gh, gw) == (g, g) {
            cast(&bb.pos_embed, kind)
        } else {
            resample_pos_embed(&cast(&bb.pos_embed, kind), (gh, gw), 1, self.pos_resample)?
        };
        Ok(Tensor::cat(&[cls, t], 1) + pos)
    }

    /// A linear layer of block `block` on `x: (batch, tokens, in)`, through its adapter
    /// unless merged.
    fn linear(&self, block: usize, target: TargetLayer, x: &Tensor, ctx: &ForwardCtx) -> Tensor {
        let lin = self.backbone.blocks[block].linear(target);
        let kind = self.compute_kind;
        match self.slots[block][target_index(target)] {
            Some(i) if !self.merged => {
                let (b, n) = (x.size()[0], x.size()[1]);
                let x2 = x.flatten(0, 1);
                let base = lin.forward(&x2, kind);
                let actx = AdapterCtx {
                    train: ctx.train,
                    step: ctx.step,
                    total_steps: ctx.total_steps,
                    layer: i,
                    sampler: &self.sampler,
                };
                self.adapters[i].forward(&x2, base, &actx).view([b, n, -1])
            }
            _ => lin.forward(x, kind),
        }
    }

    /// One pre-norm block; with `stop_at`, returns the input of that linear layer instead.
    /// With [`Rows::ClassToken`] it returns `(batch, 1, dim)`: the class token's output, exactly
    /// as in the full block (attention still reads every token's keys and values).
    fn block_forward(
        &self,
        i: usize,
        x: Tensor,
        ctx: &ForwardCtx,
        stop_at: Option<TargetLayer>,
        rows: Rows,
    ) -> Tensor {
        let blk = &self.backbone.blocks[i];
        let (kind, eps) = (self.compute_kind, self.cfg.eps);
        let rate = self.cfg.drop_path_at(i);
        let (b, n, d) = x.size3().expect("tokens are (batch, tokens, dim)");
        let heads = self.cfg.heads;

        let y = blk.norm1.forward(&x, eps, kind);
        if stop_at == Some(TargetLayer::Qkv) {
            return y;
        }
        let qkv = self
            .linear(i, TargetLayer::Qkv, &y, ctx)
            .view([b, n, 3, heads, d / heads])
            .permute([2, 0, 3, 1, 4]);
        // `unbind`, not three `select`s: its backward stacks the three gradients into one
        // tensor, where each select's backward would fill a zero tensor of qkv's full size.
        let qkv = qkv.unbind(0);
        let (k, v) = (&qkv[1], &qkv[2]);
        let (q, x, n) = match rows {
            Rows::All => (qkv[0].shallow_clone(), x, n),
            Rows::ClassToken => (qkv[0].narrow(2, 0, 1), x.narrow(1, 0, 1), 1),
        };
        let o = Tensor::scaled_dot_product_attention(&q, k, v, None::<Tensor>, 0.0, false, None, false);
        let o = o.transpose(1, 2).reshape([b, n, d]);
        if stop_at == Some(TargetLayer::Proj) {
            return o;
        }
        let mut o = self.linear(i, TargetLayer::Proj, &o, ctx);
        if let Some(g) = &blk.ls1 {
            o = o.g_mul(&cast(g, kind));
        }
        let x = x + drop_path(o, rate, ctx.train);

        let y = blk.norm2.forward(&x, eps, kind);
        if stop_at == Some(TargetLayer::Fc1) {
            return y;
        }
        let hdn = self.linear(i, TargetLayer::Fc1, &y, ctx).gelu("none");
        if stop_at == Some(TargetLayer::Fc2) {
            return hdn;
        }
        let mut o = self.linear(i, TargetLayer::Fc2, &hdn, ctx);
        if let Some(g) = &blk.ls2 {
            o = o.g_mul(&cast(g, kind));
        }
        x + drop_path(o, rate, ctx.train)
    }

    /// Folds every adapter into its frozen weight (`W += dW`), so the forward is the base
    /// model's (no adapter path at all, base-model speed). Computed in f32; a bf16 weight is
    /// rounded once. A merged model is for inference and export: its adapters get no gradient.
    /// Models without adapters (`linear-probe`, `full`) have nothing to merge.
    pub fn merge(&mut self) -> Result<()> {
        if self.merged {
            return Err(VitError::Config("the adapters are already merged".into()));
        }
        self.apply_deltas(1.0);
        self.merged = !self.adapters.is_empty();
        Ok(())
    }

    /// Undoes [`AdaptedVit::merge`] (`W -= dW`, dW recomputed bit-identically from the same
    /// factors). In f32 the weights come back to within one rounding of `W + dW` (|error| <=
    /// ulp(|W| + |dW|)); exactly where that sum is exact.
    pub fn unmerge(&mut self) -> Result<()> {
        if !self.merged {
            return Err(VitError::Config("the adapters are not merged".into()));
        }
        self.apply_deltas(-1.0);
        self.merged = false;
        Ok(())
    }

    fn apply_deltas(&mut self, sign: f64) {
        tch::no_grad(|| {
            for (i, a) in self.adapters.iter().enumerate() {
                let l = a.layer_plan();
                let delta = a.merged_delta();
                let w = &mut self.backbone.blocks[l.block].linear_mut(l.target).weight;
                debug_assert_eq!(w.size(), delta.size(), "adapter {i}");
                if w.kind() == Kind::Float {
                    let _ = if sign > 0.0 { w.g_add_(&delta) } else { w.g_sub_(&delta) };
                } else {
                    let merged = (w.to_kind(Kind::Float) + delta * sign).to_kind(w.kind());
                    w.copy_(&merged);
                }
            }
        });
    }
}

impl Block {
    fn linear_mut(&mut self, target: TargetLayer) -> &mut Linear {
        match target {
            TargetLayer::Qkv => &mut self.qkv,
            TargetLayer::Proj => &mut self.proj,
            TargetLayer::Fc1 => &mut self.fc1,
            TargetLayer::Fc2 => &mut self.fc2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlae_core::AdapterSpec;

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

    /// The model's forward (class token only in the last block) against every block computed
    /// on every token, for logits and for the adapters' gradients.
    #[test]
    fn the_last_block_on_the_class_token_changes_nothing() {
        tch::manual_seed(1);
        let cfg = VitConfig {
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
        };
        let targets = vec![TargetLayer::Qkv, TargetLayer::Proj, TargetLayer::Fc1, TargetLayer::Fc2];
        let spec = AdapterSpec { experts: 3, dropout: 0.5, targets, ..Default::default() };
        let model = AdaptedVit::new(&cfg, &spec, 7, Device::Cpu).unwrap();
        tch::no_grad(|| {
            for (_, mut t, _) in model.trainable() {
                t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.2));
            }
        });
        let x = Tensor::randn([3, 3, 16, 16], (Kind::Float, Device::Cpu));
        let full = |ctx: &ForwardCtx| {
            let mut h = model.embed(&x).unwrap();
            for i in 0..3 {
                h = model.block_forward(i, h, ctx, None, Rows::All);
            }
            let cls = model.backbone.norm.forward(&h.select(1, 0), cfg.eps, Kind::Float);
            model.head.forward(&cls, Kind::Float)
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
    }
}
