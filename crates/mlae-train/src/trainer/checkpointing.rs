//! Checkpoint save and restore: the loop state saved beside the parameters and optimizer
//! moments, so that a resumed run continues exactly where the interrupted one stopped.

use super::session::Session;
use crate::checkpoint;
use crate::error::{Result, TrainError};
use crate::evaluator::copy_params;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

/// Loop state saved in every checkpoint's metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct LoopState {
    pub(super) step: u64,
    /// Completed epochs.
    pub(super) epoch: u64,
    /// Batches done in the current (incomplete) epoch, with their running sums.
    pub(super) batch_in_epoch: usize,
    pub(super) epoch_loss_sum: f64,
    pub(super) epoch_correct: u64,
    pub(super) epoch_seen: u64,
    pub(super) epoch_train_seconds: f64,
    /// Best selection metric so far (test for `paper`, val for `val`) and its epoch.
    pub(super) best_metric: Option<f64>,
    pub(super) best_epoch: Option<u64>,
    pub(super) train_seconds: f64,
    pub(super) train_images: u64,
    pub(super) wall_seconds: f64,
    pub(super) peak_mem_mb: f64,
    pub(super) config_hash: String,
}

impl Session {
    /// Loads parameters, optimizer state and loop state from a checkpoint.
    pub(super) fn restore(&mut self, path: &Path) -> Result<()> {
        let loaded = checkpoint::load(path)?;
        let err = |message: String| TrainError::Checkpoint { path: path.to_path_buf(), message };
        let state: LoopState =
            serde_json::from_str(loaded.metadata.get("state").ok_or_else(|| err("no loop state".into()))?)
                .map_err(|e| err(format!("loop state: {e}")))?;
        if state.config_hash != self.state.config_hash {
            return Err(err(format!(
                "it was written for config {} but config.toml now hashes to {}: the config changed",
                short(&state.config_hash),
                short(&self.state.config_hash)
            )));
        }
        copy_params(&self.model, &loaded, path)?;
        let optim: HashMap<String, Tensor> = loaded
            .tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("optim.").map(|k| (k.to_string(), v.to_device(self.device))))
            .collect();
        let steps: HashMap<String, u64> = serde_json::from_str(
            loaded.metadata.get("optim_steps").ok_or_else(|| err("no optimizer step counts".into()))?,
        )
        .map_err(|e| err(format!("optimizer step counts: {e}")))?;
        self.opt.load_state(&optim, &steps).map_err(err)?;
        let epoch = state.epoch;
        if path == self.run.last_checkpoint() {
            self.last_saved_step.set(Some(state.step));
        }
        self.state = state;
        self.run.retain_metrics(|v| v["epoch"].as_u64().is_some_and(|e| e <= epoch))?;
        Ok(())
    }

    /// Writes the trainable parameters, the optimizer state and the loop state.
    pub(super) fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> =
            self.model.trainable().into_iter().map(|(n, t, _)| (format!("model.{n}"), t)).collect();
        let (optim, steps) = self.opt.state();
        tensors.extend(optim.into_iter().map(|(n, t)| (format!("optim.{n}"), t)));
        let mut meta = HashMap::new();
        meta.insert("state".into(), serde_json::to_string(&self.state).expect("state serialises"));
        meta.insert("optim_steps".into(), serde_json::to_string(&steps).expect("steps serialise"));
        meta.insert("adapter".into(), serde_json::to_string(&self.cfg.adapter).expect("spec serialises"));
        checkpoint::save(path, &tensors, &meta)?;
        if path == self.run.last_checkpoint() {
            self.last_saved_step.set(Some(self.state.step));
        }
        Ok(())
    }

    /// Which checkpoint on disk is the last finite one, for the error of a run that stops on
    /// a NaN or infinity (training checks every step, so `last` never holds one).
    pub(super) fn last_good_note(&self) -> String {
        let last = self.run.last_checkpoint();
        match self.last_saved_step.get() {
            Some(step) if last.is_file() => format!(
                "the last finite checkpoint is {} (step {step}); nothing was written after it",
                last.display()
            ),
            _ if last.is_file() => format!("the last finite checkpoint is {}", last.display()),
            _ => "no checkpoint had been written yet, so there is nothing to resume: fix the config and \
                  start again with --force"
                .into(),
        }
    }

    /// A copy of the trainable parameters, to put back with [`Session::restore_params`].
    pub(super) fn model_snapshot(&self) -> Vec<Tensor> {
        self.model.trainable().into_iter().map(|(_, t, _)| t.detach().copy()).collect()
    }

    pub(super) fn restore_params(&self, snapshot: Vec<Tensor>) {
        tch::no_grad(|| {
            for ((_, mut t, _), s) in self.model.trainable().into_iter().zip(snapshot) {
                t.copy_(&s);
            }
        });
    }

    /// Copies the model parameters of a checkpoint into the model (not the optimizer).
    pub(super) fn load_params(&self, path: &Path) -> Result<()> {
        copy_params(&self.model, &checkpoint::load(path)?, path)
    }
}

/// The first 12 characters of a config hash, for messages.
fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
