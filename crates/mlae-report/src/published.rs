//! The paper's published rows (`configs/published/mlae-paper.toml`), shown beside ours.

use crate::error::{ReportError, Result, bail};
use mlae_data::Benchmark;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    pub vtab: PublishedBench,
    pub fgvc: PublishedBench,
    pub masking: PublishedMasking,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedBench {
    pub tasks: Vec<String>,
    pub rows: Vec<PublishedRow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedRow {
    pub method: String,
    #[serde(default)]
    pub params: Option<f64>,
    /// One value per task, in `tasks` order; `nan` for a cell the paper prints but our text
    /// copy does not show legibly (left out: see the row's `note`).
    #[serde(default)]
    pub acc: Vec<f64>,
    /// VTAB-1k: the printed average.
    #[serde(default)]
    pub average: Option<f64>,
    /// FGVC: the printed mean over datasets.
    #[serde(default)]
    pub mean: Option<f64>,
    #[serde(default)]
    pub seeds: Vec<u64>,
    #[serde(default)]
    pub per_seed: Vec<Vec<f64>>,
    #[serde(default)]
    pub seed_means: Vec<f64>,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedMasking {
    pub patterns: Vec<String>,
    pub fixed: Vec<f64>,
    pub stochastic: Vec<f64>,
    pub mixed: Vec<f64>,
    pub uniform_stochastic: f64,
}

impl PublishedRow {
    /// The legible cells by task; a `nan` (left-out) cell is absent.
    pub(crate) fn by_task<'a>(&self, tasks: &'a [String]) -> BTreeMap<&'a str, f64> {
        tasks.iter().map(String::as_str).zip(self.acc.iter().copied()).filter(|(_, v)| !v.is_nan()).collect()
    }
}

pub fn load_published(path: &Path) -> Result<Published> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ReportError::Io { path: path.into(), source })?;
    let p: Published =
        toml::from_str(&text).map_err(|e| ReportError::Invalid(format!("{}: {e}", path.display())))?;
    for (name, b) in [("vtab", &p.vtab), ("fgvc", &p.fgvc)] {
        // The published values are labelled by task name; the names must be the manifest's.
        let bench: Benchmark = name.parse().map_err(ReportError::Invalid)?;
        let mut known = bench.task_names()?;
        let mut listed = b.tasks.clone();
        known.sort();
        listed.sort();
        if listed != known {
            bail!(
                "{}: {name}.tasks must name each task of data-manifests' {name} benchmark once; \
                 it lists {:?}, the manifest has {:?}",
                path.display(),
                b.tasks,
                known
            );
        }
        for r in &b.rows {
            if !r.acc.is_empty() && r.acc.len() != b.tasks.len() {
                bail!(
                    "{}: {name} row {}: {} values for {} tasks",
                    path.display(),
                    r.method,
                    r.acc.len(),
                    b.tasks.len()
                );
            }
            if r.acc.iter().any(|v| v.is_nan()) && r.note.is_none() {
                bail!(
                    "{}: {name} row {}: a left-out (nan) cell needs a note saying why",
                    path.display(),
                    r.method
                );
            }
            if r.per_seed.iter().any(|s| s.len() != b.tasks.len()) || r.per_seed.len() != r.seeds.len() {
                bail!(
                    "{}: {name} row {}: per_seed must hold one row of every task per seed",
                    path.display(),
                    r.method
                );
            }
        }
    }
    Ok(p)
}
