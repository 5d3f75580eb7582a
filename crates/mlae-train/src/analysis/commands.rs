//! The `mlae-cli analyze` commands: each computes (`similarity`, `experts`), then draws what it
//! computed through mlae-plot and writes its JSON report. The compute modules never draw;
//! this module is the one place that joins computing and drawing.

use super::experts::{
    EXPERT_MAP_DEFINITION, ExpertMapOptions, ExpertMaps, ExpertMapsOutput, MapScale, adapted_list,
    default_target, expert_contributions, load_run_images,
};
use super::similarity::{
    RunSimilarity, SIMILARITY_DEFINITION, SimilarityOutput, bar_groups, heatmap_panels, model_similarity,
};
use crate::error::{Result, TrainError};
use crate::evaluator::{WhichCheckpoint, load_run_model};
use mlae_plot::{BarChart, ExpertGrid, expert_grid, grouped_bars, similarity_heatmaps};
use std::path::{Path, PathBuf};

/// Draws [`heatmap_panels`] of a run into a PNG (paper Fig. 5).
pub fn draw_similarity_heatmaps(run: &RunSimilarity, path: &Path) -> Result<()> {
    Ok(similarity_heatmaps(path, &heatmap_panels(run), &run.label)?)
}

/// Draws the runs' mean similarities as grouped bars (paper Fig. 4).
pub fn draw_similarity_bars(runs: &[RunSimilarity], path: &Path) -> Result<()> {
    let (tasks, series, values) = bar_groups(runs);
    // Room for every bar, plus the legend panel on the right.
    let w = (160 + tasks.len() as u32 * (series.len() as u32 * 36 + 30)).max(640) + 270;
    let chart = BarChart {
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
    Ok(grouped_bars(path, (w, 480), &chart)?)
}

/// Draws the contribution maps over their images into a PNG grid (paper Figs. 6 and 7);
/// returns its size.
pub fn draw_expert_grid(
    maps: &ExpertMaps,
    set: &mlae_data::ImageSet,
    scale: MapScale,
    cell: u32,
    path: &Path,
) -> Result<(u32, u32)> {
    let images: Vec<&[u8]> = (0..maps.sizes.len()).map(|i| set.image(i)).collect();
    let grid = ExpertGrid {
        experts: maps.experts,
        grid: maps.grid,
        sizes: &maps.sizes,
        images: &images,
        image_size: (set.height, set.width),
        scale,
        cell,
    };
    Ok(expert_grid(path, &grid)?)
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
        let (cfg, model) = load_run_model(run, which)?;
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
            checkpoint: which.name().into(),
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
