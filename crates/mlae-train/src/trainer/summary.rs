//! The end of a run: `summary.json` (what the run produced, selected by its protocol), the
//! learning-curve plot and the final status.

use super::checkpointing::{load_params, restore_params, snapshot};
use super::session::Session;
use super::stage::stage2_step_reached;
use crate::config::Protocol;
use crate::error::Result;
use crate::metrics::EpochMetrics;
use crate::rundir::{RunState, Status, read_jsonl};
use std::collections::BTreeMap;

/// `summary.json` is a run-directory format (mlae-formats').
pub use mlae_formats::Summary;

impl Session {
    /// Redraws `curves.png` from `metrics.jsonl`; a plot that fails is a warning, not an error.
    pub(super) fn write_plot(&self) {
        let rows: Vec<EpochMetrics> = read_jsonl(&self.run.metrics_path())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect();
        if let Err(e) = crate::plot::plot_curves(&rows, &self.run.plot_path()) {
            tracing::warn!("could not draw {}: {e}", self.run.plot_path().display());
        }
    }

    /// Writes `summary.json` and marks the run finished.
    pub(super) fn finalize(&mut self) -> Result<Summary> {
        let test_split = self.cfg.test_split();
        let test_set = &self.evals.iter().find(|(s, _)| *s == test_split).expect("test split loaded").1;
        // The last epoch's test accuracy, from metrics when that epoch evaluated it.
        let rows: Vec<EpochMetrics> = read_jsonl(&self.run.metrics_path())?
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect();
        // A `max_steps` stop inside an epoch logged that epoch, numbered one past those done.
        let partial_epoch = (self.state.batch_in_epoch > 0).then_some(self.state.epoch + 1);
        let last_epoch = partial_epoch.unwrap_or(self.state.epoch);
        // The final weights' test confusion: kept from the last epoch's evaluation when that
        // epoch evaluated (not after a resume at the end), else measured now.
        let logged = rows.last().filter(|m| m.epoch == last_epoch).and_then(|m| m.eval.get(&test_split));
        let kept = self.test_confusion.take().filter(|(epoch, _)| *epoch == last_epoch).map(|(_, c)| c);
        let (final_test, final_confusion) = match (logged, kept) {
            (Some(r), Some(counts)) => (r.acc, counts),
            (logged, _) => {
                let out = self.evaluator.evaluate_split(&self.model, test_set, None);
                (logged.map_or(out.result.acc, |r| r.acc), out.confusion)
            }
        };
        let mut reported_confusion = final_confusion;
        let best_test = rows
            .iter()
            .filter_map(|m| m.eval.get(&test_split).map(|r| (r.acc, m.epoch)))
            .fold(None, |b: Option<(f64, u64)>, x| if b.is_none_or(|b| x.0 > b.0) { Some(x) } else { b });
        let mut notes = Vec::new();
        let (test_acc, best_val, selected) = match self.cfg.data.protocol {
            Protocol::Paper => {
                notes.push("protocol paper: trained on the train+val split; test_acc is the test accuracy after the last epoch".into());
                notes.push("best_test_acc is test-set selection (the best test accuracy seen during training), as the lineage's code reports; it is not an honest estimate".into());
                (final_test, None, None)
            }
            Protocol::Val => {
                let best = self.run.best_checkpoint();
                let selected_acc = if best.is_file() {
                    let current = snapshot(&self.model);
                    load_params(&self.model, &best)?;
                    let out = self.evaluator.evaluate_split(&self.model, test_set, None);
                    restore_params(&self.model, current);
                    reported_confusion = out.confusion;
                    out.result.acc
                } else {
                    final_test
                };
                notes.push(format!(
                    "protocol val: trained on {}, epoch selected on {}, test_acc is the test accuracy of the selected epoch",
                    self.cfg.train_split(),
                    self.cfg.val_split()
                ));
                (selected_acc, self.state.best_metric, self.state.best_epoch)
            }
        };
        let count = self.model.param_count();
        let info = mlae_vit::runtime::runtime_info();
        let mut versions = BTreeMap::new();
        versions.insert("mlae".into(), env!("CARGO_PKG_VERSION").into());
        versions.insert("libtorch".into(), info.libtorch_version.clone().unwrap_or_else(|| "unknown".into()));
        let summary = Summary {
            task: self.cfg.data.task.clone(),
            benchmark: format!("{:?}", self.cfg.data.benchmark).to_lowercase(),
            method: serde_json::to_value(self.cfg.adapter.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            protocol: self.cfg.data.protocol,
            test_acc,
            test_acc_final: final_test,
            best_test_acc: best_test.map(|b| b.0),
            best_test_epoch: best_test.map(|b| b.1),
            best_val_acc: best_val,
            selected_epoch: selected,
            epochs: self.state.epoch,
            steps: self.state.step,
            partial_epoch,
            trainable_params: count.trainable,
            adapter_params: count.adapter,
            head_params: count.head,
            total_params: count.total,
            wall_seconds: self.state.wall_seconds,
            train_images_per_s: self.state.train_images as f64 / self.state.train_seconds.max(1e-9),
            peak_mem_mb: self.state.peak_mem_mb,
            device: self.device_label.clone(),
            precision: self.cfg.train.precision,
            seed: self.cfg.train.seed,
            config_hash: self.state.config_hash.clone(),
            versions,
            notes,
            dmlora_stage2_step: stage2_step_reached(
                self.model.plan().schedule(),
                self.total_steps,
                self.state.step,
            ),
        };
        // Per-class results of the weights test_acc reports (the selected epoch's under `val`).
        crate::per_class::write_per_class(self.run.layout(), &test_split, &self.classes, reported_confusion)?;
        self.run.write_json(&self.run.summary_path(), &summary)?;
        self.write_plot();
        self.run.write_status(&Status {
            state: RunState::Finished,
            step: self.state.step,
            epoch: self.state.epoch,
            message: None,
        })?;
        Ok(summary)
    }
}
