//! The method's training schedule in the loop: the stage switch and the per-group learning
//! rates. What they do comes from the plan's [`TrainSchedule`] (mlae-core's method modules),
//! so the loop knows no method (DMLoRA's two stages are its schedule's; other methods have one
//! stage and the main learning rate). The optimizer's groups (one per parameter role) are
//! [`crate::step::param_groups`]'.

use crate::lr_schedule::LrSchedule;
use crate::step::Optimizer;
use mlae_core::TrainSchedule;
use mlae_vit::{AdaptedVit, ParamRole};

/// Which stage of the method is in force in this process, and its switch.
#[derive(Debug, Default)]
pub(super) struct Stages {
    /// `None` before the first step of this process, so a resumed run applies its stage at once.
    current: Option<usize>,
}

impl Stages {
    /// Puts the model and optimizer in the method's stage at `step` when it differs from the
    /// one in force. Both derive from the step alone, so a resumed run re-applies them at its
    /// first step and crosses a switch at the same step as an uninterrupted one.
    ///
    /// A role that does not train in the stage is frozen twice over: `requires_grad` off, so
    /// autograd computes no gradient for it (other tensors' gradients still flow through), and
    /// the optimizer's frozen flag, so AdamW neither decays it nor moves its moments (tch
    /// cannot unset a gradient left over from an earlier stage; see
    /// [`crate::optim::AdamW::set_frozen`]).
    pub(super) fn sync(&mut self, model: &AdaptedVit, optim: &mut Optimizer, step: u64, total: u64) {
        let schedule = model.plan().schedule();
        let stage = schedule.stage(step, total);
        if self.current == Some(stage) {
            return;
        }
        self.current = Some(stage);
        let roles = &optim.roles;
        let trains = |name: &str| roles.get(name).is_none_or(|&r| schedule.trains(r, stage));
        let frozen = optim.opt.set_frozen(true, |name| !trains(name));
        optim.opt.set_frozen(false, trains);
        for (_, t, role) in model.trainable() {
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
}

/// The first step of the method's second stage when a run at `step` has passed it (for the
/// summary; DMLoRA's stage 2).
pub(super) fn stage2_step_reached(method: &dyn TrainSchedule, total: u64, step: u64) -> Option<u64> {
    method.stage_start(1, total).filter(|&s| s < step)
}

/// Logs the method's plan over the run (DMLoRA: drop probabilities, the stage switch).
pub(super) fn log_stage_plan(method: &dyn TrainSchedule, total: u64) {
    if let Some(line) = method.describe(total) {
        tracing::info!("{line}");
    }
}

/// Learning rates of the optimizer's groups at `step`, one group per role in `roles`: what
/// the method's schedule gives each role, given the run's main schedule (DMLoRA's scales get
/// their own rate in stage 2; every other role of every method follows `lr`).
pub(super) fn group_lrs(
    method: &dyn TrainSchedule,
    roles: &[ParamRole],
    lr: &LrSchedule,
    step: u64,
) -> Vec<f64> {
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
