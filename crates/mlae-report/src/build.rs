//! The report of a sweep directory, assembled and written.

use crate::confusion::{RowConfusion, collect_confusions, confusion_section};
use crate::error::{ReportError, Result, bail};
use crate::extra::{masking_table, selection_table};
use crate::flat::flat_tables;
use crate::halving::{halving_tables, read_halving};
use crate::published::Published;
use crate::results::{RunResult, Table, collect};
use crate::vtab::vtab_tables;
use mlae_data::{Benchmark, TaskGroup};
use mlae_plot::BarChart;
use mlae_sweep::select::Selection;
use mlae_sweep::{SweepDir, SweepRecord};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// The report's outputs.
#[derive(Debug)]
pub struct Report {
    pub markdown: String,
    pub csv: String,
    /// The domain means (VTAB-1k, the paper's Figure 3) or per-task accuracies.
    pub chart: BarChart,
    /// Confusion matrices to draw beside `report.md`: (file name, title, matrix).
    pub confusions: Vec<(String, String, mlae_formats::Confusion)>,
}

/// The chart's y axis starts at the 10 % step at least 10 points below the lowest bar, so
/// that differences between methods stay visible.
fn accuracy_floor(chart: &BarChart) -> f64 {
    let lo = chart.series.iter().flat_map(|(_, v)| v.iter().flatten().copied()).fold(f64::INFINITY, f64::min);
    if lo.is_finite() { ((lo - 10.0) / 10.0).floor().max(0.0) * 10.0 } else { 0.0 }
}

/// What a report shows beyond the results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// The runs' wall times (`wall (min/run)`, `wall_seconds_mean`). Without them a report
    /// depends only on what the runs computed, so two sweeps of one grid (one of them killed
    /// and resumed, say) give the same bytes.
    pub timings: bool,
    /// A task whose per-class test accuracy and confusion matrices (one PNG per row) the
    /// report shows.
    pub confusion: Option<String>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self { timings: true, confusion: None }
    }
}

/// Builds the report of one sweep directory, or of several of the same benchmark side by side
/// (a grid of baselines and a search grid, say): their rows share one table.
pub fn build(sweeps: &[SweepDir], published: &Published) -> Result<Report> {
    build_with(sweeps, published, BuildOptions::default())
}

/// [`build`], with the options.
pub fn build_with(sweeps: &[SweepDir], published: &Published, opts: BuildOptions) -> Result<Report> {
    let Some(first) = sweeps.first() else { bail!("no sweep directory given") };
    let record = first.read_record()?;
    let bench: Benchmark = record.benchmark.parse().map_err(ReportError::Invalid)?;
    let mut notes = Vec::new();
    let mut results = collect(first, &mut notes)?;
    // each sweep's name in headings; a halving search's rows keep apart from a full search's
    // of the same grid
    let mut labels = vec![label(first, &record.grid)?];
    let mut experiments = vec![Experiment::of(&labels[0], &record)];
    // per sweep, the name its rows take where an earlier sweep has a row of the same name, or
    // None where its rows joined an earlier directory's (seeds run into another `--out`)
    let mut suffixes = vec![Some(labels[0].clone())];
    for sweep in &sweeps[1..] {
        let other = sweep.read_record()?;
        if other.benchmark != record.benchmark {
            bail!(
                "{} is a {} sweep and {} a {} sweep: one report holds one benchmark",
                sweep.root.display(),
                other.benchmark,
                first.root.display(),
                record.benchmark
            );
        }
        let label = label(sweep, &other.grid)?;
        let experiment = Experiment::of(&label, &other);
        let more = collect(sweep, &mut notes)?;
        if experiments.contains(&experiment) {
            join_rows(&mut results, more, sweep)?;
            suffixes.push(None);
        } else {
            // the same grid with other overrides (`--set train.epochs=30`, say) is another experiment
            let suffix = if labels.contains(&label) { experiment.name() } else { label.clone() };
            merge_rows(&mut results, more, &suffix);
            suffixes.push(Some(suffix));
        }
        experiments.push(experiment);
        labels.push(label);
    }
    if !opts.timings {
        results.iter_mut().for_each(|r| r.wall_seconds = None);
    }
    let groups = report_groups(bench, &results)?;
    if results.is_empty() {
        let dirs: Vec<String> = sweeps.iter().map(|s| s.root.display().to_string()).collect();
        bail!("{}: no finished runs yet (see cargo xtask sweep --status {})", dirs.join(", "), dirs[0]);
    }
    let table = Table::new(&results);
    let mut md = format!(
        "# Sweep report: grid {} on {}\n\n\
         Sweep directory {}. Our numbers are top-1 test accuracy (%) from each run's `summary.json`, \
         averaged over seeds. The protocol column says how each was obtained: `paper` = trained on \
         train800val200 (FGVC: train), accuracy after the last epoch; `val` = trained on train800, epoch \
         selected on val200; `selected on val` = the setting was chosen by validation accuracy in the search \
         stage. Rows marked **(published)** are figures printed in the MLAE paper, not measured here.\n\n",
        suffixes.iter().flatten().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" + "),
        record.benchmark,
        sweeps.iter().map(|s| format!("`{}`", s.root.display())).collect::<Vec<_>>().join(", ")
    );
    let mut csv = String::from(
        "source,method,protocol,task,kind,seeds,accuracy,min,max,best_test_acc,backbone_params_m,wall_seconds_mean\n",
    );
    let pubs = match bench {
        Benchmark::Vtab => Some(&published.vtab),
        Benchmark::Fgvc => Some(&published.fgvc),
        _ => None,
    };
    let mut chart = if bench.has_domain_groups() {
        vtab_tables(&table, &groups, pubs, &mut md, &mut csv)
    } else {
        flat_tables(&table, (bench.name(), &groups), pubs, &mut md, &mut csv)
    };
    chart.y_label = "accuracy (%)".into();
    chart.y_range = Some((accuracy_floor(&chart), 100.0));
    if record.grid == "ablation-masking" && bench == Benchmark::Vtab {
        masking_table(&table, &groups, &published.masking, &mut md);
    }
    for (sweep, label) in sweeps.iter().zip(&labels) {
        if let Some(chosen) = Selection::read_all(sweep)? {
            selection_table(label, &chosen, read_halving(sweep)?.as_ref(), &mut md);
        }
    }
    halving_tables(sweeps, &mut md)?;
    let mut confusions = Vec::new();
    if let Some(task) = &opts.confusion {
        let mut rows: BTreeMap<String, RowConfusion> = BTreeMap::new();
        for (sweep, suffix) in sweeps.iter().zip(&suffixes) {
            for (row, r) in collect_confusions(sweep, task, &mut notes)? {
                match (rows.get_mut(&row), suffix) {
                    (Some(earlier), None) => {
                        if !earlier.add(&r.matrix, r.seeds) {
                            notes.push(format!(
                                "{row}: a later directory's classes differ from the earlier one's; left out"
                            ));
                        }
                    }
                    (Some(_), Some(suffix)) => {
                        rows.insert(format!("{row} ({suffix})"), r);
                    }
                    (None, _) => {
                        rows.insert(row, r);
                    }
                }
            }
        }
        confusions = confusion_section(task, &rows, &mut md);
    }
    if !notes.is_empty() {
        md.push_str("\n## Left out\n\n");
        for n in &notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    Ok(Report { markdown: md, csv, chart, confusions })
}

/// The benchmark's task groups as the report's columns. An opt-in task (the demo's generated
/// ones) is a column only where the sweeps ran it, so that the reports of the default sweeps
/// stay as they were.
pub(crate) fn report_groups(bench: Benchmark, results: &[RunResult]) -> Result<Vec<TaskGroup>> {
    let default = bench.default_tasks()?;
    Ok(bench
        .task_groups()?
        .into_iter()
        .filter_map(|mut g| {
            g.tasks.retain(|t| default.contains(t) || results.iter().any(|r| &r.task == t));
            (!g.tasks.is_empty()).then_some(g)
        })
        .collect())
}

/// A sweep's name in the report: its grid, and `, halving` for a `--search halving` sweep.
fn label(sweep: &SweepDir, grid: &str) -> Result<String> {
    Ok(match read_halving(sweep)? {
        Some(_) => format!("{grid}, halving"),
        None => grid.to_string(),
    })
}

/// What makes two sweep directories one experiment: the grid (and whether it was a halving
/// search), the `--set` overrides in any order, the data root and the checkpoint. Directories
/// of one experiment hold different seeds or tasks of it, and their rows join.
#[derive(Debug, Clone)]
pub(crate) struct Experiment {
    label: String,
    record: SweepRecord,
}

impl PartialEq for Experiment {
    fn eq(&self, other: &Self) -> bool {
        self.label == other.label && self.record.same_overrides(&other.record)
    }
}

impl Experiment {
    pub(crate) fn of(label: &str, record: &SweepRecord) -> Self {
        Self { label: label.to_string(), record: record.clone() }
    }

    /// The label, with the overrides where there are any (`demo-epochs, train.epochs=30`).
    pub(crate) fn name(&self) -> String {
        std::iter::once(self.label.clone()).chain(self.record.sorted_set()).collect::<Vec<_>>().join(", ")
    }
}

/// Adds the results of another directory of the same experiment: its rows join the earlier
/// ones of the same name. A run of a row, task and seed already read is an error, as it would
/// count one seed twice.
pub(crate) fn join_rows(results: &mut Vec<RunResult>, more: Vec<RunResult>, sweep: &SweepDir) -> Result<()> {
    for r in &more {
        if let Some(earlier) = results.iter().find(|o| o.row == r.row && o.task == r.task && o.seed == r.seed)
        {
            bail!(
                "{}: run {} is {} on {} at seed {}, which an earlier directory's run {} already is \
                 (each seed once; leave one of them out)",
                sweep.root.display(),
                r.run,
                r.row,
                r.task,
                r.seed,
                earlier.run
            );
        }
    }
    results.extend(more);
    Ok(())
}

/// Adds another sweep's results; a row name the table already has (each grid's `mlae`, say)
/// gets its grid's name, so that rows of different grids never average together.
pub(crate) fn merge_rows(results: &mut Vec<RunResult>, more: Vec<RunResult>, grid: &str) {
    let taken: BTreeSet<String> = results.iter().map(|r| r.row.clone()).collect();
    results.extend(more.into_iter().map(|mut r| {
        if taken.contains(&r.row) {
            r.row = format!("{} ({grid})", r.row);
        }
        r
    }));
}

impl Report {
    /// Writes `report.md`, `report.csv`, `domains.png` and the confusion matrices into `out`. A chart that cannot be
    /// drawn (no value yet) is a warning, not a failure: the tables are the report.
    pub fn write(&self, out: &Path) -> Result<()> {
        for (name, text) in [("report.md", &self.markdown), ("report.csv", &self.csv)] {
            let path = out.join(name);
            mlae_formats::write_atomic(&path, text.as_bytes())
                .map_err(|source| ReportError::Io { path, source })?;
        }
        if let Err(e) = mlae_plot::grouped_bars(&out.join("domains.png"), (1200, 520), &self.chart) {
            tracing::warn!("warning: no chart ({e})");
        }
        for (file, title, m) in &self.confusions {
            if let Err(e) = mlae_plot::confusion_matrix(&out.join(file), title, &m.classes, &m.counts) {
                tracing::warn!("warning: no confusion matrix ({e})");
            }
        }
        Ok(())
    }
}
