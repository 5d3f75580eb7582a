//! Running a checked plan: record it in the sweep directory, then hand the runs to Slurm or
//! run them on this machine (with successive halving, rung by rung), selecting the final runs
//! once their search runs are done.

use super::{Executor, PlannedSweep};
use crate::decide::{Action, decide};
use crate::dir::{Plan, read_json, write_json};
use crate::error::{Result, bail, io_err};
use crate::halving;
use crate::local::{self, LocalOptions};
use crate::prepare::write_configs;
use crate::select::select;
use crate::slurm::{self, SlurmOptions};
use std::fmt::Write as _;
use std::path::PathBuf;

impl PlannedSweep {
    /// Whether the executor can run here (Slurm needs `sbatch`), before anything is built.
    pub fn check_executor(&self) -> Result<()> {
        if self.req.executor == Executor::Slurm && !slurm::available() {
            bail!("sbatch is not on PATH: --executor slurm needs a Slurm client");
        }
        Ok(())
    }

    /// Records the plan and runs it with `cli` (the mlae-cli binary). Returns what to tell
    /// the user once the command is done (Slurm: the job; local: nothing, the runs ran).
    pub fn execute(self, cli: PathBuf) -> Result<String> {
        self.check_executor()?;
        let sweep = &self.sweep;
        std::fs::create_dir_all(&sweep.root).map_err(io_err(&sweep.root))?;
        write_json(&sweep.record(), &self.record)?;
        let finals = self.finals();
        let mut plan = read_json::<Plan>(&sweep.plan())?.unwrap_or_default();
        plan.add(self.prepared.iter().chain(&finals).map(|p| &p.spec));
        write_json(&sweep.plan(), &plan)?;
        write_configs(&self.prepared)?;
        write_configs(&finals)?;
        if let Some(s) = &self.selection {
            s.save(sweep)?;
        }
        if let Some(h) = &self.halving {
            h.save(sweep)?;
        }
        match (self.req.executor, self.halving.is_some()) {
            (Executor::Slurm, _) => self.submit(cli),
            (Executor::Local, false) => self.run_local(cli, plan),
            (Executor::Local, true) => self.run_local_halving(cli, plan),
        }
    }

    fn submit(&self, cli: PathBuf) -> Result<String> {
        let sweep = &self.sweep;
        let opts = SlurmOptions { cli, ..self.req.slurm.clone() };
        let queued = slurm::active(&slurm::queue_states(sweep));
        let mut todo = Vec::new();
        let (mut done, mut busy) = (0, 0);
        for p in self.to_run() {
            match decide(sweep, &p, &queued, false)? {
                Action::Skip => done += 1,
                Action::Busy(_) => busy += 1,
                a => todo.push((p, a)),
            }
        }
        tracing::info!("sweep: {} to submit, {done} done, {busy} still with Slurm", todo.len());
        let mut out = String::new();
        if !todo.is_empty() {
            let job = slurm::submit(sweep, &todo, &opts)?;
            let _ = writeln!(out, "submitted Slurm job array {job}: {} runs", todo.len());
        }
        if let Some(h) = &self.halving {
            let _ = writeln!(out, "{}", h.describe());
        }
        if let Some(s) = &self.selection
            && !s.waiting.is_empty()
        {
            let what = if self.halving.is_some() { "their next halving rung" } else { "their search runs" };
            let _ = writeln!(
                out,
                "{} final runs wait for {what}; run this command again once those finish",
                s.waiting.len()
            );
        }
        let _ = writeln!(out, "follow it with: cargo xtask sweep --status {}", sweep.root.display());
        Ok(out)
    }

    fn run_local(&self, cli: PathBuf, mut plan: Plan) -> Result<String> {
        let sweep = &self.sweep;
        let opts = LocalOptions {
            cli,
            workdir: self.req.root.clone(),
            jobs: self.req.jobs.unwrap_or(self.req.devices.len().max(1)),
            devices: self.req.devices.clone(),
        };
        let mut outcome = local::run_local(sweep, &self.prepared, &opts)?;
        if let (Some(sel), false) = (&self.grid.select, outcome.interrupted) {
            tracing::info!("\n==> final runs: per task, the setting with the best validation accuracy");
            let s = select(sweep, &self.grid_name, &self.extra, &self.prepared, sel)?;
            plan.add(s.finals.iter().map(|p| &p.spec));
            write_json(&sweep.plan(), &plan)?;
            write_configs(&s.finals)?;
            s.save(sweep)?;
            for w in &s.waiting {
                tracing::info!("no final run for {}: {}", w.name, w.why);
            }
            outcome.absorb(local::run_local(sweep, &s.finals, &opts)?);
        }
        outcome.into_result(sweep)?;
        Ok(String::new())
    }

    /// `--search halving` on this machine: runs the rungs due, decides, and goes on until every
    /// group has its last rung decided, then runs the finals. Each round is what a new call of
    /// the command would do, so an interrupted halving sweep resumes where it stopped.
    fn run_local_halving(&self, cli: PathBuf, mut plan: Plan) -> Result<String> {
        let sweep = &self.sweep;
        let sel = self.grid.select.as_ref().expect("halving is refused for grids without [select]");
        let opts = LocalOptions {
            cli,
            workdir: self.req.root.clone(),
            jobs: self.req.jobs.unwrap_or(self.req.devices.len().max(1)),
            devices: self.req.devices.clone(),
        };
        let mut outcome = local::Outcome::default();
        let mut last_due: Vec<(String, Option<u64>)> = Vec::new();
        loop {
            let h = halving::progress(sweep, &self.grid_name, &self.extra, &self.prepared, sel)?;
            h.save(sweep)?;
            plan.add(h.selection.finals.iter().map(|p| &p.spec));
            write_json(&sweep.plan(), &plan)?;
            write_configs(&h.selection.finals)?;
            h.selection.save(sweep)?;
            let due: Vec<(String, Option<u64>)> =
                h.due.iter().map(|p| (p.spec.name.clone(), p.stop_after_epoch)).collect();
            if due.is_empty() {
                tracing::info!("{}", h.describe());
                tracing::info!("\n==> final runs: per task, the setting that won the last rung");
                outcome.absorb(local::run_local(sweep, &h.selection.finals, &opts)?);
                break;
            }
            if due == last_due {
                // nothing moved since the last round (runs busy elsewhere): leave it to them
                tracing::info!("halving: {} runs are due but none could run here now", due.len());
                break;
            }
            tracing::info!("\n==> {}", h.describe());
            let round = local::run_local(sweep, &h.due, &opts)?;
            let stop = round.interrupted || !round.failed.is_empty();
            outcome.absorb(round);
            if stop {
                break;
            }
            last_due = due;
        }
        outcome.into_result(sweep)?;
        Ok(String::new())
    }
}
