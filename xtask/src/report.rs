//! `cargo xtask report --sweep DIR`: a sweep's results in the paper's format, beside the
//! paper's published rows, as Markdown, CSV and a PNG chart of the domain means.
//!
//! VTAB-1k: per-task accuracy, the Natural / Specialized / Structured means and the average
//! as the paper computes it (the mean of the three group means). FGVC: per-dataset mean over
//! seeds with the spread (min-max), and the mean over datasets. Every number says which
//! protocol produced it. Only runs of the sweep's plan count, and only while their config is
//! the one they ran with.

use crate::sweep::bench::Benchmark;
use crate::sweep::exec::RunRecord;
use crate::sweep::grid::Stage;
use crate::sweep::{Chosen, Plan, SweepDir, current_fingerprint, status};
use crate::util;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The sweep directory.
    #[arg(long, value_name = "DIR")]
    pub sweep: PathBuf,
    /// Where report.md, report.csv and domains.png go (default: <sweep>/report).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

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
    /// Trainable parameters outside the head (the paper's "# param").
    pub backbone_params: Option<f64>,
    pub wall_seconds: Option<f64>,
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

    fn runs(&self, row: &str, task: &str) -> &[RunResult] {
        self.rows.get(row).and_then(|c| c.get(task)).map_or(&[], Vec::as_slice)
    }

    /// Mean accuracy over seeds.
    pub fn cell(&self, row: &str, task: &str) -> Option<f64> {
        mean(&self.runs(row, task).iter().map(|r| r.acc).collect::<Vec<_>>())
    }

    /// (min, max, n) over seeds.
    pub fn spread(&self, row: &str, task: &str) -> Option<(f64, f64, usize)> {
        let runs = self.runs(row, task);
        let min = runs.iter().map(|r| r.acc).reduce(f64::min)?;
        let max = runs.iter().map(|r| r.acc).reduce(f64::max)?;
        Some((min, max, runs.len()))
    }

    fn all(&self, row: &str) -> Vec<&RunResult> {
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

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Mean of the values, None if any is missing: a group mean over part of a group would
/// read like the paper's and mean something else.
pub fn mean_all(values: &[Option<f64>]) -> Option<f64> {
    let v: Option<Vec<f64>> = values.iter().copied().collect();
    v.and_then(|v| mean(&v))
}

/// Per-group means (benchmark group order) and their mean: VTAB-1k's average.
pub fn group_means(cell: impl Fn(&str) -> Option<f64>, bench: &Benchmark) -> (Vec<Option<f64>>, Option<f64>) {
    let gm: Vec<Option<f64>> = bench
        .groups
        .iter()
        .map(|(_, tasks)| mean_all(&tasks.iter().map(|t| cell(t)).collect::<Vec<_>>()))
        .collect();
    let avg = mean_all(&gm);
    (gm, avg)
}

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
    fn by_task<'a>(&self, tasks: &'a [String]) -> BTreeMap<&'a str, f64> {
        tasks.iter().map(String::as_str).zip(self.acc.iter().copied()).collect()
    }
}

pub fn load_published(path: &Path) -> Result<Published> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let p: Published = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    for (name, b) in [("vtab", &p.vtab), ("fgvc", &p.fgvc)] {
        // The published values are labelled by task name; the names must be the manifest's.
        let mut known = Benchmark::by_name(name)?.tasks();
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

/// Reads the sweep's finished runs (search runs aside, when the grid has a search stage);
/// `notes` collects what was left out and why.
pub fn collect(sweep: &SweepDir, notes: &mut Vec<String>) -> Result<Vec<RunResult>> {
    let plan = Plan::read(sweep)?;
    let mut out = Vec::new();
    for (name, planned) in &plan.runs {
        if planned.stage == Stage::Search {
            continue;
        }
        let dir = sweep.run_dir(name);
        if status::run_state(&dir) != status::RunState::Done {
            continue;
        }
        let record = RunRecord::read(sweep, name)?;
        let current = current_fingerprint(sweep, name).ok();
        if record.as_ref().map(|r| Some(&r.fingerprint)) != Some(current.as_ref()) {
            notes.push(format!("{name}: left out, its config changed since it ran (run the sweep again)"));
            continue;
        }
        let summary = status::read_summary(&dir)
            .with_context(|| format!("{}: unreadable summary.json", dir.display()))?;
        let num = |k: &str| summary.get(k).and_then(|v| v.as_f64());
        let acc = num("test_acc").with_context(|| format!("{}/summary.json: no test_acc", dir.display()))?;
        let protocol = summary.get("protocol").and_then(|v| v.as_str()).unwrap_or("unknown").to_string();
        let mut row = planned.variant.clone();
        if planned.stage == Stage::Run && !planned.point.is_empty() {
            let p: Vec<String> = planned
                .point
                .iter()
                .map(|(k, v)| format!("{}={v}", k.rsplit('.').next().unwrap_or(k)))
                .collect();
            row = format!("{row} ({})", p.join(", "));
        }
        let backbone_params = match (num("trainable_params"), num("head_params")) {
            (Some(t), Some(h)) => Some(t - h),
            _ => None,
        };
        out.push(RunResult {
            task: planned.task.clone(),
            row,
            seed: planned.seed,
            protocol,
            stage: planned.stage,
            acc: 100.0 * acc,
            best_test_acc: num("best_test_acc").map(|v| 100.0 * v),
            backbone_params,
            wall_seconds: num("wall_seconds"),
        });
    }
    Ok(out)
}

/// The report's three outputs.
#[derive(Debug)]
pub struct Report {
    pub markdown: String,
    pub csv: String,
    pub chart: Chart,
}

/// Bars to draw: categories (x groups) and series (label, value per category).
#[derive(Debug, Default)]
pub struct Chart {
    pub title: String,
    pub categories: Vec<String>,
    pub series: Vec<(String, Vec<Option<f64>>)>,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let sweep = SweepDir { root: util::absolute(&args.sweep) };
    let published = load_published(&util::root().join("configs/published/mlae-paper.toml"))?;
    let report = build(&sweep, &published)?;
    let out = args.out.as_deref().map(util::absolute).unwrap_or_else(|| sweep.root.join("report"));
    util::write_atomic(&out.join("report.md"), report.markdown.as_bytes())?;
    util::write_atomic(&out.join("report.csv"), report.csv.as_bytes())?;
    let png = out.join("domains.png");
    match bar_chart(&png, &report.chart) {
        Ok(()) => {}
        Err(e) => eprintln!("warning: no chart ({e:#})"),
    }
    print!("{}", report.markdown);
    use std::io::Write as _;
    std::io::stdout().flush()?;
    eprintln!("wrote {}, report.csv and domains.png", out.join("report.md").display());
    Ok(())
}

/// Builds the report of a sweep directory.
pub fn build(sweep: &SweepDir, published: &Published) -> Result<Report> {
    let record = sweep.read_record()?;
    let bench = Benchmark::by_name(&record.benchmark)?;
    let mut notes = Vec::new();
    let results = collect(sweep, &mut notes)?;
    if results.is_empty() {
        bail!(
            "{}: no finished runs yet (see cargo xtask sweep --status {})",
            sweep.root.display(),
            sweep.root.display()
        );
    }
    let table = Table::new(&results);
    let mut md = format!(
        "# Sweep report: grid `{}` on {}\n\n\
         Sweep directory `{}`. Our numbers are top-1 test accuracy (%) from each run's `summary.json`, \
         averaged over seeds. The protocol column says how each was obtained: `paper` = trained on \
         train800val200 (FGVC: train), accuracy after the last epoch; `val` = trained on train800, epoch \
         selected on val200; `selected on val` = the setting was chosen by validation accuracy in the search \
         stage. Rows marked **(published)** are figures printed in the MLAE paper, not measured here.\n\n",
        record.grid,
        record.benchmark,
        sweep.root.display()
    );
    let mut csv = String::from(
        "source,method,protocol,task,kind,seeds,accuracy,min,max,best_test_acc,backbone_params_m,wall_seconds_mean\n",
    );
    let pubs = match bench.name {
        "vtab" => Some(&published.vtab),
        "fgvc" => Some(&published.fgvc),
        _ => None,
    };
    let chart = if bench.has_domain_groups() {
        vtab_tables(&table, &bench, pubs, &mut md, &mut csv)
    } else {
        flat_tables(&table, &bench, pubs, &mut md, &mut csv)
    };
    if record.grid == "ablation-masking" && bench.name == "vtab" {
        masking_table(&table, &bench, &published.masking, &mut md);
    }
    if let Some(chosen) = util::read_json::<BTreeMap<String, Chosen>>(&sweep.selection())? {
        selection_table(&chosen, &mut md);
    }
    if !notes.is_empty() {
        md.push_str("\n## Left out\n\n");
        for n in &notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    Ok(Report { markdown: md, csv, chart })
}

fn f1(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn csv_num(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v:.4}"))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// The paper's "# param": backbone parameters, averaged over group means (VTAB) or tasks.
fn params_m(table: &Table, row: &str, bench: &Benchmark) -> Option<f64> {
    let per_task =
        |t: &str| mean(&table.runs(row, t).iter().filter_map(|r| r.backbone_params).collect::<Vec<_>>());
    let groups: Vec<f64> = bench
        .groups
        .iter()
        .filter_map(|(_, ts)| mean(&ts.iter().filter_map(|t| per_task(t)).collect::<Vec<_>>()))
        .collect();
    mean(&groups).map(|p| p / 1e6)
}

fn wall_mean(table: &Table, row: &str) -> Option<f64> {
    mean(&table.all(row).iter().filter_map(|r| r.wall_seconds).collect::<Vec<_>>())
}

fn csv_ours(csv: &mut String, table: &Table, row: &str, task: &str, kind: &str, value: Option<f64>) {
    let runs = table.runs(row, task);
    let (min, max, n) = table.spread(row, task).map_or((None, None, 0), |(a, b, n)| (Some(a), Some(b), n));
    let best = mean(&runs.iter().filter_map(|r| r.best_test_acc).collect::<Vec<_>>());
    let params = mean(&runs.iter().filter_map(|r| r.backbone_params).collect::<Vec<_>>()).map(|p| p / 1e6);
    let wall = mean(&runs.iter().filter_map(|r| r.wall_seconds).collect::<Vec<_>>());
    let _ = writeln!(
        csv,
        "ours,{},{},{task},{kind},{n},{},{},{},{},{},{}",
        csv_field(row),
        csv_field(&table.protocols(row)),
        csv_num(value),
        csv_num(min),
        csv_num(max),
        csv_num(best),
        csv_num(params),
        csv_num(wall)
    );
}

fn csv_line(
    csv: &mut String,
    source: &str,
    row: &str,
    protocol: &str,
    task: &str,
    kind: &str,
    value: Option<f64>,
) {
    let _ = writeln!(
        csv,
        "{source},{},{},{task},{kind},,{},,,,,",
        csv_field(row),
        csv_field(protocol),
        csv_num(value)
    );
}

/// VTAB-1k: Table 1's layout. Returns the domain-means chart (Figure 3's).
fn vtab_tables(
    table: &Table,
    bench: &Benchmark,
    pubs: Option<&PublishedBench>,
    md: &mut String,
    csv: &mut String,
) -> Chart {
    let tasks = bench.tasks();
    let groups: Vec<&str> = bench.groups.iter().map(|g| g.0.as_str()).collect();
    let mut chart = Chart {
        title: "Domain means, VTAB-1k (%)".into(),
        categories: groups.iter().map(|g| g.to_string()).chain(["Average".to_string()]).collect(),
        series: Vec::new(),
    };
    let _ = writeln!(
        md,
        "| method | protocol | params (M) | wall (min/run) | {} | {} | Average |",
        tasks.join(" | "),
        groups.join(" | ")
    );
    let _ = writeln!(md, "|{}", "---|".repeat(4 + tasks.len() + groups.len() + 1));
    for row in table.rows.keys() {
        let cells: Vec<String> = tasks.iter().map(|t| f1(table.cell(row, t))).collect();
        let (gm, avg) = group_means(|t| table.cell(row, t), bench);
        let gcells: Vec<String> = gm.iter().map(|m| f1(*m)).collect();
        let _ = writeln!(
            md,
            "| {row} | {} | {} | {} | {} | {} | {} |",
            table.protocols(row),
            params_m(table, row, bench).map_or("-".into(), |p| format!("{p:.2}")),
            wall_mean(table, row).map_or("-".into(), |w| format!("{:.1}", w / 60.0)),
            cells.join(" | "),
            gcells.join(" | "),
            f1(avg)
        );
        for t in &tasks {
            if table.cell(row, t).is_some() {
                csv_ours(csv, table, row, t, "task", table.cell(row, t));
            }
        }
        for (g, m) in groups.iter().zip(&gm) {
            csv_line(csv, "ours", row, &table.protocols(row), g, "group", *m);
        }
        csv_line(csv, "ours", row, &table.protocols(row), "average", "average", avg);
        chart.series.push((row.clone(), gm.iter().copied().chain([avg]).collect()));
    }
    let mut footnotes = Vec::new();
    if let Some(p) = pubs {
        for r in &p.rows {
            let by = r.by_task(&p.tasks);
            let (gm, computed) = group_means(|t| by.get(t).copied(), bench);
            let avg = match (r.average, computed) {
                (Some(a), _) => f1(Some(a)),
                (None, Some(c)) => {
                    footnotes.push(format!("{}: average computed here from the per-task values", r.method));
                    format!("{c:.1}\\*")
                }
                (None, None) => "-".into(),
            };
            let cells: Vec<String> = tasks.iter().map(|t| f1(by.get(t.as_str()).copied())).collect();
            let gcells: Vec<String> = gm.iter().map(|m| f1(*m)).collect();
            let _ = writeln!(
                md,
                "| {} **(published)** | paper (published) | {} | - | {} | {} | {avg} |",
                r.method,
                r.params.map_or("-".into(), |p| format!("{p:.2}")),
                cells.join(" | "),
                gcells.join(" | ")
            );
            for t in &tasks {
                csv_line(csv, "published", &r.method, "paper", t, "task", by.get(t.as_str()).copied());
            }
            for (g, m) in groups.iter().zip(&gm) {
                csv_line(csv, "published-computed", &r.method, "paper", g, "group", *m);
            }
            let (src, a) = match r.average {
                Some(a) => ("published", Some(a)),
                None => ("published-computed", computed),
            };
            csv_line(csv, src, &r.method, "paper", "average", "average", a);
            if let Some(n) = &r.note {
                footnotes.push(format!("{}: {n}", r.method));
            }
            // Figure 3 of the paper draws these four.
            if ["LoRA", "SPT-LoRA", "GLoRA (0.29M)", "MLAE"].contains(&r.method.as_str()) {
                chart.series.push((
                    format!("{} (published)", r.method),
                    gm.iter().copied().chain([computed]).collect(),
                ));
            }
        }
    }
    md.push_str(
        "\nGroup means are the mean over the group's tasks and are shown only when every task of the \
         group has a result; the average is the mean of the three group means, as the paper computes it. \
         For published rows the group means are computed here from the printed per-task values and the \
         average is the printed one. params: trainable parameters outside the classification head \
         (the paper's \"# param\"), averaged over the group means.\n",
    );
    for f in footnotes {
        let _ = writeln!(md, "\n\\* {f}");
    }
    chart
}

/// FGVC and the demo benchmark: per task mean over seeds with the spread, and the mean.
fn flat_tables(
    table: &Table,
    bench: &Benchmark,
    pubs: Option<&PublishedBench>,
    md: &mut String,
    csv: &mut String,
) -> Chart {
    let tasks = bench.tasks();
    let mut chart = Chart {
        title: format!("Per-task accuracy and mean, {} (%)", bench.name),
        categories: tasks.iter().cloned().chain(["Mean".to_string()]).collect(),
        series: Vec::new(),
    };
    let _ =
        writeln!(md, "| method | protocol | params (M) | wall (min/run) | {} | Mean |", tasks.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(5 + tasks.len()));
    for row in table.rows.keys() {
        let mut cells = Vec::new();
        for t in &tasks {
            cells.push(match (table.cell(row, t), table.spread(row, t)) {
                (Some(m), Some((lo, hi, n))) if n > 1 => format!("{m:.2} ({lo:.1}-{hi:.1}, n={n})"),
                (Some(m), _) => format!("{m:.2}"),
                _ => "-".into(),
            });
            if table.cell(row, t).is_some() {
                csv_ours(csv, table, row, t, "task", table.cell(row, t));
            }
        }
        let m = mean_all(&tasks.iter().map(|t| table.cell(row, t)).collect::<Vec<_>>());
        // The spread of the mean: the mean over tasks of each seed that ran on every task.
        let mut per_seed: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for r in table.all(row) {
            per_seed.entry(r.seed).or_default().push(r.acc);
        }
        let seed_means: Vec<f64> =
            per_seed.values().filter(|v| v.len() == tasks.len()).filter_map(|v| mean(v)).collect();
        let mean_cell = match (m, seed_means.len()) {
            (Some(m), n) if n > 1 => {
                let lo = seed_means.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = seed_means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{m:.2} ({lo:.2}-{hi:.2}, n={n})")
            }
            (m, _) => m.map_or("-".into(), |m| format!("{m:.2}")),
        };
        let _ = writeln!(
            md,
            "| {row} | {} | {} | {} | {} | {mean_cell} |",
            table.protocols(row),
            params_m(table, row, bench).map_or("-".into(), |p| format!("{p:.2}")),
            wall_mean(table, row).map_or("-".into(), |w| format!("{:.1}", w / 60.0)),
            cells.join(" | ")
        );
        csv_line(csv, "ours", row, &table.protocols(row), "mean", "mean", m);
        chart.series.push((row.clone(), tasks.iter().map(|t| table.cell(row, t)).chain([m]).collect()));
    }
    let mut footnotes = Vec::new();
    if let Some(p) = pubs {
        for r in &p.rows {
            let by = r.by_task(&p.tasks);
            let cells: Vec<String> = tasks
                .iter()
                .enumerate()
                .map(|(i, t)| match by.get(t.as_str()) {
                    Some(v) if !r.per_seed.is_empty() => {
                        let s: Vec<f64> = r.per_seed.iter().map(|s| s[i]).collect();
                        let lo = s.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        format!("{v:.1} ({lo:.1}-{hi:.1}, n={})", s.len())
                    }
                    Some(v) => format!("{v:.1}"),
                    None => "-".into(),
                })
                .collect();
            let mean_cell = match (r.mean, r.seed_means.len()) {
                (Some(m), n) if n > 1 => {
                    let lo = r.seed_means.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = r.seed_means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    format!("{m:.2} ({lo:.2}-{hi:.2}, n={n})")
                }
                (m, _) => m.map_or("-".into(), |m| format!("{m:.2}")),
            };
            let _ = writeln!(
                md,
                "| {} **(published)** | paper (published) | {} | - | {} | {mean_cell} |",
                r.method,
                r.params.map_or("-".into(), |p| format!("{p:.2}")),
                cells.join(" | ")
            );
            for t in &tasks {
                if let Some(v) = by.get(t.as_str()) {
                    csv_line(csv, "published", &r.method, "paper", t, "task", Some(*v));
                }
            }
            csv_line(csv, "published", &r.method, "paper", "mean", "mean", r.mean);
            if let Some(n) = &r.note {
                footnotes.push(format!("{}: {n}", r.method));
            }
            if r.method == "MLAE" {
                chart.series.push((
                    "MLAE (published)".into(),
                    tasks.iter().map(|t| by.get(t.as_str()).copied()).chain([r.mean]).collect(),
                ));
            }
        }
    }
    md.push_str(
        "\nCells with several seeds show the mean, then (min-max, n=seeds); the Mean column's spread is \
         over the per-seed means across tasks. params: trainable parameters outside the classification head.\n",
    );
    for f in footnotes {
        let _ = writeln!(md, "\n\\* {f}");
    }
    chart
}

/// Table 4's layout for the masking ablation: VTAB-1k average per strategy and pattern.
fn masking_table(table: &Table, bench: &Benchmark, published: &PublishedMasking, md: &mut String) {
    let avg = |row: &str| group_means(|t| table.cell(row, t), bench).1;
    let _ =
        writeln!(md, "\n## Masking strategies (the paper's Table 4): VTAB-1k average, ours / published\n");
    let _ = writeln!(md, "| strategy | {} | uniform (ours) |", published.patterns.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(published.patterns.len() + 2));
    let pubf = |v: f64| if v.is_nan() { "-".to_string() } else { format!("{v:.1}") };
    for (strategy, values) in
        [("fixed", &published.fixed), ("stochastic", &published.stochastic), ("mixed", &published.mixed)]
    {
        let cells: Vec<String> = published
            .patterns
            .iter()
            .zip(values.iter())
            .map(|(pat, v)| format!("{} / {}", f1(avg(&format!("{strategy}-{pat}"))), pubf(*v)))
            .collect();
        let uniform = if strategy == "stochastic" {
            format!("{} / {}", f1(avg("stochastic-uniform")), pubf(published.uniform_stochastic))
        } else {
            "-".into()
        };
        let _ = writeln!(md, "| {strategy} | {} | {uniform} |", cells.join(" | "));
    }
    md.push_str(
        "\nOurs: the average of the variant `<strategy>-<pattern>`, shown once all 19 tasks have a result.\n",
    );
}

fn selection_table(chosen: &BTreeMap<String, Chosen>, md: &mut String) {
    let _ = writeln!(md, "\n## Selected settings (search stage, by validation accuracy)\n");
    let _ = writeln!(md, "| final run | task | variant | seed | selected | val acc (%) | candidates |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for (name, c) in chosen {
        let point: Vec<String> = c.point.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {:.2} | {} |",
            c.task,
            c.variant,
            c.seed,
            point.join(", "),
            100.0 * c.value,
            c.candidates.len()
        );
    }
}

/// A grouped bar chart (plotters). Without a system font the bars are drawn unlabelled.
pub fn bar_chart(path: &Path, chart: &Chart) -> Result<()> {
    use plotters::prelude::*;
    if chart.series.is_empty() || chart.categories.is_empty() {
        bail!("nothing to draw");
    }
    let font = util::register_plot_font();
    let values: Vec<f64> = chart.series.iter().flat_map(|(_, v)| v.iter().flatten().copied()).collect();
    if values.is_empty() {
        bail!("no category has a value yet");
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let ymin = ((lo - 10.0) / 10.0).floor().max(0.0) * 10.0;
    let root = BitMapBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The legend gets its own panel on the right, so it never hides a bar.
    let (plot, legend) = root.split_horizontally(if font { 930 } else { 1200 });
    let n_cat = chart.categories.len();
    let n_ser = chart.series.len();
    let mut builder = ChartBuilder::on(&plot);
    builder.margin(15);
    if font {
        builder.caption(&chart.title, ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(50);
    }
    let mut c =
        builder.build_cartesian_2d(0f64..n_cat as f64, ymin..100f64).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut mesh = c.configure_mesh();
    mesh.disable_x_mesh();
    let labels = chart.categories.clone();
    let fmt_x = move |x: &f64| {
        let i = x.floor() as usize;
        if (x - i as f64 - 0.5).abs() < 1e-6 {
            labels.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    if font {
        mesh.x_labels(2 * n_cat + 1).x_label_formatter(&fmt_x).y_desc("accuracy (%)");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    let width = 0.8 / n_ser as f64;
    for (si, (label, vals)) in chart.series.iter().enumerate() {
        let color = Palette99::pick(si).to_rgba();
        let bars: Vec<Rectangle<(f64, f64)>> = vals
            .iter()
            .enumerate()
            .filter_map(|(ci, v)| {
                v.map(|v| {
                    let x0 = ci as f64 + 0.1 + si as f64 * width;
                    Rectangle::new([(x0, ymin), (x0 + width * 0.9, v)], color.filled())
                })
            })
            .collect();
        c.draw_series(bars).map_err(|e| anyhow::anyhow!("{e}"))?;
        if font {
            let y = 60 + 24 * si as i32;
            legend
                .draw(&Rectangle::new([(10, y - 6), (24, y + 6)], color.filled()))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            legend
                .draw(&Text::new(label.clone(), (32, y - 8), ("sans-serif", 15).into_font()))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(task: &str, row: &str, seed: u64, acc: f64) -> RunResult {
        RunResult {
            task: task.into(),
            row: row.into(),
            seed,
            protocol: "paper".into(),
            stage: Stage::Run,
            acc,
            best_test_acc: None,
            backbone_params: Some(3e5),
            wall_seconds: Some(60.0),
        }
    }

    fn small() -> Benchmark {
        let group =
            |name: &str, tasks: &[&str]| (name.to_string(), tasks.iter().map(|t| t.to_string()).collect());
        Benchmark {
            name: "small",
            groups: vec![
                group("Natural", &["a", "b"]),
                group("Specialized", &["c"]),
                group("Structured", &["d", "e", "f"]),
            ],
            domains: true,
        }
    }

    #[test]
    fn the_vtab_average_is_the_mean_of_group_means() {
        let results: Vec<RunResult> =
            [("a", 80.0), ("b", 90.0), ("c", 70.0), ("d", 60.0), ("e", 30.0), ("f", 30.0)]
                .into_iter()
                .map(|(t, a)| r(t, "mlae", 0, a))
                .collect();
        let t = Table::new(&results);
        let (gm, avg) = group_means(|task| t.cell("mlae", task), &small());
        assert_eq!(gm, vec![Some(85.0), Some(70.0), Some(40.0)]);
        // (85 + 70 + 40) / 3 = 65, where the plain mean over the six tasks would be 60.
        assert!((avg.unwrap() - 65.0).abs() < 1e-12);
    }

    #[test]
    fn seeds_average_with_their_spread_and_partial_groups_stay_empty() {
        let results = vec![r("a", "mlae", 0, 89.0), r("a", "mlae", 1, 90.0), r("a", "mlae", 42, 91.5)];
        let t = Table::new(&results);
        assert!((t.cell("mlae", "a").unwrap() - 90.166_666_666_666_67).abs() < 1e-9);
        assert_eq!(t.spread("mlae", "a"), Some((89.0, 91.5, 3)));
        let (gm, avg) = group_means(|task| t.cell("mlae", task), &small());
        assert_eq!(gm, vec![None, None, None], "a group with a missing task has no mean");
        assert_eq!(avg, None);
    }

    /// Chosen accuracies whose means are easy to check by hand, through the report's tables.
    #[test]
    fn the_tables_print_vtab_group_means_and_fgvc_seed_spreads() {
        let published = load_published(&util::root().join("configs/published/mlae-paper.toml")).unwrap();
        let run = |task: &str, seed: u64, acc: f64| RunResult {
            backbone_params: Some(295_008.0),
            ..r(task, "mlae", seed, acc)
        };
        // VTAB-1k: Natural 490 / 7 = 70.0, Specialized 300 / 4 = 75.0, Structured 360 / 8 = 45.0.
        let vtab_acc = [
            ("cifar", 70.0),
            ("caltech101", 80.0),
            ("dtd", 90.0),
            ("oxford_flowers102", 60.0),
            ("oxford_iiit_pet", 50.0),
            ("svhn", 40.0),
            ("sun397", 100.0),
            ("patch_camelyon", 80.0),
            ("eurosat", 90.0),
            ("resisc45", 70.0),
            ("diabetic_retinopathy", 60.0),
            ("clevr_count", 10.0),
            ("clevr_dist", 20.0),
            ("dmlab", 30.0),
            ("kitti", 40.0),
            ("dsprites_loc", 50.0),
            ("dsprites_ori", 60.0),
            ("smallnorb_azi", 70.0),
            ("smallnorb_ele", 80.0),
        ];
        let vtab = Benchmark::by_name("vtab").unwrap();
        let table = Table::new(&vtab_acc.iter().map(|(t, a)| run(t, 0, *a)).collect::<Vec<_>>());
        let (mut md, mut csv) = (String::new(), String::new());
        vtab_tables(&table, &vtab, Some(&published.vtab), &mut md, &mut csv);
        let row = md.lines().find(|l| l.starts_with("| mlae |")).unwrap();
        // The average is the mean of the group means, 63.3 (the mean over the 19 tasks: 60.5).
        assert!(row.ends_with("| 70.0 | 75.0 | 45.0 | 63.3 |"), "{row}");
        assert!(row.starts_with("| mlae | paper | 0.30 | 1.0 | 70.0 | 80.0 |"), "{row}");
        assert!(md.contains("| MLAE **(published)** | paper (published) | 0.30 | - | 77.8 |"), "{md}");
        assert!(md.contains("| 84.0 | 87.5 | 64.8 | 78.8 |"), "published MLAE group means and average: {md}");
        assert!(
            md.contains("| LoRA **(published)** |") && md.contains("74.6\\*"),
            "a computed average is marked"
        );
        assert!(csv.contains("ours,mlae,paper,average,average,,63.3333,"), "{csv}");
        assert!(csv.contains("ours,mlae,paper,Structured,group,,45.0000,"), "{csv}");
        assert!(csv.contains("ours,mlae,paper,sun397,task,1,100.0000,100.0000,100.0000,"), "{csv}");
        assert!(csv.contains("published,MLAE,paper,average,average,,78.8000,"), "{csv}");

        // FGVC over seeds 0, 1, 42. Per dataset: cub 82, nabirds 71, flowers 98, dogs 90,
        // cars 85 -> mean 426 / 5 = 85.20; seed means 424 / 5 = 84.80, 426 / 5 = 85.20,
        // 428 / 5 = 85.60.
        let fgvc_acc = [
            ("cub", [80.0, 82.0, 84.0]),
            ("nabirds", [70.0, 70.0, 73.0]),
            ("oxford_flowers", [99.0, 98.0, 97.0]),
            ("stanford_dogs", [90.0, 91.0, 89.0]),
            ("stanford_cars", [85.0, 85.0, 85.0]),
        ];
        let results: Vec<RunResult> = fgvc_acc
            .iter()
            .flat_map(|(t, accs)| [0, 1, 42].into_iter().zip(accs).map(|(s, a)| run(t, s, *a)))
            .collect();
        let fgvc = Benchmark::by_name("fgvc").unwrap();
        let (mut md, mut csv) = (String::new(), String::new());
        flat_tables(&Table::new(&results), &fgvc, Some(&published.fgvc), &mut md, &mut csv);
        let row = md.lines().find(|l| l.starts_with("| mlae |")).unwrap();
        assert!(
            row.contains("| 82.00 (80.0-84.0, n=3) | 71.00 (70.0-73.0, n=3) | 98.00 (97.0-99.0, n=3) |"),
            "{row}"
        );
        assert!(row.ends_with("| 85.20 (84.80-85.60, n=3) |"), "{row}");
        assert!(md.contains(
            "| MLAE **(published)** | paper (published) | 0.29 | - | 89.6 (89.6-89.6, n=3) | 85.0 (84.5-85.3, n=3)"
        ));
        assert!(md.contains("| 90.86 (90.78-90.94, n=3) |"), "{md}");
        assert!(csv.contains("ours,mlae,paper,cub,task,3,82.0000,80.0000,84.0000,"), "{csv}");
    }

    #[test]
    fn published_task_names_must_be_the_manifests() {
        let real = util::root().join("configs/published/mlae-paper.toml");
        let text = std::fs::read_to_string(&real).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let bad = tmp.path().join("published.toml");
        std::fs::write(&bad, text.replacen("\"smallnorb_ele\"]", "\"smallnorb_elevation\"]", 1)).unwrap();
        let err = load_published(&bad).unwrap_err().to_string();
        assert!(err.contains("vtab.tasks") && err.contains("published.toml"), "{err}");
    }

    #[test]
    fn the_published_rows_match_their_printed_averages() {
        let p = load_published(&util::root().join("configs/published/mlae-paper.toml")).unwrap();
        // The published file lists the tasks in the paper's column order (Tables 1 and 11);
        // the manifests must list them in the same order, which is the report's.
        let vtab = Benchmark::by_name("vtab").unwrap();
        assert_eq!(p.vtab.tasks, vtab.tasks());
        assert_eq!(p.fgvc.tasks, Benchmark::by_name("fgvc").unwrap().tasks());
        for row in &p.vtab.rows {
            let by = row.by_task(&p.vtab.tasks);
            let (_, avg) = group_means(|t| by.get(t).copied(), &vtab);
            let avg = avg.unwrap();
            // The paper rounds or truncates its group means, so its averages may sit up to
            // 0.1 below the exact mean of group means.
            if let Some(printed) = row.average {
                assert!((avg - printed).abs() < 0.1, "{}: {avg} vs {printed}", row.method);
            }
        }
        for row in p.fgvc.rows.iter().filter(|r| !r.acc.is_empty()) {
            let m = mean(&row.acc).unwrap();
            assert!((m - row.mean.unwrap()).abs() < 0.02, "{}: {m}", row.method);
            for (s, printed) in row.per_seed.iter().zip(&row.seed_means) {
                assert!((mean(s).unwrap() - printed).abs() < 0.005, "{}: {s:?}", row.method);
            }
        }
    }
}
