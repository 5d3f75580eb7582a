//! AdamW over the trainable parameters, with state that can be saved and restored.
//!
//! Why our own: tch's optimizer wraps libtorch's C++ optimizers but cannot save or load
//! their moments, and a resumed run must continue exactly where it stopped. The update is
//! PyTorch's `torch.optim.AdamW` (decoupled weight decay, bias correction, per-parameter
//! step counts, parameters without a gradient skipped), checked against it by a golden
//! fixture.

use std::collections::HashMap;
use tch::{Kind, Tensor};

/// How [`AdamW::first_non_finite`] names each of a parameter's tensors (before and after its
/// name).
const NON_FINITE_WHAT: [(&str, &str); 4] = [
    ("the gradient of", ""),
    ("the parameter", " itself"),
    ("the optimizer's first moment (exp_avg) of", ""),
    ("the optimizer's second moment (exp_avg_sq) of", ""),
];

/// Hyper-parameters shared by every group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// A parameter group: its own weight decay; its learning rate is given at each step.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    pub name: String,
    pub weight_decay: f64,
}

struct Param {
    name: String,
    tensor: Tensor,
    group: usize,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Updates this parameter received (PyTorch's per-parameter `state['step']`).
    steps: u64,
    /// Frozen parameters are skipped entirely (no decay, no moment update).
    frozen: bool,
}

/// AdamW with parameter groups.
pub struct AdamW {
    cfg: AdamWConfig,
    groups: Vec<ParamGroup>,
    params: Vec<Param>,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("cfg", &self.cfg)
            .field("groups", &self.groups)
            .field("params", &self.params.len())
            .finish()
    }
}

impl AdamW {
    /// `params`: (unique name, tensor, group index).
    pub fn new(cfg: AdamWConfig, groups: Vec<ParamGroup>, params: Vec<(String, Tensor, usize)>) -> Self {
        let params = params
            .into_iter()
            .map(|(name, tensor, group)| {
                assert!(group < groups.len(), "parameter {name} names group {group} of {}", groups.len());
                let exp_avg = Tensor::zeros_like(&tensor).detach();
                let exp_avg_sq = Tensor::zeros_like(&tensor).detach();
                Param { name, tensor, group, exp_avg, exp_avg_sq, steps: 0, frozen: false }
            })
            .collect();
        Self { cfg, groups, params }
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Freezes (or thaws) the parameters whose name matches; returns how many matched.
    ///
    /// Why explicit: tch can only zero a gradient, not unset it, so a parameter that stops
    /// taking part in the loss would otherwise still get weight decay and moment updates
    /// (PyTorch skips parameters whose gradient is `None`). DMLoRA's stage 2 uses this.
    pub fn set_frozen(&mut self, frozen: bool, matches: impl Fn(&str) -> bool) -> usize {
        let mut n = 0;
        for p in self.params.iter_mut().filter(|p| matches(&p.name)) {
            p.frozen = frozen;
            n += 1;
        }
        n
    }

    /// Zeroes every gradient (tch cannot unset one; see [`AdamW::set_frozen`]).
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// Total L2 norm of the gradients of the parameters being trained; when above
    /// `max_norm`, scales them down to it (PyTorch's `clip_grad_norm_`). Returns the norm
    /// before clipping.
    ///
    /// Frozen parameters are left out, as PyTorch leaves out parameters whose gradient is
    /// `None`: their stale (zeroed) gradients would otherwise join the reduction in one
    /// process and not in another (a run resumed after DMLoRA's stage switch has none), and
    /// the norm could differ in its last bits.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        self.clip_grad_norm_(max_norm).map_or(0.0, |t| mlae_vit::transfer::read_f64(&t)[0])
    }

    /// [`AdamW::clip_grad_norm`] without reading anything back: the norm stays on the device
    /// (`None` when no gradient is being trained) and the gradients are scaled by
    /// `min(1, max_norm / (norm + 1e-6))` there, as PyTorch's `clip_grad_norm_` does (a
    /// non-finite norm makes the gradients non-finite, which the step's finite check reports).
    pub fn clip_grad_norm_(&mut self, max_norm: f64) -> Option<Tensor> {
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .filter(|p| !p.frozen)
            .map(|p| p.tensor.grad())
            .filter(|g| g.defined())
            .collect();
        if grads.is_empty() {
            return None;
        }
        tch::no_grad(|| {
            let norms: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).norm()).collect();
            let total = Tensor::stack(&norms, 0).norm();
            if max_norm > 0.0 {
                let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
                for mut g in grads {
                    let _ = g.g_mul_(&coef.to_kind(g.kind()));
                }
            }
            Some(total)
        })
    }

    /// One update; `lrs[g]` is the learning rate of group `g` for this step.
    pub fn step(&mut self, lrs: &[f64]) {
        assert_eq!(lrs.len(), self.groups.len(), "one learning rate per group");
        let AdamWConfig { beta1, beta2, eps } = self.cfg;
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.tensor.grad();
                if p.frozen || !grad.defined() {
                    continue;
                }
                p.steps += 1;
                let lr = lrs[p.group];
                let wd = self.groups[p.group].weight_decay;
                if wd != 0.0 {
                    let _ = p.tensor.g_mul_scalar_(1.0 - lr * wd);
                }
                let _ = p.exp_avg.lerp_(&grad, 1.0 - beta1);
                let _ = p.exp_avg_sq.g_mul_scalar_(beta2);
                let _ = p.exp_avg_sq.addcmul_(&(&grad * (1.0 - beta2)), &grad);
                let t = p.steps as i32;
                let bias_correction1 = 1.0 - beta1.powi(t);
                let bias_correction2_sqrt = (1.0 - beta2.powi(t)).sqrt();
                let step_size = lr / bias_correction1;
                let denom = (p.exp_avg_sq.sqrt() / bias_correction2_sqrt) + eps;
                let _ = p.tensor.addcdiv_(&(&p.exp_avg * -step_size), &denom);
            }
        });
    }

    /// The first tensor of the trainable state that holds a NaN or an infinity, described for
    /// an error message (`"the gradient of blocks.0.attn.qkv.mlae_B"`), or `None` when all are
    /// finite. It looks at every parameter being trained, its gradient and both moments: a
    /// dead adapter can keep a finite loss while its second moment overflows and its
    /// updates are zero. Cost: one elementwise pass over each of those tensors and one
    /// device sync; the search for the name runs only on failure.
    pub fn first_non_finite(&self) -> Option<String> {
        let checks = self.finite_checks();
        if checks.is_empty() {
            return None;
        }
        let flags = tch::no_grad(|| {
            let all: Vec<Tensor> = checks.iter().map(|(_, _, t)| t.isfinite().all()).collect();
            Tensor::stack(&all, 0)
        });
        let ok: Vec<bool> = mlae_vit::transfer::read_f64(&flags).into_iter().map(|v| v != 0.0).collect();
        let (name, what, _) = checks.iter().zip(ok).find(|(_, ok)| !ok)?.0;
        let (before, after) = NON_FINITE_WHAT[*what];
        Some(format!("{before} {name}{after}"))
    }

    /// Whether every tensor [`AdamW::first_non_finite`] looks at is finite, as a boolean
    /// scalar left on the device (the step reads it with its loss, in one read).
    pub fn all_finite(&self) -> Tensor {
        let checks = self.finite_checks();
        tch::no_grad(|| {
            let all: Vec<Tensor> = checks.iter().map(|(_, _, t)| t.isfinite().all()).collect();
            if all.is_empty() { Tensor::from(true) } else { Tensor::stack(&all, 0).all() }
        })
    }

    /// (parameter name, which of its tensors, the tensor) for every tensor of the trainable
    /// state: gradient (when defined), parameter, both moments; frozen parameters left out.
    fn finite_checks(&self) -> Vec<(&str, usize, Tensor)> {
        let mut checks: Vec<(&str, usize, Tensor)> = Vec::new();
        for p in self.params.iter().filter(|p| !p.frozen) {
            let grad = p.tensor.grad();
            if grad.defined() {
                checks.push((&p.name, 0, grad));
            }
            checks.push((&p.name, 1, p.tensor.shallow_clone()));
            checks.push((&p.name, 2, p.exp_avg.shallow_clone()));
            checks.push((&p.name, 3, p.exp_avg_sq.shallow_clone()));
        }
        checks
    }

    /// Whether the parameter `name` has had a non-zero gradient in any update so far (its
    /// moments are not all zero); `None` for an unknown name.
    pub fn gradient_seen(&self, name: &str) -> Option<bool> {
        let p = self.params.iter().find(|p| p.name == name)?;
        let nonzero = |t: &Tensor| t.ne(0.0).any().int64_value(&[]) == 1;
        Some(nonzero(&p.exp_avg) || nonzero(&p.exp_avg_sq))
    }

    /// The optimizer state as named tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`) and
    /// per-parameter step counts, for a checkpoint.
    pub fn state(&self) -> (Vec<(String, Tensor)>, HashMap<String, u64>) {
        let mut tensors = Vec::with_capacity(self.params.len() * 2);
        let mut steps = HashMap::new();
        for p in &self.params {
            tensors.push((format!("{}.exp_avg", p.name), p.exp_avg.shallow_clone()));
            tensors.push((format!("{}.exp_avg_sq", p.name), p.exp_avg_sq.shallow_clone()));
            steps.insert(p.name.clone(), p.steps);
        }
        (tensors, steps)
    }

    /// Restores state saved by [`AdamW::state`]. Every parameter must be present with the
    /// same shape: a checkpoint of another model is an error naming the parameter.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: &HashMap<String, u64>,
    ) -> Result<(), String> {
        for p in &mut self.params {
            for (suffix, dst) in [("exp_avg", &mut p.exp_avg), ("exp_avg_sq", &mut p.exp_avg_sq)] {
                let key = format!("{}.{suffix}", p.name);
                let src = tensors.get(&key).ok_or_else(|| format!("optimizer state {key} is missing"))?;
                if src.size() != dst.size() {
                    return Err(format!(
                        "optimizer state {key} has shape {:?}, the parameter has {:?}",
                        src.size(),
                        dst.size()
                    ));
                }
                tch::no_grad(|| dst.copy_(src));
            }
            p.steps = *steps
                .get(&p.name)
                .ok_or_else(|| format!("optimizer step count for {} is missing", p.name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).set_requires_grad(true)
    }

    #[test]
    fn matches_the_adamw_update_by_hand() {
        // One scalar, two steps, written out from the AdamW formulas.
        let p = param(&[1.0]);
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            vec![ParamGroup { name: "all".into(), weight_decay: 0.1 }],
            vec![("w".into(), p.shallow_clone(), 0)],
        );
        let (lr, b1, b2, eps, wd) = (0.01f64, 0.9f64, 0.999f64, 1e-8f64, 0.1f64);
        let (mut w, mut m, mut v) = (1.0f64, 0.0f64, 0.0f64);
        for (t, g) in [(1, 0.5f64), (2, -0.25)] {
            opt.zero_grad();
            (&p * g).sum(Kind::Float).backward();
            opt.step(&[lr]);
            w *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let mhat = m / (1.0 - b1.powi(t));
            let vhat_sqrt = v.sqrt() / (1.0 - b2.powi(t)).sqrt();
            w -= lr * mhat / (vhat_sqrt + eps);
            assert!((p.double_value(&[0]) - w).abs() < 1e-6, "step {t}: {} vs {w}", p.double_value(&[0]));
        }
    }

    #[test]
    fn parameters_without_gradient_do_not_move() {
        let a = param(&[1.0, 2.0]);
        let b = param(&[3.0]);
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            vec![ParamGroup { name: "all".into(), weight_decay: 0.5 }],
            vec![("a".into(), a.shallow_clone(), 0), ("b".into(), b.shallow_clone(), 0)],
        );
        a.sum(Kind::Float).backward();
        opt.step(&[0.1]);
        assert_eq!(b.double_value(&[0]), 3.0, "no gradient: no decay, no update");
        assert_ne!(a.double_value(&[0]), 1.0);
        let (_, steps) = opt.state();
        assert_eq!((steps["a"], steps["b"]), (1, 0));
    }

    #[test]
    fn frozen_parameters_are_skipped_even_with_a_gradient() {
        let a = param(&[1.0]);
        let b = param(&[2.0]);
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            vec![ParamGroup { name: "all".into(), weight_decay: 0.5 }],
            vec![("branch.a".into(), a.shallow_clone(), 0), ("scale".into(), b.shallow_clone(), 0)],
        );
        assert_eq!(opt.set_frozen(true, |n| n.starts_with("branch.")), 1);
        (&a + &b).sum(Kind::Float).backward();
        opt.step(&[0.1]);
        assert_eq!(a.double_value(&[0]), 1.0);
        assert_ne!(b.double_value(&[0]), 2.0);
    }

    #[test]
    fn clipping_ignores_frozen_parameters() {
        let a = param(&[0.0, 0.0]);
        let b = param(&[0.0]);
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            vec![ParamGroup { name: "all".into(), weight_decay: 0.0 }],
            vec![("a".into(), a.shallow_clone(), 0), ("b".into(), b.shallow_clone(), 0)],
        );
        let loss = |a: &Tensor, b: &Tensor| {
            (a * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float) + (b * 12.0).sum(Kind::Float)
        };
        loss(&a, &b).backward();
        assert!((opt.clip_grad_norm(100.0) - 13.0).abs() < 1e-5, "both count while trained");
        opt.zero_grad();
        opt.set_frozen(true, |n| n == "b");
        loss(&a, &b).backward();
        assert!((opt.clip_grad_norm(1.0) - 5.0).abs() < 1e-5, "a frozen gradient is not in the norm");
        assert!((a.grad().double_value(&[0]) - 0.6).abs() < 1e-5);
    }

    #[test]
    fn non_finite_state_is_named() {
        let a = param(&[1.0, 2.0]);
        let b = param(&[3.0]);
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            vec![ParamGroup { name: "g".into(), weight_decay: 0.0 }],
            vec![("a".into(), a.shallow_clone(), 0), ("b".into(), b.shallow_clone(), 0)],
        );
        (&a * 2.0 + &b).sum(Kind::Float).backward();
        assert_eq!(opt.first_non_finite(), None);
        opt.step(&[0.1]);
        assert_eq!(opt.first_non_finite(), None);
        // a gradient so large that its square overflows f32: the second moment becomes inf
        // while the parameter update stays finite (m / sqrt(v) -> 0)
        opt.zero_grad();
        (&b * 1e30).sum(Kind::Float).backward();
        opt.step(&[0.1]);
        assert_eq!(
            opt.first_non_finite().as_deref(),
            Some("the optimizer's second moment (exp_avg_sq) of b")
        );
        opt.zero_grad();
        (&a * f64::NAN).sum(Kind::Float).backward();
        assert_eq!(opt.first_non_finite().as_deref(), Some("the gradient of a"));
    }

    #[test]
    fn clipping_scales_the_total_norm_down() {
        let a = param(&[0.0, 0.0]);
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            vec![ParamGroup { name: "all".into(), weight_decay: 0.0 }],
            vec![("a".into(), a.shallow_clone(), 0)],
        );
        (&a * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float).backward();
        let norm = opt.clip_grad_norm(1.0);
        assert!((norm - 5.0).abs() < 1e-5);
        let g = a.grad();
        assert!((g.double_value(&[0]) - 0.6).abs() < 1e-5 && (g.double_value(&[1]) - 0.8).abs() < 1e-5);
    }

    #[test]
    fn state_round_trips_and_a_restored_optimizer_continues_identically() {
        let make = || {
            let p = param(&[0.5, -1.5, 2.0]);
            let opt = AdamW::new(
                AdamWConfig::default(),
                vec![ParamGroup { name: "all".into(), weight_decay: 1e-4 }],
                vec![("p".into(), p.shallow_clone(), 0)],
            );
            (p, opt)
        };
        let grad = |p: &Tensor, k: f64| (p * p * k).sum(Kind::Float).backward();
        let (p1, mut o1) = make();
        for k in [1.0, 0.5] {
            o1.zero_grad();
            grad(&p1, k);
            o1.step(&[0.01]);
        }
        let (tensors, steps) = o1.state();
        let tensors: HashMap<String, Tensor> = tensors.into_iter().map(|(k, t)| (k, t.copy())).collect();
        let (p2, mut o2) = make();
        tch::no_grad(|| p2.shallow_clone().copy_(&p1));
        o2.load_state(&tensors, &steps).unwrap();
        for o in [&mut o1, &mut o2] {
            o.zero_grad();
        }
        grad(&p1, 2.0);
        grad(&p2, 2.0);
        o1.step(&[0.01]);
        o2.step(&[0.01]);
        assert_eq!(Vec::<f32>::try_from(&p1).unwrap(), Vec::<f32>::try_from(&p2).unwrap());

        let mut missing: HashMap<String, Tensor> =
            tensors.iter().map(|(k, t)| (k.clone(), t.copy())).collect();
        missing.remove("p.exp_avg_sq");
        let err = o2.load_state(&missing, &steps).unwrap_err();
        assert!(err.contains("p.exp_avg_sq"), "{err}");
    }
}
