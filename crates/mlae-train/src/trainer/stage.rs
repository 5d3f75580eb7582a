//! The method's training schedule in the loop: the optimizer's parameter groups (one per
//! parameter role), the stage switch and the per-group learning rates. The loop calls
//! [`Session::log_stage_plan`], [`Session::sync_stage`] and [`Session::group_lrs`]; what they
//! do comes from the plan's [`TrainSchedule`] (mlae-core's method modules), so the loop knows
//! no method (DMLoRA's two stages are its schedule's; other methods have one stage and the
//! main learning rate).

use super::session::Session;
use crate::lr_schedule::LrSchedule;
use crate::optim::ParamGroup;
use mlae_core::TrainSchedule;
use mlae_vit::{AdaptedVit, ParamRole};
use std::collections::HashMap;
use tch::Tensor;

/// The optimizer's parameter groups, one per parameter role present (so the schedule can give
/// each role its rate), each parameter with its group index, the role of each parameter by name
/// (stages freeze by role) and the role of each group.
#[allow(clippy::type_complexity)]
pub(super) fn param_groups(
    model: &AdaptedVit,
    weight_decay: f64,
) -> (Vec<ParamGroup>, Vec<(String, Tensor, usize)>, HashMap<String, ParamRole>, Vec<ParamRole>) {
    let trainable = model.trainable();
    let group_roles: Vec<ParamRole> =
        ParamRole::ALL.iter().copied().filter(|r| trainable.iter().any(|(_, _, x)| x == r)).collect();
    let groups = group_roles.iter().map(|r| ParamGroup { name: r.to_string(), weight_decay }).collect();
    let mut roles = HashMap::new();
    let params: Vec<(String, Tensor, usize)> = trainable
        .into_iter()
        .map(|(name, t, role)| {
            let group = group_roles.iter().position(|&r| r == role).expect("a group per role");
            roles.insert(name.clone(), role);
            (name, t, group)
        })
        .collect();
    (groups, params, roles, group_roles)
}

impl Session {
    /// The method's training schedule (which roles train, each role's rate, the stages).
    fn method_schedule(&self) -> &dyn TrainSchedule {
        self.model.plan().schedule()
    }

    /// Puts the model and optimizer in the method's stage at `step`. Both derive from the
    /// step alone, so a resumed run re-applies them here (the loop calls this at its first
    /// step) and crosses a switch at the same step as an uninterrupted one.
    ///
    /// A role that does not train in the stage is frozen twice over: `requires_grad` off, so
    /// autograd computes no gradient for it (other tensors' gradients still flow through), and
    /// the optimizer's frozen flag, so AdamW neither decays it nor moves its moments (tch
    /// cannot unset a gradient left over from an earlier stage; see
    /// [`crate::optim::AdamW::set_frozen`]).
    fn apply_stage(&mut self, step: u64) {
        let total = self.total_steps;
        let schedule = self.model.plan().schedule();
        let stage = schedule.stage(step, total);
        let roles = &self.roles;
        let trains = |name: &str| roles.get(name).is_none_or(|&r| schedule.trains(r, stage));
        let frozen = self.opt.set_frozen(true, |name| !trains(name));
        self.opt.set_frozen(false, trains);
        for (_, t, role) in self.model.trainable() {
            let _ = t.set_requires_grad(schedule.trains(role, stage));
        }
        if stage > 0 {
            let since = schedule.stage_start(stage, total).unwrap_or(step);
            tracing::info!(
                "{} ({frozen} tensors frozen)",
                schedule.describe_stage(stage, since, step, total)
            );
        }
    }

    /// Puts the model and optimizer in the stage of `step` when it differs from `current`
    /// (the stage in force in this process; `None` before its first step, so a resumed run
    /// applies its stage at once).
    pub(super) fn sync_stage(&mut self, step: u64, current: &mut Option<usize>) {
        let stage = self.method_schedule().stage(step, self.total_steps);
        if *current != Some(stage) {
            self.apply_stage(step);
            *current = Some(stage);
        }
    }

    /// Learning rates of the optimizer's groups at `step` (see [`group_lrs`]).
    pub(super) fn group_lrs(&self, step: u64) -> Vec<f64> {
        group_lrs(self.method_schedule(), &self.group_roles, &self.schedule, step)
    }

    /// The first step of the method's second stage when this run has passed it (for the
    /// summary; DMLoRA's stage 2).
    pub(super) fn stage2_step_reached(&self) -> Option<u64> {
        self.method_schedule().stage_start(1, self.total_steps).filter(|&s| s < self.state.step)
    }

    /// Logs the method's plan over the run (DMLoRA: drop probabilities, the stage switch).
    pub(super) fn log_stage_plan(&self) {
        if let Some(line) = self.method_schedule().describe(self.total_steps) {
            tracing::info!("{line}");
        }
    }
}

/// Learning rates of the optimizer's groups at `step`, one group per role in `roles`: what
/// the method's schedule gives each role, given the run's main schedule (DMLoRA's scales get
/// their own rate in stage 2; every other role of every method follows `lr`).
fn group_lrs(method: &dyn TrainSchedule, roles: &[ParamRole], lr: &LrSchedule, step: u64) -> Vec<f64> {
    let main = |s: u64| lr.lr_at(s);
    roles.iter().map(|&r| method.lr(r, step, lr.total_steps, &main)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_rates_come_from_the_methods_schedule() {
        let schedule = LrSchedule {
            kind: crate::lr_schedule::ScheduleKind::Cosine,
            peak: 1e-3,
            min_lr: 1e-8,
            warmup_steps: 10,
            warmup_start: 1e-7,
            total_steps: 100,
        };
        let roles = [ParamRole::Head, ParamRole::Adapter, ParamRole::BranchScale];
        let dmlora = mlae_core::DmloraSpec { stage2_start: 0.8, stage2_lr: Some(0.05), ..Default::default() };
        let spec =
            mlae_core::AdapterSpec { kind: mlae_core::AdapterKind::Dmlora, dmlora, ..Default::default() };
        let dm = spec.resolve(2).unwrap();
        let mlae = mlae_core::AdapterSpec::default().resolve(2).unwrap();
        for step in 0..100 {
            let lr = schedule.lr_at(step);
            assert_eq!(group_lrs(mlae.schedule(), &roles, &schedule, step), [lr; 3], "one schedule");
            let got = group_lrs(dm.schedule(), &roles, &schedule, step);
            assert_eq!(got[..2], [lr, lr], "the head and branches stay on the main schedule");
            // stage 2: 0.05 at the switch, then the main schedule's decay
            let want = if step < 80 { lr } else { 0.05 * lr / schedule.lr_at(80) };
            assert!((got[2] - want).abs() < 1e-15, "step {step}: {} vs {want}", got[2]);
        }
    }
}
