//! Analyses of trained adapters (paper section 4.3): the experts' parameter cosine similarity
//! (appendix A.4, Figures 4 and 5) and per-expert feature maps (Figures 6 and 7).
//!
//! Both read adapters through [`mlae_vit::AdapterLayer::factors`], so every adapter kind is
//! analysed the same way: MLAE's experts, LoRA's r rank-1 components (coefficient alpha / r),
//! DMLoRA's branches (coefficient s / K). The numbers come from mlae-core; this module only
//! gathers them per run and draws them.

use crate::error::{Result, TrainError};
use crate::trainer::{self, WhichCheckpoint};
use mlae_core::{AdapterKind, SimilarityReport, TargetLayer};
use mlae_vit::{AdaptedVit, ExpertFactors};
use ndarray::{Array1, Array2};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use mlae_plot::register_plot_font as font_available;

/// What the similarity numbers are, written into the JSON so the file explains itself.
pub const SIMILARITY_DEFINITION: &str = "cosine similarity between the flattened expert matrices \
lambda_i B_i^T A_i of one adapted layer (paper appendix A.4; for LoRA the experts are the r \
rank-1 products column_i(B) row_i(A) scaled by alpha/r); `mean` of a layer averages the pairs \
i < j, the run's `mean` averages the layers (layers with one expert are skipped); computed \
with mlae-core's factorised formula, no expert matrix is built";

/// Side of one panel of the similarity heatmap PNG, in pixels.
pub const HEATMAP_PANEL: u32 = 220;
/// Panels per row of the similarity heatmap PNG.
pub const HEATMAP_COLUMNS: usize = 4;
/// Height of the colour-bar strip under the heatmap panels, in pixels.
pub const HEATMAP_COLORBAR: u32 = 50;
/// Height of the label row above the expert feature-map grid, in pixels.
pub const EXPERT_HEADER: u32 = 24;

/// One adapted layer's expert similarity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSimilarity {
    /// `blocks.N.attn.qkv`, as in the tensor names.
    pub name: String,
    pub block: usize,
    pub target: TargetLayer,
    pub experts: usize,
    pub expert_rank: usize,
    /// Mean over the pairs i < j; `None` for a single expert.
    pub mean: Option<f64>,
    /// The `experts x experts` cosine matrix, row by row.
    pub matrix: Vec<Vec<f64>>,
}

/// The similarity of every adapted layer of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSimilarity {
    pub run: PathBuf,
    /// The run's name in plots (the method, or the directory name where that is ambiguous).
    pub label: String,
    pub task: String,
    pub method: AdapterKind,
    /// `last` or `best`.
    pub checkpoint: String,
    /// Mean of the layers' means; `None` when no layer has two experts.
    pub mean: Option<f64>,
    pub layers: Vec<LayerSimilarity>,
    /// The heatmap PNG of this run, relative to the output directory.
    pub heatmap: String,
}

/// `similarity.json`: every analysed run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimilarityOutput {
    pub definition: String,
    pub runs: Vec<RunSimilarity>,
    /// The bar chart comparing the runs (paper Fig. 4), relative to the output directory.
    pub bar_chart: String,
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// A 2-D f32 tensor as an ndarray (copied to the CPU).
fn array2(t: &Tensor) -> Result<Array2<f32>> {
    let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let (r, c) = t.size2()?;
    let v = Vec::<f32>::try_from(t.view(-1))?;
    Array2::from_shape_vec((r as usize, c as usize), v)
        .map_err(|e| TrainError::Analysis(format!("internal shape error: {e}")))
}

fn array1(t: &Tensor) -> Result<Array1<f32>> {
    let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    Ok(Array1::from_vec(Vec::<f32>::try_from(t.view(-1))?))
}

/// The factors of one adapter as ndarrays: A `(n k, in)`, and B with the coefficients folded
/// in, `(n k, out)`, so that expert i is exactly `B'_i^T A_i = lambda_i B_i^T A_i`.
fn folded_factors(f: &ExpertFactors) -> Result<(Array2<f32>, Array2<f32>)> {
    let (a, b, c) = (array2(&f.a)?, array2(&f.b)?, array1(&f.coefficients)?);
    mlae_core::check_expert_shapes(a.view(), b.view(), Some(c.len()), None, f.expert_rank)?;
    let b = mlae_core::fold_lambda_into_b(b.view(), c.view(), f.expert_rank);
    Ok((a, b))
}

/// The expert similarity of every adapted layer of a model, in plan order, and their mean.
/// The experts include their coefficients, so a negative lambda flips the sign of its row
/// and column; cosine ignores the coefficients' size.
pub fn model_similarity(model: &AdaptedVit) -> Result<(Vec<LayerSimilarity>, Option<f64>)> {
    let adapters: Vec<_> = model.adapters().collect();
    if adapters.is_empty() {
        return Err(TrainError::Analysis(format!(
            "the model has no adapter layers (method {}): nothing to compare",
            model.plan().kind
        )));
    }
    let mut factors = Vec::with_capacity(adapters.len());
    for a in &adapters {
        factors.push((a.layer_plan().clone(), a.factors().expert_rank, folded_factors(&a.factors())?));
    }
    let report = SimilarityReport::try_from_layers(
        factors.iter().map(|(plan, k, (a, b))| (plan.name(), a.view(), b.view(), *k)),
    )?;
    let layers = report
        .layers
        .into_iter()
        .zip(&factors)
        .map(|(l, (plan, k, _))| LayerSimilarity {
            name: l.name,
            block: plan.block,
            target: plan.target,
            experts: plan.experts,
            expert_rank: *k,
            mean: finite(l.mean),
            matrix: l.matrix.outer_iter().map(|r| r.to_vec()).collect(),
        })
        .collect();
    Ok((layers, finite(report.mean)))
}

fn checkpoint_name(which: WhichCheckpoint) -> &'static str {
    match which {
        WhichCheckpoint::Best => "best",
        WhichCheckpoint::Last => "last",
    }
}

/// File-name-safe version of a label.
fn slug(s: &str) -> String {
    let s: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    if s.is_empty() { "run".into() } else { s }
}

/// `mlae-cli analyze similarity`: the similarity of every run (JSON), one heatmap PNG per run
/// (paper Fig. 5) and a bar chart of the runs' means grouped by task (Fig. 4), all in `out`.
///
/// `labels` name the runs in the plots (one per run, or empty); by default a run is called by
/// its method, or by its directory name when two runs of one task share a method.
pub fn similarity(
    runs: &[PathBuf],
    labels: &[String],
    which: WhichCheckpoint,
    out: &Path,
) -> Result<SimilarityOutput> {
    if runs.is_empty() {
        return Err(TrainError::Analysis("no run given".into()));
    }
    if !labels.is_empty() && labels.len() != runs.len() {
        return Err(TrainError::Analysis(format!(
            "{} labels for {} runs: give one label per run or none",
            labels.len(),
            runs.len()
        )));
    }
    std::fs::create_dir_all(out).map_err(crate::error::io_err(out))?;
    let mut results = Vec::with_capacity(runs.len());
    for run in runs {
        let (cfg, model) = trainer::load_run_model(run, which)?;
        let (layers, mean) = model_similarity(&model).map_err(|e| match e {
            TrainError::Analysis(m) => TrainError::Analysis(format!("{}: {m}", run.display())),
            other => other,
        })?;
        tracing::info!("{}: mean expert similarity {:?}", run.display(), mean);
        results.push(RunSimilarity {
            run: run.clone(),
            label: cfg.adapter.kind.to_string(),
            task: cfg.data.task.clone(),
            method: cfg.adapter.kind,
            checkpoint: checkpoint_name(which).into(),
            mean,
            layers,
            heatmap: String::new(),
        });
    }
    if labels.is_empty() {
        let keys: Vec<(String, String)> = results.iter().map(|r| (r.task.clone(), r.label.clone())).collect();
        for (i, r) in results.iter_mut().enumerate() {
            if keys.iter().filter(|k| **k == keys[i]).count() > 1 {
                r.label = dir_name(&r.run);
            }
        }
    } else {
        for (r, l) in results.iter_mut().zip(labels) {
            r.label = l.clone();
        }
    }
    for (i, r) in results.iter_mut().enumerate() {
        r.heatmap = format!("similarity_{}_{}.png", i + 1, slug(&dir_name(&r.run)));
        draw_similarity_heatmaps(r, &out.join(&r.heatmap))?;
    }
    let bar_chart = "similarity_means.png".to_string();
    draw_similarity_bars(&results, &out.join(&bar_chart))?;
    let output = SimilarityOutput { definition: SIMILARITY_DEFINITION.into(), runs: results, bar_chart };
    let text = serde_json::to_string_pretty(&output).expect("plain data serialises");
    crate::rundir::write_atomic(&out.join("similarity.json"), text.as_bytes())?;
    Ok(output)
}

fn dir_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

/// Blue (-1) - white (0) - red (+1), for cosine similarities.
fn diverging(v: f64) -> RGBColor {
    let v = v.clamp(-1.0, 1.0);
    let (lo, hi) = if v < 0.0 {
        ((255.0, 255.0, 255.0), (40.0, 80.0, 200.0))
    } else {
        ((255.0, 255.0, 255.0), (190.0, 20.0, 40.0))
    };
    let t = v.abs();
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(lo.0, hi.0), mix(lo.1, hi.1), mix(lo.2, hi.2))
}

/// The heatmap panels of one run: one per layer, then (for several layers of the same size)
/// their element-wise mean; `HEATMAP_COLUMNS` per row, a colour bar underneath. The PNG is
/// `min(panels, 4) * 220` wide and `rows * 220 + 50` high.
pub fn heatmap_panels(run: &RunSimilarity) -> Vec<(String, Vec<Vec<f64>>)> {
    let mut panels: Vec<(String, Vec<Vec<f64>>)> =
        run.layers.iter().map(|l| (format!("block {} {}", l.block, l.target), l.matrix.clone())).collect();
    let n = run.layers.first().map_or(0, |l| l.experts);
    if run.layers.len() > 1 && run.layers.iter().all(|l| l.experts == n) {
        let mut mean = vec![vec![0.0; n]; n];
        for l in &run.layers {
            for (i, row) in l.matrix.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    mean[i][j] += v / run.layers.len() as f64;
                }
            }
        }
        panels.push(("mean over layers".into(), mean));
    }
    panels
}

/// The size of the heatmap PNG for `panels` panels.
pub fn heatmap_size(panels: usize) -> (u32, u32) {
    let cols = panels.clamp(1, HEATMAP_COLUMNS);
    let rows = panels.max(1).div_ceil(HEATMAP_COLUMNS);
    (cols as u32 * HEATMAP_PANEL, rows as u32 * HEATMAP_PANEL + HEATMAP_COLORBAR)
}

fn plot_err(path: &Path) -> impl Fn(String) -> TrainError + '_ {
    move |message| TrainError::Plot { path: path.to_path_buf(), message }
}

/// Draws [`heatmap_panels`] of a run into a PNG (paper Fig. 5).
pub fn draw_similarity_heatmaps(run: &RunSimilarity, path: &Path) -> Result<()> {
    let labels = font_available();
    let panels = heatmap_panels(run);
    let (w, h) = heatmap_size(panels.len());
    let perr = plot_err(path);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(e.to_string()))?;
    let grid_h = h - HEATMAP_COLORBAR;
    let (top, bar) = root.split_vertically(grid_h);
    for (k, (title, m)) in panels.iter().enumerate() {
        let (col, row) = ((k % HEATMAP_COLUMNS) as i32, (k / HEATMAP_COLUMNS) as i32);
        let (x0, y0) = (col * HEATMAP_PANEL as i32, row * HEATMAP_PANEL as i32);
        let n = m.len().max(1) as i32;
        let title_h = 24;
        let side = HEATMAP_PANEL as i32 - title_h - 12;
        let cell = (side / n).max(1);
        let (mx, my) = (x0 + (HEATMAP_PANEL as i32 - cell * n) / 2, y0 + title_h + (side - cell * n) / 2);
        if labels {
            top.draw(&Text::new(title.clone(), (x0 + 8, y0 + 4), ("sans-serif", 15).into_font()))
                .map_err(|e| perr(e.to_string()))?;
        }
        for (i, r) in m.iter().enumerate() {
            for (j, v) in r.iter().enumerate() {
                let (cx, cy) = (mx + j as i32 * cell, my + i as i32 * cell);
                top.draw(&Rectangle::new([(cx, cy), (cx + cell, cy + cell)], diverging(*v).filled()))
                    .map_err(|e| perr(e.to_string()))?;
                if labels && cell >= 24 {
                    let style = ("sans-serif", (cell / 3).min(14)).into_font().color(&BLACK);
                    top.draw(&Text::new(format!("{v:.2}"), (cx + 2, cy + cell / 3), style))
                        .map_err(|e| perr(e.to_string()))?;
                }
            }
        }
        top.draw(&Rectangle::new([(mx, my), (mx + cell * n, my + cell * n)], BLACK.stroke_width(1)))
            .map_err(|e| perr(e.to_string()))?;
    }
    // The run's label, then a colour bar from -1 to +1 with its ticks underneath.
    let (bx0, bx1, by0, by1) = (40i32, w as i32 - 40, 20i32, 32i32);
    let width = (bx1 - bx0).max(1);
    for x in bx0..bx1 {
        let v = -1.0 + 2.0 * (x - bx0) as f64 / width as f64;
        bar.draw(&Rectangle::new([(x, by0), (x + 1, by1)], diverging(v).filled()))
            .map_err(|e| perr(e.to_string()))?;
    }
    if labels {
        bar.draw(&Text::new(
            format!("{} (cosine similarity)", run.label),
            (bx0, 3),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(|e| perr(e.to_string()))?;
        for (v, x) in [(-1.0, bx0), (0.0, (bx0 + bx1) / 2), (1.0, bx1)] {
            bar.draw(&Text::new(format!("{v:+.0}"), (x - 8, by1 + 3), ("sans-serif", 12).into_font()))
                .map_err(|e| perr(e.to_string()))?;
        }
    }
    root.present().map_err(|e| perr(e.to_string()))
}

/// The bars of Fig. 4: one group per task (in order of appearance), one bar per label within
/// it (runs with the same task and label are averaged).
pub fn bar_groups(runs: &[RunSimilarity]) -> (Vec<String>, Vec<String>, Vec<Vec<Option<f64>>>) {
    let mut tasks: Vec<String> = Vec::new();
    let mut series: Vec<String> = Vec::new();
    for r in runs {
        if !tasks.contains(&r.task) {
            tasks.push(r.task.clone());
        }
        if !series.contains(&r.label) {
            series.push(r.label.clone());
        }
    }
    let values = tasks
        .iter()
        .map(|t| {
            series
                .iter()
                .map(|s| {
                    let v: Vec<f64> = runs
                        .iter()
                        .filter(|r| &r.task == t && &r.label == s)
                        .filter_map(|r| r.mean)
                        .collect();
                    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
                })
                .collect()
        })
        .collect();
    (tasks, series, values)
}

/// Draws the runs' mean similarities as grouped bars (paper Fig. 4).
pub fn draw_similarity_bars(runs: &[RunSimilarity], path: &Path) -> Result<()> {
    let (tasks, series, values) = bar_groups(runs);
    // Room for every bar, plus the legend panel on the right.
    let w = (160 + tasks.len() as u32 * (series.len() as u32 * 36 + 30)).max(640) + 270;
    let chart = mlae_plot::BarChart {
        title: "Mean expert cosine similarity".into(),
        y_label: "cosine similarity".into(),
        series: series
            .iter()
            .enumerate()
            .map(|(s, name)| (name.clone(), values.iter().map(|row| row[s]).collect()))
            .collect(),
        categories: tasks,
        y_range: None,
    };
    Ok(mlae_plot::grouped_bars(path, (w, 480), &chart)?)
}

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
/// fc2 that carries an adapter.
pub fn default_target(model: &AdaptedVit, block: usize) -> Option<TargetLayer> {
    [TargetLayer::Qkv, TargetLayer::Proj, TargetLayer::Fc1, TargetLayer::Fc2]
        .into_iter()
        .find(|&t| model.adapter(block, t).is_some())
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
    let names: Vec<String> = model.adapters().map(|a| a.layer_plan().name()).collect();
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
    let (_, tf) = trainer::transforms(cfg.data.benchmark, cfg.model.image_size as u32);
    let set = mlae_data::load_images(&list, &tf, 1, None, cfg.train.seed)?;
    let (mean, std) = cfg.data.normalization.mean_std();
    let x = Tensor::from_data_size(
        set.pixels(),
        &[set.len as i64, set.height as i64, set.width as i64, 3],
        Kind::Uint8,
    )
    .permute([0, 3, 1, 2])
    .to_kind(Kind::Float)
        / 255.0;
    let x = (x - Tensor::from_slice(&mean).view([1, 3, 1, 1])) / Tensor::from_slice(&std).view([1, 3, 1, 1]);
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
    let (cfg, model) = trainer::load_run_model(run, opts.checkpoint)?;
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
        expert_rank: adapter.layer_plan().expert_rank,
        grid,
        sizes: maps,
    };
    std::fs::create_dir_all(out).map_err(crate::error::io_err(out))?;
    let png = format!("experts_block{}_{}.png", opts.block, target);
    let png_size = draw_expert_grid(&maps, &set, opts.scale, opts.cell, &out.join(&png))?;
    let output = ExpertMapsOutput {
        run: run.to_path_buf(),
        checkpoint: checkpoint_name(opts.checkpoint).into(),
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

/// Size of the expert grid PNG: `(1 + experts) * cell` wide, `EXPERT_HEADER + images * cell`
/// high.
pub fn expert_grid_size(images: usize, experts: usize, cell: u32) -> (u32, u32) {
    ((1 + experts as u32) * cell, EXPERT_HEADER + images as u32 * cell)
}

/// Dark blue - cyan - yellow - red, for contribution sizes in [0, 1].
fn sequential(t: f32) -> [f32; 3] {
    const STOPS: [(f32, [f32; 3]); 5] = [
        (0.0, [20.0, 20.0, 120.0]),
        (0.3, [30.0, 130.0, 220.0]),
        (0.55, [80.0, 210.0, 170.0]),
        (0.8, [250.0, 220.0, 60.0]),
        (1.0, [220.0, 40.0, 30.0]),
    ];
    let t = t.clamp(0.0, 1.0);
    for w in STOPS.windows(2) {
        let ((t0, c0), (t1, c1)) = (w[0], w[1]);
        if t <= t1 {
            let u = (t - t0) / (t1 - t0);
            return [0, 1, 2].map(|i| c0[i] + (c1[i] - c0[i]) * u);
        }
    }
    STOPS[4].1
}

/// Bilinear sample of a `(h, w)` row-major grid at continuous coordinates (pixel centres).
fn bilinear(grid: &[f32], (h, w): (usize, usize), y: f32, x: f32) -> f32 {
    let y = (y - 0.5).clamp(0.0, (h - 1) as f32);
    let x = (x - 0.5).clamp(0.0, (w - 1) as f32);
    let (y0, x0) = (y.floor() as usize, x.floor() as usize);
    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
    let (fy, fx) = (y - y0 as f32, x - x0 as f32);
    let g = |r: usize, c: usize| grid[r * w + c];
    let top = g(y0, x0) * (1.0 - fx) + g(y0, x1) * fx;
    let bot = g(y1, x0) * (1.0 - fx) + g(y1, x1) * fx;
    top * (1.0 - fy) + bot * fy
}

/// Draws the grid (rows images, first column the image, then one column per expert, each
/// contribution map upsampled bilinearly and laid over the grey image) into a PNG; returns its
/// size.
pub fn draw_expert_grid(
    maps: &ExpertMaps,
    set: &mlae_data::ImageSet,
    scale: MapScale,
    cell: u32,
    path: &Path,
) -> Result<(u32, u32)> {
    let n_img = maps.sizes.len();
    let (w, h) = expert_grid_size(n_img, maps.experts, cell);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    // Colour ranges.
    let range = |vals: &mut dyn Iterator<Item = f32>| {
        vals.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
    };
    let range_of = |i: usize, e: usize| -> (f32, f32) {
        match scale {
            MapScale::Map => range(&mut maps.sizes[i][e].iter().copied()),
            MapScale::Image => range(&mut maps.sizes[i].iter().flatten().copied()),
            MapScale::Expert => range(&mut maps.sizes.iter().flat_map(|img| img[e].iter().copied())),
        }
    };
    let (ih, iw) = (set.height, set.width);
    let cellf = cell as f32;
    for i in 0..n_img {
        let img = set.image(i);
        let y0 = EXPERT_HEADER + i as u32 * cell;
        let pixel = |py: u32, px: u32| -> [f32; 3] {
            let sy = ((py as f32 + 0.5) * ih as f32 / cellf) as usize;
            let sx = ((px as f32 + 0.5) * iw as f32 / cellf) as usize;
            let o = (sy.min(ih - 1) * iw + sx.min(iw - 1)) * 3;
            [img[o] as f32, img[o + 1] as f32, img[o + 2] as f32]
        };
        for col in 0..=maps.experts {
            let x0 = col as u32 * cell;
            let (lo, hi) = if col > 0 { range_of(i, col - 1) } else { (0.0, 1.0) };
            let span = if hi > lo { hi - lo } else { 1.0 };
            for py in 0..cell {
                for px in 0..cell {
                    let rgb = pixel(py, px);
                    let out = if col == 0 {
                        rgb
                    } else {
                        let gy = (py as f32 + 0.5) * maps.grid.0 as f32 / cellf;
                        let gx = (px as f32 + 0.5) * maps.grid.1 as f32 / cellf;
                        let v = (bilinear(&maps.sizes[i][col - 1], maps.grid, gy, gx) - lo) / span;
                        let grey = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
                        let c = sequential(v);
                        [0, 1, 2].map(|k| 0.35 * grey + 0.65 * c[k])
                    };
                    // A one-pixel white border separates the cells.
                    let border = px == 0 || py == 0;
                    let o = (((y0 + py) * w + x0 + px) * 3) as usize;
                    for k in 0..3 {
                        buf[o + k] = if border { 255 } else { out[k].round().clamp(0.0, 255.0) as u8 };
                    }
                }
            }
        }
    }
    let perr = plot_err(path);
    if font_available() {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        for col in 0..=maps.experts {
            let text = if col == 0 { "image".to_string() } else { format!("expert {col}") };
            root.draw(&Text::new(text, (col as i32 * cell as i32 + 6, 4), ("sans-serif", 15).into_font()))
                .map_err(|e| perr(e.to_string()))?;
        }
        root.present().map_err(|e| perr(e.to_string()))?;
    }
    image::save_buffer(path, &buf, w, h, image::ExtendedColorType::Rgb8).map_err(|e| perr(e.to_string()))?;
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlae_core::AdapterSpec;
    use mlae_vit::VitConfig;

    fn tiny(spec: &AdapterSpec) -> AdaptedVit {
        let cfg = VitConfig {
            preset: None,
            patch_size: 4,
            dim: 16,
            depth: 2,
            heads: 2,
            mlp_dim: 32,
            in_chans: 3,
            image_size: 16,
            num_classes: 3,
            qkv_bias: true,
            layer_scale: false,
            layer_scale_init: 1e-5,
            drop_path: 0.0,
            eps: 1e-6,
        };
        let model = AdaptedVit::new(&cfg, spec, 5, Device::Cpu).unwrap();
        // Give B and lambda values (B starts at zero), including a negative coefficient.
        tch::no_grad(|| {
            for (name, mut t, _) in model.trainable() {
                if name.ends_with("_B") || name.ends_with("lora_B") {
                    t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
                }
                if name.ends_with("mlae_lambda") {
                    let mut v = vec![1.0f32; t.size()[0] as usize];
                    v[1] = -0.5;
                    t.copy_(&Tensor::from_slice(&v));
                }
            }
        });
        model
    }

    #[test]
    fn similarity_matches_mlae_core_with_coefficients() {
        tch::manual_seed(0);
        let spec = AdapterSpec { experts: 4, ..Default::default() };
        let model = tiny(&spec);
        let (layers, mean) = model_similarity(&model).unwrap();
        assert_eq!(layers.len(), 2);
        for (l, a) in layers.iter().zip(model.adapters()) {
            let f = a.factors();
            let (fa, fb, fc) =
                (array2(&f.a).unwrap(), array2(&f.b).unwrap(), array1(&f.coefficients).unwrap());
            let want = mlae_core::expert_similarity_with_coefficients(fa.view(), fb.view(), fc.view(), 1);
            for i in 0..4 {
                for j in 0..4 {
                    assert!((l.matrix[i][j] - want[[i, j]]).abs() < 1e-12);
                }
            }
            // lambda_1 < 0 flips row and column 1
            assert!(l.matrix[0][1] * mlae_core::expert_similarity(fa.view(), fb.view(), 1)[[0, 1]] <= 0.0);
            assert!((l.mean.unwrap() - mlae_core::mean_pairwise(&want)).abs() < 1e-12);
        }
        let avg = layers.iter().map(|l| l.mean.unwrap()).sum::<f64>() / 2.0;
        assert!((mean.unwrap() - avg).abs() < 1e-12);
    }

    #[test]
    fn contributions_match_the_direct_formula() {
        tch::manual_seed(1);
        for (kind, k) in [(mlae_core::AdapterKind::Mlae, 2), (mlae_core::AdapterKind::Lora, 1)] {
            let spec = AdapterSpec { kind, experts: 3, expert_rank: k, ..Default::default() };
            let model = tiny(&spec);
            let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
            let got = expert_contributions(&model, &x, 1, TargetLayer::Qkv).unwrap();
            let n = model.adapter(1, TargetLayer::Qkv).unwrap().layer_plan().experts as i64;
            assert_eq!(got.size(), [2, n, 16]);
            // Direct: build each expert's matrix and apply it to every patch token.
            let f = model.adapter(1, TargetLayer::Qkv).unwrap().factors();
            let r = f.expert_rank as i64;
            let input = model.layer_input(&x, 1, TargetLayer::Qkv).unwrap().narrow(1, 1, 16);
            for i in 0..n {
                let ai = f.a.narrow(0, i * r, r);
                let bi = f.b.narrow(0, i * r, r);
                let w = bi.tr().mm(&ai) * f.coefficients.double_value(&[i]); // (out, in)
                let c = input.matmul(&w.tr()); // (N, P, out)
                let want = c.norm_scalaropt_dim(2.0, [2i64].as_slice(), false);
                let diff = (got.select(1, i) - want).abs().max().double_value(&[]);
                assert!(diff < 1e-4, "{kind} expert {i}: {diff}");
            }
        }
        // Linear layers without an adapter are refused with the adapted list.
        let model = tiny(&AdapterSpec::default());
        let x = Tensor::zeros([1, 3, 16, 16], (Kind::Float, Device::Cpu));
        let err = expert_contributions(&model, &x, 0, TargetLayer::Fc1).unwrap_err().to_string();
        assert!(err.contains("blocks.0.attn.qkv"), "{err}");
    }

    #[test]
    fn layouts_and_bar_groups() {
        assert_eq!(heatmap_size(3), (3 * HEATMAP_PANEL, HEATMAP_PANEL + HEATMAP_COLORBAR));
        assert_eq!(heatmap_size(13), (4 * HEATMAP_PANEL, 4 * HEATMAP_PANEL + HEATMAP_COLORBAR));
        assert_eq!(expert_grid_size(2, 8, 100), (900, EXPERT_HEADER + 200));
        let run = |task: &str, label: &str, mean: f64| RunSimilarity {
            run: PathBuf::from(format!("runs/{task}-{label}")),
            label: label.into(),
            task: task.into(),
            method: AdapterKind::Mlae,
            checkpoint: "last".into(),
            mean: Some(mean),
            layers: Vec::new(),
            heatmap: String::new(),
        };
        let (tasks, series, values) = bar_groups(&[
            run("a", "mlae", 0.1),
            run("a", "lora", 0.5),
            run("b", "mlae", 0.2),
            run("b", "mlae", 0.4),
        ]);
        assert_eq!(tasks, ["a", "b"]);
        assert_eq!(series, ["mlae", "lora"]);
        assert_eq!(values[0], [Some(0.1), Some(0.5)]);
        assert!((values[1][0].unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(values[1][1], None);
    }
}
