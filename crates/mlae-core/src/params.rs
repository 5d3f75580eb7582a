//! Parameter counts per configuration, without building a model.
//!
//! Backbone counts follow timm's `VisionTransformer` with a class token and no pre-logits:
//! Each method counts its own adapter ([`crate::MethodPlan::adapter_params`]);
//! [`crate::count_params`] adds the backbone and head.
//!
//! Patch embedding (conv weight + bias), class token, position table (1 + patches), per block
//! two LayerNorms, qkv (with or without bias), proj, fc1, fc2 (all with bias) and, for DINOv2,
//! two layer-scale vectors; then the final LayerNorm. The head is `dim * C + C`. For ViT-B/16 at
//! 224 px this gives timm's 85,798,656 backbone parameters.

use crate::target::TargetLayer;
use serde::{Deserialize, Serialize};

/// The sizes of a ViT that parameter counts and adapter shapes depend on.
///
/// ```
/// use mlae_core::ModelDims;
/// let d = ModelDims::vit_b16(100, 224);
/// assert_eq!((d.depth, d.dim, d.mlp_dim, d.num_patches), (12, 768, 3072, 196));
/// assert_eq!(d.backbone_params(), 85_798_656);
/// assert_eq!(d.head_params(), 76_900);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDims {
    /// Number of transformer blocks.
    pub depth: usize,
    /// Embedding width.
    pub dim: usize,
    /// Hidden width of the MLP.
    pub mlp_dim: usize,
    /// Patch side in pixels.
    pub patch: usize,
    /// Input channels.
    pub in_chans: usize,
    /// Patches at the model's image size (the position table has `1 + num_patches` rows).
    pub num_patches: usize,
    /// Classes of the head.
    pub num_classes: usize,
    /// Whether blocks carry two layer-scale vectors (DINOv2).
    pub layer_scale: bool,
    /// Whether qkv has a bias (timm ViTs and DINOv2 do).
    pub qkv_bias: bool,
}

impl ModelDims {
    fn vit(depth: usize, dim: usize, patch: usize, num_classes: usize, img_size: usize) -> ModelDims {
        let side = img_size / patch;
        ModelDims {
            depth,
            dim,
            mlp_dim: 4 * dim,
            patch,
            in_chans: 3,
            num_patches: side * side,
            num_classes,
            layer_scale: false,
            qkv_bias: true,
        }
    }

    /// ViT-Ti/16 (12 blocks, width 192). `img_size` is floored to whole patches, as timm's
    /// patch convolution does.
    pub fn vit_ti16(num_classes: usize, img_size: usize) -> ModelDims {
        Self::vit(12, 192, 16, num_classes, img_size)
    }

    /// ViT-S/16 (12 blocks, width 384).
    pub fn vit_s16(num_classes: usize, img_size: usize) -> ModelDims {
        Self::vit(12, 384, 16, num_classes, img_size)
    }

    /// ViT-B/16 (12 blocks, width 768): the paper's backbone.
    pub fn vit_b16(num_classes: usize, img_size: usize) -> ModelDims {
        Self::vit(12, 768, 16, num_classes, img_size)
    }

    /// ViT-L/16 (24 blocks, width 1024).
    pub fn vit_l16(num_classes: usize, img_size: usize) -> ModelDims {
        Self::vit(24, 1024, 16, num_classes, img_size)
    }

    /// DINOv2 ViT-S/14 (12 blocks, width 384, patch 14, layer scale). The position table is
    /// counted at `img_size` (the pretrained 37 x 37 table is resized to the model's input);
    /// HF's unused `mask_token` is not counted.
    ///
    /// ```
    /// use mlae_core::ModelDims;
    /// // at the pretrained 518 px table: 1 + 37 * 37 positions
    /// assert_eq!(ModelDims::dinov2_s14(0, 518).backbone_params(), 22_056_192);
    /// ```
    pub fn dinov2_s14(num_classes: usize, img_size: usize) -> ModelDims {
        ModelDims { layer_scale: true, ..Self::vit(12, 384, 14, num_classes, img_size) }
    }

    /// Parameters of the classification head, `dim * C + C`.
    pub fn head_params(&self) -> usize {
        self.dim * self.num_classes + self.num_classes
    }

    /// Parameters of one transformer block.
    pub fn block_params(&self) -> usize {
        let (d, h) = (self.dim, self.mlp_dim);
        let norms = 2 * 2 * d;
        let qkv = d * 3 * d + if self.qkv_bias { 3 * d } else { 0 };
        let proj = d * d + d;
        let mlp = d * h + h + h * d + d;
        let ls = if self.layer_scale { 2 * d } else { 0 };
        norms + qkv + proj + mlp + ls
    }

    /// Parameters of the backbone without the head (timm's `num_classes = 0`).
    pub fn backbone_params(&self) -> usize {
        let d = self.dim;
        let patch_embed = self.in_chans * self.patch * self.patch * d + d;
        let tokens = d + (self.num_patches + 1) * d;
        patch_embed + tokens + self.depth * self.block_params() + 2 * d
    }
}

/// `(in, out)` features of a target layer: qkv `(dim, 3 dim)`, proj `(dim, dim)`,
/// fc1 `(dim, mlp)`, fc2 `(mlp, dim)`.
///
/// ```
/// use mlae_core::{layer_in_out, ModelDims, TargetLayer};
/// let d = ModelDims::vit_b16(10, 224);
/// assert_eq!(layer_in_out(TargetLayer::Qkv, &d), (768, 2304));
/// assert_eq!(layer_in_out(TargetLayer::Fc2, &d), (3072, 768));
/// ```
pub fn layer_in_out(target: TargetLayer, dims: &ModelDims) -> (usize, usize) {
    match target {
        TargetLayer::Qkv => (dims.dim, 3 * dims.dim),
        TargetLayer::Proj => (dims.dim, dims.dim),
        TargetLayer::Fc1 => (dims.dim, dims.mlp_dim),
        TargetLayer::Fc2 => (dims.mlp_dim, dims.dim),
        TargetLayer::Q | TargetLayer::K | TargetLayer::V => (dims.dim, dims.dim),
    }
}

/// Parameter counts of one configuration.
///
/// ```
/// use mlae_core::{count_params, AdapterKind, AdapterSpec, ModelDims};
/// let plan = AdapterSpec { kind: AdapterKind::LinearProbe, ..Default::default() }.resolve(12).unwrap();
/// let c = count_params(&plan, &ModelDims::vit_s16(10, 224));
/// assert_eq!((c.adapter, c.head, c.trainable), (0, 3_850, 3_850));
/// assert_eq!(c.to_string(), "trainable 0.004M (adapter 0.000M + head 0.004M), total 21.67M");
/// ```
///
/// `trainable` is what the optimiser updates: adapter + head (linear probe: head; full:
/// backbone + head). `total` is everything the training-time model holds: backbone + head +
/// adapter (after merging, an adapter adds nothing: the deployed model has backbone + head).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamCount {
    /// Adapter parameters (A, B, lambda, DMLoRA scales).
    pub adapter: usize,
    /// Head parameters.
    pub head: usize,
    /// Frozen-or-not backbone parameters.
    pub backbone: usize,
    /// Parameters the optimiser updates.
    pub trainable: usize,
    /// All parameters of the training-time model.
    pub total: usize,
}

impl std::fmt::Display for ParamCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = |x: usize| x as f64 / 1e6;
        write!(
            f,
            "trainable {:.3}M (adapter {:.3}M + head {:.3}M), total {:.2}M",
            m(self.trainable),
            m(self.adapter),
            m(self.head),
            m(self.total)
        )
    }
}

impl ParamCount {
    /// The counts of a model with `adapter` adapter parameters on `dims`; `trains_backbone`
    /// for full fine-tuning.
    pub fn new(adapter: usize, dims: &ModelDims, trains_backbone: bool) -> ParamCount {
        let head = dims.head_params();
        let backbone = dims.backbone_params();
        let trainable = if trains_backbone { backbone + head } else { adapter + head };
        ParamCount { adapter, head, backbone, trainable, total: backbone + head + adapter }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backbones_match_timm() {
        // timm's parameter counts with a 1000-class head.
        assert_eq!(ModelDims::vit_ti16(1000, 224).backbone_params() + 193_000, 5_717_416);
        assert_eq!(ModelDims::vit_s16(1000, 224).backbone_params() + 385_000, 22_050_664);
        assert_eq!(ModelDims::vit_b16(1000, 224).backbone_params() + 769_000, 86_567_656);
        assert_eq!(ModelDims::vit_l16(1000, 224).backbone_params() + 1_025_000, 304_326_632);
        assert_eq!(ModelDims::vit_b16(1000, 224).head_params(), 769_000);
        assert_eq!(ModelDims::dinov2_s14(10, 224).num_patches, 256);
    }
}
