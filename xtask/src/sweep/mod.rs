//! `cargo xtask sweep`: expand a grid into `mlae-cli finetune` runs, run them locally or on
//! Slurm, resume after a kill, and never mix results from a changed config.
//!
//! A sweep directory holds:
//! ```text
//! sweep.json          what the sweep is (grid, benchmark, the last command's overrides)
//! plan.json           every run planned so far: task, variant, seed, stage, axes point
//! selection.json      search grids: the setting selected per task on validation accuracy
//! configs/<run>.toml  the generated config of each run (extends the grid's files)
//! runs/<run>/         each run's directory, written by mlae-cli
//! logs/<run>.log      each run's output (every attempt appended)
//! state/<run>.json    the run's fingerprint, attempts, last exit, process or Slurm task
//! slurm/              sbatch scripts and jobs.json (Slurm executor)
//! ```
//! A run's fingerprint is the sha256 of its merged config ([`config::fingerprint`]). A
//! finished run with the same fingerprint is skipped; an interrupted one resumes from its
//! checkpoint; one whose fingerprint changed is moved aside (`runs/<run>.stale-N`) and
//! started again.

pub mod bench;
pub mod config;
pub mod exec;
pub mod grid;
pub mod slurm;
pub mod status;

use crate::util::{self, step};
use anyhow::{Context, Result, bail};
use bench::Benchmark;
use clap::{Args, ValueEnum};
use exec::{Action, RunRecord};
use grid::{Grid, RunSpec, Select, Stage};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Executor {
    /// Run on this machine: --jobs at a time, spread over --devices.
    Local,
    /// Submit a Slurm job array (one array index per run).
    Slurm,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// vtab, fgvc or demo.
    #[arg(long, required_unless_present = "status")]
    pub benchmark: Option<String>,
    /// A grid under configs/grids (paper, search, ablation-masking, baselines) or a path to one.
    #[arg(long, default_value = "paper")]
    pub grid: String,
    /// Only these tasks, comma-separated (default: every task of the benchmark).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Seeds, comma-separated (default: the grid's for the benchmark).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Benchmark root: sets data.root for every run.
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Pretrained backbone: sets model.checkpoint for every run.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Override a config key for every run, e.g. --set train.epochs=2 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Runs at once (default: one per device in --devices, else 1).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// GPUs to spread runs over, e.g. 0,1 (each run sees one through CUDA_VISIBLE_DEVICES).
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Print the plan (and for Slurm the script) without running or writing anything; the
    /// last line is `runs: N`.
    #[arg(long)]
    pub dry_run: bool,
    /// Sweep directory (default: runs/sweeps/<benchmark>-<grid>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The mlae-cli binary (default: target/release/mlae-cli, built first).
    #[arg(long, value_name = "PATH")]
    pub cli: Option<PathBuf>,
    /// Show the state of every run of a sweep directory, and exit.
    #[arg(long, value_name = "DIR")]
    pub status: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "local")]
    pub executor: Executor,
    /// Slurm partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm generic resources per run, e.g. gpu:1.
    #[arg(long)]
    pub gres: Option<String>,
    /// Slurm time limit per run, [D-]HH:MM:SS.
    #[arg(long)]
    pub time: Option<String>,
    /// Slurm: at most this many array tasks at once.
    #[arg(long)]
    pub array_limit: Option<usize>,
}

/// What the sweep is, so that `--status`, reports and resubmissions know it without the
/// original command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRecord {
    pub grid: String,
    pub grid_path: PathBuf,
    pub benchmark: String,
    /// The last command's `--set`, `--data-root`, `--checkpoint` (informational: each run's
    /// generated config holds what it used).
    pub set: Vec<String>,
    pub data_root: Option<PathBuf>,
    pub checkpoint: Option<PathBuf>,
}

/// Every run planned in this sweep directory so far (runs of earlier commands with other
/// `--tasks` or `--seeds` stay).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub runs: BTreeMap<String, PlannedRun>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRun {
    pub task: String,
    pub variant: String,
    pub seed: u64,
    pub stage: Stage,
    /// The axes point (key, value as written), for search and final runs.
    pub point: Vec<(String, String)>,
}

impl Plan {
    pub fn read(sweep: &SweepDir) -> Result<Plan> {
        util::read_json(&sweep.plan())?
            .with_context(|| format!("{} is not a sweep directory (no plan.json)", sweep.root.display()))
    }

    fn add(&mut self, runs: &[Prepared]) {
        for p in runs {
            let s = &p.spec;
            let point = s.point.iter().map(|(k, v)| (k.clone(), grid::value_text(v))).collect();
            let planned = PlannedRun {
                task: s.task.clone(),
                variant: s.variant.clone(),
                seed: s.seed,
                stage: s.stage,
                point,
            };
            self.runs.insert(s.name.clone(), planned);
        }
    }
}

/// A sweep directory and its paths.
#[derive(Debug, Clone)]
pub struct SweepDir {
    pub root: PathBuf,
}

impl SweepDir {
    pub fn config(&self, run: &str) -> PathBuf {
        self.root.join("configs").join(format!("{run}.toml"))
    }
    pub fn run_dir(&self, run: &str) -> PathBuf {
        self.root.join("runs").join(run)
    }
    pub fn log(&self, run: &str) -> PathBuf {
        self.root.join("logs").join(format!("{run}.log"))
    }
    pub fn state(&self, run: &str) -> PathBuf {
        self.root.join("state").join(format!("{run}.json"))
    }
    pub fn record(&self) -> PathBuf {
        self.root.join("sweep.json")
    }
    pub fn plan(&self) -> PathBuf {
        self.root.join("plan.json")
    }
    pub fn selection(&self) -> PathBuf {
        self.root.join("selection.json")
    }
    pub fn read_record(&self) -> Result<SweepRecord> {
        util::read_json(&self.record())?
            .with_context(|| format!("{} is not a sweep directory (no sweep.json)", self.root.display()))
    }
}

/// A run ready to launch: its spec, generated config and fingerprint.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub spec: RunSpec,
    pub config: PathBuf,
    pub text: String,
    pub fingerprint: String,
    /// The settings a reader checks first (method, p, init, protocol, epochs).
    pub summary: String,
}

/// Keys shown for each run of a plan, when the merged config has them and the method uses
/// them (masks and coefficients are MLAE's; linear probe and full fine-tuning have no dropout).
const SHOWN: &[&str] = &[
    "adapter.kind",
    "adapter.dropout",
    "adapter.coeff_init",
    "adapter.mask.strategy",
    "adapter.mask.pattern",
    "data.protocol",
    "train.epochs",
];

/// Builds each run's generated config, checks it, and fingerprints it. Writes nothing.
pub fn prepare(
    sweep: &SweepDir,
    grid_name: &str,
    extra: &[(String, toml::Value)],
    specs: &[RunSpec],
) -> Result<Vec<Prepared>> {
    let runs_dir = sweep.root.join("runs");
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let table = config::generated(spec, extra, &runs_dir)?;
        let path = sweep.config(&spec.name);
        let text = config::render(&table, &format!("grid {grid_name}, run {}", spec.name))?;
        let merged = config::merged(&table, &path)?;
        config::check_merged(&merged, &spec.name)?;
        let kind = config::get_path(&merged, "adapter.kind").and_then(|v| v.as_str()).unwrap_or("mlae");
        let summary = SHOWN
            .iter()
            .filter(|k| kind == "mlae" || !(k.starts_with("adapter.mask") || **k == "adapter.coeff_init"))
            .filter(|k| kind != "linear-probe" && kind != "full" || !k.starts_with("adapter.d"))
            .filter_map(|k| config::get_path(&merged, k).map(|v| format!("{k}={}", grid::value_text(v))))
            .collect::<Vec<_>>()
            .join(" ");
        out.push(Prepared {
            spec: spec.clone(),
            config: path,
            text,
            fingerprint: config::fingerprint(&merged),
            summary,
        });
    }
    Ok(out)
}

fn write_configs(runs: &[Prepared]) -> Result<()> {
    for p in runs {
        if std::fs::read_to_string(&p.config).ok().as_deref() != Some(p.text.as_str()) {
            util::write_atomic(&p.config, p.text.as_bytes())?;
        }
    }
    Ok(())
}

/// The fingerprint of a run's generated config as the files it extends read now.
pub fn current_fingerprint(sweep: &SweepDir, run: &str) -> Result<String> {
    let path = sweep.config(run);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
    Ok(config::fingerprint(&config::merged(&table, &path)?))
}

pub fn run(args: &SweepArgs) -> Result<()> {
    if let Some(dir) = &args.status {
        return status::print(&SweepDir { root: util::absolute(dir) });
    }
    let root = util::root();
    let bench = Benchmark::by_name(args.benchmark.as_deref().unwrap_or_default())?;
    let grid_path = grid_path(&root, &args.grid)?;
    let grid = Grid::load(&grid_path)?;
    let grid_name = grid_path.file_stem().and_then(|s| s.to_str()).unwrap_or("grid").to_string();
    let known = bench.tasks();
    let tasks = if args.tasks.is_empty() { known.clone() } else { args.tasks.clone() };
    for t in &tasks {
        if !known.contains(t) {
            bail!("--tasks: `{t}` is not a {} task (known: {})", bench.name, known.join(", "));
        }
    }
    let seeds = if args.seeds.is_empty() { grid.seeds_for(bench.name) } else { args.seeds.clone() };
    let mut extra = Vec::new();
    for s in &args.set {
        let (k, v) = config::parse_override(s)?;
        if grid.axes.contains_key(&k) {
            bail!("--set {s}: `{k}` is an axis of grid {grid_name}; the sweep sets it per run");
        }
        extra.push((k, v));
    }
    let data_root = args.data_root.as_deref().map(util::absolute);
    let checkpoint = args.checkpoint.as_deref().map(util::absolute);
    if let Some(d) = &data_root {
        extra.push(("data.root".into(), toml::Value::String(d.display().to_string())));
    }
    if let Some(c) = &checkpoint {
        extra.push(("model.checkpoint".into(), toml::Value::String(c.display().to_string())));
    }
    let out = match &args.out {
        Some(o) => util::absolute(o),
        None => root.join("runs/sweeps").join(format!("{}-{grid_name}", bench.name)),
    };
    let sweep = SweepDir { root: out };
    let record = SweepRecord {
        grid: grid_name.clone(),
        grid_path: grid_path.clone(),
        benchmark: bench.name.into(),
        set: args.set.clone(),
        data_root,
        checkpoint,
    };
    if let Some(old) = util::read_json::<SweepRecord>(&sweep.record())?
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
    let slurm_opts = slurm::SlurmOptions {
        cli: args.cli.as_deref().map(util::absolute).unwrap_or_else(|| root.join("target/release/mlae-cli")),
        partition: args.partition.clone(),
        gres: args.gres.clone(),
        time: args.time.clone(),
        array_limit: args.array_limit,
    };
    if args.executor == Executor::Slurm {
        slurm_opts.check()?;
        if !args.devices.is_empty() || args.jobs.is_some() {
            bail!("--devices and --jobs are for the local executor; with Slurm use --gres and --array-limit");
        }
    }

    let specs = grid.expand(&root, bench.name, &tasks, &seeds)?;
    let prepared = prepare(&sweep, &grid_name, &extra, &specs)?;
    let selection = match &grid.select {
        Some(sel) => Some(select(&sweep, &grid_name, &extra, &prepared, sel)?),
        None => None,
    };
    let finals: Vec<Prepared> = selection.as_ref().map(|s| s.finals.clone()).unwrap_or_default();
    let planned = prepared.len() + selection.as_ref().map_or(0, |s| s.finals.len() + s.waiting.len());

    if args.dry_run {
        println!("grid {grid_name} ({}): {}", short_path(&grid_path), grid.description);
        println!(
            "benchmark {}: {} tasks, seeds {seeds:?}, sweep directory {}",
            bench.name,
            tasks.len(),
            sweep.root.display()
        );
        let queued = slurm::active(&slurm::queue_states(&sweep));
        let mut todo = Vec::new();
        for p in prepared.iter().chain(&finals) {
            let action = decide_quietly(&sweep, p, &queued)?;
            let ext: Vec<String> = p.spec.extends.iter().map(|e| short_path(e)).collect();
            println!("  {}  {}  [{}] ({})", p.spec.name, p.summary, ext.join(" + "), action.label());
            if matches!(action, Action::Resume | Action::Fresh { .. }) {
                todo.push((p.clone(), action));
            }
        }
        if let Some(s) = &selection {
            for w in &s.waiting {
                println!("  {}  (the setting with the best validation accuracy; {})", w.name, w.why);
            }
            println!("{} search runs + {} final runs", prepared.len(), s.finals.len() + s.waiting.len());
        }
        if args.executor == Executor::Slurm {
            println!("--- sbatch script ({} runs not done) ---", todo.len());
            print!("{}", slurm::script(&sweep, &todo, &slurm_opts));
            println!("--- end of script ---");
        }
        println!("runs: {planned}");
        return Ok(());
    }

    if args.executor == Executor::Slurm && !slurm::available() {
        bail!("sbatch is not on PATH: --executor slurm needs a Slurm client");
    }
    let cli = resolve_cli(args)?;
    std::fs::create_dir_all(&sweep.root)
        .with_context(|| format!("cannot create {}", sweep.root.display()))?;
    util::write_json(&sweep.record(), &record)?;
    let mut plan = util::read_json::<Plan>(&sweep.plan())?.unwrap_or_default();
    plan.add(&prepared);
    plan.add(&finals);
    util::write_json(&sweep.plan(), &plan)?;
    write_configs(&prepared)?;
    write_configs(&finals)?;
    if let Some(s) = &selection {
        s.save(&sweep)?;
    }

    match args.executor {
        Executor::Slurm => {
            let slurm_opts = slurm::SlurmOptions { cli, ..slurm_opts };
            let queued = slurm::active(&slurm::queue_states(&sweep));
            let mut todo = Vec::new();
            let (mut done, mut busy) = (0, 0);
            for p in prepared.iter().chain(&finals) {
                match exec::decide(&sweep, p, &queued, false)? {
                    Action::Skip => done += 1,
                    Action::Busy(_) => busy += 1,
                    a => todo.push((p.clone(), a)),
                }
            }
            eprintln!("sweep: {} to submit, {done} done, {busy} still with Slurm", todo.len());
            if !todo.is_empty() {
                let job = slurm::submit(&sweep, &todo, &slurm_opts)?;
                println!("submitted Slurm job array {job}: {} runs", todo.len());
            }
            if let Some(s) = &selection
                && !s.waiting.is_empty()
            {
                println!(
                    "{} final runs wait for their search runs; run this command again once those finish",
                    s.waiting.len()
                );
            }
            println!("follow it with: cargo xtask sweep --status {}", sweep.root.display());
            Ok(())
        }
        Executor::Local => {
            let opts = exec::LocalOptions {
                cli,
                jobs: args.jobs.unwrap_or(args.devices.len().max(1)),
                devices: args.devices.clone(),
            };
            let mut outcome = exec::run_local(&sweep, &prepared, &opts)?;
            if let (Some(sel), false) = (&grid.select, outcome.interrupted) {
                step("final runs: per task, the setting with the best validation accuracy");
                let s = select(&sweep, &grid_name, &extra, &prepared, sel)?;
                plan.add(&s.finals);
                util::write_json(&sweep.plan(), &plan)?;
                write_configs(&s.finals)?;
                s.save(&sweep)?;
                for w in &s.waiting {
                    eprintln!("no final run for {}: {}", w.name, w.why);
                }
                outcome.absorb(exec::run_local(&sweep, &s.finals, &opts)?);
            }
            outcome.into_result(&sweep)
        }
    }
}

/// `exec::decide` without moving anything (for printing a plan).
fn decide_quietly(sweep: &SweepDir, p: &Prepared, queued: &BTreeSet<String>) -> Result<Action> {
    exec::decide(sweep, p, queued, true)
}

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
    fn save(&self, sweep: &SweepDir) -> Result<()> {
        let mut all: BTreeMap<String, Chosen> = util::read_json(&sweep.selection())?.unwrap_or_default();
        all.extend(self.chosen.clone());
        util::write_json(&sweep.selection(), &all)
    }
}

/// For each (task, variant, seed): the search run with the highest validation accuracy (the
/// first in grid order on a tie), as a final run. A group is selected only when all its
/// search runs are done with their current config, so the choice cannot change later.
fn select(
    sweep: &SweepDir,
    grid_name: &str,
    extra: &[(String, toml::Value)],
    search: &[Prepared],
    sel: &Select,
) -> Result<Selection> {
    type Key = (String, String, u64);
    let mut groups: BTreeMap<Key, Vec<&Prepared>> = BTreeMap::new();
    let mut order: Vec<Key> = Vec::new();
    for p in search.iter().filter(|p| p.spec.stage == Stage::Search) {
        let key = (p.spec.task.clone(), p.spec.variant.clone(), p.spec.seed);
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(p);
    }
    let mut finals = Vec::new();
    let mut waiting = Vec::new();
    let mut chosen = BTreeMap::new();
    for key in order {
        let members = &groups[&key];
        let final_name = grid::run_name(&key.0, &key.1, &[], key.2, Stage::Final);
        let mut candidates = Vec::new();
        let mut missing = 0;
        for p in members {
            let dir = sweep.run_dir(&p.spec.name);
            let current =
                RunRecord::read(sweep, &p.spec.name)?.is_some_and(|r| r.fingerprint == p.fingerprint);
            if !current || status::run_state(&dir) != status::RunState::Done {
                missing += 1;
                continue;
            }
            let summary = status::read_summary(&dir).unwrap_or_default();
            let field = sel.metric.field();
            let Some(v) = summary.get(field).and_then(|v| v.as_f64()) else {
                bail!(
                    "{}: summary.json has no {field} (was it run with data.protocol = \"val\"?)",
                    dir.display()
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
        chosen.insert(
            spec.name.clone(),
            Chosen {
                task: key.0.clone(),
                variant: key.1.clone(),
                seed: key.2,
                metric: sel.metric.field().into(),
                selected: best.spec.name.clone(),
                point: best.spec.point.iter().map(|(k, v)| (k.clone(), grid::value_text(v))).collect(),
                value,
                candidates: candidates.iter().map(|(p, v)| (p.spec.name.clone(), *v)).collect(),
            },
        );
        finals.push(spec);
    }
    Ok(Selection { finals: prepare(sweep, grid_name, extra, &finals)?, waiting, chosen })
}

fn short_path(p: &Path) -> String {
    p.strip_prefix(util::root()).unwrap_or(p).display().to_string()
}

fn grid_path(root: &Path, grid: &str) -> Result<PathBuf> {
    let named = root.join("configs/grids").join(format!("{grid}.toml"));
    if !grid.contains('/') && !grid.ends_with(".toml") {
        if named.is_file() {
            return Ok(named);
        }
        let mut known: Vec<String> = std::fs::read_dir(root.join("configs/grids"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.path().file_stem().and_then(|s| s.to_str()).map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        known.sort();
        bail!("--grid {grid}: not one of {} (or give a path to a grid file)", known.join(", "));
    }
    let path = util::absolute(Path::new(grid));
    if !path.is_file() {
        bail!("--grid {grid}: no such file");
    }
    Ok(path)
}

/// The mlae-cli binary: --cli, else the release build (built now, after the set-up).
fn resolve_cli(args: &SweepArgs) -> Result<PathBuf> {
    if let Some(c) = &args.cli {
        let c = util::absolute(c);
        if !c.is_file() {
            bail!("--cli {}: no such file", c.display());
        }
        return Ok(c);
    }
    crate::setup::ensure()?;
    step("building mlae-cli (release)");
    util::run(util::cargo().args(["build", "--release", "-p", "mlae-cli"]))?;
    Ok(util::root().join("target/release/mlae-cli"))
}
