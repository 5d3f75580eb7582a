//! Per-run state of a sweep, from the run directories (mlae-formats' records), the sweep's
//! own records and, when the sweep went through Slurm, the queue.

use crate::decide::hostname;
use crate::dir::{Plan, RunRecord, SweepDir};
use crate::error::Result;
use crate::grid::Stage;
use crate::prepare::current_fingerprint;
use crate::slurm;
use mlae_formats::RunPhase;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// One line of `--status`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStatus {
    pub name: String,
    /// pending, queued, running, interrupted, paused (a halving rung), failed, done, or stale
    /// (config changed since).
    pub label: &'static str,
    pub detail: String,
}

/// The state of every planned run. `queue`: Slurm's view (run name -> state), if any.
pub fn collect(sweep: &SweepDir, plan: &Plan, queue: &BTreeMap<String, String>) -> Result<Vec<RunStatus>> {
    let host = hostname();
    let mut out = Vec::new();
    for (name, planned) in &plan.runs {
        let dir = sweep.run_dir(name);
        let record = RunRecord::read(sweep, name)?;
        let current = current_fingerprint(sweep, name).ok();
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
        let layout = sweep.run_layout(name);
        let label = match (slurm_state, layout.phase()) {
            (Some("PENDING" | "CONFIGURING" | "REQUEUED"), _) => "queued",
            (Some("RUNNING" | "COMPLETING"), _) => "running",
            _ if stale => "stale",
            (_, RunPhase::Done) => "done",
            (_, RunPhase::Running) if local_alive => "running",
            // status.json still says running but no process is on it: killed without notice.
            (_, RunPhase::Running) => "interrupted",
            (_, RunPhase::Interrupted) => "interrupted",
            (_, RunPhase::Paused) => "paused",
            (_, RunPhase::Failed) => "failed",
            (_, RunPhase::Pending) => "pending",
        };
        let mut detail = Vec::new();
        if let Some(s) = layout.read_summary().ok().flatten().filter(|_| label == "done") {
            detail.push(format!("test {:.2}", 100.0 * s.test_acc));
            if let Some(a) = s.best_val_acc {
                detail.push(format!("val {:.2}", 100.0 * a));
            }
        }
        if label == "paused"
            && let Some(st) = layout.read_status().ok().flatten()
        {
            let score = layout.read_rungs().ok().and_then(|r| r.get(&st.epoch).map(|r| r.acc));
            detail.push(format!(
                "at epoch {}{}",
                st.epoch,
                score.map(|a| format!(", val {:.2}", 100.0 * a)).unwrap_or_default()
            ));
        }
        if label != "pending" && !planned.point.is_empty() && planned.stage == Stage::Final {
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

/// `cargo xtask sweep --status DIR`: one line per run, then what waits and the totals.
pub fn report(sweep: &SweepDir) -> Result<String> {
    let plan = Plan::read(sweep)?;
    let queue = slurm::queue_states(sweep);
    let rows = collect(sweep, &plan, &queue)?;
    let mut out = String::new();
    let mut counts = BTreeMap::<&str, usize>::new();
    for r in &rows {
        *counts.entry(r.label).or_default() += 1;
        let _ = writeln!(out, "{:<12} {}  {}", r.label, r.name, r.detail);
    }
    // Search grids plan a final run only once its search runs are done.
    let groups = |stage: Stage| -> BTreeSet<(&str, &str, u64)> {
        plan.runs
            .values()
            .filter(|r| r.stage == stage)
            .map(|r| (r.task.as_str(), r.variant.as_str(), r.seed))
            .collect()
    };
    let waiting = groups(Stage::Search).difference(&groups(Stage::Final)).count();
    if waiting > 0 {
        let _ = writeln!(out, "{waiting} final runs are not planned yet: they wait for their search runs");
    }
    let totals: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(out, "runs: {} ({})", rows.len(), totals.join(", "));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dir::{PlannedRun, write_json};

    const SUMMARY: &str = r#"{"task":"t","benchmark":"demo","method":"mlae","protocol":"val","test_acc":0.921,
        "test_acc_final":0.9,"best_test_acc":0.93,"best_test_epoch":2,"best_val_acc":0.95,"selected_epoch":2,
        "epochs":3,"steps":30,"trainable_params":10,"adapter_params":8,"head_params":2,"total_params":100,
        "wall_seconds":1.5,"train_images_per_s":10.0,"peak_mem_mb":1.0,"device":"cpu","precision":"fp32",
        "seed":0,"config_hash":"h","versions":{},"notes":[]}"#;

    #[test]
    fn labels_come_from_the_run_directory_the_record_and_the_config() {
        let tmp = tempfile::tempdir().unwrap();
        let sweep = SweepDir { root: tmp.path().to_path_buf() };
        let mut plan = Plan::default();
        for name in ["done", "pending", "stale", "killed"] {
            let run = PlannedRun {
                task: "t".into(),
                variant: "v".into(),
                seed: 0,
                stage: Stage::Run,
                point: vec![],
            };
            plan.runs.insert(name.into(), run);
            crate::dir::write_file(&sweep.config(name), b"[train]\nepochs = 3\n").unwrap();
            let fingerprint = current_fingerprint(&sweep, name).unwrap();
            let fingerprint = if name == "stale" { "old".into() } else { fingerprint };
            let record = RunRecord { fingerprint, attempts: 1, ..Default::default() };
            write_json(&sweep.state(name), &record).unwrap();
        }
        let layout = sweep.run_layout("done");
        crate::dir::write_file(&layout.status(), br#"{"state":"finished","step":30,"epoch":3}"#).unwrap();
        crate::dir::write_file(&layout.summary(), SUMMARY.as_bytes()).unwrap();
        crate::dir::write_file(
            &sweep.run_layout("stale").status(),
            br#"{"state":"finished","step":1,"epoch":1}"#,
        )
        .unwrap();
        // status.json says running, but no process of this host is on it.
        crate::dir::write_file(
            &sweep.run_layout("killed").status(),
            br#"{"state":"running","step":1,"epoch":1}"#,
        )
        .unwrap();
        let rows = collect(&sweep, &plan, &BTreeMap::new()).unwrap();
        let label = |n: &str| rows.iter().find(|r| r.name == n).unwrap();
        assert_eq!(label("done").label, "done");
        assert_eq!(label("done").detail, "test 92.10, val 95.00");
        assert_eq!(label("pending").label, "pending");
        assert_eq!(label("stale").label, "stale");
        assert_eq!(label("killed").label, "interrupted");
        let queue: BTreeMap<String, String> = [("pending".to_string(), "PENDING".to_string())].into();
        let rows = collect(&sweep, &plan, &queue).unwrap();
        assert_eq!(rows.iter().find(|r| r.name == "pending").unwrap().label, "queued");
        write_json(&sweep.plan(), &plan).unwrap();
        let text = report(&sweep).unwrap();
        assert!(text.ends_with("runs: 4 (done 1, interrupted 1, pending 1, stale 1)\n"), "{text}");
    }
}
