//! Checkpoint readers: every supported format is read into one [`StateDict`] in timm's naming
//! (`cls_token`, `pos_embed`, `patch_embed.proj.weight`, `blocks.N.attn.qkv.weight`,
//! `blocks.N.ls1.gamma`, ..., `head.weight`), f32 on the CPU. The model only ever loads that
//! naming, so a new format is one converter and nothing else.
//!
//! | format | reader | what the converter does |
//! |---|---|---|
//! | [`Timm`](CheckpointFormat::Timm) | safetensors | widens to f32, drops a DDP `module.` prefix |
//! | [`GoogleNpz`](CheckpointFormat::GoogleNpz) | numpy `.npz` ([`google`]) | Flax kernels to torch layout, q/k/v fused |
//! | [`HfDinov2`](CheckpointFormat::HfDinov2) | safetensors ([`hf`]) | renamed, q/k/v fused |
//! | [`ImgFocusOnnx`](CheckpointFormat::ImgFocusOnnx) | ONNX protobuf ([`onnx`]) | weights found through the graph, then as HF |
//!
//! Converted checkpoints come out in timm's state-dict order; tensors a converter does not map
//! (Google's `pre_logits`, HF's `mask_token`, a classifier) are kept under their own names after
//! the mapped ones and logged at debug level, so the loader can report them as unused.
//! Every error names the file and, where there is one, the key.

pub mod google;
pub mod hf;
mod npz;
pub mod onnx;
mod source;

use crate::error::{Result, VitError};
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

pub use npz::read_npz;
pub(crate) use source::Source;

/// The on-disk formats a backbone can come from: a config format (mlae-formats), read here.
pub use mlae_formats::CheckpointFormat;

/// A checkpoint converted to timm naming: f32 CPU tensors in file order.
#[derive(Debug)]
pub struct StateDict {
    /// `(timm name, tensor)` pairs.
    pub tensors: Vec<(String, tch::Tensor)>,
    /// The format the tensors were read from.
    pub format: CheckpointFormat,
}

impl StateDict {
    /// The tensor stored under a timm name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, _)| n.as_str())
    }

    /// Writes the tensors as a timm-named safetensors file (e.g. to convert a checkpoint once
    /// and load it with timm in Python).
    pub fn write_safetensors(&self, path: &Path) -> Result<()> {
        let contiguous: Vec<(&str, Tensor)> =
            self.tensors.iter().map(|(n, t)| (n.as_str(), t.contiguous())).collect();
        Tensor::write_safetensors(&contiguous, path)
            .map_err(|e| VitError::Format { path: path.into(), message: format!("cannot write: {e}") })
    }
}

/// Reads a checkpoint into timm naming. `format` = None infers it from the file.
pub fn read_checkpoint(path: &Path, format: Option<CheckpointFormat>) -> Result<StateDict> {
    let format = match format {
        Some(f) => f,
        None => infer_format(path)?,
    };
    let tensors = match format {
        CheckpointFormat::Timm => read_timm(path)?,
        CheckpointFormat::GoogleNpz => google::convert(path, npz::read_npz(path)?)?,
        CheckpointFormat::HfDinov2 => hf::convert(path, read_safetensors(path)?)?,
        CheckpointFormat::ImgFocusOnnx => onnx::convert(path)?,
    };
    tracing::info!(path = %path.display(), ?format, tensors = tensors.len(), "read checkpoint");
    Ok(StateDict { tensors, format })
}

/// Guesses the format from the extension, and for safetensors from the key names (only the
/// header is read): HF Dinov2 keys (`embeddings.patch_embeddings...`, `encoder.layer.N...`,
/// optionally under `dinov2.`) mean [`CheckpointFormat::HfDinov2`], anything else timm.
pub fn infer_format(path: &Path) -> Result<CheckpointFormat> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("safetensors") => {
            let keys = safetensors_keys(path)?;
            Ok(if keys.iter().any(|k| hf::looks_like_hf(k)) {
                CheckpointFormat::HfDinov2
            } else {
                CheckpointFormat::Timm
            })
        }
        Some("npz") => Ok(CheckpointFormat::GoogleNpz),
        Some("onnx") => Ok(CheckpointFormat::ImgFocusOnnx),
        Some("pth" | "pt" | "bin" | "ckpt") => Err(VitError::Format {
            path: path.into(),
            message: "PyTorch pickles are not read (they can run code and need Python to decode); \
                      convert it once with `safetensors.torch.save_file(torch.load(p), out)`"
                .into(),
        }),
        _ => Err(VitError::Format {
            path: path.into(),
            message: "cannot tell the checkpoint format from the extension (.safetensors, .npz or \
                      .onnx); set model.format"
                .into(),
        }),
    }
}

/// The largest safetensors header we accept (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// The tensor names of a safetensors file, read from its JSON header alone, so that format
/// inference stays cheap on a multi-GB checkpoint.
fn safetensors_keys(path: &Path) -> Result<Vec<String>> {
    let bad = |message: String| VitError::Format { path: path.into(), message };
    let mut file = std::fs::File::open(path).map_err(VitError::io(path))?;
    let file_len = file.metadata().map_err(VitError::io(path))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| bad(format!("not a safetensors file: {file_len} bytes, shorter than its header")))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || n + 8 > file_len {
        return Err(bad(format!(
            "not a safetensors file (or truncated): header length {n} with {file_len} bytes in the file"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(VitError::io(path))?;
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("not a safetensors file: its header is not a JSON object ({e})")))?;
    Ok(json.into_iter().map(|(k, _)| k).filter(|k| k != "__metadata__").collect())
}

/// All tensors of a safetensors file, f32, in the order of their data in the file.
pub(crate) fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    use safetensors::SafeTensors;
    let bytes = std::fs::read(path).map_err(VitError::io(path))?;
    let (n, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| VitError::Format {
        path: path.into(),
        message: format!("not a valid safetensors file (truncated?): {e}"),
    })?;
    let data = &bytes[8 + n..];
    let mut out = Vec::new();
    for name in meta.offset_keys() {
        let info = meta.info(&name).expect("offset_keys lists known tensors");
        let kind = crate::tensor_io::kind_of_dtype(info.dtype).ok_or_else(|| VitError::Format {
            path: path.into(),
            message: format!("`{name}` has dtype {:?}, which the importer does not read", info.dtype),
        })?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let (start, end) = info.data_offsets;
        let t = Tensor::f_from_data_size(&data[start..end], &shape, kind)?;
        out.push((name, t.to_kind(Kind::Float)));
    }
    Ok(out)
}

/// timm safetensors: f32, without the `module.` prefix that DDP training adds to every key.
fn read_timm(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut tensors = read_safetensors(path)?;
    if !tensors.is_empty() && tensors.iter().all(|(k, _)| k.starts_with("module.")) {
        tracing::debug!(path = %path.display(), "dropping the `module.` prefix of every key");
        for (k, _) in &mut tensors {
            k.drain(.."module.".len());
        }
    }
    if !tensors.iter().any(|(k, _)| k == "patch_embed.proj.weight") {
        let first: Vec<&str> = tensors.iter().take(3).map(|(k, _)| k.as_str()).collect();
        return Err(VitError::Format {
            path: path.into(),
            message: format!(
                "missing key `patch_embed.proj.weight`: not a timm ViT state dict (first keys: {first:?})"
            ),
        });
    }
    Ok(tensors)
}
