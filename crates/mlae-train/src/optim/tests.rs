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
    assert_eq!(opt.first_non_finite().as_deref(), Some("the optimizer's second moment (exp_avg_sq) of b"));
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

    let mut missing: HashMap<String, Tensor> = tensors.iter().map(|(k, t)| (k.clone(), t.copy())).collect();
    missing.remove("p.exp_avg_sq");
    let err = o2.load_state(&missing, &steps).unwrap_err();
    assert!(err.contains("p.exp_avg_sq"), "{err}");
}

/// Tensors of awkward sizes (a scalar, sizes around the alignment, a matrix) in three groups.
fn awkward_params() -> Vec<(String, Tensor, usize)> {
    tch::manual_seed(11);
    let shapes: [(&str, &[i64], usize); 7] = [
        ("a", &[3, 5], 0),
        ("s", &[], 1),
        ("b", &[65], 0),
        ("c", &[3, 5], 0),
        ("d", &[130, 3], 2),
        ("e", &[64], 1),
        ("f", &[1], 2),
    ];
    shapes
        .iter()
        .map(|&(n, shape, g)| {
            let t = Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
            (n.to_string(), t, g)
        })
        .collect()
}

/// The same tensors, shared (what the optimizer gets from the model).
fn handles(params: &[(String, Tensor, usize)]) -> Vec<(String, Tensor, usize)> {
    params.iter().map(|(n, t, g)| (n.clone(), t.shallow_clone(), *g)).collect()
}

fn copies(params: &[(String, Tensor, usize)]) -> Vec<(String, Tensor, usize)> {
    params.iter().map(|(n, t, g)| (n.clone(), t.detach().copy().set_requires_grad(true), *g)).collect()
}

/// A loss that gives every tensor a different, non-trivial gradient; `skip` get none.
fn backward(params: &[(String, Tensor, usize)], step: usize, skip: &[&str]) {
    let mut loss = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
    for (i, (n, t, _)) in params.iter().enumerate() {
        if !skip.contains(&n.as_str()) {
            let k = 1.0 + i as f64 + step as f64 * 0.5;
            loss += (t * t * k).sum(Kind::Float) + (t * 3.0).sin().sum(Kind::Float);
        }
    }
    loss.backward();
}

fn groups() -> Vec<ParamGroup> {
    [("x", 0.05), ("y", 0.0), ("z", 1e-4)]
        .into_iter()
        .map(|(name, weight_decay)| ParamGroup { name: name.into(), weight_decay })
        .collect()
}

/// The flat optimizer against the per-tensor one it replaced: exact equality (`==`, not a
/// tolerance) of every parameter, gradient, moment, step count, clipping norm and finite flag,
/// over steps with and without clipping, a tensor that has no gradient at first (so a group's
/// step counts differ) and one frozen for a while.
#[test]
fn the_flat_update_is_the_per_tensor_update_bit_for_bit() {
    let flat_params = awkward_params();
    let ref_params = copies(&flat_params);
    let cfg = AdamWConfig::default();
    let mut flat = AdamW::new(cfg, groups(), handles(&flat_params));
    let mut reference = reference::PerTensorAdamW::new(cfg, groups(), handles(&ref_params));
    let same = |a: &Tensor, b: &Tensor, what: &str| assert!(a.equal(b), "{what}: {a:?} vs {b:?}");
    for step in 0..8 {
        let frozen = (3..5).contains(&step);
        flat.set_frozen(frozen, |n| n == "d");
        reference.set_frozen(frozen, |n| n == "d");
        flat.zero_grad();
        reference.zero_grad();
        let skip: &[&str] = if step < 2 { &["c", "s"] } else { &[] };
        backward(&flat_params, step, skip);
        backward(&ref_params, step, skip);
        // clipping bites on even steps only
        let max_norm = if step % 2 == 0 { 0.5 } else { 1e6 };
        let (n1, n2) =
            (flat.clip_grad_norm_(max_norm).unwrap(), reference.clip_grad_norm_(max_norm).unwrap());
        same(&n1, &n2, &format!("step {step}: clipping norm"));
        let lrs = [1e-2 * (step + 1) as f64, 3e-3, 0.1];
        flat.step(&lrs);
        reference.step(&lrs);
        same(&flat.all_finite(), &reference.all_finite(), "finite flag");
        let moments = reference.moments();
        let (state, steps) = flat.state();
        for (((n, p1, _), (_, p2, _)), (rn, m, v, s)) in flat_params.iter().zip(&ref_params).zip(&moments) {
            assert_eq!(n, rn);
            same(p1, p2, &format!("step {step}: {n}"));
            let (g1, g2) = (p1.grad(), p2.grad());
            assert_eq!(g1.defined(), g2.defined(), "step {step}: gradient of {n} defined");
            if g1.defined() {
                same(&g1, &g2, &format!("step {step}: gradient of {n}"));
            }
            let find = |suffix: &str| &state.iter().find(|(k, _)| *k == format!("{n}.{suffix}")).unwrap().1;
            same(find("exp_avg"), m, &format!("step {step}: exp_avg of {n}"));
            same(find("exp_avg_sq"), v, &format!("step {step}: exp_avg_sq of {n}"));
            assert_eq!(steps[n], *s, "step {step}: step count of {n}");
        }
    }
}

/// Gradients are views of the buffer: after the first backward is bound, later backwards
/// accumulate into the same memory (libtorch adds into a defined `.grad` in place).
#[test]
fn gradients_stay_in_the_buffer_across_backwards() {
    let params = awkward_params();
    let mut opt = AdamW::new(AdamWConfig::default(), groups(), handles(&params));
    let ptrs = |params: &[(String, Tensor, usize)]| -> Vec<usize> {
        params.iter().map(|(_, t, _)| t.grad().data_ptr() as usize).collect()
    };
    let values: Vec<usize> = params.iter().map(|(_, t, _)| t.data_ptr() as usize).collect();
    opt.zero_grad();
    backward(&params, 0, &[]);
    opt.step(&[0.1; 3]);
    let bound = ptrs(&params);
    for step in 1..3 {
        opt.zero_grad();
        backward(&params, step, &[]);
        assert_eq!(ptrs(&params), bound, "step {step}: the gradients were reallocated");
        opt.step(&[0.1; 3]);
    }
    let after: Vec<usize> = params.iter().map(|(_, t, _)| t.data_ptr() as usize).collect();
    assert_eq!(values, after, "the parameters stay views of the buffer");
}

/// A tensor whose data is replaced behind the optimizer's back (`set_data`, as a loader may)
/// is copied into the buffer and re-pointed at the next call, and trains on as the per-tensor
/// optimizer trains the replaced tensor.
#[test]
fn a_parameter_whose_data_is_replaced_is_bound_again() {
    let flat_params = awkward_params();
    let ref_params = copies(&flat_params);
    let cfg = AdamWConfig::default();
    let mut flat = AdamW::new(cfg, groups(), handles(&flat_params));
    let mut reference = reference::PerTensorAdamW::new(cfg, groups(), handles(&ref_params));
    let in_buffer = flat_params[3].1.data_ptr();
    for step in 0..4 {
        if step == 2 {
            let fresh = Tensor::full([3, 5], 0.25, (Kind::Float, tch::Device::Cpu));
            for params in [&flat_params, &ref_params] {
                params[3].1.shallow_clone().set_data(&fresh.copy());
            }
            assert_ne!(flat_params[3].1.data_ptr(), in_buffer);
        }
        flat.zero_grad();
        reference.zero_grad();
        backward(&flat_params, step, &[]);
        backward(&ref_params, step, &[]);
        flat.step(&[0.05; 3]);
        reference.step(&[0.05; 3]);
        for ((n, p1, _), (_, p2, _)) in flat_params.iter().zip(&ref_params) {
            assert!(p1.equal(p2), "step {step}: {n}");
        }
    }
    assert_eq!(flat_params[3].1.data_ptr(), in_buffer, "bound to the buffer again");
}
