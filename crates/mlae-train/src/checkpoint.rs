//! Training checkpoints: one safetensors file holding the trainable parameters, the
//! optimizer moments and, in its metadata, the loop state. One file so that writing it
//! atomically (temp + rename) is trivial and a checkpoint is never half-written.

use crate::error::{Result, TrainError};
use crate::rundir::write_file;
use mlae_vit::AdaptedVit;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// Written into the metadata so that other safetensors files are rejected clearly.
pub const FORMAT: &str = "mlae-train-checkpoint/1";

/// A checkpoint read back: tensors by name and the metadata strings.
#[derive(Debug)]
pub struct Loaded {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// Writes named tensors and metadata to `path` atomically. Tensors are copied to the CPU;
/// f32, f64, bf16, f16, i64 and u8 are kept as they are.
pub fn save(path: &Path, tensors: &[(String, Tensor)], metadata: &HashMap<String, String>) -> Result<()> {
    let mut meta = metadata.clone();
    meta.insert("format".into(), FORMAT.into());
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.detach().to_device(tch::Device::Cpu).contiguous();
        let (dtype, bytes) = to_bytes(&t).ok_or_else(|| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("tensor {name} has unsupported kind {:?}", t.kind()),
        })?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), dtype, shape, bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("shape matches bytes")))
        .collect();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| TrainError::Checkpoint { path: path.to_path_buf(), message: e.to_string() })?;
    Ok(write_file(path, &bytes)?)
}

/// Reads a checkpoint written by [`save`]; anything else is an error naming the file.
pub fn load(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(crate::error::io_err(path))?;
    let err = |message: String| TrainError::Checkpoint { path: path.to_path_buf(), message };
    // A header or data that does not add up is a file cut short (a full disk, a copy that
    // stopped) or damaged: say so, not only the parser's words.
    let corrupt = |e: safetensors::SafeTensorError| {
        err(format!("the file is truncated or corrupt ({} bytes; {e})", bytes.len()))
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
    let metadata: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
    if metadata.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(err(format!("not a training checkpoint (metadata format is not {FORMAT})")));
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(corrupt)?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F64 => Kind::Double,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
            Dtype::I64 => Kind::Int64,
            Dtype::U8 => Kind::Uint8,
            other => return Err(err(format!("tensor {name} has unsupported dtype {other:?}"))),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::from_data_size(view.data(), &shape, kind);
        tensors.insert(name, t);
    }
    Ok(Loaded { tensors, metadata })
}

fn to_bytes(t: &Tensor) -> Option<(Dtype, Vec<u8>)> {
    let dtype = match t.kind() {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Int64 => Dtype::I64,
        Kind::Uint8 => Dtype::U8,
        _ => return None,
    };
    let n = t.numel() * t.kind().elt_size_in_bytes();
    let mut bytes = vec![0u8; n];
    t.copy_data_u8(&mut bytes, t.numel());
    Some((dtype, bytes))
}

/// Copies a checkpoint's `model.*` tensors into the model's trainable parameters; a missing
/// parameter or a shape mismatch is an error naming both.
pub fn copy_params(model: &AdaptedVit, loaded: &Loaded, path: &Path) -> Result<()> {
    let err = |message: String| TrainError::Checkpoint { path: path.to_path_buf(), message };
    tch::no_grad(|| {
        for (name, mut t, _) in model.trainable() {
            let src = loaded
                .tensors
                .get(&format!("model.{name}"))
                .ok_or_else(|| err(format!("parameter {name} is missing")))?;
            if src.size() != t.size() {
                return Err(err(format!(
                    "parameter {name} has shape {:?}, the model has {:?}",
                    src.size(),
                    t.size()
                )));
            }
            t.copy_(src);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_bit_exactly_with_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ck.safetensors");
        let a = Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::from_slice(&[1i64, 2, 3]);
        let c = Tensor::randn([5], (Kind::Float, tch::Device::Cpu)).to_kind(Kind::BFloat16);
        let mut meta = HashMap::new();
        meta.insert("state".to_string(), "{\"step\": 7}".to_string());
        save(
            &path,
            &[
                ("a".into(), a.shallow_clone()),
                ("b".into(), b.shallow_clone()),
                ("c".into(), c.shallow_clone()),
            ],
            &meta,
        )
        .unwrap();
        let loaded = load(&path).unwrap();
        assert!(loaded.tensors["a"].equal(&a));
        assert!(loaded.tensors["b"].equal(&b));
        assert!(loaded.tensors["c"].equal(&c));
        assert_eq!(loaded.metadata["state"], "{\"step\": 7}");
    }

    #[test]
    fn other_files_are_rejected_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("other.safetensors");
        Tensor::write_safetensors(&[("w", Tensor::ones([2], (Kind::Float, tch::Device::Cpu)))], &path)
            .unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("other.safetensors") && err.contains("not a training checkpoint"), "{err}");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("other.safetensors"));
    }
}
