//! VTAB-1k's results in the paper's Table 1 layout: per task, per domain, and the average of
//! the domain means.

use crate::cells::{csv_line, csv_ours, f1, params_m, tasks_of, wall_mean};
use crate::published::PublishedBench;
use crate::results::{Table, group_means};
use mlae_data::TaskGroup;
use mlae_plot::BarChart;
use std::fmt::Write as _;

/// VTAB-1k: Table 1's layout. Returns the domain-means chart (Figure 3's).
pub fn vtab_tables(
    table: &Table,
    bench: &[TaskGroup],
    pubs: Option<&PublishedBench>,
    md: &mut String,
    csv: &mut String,
) -> BarChart {
    let tasks = tasks_of(bench);
    let groups: Vec<&str> = bench.iter().map(|g| g.name.as_str()).collect();
    let mut chart = BarChart {
        title: "Domain means, VTAB-1k (%)".into(),
        categories: groups.iter().map(|g| g.to_string()).chain(["Average".to_string()]).collect(),
        ..Default::default()
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
