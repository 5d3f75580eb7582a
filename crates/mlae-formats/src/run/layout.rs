//! The run directory's layout: every file name in one place, and the readers tools use.
//!
//! ```text
//! <run>/config.toml        resolved config, written before training starts
//! <run>/config.hash        sha256 of config.toml (sweeps refuse to mix changed configs)
//! <run>/metrics.jsonl      one JSON object per epoch (EpochMetrics)
//! <run>/checkpoints/last.safetensors, best.safetensors
//! <run>/summary.json       written when the run ends (Summary)
//! <run>/curves.png         loss / accuracy plot
//! <run>/tb/                TensorBoard event files (one per process that trained the run)
//! <run>/rungs.jsonl       the validation score at each pause (RungScore; halving reads it)
//! <run>/status.json        running | finished | failed | interrupted | paused (Status)
//! <run>/data/classes.txt   the class names, one a line in label order (what `predict` prints)
//! <run>/data/<split>.txt   for image-folder tasks, the files of each split (`path label`)
//! <run>/results/<split>/   per_class.csv, confusion.csv, confusion.png of the reported weights
//! <run>/.lock              held by the process writing the run
//! ```

use super::records::{EpochMetrics, RunState, RungScore, Status, Summary, WhichCheckpoint};
use crate::config::ExperimentConfig;
use crate::error::{FormatError, Result, io_err};
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The paths of one run directory (which need not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLayout {
    root: PathBuf,
}

impl RunLayout {
    pub const CONFIG: &'static str = "config.toml";
    pub const CONFIG_HASH: &'static str = "config.hash";
    pub const METRICS: &'static str = "metrics.jsonl";
    pub const RUNGS: &'static str = "rungs.jsonl";
    pub const STATUS: &'static str = "status.json";
    pub const SUMMARY: &'static str = "summary.json";
    pub const CURVES: &'static str = "curves.png";
    pub const TENSORBOARD: &'static str = "tb";
    pub const CHECKPOINTS: &'static str = "checkpoints";
    pub const LAST_CHECKPOINT: &'static str = "last.safetensors";
    pub const BEST_CHECKPOINT: &'static str = "best.safetensors";
    pub const LOCK: &'static str = ".lock";
    pub const DATA: &'static str = "data";
    pub const CLASSES: &'static str = "classes.txt";
    pub const RESULTS: &'static str = "results";

    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join(Self::CONFIG)
    }
    pub fn config_hash(&self) -> PathBuf {
        self.root.join(Self::CONFIG_HASH)
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join(Self::METRICS)
    }
    pub fn rungs(&self) -> PathBuf {
        self.root.join(Self::RUNGS)
    }
    pub fn status(&self) -> PathBuf {
        self.root.join(Self::STATUS)
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join(Self::SUMMARY)
    }
    pub fn curves(&self) -> PathBuf {
        self.root.join(Self::CURVES)
    }
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join(Self::CHECKPOINTS)
    }
    /// TensorBoard's log directory (`tensorboard --logdir <run or sweep directory>`).
    pub fn tensorboard(&self) -> PathBuf {
        self.root.join(Self::TENSORBOARD)
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join(Self::LOCK)
    }
    /// What the run knows of its data: the class names and, for image folders, the split files.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join(Self::DATA)
    }
    pub fn classes(&self) -> PathBuf {
        self.data_dir().join(Self::CLASSES)
    }
    /// Per-class accuracy and the confusion matrix of one split.
    pub fn results_dir(&self, split: &str) -> PathBuf {
        self.root.join(Self::RESULTS).join(split)
    }

    /// The class names in `data/classes.txt`, one a line; `None` for a run written before the
    /// file existed.
    pub fn read_classes(&self) -> Result<Option<Vec<String>>> {
        let path = self.classes();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
    pub fn checkpoint(&self, which: WhichCheckpoint) -> PathBuf {
        self.checkpoints_dir().join(match which {
            WhichCheckpoint::Last => Self::LAST_CHECKPOINT,
            WhichCheckpoint::Best => Self::BEST_CHECKPOINT,
        })
    }
    pub fn last_checkpoint(&self) -> PathBuf {
        self.checkpoint(WhichCheckpoint::Last)
    }
    pub fn best_checkpoint(&self) -> PathBuf {
        self.checkpoint(WhichCheckpoint::Best)
    }

    /// `status.json`, if there is one; a file that does not parse is an error.
    pub fn read_status(&self) -> Result<Option<Status>> {
        read_json_opt(&self.status())
    }

    /// `summary.json`, if there is one; a file that does not parse is an error.
    pub fn read_summary(&self) -> Result<Option<Summary>> {
        read_json_opt(&self.summary())
    }

    /// Every line of `metrics.jsonl` (none when the file does not exist yet).
    pub fn read_metrics(&self) -> Result<Vec<EpochMetrics>> {
        let path = self.metrics();
        if !path.exists() {
            return Ok(Vec::new());
        }
        read_jsonl(&path)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                serde_json::from_value(v).map_err(|e| FormatError::RunDir {
                    path: path.clone(),
                    message: format!("record {}: {e}", i + 1),
                })
            })
            .collect()
    }

    /// The validation score recorded at each pause, by epoch (the last record of an epoch wins:
    /// a run paused twice at the same epoch scored the same weights).
    pub fn read_rungs(&self) -> Result<std::collections::BTreeMap<u64, RungScore>> {
        let path = self.rungs();
        let mut out = std::collections::BTreeMap::new();
        if !path.exists() {
            return Ok(out);
        }
        for (i, v) in read_jsonl(&path)?.into_iter().enumerate() {
            let r: RungScore = serde_json::from_value(v).map_err(|e| FormatError::RunDir {
                path: path.clone(),
                message: format!("record {}: {e}", i + 1),
            })?;
            out.insert(r.epoch, r);
        }
        Ok(out)
    }

    /// The resolved config stored in the run (`config.toml`). A run written with the flat
    /// `[adapter]` layout of older versions is upgraded (`AdapterSpec::from_stored`: the stored
    /// kind says what each old key meant), so old runs resume; a config a person writes fails
    /// on old keys instead.
    pub fn read_config(&self) -> Result<ExperimentConfig> {
        let path = self.config();
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let err = |message: String| FormatError::Config { path: path.clone(), message };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(e.to_string()))?;
        if let Some(adapter) = table.get_mut("adapter") {
            let spec = mlae_core::AdapterSpec::from_stored(adapter.clone())
                .map_err(|e| err(format!("adapter: {e}")))?;
            *adapter = toml::Value::try_from(&spec).map_err(|e| err(format!("adapter: {e}")))?;
        }
        ExperimentConfig::from_table(table, &path)
    }

    /// What the directory says about its run, as a tool outside the run sees it.
    pub fn phase(&self) -> RunPhase {
        if !self.root.exists() {
            return RunPhase::Pending;
        }
        match self.read_status().ok().flatten().map(|s| s.state) {
            Some(RunState::Finished) if self.summary().is_file() => RunPhase::Done,
            Some(RunState::Running) => RunPhase::Running,
            Some(RunState::Interrupted) => RunPhase::Interrupted,
            Some(RunState::Paused) => RunPhase::Paused,
            _ => RunPhase::Failed,
        }
    }

    /// Whether a stopped run can continue: it has its config and a last checkpoint.
    pub fn resumable(&self) -> bool {
        self.last_checkpoint().is_file() && self.config().is_file()
    }
}

/// A run directory's state as tools read it (the sweep, its status and the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPhase {
    /// No run directory yet.
    Pending,
    /// `running`: a live process, or one killed without a chance to say otherwise.
    Running,
    /// Stopped by Ctrl-C / SIGTERM after writing a checkpoint.
    Interrupted,
    /// Paused at the end of an epoch on purpose (a halving rung), with a checkpoint.
    Paused,
    /// `failed`, or a directory without a readable status.
    Failed,
    /// `finished` with a `summary.json`.
    Done,
}

fn read_json_opt<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| FormatError::RunDir {
            path: path.to_path_buf(),
            message: format!("unreadable: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Reads a JSON-lines file; a malformed line is an error naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line).map_err(|e| FormatError::RunDir {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", i + 1),
        })?;
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_one_name() {
        let l = RunLayout::new("/r");
        assert_eq!(l.config(), Path::new("/r/config.toml"));
        assert_eq!(l.config_hash(), Path::new("/r/config.hash"));
        assert_eq!(l.metrics(), Path::new("/r/metrics.jsonl"));
        assert_eq!(l.rungs(), Path::new("/r/rungs.jsonl"));
        assert_eq!(l.status(), Path::new("/r/status.json"));
        assert_eq!(l.summary(), Path::new("/r/summary.json"));
        assert_eq!(l.curves(), Path::new("/r/curves.png"));
        assert_eq!(l.last_checkpoint(), Path::new("/r/checkpoints/last.safetensors"));
        assert_eq!(l.best_checkpoint(), Path::new("/r/checkpoints/best.safetensors"));
    }

    #[test]
    fn rung_scores_are_read_by_epoch_the_last_record_winning() {
        let tmp = tempfile::tempdir().unwrap();
        let l = RunLayout::new(tmp.path());
        assert!(l.read_rungs().unwrap().is_empty(), "no file: no rungs");
        let line = |e: u64, acc: f64| {
            format!(r#"{{"epoch":{e},"step":{},"split":"val200","acc":{acc},"loss":1.0}}"#, e * 13)
        };
        std::fs::write(l.rungs(), format!("{}\n{}\n{}\n", line(1, 0.5), line(3, 0.7), line(3, 0.75)))
            .unwrap();
        let r = l.read_rungs().unwrap();
        assert_eq!(r.keys().copied().collect::<Vec<_>>(), [1, 3]);
        assert_eq!((r[&1].acc, r[&3].acc, r[&3].step), (0.5, 0.75, 39));
        std::fs::write(l.rungs(), "{\"epoch\":1}\n").unwrap();
        let err = l.read_rungs().unwrap_err().to_string();
        assert!(err.contains("rungs.jsonl") && err.contains("record 1"), "{err}");
    }

    #[test]
    fn phase_reads_status_and_summary() {
        let tmp = tempfile::tempdir().unwrap();
        let l = RunLayout::new(tmp.path().join("r"));
        let d = l.root().to_path_buf();
        assert_eq!(l.phase(), RunPhase::Pending);
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(l.phase(), RunPhase::Failed, "a directory without status");
        std::fs::write(l.status(), r#"{"state":"running","step":3,"epoch":1}"#).unwrap();
        assert_eq!(l.phase(), RunPhase::Running);
        std::fs::write(l.status(), r#"{"state":"finished","step":3,"epoch":1}"#).unwrap();
        assert_eq!(l.phase(), RunPhase::Failed, "finished but no summary");
        std::fs::write(l.summary(), "{}").unwrap();
        assert_eq!(l.phase(), RunPhase::Done);
        std::fs::write(l.status(), r#"{"state":"interrupted","step":3,"epoch":1}"#).unwrap();
        assert_eq!(l.phase(), RunPhase::Interrupted);
        std::fs::write(l.status(), r#"{"state":"paused","step":3,"epoch":1}"#).unwrap();
        assert_eq!(l.phase(), RunPhase::Paused);
        std::fs::write(l.status(), "not json").unwrap();
        assert_eq!(l.phase(), RunPhase::Failed);
        assert!(l.read_status().unwrap_err().to_string().contains("status.json"));
    }

    #[test]
    fn malformed_metrics_name_the_line() {
        let tmp = tempfile::tempdir().unwrap();
        let l = RunLayout::new(tmp.path());
        assert!(l.read_metrics().unwrap().is_empty(), "no file yet");
        std::fs::write(l.metrics(), "{\"epoch\": 0}\nnot json\n").unwrap();
        assert!(read_jsonl(&l.metrics()).unwrap_err().to_string().contains("line 2"));
        std::fs::write(l.metrics(), "{\"epoch\": 0}\n").unwrap();
        assert!(l.read_metrics().unwrap_err().to_string().contains("record 1"));
    }
}
