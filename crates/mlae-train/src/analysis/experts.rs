//! Expert contribution maps (paper Figures 6 and 7): where on an image each expert of one
//! block acts, and the `experts_block<N>_<target>.json` report.

use super::plots::draw_expert_grid;
use crate::config::Precision;
use crate::error::{Result, TrainError};
use crate::evaluator::{Preprocess, WhichCheckpoint, load_run_model};
use crate::setup::transforms;
use mlae_core::TargetLayer;
use mlae_vit::AdaptedVit;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// How the feature maps' colours are scaled (min to max of the chosen group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapScale {
    /// Each map on its own scale: where each expert acts, whatever its overall size.
    Map,
    /// One scale per image (row): experts of one image compared with each other.
    Image,
    /// One scale per expert (column): one expert compared across images.
    Expert,
}

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

fn adapted_list(model: &AdaptedVit) -> String {
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

/// `mlae-cli analyze experts`: the contribution maps of one block's experts for some images
/// (JSON) and a PNG grid, rows images, first column the image, then one column per expert.
pub fn expert_maps(
    run: &Path,
    images: &[PathBuf],
    opts: &ExpertMapOptions,
    out: &Path,
) -> Result<ExpertMapsOutput> {
    if images.is_empty() {
        return Err(TrainError::Analysis("no image given".into()));
    }
    if opts.cell < 8 {
        return Err(TrainError::Analysis(format!("cell size {} is below 8 pixels", opts.cell)));
    }
    let (cfg, model) = load_run_model(run, opts.checkpoint)?;
    let depth = model.config().depth as usize;
    if opts.block >= depth {
        return Err(TrainError::Analysis(format!(
            "block {} does not exist: the model has blocks 0..{}",
            opts.block,
            depth - 1
        )));
    }
    let target = match opts.target {
        Some(t) => t,
        None => default_target(&model, opts.block).ok_or_else(|| {
            TrainError::Analysis(format!(
                "block {} has no adapter (adapted: {})",
                opts.block,
                adapted_list(&model)
            ))
        })?,
    };
    let (set, x) = load_run_images(&cfg, images)?;
    let patch = model.config().patch_size as usize;
    let grid = (set.height / patch, set.width / patch);
    let sizes = expert_contributions(&model, &x, opts.block, target)?;
    let (n_img, n_exp, p) = sizes.size3()?;
    if p as usize != grid.0 * grid.1 {
        return Err(TrainError::Analysis(format!(
            "{p} patch tokens do not form the {}x{} grid of {}x{} images",
            grid.0, grid.1, set.height, set.width
        )));
    }
    let flat = Vec::<f32>::try_from(sizes.contiguous().view(-1))?;
    let p = p as usize;
    let maps: Vec<Vec<Vec<f32>>> = (0..n_img as usize)
        .map(|i| (0..n_exp as usize).map(|e| flat[(i * n_exp as usize + e) * p..][..p].to_vec()).collect())
        .collect();
    let adapter = model.adapter(opts.block, target).expect("checked by expert_contributions");
    let maps = ExpertMaps {
        block: opts.block,
        target,
        experts: n_exp as usize,
        expert_rank: adapter.factors().expert_rank,
        grid,
        sizes: maps,
    };
    std::fs::create_dir_all(out).map_err(crate::error::io_err(out))?;
    let png = format!("experts_block{}_{}.png", opts.block, target);
    let png_size = draw_expert_grid(&maps, &set, opts.scale, opts.cell, &out.join(&png))?;
    let output = ExpertMapsOutput {
        run: run.to_path_buf(),
        checkpoint: opts.checkpoint.name().into(),
        definition: EXPERT_MAP_DEFINITION.into(),
        scale: opts.scale,
        images: images.to_vec(),
        maps,
        png,
        png_size,
    };
    let text = serde_json::to_string_pretty(&output).expect("plain data serialises");
    crate::rundir::write_atomic(
        &out.join(format!("experts_block{}_{}.json", opts.block, target)),
        text.as_bytes(),
    )?;
    Ok(output)
}
