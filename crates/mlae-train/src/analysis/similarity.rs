//! Expert parameter similarity (paper appendix A.4, Figures 4 and 5): per adapted layer, the
//! cosine between every pair of experts, per run the mean, what the `similarity.json` report
//! holds, and the runs' numbers arranged as the heatmaps and bars show them.

use crate::error::{Result, TrainError};
use mlae_core::{AdapterKind, SimilarityReport, TargetLayer};
use mlae_vit::{AdaptedVit, ExpertFactors};
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// What the similarity numbers are, written into the JSON so the file explains itself.
pub const SIMILARITY_DEFINITION: &str = "cosine similarity between the flattened expert matrices \
lambda_i B_i^T A_i of one adapted layer (paper appendix A.4; for LoRA the experts are the r \
rank-1 products column_i(B) row_i(A) scaled by alpha/r); `mean` of a layer averages the pairs \
i < j, the run's `mean` averages the layers (layers with one expert are skipped); computed \
with mlae-core's factorised formula, no expert matrix is built";

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
pub(super) fn array2(t: &Tensor) -> Result<Array2<f32>> {
    let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let (r, c) = t.size2()?;
    let v = Vec::<f32>::try_from(t.view(-1))?;
    Array2::from_shape_vec((r as usize, c as usize), v)
        .map_err(|e| TrainError::Analysis(format!("internal shape error: {e}")))
}

pub(super) fn array1(t: &Tensor) -> Result<Array1<f32>> {
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
            model.plan().kind()
        )));
    }
    let mut factors = Vec::with_capacity(adapters.len());
    for a in &adapters {
        let f = a.factors();
        let n = f.coefficients.size()[0] as usize;
        factors.push((a.site(), n, f.expert_rank, folded_factors(&f)?));
    }
    let report = SimilarityReport::try_from_layers(
        factors.iter().map(|(site, _, k, (a, b))| (site.name(), a.view(), b.view(), *k)),
    )?;
    let layers = report
        .layers
        .into_iter()
        .zip(&factors)
        .map(|(l, (site, n, k, _))| LayerSimilarity {
            name: l.name,
            block: site.block,
            target: site.target,
            experts: *n,
            expert_rank: *k,
            mean: finite(l.mean),
            matrix: l.matrix.outer_iter().map(|r| r.to_vec()).collect(),
        })
        .collect();
    Ok((layers, finite(report.mean)))
}

/// The heatmap panels of one run (paper Fig. 5): one per layer, then (for several layers of
/// the same size) their element-wise mean.
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
