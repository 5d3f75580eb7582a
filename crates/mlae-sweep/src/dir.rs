//! The sweep directory: its layout and the records a sweep keeps there.
//!
//! ```text
//! sweep.json          what the sweep is (grid, benchmark, the overrides of all its runs)
//! plan.json           every run planned so far: task, variant, seed, stage, axes point
//! selection.json      search grids: the setting selected per task on validation accuracy
//! halving.json        --search halving: per task and seed, each rung's scores and kept settings
//! configs/<run>.toml  the generated config of each run (extends the grid's files)
//! runs/<run>/         each run's directory, written by mlae-cli (mlae-formats' layout)
//! logs/<run>.log      each run's output (every attempt appended)
//! state/<run>.json    the run's fingerprint, attempts, last exit, process or Slurm task
//! slurm/              sbatch scripts and jobs.json (Slurm executor)
//! ```
//! Every file is written atomically: a sweep may be killed at any moment.

use crate::error::{Result, SweepError, io_err};
use crate::grid::{RunSpec, Stage, value_text};
use mlae_formats::RunLayout;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A sweep directory and its paths.
#[derive(Debug, Clone)]
pub struct SweepDir {
    pub root: PathBuf,
}

impl SweepDir {
    pub fn config(&self, run: &str) -> PathBuf {
        self.root.join("configs").join(format!("{run}.toml"))
    }
    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }
    pub fn run_dir(&self, run: &str) -> PathBuf {
        self.runs_dir().join(run)
    }
    /// The run directory's files (mlae-formats' layout).
    pub fn run_layout(&self, run: &str) -> RunLayout {
        RunLayout::new(self.run_dir(run))
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log(&self, run: &str) -> PathBuf {
        self.logs_dir().join(format!("{run}.log"))
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
    pub fn halving(&self) -> PathBuf {
        self.root.join("halving.json")
    }
    pub fn slurm_dir(&self) -> PathBuf {
        self.root.join("slurm")
    }
    pub fn read_record(&self) -> Result<SweepRecord> {
        read_json(&self.record())?.ok_or_else(|| {
            SweepError::Invalid(format!("{} is not a sweep directory (no sweep.json)", self.root.display()))
        })
    }
}

/// What the sweep is, so that `--status`, reports and resubmissions know it without the
/// original command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRecord {
    pub grid: String,
    pub grid_path: PathBuf,
    pub benchmark: String,
    /// The `--set`, `--data-root`, `--checkpoint` every run planned here was made with: a
    /// command with other overrides must plan every run again (they are moved aside and
    /// rerun) or is refused, so the report can name the whole directory by them.
    pub set: Vec<String>,
    pub data_root: Option<PathBuf>,
    pub checkpoint: Option<PathBuf>,
}

impl SweepRecord {
    /// The `--set` overrides in one order, as they compare and as a report names them.
    pub fn sorted_set(&self) -> Vec<String> {
        let mut set = self.set.clone();
        set.sort();
        set
    }

    /// Whether two records ran their grid with the same overrides (`--set` in any order).
    pub fn same_overrides(&self, other: &SweepRecord) -> bool {
        self.sorted_set() == other.sorted_set()
            && self.data_root == other.data_root
            && self.checkpoint == other.checkpoint
    }

    /// The overrides as flags, for messages (`no overrides` when there are none).
    pub fn overrides_text(&self) -> String {
        let mut parts: Vec<String> = self.set.iter().map(|s| format!("--set {s}")).collect();
        if let Some(d) = &self.data_root {
            parts.push(format!("--data-root {}", d.display()));
        }
        if let Some(c) = &self.checkpoint {
            parts.push(format!("--checkpoint {}", c.display()));
        }
        if parts.is_empty() { "no overrides".into() } else { parts.join(" ") }
    }
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
        read_json(&sweep.plan())?.ok_or_else(|| {
            SweepError::Invalid(format!("{} is not a sweep directory (no plan.json)", sweep.root.display()))
        })
    }

    pub fn add<'a>(&mut self, specs: impl IntoIterator<Item = &'a RunSpec>) {
        for s in specs {
            let point = s.point.iter().map(|(k, v)| (k.clone(), value_text(v))).collect();
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

/// What the sweep records about a run in `state/<run>.json`, written before the run starts
/// so that a kill at any moment leaves the run's fingerprint behind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The fingerprint of the config the run directory was started with.
    pub fingerprint: String,
    /// How many times the run was launched (fresh or resumed).
    pub attempts: u32,
    /// `fresh` or `resume`, the last launch.
    pub last_action: String,
    /// Exit status of the last local launch (None while running, or under Slurm).
    pub last_exit: Option<i32>,
    /// Local launches: the process and host, to tell a live run from a dead one.
    pub pid: Option<u32>,
    pub host: Option<String>,
    /// Slurm launches: `JOBID_INDEX`.
    pub slurm_task: Option<String>,
}

impl RunRecord {
    pub fn read(sweep: &SweepDir, name: &str) -> Result<Option<RunRecord>> {
        read_json(&sweep.state(name))
    }

    pub fn write(&self, sweep: &SweepDir, name: &str) -> Result<()> {
        write_json(&sweep.state(name), self)
    }

    /// Reads, changes and writes back a run's record (a default one if it has none).
    pub fn update(sweep: &SweepDir, name: &str, f: impl FnOnce(&mut RunRecord)) -> Result<()> {
        let mut rec = RunRecord::read(sweep, name)?.unwrap_or_default();
        f(&mut rec);
        rec.write(sweep, name)
    }
}

/// Reads a JSON file into `T`; `None` when it does not exist, an error naming the file when
/// it exists but does not parse.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| SweepError::Json { path: path.into(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes `value` as pretty JSON with a final newline, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("plain data serialises");
    text.push('\n');
    write_file(path, text.as_bytes())
}

/// The project's atomic write (mlae-formats), with the path in the error.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    mlae_formats::write_atomic(path, bytes).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_compare_in_any_order_and_name_every_flag() {
        let record = |set: &[&str], data_root: Option<&str>| SweepRecord {
            grid: "demo-epochs".into(),
            grid_path: "configs/grids/demo-epochs.toml".into(),
            benchmark: "demo".into(),
            set: set.iter().map(|s| s.to_string()).collect(),
            data_root: data_root.map(PathBuf::from),
            checkpoint: None,
        };
        let a = record(&["train.epochs=30", "train.threads=1"], None);
        assert!(a.same_overrides(&record(&["train.threads=1", "train.epochs=30"], None)));
        assert!(!a.same_overrides(&record(&["train.epochs=30"], None)));
        assert!(!a.same_overrides(&record(&["train.epochs=30", "train.threads=1"], Some("/data"))));
        assert_eq!(record(&[], None).overrides_text(), "no overrides");
        assert_eq!(
            record(&["train.epochs=30"], Some("/data")).overrides_text(),
            "--set train.epochs=30 --data-root /data"
        );
    }

    #[test]
    fn records_round_trip_and_a_malformed_file_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let sweep = SweepDir { root: tmp.path().to_path_buf() };
        assert!(RunRecord::read(&sweep, "r").unwrap().is_none());
        RunRecord::update(&sweep, "r", |r| r.attempts = 2).unwrap();
        assert_eq!(RunRecord::read(&sweep, "r").unwrap().unwrap().attempts, 2);
        assert!(std::fs::read_to_string(sweep.state("r")).unwrap().ends_with("}\n"));
        std::fs::write(sweep.state("r"), "{").unwrap();
        let err = RunRecord::read(&sweep, "r").unwrap_err().to_string();
        assert!(err.contains("r.json") && err.contains("malformed"), "{err}");
        let err = Plan::read(&sweep).unwrap_err().to_string();
        assert!(err.contains("no plan.json"), "{err}");
        assert_eq!(sweep.run_layout("r").summary(), tmp.path().join("runs/r/summary.json"));
    }
}
