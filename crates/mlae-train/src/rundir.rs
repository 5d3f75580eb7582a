//! The run directory: one folder per run holding everything needed to read, resume or
//! reproduce it.
//!
//! ```text
//! <run>/config.toml        resolved config, written before training starts
//! <run>/config.hash        sha256 of config.toml (sweeps refuse to mix changed configs)
//! <run>/metrics.jsonl      one JSON object per epoch
//! <run>/checkpoints/last.safetensors, best.safetensors
//! <run>/summary.json       written when the run ends
//! <run>/curves.png         loss / accuracy plot
//! <run>/status.json        running | finished | failed | interrupted
//! ```
//! Every file is written atomically (temp file + rename), so a crash never leaves a
//! half-written file behind, and the directory is locked while a run writes to it.

use crate::error::{Result, TrainError, io_err};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Where a run stands, as recorded in `status.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Finished,
    Failed,
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: RunState,
    pub step: u64,
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// An open run directory, locked for writing for as long as this value lives.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// Creates a new run directory. An existing one is refused unless `force` (which clears
    /// it): a finished run must not be overwritten by accident, and an unfinished one should
    /// be resumed instead.
    pub fn create(path: &Path, force: bool) -> Result<Self> {
        Self::check_new(path, force)?;
        if path.exists() && std::fs::read_dir(path).map_err(io_err(path))?.next().is_some() {
            let dir = Self::lock(path)?;
            for entry in std::fs::read_dir(path).map_err(io_err(path))? {
                let entry = entry.map_err(io_err(path))?;
                if entry.file_name() == ".lock" {
                    continue;
                }
                let p = entry.path();
                if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }
                    .map_err(io_err(&p))?;
            }
            std::fs::create_dir_all(dir.checkpoints_dir()).map_err(io_err(dir.checkpoints_dir()))?;
            return Ok(dir);
        }
        std::fs::create_dir_all(path.join("checkpoints")).map_err(io_err(path))?;
        Self::lock(path)
    }

    /// Whether [`RunDir::create`] would accept `path`: it is absent or empty, or `force` is
    /// set. Writes nothing, so it can run before the expensive part of a run's set-up.
    pub fn check_new(path: &Path, force: bool) -> Result<()> {
        if force || !path.exists() || std::fs::read_dir(path).map_err(io_err(path))?.next().is_none() {
            return Ok(());
        }
        let hint = match read_status(path).map(|s| s.state) {
            Some(RunState::Finished) => "it holds a finished run; pass --force to overwrite it",
            Some(_) => "it holds an unfinished run; resume it with --resume, or pass --force to start over",
            None => "it is not empty; pass --force to overwrite it or choose another output",
        };
        Err(TrainError::RunDir { path: path.to_path_buf(), message: hint.into() })
    }

    /// Opens an existing run directory to resume it.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("config.toml").is_file() {
            return Err(TrainError::RunDir {
                path: path.to_path_buf(),
                message: "no config.toml: not a run directory".into(),
            });
        }
        Self::lock(path)
    }

    fn lock(path: &Path) -> Result<Self> {
        let lock_path = path.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => Ok(Self { path: path.to_path_buf(), _lock: lock }),
            Err(std::fs::TryLockError::WouldBlock) => Err(TrainError::RunDir {
                path: path.to_path_buf(),
                message: "another process is writing to this run".into(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&lock_path)(e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.toml")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }
    pub fn summary_path(&self) -> PathBuf {
        self.path.join("summary.json")
    }
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.path.join("checkpoints")
    }
    pub fn last_checkpoint(&self) -> PathBuf {
        self.checkpoints_dir().join("last.safetensors")
    }
    pub fn best_checkpoint(&self) -> PathBuf {
        self.checkpoints_dir().join("best.safetensors")
    }
    pub fn plot_path(&self) -> PathBuf {
        self.path.join("curves.png")
    }

    /// Writes the resolved config and its hash.
    pub fn write_config(&self, toml_text: &str) -> Result<String> {
        write_atomic(&self.config_path(), toml_text.as_bytes())?;
        let hash = config_hash(toml_text);
        write_atomic(&self.path.join("config.hash"), format!("{hash}\n").as_bytes())?;
        Ok(hash)
    }

    pub fn write_status(&self, status: &Status) -> Result<()> {
        let text = serde_json::to_string_pretty(status).expect("status serialises");
        write_atomic(&self.path.join("status.json"), text.as_bytes())
    }

    pub fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let text = serde_json::to_string_pretty(value).expect("plain data serialises");
        write_atomic(path, text.as_bytes())
    }

    /// Appends one record to `metrics.jsonl` and syncs it to disk.
    pub fn append_metrics<T: Serialize>(&self, record: &T) -> Result<()> {
        let path = self.metrics_path();
        let mut f = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        let line = serde_json::to_string(record).expect("metrics serialise");
        writeln!(f, "{line}").map_err(io_err(&path))?;
        f.sync_data().map_err(io_err(&path))
    }

    /// Keeps only the metrics records for which `keep` holds (on resume, records written
    /// after the checkpoint are dropped; the resumed run writes them again).
    pub fn retain_metrics(&self, keep: impl Fn(&serde_json::Value) -> bool) -> Result<()> {
        let path = self.metrics_path();
        if !path.exists() {
            return Ok(());
        }
        let mut out = String::new();
        for v in read_jsonl(&path)? {
            if keep(&v) {
                out.push_str(&serde_json::to_string(&v).expect("json"));
                out.push('\n');
            }
        }
        write_atomic(&path, out.as_bytes())
    }
}

/// Reads `status.json` of a run directory, if there is a readable one.
pub fn read_status(run: &Path) -> Option<Status> {
    let text = std::fs::read_to_string(run.join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Reads a JSON-lines file; a malformed line is an error naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line).map_err(|e| TrainError::RunDir {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", i + 1),
        })?;
        out.push(v);
    }
    Ok(out)
}

/// sha256 of a resolved config, hex.
pub fn config_hash(toml_text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(toml_text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` so that readers see either the old or the new file, never a
/// partial one: a temp file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_run_is_not_overwritten_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run");
        {
            let dir = RunDir::create(&path, false).unwrap();
            dir.write_config("a = 1\n").unwrap();
            dir.write_status(&Status { state: RunState::Finished, step: 10, epoch: 1, message: None })
                .unwrap();
        }
        let err = RunDir::create(&path, false).unwrap_err().to_string();
        assert!(err.contains("finished run") && err.contains("--force"), "{err}");
        let dir = RunDir::create(&path, true).unwrap();
        assert!(!dir.config_path().exists(), "--force clears the old run");
        assert!(dir.checkpoints_dir().is_dir());
    }

    #[test]
    fn an_unfinished_run_suggests_resume_and_a_second_writer_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run");
        let dir = RunDir::create(&path, false).unwrap();
        dir.write_config("a = 1\n").unwrap();
        dir.write_status(&Status { state: RunState::Running, step: 3, epoch: 0, message: None }).unwrap();
        let err = RunDir::open(&path).unwrap_err().to_string();
        assert!(err.contains("another process"), "{err}");
        drop(dir);
        let err = RunDir::create(&path, false).unwrap_err().to_string();
        assert!(err.contains("--resume"), "{err}");
        RunDir::open(&path).unwrap();
    }

    #[test]
    fn metrics_append_read_and_retain() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create(&tmp.path().join("run"), false).unwrap();
        for epoch in 0..4 {
            dir.append_metrics(&serde_json::json!({ "epoch": epoch, "loss": 1.0 / (epoch + 1) as f64 }))
                .unwrap();
        }
        dir.retain_metrics(|v| v["epoch"].as_u64().unwrap() < 2).unwrap();
        let rows = read_jsonl(&dir.metrics_path()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["epoch"], 1);
        std::fs::write(dir.metrics_path(), "{\"epoch\": 0}\nnot json\n").unwrap();
        let err = read_jsonl(&dir.metrics_path()).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn atomic_write_replaces_whole_files_and_leaves_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.json");
        write_atomic(&p, b"old").unwrap();
        write_atomic(&p, b"new contents").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new contents");
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(config_hash("a"), config_hash("a"));
        assert_ne!(config_hash("a"), config_hash("b"));
    }
}
