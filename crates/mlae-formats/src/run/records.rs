//! The records a run leaves in its directory: `status.json`, `summary.json` and the lines of
//! `metrics.jsonl`. The trainer writes these types and every tool reads them back as the
//! same types, so a field is named in one place.

use crate::config::{Precision, Protocol};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a run stands, as recorded in `status.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Finished,
    Failed,
    Interrupted,
    /// Stopped on purpose at the end of an epoch (`--stop-after-epoch`, a halving rung), with
    /// a checkpoint and a score on the validation split: resumable, not finished.
    Paused,
}

/// `status.json`: rewritten at each epoch and when the run stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: RunState,
    pub step: u64,
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Accuracy and loss on one split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub acc: f64,
    pub loss: f64,
    pub n: usize,
}

/// One line of `rungs.jsonl`: the validation score of a run paused at the end of `epoch`
/// (successive halving ranks runs on it). Kept apart from `metrics.jsonl` so that pausing
/// changes neither the run's epoch selection nor its results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RungScore {
    /// Epochs completed when the run paused (1-based).
    pub epoch: u64,
    pub step: u64,
    /// The split scored (the config's validation split).
    pub split: String,
    pub acc: f64,
    pub loss: f64,
}

/// One line of `metrics.jsonl`, written after each epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epochs completed (1-based).
    pub epoch: u64,
    /// Optimizer steps completed.
    pub step: u64,
    /// Learning rate of the main group at the last step of the epoch.
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    /// Evaluations run after this epoch, keyed by split name (`test`, `val200`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eval: BTreeMap<String, EvalResult>,
    /// Training throughput over the epoch.
    pub images_per_s: f64,
    /// Wall time of the epoch (training and evaluation).
    pub seconds: f64,
    /// Peak memory so far: process RSS on CPU, device memory in use on CUDA.
    pub peak_mem_mb: f64,
}

/// `summary.json`: what a run produced, how, and on what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub task: String,
    pub benchmark: String,
    pub method: String,
    pub protocol: Protocol,
    /// The accuracy this run reports: `paper` protocol: test accuracy after the last epoch;
    /// `val` protocol: test accuracy of the epoch selected on the validation split.
    pub test_acc: f64,
    /// Test accuracy after the last epoch (both protocols).
    pub test_acc_final: f64,
    /// The best test accuracy seen during training and its epoch. This is test-set
    /// selection, as the lineage's code reports it; it is not an honest estimate.
    pub best_test_acc: Option<f64>,
    pub best_test_epoch: Option<u64>,
    /// `val` protocol: the best validation accuracy and the epoch selected by it.
    pub best_val_acc: Option<f64>,
    pub selected_epoch: Option<u64>,
    /// Completed epochs.
    pub epochs: u64,
    pub steps: u64,
    /// The epoch `train.max_steps` ended the run inside (as `metrics.jsonl` numbers it: one
    /// past `epochs`); absent when the run ended at an epoch boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_epoch: Option<u64>,
    pub trainable_params: usize,
    pub adapter_params: usize,
    pub head_params: usize,
    pub total_params: usize,
    pub wall_seconds: f64,
    pub train_images_per_s: f64,
    pub peak_mem_mb: f64,
    pub device: String,
    pub precision: Precision,
    pub seed: u64,
    pub config_hash: String,
    pub versions: BTreeMap<String, String>,
    pub notes: Vec<String>,
    /// DMLoRA: the first step of stage 2 (branches frozen, only the per-layer scales and the
    /// head trained from there on); absent for other kinds and for runs that ended before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmlora_stage2_step: Option<u64>,
}

impl Summary {
    /// How far the run got, as the metrics number its epochs: `3 epochs`, or `epoch 1
    /// (partial)` and `2 epochs and epoch 3 (partial)` after a `max_steps` stop.
    pub fn epochs_done(&self) -> String {
        match self.partial_epoch {
            None => format!("{} epochs", self.epochs),
            Some(p) if self.epochs == 0 => format!("epoch {p} (partial)"),
            Some(p) => format!("{} epochs and epoch {p} (partial)", self.epochs),
        }
    }

    /// Trainable parameters outside the classification head (the paper's "# param").
    pub fn backbone_params(&self) -> usize {
        self.trainable_params.saturating_sub(self.head_params)
    }
}

/// Which of a run's two checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhichCheckpoint {
    /// The epoch with the best selection metric (test for `paper`, val for `val`).
    Best,
    /// The latest epoch (what a resumed run continues from).
    Last,
}

impl WhichCheckpoint {
    /// The checkpoint whose test accuracy a run reports: `best` for the `val` protocol (the
    /// selected epoch), `last` for `paper` (the final epoch).
    pub fn reported(protocol: crate::Protocol) -> Self {
        match protocol {
            crate::Protocol::Val => WhichCheckpoint::Best,
            crate::Protocol::Paper => WhichCheckpoint::Last,
        }
    }

    /// `best` or `last`, as in the file names and reports.
    pub fn name(self) -> &'static str {
        match self {
            WhichCheckpoint::Best => "best",
            WhichCheckpoint::Last => "last",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_metrics_round_trip_through_json() {
        let mut eval = BTreeMap::new();
        eval.insert("test".to_string(), EvalResult { acc: 0.5, loss: 1.25, n: 10 });
        let m = EpochMetrics {
            epoch: 3,
            step: 48,
            lr: 1e-3,
            train_loss: 0.75,
            train_acc: 0.8,
            eval,
            images_per_s: 12.5,
            seconds: 4.0,
            peak_mem_mb: 100.0,
        };
        let line = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<EpochMetrics>(&line).unwrap(), m);
    }

    /// Files written by earlier versions of the trainer keep reading: these are verbatim
    /// `status.json`, `metrics.jsonl` and `summary.json` contents of a quickstart run.
    #[test]
    fn files_of_existing_run_directories_still_read() {
        let status: Status =
            serde_json::from_str("{\n  \"state\": \"finished\",\n  \"step\": 160,\n  \"epoch\": 10\n}")
                .unwrap();
        assert_eq!(status, Status { state: RunState::Finished, step: 160, epoch: 10, message: None });
        assert_eq!(
            serde_json::to_string_pretty(&status).unwrap(),
            "{\n  \"state\": \"finished\",\n  \"step\": 160,\n  \"epoch\": 10\n}",
            "and are written byte for byte as before"
        );
        let line = r#"{"epoch":1,"step":16,"lr":0.001,"train_loss":2.2302,"train_acc":0.2,"eval":{"test":{"acc":0.5,"loss":1.5,"n":1000}},"images_per_s":40.0,"seconds":25.0,"peak_mem_mb":900.0}"#;
        let m: EpochMetrics = serde_json::from_str(line).unwrap();
        assert_eq!(m.eval["test"].n, 1000);
        assert_eq!(serde_json::to_string(&m).unwrap(), line);
        let summary = r#"{
  "task": "mnist5k",
  "benchmark": "demo",
  "method": "mlae",
  "protocol": "paper",
  "test_acc": 0.921,
  "test_acc_final": 0.921,
  "best_test_acc": 0.921,
  "best_test_epoch": 10,
  "best_val_acc": null,
  "selected_epoch": null,
  "epochs": 10,
  "steps": 160,
  "trainable_params": 150922,
  "adapter_params": 147456,
  "head_params": 3466,
  "total_params": 22207882,
  "wall_seconds": 120.5,
  "train_images_per_s": 80.25,
  "peak_mem_mb": 1024.0,
  "device": "cpu",
  "precision": "fp32",
  "seed": 0,
  "config_hash": "abc",
  "versions": {
    "libtorch": "2.11.0",
    "mlae": "0.1.0"
  },
  "notes": [
    "protocol paper"
  ]
}"#;
        let s: Summary = serde_json::from_str(summary).unwrap();
        assert_eq!((s.protocol, s.backbone_params()), (Protocol::Paper, 147_456));
        assert_eq!(serde_json::to_string_pretty(&s).unwrap(), summary);
    }
}
