//! A method's training stages ([`TrainSchedule`]): which parameter roles train at a step, and
//! at which learning rate (the run's main learning-rate curve is mlae-train's `lr_schedule`).
//! The training loop asks the plan's schedule ([`crate::AdapterPlan::schedule`]) instead of
//! knowing any method, so a method with stages (DMLoRA's stage 2) needs no branch in the loop.
//!
//! The schedule is a function of (step, total steps) alone, so a resumed run re-derives its
//! stage and learning rates from the step it resumes at.

use crate::names::named_enum;
use serde::{Deserialize, Serialize};

/// What a trainable tensor is, so a schedule can treat groups differently (DMLoRA's stage 2
/// freezes `Adapter` tensors and keeps training `BranchScale` and `Head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamRole {
    /// The classification head.
    Head,
    /// Low-rank factors A and B.
    Adapter,
    /// MLAE's per-expert coefficients lambda.
    Coefficient,
    /// DMLoRA's per-layer scale s_l.
    BranchScale,
    /// A backbone weight (trainable only in `full` fine-tuning).
    Backbone,
}

named_enum!(ParamRole, "role", {
    Head => "head", Adapter => "adapter", Coefficient => "coefficient", BranchScale => "branch-scale",
    Backbone => "backbone",
});

/// Which roles train at a step, and each role's learning rate. The defaults are a one-stage
/// schedule where every trainable role follows the run's main learning-rate schedule; a
/// method overrides what it changes.
///
/// ```
/// use mlae_core::{AdapterSpec, ParamRole};
/// let plan = AdapterSpec::default().resolve(12).unwrap(); // MLAE: one stage
/// let s = plan.schedule();
/// assert_eq!(s.stage(99, 100), 0);
/// assert!(s.trains(ParamRole::Coefficient, 0));
/// assert_eq!(s.lr(ParamRole::Coefficient, 5, 100, &|step| 1e-3 / (1 + step) as f64), 1e-3 / 6.0);
/// ```
pub trait TrainSchedule {
    /// The stage at `step` of `total_steps`, from 0. A loop re-applies [`TrainSchedule::trains`]
    /// whenever this changes (and at the first step of every process, for resume).
    fn stage(&self, step: u64, total_steps: u64) -> usize {
        let _ = (step, total_steps);
        0
    }

    /// The first step of `stage`, when training reaches it within `total_steps`.
    fn stage_start(&self, stage: usize, total_steps: u64) -> Option<u64> {
        (stage == 0 && total_steps > 0).then_some(0)
    }

    /// Whether tensors of `role` train during `stage`. A tensor that does not train gets no
    /// gradient and no optimizer update (no weight decay, no moment update either).
    fn trains(&self, role: ParamRole, stage: usize) -> bool {
        let _ = (role, stage);
        true
    }

    /// Whether tensors of `role` train in some stage; those that never do are not counted as
    /// trainable parameters.
    fn ever_trains(&self, role: ParamRole) -> bool {
        let _ = role;
        true
    }

    /// The learning rate of `role` at `step`, given the run's main schedule `main(step)`.
    fn lr(&self, role: ParamRole, step: u64, total_steps: u64, main: &dyn Fn(u64) -> f64) -> f64 {
        let _ = (role, total_steps);
        main(step)
    }

    /// A line for the log when training starts, for schedules with something to say.
    fn describe(&self, total_steps: u64) -> Option<String> {
        let _ = total_steps;
        None
    }

    /// A line for the log when `stage` (> 0) is in force from `since` (`step` is where this
    /// process is: later than `since` after a resume).
    fn describe_stage(&self, stage: usize, since: u64, step: u64, total_steps: u64) -> String {
        let when = if since == step {
            format!("begins at step {step}")
        } else {
            format!("since step {since} (resumed at step {step})")
        };
        format!("stage {} {when} of {total_steps}", stage + 1)
    }
}
