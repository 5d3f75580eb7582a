//! `mlae-cli finetune`: train one run from a config, or resume one.

use anyhow::{Context, Result};
use clap::Args;
use mlae_train::TrainError;
use mlae_train::config;
use mlae_train::trainer::{self, RunOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// Experiment config (TOML). Repeat to layer fragments on a task config; later files win.
    #[arg(long = "config", value_name = "FILE")]
    pub configs: Vec<PathBuf>,
    /// Override a config key, e.g. --set train.lr=1e-3 --set adapter.mlae.expert_dropout=0.7.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue the run in DIR from its last checkpoint (its config.toml is used as is).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["configs", "set"])]
    pub resume: Option<PathBuf>,
    /// Overwrite an existing run directory.
    #[arg(long)]
    pub force: bool,
    /// Plain log lines instead of a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Act as if Ctrl-C came once N optimizer steps are done (checkpoint, exit 130); for
    /// testing resume deterministically.
    #[arg(long, value_name = "N", hide = true)]
    pub interrupt_at_step: Option<u64>,
    /// Pause once N epochs are done: score the validation split into rungs.jsonl, write a
    /// checkpoint and exit 0. The schedule stays the config's; `--resume` goes on as if there
    /// had been no pause (successive halving's rungs: `cargo xtask sweep --search halving`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_after_epoch: Option<u64>,
}

const HOW_TO_START: &str = "\
nothing to run: give a config or a run to resume.

  cargo xtask quickstart                                  # MLAE on a real pretrained ViT, a few minutes on CPU
  mlae-cli finetune --config configs/quickstart.toml      # the same, once `cargo xtask fetch-demo` has run
  mlae-cli finetune --config configs/vtab/cifar.toml --set data.root=DIR --set model.checkpoint=ViT-B_16.npz
  mlae-cli finetune --resume runs/quickstart              # continue an interrupted run

Configs live in configs/ (see configs/base/vtab.toml for every key).";

pub fn run(args: &FinetuneArgs) -> Result<ExitCode> {
    if args.configs.is_empty() && args.resume.is_none() {
        eprintln!("{HOW_TO_START}");
        return Ok(ExitCode::from(2));
    }
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    // The run's directory once known, so that a second interrupt can say how the run ended.
    let stopping: Arc<OnceLock<PathBuf>> = Arc::default();
    let dir = stopping.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without a checkpoint");
            if let Some(dir) = dir.get() {
                mlae_train::ending::mark_stopped(
                    &mlae_train::rundir::RunLayout::new(dir),
                    "stopped by a second interrupt without writing a checkpoint; --resume continues \
                     from the last checkpoint on disk",
                );
            }
            // `_exit`, not `std::process::exit`: the training threads are still inside libtorch,
            // and running its static destructors under them ended the process with SIGSEGV.
            // SAFETY: `_exit` ends the process at once; nothing after it runs.
            unsafe { libc::_exit(130) };
        }
        eprintln!("interrupt: finishing the step and writing a checkpoint (Ctrl-C again to abort)");
    })
    .context("cannot install the Ctrl-C handler")?;
    let opts = RunOptions {
        force: args.force,
        progress: !args.no_progress,
        interrupt: Some(interrupt),
        interrupt_at_step: args.interrupt_at_step,
        stop_after_epoch: args.stop_after_epoch,
    };
    let (run_dir, result) = match &args.resume {
        Some(dir) => {
            let _ = stopping.set(dir.clone());
            (dir.clone(), trainer::resume(dir, &opts))
        }
        None => {
            let cfg = config::load(&args.configs, &args.set)?;
            let dir = cfg.run_dir();
            let _ = stopping.set(dir.clone());
            (dir, trainer::finetune(cfg, &opts))
        }
    };
    // The run directory is created only once the model and data are known to fit, so it is
    // named only after the run, and only when it exists: a run that failed before it could
    // create it must not point there.
    match result {
        Ok(s) => {
            println!("run directory: {}", run_dir.display());
            println!(
                "trainable parameters: {} (adapter {}, head {}) of {}",
                s.trainable_params, s.adapter_params, s.head_params, s.total_params
            );
            println!(
                "{}, {} steps in {:.1}s ({:.1} train img/s, peak memory {:.0} MiB, {})",
                s.epochs_done(),
                s.steps,
                s.wall_seconds,
                s.train_images_per_s,
                s.peak_mem_mb,
                s.device
            );
            if let Some(b) = s.best_test_acc {
                println!(
                    "best test accuracy seen: {b:.4} at epoch {} (test-set selection, not an honest estimate)",
                    s.best_test_epoch.unwrap_or(0)
                );
            }
            if let (Some(v), Some(e)) = (s.best_val_acc, s.selected_epoch) {
                println!("selected epoch {e} on validation accuracy {v:.4}");
            }
            println!("test accuracy: {:.4}", s.test_acc);
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ TrainError::Paused { .. }) => {
            println!("run directory: {}", run_dir.display());
            println!("{e}; continue with: mlae-cli finetune --resume {}", shell_word(&run_dir));
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ TrainError::Interrupted { .. }) => {
            eprintln!("{e}; resume with: mlae-cli finetune --resume {}", shell_word(&run_dir));
            Ok(ExitCode::from(130))
        }
        Err(e) => {
            // A run that failed after creating its directory (a diverging loss, a failed write)
            // leaves its status and checkpoints there. A refused directory is named by the error.
            if run_dir.is_dir() && !matches!(e, TrainError::RunDir { .. }) {
                println!("run directory: {}", run_dir.display());
            }
            Err(e.into())
        }
    }
}

/// A path as one shell word, for a command line to copy: single-quoted when it holds anything
/// but letters, digits and `/._-+=:,@%`.
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(
            shell_word(Path::new("runs/demo/mnist5k-mlae-paper-s0")),
            "runs/demo/mnist5k-mlae-paper-s0"
        );
        assert_eq!(shell_word(Path::new("runs/my run")), "'runs/my run'");
        assert_eq!(shell_word(Path::new("it's")), r"'it'\''s'");
    }
}
