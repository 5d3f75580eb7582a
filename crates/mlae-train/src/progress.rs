//! Progress display: a bar with epoch, loss, accuracy, images/s and ETA on a terminal;
//! plain `tracing` lines (one per epoch) when stderr is not a terminal (CI, sweeps, logs).

use crate::metrics::EpochMetrics;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A bar of `len` units on stderr in the toolkit's one style (`what` follows the counts: the
/// unit and any `{msg}`), or `None` when stderr is not a terminal, where logs take its place.
pub(crate) fn terminal_bar(len: u64, what: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = format!("{{bar:30.cyan/blue}} {{pos}}/{{len}} {what} [{{elapsed_precise}} < {{eta}}]");
    bar.set_style(ProgressStyle::with_template(&template).expect("a valid template").progress_chars("=> "));
    Some(bar)
}

#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    epochs: u64,
}

impl Progress {
    /// `total_steps` over the whole run; `done` already completed (a resumed run).
    pub fn new(total_steps: u64, done: u64, epochs: u64, enabled: bool) -> Self {
        let bar = enabled.then(|| terminal_bar(total_steps, "steps {msg}")).flatten();
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
        Self { bar, epochs }
    }

    /// After each optimizer step.
    pub fn step(&self, step: u64, epoch: u64, loss: f64, acc: f64, images_per_s: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(format!(
                "epoch {}/{} loss {loss:.4} acc {acc:.3} {images_per_s:.1} img/s",
                epoch + 1,
                self.epochs
            ));
        }
    }

    /// After each epoch: one log line, above the bar on a terminal.
    pub fn epoch(&self, m: &EpochMetrics) {
        let evals: Vec<String> = m.eval.iter().map(|(k, v)| format!("{k} acc {:.4}", v.acc)).collect();
        let line = format!(
            "epoch {}/{} step {} loss {:.4} train acc {:.4} {} lr {:.3e} {:.1} img/s {:.1}s",
            m.epoch,
            self.epochs,
            m.step,
            m.train_loss,
            m.train_acc,
            evals.join(" "),
            m.lr,
            m.images_per_s,
            m.seconds
        );
        match &self.bar {
            Some(bar) => bar.suspend(|| tracing::info!("{line}")),
            None => tracing::info!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
