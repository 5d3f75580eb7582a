//! The per-tensor AdamW the flat one replaced, kept for tests only: the flat optimizer must
//! match it bit for bit on the CPU (same formula per element, same reductions), and this is
//! the yardstick. About ten kernels per tensor per step; not for training.

use super::{AdamWConfig, ParamGroup};
use tch::{Kind, Tensor};

struct Param {
    name: String,
    tensor: Tensor,
    group: usize,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    steps: u64,
    frozen: bool,
}

/// AdamW over separate tensors, one update per tensor (the implementation before the flat
/// buffer).
pub(crate) struct PerTensorAdamW {
    cfg: AdamWConfig,
    groups: Vec<ParamGroup>,
    params: Vec<Param>,
}

impl PerTensorAdamW {
    pub(crate) fn new(
        cfg: AdamWConfig,
        groups: Vec<ParamGroup>,
        params: Vec<(String, Tensor, usize)>,
    ) -> Self {
        let params = params
            .into_iter()
            .map(|(name, tensor, group)| {
                let exp_avg = Tensor::zeros_like(&tensor).detach();
                let exp_avg_sq = Tensor::zeros_like(&tensor).detach();
                Param { name, tensor, group, exp_avg, exp_avg_sq, steps: 0, frozen: false }
            })
            .collect();
        Self { cfg, groups, params }
    }

    pub(crate) fn set_frozen(&mut self, frozen: bool, matches: impl Fn(&str) -> bool) {
        for p in self.params.iter_mut().filter(|p| matches(&p.name)) {
            p.frozen = frozen;
        }
    }

    pub(crate) fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    pub(crate) fn clip_grad_norm_(&mut self, max_norm: f64) -> Option<Tensor> {
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

    pub(crate) fn step(&mut self, lrs: &[f64]) {
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

    pub(crate) fn all_finite(&self) -> Tensor {
        tch::no_grad(|| {
            let mut all = Vec::new();
            for p in self.params.iter().filter(|p| !p.frozen) {
                let grad = p.tensor.grad();
                if grad.defined() {
                    all.push(grad.isfinite().all());
                }
                for t in [&p.tensor, &p.exp_avg, &p.exp_avg_sq] {
                    all.push(t.isfinite().all());
                }
            }
            if all.is_empty() { Tensor::from(true) } else { Tensor::stack(&all, 0).all() }
        })
    }

    /// (name, exp_avg, exp_avg_sq, steps) of every parameter, in order.
    pub(crate) fn moments(&self) -> Vec<(String, Tensor, Tensor, u64)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.exp_avg.shallow_clone(), p.exp_avg_sq.shallow_clone(), p.steps))
            .collect()
    }
}
