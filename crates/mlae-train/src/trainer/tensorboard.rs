//! TensorBoard logging of a run: scalars per step (loss, learning rate) and per epoch
//! (training loss and accuracy, each evaluated split's accuracy and loss, images/s, peak
//! memory) into `<run>/tb/`. Logging never stops training: a write that fails is reported once
//! and logging turns off.

use crate::metrics::EpochMetrics;
use mlae_tensorboard::EventWriter;
use std::path::Path;

/// The run's event writer, if logging is on.
pub(super) struct TbLog {
    writer: Option<EventWriter>,
    /// Whether this process has logged yet: its first point is preceded by a restart marker.
    started: bool,
}

impl TbLog {
    /// A new event file in `dir` (a resumed run adds one beside the old ones).
    pub(super) fn open(dir: &Path) -> Self {
        match EventWriter::create(dir) {
            Ok(w) => Self { writer: Some(w), started: false },
            Err(e) => {
                tracing::warn!("TensorBoard logging is off: {e}");
                Self { writer: None, started: false }
            }
        }
    }

    /// Before this process's first point: a restart marker at `next_step`, the first step it
    /// trains (one past the checkpoint it resumed from). TensorBoard then drops the points at
    /// or after it that a process killed past its last checkpoint had logged, which this one
    /// logs again. For a new run there are none.
    fn mark_start(&mut self, next_step: u64) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        if let Some(w) = &mut self.writer
            && let Err(e) = w.add_session_start(next_step)
        {
            tracing::warn!("TensorBoard logging is off: {e}");
            self.writer = None;
        }
    }

    fn scalars(&mut self, step: u64, values: &[(String, f64)]) {
        let Some(w) = &mut self.writer else { return };
        for (tag, v) in values {
            if let Err(e) = w.add_scalar(tag, *v, step) {
                tracing::warn!("TensorBoard logging is off: {e}");
                self.writer = None;
                return;
            }
        }
    }

    /// After optimizer step `step` (1-based: the number of steps done).
    pub(super) fn step(&mut self, step: u64, loss: f64, lr: f64) {
        self.mark_start(step);
        self.scalars(step, &[("train/loss".into(), loss), ("train/lr".into(), lr)]);
    }

    /// After an epoch's metrics line; flushes, so a live TensorBoard sees the epoch.
    pub(super) fn epoch(&mut self, m: &EpochMetrics) {
        // first thing after a resume: the epoch its checkpoint ended, before any new step
        self.mark_start(m.step + 1);
        let mut v = vec![
            ("epoch/train_loss".to_string(), m.train_loss),
            ("epoch/train_acc".to_string(), m.train_acc),
            ("epoch/images_per_s".to_string(), m.images_per_s),
            ("epoch/peak_mem_mb".to_string(), m.peak_mem_mb),
        ];
        for (split, r) in &m.eval {
            v.push((format!("eval/{split}/acc"), r.acc));
            v.push((format!("eval/{split}/loss"), r.loss));
        }
        self.scalars(m.step, &v);
        self.flush();
    }

    pub(super) fn flush(&mut self) {
        if let Some(w) = &mut self.writer
            && let Err(e) = w.flush()
        {
            tracing::warn!("TensorBoard logging is off: {e}");
            self.writer = None;
        }
    }
}
