//! The sweep's finished runs as the report sees them, and the means it computes over them.

use crate::error::{ReportError, Result};
use mlae_data::TaskGroup;
use mlae_formats::RunPhase;
use mlae_sweep::grid::Stage;
use mlae_sweep::prepare::current_fingerprint;
use mlae_sweep::{Plan, RunRecord, SweepDir};
use std::collections::BTreeMap;

/// One finished run, as the report sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub task: String,
    /// Row label: the variant, plus the axes point for a plain grid with axes.
    pub row: String,
    pub seed: u64,
    /// `paper` or `val` (the run's `data.protocol`).
    pub protocol: String,
    pub stage: Stage,
    /// Top-1 test accuracy (%) the run reports.
    pub acc: f64,
    /// The best test accuracy seen during training (%; test-set selection, as the lineage reports).
    pub best_test_acc: Option<f64>,
    /// The best val200 accuracy (%) of a `val` protocol run (the epoch it selected).
    pub val_acc: Option<f64>,
    /// Trainable parameters outside the head (the paper's "# param").
    pub backbone_params: Option<f64>,
    pub wall_seconds: Option<f64>,
    /// Epochs the run trained (the training length an epoch curve is drawn along).
    pub epochs: u64,
    /// The run's name in its sweep (its directory under `runs/`).
    pub run: String,
}

/// Rows by label, cells by task, each cell the runs (seeds) of that row and task.
#[derive(Debug, Default)]
pub struct Table {
    pub rows: BTreeMap<String, BTreeMap<String, Vec<RunResult>>>,
}

impl Table {
    pub fn new(results: &[RunResult]) -> Self {
        let mut rows: BTreeMap<String, BTreeMap<String, Vec<RunResult>>> = BTreeMap::new();
        for r in results {
            rows.entry(r.row.clone()).or_default().entry(r.task.clone()).or_default().push(r.clone());
        }
        Self { rows }
    }

    pub(crate) fn runs(&self, row: &str, task: &str) -> &[RunResult] {
        self.rows.get(row).and_then(|c| c.get(task)).map_or(&[], Vec::as_slice)
    }

    /// Mean accuracy over seeds.
    pub fn cell(&self, row: &str, task: &str) -> Option<f64> {
        mean(&self.runs(row, task).iter().map(|r| r.acc).collect::<Vec<_>>())
    }

    /// The seeds' values of a cell: test accuracy, or val200 accuracy with `val`.
    pub(crate) fn values(&self, row: &str, task: &str, val: bool) -> Vec<f64> {
        self.runs(row, task).iter().filter_map(|r| if val { r.val_acc } else { Some(r.acc) }).collect()
    }

    /// (min, max, n) over seeds.
    pub fn spread(&self, row: &str, task: &str) -> Option<(f64, f64, usize)> {
        let runs = self.runs(row, task);
        let min = runs.iter().map(|r| r.acc).reduce(f64::min)?;
        let max = runs.iter().map(|r| r.acc).reduce(f64::max)?;
        Some((min, max, runs.len()))
    }

    pub(crate) fn all(&self, row: &str) -> Vec<&RunResult> {
        self.rows.get(row).into_iter().flat_map(|c| c.values()).flatten().collect()
    }

    /// The protocols behind a row's numbers, e.g. `paper`.
    pub fn protocols(&self, row: &str) -> String {
        let mut p: Vec<String> = self
            .all(row)
            .iter()
            .map(|r| {
                if r.stage == Stage::Final {
                    format!("{} (selected on val)", r.protocol)
                } else {
                    r.protocol.clone()
                }
            })
            .collect();
        p.sort();
        p.dedup();
        p.join(" + ")
    }
}

pub(crate) fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The sample standard deviation (n - 1), for two values or more.
pub(crate) fn std(v: &[f64]) -> Option<f64> {
    let m = mean(v)?;
    (v.len() > 1).then(|| (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt())
}

/// `mean ± std (n=N)` over seeds, or the bare mean for one seed.
pub(crate) fn mean_std_cell(v: &[f64], digits: usize) -> String {
    match (mean(v), std(v)) {
        (Some(m), Some(s)) => format!("{m:.digits$} ± {s:.digits$} (n={})", v.len()),
        (Some(m), None) => format!("{m:.digits$}"),
        _ => "-".into(),
    }
}

/// Mean of the values, None if any is missing: a group mean over part of a group would
/// read like the paper's and mean something else.
pub fn mean_all(values: &[Option<f64>]) -> Option<f64> {
    let v: Option<Vec<f64>> = values.iter().copied().collect();
    v.and_then(|v| mean(&v))
}

/// Per-group means (benchmark group order) and their mean: VTAB-1k's average.
pub fn group_means(
    cell: impl Fn(&str) -> Option<f64>,
    groups: &[TaskGroup],
) -> (Vec<Option<f64>>, Option<f64>) {
    let gm: Vec<Option<f64>> =
        groups.iter().map(|g| mean_all(&g.tasks.iter().map(|t| cell(t)).collect::<Vec<_>>())).collect();
    let avg = mean_all(&gm);
    (gm, avg)
}

/// Reads the sweep's finished runs (search runs aside, when the grid has a search stage);
/// `notes` collects what was left out and why.
/// A planned run's row in the tables: its variant, plus the axes point for a plain grid.
pub(crate) fn row_label(planned: &mlae_sweep::PlannedRun) -> String {
    let mut row = planned.variant.clone();
    if planned.stage == Stage::Run && !planned.point.is_empty() {
        let p: Vec<String> =
            planned.point.iter().map(|(k, v)| format!("{}={v}", k.rsplit('.').next().unwrap_or(k))).collect();
        row = format!("{row} ({})", p.join(", "));
    }
    row
}

pub fn collect(sweep: &SweepDir, notes: &mut Vec<String>) -> Result<Vec<RunResult>> {
    let plan = Plan::read(sweep)?;
    let mut out = Vec::new();
    for (name, planned) in &plan.runs {
        if planned.stage == Stage::Search {
            continue;
        }
        let layout = sweep.run_layout(name);
        if layout.phase() != RunPhase::Done {
            continue;
        }
        let record = RunRecord::read(sweep, name)?;
        let current = current_fingerprint(sweep, name).ok();
        if record.as_ref().map(|r| Some(&r.fingerprint)) != Some(current.as_ref()) {
            notes.push(format!("{name}: left out, its config changed since it ran (run the sweep again)"));
            continue;
        }
        let summary = layout
            .read_summary()?
            .ok_or_else(|| ReportError::Invalid(format!("{}: missing", layout.summary().display())))?;
        let row = row_label(planned);
        out.push(RunResult {
            task: planned.task.clone(),
            row,
            seed: planned.seed,
            protocol: summary.protocol.as_str().to_string(),
            stage: planned.stage,
            acc: 100.0 * summary.test_acc,
            best_test_acc: summary.best_test_acc.map(|v| 100.0 * v),
            val_acc: summary.best_val_acc.map(|v| 100.0 * v),
            backbone_params: Some(summary.backbone_params() as f64),
            wall_seconds: Some(summary.wall_seconds),
            epochs: summary.epochs,
            run: name.clone(),
        });
    }
    Ok(out)
}
