//! Checkpoint save and restore for the loop: the trainable parameters, the optimizer's moments
//! and step counts, and the [`LoopState`], so that a resumed run continues exactly where the
//! interrupted one stopped. Free functions over the parts they touch, so the module knows no
//! session.

use super::state::LoopState;
use crate::checkpoint;
use crate::error::{Result, TrainError};
use crate::step::Optimizer;
use mlae_core::AdapterSpec;
use mlae_vit::AdaptedVit;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Tensor};

/// Writes the trainable parameters, the optimizer state and the loop state.
pub(super) fn save(
    path: &Path,
    model: &AdaptedVit,
    optim: &Optimizer,
    state: &LoopState,
    adapter: &AdapterSpec,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> =
        model.trainable().into_iter().map(|(n, t, _)| (format!("model.{n}"), t)).collect();
    let (moments, steps) = optim.opt.state();
    tensors.extend(moments.into_iter().map(|(n, t)| (format!("optim.{n}"), t)));
    let mut meta = HashMap::new();
    meta.insert("state".into(), serde_json::to_string(state).expect("state serialises"));
    meta.insert("optim_steps".into(), serde_json::to_string(&steps).expect("steps serialise"));
    meta.insert("adapter".into(), serde_json::to_string(adapter).expect("spec serialises"));
    checkpoint::save(path, &tensors, &meta)
}

/// Loads parameters and optimizer state from a checkpoint written for the config that hashes
/// to `config_hash`, returning its loop state.
pub(super) fn restore(
    path: &Path,
    model: &AdaptedVit,
    optim: &mut Optimizer,
    device: Device,
    config_hash: &str,
) -> Result<LoopState> {
    let loaded = checkpoint::load(path)?;
    let err = |message: String| TrainError::Checkpoint { path: path.to_path_buf(), message };
    let state: LoopState =
        serde_json::from_str(loaded.metadata.get("state").ok_or_else(|| err("no loop state".into()))?)
            .map_err(|e| err(format!("loop state: {e}")))?;
    if state.config_hash != config_hash {
        return Err(err(format!(
            "it was written for config {} but config.toml now hashes to {}: the config changed",
            short(&state.config_hash),
            short(config_hash)
        )));
    }
    checkpoint::copy_params(model, &loaded, path)?;
    let moments: HashMap<String, Tensor> = loaded
        .tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("optim.").map(|k| (k.to_string(), v.to_device(device))))
        .collect();
    let steps: HashMap<String, u64> = serde_json::from_str(
        loaded.metadata.get("optim_steps").ok_or_else(|| err("no optimizer step counts".into()))?,
    )
    .map_err(|e| err(format!("optimizer step counts: {e}")))?;
    optim.opt.load_state(&moments, &steps).map_err(err)?;
    Ok(state)
}

/// A copy of the trainable parameters, to put back with [`restore_params`].
pub(super) fn snapshot(model: &AdaptedVit) -> Vec<Tensor> {
    model.trainable().into_iter().map(|(_, t, _)| t.detach().copy()).collect()
}

/// Puts a [`snapshot`] back.
pub(super) fn restore_params(model: &AdaptedVit, snapshot: Vec<Tensor>) {
    tch::no_grad(|| {
        for ((_, mut t, _), s) in model.trainable().into_iter().zip(snapshot) {
            t.copy_(&s);
        }
    });
}

/// Copies the model parameters of a checkpoint into the model (not the optimizer).
pub(super) fn load_params(model: &AdaptedVit, path: &Path) -> Result<()> {
    checkpoint::copy_params(model, &checkpoint::load(path)?, path)
}

/// The first 12 characters of a config hash, for messages.
fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
