//! Resizing a learned position table to another patch grid, as timm's
//! `resample_abs_pos_embed` does (its default: bicubic with anti-aliasing, which is PyTorch's
//! `_upsample_bicubic2d_aa`, a = -0.5 like PIL; plain bicubic uses a = -0.75 and disagrees).

use crate::error::{Result, VitError};
use tch::{Kind, Tensor};

/// The side of the square grid of a table with `tokens` rows, `num_prefix` of them prefix
/// (class) tokens; `None` when the rest is not a perfect square.
pub fn square_grid(tokens: i64, num_prefix: i64) -> Option<i64> {
    let n = tokens - num_prefix;
    if n < 1 {
        return None;
    }
    let side = (n as f64).sqrt().round() as i64;
    (side * side == n).then_some(side)
}

/// Resamples `pos: (1, num_prefix + h w, dim)` from its square grid to `new_grid = (h', w')`,
/// leaving the prefix tokens as they are. Computed in f32 and returned in `pos`'s kind;
/// differentiable (so a trainable table can be resized on the fly).
///
/// ```
/// use tch::{Kind, Tensor};
/// let pos = Tensor::randn([1, 1 + 4 * 4, 8], (Kind::Float, tch::Device::Cpu));
/// let out = mlae_vit::resample_pos_embed(&pos, (6, 6), 1).unwrap();
/// assert_eq!(out.size(), [1, 1 + 36, 8]);
/// assert!(out.narrow(1, 0, 1).equal(&pos.narrow(1, 0, 1))); // class token untouched
/// ```
pub fn resample_pos_embed(pos: &Tensor, new_grid: (i64, i64), num_prefix: i64) -> Result<Tensor> {
    let size = pos.size();
    if size.len() != 3 || size[0] != 1 {
        return Err(VitError::Config(format!(
            "position table has shape {size:?}; expected (1, tokens, dim)"
        )));
    }
    let (tokens, dim) = (size[1], size[2]);
    let old = square_grid(tokens, num_prefix).ok_or_else(|| {
        VitError::Config(format!(
            "position table has {tokens} rows: {num_prefix} prefix token(s) plus a number of patches that \
             is not a square grid"
        ))
    })?;
    if (old, old) == new_grid {
        return Ok(pos.shallow_clone());
    }
    let kind = pos.kind();
    let prefix = pos.narrow(1, 0, num_prefix);
    let grid = pos
        .narrow(1, num_prefix, old * old)
        .reshape([1, old, old, dim])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        .internal_upsample_bicubic2d_aa([new_grid.0, new_grid.1], false, None, None)
        .permute([0, 2, 3, 1])
        .reshape([1, new_grid.0 * new_grid.1, dim])
        .to_kind(kind);
    Ok(Tensor::cat(&[prefix, grid], 1))
}
