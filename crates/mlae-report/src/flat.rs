//! FGVC and the demo benchmark: per task the mean over seeds with its spread, and the mean
//! over tasks. Where the tasks fall into several groups (the demo's image and structured
//! tasks), each group gets its mean too and the Mean is the mean of the group means, as VTAB-1k
//! averages its domains.

use crate::cells::{csv_line, csv_ours, params_m, tasks_of, wall_mean};
use crate::published::PublishedBench;
use crate::results::{Table, mean, mean_all, mean_std_cell};
use mlae_data::TaskGroup;
use mlae_plot::BarChart;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// FGVC and the demo benchmark: per task mean over seeds with the spread, and the mean.
pub fn flat_tables(
    table: &Table,
    bench: (&str, &[TaskGroup]),
    pubs: Option<&PublishedBench>,
    md: &mut String,
    csv: &mut String,
) -> BarChart {
    let (name, groups) = bench;
    let tasks = tasks_of(groups);
    let grouped = groups.len() > 1;
    let mut columns = Vec::new();
    for g in groups {
        columns.extend(g.tasks.iter().cloned());
        if grouped {
            columns.push(format!("{} (mean)", g.name));
        }
    }
    let mut chart = BarChart {
        title: format!("Per-task accuracy and mean, {name} (%)"),
        categories: tasks.iter().cloned().chain(["Mean".to_string()]).collect(),
        ..Default::default()
    };
    let _ =
        writeln!(md, "| method | protocol | params (M) | wall (min/run) | {} | Mean |", columns.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(5 + columns.len()));
    for row in table.rows.keys() {
        for t in &tasks {
            if table.cell(row, t).is_some() {
                csv_ours(csv, table, row, t, "task", table.cell(row, t));
            }
        }
        let (cells, m, mean_cell) = if grouped {
            let (cells, group_values, m, mean_cell) = grouped_cells(table, row, groups, false);
            for (g, v) in groups.iter().zip(group_values) {
                csv_line(csv, "ours", row, &table.protocols(row), &g.name, "group", v);
            }
            (cells, m, mean_cell)
        } else {
            row_cells(table, row, &tasks, false)
        };
        let _ = writeln!(
            md,
            "| {row} | {} | {} | {} | {} | {mean_cell} |",
            table.protocols(row),
            params_m(table, row, groups).map_or("-".into(), |p| format!("{p:.2}")),
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
        "\nOur cells with several seeds show mean ± sample standard deviation over the seeds (n=seeds); \
         the Mean column's is over the per-seed means across tasks. Published cells show (min-max, \
         n=seeds). params: trainable parameters outside the classification head.\n",
    );
    if grouped {
        md.push_str(
            "\nA group's mean is the mean over its tasks, shown only when every task of the group has a \
             result; its spread is over the per-seed group means. The Mean is the mean of the group means \
             (as VTAB-1k averages its domains, so that a group of many tasks does not outweigh one of few), \
             its spread over the per-seed means of the group means.\n",
        );
    }
    val_table(table, &tasks, md);
    for f in footnotes {
        let _ = writeln!(md, "\n\\* {f}");
    }
    chart
}

/// Per seed, the mean over `tasks`, for the seeds that have every one of them.
fn per_seed_means(table: &Table, row: &str, tasks: &[String], val: bool) -> BTreeMap<u64, f64> {
    let mut per_seed: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for t in tasks {
        for r in table.runs(row, t) {
            if let Some(v) = if val { r.val_acc } else { Some(r.acc) } {
                per_seed.entry(r.seed).or_default().push(v);
            }
        }
    }
    per_seed
        .into_iter()
        .filter(|(_, v)| v.len() == tasks.len())
        .filter_map(|(s, v)| Some((s, mean(&v)?)))
        .collect()
}

/// `mean ± sd (n=N)` when several seeds have a value, the bare mean otherwise, `-` without one.
fn spread_cell(m: Option<f64>, seed_values: &[f64]) -> String {
    match m {
        Some(m) if seed_values.len() > 1 => {
            let sd = crate::results::std(seed_values).unwrap_or(0.0);
            format!("{m:.2} ± {sd:.2} (n={})", seed_values.len())
        }
        m => m.map_or("-".into(), |m| format!("{m:.2}")),
    }
}

/// A row's cells when its tasks fall into several groups: each group's task cells followed by
/// the group's mean, the group means, the mean of the group means and the Mean cell.
fn grouped_cells(
    table: &Table,
    row: &str,
    groups: &[TaskGroup],
    val: bool,
) -> (Vec<String>, Vec<Option<f64>>, Option<f64>, String) {
    let mut cells = Vec::new();
    let mut group_values = Vec::new();
    let mut group_seeds = Vec::new();
    for g in groups {
        let (task_cells, m, cell) = row_cells(table, row, &g.tasks, val);
        cells.extend(task_cells);
        cells.push(cell);
        group_values.push(m);
        group_seeds.push(per_seed_means(table, row, &g.tasks, val));
    }
    let m = mean_all(&group_values);
    let seeds: Vec<f64> = group_seeds[0]
        .keys()
        .filter_map(|s| mean_all(&group_seeds.iter().map(|g| g.get(s).copied()).collect::<Vec<_>>()))
        .collect();
    (cells, group_values, m, spread_cell(m, &seeds))
}

/// A row's per-task cells (mean ± std over seeds), its mean over tasks, and the Mean cell
/// (± the std of the per-seed means over every task), on test or, with `val`, on val200.
fn row_cells(table: &Table, row: &str, tasks: &[String], val: bool) -> (Vec<String>, Option<f64>, String) {
    let cells: Vec<String> = tasks.iter().map(|t| mean_std_cell(&table.values(row, t, val), 2)).collect();
    let m = mean_all(&tasks.iter().map(|t| mean(&table.values(row, t, val))).collect::<Vec<_>>());
    let seed_means: Vec<f64> = per_seed_means(table, row, tasks, val).into_values().collect();
    (cells, m, spread_cell(m, &seed_means))
}

/// The val200 accuracy of the rows whose runs selected on val (`protocol = "val"`), beside
/// the test accuracy above: the paper's Tables 8 and 9 are reported on test, and this shows
/// what a reader choosing on val would have seen.
fn val_table(table: &Table, tasks: &[String], md: &mut String) {
    let rows: Vec<&String> =
        table.rows.keys().filter(|row| table.all(row).iter().any(|r| r.val_acc.is_some())).collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(md, "\nval200 accuracy of the same runs (the epoch each selected on val200):\n");
    let _ = writeln!(md, "| method | {} | Mean |", tasks.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(2 + tasks.len()));
    for row in rows {
        let (cells, _, mean_cell) = row_cells(table, row, tasks, true);
        let _ = writeln!(md, "| {row} | {} | {mean_cell} |", cells.join(" | "));
    }
}
