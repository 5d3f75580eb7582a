//! A sweep command from request to runs: resolve the grid and benchmark, expand and check
//! every run (writing nothing), then either describe the plan (`--dry-run`) or record it and
//! hand the runs to an executor (`execute`, [`PlannedSweep::execute`]).

mod execute;

use crate::config;
use crate::decide::{Action, decide};
use crate::dir::{Plan, SweepDir, SweepRecord, read_json};
use crate::error::{Result, SweepError, bail};
use crate::grid::Grid;
use crate::grid::Stage;
use crate::halving::{self, Halving};
use crate::prepare::{Prepared, prepare};
use crate::select::{Selection, select};
use crate::slurm::{self, SlurmOptions};
use mlae_data::Benchmark;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How a search grid searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchMode {
    /// Every setting trains the whole schedule (appendix A.2's protocol).
    #[default]
    Full,
    /// Successive halving ([`crate::halving`]): short budgets first, the best third goes on.
    Halving,
}

/// Where the runs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executor {
    /// This machine: `jobs` at a time, spread over `devices`.
    Local,
    /// A Slurm job array (one array index per run).
    Slurm,
}

/// What a sweep command asks for; paths are absolute.
#[derive(Debug, Clone)]
pub struct SweepRequest {
    /// The project root: grids are looked up in `configs/grids`, runs start here.
    pub root: PathBuf,
    pub benchmark: String,
    /// A grid name under `configs/grids` or a path to a grid file.
    pub grid: String,
    /// Only these tasks (empty: every task of the benchmark but the demo's opt-in ones).
    pub tasks: Vec<String>,
    /// Seeds (empty: the grid's for the benchmark).
    pub seeds: Vec<u64>,
    /// Only these variants of the grid (empty: every one): part of a grid, such as one method
    /// on more tasks, without running the others again.
    pub variants: Vec<String>,
    /// Sets `data.root` for every run.
    pub data_root: Option<PathBuf>,
    /// Sets `model.checkpoint` for every run.
    pub checkpoint: Option<PathBuf>,
    /// `key=value` overrides for every run.
    pub set: Vec<String>,
    /// The sweep directory (default: `runs/sweeps/<benchmark>-<grid>`).
    pub out: Option<PathBuf>,
    pub executor: Executor,
    /// Local executor: runs at once (default: one per device, else 1) and GPUs.
    pub jobs: Option<usize>,
    pub devices: Vec<String>,
    /// Slurm executor options; `cli` is what the script runs (also shown by a dry run).
    pub slurm: SlurmOptions,
    /// Search grids only: the full grid or successive halving.
    pub search: SearchMode,
}

/// A checked plan: every run's config resolved, validated and fingerprinted.
#[derive(Debug)]
pub struct PlannedSweep {
    req: SweepRequest,
    pub sweep: SweepDir,
    pub record: SweepRecord,
    grid: Grid,
    grid_name: String,
    bench: Benchmark,
    tasks: Vec<String>,
    seeds: Vec<u64>,
    extra: Vec<(String, toml::Value)>,
    pub prepared: Vec<Prepared>,
    pub selection: Option<Selection>,
    /// `--search halving`: what is decided and what is due now.
    pub halving: Option<Halving>,
}

/// Resolves and checks a request without writing anything. A run whose config would not
/// train (an unknown key, `train.lr = -1`, a bad adapter) fails here, naming the run and key.
pub fn plan(req: SweepRequest) -> Result<PlannedSweep> {
    let sweepable: Vec<&str> = Benchmark::with_manifest().into_iter().map(|b| b.name()).collect();
    let bench = match req.benchmark.parse::<Benchmark>() {
        Ok(b) if sweepable.contains(&b.name()) => b,
        _ => bail!("--benchmark {}: expected one of {}", req.benchmark, sweepable.join(", ")),
    };
    let grid_path = grid_path(&req.root, &req.grid)?;
    let grid = Grid::load(&grid_path)?;
    let grid_name = grid_path.file_stem().and_then(|s| s.to_str()).unwrap_or("grid").to_string();
    let known = bench.task_names()?;
    // Opt-in tasks (the demo's generated ones) run only when --tasks names them.
    let tasks = if req.tasks.is_empty() { bench.default_tasks()? } else { req.tasks.clone() };
    for t in &tasks {
        if !known.contains(t) {
            bail!("--tasks: `{t}` is not a {} task (known: {})", bench.name(), known.join(", "));
        }
    }
    let seeds = if req.seeds.is_empty() { grid.seeds_for(bench.name()) } else { req.seeds.clone() };
    let mut extra = Vec::new();
    for s in &req.set {
        let (k, v) = config::parse_override(s)?;
        if grid.axes.contains_key(&k) {
            bail!("--set {s}: `{k}` is an axis of grid {grid_name}; the sweep sets it per run");
        }
        extra.push((k, v));
    }
    if let Some(d) = &req.data_root {
        extra.push(("data.root".into(), toml::Value::String(d.display().to_string())));
    }
    if let Some(c) = &req.checkpoint {
        extra.push(("model.checkpoint".into(), toml::Value::String(c.display().to_string())));
    }
    let root = match &req.out {
        Some(o) => o.clone(),
        None => req.root.join("runs/sweeps").join(format!("{}-{grid_name}", bench.name())),
    };
    let sweep = SweepDir { root };
    let record = SweepRecord {
        grid: grid_name.clone(),
        grid_path: grid_path.clone(),
        benchmark: bench.name().into(),
        set: req.set.clone(),
        data_root: req.data_root.clone(),
        checkpoint: req.checkpoint.clone(),
    };
    let old_record = read_json::<SweepRecord>(&sweep.record())?;
    if let Some(old) = &old_record
        && (old.grid != record.grid || old.benchmark != record.benchmark)
    {
        bail!(
            "{} holds the {} sweep on {}; pass --out DIR for a {} sweep on {}",
            sweep.root.display(),
            old.grid,
            old.benchmark,
            record.grid,
            record.benchmark
        );
    }
    if req.executor == Executor::Slurm {
        req.slurm.check()?;
        if !req.devices.is_empty() || req.jobs.is_some() {
            bail!("--devices and --jobs are for the local executor; with Slurm use --gres and --array-limit");
        }
    }
    let mut specs = grid.expand(&req.root, bench.name(), &tasks, &seeds)?;
    if !req.variants.is_empty() {
        let known: Vec<String> = grid.variants().into_iter().map(|v| v.name).collect();
        for v in &req.variants {
            if !known.contains(v) {
                bail!("--variants: grid {grid_name} has no variant `{v}` (it has {})", known.join(", "));
            }
        }
        specs.retain(|s| req.variants.contains(&s.variant));
    }
    let prepared = prepare(&sweep, &grid_name, &extra, &specs)?;
    let (selection, halving) = match (&grid.select, req.search) {
        (Some(sel), SearchMode::Full) => (Some(select(&sweep, &grid_name, &extra, &prepared, sel)?), None),
        (Some(sel), SearchMode::Halving) => {
            let h = halving::progress(&sweep, &grid_name, &extra, &prepared, sel)?;
            (Some(h.selection.clone()), Some(h))
        }
        (None, SearchMode::Halving) => bail!(
            "--search halving: grid {grid_name} has no [select] section; halving ranks the settings of a              search grid (e.g. --grid demo-search)"
        ),
        (None, SearchMode::Full) => (None, None),
    };
    if let Some(old) = &old_record
        && !old.same_overrides(&record)
    {
        unchanged_runs_refused(&sweep, old, &record, &prepared, selection.as_ref())?;
    }
    Ok(PlannedSweep {
        req,
        sweep,
        record,
        grid,
        grid_name,
        bench,
        tasks,
        seeds,
        extra,
        prepared,
        selection,
        halving,
    })
}

impl PlannedSweep {
    fn finals(&self) -> Vec<Prepared> {
        self.selection.as_ref().map(|s| s.finals.clone()).unwrap_or_default()
    }

    /// What an executor gets now: every run of the grid (and the finals selected so far), or
    /// with halving the runs due at their rungs and the finals decided so far.
    fn to_run(&self) -> Vec<Prepared> {
        match &self.halving {
            Some(h) => h.due.iter().cloned().chain(self.finals()).collect(),
            None => self.prepared.iter().cloned().chain(self.finals()).collect(),
        }
    }

    /// Runs planned now: the grid's, plus final runs selected or waiting for their search.
    pub fn planned(&self) -> usize {
        self.prepared.len() + self.selection.as_ref().map_or(0, |s| s.finals.len() + s.waiting.len())
    }

    /// What `--dry-run` prints: the plan, each run's action, for Slurm the script, and a
    /// last line `runs: N`. Reads the sweep directory, writes nothing.
    pub fn dry_run(&self) -> Result<String> {
        let mut out = String::new();
        let short = |p: &Path| p.strip_prefix(&self.req.root).unwrap_or(p).display().to_string();
        let _ = writeln!(
            out,
            "grid {} ({}): {}",
            self.grid_name,
            short(&self.record.grid_path),
            self.grid.description
        );
        let _ = writeln!(
            out,
            "benchmark {}: {} tasks, seeds {:?}, sweep directory {}",
            self.bench.name(),
            self.tasks.len(),
            self.seeds,
            self.sweep.root.display()
        );
        let queued = slurm::active(&slurm::queue_states(&self.sweep));
        let mut todo = Vec::new();
        let due: BTreeMap<&str, Option<u64>> = self
            .halving
            .iter()
            .flat_map(|h| h.due.iter().map(|p| (p.spec.name.as_str(), p.stop_after_epoch)))
            .collect();
        for p in self.prepared.iter().chain(&self.finals()) {
            let action = decide(&self.sweep, p, &queued, true)?;
            let ext: Vec<String> = p.spec.extends.iter().map(|e| short(e)).collect();
            let rung = match (self.halving.is_some(), due.get(p.spec.name.as_str())) {
                (true, Some(Some(k))) => format!(", due: train to epoch {k}"),
                (true, Some(None)) => ", due: train to the end".into(),
                (true, None) if p.spec.stage == Stage::Search && action != Action::Skip => ", not due".into(),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {}  {}  [{}] ({}{rung})",
                p.spec.name,
                p.summary,
                ext.join(" + "),
                action.label()
            );
        }
        for p in self.to_run() {
            let action = decide(&self.sweep, &p, &queued, true)?;
            if matches!(action, Action::Resume | Action::Fresh { .. }) {
                todo.push((p, action));
            }
        }
        if let Some(h) = &self.halving {
            let _ = writeln!(out, "{}", h.describe());
        }
        if let Some(s) = &self.selection {
            for w in &s.waiting {
                let _ =
                    writeln!(out, "  {}  (the setting with the best validation accuracy; {})", w.name, w.why);
            }
            let _ = writeln!(
                out,
                "{} search runs + {} final runs",
                self.prepared.len(),
                s.finals.len() + s.waiting.len()
            );
        }
        if self.req.executor == Executor::Slurm {
            let _ = writeln!(out, "--- sbatch script ({} runs not done) ---", todo.len());
            out.push_str(&slurm::script(&self.sweep, &todo, &self.req.slurm));
            let _ = writeln!(out, "--- end of script ---");
        }
        let _ = writeln!(out, "runs: {}", self.planned());
        Ok(out)
    }
}

/// A command whose overrides differ from the directory's must plan again every run planned
/// there (each is then moved aside and rerun under the new overrides): a run it leaves would
/// keep the old overrides beside runs with the new ones, while `sweep.json`, which the report
/// names the directory by, holds one set.
fn unchanged_runs_refused(
    sweep: &SweepDir,
    old: &SweepRecord,
    new: &SweepRecord,
    prepared: &[Prepared],
    selection: Option<&Selection>,
) -> Result<()> {
    let Some(planned) = read_json::<Plan>(&sweep.plan())? else { return Ok(()) };
    let mut now: BTreeSet<&str> = prepared.iter().map(|p| p.spec.name.as_str()).collect();
    if let Some(s) = selection {
        now.extend(s.finals.iter().map(|p| p.spec.name.as_str()));
        now.extend(s.waiting.iter().map(|w| w.name.as_str()));
    }
    let left: Vec<&String> = planned.runs.keys().filter(|r| !now.contains(r.as_str())).collect();
    if let Some(first) = left.first() {
        bail!(
            "{} holds runs made with {}; this command has {} and leaves {} of them as they are \
             ({first}{}), so one directory would mix two experiments: pass --out DIR for this \
             one, or plan those runs too (--tasks, --seeds, --variants) to rerun them all",
            sweep.root.display(),
            old.overrides_text(),
            new.overrides_text(),
            left.len(),
            if left.len() > 1 { ", ..." } else { "" }
        );
    }
    Ok(())
}

/// A grid by name (`configs/grids/<name>.toml`) or by path.
fn grid_path(root: &Path, grid: &str) -> Result<PathBuf> {
    let grids = root.join("configs/grids");
    if !grid.contains('/') && !grid.ends_with(".toml") {
        let named = grids.join(format!("{grid}.toml"));
        if named.is_file() {
            return Ok(named);
        }
        let mut known: Vec<String> = std::fs::read_dir(&grids)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.path().file_stem().and_then(|s| s.to_str()).map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        known.sort();
        bail!("--grid {grid}: not one of {} (or give a path to a grid file)", known.join(", "));
    }
    let path = PathBuf::from(grid);
    if !path.is_file() {
        return Err(SweepError::Invalid(format!("--grid {grid}: no such file")));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
    }

    fn request(benchmark: &str, set: &[&str]) -> SweepRequest {
        let root = root();
        SweepRequest {
            root: root.clone(),
            benchmark: benchmark.into(),
            grid: "paper".into(),
            tasks: Vec::new(),
            seeds: Vec::new(),
            variants: Vec::new(),
            data_root: None,
            checkpoint: None,
            set: set.iter().map(|s| s.to_string()).collect(),
            out: Some(std::env::temp_dir().join("mlae-sweep-plan-test-never-written")),
            executor: Executor::Local,
            jobs: None,
            devices: Vec::new(),
            slurm: SlurmOptions { workdir: root, ..Default::default() },
            search: SearchMode::Full,
        }
    }

    #[test]
    fn every_task_of_every_sweepable_benchmark_has_a_config() {
        for bench in Benchmark::with_manifest() {
            let tasks = bench.task_names().unwrap();
            assert!(!tasks.is_empty(), "{bench:?}");
            for t in tasks {
                let path = root().join(format!("configs/{}/{t}.toml", bench.name()));
                assert!(path.is_file(), "{} is missing", path.display());
            }
        }
    }

    #[test]
    fn the_demo_paper_grid_plans_one_run_per_demo_task_in_manifest_order() {
        let planned = plan(request("demo", &[])).unwrap();
        let runs: Vec<(&str, &str)> =
            planned.prepared.iter().map(|p| (p.spec.task.as_str(), p.spec.name.as_str())).collect();
        assert_eq!(
            runs,
            [
                ("mnist5k", "mnist5k.mlae.s0"),
                ("digits", "digits.mlae.s0"),
                ("fashion_mnist", "fashion_mnist.mlae.s0")
            ]
        );
        let fashion = &planned.prepared[2];
        assert!(fashion.spec.extends.iter().any(|p| p.ends_with("configs/demo/fashion_mnist.toml")));
        assert!(fashion.text.contains("fashion_mnist"), "{}", fashion.text);
    }

    #[test]
    fn the_demos_opt_in_tasks_are_planned_only_when_named() {
        let named =
            SweepRequest { tasks: vec!["count".into(), "dsprites_ori".into()], ..request("demo", &[]) };
        let planned = plan(named).unwrap();
        let runs: Vec<&str> = planned.prepared.iter().map(|p| p.spec.name.as_str()).collect();
        assert_eq!(runs, ["count.mlae.s0", "dsprites_ori.mlae.s0"]);
        assert!(planned.prepared[0].spec.extends.iter().any(|p| p.ends_with("configs/demo/count.toml")));
    }

    #[test]
    fn variants_pick_part_of_a_grid_and_an_unknown_one_is_named() {
        let part = SweepRequest {
            grid: "demo-methods".into(),
            tasks: vec!["mnist5k".into()],
            variants: vec!["mlae".into(), "lora".into()],
            ..request("demo", &[])
        };
        let planned = plan(part).unwrap();
        let mut runs: Vec<&str> = planned.prepared.iter().map(|p| p.spec.name.as_str()).collect();
        runs.sort_unstable();
        let want = ["lora.s0", "lora.s1", "lora.s2", "mlae.s0", "mlae.s1", "mlae.s2"]
            .map(|r| format!("mnist5k.{r}"));
        assert_eq!(runs, want);
        let unknown = SweepRequest {
            grid: "demo-methods".into(),
            variants: vec!["lorra".into()],
            ..request("demo", &[])
        };
        let err = plan(unknown).unwrap_err().to_string();
        assert!(err.contains("no variant `lorra`"), "{err}");
        assert!(
            err.ends_with("(it has linear, full, lora, lora-dropout, dmlora, dora, mlae)"),
            "each variant once, in the grid's order: {err}"
        );
    }

    #[test]
    fn a_plan_line_shows_every_key_its_variant_or_set_overrides() {
        let req = SweepRequest {
            grid: "demo-epochs".into(),
            tasks: vec!["mnist5k".into()],
            variants: vec!["lora".into(), "lora-lr2e-3".into()],
            seeds: vec![0],
            ..request("demo", &["train.threads=1"])
        };
        let planned = plan(req).unwrap();
        let line = |name: &str| {
            planned.prepared.iter().find(|p| p.spec.name == name).map(|p| p.summary.clone()).unwrap()
        };
        let (base, fast) = (line("mnist5k.lora.s0"), line("mnist5k.lora-lr2e-3.s0"));
        assert!(fast.contains(" train.lr=0.002"), "{fast}");
        assert!(!base.contains("train.lr"), "the task config's lr is not an override: {base}");
        for l in [&base, &fast] {
            assert!(l.starts_with("adapter.kind=lora ") && l.contains(" train.threads=1"), "{l}");
            assert!(!l.contains("data.task") && !l.contains("train.seed"), "the name says them: {l}");
        }
        assert!(planned.dry_run().unwrap().contains(&fast));
    }

    #[test]
    fn other_overrides_must_plan_every_run_of_the_directory_again() {
        let tmp = tempfile::tempdir().unwrap();
        let at = |set: &[&str], tasks: &[&str]| SweepRequest {
            tasks: tasks.iter().map(|t| t.to_string()).collect(),
            out: Some(tmp.path().to_path_buf()),
            ..request("demo", set)
        };
        // A directory whose mnist5k runs were made with train.epochs=2.
        let first = plan(at(&["train.epochs=2"], &["mnist5k"])).unwrap();
        let mut runs = Plan::default();
        runs.add(first.prepared.iter().map(|p| &p.spec));
        crate::dir::write_json(&first.sweep.record(), &first.record).unwrap();
        crate::dir::write_json(&first.sweep.plan(), &runs).unwrap();
        // The same overrides (in any order) add tasks; other overrides that plan every run
        // again rerun them all.
        plan(at(&["train.epochs=2"], &["digits"])).unwrap();
        plan(at(&["train.epochs=3"], &["mnist5k", "digits"])).unwrap();
        // Other overrides that leave a run as it is would mix two experiments.
        let err = plan(at(&["train.epochs=3"], &["digits"])).unwrap_err().to_string();
        let run = runs.runs.keys().next().unwrap();
        assert!(err.contains("holds runs made with --set train.epochs=2"), "{err}");
        assert!(err.contains("this command has --set train.epochs=3"), "{err}");
        assert!(err.contains(run.as_str()) && err.contains("--out DIR"), "{err}");
        let err = plan(at(&[], &["digits"])).unwrap_err().to_string();
        assert!(err.contains("this command has no overrides"), "{err}");
    }

    #[test]
    fn the_plan_checks_every_runs_whole_config_and_writes_nothing() {
        let planned = plan(request("demo", &["train.epochs=2"])).unwrap();
        assert_eq!(planned.planned(), planned.prepared.len());
        assert!(planned.dry_run().unwrap().ends_with(&format!("runs: {}\n", planned.planned())));
        let err = plan(request("demo", &["train.lr=-1"])).unwrap_err().to_string();
        assert!(err.starts_with("run ") && err.contains("train.lr: must be positive"), "{err}");
        let err = plan(request("demo", &["train.warmup_epochs=-2"])).unwrap_err().to_string();
        assert!(err.contains("train.warmup_epochs"), "{err}");
        let err = plan(request("imagenet", &[])).unwrap_err().to_string();
        assert!(err.contains("vtab, fgvc, demo"), "{err}");
        let err = plan(request("list", &[])).unwrap_err().to_string();
        assert!(err.contains("--benchmark list"), "{err}");
        assert!(!request("demo", &[]).out.unwrap().exists(), "planning writes nothing");
    }
}
