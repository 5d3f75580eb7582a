//! Search grids: per task, the search run with the best validation accuracy becomes a final
//! run, trained under the final protocol.

use crate::dir::{RunRecord, SweepDir, read_json, write_json};
use crate::error::{Result, SweepError, bail};
use crate::grid::{self, Select, Stage};
use crate::prepare::{Prepared, prepare};
use mlae_formats::RunPhase;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The outcome of selecting on the search runs' results.
#[derive(Debug, Clone)]
pub struct Selection {
    pub finals: Vec<Prepared>,
    /// Final runs that cannot be planned yet, and why.
    pub waiting: Vec<Waiting>,
    /// Per final run: what was selected among which candidates (`selection.json`).
    pub chosen: BTreeMap<String, Chosen>,
}

#[derive(Debug, Clone)]
pub struct Waiting {
    pub name: String,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chosen {
    pub task: String,
    pub variant: String,
    pub seed: u64,
    pub metric: String,
    pub selected: String,
    pub point: Vec<(String, String)>,
    pub value: f64,
    /// Every candidate search run and its metric.
    pub candidates: Vec<(String, f64)>,
}

impl Selection {
    /// Adds this selection to `selection.json`.
    pub fn save(&self, sweep: &SweepDir) -> Result<()> {
        let mut all: BTreeMap<String, Chosen> = read_json(&sweep.selection())?.unwrap_or_default();
        all.extend(self.chosen.clone());
        write_json(&sweep.selection(), &all)
    }

    /// Every selection made in a sweep directory so far.
    pub fn read_all(sweep: &SweepDir) -> Result<Option<BTreeMap<String, Chosen>>> {
        read_json(&sweep.selection())
    }
}

/// A search group: (task, variant, seed).
pub(crate) type GroupKey = (String, String, u64);

/// The search runs grouped by (task, variant, seed), groups and members in plan order.
pub(crate) fn search_groups(search: &[Prepared]) -> Vec<(GroupKey, Vec<&Prepared>)> {
    let mut groups: Vec<(GroupKey, Vec<&Prepared>)> = Vec::new();
    for p in search.iter().filter(|p| p.spec.stage == Stage::Search) {
        let key = (p.spec.task.clone(), p.spec.variant.clone(), p.spec.seed);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(p),
            None => groups.push((key, vec![p])),
        }
    }
    groups
}

impl Chosen {
    /// The record of `best` (scored `value`) selected among `candidates` of group `key`.
    pub(crate) fn of(
        key: &GroupKey,
        sel: &Select,
        best: &Prepared,
        value: f64,
        candidates: &[(&Prepared, f64)],
    ) -> Self {
        Chosen {
            task: key.0.clone(),
            variant: key.1.clone(),
            seed: key.2,
            metric: sel.metric.field().into(),
            selected: best.spec.name.clone(),
            point: best.spec.point.iter().map(|(k, v)| (k.clone(), grid::value_text(v))).collect(),
            value,
            candidates: candidates.iter().map(|(p, v)| (p.spec.name.clone(), *v)).collect(),
        }
    }
}

/// For each (task, variant, seed): the search run with the highest validation accuracy (the
/// first in grid order on a tie), as a final run. A group is selected only when all its
/// search runs are done with their current config, so the choice cannot change later.
pub fn select(
    sweep: &SweepDir,
    grid_name: &str,
    extra: &[(String, toml::Value)],
    search: &[Prepared],
    sel: &Select,
) -> Result<Selection> {
    let mut finals = Vec::new();
    let mut waiting = Vec::new();
    let mut chosen = BTreeMap::new();
    for (key, members) in search_groups(search) {
        let members = &members;
        let final_name = grid::run_name(&key.0, &key.1, &[], key.2, Stage::Final);
        let mut candidates = Vec::new();
        let mut missing = 0;
        for p in members {
            let layout = sweep.run_layout(&p.spec.name);
            let current =
                RunRecord::read(sweep, &p.spec.name)?.is_some_and(|r| r.fingerprint == p.fingerprint);
            if !current || layout.phase() != RunPhase::Done {
                missing += 1;
                continue;
            }
            let summary = layout
                .read_summary()?
                .ok_or_else(|| SweepError::Invalid(format!("{}: no summary", layout.summary().display())))?;
            let Some(v) = sel.metric.value(&summary) else {
                bail!(
                    "{}: summary.json has no {} (was it run with data.protocol = \"val\"?)",
                    layout.root().display(),
                    sel.metric.field()
                );
            };
            candidates.push((*p, v));
        }
        if missing > 0 {
            waiting.push(Waiting {
                name: final_name,
                why: format!("{missing} of {} search runs not done", members.len()),
            });
            continue;
        }
        let (best, value) = candidates.iter().fold(candidates[0], |b, c| if c.1 > b.1 { *c } else { b });
        let spec = grid::final_run(&best.spec, sel.final_protocol);
        chosen.insert(spec.name.clone(), Chosen::of(&key, sel, best, value, &candidates));
        finals.push(spec);
    }
    Ok(Selection { finals: prepare(sweep, grid_name, extra, &finals)?, waiting, chosen })
}
