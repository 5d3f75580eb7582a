//! The local executor: runs a sweep's runs on this machine, several at once, spread over
//! GPUs, and stops them cleanly on Ctrl-C.

use crate::decide::{Action, command_args, decide, hostname, record_start};
use crate::dir::{RunRecord, SweepDir};
use crate::error::{Result, SweepError, io_err};
use crate::prepare::Prepared;
use crate::slurm;
use mlae_formats::RunPhase;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
        tracing::info!(
            "sweep: {} ran, {} already done, {} failed, {} busy elsewhere",
            self.ran.len(),
            self.skipped,
            self.failed.len(),
            self.busy.len()
        );
        if self.interrupted {
            return Err(SweepError::Interrupted);
        }
        if !self.failed.is_empty() {
            let list: Vec<String> = self
                .failed
                .iter()
                .map(|(n, c)| format!("{n} (exit {})", c.map_or("by signal".into(), |c| c.to_string())))
                .collect();
            return Err(SweepError::RunsFailed { failed: list, logs: sweep.logs_dir() });
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
                tracing::warn!(
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
    /// A halving rung: the run is meant to pause, not finish.
    pauses: bool,
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
    /// Where runs start (the project root: relative paths in configs mean the same under
    /// every executor).
    pub workdir: PathBuf,
    pub jobs: usize,
    pub devices: Vec<String>,
}

/// Runs the given runs on this machine; a crashed run is reported and the others go on.
pub fn run_local(sweep: &SweepDir, runs: &[Prepared], opts: &LocalOptions) -> Result<Outcome> {
    let interrupts = interrupts();
    let mut outcome = Outcome::default();
    let mut queue: VecDeque<(&Prepared, Action)> = VecDeque::new();
    // Runs the same sweep has in Slurm's queue are not started here as well.
    let queued = slurm::active(&slurm::queue_states(sweep));
    for p in runs {
        match decide(sweep, p, &queued, false)? {
            Action::Skip => outcome.skipped += 1,
            Action::Busy(why) => {
                tracing::info!("skip  {} ({why})", p.spec.name);
                outcome.busy.push(p.spec.name.clone());
            }
            a => queue.push_back((p, a)),
        }
    }
    let jobs = opts.jobs.max(1);
    tracing::info!("sweep: {} to run, {} already done; {jobs} at a time", queue.len(), outcome.skipped);
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
                    tracing::info!(
                        "start {} ({}){}",
                        p.spec.name,
                        action.label(),
                        device_note(slot, &opts.devices)
                    );
                    running.push(Running {
                        name: p.spec.name.clone(),
                        pauses: p.stop_after_epoch.is_some(),
                        child,
                        slot,
                        signalled: 0,
                    });
                }
                Err(e) => {
                    tracing::warn!("FAILED {}: {e}", p.spec.name);
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
            let Some(status) = running[i].child.try_wait().map_err(io_err(&opts.cli))? else {
                i += 1;
                continue;
            };
            let r = running.swap_remove(i);
            free.push(r.slot);
            RunRecord::update(sweep, &r.name, |rec| rec.last_exit = status.code())?;
            let phase = sweep.run_layout(&r.name).phase();
            if status.success() && phase == RunPhase::Done {
                tracing::info!("done  {}", r.name);
                outcome.ran.push(r.name);
            } else if status.success() && r.pauses && phase == RunPhase::Paused {
                tracing::info!("paused {} (halving rung)", r.name);
                outcome.ran.push(r.name);
            } else if r.signalled > 0 {
                tracing::info!("stopped {} ({status}; resumable)", r.name);
            } else {
                let why = if status.success() {
                    "exited 0 without a finished (or, at a halving rung, paused) run directory".into()
                } else {
                    status.to_string()
                };
                tracing::warn!("FAILED {} ({why}); log: {}", r.name, sweep.log(&r.name).display());
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
    std::fs::create_dir_all(sweep.logs_dir()).map_err(io_err(sweep.logs_dir()))?;
    let mut log =
        std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io_err(&log_path))?;
    let args = command_args(sweep, p, action);
    writeln!(log, "=== {} {}", opts.cli.display(), args.join(" ")).map_err(io_err(&log_path))?;
    let mut cmd = Command::new(&opts.cli);
    let out = log.try_clone().map_err(io_err(&log_path))?;
    cmd.args(&args).current_dir(&opts.workdir).stdin(Stdio::null()).stdout(out).stderr(log);
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
    let child =
        cmd.spawn().map_err(|e| SweepError::Command(format!("cannot start {}: {e}", opts.cli.display())))?;
    let pid = child.id();
    RunRecord::update(sweep, &p.spec.name, |rec| {
        rec.pid = Some(pid);
        rec.host = Some(hostname());
    })?;
    Ok(child)
}
