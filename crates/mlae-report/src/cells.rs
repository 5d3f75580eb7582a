//! How numbers are written into the Markdown and CSV tables.

use crate::results::{Table, mean};
use mlae_data::TaskGroup;
use std::fmt::Write as _;

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

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180; a lone
/// carriage return counts, as spreadsheet readers split on it).
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
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

pub(crate) fn csv_line(
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

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_only_when_a_reader_would_split_them() {
        assert_eq!(csv_field("mlae (demo-search)"), "mlae (demo-search)");
        assert_eq!(csv_field("lr=0.001, p=0.5"), "\"lr=0.001, p=0.5\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("a\rb"), "\"a\rb\"");
        assert_eq!(csv_field("a\nb"), "\"a\nb\"");
    }
}
