//! Matrix-product FLOPs of a ViT's training step, counted from its sizes.
//!
//! The bench divides achieved FLOP/s by the machine's measured matmul peak, to say how far a
//! step is from what the hardware can do. Only matrix products count (the patch projection,
//! qkv, proj, fc1, fc2, attention's two products, the head and the adapters' low-rank pairs),
//! at 2 FLOPs per multiply-add. Norms, softmax, GELU and the optimizer are left out (a few per
//! cent of the work at these sizes).
//!
//! These are the model's FLOPs, the same for every implementation (a model-FLOP utilisation):
//! an implementation that skips work is credited with the full count. mlae-vit's last block
//! computes its queries, proj and MLP for the class token only, which skips more work than the
//! left-out elementwise operations add, so the fraction computed from this count is a slight
//! overestimate of the machine's real use.
//!
//! The backward pass computes the gradient of every product's input from the first block up
//! (the patch projection's input is pixels, which need none) and the gradient of every trained
//! weight. This counts the input gradient of block 0's qkv, which a frozen backbone does not
//! need: at most 1/48 of the backward pass of a 12-block model.

use crate::methods::AdapterPlan;
use crate::params::{ModelDims, layer_in_out};
use crate::target::TargetLayer;
use serde::Serialize;

/// FLOPs per image of one training step, split by pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepFlops {
    pub forward: f64,
    pub backward: f64,
}

impl StepFlops {
    /// Forward plus backward, per image.
    pub fn step(&self) -> f64 {
        self.forward + self.backward
    }
}

/// What trains: a low-rank pair on each adapted layer of the model, as (target, rank of the
/// update) (MLAE's `experts * expert_rank`, LoRA's `rank`, DMLoRA's `branches *
/// branch_rank`; none for a linear probe), and whether every backbone weight trains too (full
/// fine-tuning).
#[derive(Debug, Clone, PartialEq)]
pub struct Trained {
    pub adapters: Vec<(TargetLayer, usize)>,
    pub backbone: bool,
}

impl Trained {
    /// What `plan` trains, as the plan says it ([`crate::MethodPlan::update_rank`] of each of
    /// its sites, [`crate::MethodPlan::trains_backbone`]): no method is named here.
    ///
    /// ```
    /// use mlae_core::flops::Trained;
    /// use mlae_core::{AdapterSpec, TargetLayer};
    /// let t = Trained::of(&AdapterSpec::default().resolve(2).unwrap());
    /// assert_eq!(t, Trained { adapters: vec![(TargetLayer::Qkv, 8); 2], backbone: false });
    /// ```
    pub fn of(plan: &AdapterPlan) -> Trained {
        let m = plan.method();
        Trained {
            adapters: m.sites().into_iter().map(|s| (s.target, m.update_rank(s))).collect(),
            backbone: m.trains_backbone(),
        }
    }
}

/// FLOPs per image of a training step: forward, then backward as described in the module.
///
/// ```
/// use mlae_core::ModelDims;
/// use mlae_core::flops::{Trained, train_step_flops};
/// let d = ModelDims::vit_b16(100, 224);
/// let probe = Trained { adapters: vec![], backbone: false };
/// // ViT-B/16 at 224 px: the usual 17.6 G multiply-adds per forward, 35.1 GFLOPs
/// let f = train_step_flops(&d, &probe);
/// assert!((f.forward / 1e9 - 35.1).abs() < 0.1, "{}", f.forward / 1e9);
/// ```
pub fn train_step_flops(d: &ModelDims, trained: &Trained) -> StepFlops {
    let n = (d.num_patches + 1) as f64;
    let (dim, mlp) = (d.dim as f64, d.mlp_dim as f64);
    let pixels = (d.in_chans * d.patch * d.patch) as f64;
    let patch = 2.0 * d.num_patches as f64 * pixels * dim;
    let block_linear = 2.0 * n * (dim * 3.0 * dim + dim * dim + 2.0 * dim * mlp);
    let attention = 2.0 * 2.0 * n * n * dim;
    // every adapted layer of the model (blocks may differ in rank)
    let adapter: f64 = trained
        .adapters
        .iter()
        .map(|&(t, rank)| {
            let (i, o) = layer_in_out(t, d);
            2.0 * n * rank as f64 * (i + o) as f64
        })
        .sum();
    let head = 2.0 * dim * d.num_classes as f64;
    let depth = d.depth as f64;
    let forward = patch + depth * (block_linear + attention) + adapter + head;
    // Input gradients: the same products again, without the patch projection's (pixels); the
    // head's input (the last block's output) needs one. Attention's two products take the
    // gradient of both operands (q and k, p and v), so they count twice.
    let input_grads = depth * (block_linear + 2.0 * attention) + adapter + head;
    // Weight gradients: one product per trained weight, as large as its forward product.
    let weight_grads = head + adapter + if trained.backbone { patch + depth * block_linear } else { 0.0 };
    StepFlops { forward, backward: input_grads + weight_grads }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::mlae::{MaskSpec, MaskStrategy, MlaeSpec};
    use crate::methods::{AdapterKind, AdapterSpec};

    /// A 1-block model small enough to count by hand.
    fn tiny() -> ModelDims {
        ModelDims {
            depth: 1,
            dim: 4,
            mlp_dim: 8,
            patch: 2,
            in_chans: 3,
            num_patches: 3,
            num_classes: 5,
            layer_scale: false,
            qkv_bias: true,
        }
    }

    #[test]
    fn a_hand_counted_block_adapter_and_head() {
        let d = tiny();
        // tokens n = 4; patch: 2 * 3 patches * 12 pixels * 4 = 288
        // linear: 2 * 4 * (4*12 + 4*4 + 2*4*8) = 8 * 128 = 1024; attention: 4 * 16 * 4 = 256
        // head: 2 * 4 * 5 = 40; qkv adapter rank 2: 2 * 4 * 2 * (4 + 12) = 256
        let probe = train_step_flops(&d, &Trained { adapters: vec![], backbone: false });
        assert_eq!(probe.forward, 288.0 + 1024.0 + 256.0 + 40.0);
        assert_eq!(probe.backward, (1024.0 + 2.0 * 256.0 + 40.0) + 40.0);
        let mlae = train_step_flops(&d, &Trained { adapters: vec![(TargetLayer::Qkv, 2)], backbone: false });
        assert_eq!(mlae.forward, probe.forward + 256.0);
        assert_eq!(mlae.backward, probe.backward + 256.0 + 256.0, "input and weight gradients");
        let full = train_step_flops(&d, &Trained { adapters: vec![], backbone: true });
        assert_eq!(full.backward, probe.backward + 288.0 + 1024.0);
        assert_eq!(full.step(), full.forward + full.backward);
    }

    #[test]
    fn the_quickstart_shape_is_dominated_by_the_frozen_backbone() {
        // DINOv2 ViT-S/14 at 56 px (16 patches + class token), MLAE 8 x 1 on qkv.
        let d = ModelDims::dinov2_s14(10, 56);
        let plan = |kind| AdapterSpec { kind, ..Default::default() }.resolve(d.depth).unwrap();
        let mlae = train_step_flops(&d, &Trained::of(&plan(AdapterKind::Mlae)));
        let probe = train_step_flops(&d, &Trained::of(&plan(AdapterKind::LinearProbe)));
        assert_eq!(
            mlae,
            train_step_flops(
                &d,
                &Trained { adapters: vec![(TargetLayer::Qkv, 8); d.depth], backbone: false }
            )
        );
        let extra = mlae.step() / probe.step() - 1.0;
        assert!(extra > 0.0 && extra < 0.02, "the adapter adds {extra}");
        // backward ~ forward for a frozen backbone (input gradients only; 17 tokens make
        // attention's doubled products small)
        assert!((probe.backward / probe.forward - 1.0).abs() < 0.05);
    }

    #[test]
    fn each_plan_says_what_trains() {
        let d = ModelDims::vit_b16(100, 224);
        let plan = |spec: AdapterSpec| Trained::of(&spec.resolve(d.depth).unwrap());
        // every kind: its sites at its update rank, the backbone for full fine-tuning only
        for kind in AdapterKind::ALL {
            let t = plan(AdapterSpec { kind: *kind, ..Default::default() });
            assert_eq!(t.adapters.len(), if kind.has_adapter() { d.depth } else { 0 }, "{kind}");
            assert_eq!(t.backbone, *kind == AdapterKind::Full, "{kind}");
        }
        let ranks = |spec| plan(spec).adapters.iter().map(|&(_, r)| r).collect::<Vec<_>>();
        let kind = |kind| AdapterSpec { kind, ..Default::default() };
        assert_eq!(ranks(kind(AdapterKind::Lora)), [8; 12]);
        assert_eq!(ranks(kind(AdapterKind::Dora)), [8; 12]);
        assert_eq!(ranks(kind(AdapterKind::Dmlora)), [32; 12], "4 branches of rank 8");
        // a fixed allocation: each block's own experts (2 in blocks 0-2, 6 in 3-5, ...), rank 2
        let mask = MaskSpec {
            strategy: MaskStrategy::Fixed,
            pattern: crate::LayerPattern::Incremental,
            ..Default::default()
        };
        let spec = AdapterSpec {
            mlae: MlaeSpec { expert_rank: 2, mask, ..Default::default() },
            ..Default::default()
        };
        assert_eq!(ranks(spec), [4, 4, 4, 12, 12, 12, 20, 20, 20, 28, 28, 28]);
    }
}
