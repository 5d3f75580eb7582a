//! The one training step: forward, loss, backward, clipping, the optimizer update and the
//! non-finite check, with the step's own seeding. The trainer, `mlae-cli bench` and the GPU
//! check all run this, so a speed figure is the speed of the step a real run takes.
//!
//! The batch is the caller's (the trainer indexes its resident split or augments on the CPU;
//! the benchmark indexes random or pattern images), and so is the learning rate of each group.
//! [`param_groups`] builds the optimizer the trainer uses: one group per parameter role, so a
//! method's schedule can give each role its rate.

use crate::optim::{AdamW, AdamWConfig, ParamGroup};
use mlae_vit::{AdaptedVit, ForwardCtx, ParamRole};
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// What a step needs beyond the model and the batch: the recipe's loss and update settings
/// (`train.seed`, `train.label_smoothing`, `train.grad_clip`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainStep {
    /// The run's seed: libtorch's generator is re-seeded from (seed, step) before every step,
    /// so dropout and drop-path replay exactly on resume.
    pub seed: u64,
    pub label_smoothing: f64,
    /// Clip the global gradient norm to this, if set.
    pub grad_clip: Option<f64>,
}

/// What one step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// The batch's mean loss (before the update).
    pub loss: f64,
    /// Correctly classified images of the batch (before the update).
    pub correct: u64,
}

/// A step that went non-finite: `what` names the loss or the first tensor (gradient, parameter
/// or moment) that holds a NaN or an infinity. Nothing non-finite can be checkpointed after it.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFinite {
    pub what: String,
}

impl TrainStep {
    /// Runs the training step `ctx` says (`ForwardCtx::train(step, total_steps)`) on the batch
    /// `x` (preprocessed images) with labels `y`, each optimizer group at its rate in `lrs`.
    pub fn run(
        &self,
        model: &AdaptedVit,
        opt: &mut AdamW,
        (x, y): (&Tensor, &Tensor),
        ctx: ForwardCtx,
        lrs: &[f64],
    ) -> Result<StepOutcome, NonFinite> {
        tch::manual_seed(step_seed(self.seed, ctx.step));
        let logits = model.forward_t(x, &ctx).to_kind(Kind::Float);
        let loss =
            logits.cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, -100, self.label_smoothing);
        opt.zero_grad();
        loss.backward();
        if let Some(c) = self.grad_clip {
            opt.clip_grad_norm_(c);
        }
        opt.step(lrs);
        // One read per step, after the update: the loss, the accuracy count and whether every
        // gradient, parameter and moment is finite, together. Every step checks, so a NaN or
        // infinity stops the run before anything non-finite can be checkpointed.
        let read = tch::no_grad(|| {
            let correct = logits.argmax(-1, false).eq_tensor(y).sum(Kind::Float);
            Tensor::stack(&[loss.detach(), correct, opt.all_finite().to_kind(Kind::Float)], 0)
        });
        let [loss_value, correct, finite] = mlae_vit::transfer::read_f64(&read)[..] else {
            unreachable!("three values were stacked")
        };
        if !loss_value.is_finite() {
            return Err(NonFinite { what: format!("the loss became non-finite ({loss_value})") });
        }
        if finite == 0.0 {
            // the slow path names the tensor (more reads; the run stops here anyway)
            let what = opt.first_non_finite().unwrap_or_else(|| "a trainable tensor".into());
            return Err(NonFinite { what: format!("{what} became non-finite") });
        }
        Ok(StepOutcome { loss: loss_value, correct: correct as u64 })
    }
}

/// The optimizer of a model's trainable tensors as the trainer builds it.
#[derive(Debug)]
pub struct Optimizer {
    pub opt: AdamW,
    /// Role of each optimizer parameter, by name (the method's stages freeze by role).
    pub roles: HashMap<String, ParamRole>,
    /// The role of each optimizer group, in group order.
    pub group_roles: Vec<ParamRole>,
}

/// AdamW over the model's trainable tensors, one parameter group per role present (so the
/// method's schedule can give each role its rate), every group with `weight_decay`.
pub fn param_groups(model: &AdaptedVit, weight_decay: f64) -> Optimizer {
    let trainable = model.trainable();
    let group_roles: Vec<ParamRole> =
        ParamRole::ALL.iter().copied().filter(|r| trainable.iter().any(|(_, _, x)| x == r)).collect();
    let groups: Vec<ParamGroup> =
        group_roles.iter().map(|r| ParamGroup { name: r.to_string(), weight_decay }).collect();
    let mut roles = HashMap::new();
    let params: Vec<(String, Tensor, usize)> = trainable
        .into_iter()
        .map(|(name, t, role)| {
            let group = group_roles.iter().position(|&r| r == role).expect("a group per role");
            roles.insert(name.clone(), role);
            (name, t, group)
        })
        .collect();
    Optimizer { opt: AdamW::new(AdamWConfig::default(), groups, params), roles, group_roles }
}

/// The libtorch seed of step `step` of a run seeded `seed`.
pub fn step_seed(seed: u64, step: u64) -> i64 {
    (mix(seed, step) & i64::MAX as u64) as i64
}

/// SplitMix64 of (seed, x) (mlae-core's finaliser): decorrelated seeds for epochs and steps.
pub(crate) fn mix(seed: u64, x: u64) -> u64 {
    mlae_core::rng::mix64(seed ^ x.wrapping_mul(mlae_core::rng::GOLDEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_the_splitmix64_the_data_order_always_used() {
        let former = |seed: u64, x: u64| {
            let mut z = seed ^ x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        for (seed, x) in [(0, 0), (0, 0x5eed_0000), (3, 17), (u64::MAX, 12_345)] {
            assert_eq!(mix(seed, x), former(seed, x));
        }
        // the trainer's former `mix(seed, step) as i64 & i64::MAX`
        for (seed, step) in [(0, 0), (7, 123), (u64::MAX, 1)] {
            assert_eq!(step_seed(seed, step), mix(seed, step) as i64 & i64::MAX);
        }
    }

    /// The step's host traffic, counted where it happens (`mlae_vit::transfer`): one read per
    /// step (loss, accuracy and the finite flag together) and at most one upload (the forward's
    /// table of mask scales or branch weights), for every adapter kind, with clipping on.
    #[test]
    fn a_step_reads_once_and_uploads_at_most_once_for_every_kind() {
        use mlae_core::{AdapterKind, AdapterSpec, MlaeSpec, TargetLayer};
        use mlae_vit::transfer::Transfers;
        use mlae_vit::{Preset, VitConfig};
        use tch::Device;
        let mut vit = VitConfig::from_preset(Preset::VitTi16, 16, 5);
        (vit.patch_size, vit.dim, vit.depth, vit.heads, vit.mlp_dim) = (8, 32, 2, 2, 64);
        for &kind in AdapterKind::ALL {
            let spec = AdapterSpec {
                kind,
                targets: vec![TargetLayer::Qkv, TargetLayer::Fc1],
                mlae: MlaeSpec { experts: 4, expert_dropout: 0.5, ..Default::default() },
                ..Default::default()
            };
            let model = AdaptedVit::new(&vit, &spec, 3, Device::Cpu).unwrap();
            let mut optim = param_groups(&model, 1e-4);
            let lrs = vec![1e-3; optim.group_roles.len()];
            let step = TrainStep { seed: 0, label_smoothing: 0.1, grad_clip: Some(1.0) };
            tch::manual_seed(1);
            let x = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
            let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
            for s in 0..3 {
                let before = Transfers::now();
                let out = step.run(&model, &mut optim.opt, (&x, &y), ForwardCtx::train(s, 3), &lrs).unwrap();
                let t = Transfers::now().since(before);
                assert!(out.loss.is_finite() && out.correct <= 4, "{kind}");
                assert_eq!(t.reads, 1, "{kind}, step {s}: host reads");
                assert!(t.uploads <= 1, "{kind}, step {s}: {} uploads", t.uploads);
            }
        }
    }

    /// The trainer's step with the flat optimizer against the same step with the per-tensor
    /// optimizer it replaced, on a small model with three groups (adapter, coefficient, head) at
    /// different rates, clipping that bites and the adapters frozen for the last steps (as
    /// DMLoRA's stage 2 does): the same losses and the same tensors, exactly.
    #[test]
    fn the_step_trains_exactly_as_with_the_per_tensor_optimizer() {
        use crate::optim::reference::PerTensorAdamW;
        use mlae_core::{AdapterKind, AdapterSpec, MlaeSpec, TargetLayer};
        use mlae_vit::{Preset, VitConfig};
        use tch::Device;
        let mut vit = VitConfig::from_preset(Preset::VitTi16, 16, 5);
        (vit.patch_size, vit.dim, vit.depth, vit.heads, vit.mlp_dim) = (8, 32, 2, 2, 64);
        let spec = AdapterSpec {
            kind: AdapterKind::Mlae,
            targets: vec![TargetLayer::Qkv, TargetLayer::Fc1],
            mlae: MlaeSpec { experts: 4, expert_dropout: 0.5, ..Default::default() },
            ..Default::default()
        };
        let model = AdaptedVit::new(&vit, &spec, 3, Device::Cpu).unwrap();
        let twin = AdaptedVit::new(&vit, &spec, 3, Device::Cpu).unwrap();
        let mut optim = param_groups(&model, 0.05);
        assert!(optim.group_roles.len() >= 3, "{:?}", optim.group_roles);
        let groups = optim.opt.groups().to_vec();
        let params = twin
            .trainable()
            .into_iter()
            .map(|(n, t, role)| (n, t, optim.group_roles.iter().position(|&r| r == role).unwrap()))
            .collect();
        let mut reference = PerTensorAdamW::new(AdamWConfig::default(), groups, params);
        let step = TrainStep { seed: 5, label_smoothing: 0.1, grad_clip: Some(0.05) };
        tch::manual_seed(1);
        let x = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
        let lrs: Vec<f64> = (0..optim.group_roles.len()).map(|g| 1e-3 * (g + 1) as f64).collect();
        let total = 6;
        let mut clipped = 0;
        for s in 0..total {
            if s == 4 {
                let adapter = |n: &str| optim.roles[n] == ParamRole::Adapter;
                optim.opt.set_frozen(true, adapter);
                reference.set_frozen(true, adapter);
            }
            let out = step.run(&model, &mut optim.opt, (&x, &y), ForwardCtx::train(s, total), &lrs).unwrap();
            // the same step, written out with the per-tensor optimizer
            tch::manual_seed(step_seed(step.seed, s));
            let logits = twin.forward_t(&x, &ForwardCtx::train(s, total)).to_kind(Kind::Float);
            let loss = logits.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, 0.1);
            reference.zero_grad();
            loss.backward();
            let norm = reference.clip_grad_norm_(0.05).unwrap().double_value(&[]);
            clipped += usize::from(norm > 0.05);
            reference.step(&lrs);
            assert_eq!(out.loss, loss.double_value(&[]), "step {s}: loss");
            for ((n, a, _), (_, b, _)) in model.trainable().into_iter().zip(twin.trainable()) {
                assert!(a.equal(&b), "step {s}: {n}");
            }
        }
        assert!(clipped > 0, "the test should clip");
    }

    /// A NaN is still caught and named, now from the one read.
    #[test]
    fn a_non_finite_step_still_names_what_went_non_finite() {
        use mlae_core::AdapterSpec;
        use mlae_vit::{Preset, VitConfig};
        use tch::Device;
        let mut vit = VitConfig::from_preset(Preset::VitTi16, 16, 5);
        (vit.patch_size, vit.dim, vit.depth, vit.heads, vit.mlp_dim) = (8, 32, 2, 2, 64);
        let model = AdaptedVit::new(&vit, &AdapterSpec::default(), 3, Device::Cpu).unwrap();
        let mut optim = param_groups(&model, 0.0);
        let lrs = vec![1e-3; optim.group_roles.len()];
        let step = TrainStep { seed: 0, label_smoothing: 0.0, grad_clip: None };
        let x = Tensor::full([2, 3, 16, 16], f64::NAN, (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1]);
        let err = step.run(&model, &mut optim.opt, (&x, &y), ForwardCtx::train(0, 1), &lrs).unwrap_err();
        assert!(err.what.contains("the loss became non-finite"), "{}", err.what);
    }
}
