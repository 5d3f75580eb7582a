//! How numbers are written into the Markdown and CSV tables.

use crate::results::{Table, mean};
use mlae_data::TaskGroup;
use mlae_formats::csv_record;

/// Every task of the groups, in column order.
pub(crate) fn tasks_of(groups: &[TaskGroup]) -> Vec<String> {
    groups.iter().flat_map(|g| g.tasks.iter().cloned()).collect()
}

pub(crate) fn f1(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

pub(crate) fn csv_num(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v:.4}"))
}

/// The paper's "# param": backbone parameters, averaged over group means (VTAB) or tasks.
pub(crate) fn params_m(table: &Table, row: &str, groups: &[TaskGroup]) -> Option<f64> {
    let per_task =
        |t: &str| mean(&table.runs(row, t).iter().filter_map(|r| r.backbone_params).collect::<Vec<_>>());
    let means: Vec<f64> = groups
        .iter()
        .filter_map(|g| mean(&g.tasks.iter().filter_map(|t| per_task(t)).collect::<Vec<_>>()))
        .collect();
    mean(&means).map(|p| p / 1e6)
}

pub(crate) fn wall_mean(table: &Table, row: &str) -> Option<f64> {
    mean(&table.all(row).iter().filter_map(|r| r.wall_seconds).collect::<Vec<_>>())
}

pub(crate) fn csv_ours(
    csv: &mut String,
    table: &Table,
    row: &str,
    task: &str,
    kind: &str,
    value: Option<f64>,
) {
    let runs = table.runs(row, task);
    let (min, max, n) = table.spread(row, task).map_or((None, None, 0), |(a, b, n)| (Some(a), Some(b), n));
    let best = mean(&runs.iter().filter_map(|r| r.best_test_acc).collect::<Vec<_>>());
    let params = mean(&runs.iter().filter_map(|r| r.backbone_params).collect::<Vec<_>>()).map(|p| p / 1e6);
    let wall = mean(&runs.iter().filter_map(|r| r.wall_seconds).collect::<Vec<_>>());
    csv.push_str(&csv_record([
        "ours".to_string(),
        row.to_string(),
        table.protocols(row),
        task.to_string(),
        kind.to_string(),
        n.to_string(),
        csv_num(value),
        csv_num(min),
        csv_num(max),
        csv_num(best),
        csv_num(params),
        csv_num(wall),
    ]));
}

pub(crate) fn csv_line(
    csv: &mut String,
    source: &str,
    row: &str,
    protocol: &str,
    task: &str,
    kind: &str,
    value: Option<f64>,
) {
    let value = csv_num(value);
    csv.push_str(&csv_record([source, row, protocol, task, kind, "", &value, "", "", "", "", ""]));
}
