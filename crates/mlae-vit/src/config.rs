//! Model architecture: the full configuration behind each preset the project uses.

use crate::error::{Result, VitError};
use serde::{Deserialize, Serialize};

/// The preset names are a config format (mlae-formats); the architecture behind each is
/// [`VitConfig::from_preset`].
pub use mlae_formats::Preset;

/// A ViT in timm's layout: patch embedding, class token, learned position table, pre-norm
/// blocks (optionally with DINOv2's layer-scale), final norm, linear head on the class token.
///
/// Fields are public so that tests and tools can describe any size of model; presets fill them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// The preset this config came from, if any (used to name the timm model on export).
    pub preset: Option<Preset>,
    pub patch_size: i64,
    /// Embedding width.
    pub dim: i64,
    /// Number of blocks.
    pub depth: i64,
    pub heads: i64,
    /// Hidden width of the MLP.
    pub mlp_dim: i64,
    pub in_chans: i64,
    /// Square input size in pixels; the position table has (image_size / patch_size)^2 + 1 rows.
    pub image_size: i64,
    pub num_classes: i64,
    pub qkv_bias: bool,
    /// DINOv2's per-channel residual scales `ls1.gamma`, `ls2.gamma`.
    pub layer_scale: bool,
    /// Initial value of the layer-scale gammas of a randomly initialised model (timm: 1e-5).
    pub layer_scale_init: f64,
    /// Stochastic depth rate of the last block; block i gets `drop_path * i / (depth - 1)`
    /// (timm's linear decay rule).
    pub drop_path: f64,
    /// LayerNorm epsilon (1e-6 for every preset, as in timm).
    pub eps: f64,
}

impl VitConfig {
    /// The preset's architecture at `image_size` pixels with a `num_classes`-way head.
    ///
    /// ```
    /// use mlae_vit::{Preset, VitConfig};
    /// let c = VitConfig::from_preset(Preset::VitB16, 224, 100);
    /// assert_eq!((c.dim, c.depth, c.heads, c.mlp_dim, c.grid()), (768, 12, 12, 3072, 14));
    /// assert_eq!(mlae_core::count_params(
    ///     &mlae_core::AdapterSpec::default().resolve(12).unwrap(), &c.dims()).adapter, 295_008);
    /// ```
    pub fn from_preset(preset: Preset, image_size: i64, num_classes: i64) -> Self {
        let (patch, dim, depth, heads) = match preset {
            Preset::VitTi16 => (16, 192, 12, 3),
            Preset::VitS16 => (16, 384, 12, 6),
            Preset::VitB16 => (16, 768, 12, 12),
            Preset::VitL16 => (16, 1024, 24, 16),
            Preset::Dinov2S14 => (14, 384, 12, 6),
        };
        VitConfig {
            preset: Some(preset),
            patch_size: patch,
            dim,
            depth,
            heads,
            mlp_dim: 4 * dim,
            in_chans: 3,
            image_size,
            num_classes,
            qkv_bias: true,
            layer_scale: preset == Preset::Dinov2S14,
            layer_scale_init: 1e-5,
            drop_path: 0.0,
            eps: 1e-6,
        }
    }

    /// Patches per side: `image_size / patch_size` (the remainder is cropped, as a strided
    /// convolution does).
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }

    /// Tokens per image: the patches plus the class token.
    pub fn num_tokens(&self) -> i64 {
        self.grid() * self.grid() + 1
    }

    /// The shapes mlae-core counts parameters with.
    pub fn dims(&self) -> mlae_core::ModelDims {
        let g = self.grid() as usize;
        mlae_core::ModelDims {
            depth: self.depth as usize,
            dim: self.dim as usize,
            mlp_dim: self.mlp_dim as usize,
            patch: self.patch_size as usize,
            in_chans: self.in_chans as usize,
            num_patches: g * g,
            num_classes: self.num_classes as usize,
            layer_scale: self.layer_scale,
            qkv_bias: self.qkv_bias,
        }
    }

    /// Checks that the numbers describe a buildable model; the error names the field.
    ///
    /// ```
    /// use mlae_vit::{Preset, VitConfig};
    /// let mut c = VitConfig::from_preset(Preset::VitS16, 224, 10);
    /// assert!(c.validate().is_ok());
    /// c.heads = 5;
    /// assert!(c.validate().unwrap_err().to_string().contains("model.heads"));
    /// ```
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(VitError::Config(m));
        for (name, v) in [
            ("model.patch_size", self.patch_size),
            ("model.dim", self.dim),
            ("model.depth", self.depth),
            ("model.heads", self.heads),
            ("model.mlp_dim", self.mlp_dim),
            ("model.in_chans", self.in_chans),
            ("model.num_classes", self.num_classes),
        ] {
            if v < 1 {
                return bad(format!("{name}: must be at least 1, got {v}"));
            }
        }
        if self.dim % self.heads != 0 {
            return bad(format!("model.heads: {} does not divide the width {}", self.heads, self.dim));
        }
        if self.image_size < self.patch_size {
            return bad(format!(
                "model.image_size: {} is smaller than one patch ({} px)",
                self.image_size, self.patch_size
            ));
        }
        if !(self.drop_path.is_finite() && (0.0..1.0).contains(&self.drop_path)) {
            return bad(format!("model.drop_path: must be in [0, 1), got {}", self.drop_path));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad(format!("model.eps: must be positive, got {}", self.eps));
        }
        if !self.layer_scale_init.is_finite() {
            return bad(format!("model.layer_scale_init: must be finite, got {}", self.layer_scale_init));
        }
        Ok(())
    }

    /// The timm model this architecture is, as `(name, kwargs)` for
    /// `timm.create_model(name, **kwargs)`: the preset's model, or for a custom config a timm
    /// ViT (with layer-scale: the DINOv2 one) whose shape the kwargs override.
    ///
    /// ```
    /// use mlae_vit::{Preset, VitConfig};
    /// let (name, kw) = VitConfig::from_preset(Preset::VitB16, 384, 10).timm_model();
    /// assert_eq!(name, "vit_base_patch16_224");
    /// assert_eq!((kw["img_size"].as_i64(), kw["num_classes"].as_i64()), (Some(384), Some(10)));
    /// ```
    pub fn timm_model(&self) -> (&'static str, serde_json::Value) {
        let name = match self.preset {
            Some(p) => p.timm_name(),
            None if self.layer_scale => Preset::Dinov2S14.timm_name(),
            None => Preset::VitB16.timm_name(),
        };
        let kwargs = serde_json::json!({
            "img_size": self.image_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "embed_dim": self.dim,
            "depth": self.depth,
            "num_heads": self.heads,
            "mlp_ratio": self.mlp_dim as f64 / self.dim as f64,
            "qkv_bias": self.qkv_bias,
            "init_values": if self.layer_scale { Some(self.layer_scale_init) } else { None },
            "num_classes": self.num_classes,
        });
        (name, kwargs)
    }

    /// The drop-path rate of block `i` (timm's linear rule: 0 at the first block, `drop_path`
    /// at the last).
    pub fn drop_path_at(&self, i: usize) -> f64 {
        if self.depth <= 1 { self.drop_path } else { self.drop_path * i as f64 / (self.depth - 1) as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_mlae_core_dims() {
        use mlae_core::ModelDims;
        let cases = [
            (Preset::VitTi16, ModelDims::vit_ti16(10, 224)),
            (Preset::VitS16, ModelDims::vit_s16(10, 224)),
            (Preset::VitB16, ModelDims::vit_b16(10, 224)),
            (Preset::VitL16, ModelDims::vit_l16(10, 224)),
            (Preset::Dinov2S14, ModelDims::dinov2_s14(10, 224)),
        ];
        for (p, dims) in cases {
            let c = VitConfig::from_preset(p, 224, 10);
            c.validate().unwrap();
            assert_eq!(c.dims(), dims, "{p}");
            assert_eq!(c.eps, 1e-6);
        }
        let d = VitConfig::from_preset(Preset::Dinov2S14, 518, 10);
        assert_eq!(d.num_tokens(), 37 * 37 + 1);
    }

    #[test]
    fn drop_path_decays_linearly() {
        let mut c = VitConfig::from_preset(Preset::VitB16, 224, 10);
        c.drop_path = 0.11;
        assert_eq!(c.drop_path_at(0), 0.0);
        assert!((c.drop_path_at(11) - 0.11).abs() < 1e-15);
        assert!((c.drop_path_at(1) - 0.01).abs() < 1e-15);
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let base = VitConfig::from_preset(Preset::VitTi16, 224, 10);
        let check = |f: &dyn Fn(&mut VitConfig), field: &str| {
            let mut c = base.clone();
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        };
        check(&|c| c.image_size = 8, "model.image_size");
        check(&|c| c.drop_path = 1.0, "model.drop_path");
        check(&|c| c.num_classes = 0, "model.num_classes");
        check(&|c| c.eps = 0.0, "model.eps");
    }
}
