//! The writer's side of a run directory: created or opened under a lock, every file written
//! atomically, so a crash never leaves a half-written file behind.

use super::layout::RunLayout;
use super::records::{RunState, Status, Summary};
use crate::atomic::{sha256_hex, write_atomic};
use crate::error::{FormatError, Result, io_err};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An open run directory, locked for writing for as long as this value lives.
#[derive(Debug)]
pub struct RunDir {
    layout: RunLayout,
    _lock: File,
}

impl RunDir {
    /// Creates a new run directory. An existing one is refused unless `force` (which clears
    /// it): a finished run must not be overwritten by accident, and an unfinished one should
    /// be resumed instead.
    pub fn create(path: &Path, force: bool) -> Result<Self> {
        Self::check_new(path, force)?;
        let layout = RunLayout::new(path);
        if path.exists() && std::fs::read_dir(path).map_err(io_err(path))?.next().is_some() {
            let dir = Self::lock(path)?;
            for entry in std::fs::read_dir(path).map_err(io_err(path))? {
                let entry = entry.map_err(io_err(path))?;
                if entry.file_name() == RunLayout::LOCK {
                    continue;
                }
                let p = entry.path();
                if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }
                    .map_err(io_err(&p))?;
            }
            std::fs::create_dir_all(dir.checkpoints_dir()).map_err(io_err(dir.checkpoints_dir()))?;
            return Ok(dir);
        }
        std::fs::create_dir_all(layout.checkpoints_dir()).map_err(io_err(path))?;
        Self::lock(path)
    }

    /// Whether [`RunDir::create`] would accept `path`: no other process holds its lock, and it
    /// is absent or empty, or `force` is set. Writes nothing, so it can run before the
    /// expensive part of a run's set-up.
    pub fn check_new(path: &Path, force: bool) -> Result<()> {
        if let Some(message) = busy(path) {
            return Err(FormatError::RunDir { path: path.to_path_buf(), message });
        }
        if force || !path.exists() || std::fs::read_dir(path).map_err(io_err(path))?.next().is_none() {
            return Ok(());
        }
        let hint = match RunLayout::new(path).read_status().ok().flatten().map(|s| s.state) {
            Some(RunState::Finished) => "it holds a finished run; pass --force to overwrite it",
            Some(_) => "it holds an unfinished run; resume it with --resume, or pass --force to start over",
            None => "it is not empty; pass --force to overwrite it or choose another output",
        };
        Err(FormatError::RunDir { path: path.to_path_buf(), message: hint.into() })
    }

    /// Opens an existing run directory to resume it.
    pub fn open(path: &Path) -> Result<Self> {
        if !RunLayout::new(path).config().is_file() {
            return Err(FormatError::RunDir {
                path: path.to_path_buf(),
                message: format!("no {}: not a run directory", RunLayout::CONFIG),
            });
        }
        Self::lock(path)
    }

    /// Takes the directory's lock (an exclusive `flock` on its lock file, released when the
    /// value is dropped or the process ends) and records this process's id in the file, so
    /// that a refused second writer can say which process holds it.
    fn lock(path: &Path) -> Result<Self> {
        let layout = RunLayout::new(path);
        let lock_path = layout.lock();
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {
                lock.set_len(0)
                    .and_then(|()| writeln!(lock, "{}", std::process::id()))
                    .map_err(io_err(&lock_path))?;
                Ok(Self { layout, _lock: lock })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(FormatError::RunDir { path: path.to_path_buf(), message: busy_message(&lock_path) })
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&lock_path)(e)),
        }
    }

    /// The directory's file names.
    pub fn layout(&self) -> &RunLayout {
        &self.layout
    }
    pub fn path(&self) -> &Path {
        self.layout.root()
    }
    pub fn config_path(&self) -> PathBuf {
        self.layout.config()
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.layout.metrics()
    }
    pub fn summary_path(&self) -> PathBuf {
        self.layout.summary()
    }
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.layout.checkpoints_dir()
    }
    pub fn last_checkpoint(&self) -> PathBuf {
        self.layout.last_checkpoint()
    }
    pub fn best_checkpoint(&self) -> PathBuf {
        self.layout.best_checkpoint()
    }
    pub fn plot_path(&self) -> PathBuf {
        self.layout.curves()
    }
    pub fn tensorboard_dir(&self) -> PathBuf {
        self.layout.tensorboard()
    }

    /// Writes the resolved config and its hash; returns the hash.
    pub fn write_config(&self, toml_text: &str) -> Result<String> {
        write_file(&self.config_path(), toml_text.as_bytes())?;
        let hash = config_hash(toml_text);
        write_file(&self.layout.config_hash(), format!("{hash}\n").as_bytes())?;
        Ok(hash)
    }

    pub fn write_status(&self, status: &Status) -> Result<()> {
        self.write_json(&self.layout.status(), status)
    }

    pub fn write_summary(&self, summary: &Summary) -> Result<()> {
        self.write_json(&self.layout.summary(), summary)
    }

    /// Pretty JSON without a trailing newline (the run directory's JSON files have always
    /// been written so).
    pub fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let text = serde_json::to_string_pretty(value).expect("plain data serialises");
        write_file(path, text.as_bytes())
    }

    /// Appends one record to `metrics.jsonl` and syncs it to disk.
    pub fn append_metrics<T: Serialize>(&self, record: &T) -> Result<()> {
        append_line(&self.metrics_path(), record)
    }

    /// Appends a pause's validation score to `rungs.jsonl`.
    pub fn append_rung(&self, record: &super::RungScore) -> Result<()> {
        append_line(&self.layout().rungs(), record)
    }

    /// Keeps only the metrics records for which `keep` holds (on resume, records written
    /// after the checkpoint are dropped; the resumed run writes them again).
    pub fn retain_metrics(&self, keep: impl Fn(&serde_json::Value) -> bool) -> Result<()> {
        let path = self.metrics_path();
        if !path.exists() {
            return Ok(());
        }
        // The kept lines are copied as they are: parsing and printing a float again may change
        // its last digit, and a resumed run must not rewrite the history it keeps.
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let mut out = String::with_capacity(text.len());
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| FormatError::RunDir {
                path: path.clone(),
                message: format!("line {}: {e}", i + 1),
            })?;
            if keep(&v) {
                out.push_str(line);
                out.push('\n');
            }
        }
        write_file(&path, out.as_bytes())
    }
}

/// When another process holds the lock of the run directory at `path`, what to tell the user.
/// Takes the lock only shared and only for the test, so it never blocks the holder.
fn busy(path: &Path) -> Option<String> {
    let lock_path = RunLayout::new(path).lock();
    let file = File::open(&lock_path).ok()?;
    match file.try_lock_shared() {
        Err(std::fs::TryLockError::WouldBlock) => Some(busy_message(&lock_path)),
        Ok(()) | Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// A run directory that another process holds: neither `--resume` nor `--force` can take it,
/// so the message says who holds it (the pid recorded in the lock file, when there is one) and
/// to wait or stop that process.
fn busy_message(lock_path: &Path) -> String {
    let pid = std::fs::read_to_string(lock_path).ok().and_then(|t| t.trim().parse::<u32>().ok());
    let holder = match pid {
        Some(pid) => format!("another process (pid {pid})"),
        None => "another process".to_string(),
    };
    format!(
        "{holder} is using this run directory (it holds {}); wait for it to finish, or stop it, \
         and try again",
        lock_path.display()
    )
}

/// Appends one JSON line and syncs it, so that a line once written survives a crash.
fn append_line<T: Serialize>(path: &Path, record: &T) -> Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path).map_err(io_err(path))?;
    let line = serde_json::to_string(record).expect("records serialise");
    writeln!(f, "{line}").map_err(io_err(path))?;
    f.sync_data().map_err(io_err(path))
}

/// The atomic write, with the path attached to an error.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes).map_err(io_err(path))
}

/// sha256 of a resolved config, hex (`config.hash`).
pub fn config_hash(toml_text: &str) -> String {
    sha256_hex(toml_text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::layout::read_jsonl;
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
        assert_eq!(dir.layout().read_status().unwrap().unwrap().step, 3);
        let err = RunDir::open(&path).unwrap_err().to_string();
        assert!(err.contains("another process"), "{err}");
        drop(dir);
        let err = RunDir::create(&path, false).unwrap_err().to_string();
        assert!(err.contains("--resume"), "{err}");
        RunDir::open(&path).unwrap();
        let err = RunDir::open(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("no config.toml"), "{err}");
    }

    #[test]
    fn a_busy_run_directory_names_the_process_and_says_to_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run");
        let dir = RunDir::create(&path, false).unwrap();
        dir.write_config("a = 1\n").unwrap();
        dir.write_status(&Status { state: RunState::Running, step: 3, epoch: 0, message: None }).unwrap();
        // A second lock in this process conflicts as one in another process would.
        let pid = format!("(pid {})", std::process::id());
        let attempts = [
            RunDir::check_new(&path, false),
            RunDir::check_new(&path, true),
            RunDir::create(&path, true).map(drop),
            RunDir::open(&path).map(drop),
        ];
        for (i, attempt) in attempts.into_iter().enumerate() {
            let err = attempt.unwrap_err().to_string();
            assert!(
                err.contains("another process") && err.contains(&pid) && err.contains("wait"),
                "{i}: {err}"
            );
            assert!(!err.contains("--resume") && !err.contains("--force"), "{i}: {err}");
        }
        assert!(dir.config_path().is_file(), "the refused --force cleared the busy directory");
        drop(dir);
        // Released: the run can be resumed again, and the unfinished run says so.
        assert!(RunDir::check_new(&path, false).unwrap_err().to_string().contains("--resume"));
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
        // kept lines stay byte-identical, whatever their float formatting
        let kept = "{\"epoch\": 1, \"lr\": 0.000937599999999999912}\n{\"epoch\":2,\"lr\":9.376e-4}\n";
        std::fs::write(dir.metrics_path(), format!("{kept}{{\"epoch\":3,\"lr\":1e-3}}\n")).unwrap();
        dir.retain_metrics(|v| v["epoch"].as_u64().unwrap() < 3).unwrap();
        assert_eq!(std::fs::read_to_string(dir.metrics_path()).unwrap(), kept);
    }

    #[test]
    fn the_config_hash_is_written_beside_the_config() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create(&tmp.path().join("run"), false).unwrap();
        let hash = dir.write_config("a = 1\n").unwrap();
        assert_eq!(hash, config_hash("a = 1\n"));
        assert_ne!(hash, config_hash("a = 2\n"));
        let written = std::fs::read_to_string(dir.layout().config_hash()).unwrap();
        assert_eq!(written, format!("{hash}\n"));
    }
}
