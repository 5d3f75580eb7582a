//! A task's per-class results in the report (`--confusion TASK`): for each row, the test
//! confusion matrices its runs wrote (`results/<split>/confusion.csv`), summed over seeds,
//! as a per-class accuracy table, the pairs most often confused, and one PNG per row.

use crate::cells::f1;
use crate::error::Result;
use crate::results::row_label;
use mlae_formats::{Confusion, RunPhase};
use mlae_sweep::grid::Stage;
use mlae_sweep::{Plan, SweepDir};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One row's matrix over its seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct RowConfusion {
    pub matrix: Confusion,
    pub seeds: usize,
}

impl RowConfusion {
    /// Adds `seeds` more seeds' matrix of the same row (another run, or another directory of
    /// the same experiment). A matrix over other classes is not added: false, for the caller
    /// to note.
    pub fn add(&mut self, matrix: &Confusion, seeds: usize) -> bool {
        if matrix.classes != self.matrix.classes {
            return false;
        }
        self.matrix.counts.iter_mut().zip(&matrix.counts).for_each(|(a, b)| *a += b);
        self.seeds += seeds;
        true
    }
}

/// The summed test confusion of `task`'s finished final runs in `sweep`, by row. Runs
/// written before per-class results existed are noted and left out.
pub fn collect_confusions(
    sweep: &SweepDir,
    task: &str,
    notes: &mut Vec<String>,
) -> Result<BTreeMap<String, RowConfusion>> {
    let plan = Plan::read(sweep)?;
    let mut out: BTreeMap<String, RowConfusion> = BTreeMap::new();
    for (name, planned) in &plan.runs {
        if planned.stage == Stage::Search || planned.task != task {
            continue;
        }
        let layout = sweep.run_layout(name);
        if layout.phase() != RunPhase::Done {
            continue;
        }
        let split = layout.read_config()?.test_split();
        let path = layout.results_dir(&split).join("confusion.csv");
        if !path.is_file() {
            notes.push(format!("{name}: no {} (a run from before per-class results)", path.display()));
            continue;
        }
        let m = Confusion::read_csv(&path)?;
        match out.get_mut(&row_label(planned)) {
            Some(r) => {
                if !r.add(&m, 1) {
                    notes.push(format!("{name}: its classes differ from its row's other runs; left out"));
                }
            }
            None => {
                out.insert(row_label(planned), RowConfusion { matrix: m, seeds: 1 });
            }
        }
    }
    Ok(out)
}

/// The report's section for `task`; returns the PNGs to draw (file name, title, matrix).
pub fn confusion_section(
    task: &str,
    rows: &BTreeMap<String, RowConfusion>,
    md: &mut String,
) -> Vec<(String, String, Confusion)> {
    let _ = writeln!(md, "\n## Per-class test accuracy on `{task}` (summed over seeds)\n");
    let Some(first) = rows.values().next() else {
        md.push_str("No finished run of this task has per-class results yet.\n");
        return Vec::new();
    };
    let classes = &first.matrix.classes;
    // Many classes do not fit a table: show those with the lowest accuracy over all rows.
    let mut shown: Vec<usize> = (0..classes.len()).collect();
    if classes.len() > 12 {
        let mean = |c: usize| {
            let accs: Vec<f64> = rows.values().filter_map(|r| r.matrix.per_class()[c].accuracy).collect();
            accs.iter().sum::<f64>() / accs.len().max(1) as f64
        };
        shown.sort_by(|&a, &b| mean(a).total_cmp(&mean(b)).then(a.cmp(&b)));
        shown.truncate(12);
        shown.sort_unstable();
        let _ = writeln!(md, "The 12 of {} classes with the lowest mean accuracy.\n", classes.len());
    }
    let header: Vec<&str> = shown.iter().map(|&c| classes[c].as_str()).collect();
    let _ = writeln!(md, "| method | seeds | overall | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|---|---|{}", "---|".repeat(shown.len()));
    let mut pngs = Vec::new();
    for (row, r) in rows {
        let per = r.matrix.per_class();
        let cells: Vec<String> = shown.iter().map(|&c| f1(per[c].accuracy.map(|a| 100.0 * a))).collect();
        let _ = writeln!(
            md,
            "| {row} | {} | {} | {} |",
            r.seeds,
            f1(Some(100.0 * r.matrix.accuracy())),
            cells.join(" | ")
        );
        let file = format!("confusion-{}-{}.png", slug(task), slug(row));
        pngs.push((file, format!("{task}, {row}"), r.matrix.clone()));
    }
    md.push_str("\nMost confused (true -> predicted: images, over all seeds):\n\n");
    for (row, r) in rows {
        let _ = writeln!(md, "- {row}: {}", most_confused(&r.matrix, 3));
    }
    md.push('\n');
    for (file, title, _) in &pngs {
        let _ = writeln!(md, "![{title}]({file})");
    }
    pngs
}

/// The `k` largest off-diagonal cells, `true -> predicted: n`.
fn most_confused(m: &Confusion, k: usize) -> String {
    let c = m.num_classes();
    let mut cells: Vec<(u64, usize, usize)> = (0..c)
        .flat_map(|t| (0..c).map(move |p| (t, p)))
        .filter(|(t, p)| t != p)
        .map(|(t, p)| (m.count(t, p), t, p))
        .filter(|x| x.0 > 0)
        .collect();
    cells.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    if cells.is_empty() {
        return "none".into();
    }
    cells
        .iter()
        .take(k)
        .map(|(n, t, p)| format!("{} -> {}: {n}", m.classes[*t], m.classes[*p]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A file-name-safe form of a row or task name.
fn slug(s: &str) -> String {
    let out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    out.trim_matches('_').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_lists_rows_and_their_worst_confusions() {
        let names: Vec<String> = ["cat", "dog", "eel"].map(String::from).into();
        let mut rows = BTreeMap::new();
        rows.insert(
            "lora".to_string(),
            RowConfusion {
                matrix: Confusion::new(names.clone(), vec![8, 2, 0, 1, 9, 0, 0, 3, 7]).unwrap(),
                seeds: 3,
            },
        );
        let mut md = String::new();
        let pngs = confusion_section("pets", &rows, &mut md);
        assert!(md.contains("| lora | 3 | 80.0 | 80.0 | 90.0 | 70.0 |"), "{md}");
        assert!(md.contains("- lora: eel -> dog: 3, cat -> dog: 2, dog -> cat: 1"), "{md}");
        assert_eq!(pngs[0].0, "confusion-pets-lora.png");
        assert!(md.contains("![pets, lora](confusion-pets-lora.png)"), "{md}");
        assert_eq!(slug("mlae (demo-search)"), "mlae__demo-search");
    }
}
