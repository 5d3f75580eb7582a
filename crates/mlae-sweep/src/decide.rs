//! What every executor shares: deciding whether a run is skipped, resumed or started, its
//! command line, and the record written before it launches.

use crate::dir::{RunRecord, SweepDir};
use crate::error::{Result, io_err};
use crate::prepare::Prepared;
use mlae_formats::RunPhase;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// What to do with a run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Finished with the same config.
    Skip,
    /// Another process (here or in Slurm's queue) is on it.
    Busy(String),
    /// Interrupted or crashed after a checkpoint: continue it.
    Resume,
    /// Start from scratch (clearing a directory that holds no checkpoint). `moved_aside`:
    /// where an earlier run with another config went.
    Fresh { moved_aside: Option<PathBuf> },
}

impl Action {
    pub fn label(&self) -> String {
        match self {
            Action::Skip => "done".into(),
            Action::Busy(why) => format!("busy: {why}"),
            Action::Resume => "resume".into(),
            Action::Fresh { moved_aside: None } => "start".into(),
            Action::Fresh { moved_aside: Some(_) } => "config changed: start again".into(),
        }
    }
}

/// Decides a run's action. A run directory whose recorded fingerprint differs from the
/// run's current one is moved aside (`<run>.stale-N`; only reported when `dry_run`), so that
/// results of two configs are never mixed. `queued`: runs Slurm already has.
pub fn decide(sweep: &SweepDir, p: &Prepared, queued: &BTreeSet<String>, dry_run: bool) -> Result<Action> {
    let name = &p.spec.name;
    if queued.contains(name) {
        return Ok(Action::Busy("queued or running in Slurm".into()));
    }
    let record = RunRecord::read(sweep, name)?;
    if let Some(pid) = record.as_ref().and_then(live_local_pid(name)) {
        return Ok(Action::Busy(format!("running in process {pid}")));
    }
    let dir = sweep.run_dir(name);
    if !dir.exists() {
        return Ok(Action::Fresh { moved_aside: None });
    }
    if record.as_ref().is_none_or(|r| r.fingerprint != p.fingerprint) {
        let stale = (1..).map(|n| dir.with_file_name(format!("{name}.stale-{n}"))).find(|c| !c.exists());
        let stale = stale.expect("an unused name");
        if !dry_run {
            std::fs::rename(&dir, &stale).map_err(io_err(&dir))?;
            tracing::info!("{name}: its config changed since it ran; the old run is now {}", stale.display());
        }
        return Ok(Action::Fresh { moved_aside: Some(stale) });
    }
    let layout = sweep.run_layout(name);
    Ok(match layout.phase() {
        RunPhase::Done => Action::Skip,
        _ if layout.resumable() => Action::Resume,
        _ => Action::Fresh { moved_aside: None },
    })
}

/// `Some(pid)` when the record's local process is alive on this host and is this run.
fn live_local_pid(name: &str) -> impl Fn(&RunRecord) -> Option<u32> + '_ {
    move |r| {
        let pid = r.pid?;
        if r.host.as_deref() != Some(hostname().as_str()) {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline).contains(name).then_some(pid)
    }
}

/// This machine's name, to tell a local run's process from one on another host.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| {
            let out = std::process::Command::new("hostname").output().ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The arguments of `mlae-cli` for one run; the same for every executor.
pub fn command_args(sweep: &SweepDir, p: &Prepared, action: &Action) -> Vec<String> {
    let mut args: Vec<String> = match action {
        Action::Resume => {
            vec!["finetune".into(), "--resume".into(), sweep.run_dir(&p.spec.name).display().to_string()]
        }
        _ => vec!["finetune".into(), "--config".into(), p.config.display().to_string(), "--force".into()],
    };
    if let Some(k) = p.stop_after_epoch {
        args.extend(["--stop-after-epoch".into(), k.to_string()]);
    }
    args
}

/// Records a launch before it happens.
pub fn record_start(
    sweep: &SweepDir,
    p: &Prepared,
    action: &Action,
    slurm_task: Option<String>,
) -> Result<()> {
    let old = RunRecord::read(sweep, &p.spec.name)?.filter(|r| r.fingerprint == p.fingerprint);
    let rec = RunRecord {
        fingerprint: p.fingerprint.clone(),
        attempts: old.map_or(0, |r| r.attempts) + 1,
        last_action: if *action == Action::Resume { "resume".into() } else { "fresh".into() },
        last_exit: None,
        pid: None,
        host: None,
        slurm_task,
    };
    rec.write(sweep, &p.spec.name)
}
