//! Tensors in and out of libtorch: the one safetensors dtype table of the workspace, the
//! safetensors reader and atomic writer of this crate's own files, and tensor <-> ndarray copies
//! for mlae-core's math.

use crate::error::{Result, VitError};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Named tensors as read from a file.
pub type NamedTensors = Vec<(String, Tensor)>;

/// The libtorch kind of a safetensors dtype, for the dtypes this workspace reads and writes
/// (floats, i64, i32, u8, bool); `None` for the others.
pub fn kind_of_dtype(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// The safetensors dtype of a libtorch kind: the inverse of [`kind_of_dtype`].
pub fn dtype_of_kind(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// A tensor as an ndarray matrix (detached, copied to the CPU as f32).
pub fn to_array2(t: &Tensor) -> Result<ndarray::Array2<f32>> {
    let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let (r, c) = t.size2()?;
    let v = Vec::<f32>::try_from(t.view(-1))?;
    ndarray::Array2::from_shape_vec((r as usize, c as usize), v)
        .map_err(|e| VitError::Config(format!("internal shape error: {e}")))
}

/// A tensor as an ndarray vector (detached, copied to the CPU as f32).
pub fn to_array1(t: &Tensor) -> Result<ndarray::Array1<f32>> {
    let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    Ok(ndarray::Array1::from_vec(Vec::<f32>::try_from(t.view(-1))?))
}

/// An ndarray matrix as a CPU f32 tensor (copied).
pub fn from_array2(m: &ndarray::Array2<f32>) -> Tensor {
    let (r, c) = m.dim();
    Tensor::from_slice(m.as_standard_layout().as_slice().expect("standard layout")).view([r as i64, c as i64])
}

/// Writes f32 tensors (copied to the CPU) and metadata as safetensors, atomically (the
/// project's one policy, mlae-formats' `write_atomic`), so a reader never sees half a file.
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let mut bytes = vec![0u8; t.numel() * 4];
        t.copy_data_u8(&mut bytes, t.numel());
        owned.push((name.clone(), t.size().iter().map(|&d| d as usize).collect(), bytes));
    }
    let views = owned
        .iter()
        .map(|(n, s, b)| Ok((n.as_str(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| VitError::Format { path: path.into(), message: e.to_string() })?;
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| VitError::Format { path: path.into(), message: e.to_string() })?;
    mlae_formats::write_atomic(path, &bytes).map_err(VitError::io(path))
}

/// Reads every floating-point tensor of a safetensors file (returned as stored) and its
/// metadata; a tensor of another dtype is an error naming it.
pub(crate) fn read_safetensors(path: &Path) -> Result<(NamedTensors, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(VitError::io(path))?;
    let err = |m: String| VitError::Format { path: path.into(), message: m };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| err(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    for (name, view) in st.iter() {
        let kind = kind_of_dtype(view.dtype())
            .filter(is_float)
            .ok_or_else(|| err(format!("tensor `{name}` has unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name.to_string(), Tensor::from_data_size(view.data(), &shape, kind)));
    }
    Ok((out, metadata))
}

fn is_float(kind: &Kind) -> bool {
    matches!(kind, Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dtype_table_round_trips() {
        for kind in [
            Kind::Float,
            Kind::Double,
            Kind::BFloat16,
            Kind::Half,
            Kind::Int64,
            Kind::Int,
            Kind::Uint8,
            Kind::Bool,
        ] {
            let dtype = dtype_of_kind(kind).unwrap();
            assert_eq!(kind_of_dtype(dtype), Some(kind), "{kind:?}");
            assert_eq!(dtype.bitsize(), 8 * kind.elt_size_in_bytes(), "{kind:?}");
        }
        assert_eq!(kind_of_dtype(Dtype::U16), None);
    }

    #[test]
    fn arrays_round_trip() {
        let t = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).view([2, 3]);
        let a = to_array2(&t).unwrap();
        assert_eq!(a[[1, 0]], 4.0);
        assert!(from_array2(&a).equal(&t));
        assert_eq!(to_array1(&t.get(1)).unwrap().to_vec(), [4.0, 5.0, 6.0]);
    }
}
