//! The loop's position and running sums, saved in every checkpoint's metadata so that a
//! resumed run continues exactly where the interrupted one stopped.

use serde::{Deserialize, Serialize};

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
