//! The tables only some sweeps have: the masking ablation (Table 4) and the settings a search
//! grid selected.

use crate::cells::f1;
use crate::published::PublishedMasking;
use crate::results::{Table, group_means};
use mlae_data::TaskGroup;
use mlae_sweep::Chosen;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Table 4's layout for the masking ablation: VTAB-1k average per strategy and pattern.
pub fn masking_table(table: &Table, bench: &[TaskGroup], published: &PublishedMasking, md: &mut String) {
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

pub fn selection_table(chosen: &BTreeMap<String, Chosen>, md: &mut String) {
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
