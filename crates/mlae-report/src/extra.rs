//! The tables only some sweeps have: the masking ablation (Table 4) and the settings a search
//! grid selected.

use crate::cells::f1;
use crate::published::PublishedMasking;
use crate::results::{Table, group_means};
use mlae_data::TaskGroup;
use mlae_sweep::Chosen;
use mlae_sweep::halving::GroupProgress;
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

/// The settings one search sweep selected, under its own heading (`label`: the grid, with
/// `, halving` for a halving search), so that a full and a halving search of one grid in the
/// same report each get a table and a heading.
///
/// `settings compared` is the number of the grid's settings that competed for each pick: under
/// halving every setting entered the first rung, though `selection.json` lists only the last
/// rung's survivors as candidates, so the count comes from `halving.json` when there is one.
pub fn selection_table(
    label: &str,
    chosen: &BTreeMap<String, Chosen>,
    halving: Option<&BTreeMap<String, GroupProgress>>,
    md: &mut String,
) {
    let _ = writeln!(md, "\n## Selected settings of `{label}` (search stage, by validation accuracy)\n");
    let _ =
        writeln!(md, "| final run | task | variant | seed | selected | val acc (%) | settings compared |");
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
            settings_compared(c, halving)
        );
    }
}

/// How many settings competed for `c`: its halving group's settings, else its candidates.
fn settings_compared(c: &Chosen, halving: Option<&BTreeMap<String, GroupProgress>>) -> usize {
    halving
        .and_then(|groups| {
            groups.values().find(|g| g.task == c.task && g.variant == c.variant && g.seed == c.seed)
        })
        .map_or(c.candidates.len(), |g| g.settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlae_sweep::halving::RungOutcome;

    fn chosen(seed: u64, candidates: usize) -> Chosen {
        Chosen {
            task: "mnist5k".into(),
            variant: "mlae".into(),
            seed,
            metric: "best_val_acc".into(),
            selected: format!("search.mnist5k.mlae.p=0.1.s{seed}"),
            point: vec![("p".into(), "0.1".into())],
            value: 0.945,
            candidates: (0..candidates).map(|i| (format!("search.mnist5k.mlae.{i}.s{seed}"), 0.9)).collect(),
        }
    }

    /// A halving group of 9 settings whose last rung kept one.
    fn group(seed: u64) -> GroupProgress {
        GroupProgress {
            task: "mnist5k".into(),
            variant: "mlae".into(),
            seed,
            settings: 9,
            rungs: vec![1, 3, 10],
            decided: [(1, 3), (3, 1), (10, 1)]
                .iter()
                .map(|&(epoch, k)| RungOutcome {
                    epoch,
                    metric: "val_acc".into(),
                    scores: vec![],
                    kept: vec!["search.mnist5k.mlae.p=0.1.s0".into(); k],
                })
                .collect(),
            epochs_trained: 22,
            full_grid_epochs: 90,
        }
    }

    #[test]
    fn halving_counts_every_setting_it_compared_not_its_last_rungs_survivors() {
        // selection.json of a halving search lists only the last rung's survivor as candidate
        let picks = BTreeMap::from([("final.mnist5k.mlae.s0".to_string(), chosen(0, 1))]);
        let halving = BTreeMap::from([("search.mnist5k.mlae.s0".to_string(), group(0))]);
        let mut md = String::new();
        selection_table("demo-search, halving", &picks, Some(&halving), &mut md);
        assert!(md.contains("## Selected settings of `demo-search, halving`"), "{md}");
        assert!(md.contains("| final.mnist5k.mlae.s0 | mnist5k | mlae | 0 | p=0.1 | 94.50 | 9 |"), "{md}");
    }

    #[test]
    fn a_full_search_counts_its_candidates_under_its_own_heading() {
        let picks = BTreeMap::from([("final.mnist5k.mlae.s1".to_string(), chosen(1, 9))]);
        // a halving record of another seed does not count for this pick
        let halving = BTreeMap::from([("search.mnist5k.mlae.s0".to_string(), group(0))]);
        let (mut full, mut other) = (String::new(), String::new());
        selection_table("demo-search", &picks, None, &mut full);
        selection_table(
            "demo-search",
            &BTreeMap::from([("final.mnist5k.mlae.s1".to_string(), chosen(1, 4))]),
            Some(&halving),
            &mut other,
        );
        assert!(full.contains("## Selected settings of `demo-search` (search stage"), "{full}");
        assert!(full.contains("| 94.50 | 9 |"), "{full}");
        assert!(other.contains("| 94.50 | 4 |"), "{other}");
    }
}
