//! Expert contribution maps (paper Figures 6 and 7): where on an image each expert of one
//! block acts, and what the `experts_block<N>_<target>.json` report holds.

use crate::config::Precision;
use crate::error::{Result, TrainError};
use crate::evaluator::{Preprocess, WhichCheckpoint};
use crate::setup::transforms;
use mlae_core::TargetLayer;
use mlae_vit::AdaptedVit;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

pub use mlae_plot::MapScale;

/// Per-expert contribution sizes of one block for a batch of images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertMaps {
    pub block: usize,
    pub target: TargetLayer,
    pub experts: usize,
    pub expert_rank: usize,
    /// Patch grid (rows, columns).
    pub grid: (usize, usize),
    /// `sizes[image][expert]`: `||c_{i,t}||_2` for every patch token t, row-major over the grid.
    pub sizes: Vec<Vec<Vec<f32>>>,
}

/// The documented definition, repeated in the JSON output.
pub const EXPERT_MAP_DEFINITION: &str = "for patch token t (the class token is excluded) with input \
x_t to the adapted linear layer (at inference: every expert on, unscaled), expert i adds \
c_{i,t} = B_i^T diag(lambda_i) A_i x_t to the layer's output; the value is ||c_{i,t}||_2 \
(rank-1 experts: |lambda_i| |a_i . x_t| ||b_i||_2)";

/// The adapted target used for `block` when none is asked for: the first of qkv, proj, fc1,
/// fc2, q, k, v that carries an adapter.
pub fn default_target(model: &AdaptedVit, block: usize) -> Option<TargetLayer> {
    TargetLayer::ALL.iter().copied().find(|&t| model.adapter(block, t).is_some())
}

/// `||B_i^T diag(lambda_i) A_i x_t||_2` for every image, expert and patch token of `x`
/// (normalised images `(N, 3, H, W)`): a tensor `(N, n, tokens - 1)`.
///
/// One rank-r product for all experts (`u = x A^T` scaled by the coefficients), then the
/// squared size through each expert's `k x k` Gram matrix `G_i = B_i B_i^T`:
/// `||B_i^T u_i||^2 = u_i^T G_i u_i`.
pub fn expert_contributions(
    model: &AdaptedVit,
    x: &Tensor,
    block: usize,
    target: TargetLayer,
) -> Result<Tensor> {
    let adapter = model.adapter(block, target).ok_or_else(|| {
        TrainError::Analysis(format!(
            "block {block} has no adapter on {target} (adapted: {})",
            adapted_list(model)
        ))
    })?;
    let f = adapter.factors();
    let (n, k) = (f.coefficients.size()[0], f.expert_rank as i64);
    let input = model.layer_input(x, block, target)?; // (N, T, in)
    let patches = input.narrow(1, 1, input.size()[1] - 1);
    Ok(tch::no_grad(|| {
        let a = f.a.to_kind(Kind::Float);
        let b = f.b.to_kind(Kind::Float);
        let c = f.coefficients.to_kind(Kind::Float).repeat_interleave_self_int(k, 0, None);
        let u = patches.matmul(&a.tr()) * c; // (N, P, n k)
        let (bn, p) = (u.size()[0], u.size()[1]);
        let u = u.view([bn, p, n, k]);
        let bk = b.view([n, k, -1]);
        let g = bk.matmul(&bk.transpose(1, 2)); // (n, k, k)
        let sq = Tensor::einsum("bpik,ikl,bpil->bip", &[&u, &g, &u], None::<i64>);
        sq.clamp_min(0.0).sqrt()
    }))
}

/// The adapted layers of a model, for error messages.
pub(super) fn adapted_list(model: &AdaptedVit) -> String {
    let names: Vec<String> = model.adapters().map(|a| a.site().name()).collect();
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

/// Decodes image files through a run's evaluation transform: (uint8 NHWC pixels, normalised
/// `(N, 3, H, W)` tensor).
pub fn load_run_images(
    cfg: &crate::config::ExperimentConfig,
    files: &[PathBuf],
) -> Result<(mlae_data::ImageSet, Tensor)> {
    let list = mlae_data::SplitList {
        name: "analyze".into(),
        source: PathBuf::from("--images"),
        items: files
            .iter()
            .enumerate()
            .map(|(i, p)| mlae_data::Item { path: p.clone(), label: 0, line: i + 1 })
            .collect(),
        json: false,
    };
    let (_, tf) = transforms(cfg.data.benchmark, cfg.model.image_size as u32);
    let set = mlae_data::load_images(&list, &tf, 1, None, cfg.train.seed)?;
    let x = Tensor::from_data_size(
        set.pixels(),
        &[set.len as i64, set.height as i64, set.width as i64, 3],
        Kind::Uint8,
    );
    // fp32 on the CPU, where `load_run_model` puts the model.
    let x = Preprocess::new(cfg.data.normalization, Precision::Fp32, Device::Cpu).apply(&x);
    Ok((set, x))
}

/// Options of [`expert_maps`].
#[derive(Debug, Clone)]
pub struct ExpertMapOptions {
    pub block: usize,
    /// None: [`default_target`].
    pub target: Option<TargetLayer>,
    pub scale: MapScale,
    /// Side of one cell of the PNG grid, in pixels.
    pub cell: u32,
    pub checkpoint: WhichCheckpoint,
}

/// `experts.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertMapsOutput {
    pub run: PathBuf,
    pub checkpoint: String,
    pub definition: String,
    pub scale: MapScale,
    pub images: Vec<PathBuf>,
    pub maps: ExpertMaps,
    /// The PNG grid, relative to the output directory.
    pub png: String,
    /// Its size in pixels.
    pub png_size: (u32, u32),
}
