//! The method-specific part of the loop: DMLoRA's two stages. Everything DMLoRA needs from
//! the generic loop is here (the optimizer's parameter groups, the stage switch and the
//! per-group learning rates); the loop calls [`Session::log_stage_plan`],
//! [`Session::sync_stage`] and [`Session::group_lrs`] and knows nothing of DMLoRA. Other
//! kinds have one stage and one schedule.

use super::session::Session;
use crate::optim::ParamGroup;
use crate::schedule::LrSchedule;
use mlae_core::{AdapterKind, DmloraSpec};
use mlae_vit::{AdaptedVit, ParamRole};
use std::collections::HashMap;
use tch::Tensor;

/// The optimizer's parameter groups: `main` (head and adapter factors) and `scales`
/// (DMLoRA's per-layer scales), each parameter with its group index, and the role of each
/// parameter by name (stage 2 freezes by role).
#[allow(clippy::type_complexity)]
pub(super) fn param_groups(
    model: &AdaptedVit,
    weight_decay: f64,
) -> (Vec<ParamGroup>, Vec<(String, Tensor, usize)>, HashMap<String, ParamRole>) {
    let groups = vec![
        ParamGroup { name: "main".into(), weight_decay },
        ParamGroup { name: "scales".into(), weight_decay },
    ];
    let mut roles = HashMap::new();
    let params: Vec<(String, Tensor, usize)> = model
        .trainable()
        .into_iter()
        .map(|(name, t, role)| {
            let group = usize::from(role == ParamRole::BranchScale);
            roles.insert(name.clone(), role);
            (name, t, group)
        })
        .collect();
    (groups, params, roles)
}

impl Session {
    /// DMLoRA's settings when this run trains a dmlora adapter.
    pub(super) fn dmlora(&self) -> Option<&DmloraSpec> {
        (self.cfg.adapter.kind == AdapterKind::Dmlora).then_some(&self.cfg.adapter.dmlora)
    }

    fn is_stage2(&self, step: u64) -> bool {
        self.dmlora().is_some_and(|d| mlae_core::dmlora::in_stage2(d, step, self.total_steps))
    }

    /// Puts the model and optimizer in the stage of `step`. Both derive from the step alone,
    /// so a resumed run re-applies them here (the loop calls this at its first step) and
    /// crosses the switch at the same step as an uninterrupted one.
    ///
    /// Stage 2 freezes the branches twice over: `requires_grad` off, so autograd computes no
    /// gradient for them (the scales' and earlier layers' gradients still flow through), and
    /// the optimizer's frozen flag, so AdamW neither decays them nor moves their moments
    /// (tch cannot unset a gradient left over from stage 1; see [`AdamW::set_frozen`]).
    fn apply_stage(&mut self, step: u64) {
        let stage2 = self.is_stage2(step);
        let roles = &self.roles;
        let frozen = self.opt.set_frozen(stage2, |name| roles.get(name) == Some(&ParamRole::Adapter));
        for (_, t, role) in self.model.trainable() {
            if role == ParamRole::Adapter {
                let _ = t.set_requires_grad(!stage2);
            }
        }
        if stage2 {
            let start = self.dmlora().and_then(|d| mlae_core::dmlora::stage2_start_step(d, self.total_steps));
            let when = if start == Some(step) {
                format!("begins at step {step}")
            } else {
                format!("since step {} (resumed at step {step})", start.unwrap_or(step))
            };
            tracing::info!(
                "DMLoRA stage 2 {when} of {}: {frozen} branch tensors frozen, all branches on; the \
                 per-layer scales and the head train on",
                self.total_steps
            );
        }
    }

    /// Puts the model and optimizer in the stage of `step` when it differs from `current`
    /// (the stage in force in this process; `None` before its first step, so a resumed run
    /// applies its stage at once).
    pub(super) fn sync_stage(&mut self, step: u64, current: &mut Option<bool>) {
        if *current != Some(self.is_stage2(step)) {
            self.apply_stage(step);
            *current = Some(self.is_stage2(step));
        }
    }

    /// Learning rates of the optimizer's groups at `step` (see [`group_lrs`]).
    pub(super) fn group_lrs(&self, step: u64) -> [f64; 2] {
        group_lrs(&self.schedule, self.dmlora(), step)
    }

    /// DMLoRA: the first step of stage 2 when this run has passed it (for the summary).
    pub(super) fn stage2_step_reached(&self) -> Option<u64> {
        self.dmlora()
            .and_then(|d| mlae_core::dmlora::stage2_start_step(d, self.total_steps))
            .filter(|&s| s < self.state.step)
    }

    /// Logs DMLoRA's plan (drop probabilities, the stage switch) at the start of a run.
    pub(super) fn log_stage_plan(&self) {
        if let Some(d) = self.dmlora() {
            let p = |step| mlae_core::branch_drop_prob(d, step, self.total_steps);
            match mlae_core::dmlora::stage2_start_step(d, self.total_steps) {
                Some(s) => tracing::info!(
                    "DMLoRA: {} branches per layer, drop probability {:.3} at step 0 -> {:.3} at step {}; \
                 stage 2 (branches frozen, scales and head train) from step {s} of {}",
                    d.branches,
                    p(0),
                    p(s - 1),
                    s - 1,
                    self.total_steps
                ),
                None => tracing::info!(
                    "DMLoRA: {} branches per layer, drop probability {:.3} at step 0 -> {:.3} at the end; \
                 no stage 2 in {} steps",
                    d.branches,
                    p(0),
                    p(self.total_steps.saturating_sub(1)),
                    self.total_steps
                ),
            }
        }
    }
}

/// Learning rates of the optimizer's groups at `step`: `[main, scales]`, where "main" holds
/// the head and the adapter factors (DMLoRA's branches) and "scales" DMLoRA's per-layer
/// scales.
///
/// Both follow `schedule` except in DMLoRA's stage 2, where the branches are frozen, the head
/// stays on the main schedule, and the scales get their own rate: `stage2_lr` at the first
/// step of stage 2, then decaying with the main schedule's shape,
/// `stage2_lr * lr(step) / lr(stage2 start)`. So `stage2_lr` is the rate the scales have when
/// stage 2 begins (not a peak to be rescaled by how far the cosine has already decayed), and
/// leaving it unset is the same as setting it to the main rate at that step.
fn group_lrs(schedule: &LrSchedule, dmlora: Option<&DmloraSpec>, step: u64) -> [f64; 2] {
    let lr = schedule.lr_at(step);
    let scales = match dmlora {
        Some(d) if mlae_core::in_stage2(d, step, schedule.total_steps) => {
            let start = mlae_core::dmlora::stage2_start_step(d, schedule.total_steps).unwrap_or(step);
            let at_start = schedule.lr_at(start);
            match d.stage2_lr {
                Some(s2) if at_start > 0.0 => s2 * lr / at_start,
                Some(s2) => s2,
                None => lr,
            }
        }
        _ => lr,
    };
    [lr, scales]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage2_lr_is_the_scales_rate_when_stage_2_begins_then_decays_with_the_schedule() {
        let schedule = LrSchedule {
            kind: crate::schedule::ScheduleKind::Cosine,
            peak: 1e-3,
            min_lr: 1e-8,
            warmup_steps: 10,
            warmup_start: 1e-7,
            total_steps: 100,
        };
        let d = DmloraSpec { stage2_start: 0.8, stage2_lr: Some(0.05), ..Default::default() };
        let unset = DmloraSpec { stage2_lr: None, ..d.clone() };
        for step in 0..100 {
            let lr = schedule.lr_at(step);
            assert_eq!(group_lrs(&schedule, None, step), [lr, lr], "other kinds: one schedule");
            assert_eq!(group_lrs(&schedule, Some(&unset), step), [lr, lr], "stage2_lr unset: the main rate");
            let [main, scales] = group_lrs(&schedule, Some(&d), step);
            assert_eq!(main, lr, "the head and branches stay on the main schedule");
            if step < 80 {
                assert_eq!(scales, lr, "stage 1: the scales train with everything else");
            } else {
                // 0.05 at the switch, then the main schedule's decay
                let want = 0.05 * lr / schedule.lr_at(80);
                assert!((scales - want).abs() < 1e-15, "step {step}: {scales} vs {want}");
            }
        }
        assert!((group_lrs(&schedule, Some(&d), 80)[1] - 0.05).abs() < 1e-15);
        assert!(group_lrs(&schedule, Some(&d), 99)[1] < 0.05 * 0.01, "annealed by the end");
    }
}
