//! Successive halving for search grids (`--search halving`): the grid's settings of one
//! (task, variant, seed) all train a short budget, are scored on the validation split, the
//! best third goes on, and so on until one setting has trained the whole schedule.
//!
//! The schedule, for `n` settings and an `E`-epoch config, with `ETA = 3`:
//! - `s = floor(log3 n)` rungs before the last; rung `i` ends at epoch `round(E / 3^(s-i))`
//!   (at least one epoch more than the rung before), the last rung at `E`;
//! - each rung keeps `max(1, floor(m / 3))` of its `m` settings.
//!
//! For the demo search grid (9 settings, 10 epochs) that is rungs at epochs 1, 3 and 10
//! keeping 9 -> 3 -> 1: 9 + 3 x 2 + 7 = 22 run-epochs where the full grid trains 90.
//!
//! A rung is a pause, not a shorter run: `mlae-cli finetune --stop-after-epoch r` keeps the
//! config's whole schedule and writes the validation score at epoch `r` to `rungs.jsonl`;
//! promotion resumes the run. A run that survives to the end is therefore the very run the
//! full grid trains (resume is exact), and the final rung ranks survivors on the grid's own
//! metric (`best_val_acc`). Ranking uses validation scores only, never test.
//!
//! Everything is recomputed from the run directories on each call, so a halving sweep resumes
//! like any other, and under Slurm each call submits the runs of the rungs now due.

use crate::dir::{RunRecord, SweepDir, read_json, write_json};
use crate::error::{Result, SweepError, bail};
use crate::grid::{self, Select, Stage};
use crate::prepare::{Prepared, prepare};
use crate::select::{Chosen, Selection, Waiting, search_groups};
use mlae_formats::RunPhase;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Each rung keeps the best `1/ETA` of its settings.
pub const ETA: usize = 3;

/// The epochs at which rungs end, for `n` settings and an `epochs`-epoch schedule (the last is
/// `epochs`).
pub fn rungs(n: usize, epochs: u64) -> Vec<u64> {
    let mut s = 0;
    while ETA.pow(s + 1) <= n {
        s += 1;
    }
    let mut out: Vec<u64> = Vec::new();
    for i in 0..s {
        let r = (epochs as f64 / ETA.pow(s - i) as f64).round() as u64;
        let r = r.max(out.last().map_or(1, |p| p + 1));
        if r < epochs {
            out.push(r);
        }
    }
    out.push(epochs);
    out
}

/// How many of `m` settings go on to the next rung.
pub fn keep(m: usize) -> usize {
    (m / ETA).max(1)
}

/// One rung of one group, as decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RungOutcome {
    pub epoch: u64,
    /// `val200` accuracy at the rung's epoch, or at the last rung the grid's metric.
    pub metric: String,
    /// Every setting at this rung with its score, best first (grid order on a tie).
    pub scores: Vec<(String, f64)>,
    /// The settings that go on (at the last rung: the selected one).
    pub kept: Vec<String>,
}

/// Where one (task, variant, seed) group stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupProgress {
    pub task: String,
    pub variant: String,
    pub seed: u64,
    /// Settings in the group (the grid's points).
    pub settings: usize,
    pub rungs: Vec<u64>,
    /// The rungs decided so far.
    pub decided: Vec<RungOutcome>,
    /// Epochs trained by the group's search runs so far (for the compute comparison).
    pub epochs_trained: u64,
    /// What the full grid would train: settings x epochs.
    pub full_grid_epochs: u64,
}

/// The state of a halving search: per group its progress, the runs due now (each with the
/// epoch to pause at, `None` at the last rung), and the finals of the groups whose last rung
/// is decided.
#[derive(Debug)]
pub struct Halving {
    pub groups: Vec<GroupProgress>,
    pub due: Vec<Prepared>,
    pub selection: Selection,
}

impl Halving {
    /// `halving.json`: every group's rungs, scores and kept settings, and the compute used.
    pub fn save(&self, sweep: &SweepDir) -> Result<()> {
        let mut all: BTreeMap<String, GroupProgress> = read_json(&sweep.halving())?.unwrap_or_default();
        for g in &self.groups {
            all.insert(grid::run_name(&g.task, &g.variant, &[], g.seed, Stage::Search), g.clone());
        }
        write_json(&sweep.halving(), &all)
    }

    /// One line per rung schedule and the compute so far against the full grid's.
    pub fn describe(&self) -> String {
        let trained: u64 = self.groups.iter().map(|g| g.epochs_trained).sum();
        let full: u64 = self.groups.iter().map(|g| g.full_grid_epochs).sum();
        let done = self.groups.iter().filter(|g| g.decided.len() == g.rungs.len()).count();
        let schedule = self.groups.first().map(|g| {
            let mut m = g.settings;
            let mut kept = vec![m.to_string()];
            for _ in 1..g.rungs.len() {
                m = keep(m);
                kept.push(m.to_string());
            }
            format!("rungs at epochs {:?}, settings per rung {}", g.rungs, kept.join(" -> "))
        });
        format!(
            "successive halving: {}; {done} of {} groups decided; {trained} run-epochs trained so far, \
             the full grid trains {full}{}",
            schedule.unwrap_or_default(),
            self.groups.len(),
            if trained > 0 { format!(" ({:.1}x more)", full as f64 / trained as f64) } else { String::new() }
        )
    }
}

/// Reads every search run's directory and decides what halving can decide now.
pub fn progress(
    sweep: &SweepDir,
    grid_name: &str,
    extra: &[(String, toml::Value)],
    search: &[Prepared],
    sel: &Select,
) -> Result<Halving> {
    let mut out = Halving {
        groups: Vec::new(),
        due: Vec::new(),
        selection: Selection { finals: Vec::new(), waiting: Vec::new(), chosen: BTreeMap::new() },
    };
    let mut finals = Vec::new();
    for (key, members) in search_groups(search) {
        let members = &members;
        let epochs = members[0].epochs;
        if let Some(p) = members.iter().find(|p| p.epochs != epochs) {
            bail!(
                "--search halving: {} trains {} epochs and {} trains {epochs}; the settings of a group \
                 must share train.epochs (halving pauses them at the same epochs)",
                p.spec.name,
                p.epochs,
                members[0].spec.name
            );
        }
        let rungs = rungs(members.len(), epochs);
        let final_name = grid::run_name(&key.0, &key.1, &[], key.2, Stage::Final);
        let mut g = GroupProgress {
            task: key.0.clone(),
            variant: key.1.clone(),
            seed: key.2,
            settings: members.len(),
            rungs: rungs.clone(),
            decided: Vec::new(),
            epochs_trained: 0,
            full_grid_epochs: members.len() as u64 * epochs,
        };
        for p in members.iter() {
            g.epochs_trained += epochs_done(sweep, p)?;
        }
        let mut alive: Vec<&Prepared> = members.clone();
        let mut waiting_why = None;
        for (i, &epoch) in rungs.iter().enumerate() {
            let last = i + 1 == rungs.len();
            let mut scores = Vec::new();
            let mut behind = Vec::new();
            for p in &alive {
                match score(sweep, p, epoch, last, sel)? {
                    Some(v) => scores.push((*p, v)),
                    None => behind.push(*p),
                }
            }
            if !behind.is_empty() {
                for p in &behind {
                    let mut run = (*p).clone();
                    run.stop_after_epoch = (!last).then_some(epoch);
                    out.due.push(run);
                }
                waiting_why = Some(format!(
                    "halving rung {} of {} (epoch {epoch}): {} of {} settings still training",
                    i + 1,
                    rungs.len(),
                    behind.len(),
                    alive.len()
                ));
                break;
            }
            // best first; the sort is stable, so a tie keeps grid order
            scores.sort_by(|a, b| b.1.total_cmp(&a.1));
            let n_keep = if last { 1 } else { keep(scores.len()) };
            alive = scores.iter().take(n_keep).map(|(p, _)| *p).collect();
            g.decided.push(RungOutcome {
                epoch,
                metric: if last { sel.metric.field().into() } else { "val_acc".into() },
                scores: scores.iter().map(|(p, v)| (p.spec.name.clone(), *v)).collect(),
                kept: alive.iter().map(|p| p.spec.name.clone()).collect(),
            });
            if last {
                let (best, value) = scores[0];
                let spec = grid::final_run(&best.spec, sel.final_protocol);
                out.selection.chosen.insert(spec.name.clone(), Chosen::of(&key, sel, best, value, &scores));
                finals.push(spec);
            }
        }
        if let Some(why) = waiting_why {
            out.selection.waiting.push(Waiting { name: final_name, why });
        }
        out.groups.push(g);
    }
    out.selection.finals = prepare(sweep, grid_name, extra, &finals)?;
    Ok(out)
}

/// Epochs a search run has trained (0 when it has not started or its config changed since).
fn epochs_done(sweep: &SweepDir, p: &Prepared) -> Result<u64> {
    if !current(sweep, p)? {
        return Ok(0);
    }
    Ok(sweep.run_layout(&p.spec.name).read_status()?.map_or(0, |s| s.epoch))
}

fn current(sweep: &SweepDir, p: &Prepared) -> Result<bool> {
    Ok(RunRecord::read(sweep, &p.spec.name)?.is_some_and(|r| r.fingerprint == p.fingerprint))
}

/// A run's score at a rung: at an inner rung the validation accuracy recorded when it paused at
/// `epoch`; at the last rung the grid's metric from its summary. `None`: not there yet.
fn score(sweep: &SweepDir, p: &Prepared, epoch: u64, last: bool, sel: &Select) -> Result<Option<f64>> {
    if !current(sweep, p)? {
        return Ok(None);
    }
    let layout = sweep.run_layout(&p.spec.name);
    if last {
        if layout.phase() != RunPhase::Done {
            return Ok(None);
        }
        let summary = layout
            .read_summary()?
            .ok_or_else(|| SweepError::Invalid(format!("{}: no summary", layout.summary().display())))?;
        return match sel.metric.value(&summary) {
            Some(v) => Ok(Some(v)),
            None => bail!(
                "{}: summary.json has no {} (was it run with data.protocol = \"val\"?)",
                layout.root().display(),
                sel.metric.field()
            ),
        };
    }
    if let Some(r) = layout.read_rungs()?.get(&epoch) {
        return Ok(Some(r.acc));
    }
    // A run that went past this rung without pausing there (trained by the full grid in the
    // same directory) is scored from its metrics, when that epoch was evaluated. One that
    // stopped exactly at the rung without its pause (killed or interrupted between the epoch's
    // end and the rung record) is not scored here: it is resumed, pauses at once and records
    // its score, so its status says it paused there.
    let reached = layout.phase() == RunPhase::Done || layout.read_status()?.is_some_and(|s| s.epoch > epoch);
    if reached {
        let split = layout.read_config().map(|c| c.val_split()).unwrap_or_else(|_| "val200".into());
        if let Some(acc) = layout
            .read_metrics()?
            .iter()
            .find(|m| m.epoch == epoch)
            .and_then(|m| m.eval.get(&split))
            .map(|e| e.acc)
        {
            return Ok(Some(acc));
        }
        bail!(
            "{}: went past epoch {epoch} without a validation score there (no rungs.jsonl record, no \
             evaluation in metrics.jsonl); halving cannot rank it: start the sweep in a new --out directory",
            layout.root().display()
        );
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_pauses_at_thirds_of_thirds_and_keeps_a_third() {
        assert_eq!(rungs(9, 10), [1, 3, 10]);
        assert_eq!(rungs(36, 100), [4, 11, 33, 100]);
        assert_eq!(rungs(36, 500), [19, 56, 167, 500]);
        assert_eq!(rungs(4, 10), [3, 10]);
        assert_eq!(rungs(3, 6), [2, 6]);
        assert_eq!(rungs(2, 10), [10], "fewer than 3 settings: no rung before the end");
        assert_eq!(rungs(1, 10), [10]);
        // rungs stay strictly increasing and inside the schedule on short schedules
        assert_eq!(rungs(27, 4), [1, 2, 3, 4]);
        assert_eq!(rungs(81, 3), [1, 2, 3]);
        assert_eq!((keep(9), keep(3), keep(4), keep(2), keep(36)), (3, 1, 1, 1, 12));
    }

    #[test]
    fn the_demo_search_grid_trains_under_a_quarter_of_the_full_grid() {
        // 9 settings x 10 epochs: 9 x 1 + 3 x (3 - 1) + 1 x (10 - 3) run-epochs
        let total = run_epochs(9, 10);
        assert_eq!(total, 22);
        assert!(90.0 / total as f64 > 4.0);
        assert_eq!(run_epochs(36, 500), 1_905, "the VTAB-1k search grid: 36 x 500 = 18,000 in full");
    }

    /// Run-epochs a group of `n` settings trains under halving.
    fn run_epochs(n: usize, epochs: u64) -> u64 {
        let (mut m, mut prev, mut total) = (n as u64, 0, 0);
        let r = rungs(n, epochs);
        for (i, e) in r.iter().enumerate() {
            total += m * (e - prev);
            prev = *e;
            if i + 1 < r.len() {
                m = keep(m as usize) as u64;
            }
        }
        total
    }
}
