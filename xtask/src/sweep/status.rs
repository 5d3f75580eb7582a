//! Per-run state of a sweep, from the run directories, the sweep's own records and, when
//! the sweep went through Slurm, the queue.

use super::exec::{self, RunRecord};
use super::{Plan, SweepDir, slurm};
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::Path;

/// What a run directory says about its run (`status.json`, written by mlae-cli).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// No run directory yet.
    Pending,
    /// `running`: a live process, or one killed without a chance to say otherwise.
    Running,
    /// Stopped by Ctrl-C / SIGTERM after writing a checkpoint.
    Interrupted,
    /// `failed`, or a directory without a readable status.
    Failed,
    /// `finished` with a `summary.json`.
    Done,
}

pub fn run_state(dir: &Path) -> RunState {
    if !dir.exists() {
        return RunState::Pending;
    }
    let status: Option<serde_json::Value> =
        std::fs::read_to_string(dir.join("status.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    match status.as_ref().and_then(|s| s.get("state")).and_then(|s| s.as_str()) {
        Some("finished") if dir.join("summary.json").is_file() => RunState::Done,
        Some("running") => RunState::Running,
        Some("interrupted") => RunState::Interrupted,
        _ => RunState::Failed,
    }
}

/// A finished run's `summary.json`.
pub fn read_summary(dir: &Path) -> Option<serde_json::Value> {
    std::fs::read_to_string(dir.join("summary.json")).ok().and_then(|t| serde_json::from_str(&t).ok())
}

/// One line of `--status`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStatus {
    pub name: String,
    /// pending, queued, running, interrupted, failed, done, or stale (config changed since).
    pub label: &'static str,
    pub detail: String,
}

/// The state of every planned run. `queue`: Slurm's view (run name -> state), if any.
pub fn collect(sweep: &SweepDir, plan: &Plan, queue: &BTreeMap<String, String>) -> Result<Vec<RunStatus>> {
    let host = exec::hostname();
    let mut out = Vec::new();
    for (name, planned) in &plan.runs {
        let dir = sweep.run_dir(name);
        let record = RunRecord::read(sweep, name)?;
        let current = super::current_fingerprint(sweep, name).ok();
        let stale = dir.exists()
            && match (&record, &current) {
                (Some(r), Some(fp)) => &r.fingerprint != fp,
                _ => true,
            };
        let slurm_state = queue.get(name).map(String::as_str);
        let local_alive = record.as_ref().is_some_and(|r| {
            r.host.as_deref() == Some(host.as_str())
                && r.pid.is_some_and(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(name.as_str()))
                })
        });
        let state = run_state(&dir);
        let label = match (slurm_state, state) {
            (Some("PENDING" | "CONFIGURING" | "REQUEUED"), _) => "queued",
            (Some("RUNNING" | "COMPLETING"), _) => "running",
            _ if stale => "stale",
            (_, RunState::Done) => "done",
            (_, RunState::Running) if local_alive => "running",
            // status.json still says running but no process is on it: killed without notice.
            (_, RunState::Running) => "interrupted",
            (_, RunState::Interrupted) => "interrupted",
            (_, RunState::Failed) => "failed",
            (_, RunState::Pending) => "pending",
        };
        let mut detail = Vec::new();
        if let Some(s) = read_summary(&dir).filter(|_| label == "done") {
            if let Some(a) = s.get("test_acc").and_then(|v| v.as_f64()) {
                detail.push(format!("test {:.2}", 100.0 * a));
            }
            if let Some(a) = s.get("best_val_acc").and_then(|v| v.as_f64()) {
                detail.push(format!("val {:.2}", 100.0 * a));
            }
        }
        if label != "pending" && !planned.point.is_empty() && planned.stage == super::grid::Stage::Final {
            let p: Vec<String> = planned.point.iter().map(|(k, v)| format!("{k}={v}")).collect();
            detail.push(format!("selected {}", p.join(" ")));
        }
        if let Some(r) = &record {
            if r.attempts > 1 {
                detail.push(format!("{} attempts", r.attempts));
            }
            if let (Some(code), "failed" | "interrupted") = (r.last_exit, label) {
                detail.push(format!("exit {code}"));
            }
            if let Some(t) = &r.slurm_task {
                detail.push(format!("slurm {t}{}", slurm_state.map(|s| format!(" {s}")).unwrap_or_default()));
            }
        }
        if label == "failed" {
            detail.push(format!("log {}", sweep.log(name).display()));
        }
        if label == "stale" {
            detail
                .push("config changed since it ran; the next sweep moves it aside and runs it again".into());
        }
        out.push(RunStatus { name: name.clone(), label, detail: detail.join(", ") });
    }
    Ok(out)
}

/// `cargo xtask sweep --status DIR`.
pub fn print(sweep: &SweepDir) -> Result<()> {
    let plan = Plan::read(sweep)?;
    let queue = slurm::queue_states(sweep);
    let rows = collect(sweep, &plan, &queue)?;
    let mut counts = BTreeMap::<&str, usize>::new();
    for r in &rows {
        *counts.entry(r.label).or_default() += 1;
        println!("{:<12} {}  {}", r.label, r.name, r.detail);
    }
    // Search grids plan a final run only once its search runs are done.
    let groups = |stage: super::grid::Stage| -> std::collections::BTreeSet<(&str, &str, u64)> {
        plan.runs
            .values()
            .filter(|r| r.stage == stage)
            .map(|r| (r.task.as_str(), r.variant.as_str(), r.seed))
            .collect()
    };
    let waiting = groups(super::grid::Stage::Search).difference(&groups(super::grid::Stage::Final)).count();
    if waiting > 0 {
        println!("{waiting} final runs are not planned yet: they wait for their search runs");
    }
    let totals: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("runs: {} ({})", rows.len(), totals.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_state_reads_status_and_summary() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("r");
        assert_eq!(run_state(&d), RunState::Pending);
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(run_state(&d), RunState::Failed, "a directory without status");
        std::fs::write(d.join("status.json"), r#"{"state":"running","step":3,"epoch":1}"#).unwrap();
        assert_eq!(run_state(&d), RunState::Running);
        std::fs::write(d.join("status.json"), r#"{"state":"finished","step":3,"epoch":1}"#).unwrap();
        assert_eq!(run_state(&d), RunState::Failed, "finished but no summary");
        std::fs::write(d.join("summary.json"), "{}").unwrap();
        assert_eq!(run_state(&d), RunState::Done);
        std::fs::write(d.join("status.json"), r#"{"state":"interrupted","step":3,"epoch":1}"#).unwrap();
        assert_eq!(run_state(&d), RunState::Interrupted);
    }
}
