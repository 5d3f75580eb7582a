//! What every executor shares (deciding whether a run is skipped, resumed or started, the
//! command line, the per-run state file) and the local executor.

use super::{Prepared, SweepDir, status};
use crate::util;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
        util::read_json(&sweep.state(name))
    }
}

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
            std::fs::rename(&dir, &stale).with_context(|| format!("cannot move {} aside", dir.display()))?;
            eprintln!("{name}: its config changed since it ran; the old run is now {}", stale.display());
        }
        return Ok(Action::Fresh { moved_aside: Some(stale) });
    }
    Ok(match status::run_state(&dir) {
        status::RunState::Done => Action::Skip,
        _ if dir.join("checkpoints/last.safetensors").is_file() && dir.join("config.toml").is_file() => {
            Action::Resume
        }
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

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| util::output(&mut Command::new("hostname")))
        .unwrap_or_default()
}

/// The arguments of `mlae-cli` for one run; the same for every executor.
pub fn command_args(sweep: &SweepDir, p: &Prepared, action: &Action) -> Vec<String> {
    match action {
        Action::Resume => {
            vec!["finetune".into(), "--resume".into(), sweep.run_dir(&p.spec.name).display().to_string()]
        }
        _ => vec!["finetune".into(), "--config".into(), p.config.display().to_string(), "--force".into()],
    }
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
    util::write_json(&sweep.state(&p.spec.name), &rec)
}

fn update_record(sweep: &SweepDir, name: &str, f: impl FnOnce(&mut RunRecord)) -> Result<()> {
    let mut rec = RunRecord::read(sweep, name)?.unwrap_or_default();
    f(&mut rec);
    util::write_json(&sweep.state(name), &rec)
}

/// How a local execution ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub ran: Vec<String>,
    pub skipped: usize,
    pub busy: Vec<String>,
    pub failed: Vec<(String, Option<i32>)>,
    pub interrupted: bool,
}

impl Outcome {
    pub fn absorb(&mut self, other: Outcome) {
        self.ran.extend(other.ran);
        self.skipped += other.skipped;
        self.busy.extend(other.busy);
        self.failed.extend(other.failed);
        self.interrupted |= other.interrupted;
    }

    pub fn into_result(self, sweep: &SweepDir) -> Result<()> {
        eprintln!(
            "sweep: {} ran, {} already done, {} failed, {} busy elsewhere",
            self.ran.len(),
            self.skipped,
            self.failed.len(),
            self.busy.len()
        );
        if self.interrupted {
            bail!("interrupted: run the same command again to resume (finished runs are skipped)");
        }
        if !self.failed.is_empty() {
            let list: Vec<String> = self
                .failed
                .iter()
                .map(|(n, c)| format!("{n} (exit {})", c.map_or("by signal".into(), |c| c.to_string())))
                .collect();
            bail!(
                "{} run(s) failed: {}; logs in {}",
                self.failed.len(),
                list.join(", "),
                sweep.root.join("logs").display()
            );
        }
        Ok(())
    }
}

/// Ctrl-C / SIGTERM count. The first stops launching and asks every run to checkpoint and
/// stop (one SIGINT each); a second is passed on too, which makes mlae-cli stop at once.
///
/// A plain signal handler, not a handler thread (the `ctrlc` crate's): the runs' parent-death
/// signal is tied to the thread that started them, and when the sweep is killed the kernel may
/// first hand them to another live thread of this process and signal them again as that thread
/// exits. With a second thread, a killed sweep sent most runs two SIGINTs (seen under load),
/// and mlae-cli takes the second as "stop now, without a checkpoint".
fn interrupts() -> &'static AtomicUsize {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    extern "C" fn on_signal(_: libc::c_int) {
        // Async-signal-safe: one atomic add.
        COUNT.fetch_add(1, Ordering::SeqCst);
    }
    INSTALLED.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction whose handler only touches an atomic; SA_RESTART keeps
            // the sweep's blocking calls (reading a child's output) going.
            let failed = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, std::ptr::null_mut()) != 0
            };
            if failed {
                eprintln!(
                    "warning: cannot install the interrupt handler: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    });
    &COUNT
}

struct Running {
    name: String,
    child: Child,
    slot: usize,
    signalled: usize,
}

/// Where and how many: `jobs` runs at once; with `devices`, slot i runs on device
/// `devices[i % len]` through CUDA_VISIBLE_DEVICES (the config keeps `device = "auto"`, so a
/// run resumed on another GPU keeps its fingerprint).
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub cli: PathBuf,
    pub jobs: usize,
    pub devices: Vec<String>,
}

/// Runs the given runs on this machine; a crashed run is reported and the others go on.
pub fn run_local(sweep: &SweepDir, runs: &[Prepared], opts: &LocalOptions) -> Result<Outcome> {
    let interrupts = interrupts();
    let mut outcome = Outcome::default();
    let mut queue: VecDeque<(&Prepared, Action)> = VecDeque::new();
    // Runs the same sweep has in Slurm's queue are not started here as well.
    let queued = super::slurm::active(&super::slurm::queue_states(sweep));
    for p in runs {
        match decide(sweep, p, &queued, false)? {
            Action::Skip => outcome.skipped += 1,
            Action::Busy(why) => {
                eprintln!("skip  {} ({why})", p.spec.name);
                outcome.busy.push(p.spec.name.clone());
            }
            a => queue.push_back((p, a)),
        }
    }
    let jobs = opts.jobs.max(1);
    eprintln!("sweep: {} to run, {} already done; {jobs} at a time", queue.len(), outcome.skipped);
    let mut running: Vec<Running> = Vec::new();
    let mut free: Vec<usize> = (0..jobs).rev().collect();
    loop {
        let seen = interrupts.load(Ordering::SeqCst);
        if seen > 0 {
            outcome.interrupted = true;
            queue.clear();
            for r in running.iter_mut().filter(|r| r.signalled < seen) {
                // Children run in their own process group, so this is the only SIGINT they get.
                // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
                unsafe { libc::kill(r.child.id() as libc::pid_t, libc::SIGINT) };
                r.signalled = seen;
            }
        }
        while let (Some(&slot), Some((p, action))) = (free.last(), queue.front().cloned()) {
            queue.pop_front();
            match spawn(sweep, p, &action, opts, slot) {
                Ok(child) => {
                    free.pop();
                    eprintln!(
                        "start {} ({}){}",
                        p.spec.name,
                        action.label(),
                        device_note(slot, &opts.devices)
                    );
                    running.push(Running { name: p.spec.name.clone(), child, slot, signalled: 0 });
                }
                Err(e) => {
                    eprintln!("FAILED {}: {e:#}", p.spec.name);
                    outcome.failed.push((p.spec.name.clone(), None));
                }
            }
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut i = 0;
        while i < running.len() {
            let Some(status) = running[i].child.try_wait()? else {
                i += 1;
                continue;
            };
            let r = running.swap_remove(i);
            free.push(r.slot);
            update_record(sweep, &r.name, |rec| rec.last_exit = status.code())?;
            let state = status::run_state(&sweep.run_dir(&r.name));
            if status.success() && state == status::RunState::Done {
                eprintln!("done  {}", r.name);
                outcome.ran.push(r.name);
            } else if r.signalled > 0 {
                eprintln!("stopped {} ({status}; resumable)", r.name);
            } else {
                let why = if status.success() {
                    "exited 0 without a finished run directory".into()
                } else {
                    status.to_string()
                };
                eprintln!("FAILED {} ({why}); log: {}", r.name, sweep.log(&r.name).display());
                outcome.failed.push((r.name, status.code()));
            }
        }
    }
    Ok(outcome)
}

fn device_note(slot: usize, devices: &[String]) -> String {
    if devices.is_empty() { String::new() } else { format!(" on GPU {}", devices[slot % devices.len()]) }
}

fn spawn(sweep: &SweepDir, p: &Prepared, action: &Action, opts: &LocalOptions, slot: usize) -> Result<Child> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    record_start(sweep, p, action, None)?;
    let log_path = sweep.log(&p.spec.name);
    std::fs::create_dir_all(sweep.root.join("logs"))?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let args = command_args(sweep, p, action);
    writeln!(log, "=== {} {}", opts.cli.display(), args.join(" "))?;
    let mut cmd = Command::new(&opts.cli);
    cmd.args(&args).current_dir(util::root()).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    if !opts.devices.is_empty() {
        cmd.env("CUDA_VISIBLE_DEVICES", &opts.devices[slot % opts.devices.len()]);
    }
    // Own process group: a Ctrl-C at the terminal reaches only the sweep, which passes one
    // SIGINT on. If the sweep dies (even by SIGKILL), the kernel sends the run SIGINT, so it
    // checkpoints and stops instead of running on unsupervised.
    let parent = std::process::id() as libc::pid_t;
    cmd.process_group(0);
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT as libc::c_ulong) != 0
                || libc::getppid() != parent
            {
                return Err(std::io::Error::other("the sweep exited before the run started"));
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("cannot start {}", opts.cli.display()))?;
    let pid = child.id();
    update_record(sweep, &p.spec.name, |rec| {
        rec.pid = Some(pid);
        rec.host = Some(hostname());
    })?;
    Ok(child)
}
