//! The training loop: config in, finished run directory out.
//!
//! Everything random is a pure function of (seed, step) or (seed, epoch): expert masks
//! (mlae-core's sampler), dropout and drop-path (libtorch's generator is re-seeded before
//! every step), the data order and augmentation. A run resumed from a checkpoint therefore
//! replays exactly what the uninterrupted run would have done.
//!
//! The loop is split by job: `session` builds everything a run needs and saves and restores
//! it (with `checkpointing`'s functions and the `state` they save), `train_loop` runs the
//! epochs, each batch through the one [`crate::step::TrainStep`], `stage` applies the method's
//! training schedule (its stages and per-role learning rates, from mlae-core), and `summary`
//! finishes the run. Imports run one way: `session` uses the leaf modules, and the loop and
//! the summary use `session`. Evaluation is [`crate::evaluator`]'s, shared with `eval`,
//! `export` and `analyze`.

mod checkpointing;
mod prefetch;
mod session;
mod stage;
mod state;
mod summary;
mod tensorboard;
mod train_loop;

pub use summary::Summary;

use crate::config::ExperimentConfig;
use crate::error::{Result, TrainError};
use crate::evaluator::load_run_config;
use crate::rundir::{RunDir, RunState};
use session::Session;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// How a run is started, beyond its config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overwrite an existing run directory.
    pub force: bool,
    /// Show a progress bar when stderr is a terminal.
    pub progress: bool,
    /// Set by a Ctrl-C handler: the loop writes a checkpoint and stops cleanly.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Behave as if interrupted once this many optimizer steps are done (counted from the
    /// start of the run, not of this process): a deterministic Ctrl-C for testing resume.
    pub interrupt_at_step: Option<u64>,
    /// Pause once this many epochs are done (fewer than the config's): score the validation
    /// split into `rungs.jsonl`, write `last` and stop with [`TrainError::Paused`]. The
    /// schedule stays the config's, so a resume continues exactly as if there had been no
    /// pause; successive halving trains its rungs this way.
    pub stop_after_epoch: Option<u64>,
}

/// Starts a new run from a config.
pub fn finetune(cfg: ExperimentConfig, opts: &RunOptions) -> Result<Summary> {
    // Refuse an occupied directory before any work, but create it only once the model and
    // data are known to fit, so a config that cannot run leaves nothing behind.
    RunDir::check_new(&cfg.run_dir(), opts.force)?;
    let mut session = Session::build(cfg, |cfg| {
        let run = RunDir::create(&cfg.run_dir(), opts.force)?;
        let hash = run.write_config(&cfg.to_toml())?;
        Ok((run, hash))
    })?;
    let layout = session.run.layout().clone();
    crate::ending::settle(&layout, || session.run(opts))
}

/// Continues a run from `checkpoints/last.safetensors` in its directory.
pub fn resume(run_dir: &Path, opts: &RunOptions) -> Result<Summary> {
    let run = RunDir::open(run_dir)?;
    // Under the lock, a `running` status is a dead process's: a resume that fails says so.
    let layout = run.layout().clone();
    crate::ending::settle(&layout, || resume_locked(run_dir, run, opts))
}

/// [`resume`] once the run directory is locked.
fn resume_locked(run_dir: &Path, run: RunDir, opts: &RunOptions) -> Result<Summary> {
    if let Some(s) = crate::rundir::read_status(run_dir)
        && s.state == RunState::Finished
        && run.summary_path().is_file()
    {
        tracing::info!("{} already finished; nothing to resume", run_dir.display());
        let text =
            std::fs::read_to_string(run.summary_path()).map_err(crate::error::io_err(run.summary_path()))?;
        return serde_json::from_str(&text).map_err(|e| TrainError::RunDir {
            path: run.summary_path(),
            message: format!("unreadable summary: {e}"),
        });
    }
    let cfg = load_run_config(run_dir)?;
    let text = std::fs::read_to_string(run.config_path()).map_err(crate::error::io_err(run.config_path()))?;
    let hash = crate::rundir::config_hash(&text);
    let mut session = Session::build(cfg, |_| Ok((run, hash)))?;
    let last = session.run.last_checkpoint();
    if last.is_file() {
        session.restore(&last).map_err(|e| match e {
            TrainError::Checkpoint { path, message } => {
                let best = session.run.best_checkpoint();
                let hint = if best.is_file() {
                    format!(
                        "to go on from the best epoch's checkpoint, copy {} over it and resume again; or start \
                         the run again with --force",
                        best.display()
                    )
                } else {
                    "start the run again with --force".into()
                };
                TrainError::Checkpoint { path, message: format!("{message}; {hint}") }
            }
            other => other,
        })?;
        tracing::info!(
            "resuming {} at step {} (epoch {})",
            run_dir.display(),
            session.state.step,
            session.state.epoch
        );
    } else {
        tracing::warn!("{} has no checkpoint yet; starting from step 0", run_dir.display());
    }
    session.run(opts)
}
