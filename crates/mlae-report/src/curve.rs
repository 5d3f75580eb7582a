//! Test accuracy against the training length: sweeps of one grid run at several `train.epochs`
//! (`cargo xtask sweep ... --set train.epochs=N`, one sweep directory per length), drawn as one
//! panel per task with a line per method, mean ± sample standard deviation over seeds.

use crate::cells::csv_num;
use crate::error::{Result, bail};
use crate::results::{RunResult, collect, mean, mean_std_cell, std};
use mlae_formats::csv_record;
use mlae_plot::{ErrorPanel, ErrorSeries};
use mlae_sweep::{SweepDir, SweepRecord};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One (task, method, length) point: its runs' seeds, test accuracies and final training losses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CurvePoint {
    pub seeds: Vec<u64>,
    pub accs: Vec<f64>,
    pub train_losses: Vec<f64>,
}

/// The points by task, then method, then epochs.
#[derive(Debug, Default)]
pub struct Curve {
    pub points: BTreeMap<String, BTreeMap<String, BTreeMap<u64, CurvePoint>>>,
    /// Runs left out and why.
    pub notes: Vec<String>,
}

impl Curve {
    /// Reads the finished runs of every sweep. Two runs of one task, method, length and seed
    /// (the same sweep given twice, say) are an error: they would count one seed twice.
    ///
    /// A line is named by its grid variant and, where the sweeps' overrides other than
    /// `train.epochs` differ (say one pair of sweeps with `--set train.lr=0.002`), by the ones
    /// its sweep has and not every sweep has, so that such lines sit side by side.
    pub fn collect(sweeps: &[SweepDir]) -> Result<Curve> {
        let mut curve = Curve::default();
        let records = sweeps.iter().map(|s| s.read_record()).collect::<std::result::Result<Vec<_>, _>>()?;
        for (sweep, own) in sweeps.iter().zip(line_overrides(&records)) {
            for mut r in collect(sweep, &mut curve.notes)? {
                if !own.is_empty() {
                    r.row = format!("{} ({own})", r.row);
                }
                // Read here, not by `collect`: only the curve shows the final training loss.
                let loss = match sweep.run_layout(&r.run).read_metrics() {
                    Ok(m) => m.last().map(|m| m.train_loss),
                    Err(e) => {
                        curve.notes.push(format!("{}: no final training loss ({e})", r.run));
                        None
                    }
                };
                curve.add(r, loss, sweep)?;
            }
        }
        if curve.points.is_empty() {
            bail!(
                "no finished runs in {}",
                sweeps.iter().map(|s| s.root.display().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        Ok(curve)
    }

    fn add(&mut self, r: RunResult, final_train_loss: Option<f64>, sweep: &SweepDir) -> Result<()> {
        let p = self.points.entry(r.task.clone()).or_default().entry(r.row.clone()).or_default();
        let p = p.entry(r.epochs).or_default();
        if p.seeds.contains(&r.seed) {
            bail!(
                "{}: a second run of {} {} at {} epochs, seed {} (each length and seed once)",
                sweep.root.display(),
                r.task,
                r.row,
                r.epochs,
                r.seed
            );
        }
        p.seeds.push(r.seed);
        p.accs.push(r.acc);
        if let Some(l) = final_train_loss {
            p.train_losses.push(l);
        }
        Ok(())
    }

    /// Every training length any point has, ascending.
    fn lengths(&self) -> Vec<u64> {
        let mut e: Vec<u64> =
            self.points.values().flat_map(|m| m.values().flat_map(|l| l.keys().copied())).collect();
        e.sort_unstable();
        e.dedup();
        e
    }

    /// `curve.md`: per task, test accuracy and final training loss by method and length.
    pub fn markdown(&self) -> String {
        let lengths = self.lengths();
        let mut md = String::from(
            "# Test accuracy against training length\n\n\
             Top-1 test accuracy (%), mean ± sample standard deviation over seeds (n = seeds; one seed: \
             the bare value), after the last epoch of a run trained for that many epochs with the same \
             recipe otherwise (its cosine schedule spans the whole length). The training loss is the last \
             epoch's mean, with MLAE's masks on.\n",
        );
        for (task, methods) in &self.points {
            let _ = writeln!(md, "\n## {task}\n");
            table(&mut md, methods, &lengths, |p| mean_std_cell(&p.accs, 2));
            let _ = writeln!(md, "\nFinal training loss:\n");
            table(&mut md, methods, &lengths, |p| mean_std_cell(&p.train_losses, 4));
        }
        if !self.notes.is_empty() {
            md.push_str("\n## Left out\n\n");
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        md
    }

    /// `curve.csv`: one line per task, method and length.
    pub fn csv(&self) -> String {
        let mut csv = String::from("task,method,epochs,seeds,accuracy,std,min,max,final_train_loss\n");
        for (task, methods) in &self.points {
            for (method, by_len) in methods {
                for (e, p) in by_len {
                    csv.push_str(&csv_record([
                        task.clone(),
                        method.clone(),
                        e.to_string(),
                        p.accs.len().to_string(),
                        csv_num(mean(&p.accs)),
                        csv_num(std(&p.accs)),
                        csv_num(p.accs.iter().copied().reduce(f64::min)),
                        csv_num(p.accs.iter().copied().reduce(f64::max)),
                        csv_num(mean(&p.train_losses)),
                    ]));
                }
            }
        }
        csv
    }

    /// The chart's panels: one per task, a line per method, error bars of one sample std.
    pub fn panels(&self) -> Vec<ErrorPanel> {
        self.points
            .iter()
            .map(|(task, methods)| ErrorPanel {
                title: task.clone(),
                x_label: "epochs".into(),
                y_label: "test accuracy (%)".into(),
                series: methods
                    .iter()
                    .map(|(method, by_len)| ErrorSeries {
                        label: method.clone(),
                        points: by_len
                            .iter()
                            .filter_map(|(e, p)| {
                                Some((*e as f64, mean(&p.accs)?, std(&p.accs).unwrap_or(0.0)))
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Writes `curve.md`, `curve.csv` and `curve.png` into `out`; a chart that cannot be drawn
    /// is a warning, as the report's is.
    pub fn write(&self, out: &Path) -> Result<()> {
        for (name, text) in [("curve.md", self.markdown()), ("curve.csv", self.csv())] {
            let path = out.join(name);
            mlae_formats::write_atomic(&path, text.as_bytes())
                .map_err(|source| crate::error::ReportError::Io { path, source })?;
        }
        let panels = self.panels();
        let size = (480 * panels.len().max(1) as u32, 420);
        if let Err(e) = mlae_plot::error_panels(&out.join("curve.png"), size, &panels) {
            tracing::warn!("warning: no chart ({e})");
        }
        Ok(())
    }
}

/// Per sweep, what its lines' names add to the variant: its overrides other than the length
/// that not every sweep has, joined (empty when it has none of its own).
pub(crate) fn line_overrides(records: &[SweepRecord]) -> Vec<String> {
    let others: Vec<Vec<String>> = records.iter().map(other_overrides).collect();
    others
        .iter()
        .map(|o| {
            o.iter()
                .filter(|x| !others.iter().all(|all| all.contains(x)))
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect()
}

/// A sweep's overrides other than its length: `--set` entries (sorted) but `train.epochs`,
/// then the data root and checkpoint when given.
fn other_overrides(record: &SweepRecord) -> Vec<String> {
    let length = |s: &String| s.split_once('=').is_some_and(|(k, _)| k.trim() == "train.epochs");
    let mut out: Vec<String> = record.sorted_set().into_iter().filter(|s| !length(s)).collect();
    out.extend(record.data_root.iter().map(|d| format!("data root {}", d.display())));
    out.extend(record.checkpoint.iter().map(|c| format!("checkpoint {}", c.display())));
    out
}

/// One Markdown table: a line per method, a column per training length, `cell` of each point.
fn table(
    md: &mut String,
    methods: &BTreeMap<String, BTreeMap<u64, CurvePoint>>,
    lengths: &[u64],
    cell: impl Fn(&CurvePoint) -> String,
) {
    let head: Vec<String> = lengths.iter().map(|e| format!("{e} epochs")).collect();
    let _ = writeln!(md, "| method | {} |", head.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(lengths.len()));
    for (method, by_len) in methods {
        let cells: Vec<String> = lengths.iter().map(|e| by_len.get(e).map_or("-".into(), &cell)).collect();
        let _ = writeln!(md, "| {method} | {} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::r;

    fn curve(runs: &[(&str, &str, u64, u64, f64)]) -> Curve {
        let sweep = SweepDir { root: "sweep".into() };
        let mut c = Curve::default();
        for &(task, row, epochs, seed, acc) in runs {
            c.add(RunResult { epochs, ..r(task, row, seed, acc) }, Some(acc / 100.0), &sweep).unwrap();
        }
        c
    }

    #[test]
    fn points_average_over_seeds_per_length() {
        let c = curve(&[
            ("mnist5k", "lora", 10, 0, 90.0),
            ("mnist5k", "lora", 10, 1, 92.0),
            ("mnist5k", "lora", 100, 0, 95.0),
            ("mnist5k", "mlae", 30, 0, 93.0),
        ]);
        let md = c.markdown();
        assert!(md.contains("| method | 10 epochs | 30 epochs | 100 epochs |"), "{md}");
        assert!(md.contains("| lora | 91.00 ± 1.41 (n=2) | - | 95.00 |"), "{md}");
        assert!(md.contains("| mlae | - | 93.00 | - |"), "{md}");
        assert!(md.contains("| lora | 0.9100 ± 0.0141 (n=2) | - | 0.9500 |"), "train losses: {md}");
        let csv = c.csv();
        assert!(csv.contains("mnist5k,lora,10,2,91.0000,1.4142,90.0000,92.0000,0.9100\n"), "{csv}");
        let panels = c.panels();
        assert_eq!(panels.len(), 1);
        let lora = &panels[0].series[0];
        assert_eq!(lora.label, "lora");
        assert_eq!(lora.points[0].0, 10.0);
        assert_eq!(lora.points[0].1, 91.0);
        assert!((lora.points[0].2 - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(lora.points[1], (100.0, 95.0, 0.0), "one seed: no error bar");
    }

    #[test]
    fn a_seed_counted_twice_is_an_error() {
        let mut c = curve(&[("mnist5k", "lora", 10, 0, 90.0)]);
        let twice = RunResult { epochs: 10, ..r("mnist5k", "lora", 0, 91.0) };
        let err = c.add(twice, None, &SweepDir { root: "other".into() }).unwrap_err().to_string();
        assert!(err.contains("other") && err.contains("seed 0") && err.contains("10 epochs"), "{err}");
    }
}
