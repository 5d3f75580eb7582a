//! numpy `.npz` reading: a zip of `.npy` members, stored (`np.savez`, as Google's ViT files are)
//! or deflated (`np.savez_compressed`).
//!
//! Why not `tch::Tensor::read_npz`: it panics on a damaged zip member (an `unwrap`), cannot say
//! which member is bad, and rejects Fortran-ordered and big-endian arrays.

use crate::error::{Result, VitError};
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

/// Every array of a numpy `.npz`, as f32 CPU tensors named like the members without `.npy`, in
/// archive order (C- or Fortran-ordered, either byte order, any float or integer dtype).
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |message: String| VitError::Format { path: path.into(), message };
    let file = std::fs::File::open(path).map_err(VitError::io(path))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        bad(format!("cannot read it as a numpy .npz (a zip archive; truncated or another format?): {e}"))
    })?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut member = zip.by_index(i).map_err(|e| bad(format!("zip member #{i} is unreadable: {e}")))?;
        let raw_name = member.name().map_err(|e| bad(format!("zip member #{i} has a bad name: {e}")))?;
        let name = raw_name.strip_suffix(".npy").unwrap_or(&raw_name).to_string();
        let mut bytes = Vec::with_capacity(member.size() as usize);
        member
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("`{name}`: cannot read its zip member (damaged or truncated): {e}")))?;
        let tensor = parse_npy(&bytes).map_err(|m| bad(format!("`{name}`: {m}")))?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// The element type of an array, from the `descr` of its header.
struct Descr {
    kind: Kind,
    size: usize,
    big_endian: bool,
}

fn parse_descr(descr: &str) -> Result<Descr, String> {
    let (order, code) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
        _ => ('=', descr),
    };
    let (kind, size) = match code {
        "f2" => (Kind::Half, 2),
        "f4" => (Kind::Float, 4),
        "f8" => (Kind::Double, 8),
        "i1" => (Kind::Int8, 1),
        "u1" => (Kind::Uint8, 1),
        "i2" => (Kind::Int16, 2),
        "i4" => (Kind::Int, 4),
        "i8" => (Kind::Int64, 8),
        "b1" => (Kind::Bool, 1),
        _ => return Err(format!("dtype `{descr}` is not supported (floats and integers are)")),
    };
    Ok(Descr { kind, size, big_endian: order == '>' && size > 1 })
}

/// The value text after `'key':` in a numpy header dict.
fn header_value<'a>(header: &'a str, key: &str) -> Result<&'a str, String> {
    let pat = format!("'{key}':");
    let at = header.find(&pat).ok_or_else(|| format!("its .npy header has no `{key}`: {header}"))?;
    Ok(header[at + pat.len()..].trim_start())
}

/// One `.npy` array (format versions 1 to 3) as an f32 tensor.
fn parse_npy(bytes: &[u8]) -> Result<Tensor, String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy array (bad magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| "its .npy header is truncated".to_string())
        .map(String::from_utf8_lossy)?;

    let descr_text = header_value(&header, "descr")?;
    let descr = descr_text
        .strip_prefix('\'')
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| format!("cannot parse the dtype in {header}"))?;
    let descr = parse_descr(descr)?;
    let fortran = header_value(&header, "fortran_order")?.starts_with("True");
    let shape_text = header_value(&header, "shape")?;
    let shape_text = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| format!("cannot parse the shape in {header}"))?;
    let shape: Vec<i64> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>().map_err(|_| format!("cannot parse the shape in {header}")))
        .collect::<Result<_, _>>()?;

    let numel: i64 = shape.iter().product();
    let need = numel as usize * descr.size;
    let data = &bytes[start + header_len..];
    if data.len() != need {
        return Err(format!(
            "holds {} bytes of data, but shape {shape:?} needs {need} (truncated file?)",
            data.len()
        ));
    }
    let swapped;
    let data = if descr.big_endian {
        swapped = data.chunks_exact(descr.size).flat_map(|c| c.iter().rev().copied()).collect::<Vec<u8>>();
        &swapped[..]
    } else {
        data
    };
    let t = if fortran {
        // Column-major: the data is the row-major array of the reversed shape, transposed.
        let rev: Vec<i64> = shape.iter().rev().copied().collect();
        let perm: Vec<i64> = (0..shape.len() as i64).rev().collect();
        Tensor::f_from_data_size(data, &rev, descr.kind).map_err(|e| e.to_string())?.permute(&perm[..])
    } else {
        Tensor::f_from_data_size(data, &shape, descr.kind).map_err(|e| e.to_string())?
    };
    Ok(t.to_kind(Kind::Float).contiguous())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}")
            .replace("true", "True")
            .replace("false", "False");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn reads_c_order_fortran_order_and_big_endian_arrays() {
        let le: Vec<u8> = [1f32, 2., 3., 4., 5., 6.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = parse_npy(&npy("<f4", false, "(2, 3)", &le)).unwrap();
        assert_eq!(t.size(), [2, 3]);
        assert_eq!(values(&t), [1., 2., 3., 4., 5., 6.]);
        // The same bytes in Fortran order are the columns: [[1, 3, 5], [2, 4, 6]].
        let t = parse_npy(&npy("<f4", true, "(2, 3)", &le)).unwrap();
        assert_eq!(values(&t), [1., 3., 5., 2., 4., 6.]);
        let be: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
        let t = parse_npy(&npy(">f8", false, "(2,)", &be)).unwrap();
        assert_eq!((t.kind(), values(&t)), (Kind::Float, vec![1.5, -2.0]));
        let t = parse_npy(&npy("<i8", false, "()", &7i64.to_le_bytes())).unwrap();
        assert_eq!((t.size(), values(&t)), (vec![], vec![7.0]));
    }

    #[test]
    fn rejects_short_data_and_unknown_dtypes() {
        let err = parse_npy(&npy("<f4", false, "(2, 3)", &[0u8; 20])).unwrap_err();
        assert!(err.contains("holds 20 bytes") && err.contains("needs 24"), "{err}");
        let err = parse_npy(&npy("<c8", false, "(1,)", &[0u8; 8])).unwrap_err();
        assert!(err.contains("`<c8` is not supported"), "{err}");
        assert!(parse_npy(b"PK\x03\x04 not an array").unwrap_err().contains("bad magic"));
    }
}
