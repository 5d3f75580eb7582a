//! The check's child processes: each under what is left of the total time limit, its output
//! in `logs/`, and its JSON report read from its stdout.

use crate::util;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole check must end within this (8 minutes); every child gets at most what is left.
pub const TOTAL_LIMIT: Duration = Duration::from_secs(480);

/// What one child process gave: its JSON (last stdout line) or why there is none.
pub struct Child {
    pub json: Result<Value, String>,
}

pub struct Runner {
    pub out: PathBuf,
    pub started: Instant,
    /// Every child's report or error, by name, for `gpu-check.json`.
    pub raw: serde_json::Map<String, Value>,
}

impl Runner {
    pub fn new(out: &Path) -> Runner {
        Runner { out: out.to_path_buf(), started: Instant::now(), raw: Default::default() }
    }

    fn left(&self) -> Duration {
        TOTAL_LIMIT.saturating_sub(self.started.elapsed())
    }

    /// Runs `cmd` (stdout and stderr to `logs/<name>.out|.err`) for at most `limit` and what
    /// is left of the total, and parses its stdout (or its last line) as JSON. A child that
    /// fails gives an error, unless `report_on_failure` and it printed a report (as
    /// `mlae-cli check` does when a step FAILs). On a timeout the child's whole process group
    /// is killed: `mlae-cli check` runs each step in a process of its own.
    pub fn run(&mut self, name: &str, cmd: &mut Command, limit: Duration, report_on_failure: bool) -> Child {
        let limit = limit.min(self.left());
        let logs = self.out.join("logs");
        let start = Instant::now();
        let result = (|| -> Result<Value, String> {
            if limit < Duration::from_secs(5) {
                return Err(format!(
                    "not started: the {} s limit of the whole check is reached",
                    TOTAL_LIMIT.as_secs()
                ));
            }
            std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
            let (out_path, err_path) = (logs.join(format!("{name}.out")), logs.join(format!("{name}.err")));
            let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
            let line = util::describe(cmd);
            eprintln!("$ {line}");
            use std::os::unix::process::CommandExt;
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(file(&out_path)?)
                .stderr(file(&err_path)?)
                .process_group(0)
                .spawn()
                .map_err(|e| format!("cannot start `{line}`: {e}"))?;
            let status = loop {
                if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
                    break s;
                }
                if start.elapsed() > limit {
                    kill_group(child.id());
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("timed out after {} s: `{line}`", limit.as_secs()));
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            // `doctor --json` prints one pretty object; the others end with a one-line report.
            let last = stdout.trim().lines().last().unwrap_or_default();
            let parsed = serde_json::from_str(stdout.trim()).or_else(|_| serde_json::from_str(last));
            match parsed {
                Ok(v) if status.success() || report_on_failure => Ok(v),
                _ if !status.success() => Err(format!("`{line}` failed ({status}): {}", tail(&stderr, 6))),
                _ => Err(format!("`{line}` printed no JSON report: {}", tail(&stdout, 4))),
            }
        })();
        let seconds = start.elapsed().as_secs_f64();
        self.raw.insert(
            name.into(),
            match &result {
                Ok(v) => json!({"seconds": seconds, "report": v}),
                Err(e) => json!({"seconds": seconds, "error": e}),
            },
        );
        if let Err(e) = &result {
            eprintln!("{name}: {e}");
        }
        Child { json: result }
    }
}

/// Kills the process group `pgid` (a child started with `process_group(0)` leads its own).
fn kill_group(pgid: u32) {
    // SAFETY: kill(2) with a negative pid signals that process group; it touches no memory.
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
}

/// The last `n` non-empty lines of `text`, on one line.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_kills_the_grandchildren_too() {
        let tmp = tempfile::tempdir().unwrap();
        let mut runner = Runner::new(tmp.path());
        let pid_file = tmp.path().join("grandchild.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let child =
            runner.run("sleepy", Command::new("bash").args(["-c", &script]), Duration::from_secs(6), false);
        assert!(child.json.unwrap_err().starts_with("timed out"));
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')));
        assert!(!alive, "the grandchild {pid} outlived the timeout");
    }

    #[test]
    fn a_failing_child_with_a_report_is_read_only_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let mut runner = Runner::new(tmp.path());
        let cmd = || {
            let mut c = Command::new("bash");
            c.args(["-c", "echo progress; echo '{\"verdict\": \"FAIL\"}'; exit 1"]);
            c
        };
        let lenient = runner.run("lenient", &mut cmd(), Duration::from_secs(30), true);
        assert_eq!(lenient.json.unwrap()["verdict"], "FAIL");
        let strict = runner.run("strict", &mut cmd(), Duration::from_secs(30), false);
        assert!(strict.json.unwrap_err().contains("failed"));
        assert!(tmp.path().join("logs/lenient.out").is_file());
    }
}
