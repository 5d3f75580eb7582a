//! AdamW over the trainable parameters, with state that can be saved and restored.
//!
//! Why our own: tch's optimizer wraps libtorch's C++ optimizers but cannot save or load
//! their moments, and a resumed run must continue exactly where it stopped. The update is
//! PyTorch's `torch.optim.AdamW` (decoupled weight decay, bias correction, per-parameter
//! step counts, parameters without a gradient skipped), checked against it by a golden
//! fixture.
//!
//! Why flat: the parameters, their gradients and both moments are views into one buffer
//! ([`flat`]), so the update runs once per group (PyTorch's multi-tensor AdamW does the same
//! for the same reason: a per-tensor update is about ten kernel launches per tensor, hundreds
//! a step on a ViT-B). The formula per element is the per-tensor one, and the clipping norm
//! reduces each tensor alone before reducing the norms, so on the CPU the result is the
//! per-tensor optimizer's bit for bit (tests hold the two side by side).

mod flat;
#[cfg(test)]
pub(crate) mod reference;
#[cfg(test)]
mod tests;

use flat::{Flat, Region};
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
    /// The caller's tensor (the model's): its data is re-pointed at `value`.
    tensor: Tensor,
    shape: Vec<i64>,
    /// Views of the buffer: the parameter, its gradient and its moments.
    value: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Where `value` and `grad` start, to tell whether the tensor and its `.grad` still point
    /// into the buffer without a kernel.
    value_ptr: usize,
    grad_ptr: usize,
    group: usize,
    /// Updates this parameter received (PyTorch's per-parameter `state['step']`).
    steps: u64,
    /// Frozen parameters are skipped entirely (no decay, no moment update).
    frozen: bool,
}

/// The clipping norm's reduction for one set of gradients: norms of equal-sized neighbours in
/// one kernel per block, then put back in the parameters' order (the order the total's
/// reduction must see for the per-tensor result).
struct NormPlan {
    /// Which parameters it covers (not frozen, with a gradient).
    included: Vec<bool>,
    /// (first parameter, count) of each block, in buffer order.
    blocks: Vec<(usize, i64)>,
    /// Position of each covered parameter's norm among the blocks' norms, in parameter
    /// order, on the device; `None` when the order already is the parameters'.
    perm: Option<Tensor>,
}

/// AdamW with parameter groups.
pub struct AdamW {
    cfg: AdamWConfig,
    groups: Vec<ParamGroup>,
    params: Vec<Param>,
    flat: Flat,
    norm_plan: NormPlan,
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
    /// `params`: (unique name, tensor, group index); f32 tensors on one device.
    ///
    /// Each tensor's data moves into the optimizer's buffer: the tensor (and every handle that
    /// shares it, such as the model's) stays the same autograd leaf but now views the buffer,
    /// as `p.data = flat[...]` does in PyTorch.
    pub fn new(cfg: AdamWConfig, groups: Vec<ParamGroup>, params: Vec<(String, Tensor, usize)>) -> Self {
        let device = params.first().map_or(tch::Device::Cpu, |(_, t, _)| t.device());
        for (name, t, group) in &params {
            assert!(*group < groups.len(), "parameter {name} names group {group} of {}", groups.len());
            assert!(
                t.kind() == Kind::Float && t.device() == device,
                "parameter {name} is {:?} on {:?}; the optimizer keeps f32 on {device:?}",
                t.kind(),
                t.device()
            );
        }
        let numels: Vec<i64> = params.iter().map(|(_, t, _)| t.numel() as i64).collect();
        let group_of: Vec<usize> = params.iter().map(|(_, _, g)| *g).collect();
        let flat = Flat::new(&numels, &group_of, device);
        let params: Vec<Param> = params
            .into_iter()
            .enumerate()
            .map(|(i, (name, tensor, group))| {
                let shape = tensor.size();
                let [value, grad, exp_avg, exp_avg_sq] = Region::ALL.map(|r| flat.view(r, i, &shape));
                let (value_ptr, grad_ptr) = (value.data_ptr() as usize, grad.data_ptr() as usize);
                let p = Param {
                    name,
                    tensor,
                    shape,
                    value,
                    grad,
                    exp_avg,
                    exp_avg_sq,
                    value_ptr,
                    grad_ptr,
                    group,
                    steps: 0,
                    frozen: false,
                };
                p.bind();
                p
            })
            .collect();
        // planned for the usual case (every parameter gets a gradient), so that a step uploads
        // nothing unless a parameter is frozen or has no gradient
        let norm_plan = norm_plan(&flat, vec![true; params.len()], device);
        Self { cfg, groups, params, flat, norm_plan }
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

    /// Points every parameter and every gradient that libtorch allocated since the last call
    /// at the buffer (see [`Param::bind`]); only pointer compares when nothing changed.
    fn bind(&self) {
        for p in &self.params {
            p.bind();
        }
    }

    /// Zeroes every gradient (tch cannot unset one; see [`AdamW::set_frozen`]): one kernel
    /// over the gradient region.
    pub fn zero_grad(&mut self) {
        self.bind();
        let _ = tch::no_grad(|| self.flat.region(Region::Grad).zero_());
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
    ///
    /// Each tensor's norm is reduced alone (equal-sized tensors together, one row each) and the
    /// norms are reduced in parameter order, as the per-tensor optimizer did: the same bits.
    pub fn clip_grad_norm_(&mut self, max_norm: f64) -> Option<Tensor> {
        self.bind();
        let included: Vec<bool> =
            self.params.iter().map(|p| !p.frozen && p.tensor.grad().defined()).collect();
        if !included.contains(&true) {
            return None;
        }
        if self.norm_plan.included != included {
            self.norm_plan = norm_plan(&self.flat, included, self.flat.all().device());
        }
        let plan = &self.norm_plan;
        tch::no_grad(|| {
            let norms: Vec<Tensor> = plan
                .blocks
                .iter()
                .map(|&(first, count)| {
                    self.flat.block(Region::Grad, first, count).norm_scalaropt_dim(
                        2,
                        [1i64].as_slice(),
                        false,
                    )
                })
                .collect();
            let norms = Tensor::cat(&norms, 0);
            let norms = plan.perm.as_ref().map_or(norms.shallow_clone(), |perm| norms.index_select(0, perm));
            let total = norms.norm();
            if max_norm > 0.0 {
                let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
                for run in self.flat.runs(|i| plan.included[i].then_some(())) {
                    let _ = self.flat.range(Region::Grad, run.start, run.end).g_mul_(&coef);
                }
            }
            Some(total)
        })
    }

    /// One update; `lrs[g]` is the learning rate of group `g` for this step.
    ///
    /// One pass of the formula per run of parameters that share a group and a step count (one
    /// per group, unless some parameters are frozen or had no gradient at some step).
    pub fn step(&mut self, lrs: &[f64]) {
        assert_eq!(lrs.len(), self.groups.len(), "one learning rate per group");
        self.bind();
        let AdamWConfig { beta1, beta2, eps } = self.cfg;
        let params = &self.params;
        let runs = self.flat.runs(|i| {
            let p = &params[i];
            (!p.frozen && p.tensor.grad().defined()).then_some((p.group, p.steps))
        });
        tch::no_grad(|| {
            for run in &runs {
                let (group, steps) = run.key;
                let [mut param, grad, mut exp_avg, mut exp_avg_sq] =
                    Region::ALL.map(|r| self.flat.range(r, run.start, run.end));
                let lr = lrs[group];
                let wd = self.groups[group].weight_decay;
                if wd != 0.0 {
                    let _ = param.g_mul_scalar_(1.0 - lr * wd);
                }
                let _ = exp_avg.lerp_(&grad, 1.0 - beta1);
                let _ = exp_avg_sq.g_mul_scalar_(beta2);
                let _ = exp_avg_sq.addcmul_(&(&grad * (1.0 - beta2)), &grad);
                let t = (steps + 1) as i32;
                let bias_correction1 = 1.0 - beta1.powi(t);
                let bias_correction2_sqrt = (1.0 - beta2.powi(t)).sqrt();
                let step_size = lr / bias_correction1;
                let denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt) + eps;
                let _ = param.addcdiv_(&(&exp_avg * -step_size), &denom);
            }
        });
        for run in runs {
            for i in run.members {
                self.params[i].steps += 1;
            }
        }
    }

    /// The first tensor of the trainable state that holds a NaN or an infinity, described for
    /// an error message (`"the gradient of blocks.0.attn.qkv.mlae_B"`), or `None` when all are
    /// finite. It looks at every parameter being trained, its gradient and both moments: a
    /// dead adapter can keep a finite loss while its second moment overflows and its
    /// updates are zero. Cost: one elementwise pass over each of those tensors and one
    /// device sync (the failure path: it names the tensor).
    pub fn first_non_finite(&self) -> Option<String> {
        self.bind();
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
    /// scalar left on the device (the step reads it with its loss, in one read): one pass
    /// over the buffer when no parameter is frozen. A gradient libtorch never allocated is
    /// zeros in the buffer, so it passes as the per-tensor check's absent one did.
    pub fn all_finite(&self) -> Tensor {
        self.bind();
        let runs = self.flat.runs(|i| (!self.params[i].frozen).then_some(()));
        tch::no_grad(|| match runs.as_slice() {
            [] => Tensor::from(true),
            [run] if self.flat.covers_all(run.start, run.end) => self.flat.all().isfinite().all(),
            runs => {
                let all: Vec<Tensor> = runs
                    .iter()
                    .flat_map(|run| {
                        Region::ALL.map(|r| self.flat.range(r, run.start, run.end).isfinite().all())
                    })
                    .collect();
                Tensor::stack(&all, 0).all()
            }
        })
    }

    /// (parameter name, which of its tensors, the tensor) for every tensor of the trainable
    /// state: gradient (when defined), parameter, both moments; frozen parameters left out.
    fn finite_checks(&self) -> Vec<(&str, usize, Tensor)> {
        let mut checks: Vec<(&str, usize, Tensor)> = Vec::new();
        for p in self.params.iter().filter(|p| !p.frozen) {
            if p.tensor.grad().defined() {
                checks.push((&p.name, 0, p.grad.shallow_clone()));
            }
            checks.push((&p.name, 1, p.value.shallow_clone()));
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

    /// The optimizer state as named tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`; views of
    /// the buffer) and per-parameter step counts, for a checkpoint.
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

    /// Restores state saved by [`AdamW::state`] (copied into the buffer). Every parameter must
    /// be present with the same shape: a checkpoint of another model is an error naming the
    /// parameter.
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

impl Param {
    /// Points the tensor and its `.grad` at the buffer when they are not (yet): at the start,
    /// after someone replaced the tensor's data (`set_data`), and after the first backward
    /// allocated the gradient. Each is copied in once and re-pointed with `set_data`, which
    /// keeps the autograd leaf (and every handle to it) and swaps only its storage.
    ///
    /// Why gradients are views and not gathered: libtorch accumulates into a defined `.grad` in
    /// place (`grad += new` when no graph of the backward is built), so once it views the
    /// buffer every later backward writes straight into it, and zeroing is one kernel.
    /// Gathering them instead (one `cat` per step) copies every gradient every step (measured
    /// with this libtorch on a 2-core CPU: 0.35 ms a step for a LoRA run's 0.7M gradient
    /// elements, 65 ms for two ViT-B blocks' 14M), keeps a second copy alive, and still leaves
    /// the per-tensor gradients to zero and to scale, tensor by tensor.
    fn bind(&self) {
        if self.value.numel() == 0 {
            return;
        }
        tch::no_grad(|| {
            if self.tensor.data_ptr() as usize != self.value_ptr {
                assert_eq!(self.tensor.size(), self.shape, "parameter {} changed shape", self.name);
                self.value.shallow_clone().copy_(&self.tensor);
                self.tensor.shallow_clone().set_data(&self.value);
            }
            let mut g = self.tensor.grad();
            if g.defined() && g.data_ptr() as usize != self.grad_ptr {
                self.grad.shallow_clone().copy_(&g);
                g.set_data(&self.grad);
            }
        });
    }
}

/// The [`NormPlan`] of the parameters `included`: blocks of adjacent equal-sized slots, and
/// the order of their norms back to the parameters' (one upload, only when it is not already
/// that order).
fn norm_plan(flat: &Flat, included: Vec<bool>, device: tch::Device) -> NormPlan {
    let runs = flat.runs(|i| included[i].then(|| flat.slot(i).numel));
    let mut position = vec![0usize; included.len()];
    for (k, &i) in runs.iter().flat_map(|r| &r.members).enumerate() {
        position[i] = k;
    }
    let perm: Vec<usize> = (0..included.len()).filter(|&i| included[i]).map(|i| position[i]).collect();
    let identity = perm.iter().enumerate().all(|(k, &p)| k == p);
    // f32 holds every index below 2^24 exactly (the count of tensors, not of elements)
    let perm = (!identity).then(|| {
        let values: Vec<f32> = perm.iter().map(|&p| p as f32).collect();
        mlae_vit::transfer::upload_f32(&values, device).to_kind(Kind::Int64)
    });
    let blocks = runs.iter().map(|r| (r.members[0], r.members.len() as i64)).collect();
    NormPlan { included, blocks, perm }
}
