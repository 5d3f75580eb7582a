use super::*;
use proptest::prelude::*;

fn spec(shape: RampShape) -> DmloraSpec {
    DmloraSpec {
        branches: 4,
        p_start: 0.0,
        p_end: 0.5,
        schedule: shape,
        ramp_start: 0.1,
        ramp_end: 0.7,
        stage2_start: 0.85,
        ..Default::default()
    }
}

#[test]
fn schedule_start_and_end_rates() {
    for shape in RampShape::ALL {
        let s = spec(*shape);
        let total = 1_000;
        assert_eq!(branch_drop_prob(&s, 0, total), 0.0);
        assert_eq!(branch_drop_prob(&s, 100, total), 0.0);
        assert_eq!(branch_drop_prob(&s, 700, total), 0.5);
        assert_eq!(branch_drop_prob(&s, 849, total), 0.5);
        assert_eq!(branch_drop_prob(&s, 850, total), 0.0); // stage 2: all branches on
        assert!(in_stage2(&s, 999, total));
        let mid = branch_drop_prob(&s, 400, total);
        assert!((mid - 0.25).abs() < 1e-12, "{shape}: {mid}"); // both shapes cross the middle at u = 1/2
    }
    // cosine starts slower than linear
    assert!(
        branch_drop_prob(&spec(RampShape::Cosine), 200, 1000)
            < branch_drop_prob(&spec(RampShape::Linear), 200, 1000)
    );
    // a step ramp
    let step = DmloraSpec { ramp_start: 0.5, ramp_end: 0.5, stage2_start: 1.0, ..spec(RampShape::Linear) };
    assert_eq!(branch_drop_prob(&step, 499, 1000), 0.0);
    assert_eq!(branch_drop_prob(&step, 500, 1000), 0.5);
}

#[test]
fn stage2_start_step_matches_the_predicate() {
    for total in [1u64, 7, 10, 100, 999, 1000] {
        for f in [0.05, 0.1, 0.3, 0.5, 0.8, 0.85, 0.999, 1.0] {
            let s = DmloraSpec { stage2_start: f, ..Default::default() };
            let brute = (0..total).find(|&t| in_stage2(&s, t, total));
            assert_eq!(stage2_start_step(&s, total), brute, "total {total} f {f}");
        }
    }
}

#[test]
fn branch_weights_preserve_the_mean_in_expectation() {
    let s = DmloraSpec { p_start: 0.6, p_end: 0.6, stage2_start: 1.0, ..Default::default() };
    let sampler = MaskSampler::new(3);
    let steps = 20_000u64;
    let mut sum = 0.0f64;
    let mut kept = 0usize;
    for t in 0..steps {
        let w = branch_weights(&sampler, &s, t, steps, 1);
        assert!(w.iter().all(|&x| x == 0.0 || (x - 0.25 / 0.4).abs() < 1e-6));
        sum += w.iter().map(|&x| x as f64).sum::<f64>();
        kept += w.iter().filter(|&&x| x != 0.0).count();
    }
    // E[sum of weights] = 1 (the mean of K branches); keep rate 0.4 within 0.01 (> 7 sd)
    assert!((sum / steps as f64 - 1.0).abs() < 0.02);
    assert!((kept as f64 / (4 * steps) as f64 - 0.4).abs() < 0.01);
    // stage 2 and inference: all branches, 1/K
    let s2 = DmloraSpec { stage2_start: 0.5, ..s };
    assert_eq!(branch_weights(&sampler, &s2, 60, 100, 0), branch_weights_inference(4));
}

#[test]
fn branch_masks_are_separate_from_expert_masks() {
    let s = DmloraSpec { p_start: 0.5, p_end: 0.5, stage2_start: 1.0, branches: 8, ..Default::default() };
    let sampler = MaskSampler::new(0);
    let same = (0..500u64)
        .filter(|&t| {
            let b: Vec<bool> = branch_weights(&sampler, &s, t, 500, 0).iter().map(|&x| x != 0.0).collect();
            let m: Vec<bool> = sampler.layer_scales(t, 0, 8, 0.5).iter().map(|&x| x != 0.0).collect();
            b == m
        })
        .count();
    assert!(same < 10, "{same}");
}

#[test]
fn fields_are_checked() {
    let with = |f: &dyn Fn(&mut DmloraSpec)| {
        let mut d = DmloraSpec::default();
        f(&mut d);
        Dmlora::validate(&d, &[TargetLayer::Qkv]).err().map(|e| e.field().to_string())
    };
    assert_eq!(with(&|_| {}), None);
    assert_eq!(with(&|d| d.branches = 0).as_deref(), Some("adapter.dmlora.branches"));
    assert_eq!(with(&|d| d.branch_rank = 0).as_deref(), Some("adapter.dmlora.branch_rank"));
    assert_eq!(with(&|d| d.p_start = 1.0).as_deref(), Some("adapter.dmlora.p_start"));
    assert_eq!(with(&|d| d.p_end = -0.5).as_deref(), Some("adapter.dmlora.p_end"));
    assert_eq!(with(&|d| d.ramp_start = 1.5).as_deref(), Some("adapter.dmlora.ramp_start"));
    assert_eq!(
        with(&|d| {
            d.ramp_start = 0.6;
            d.ramp_end = 0.5
        })
        .as_deref(),
        Some("adapter.dmlora.ramp_end")
    );
    assert_eq!(with(&|d| d.stage2_start = 0.0).as_deref(), Some("adapter.dmlora.stage2_start"));
    assert_eq!(with(&|d| d.stage2_lr = Some(0.0)).as_deref(), Some("adapter.dmlora.stage2_lr"));
    assert_eq!(with(&|d| d.scale_init = f64::INFINITY).as_deref(), Some("adapter.dmlora.scale_init"));
    assert_eq!(with(&|d| d.scale_init = 0.0).as_deref(), Some("adapter.dmlora.scale_init"));
    assert_eq!(with(&|d| d.scale_init = -0.5), None, "a negative scale still trains");
    assert_eq!(Dmlora::validate(&DmloraSpec::default(), &[]).unwrap_err().field(), "adapter.targets");
}

#[test]
fn ramp_shapes() {
    for shape in RampShape::ALL {
        assert_eq!(shape.interpolate(0.1, 0.6, 0.0), 0.1);
        assert!((shape.interpolate(0.1, 0.6, 1.0) - 0.6).abs() < 1e-15);
        assert_eq!(shape.interpolate(0.1, 0.6, 2.0), shape.interpolate(0.1, 0.6, 1.0));
    }
}

#[test]
fn stage2_freezes_the_branches_and_only_they_stop() {
    let plan = DmloraPlan { spec: DmloraSpec { stage2_start: 0.8, ..Default::default() }, layers: vec![] };
    assert_eq!(plan.stage_start(1, 100), Some(80));
    assert_eq!(plan.stage_start(0, 100), Some(0));
    for role in ParamRole::ALL {
        assert!(plan.trains(*role, 0), "stage 1 trains {role:?}");
        assert_eq!(plan.trains(*role, 1), *role != ParamRole::Adapter, "stage 2, {role:?}");
    }
    let never = DmloraPlan { spec: DmloraSpec { stage2_start: 1.0, ..Default::default() }, layers: vec![] };
    assert_eq!((never.stage(99, 100), never.stage_start(1, 100)), (0, None));
    assert!(
        plan.describe(100).unwrap().contains("stage 2 (branches frozen, scales and head train) from step 80")
    );
    assert!(never.describe(100).unwrap().contains("no stage 2 in 100 steps"));
    assert!(plan.describe_stage(1, 80, 80, 100).starts_with("DMLoRA stage 2 begins at step 80 of 100"));
    assert!(plan.describe_stage(1, 80, 90, 100).contains("since step 80 (resumed at step 90)"));
}

#[test]
fn stage2_lr_is_the_scales_rate_when_stage_2_begins_then_decays_with_the_schedule() {
    // a cosine with 10 warm-up steps, 100 steps in all
    let main = |step: u64| {
        let (peak, min, warm, total) = (1e-3, 1e-8, 10.0, 100.0);
        let s = step as f64;
        if s < warm {
            1e-7 + (peak - 1e-7) * s / warm
        } else {
            min + 0.5 * (peak - min) * (1.0 + (std::f64::consts::PI * (s - warm) / (total - warm)).cos())
        }
    };
    let d = DmloraPlan {
        spec: DmloraSpec { stage2_start: 0.8, stage2_lr: Some(0.05), ..Default::default() },
        layers: vec![],
    };
    let unset = DmloraPlan { spec: DmloraSpec { stage2_lr: None, ..d.spec.clone() }, layers: vec![] };
    let (scales, head, branches) = (ParamRole::BranchScale, ParamRole::Head, ParamRole::Adapter);
    for step in 0..100 {
        let lr = main(step);
        assert_eq!(unset.lr(scales, step, 100, &main), lr, "stage2_lr unset: the main rate");
        assert_eq!(d.lr(head, step, 100, &main), lr, "the head stays on the main schedule");
        assert_eq!(d.lr(branches, step, 100, &main), lr, "the branches stay on the main schedule");
        let got = d.lr(scales, step, 100, &main);
        if step < 80 {
            assert_eq!(got, lr, "stage 1: the scales train with everything else");
        } else {
            // 0.05 at the switch, then the main schedule's decay
            let want = 0.05 * lr / main(80);
            assert!((got - want).abs() < 1e-15, "step {step}: {got} vs {want}");
        }
    }
    assert!((d.lr(scales, 80, 100, &main) - 0.05).abs() < 1e-15);
    assert!(d.lr(scales, 99, 100, &main) < 0.05 * 0.01, "annealed by the end");
}

proptest! {
    #[test]
    fn schedule_is_monotone_in_stage1(p_start in 0.0f64..0.99, p_end in 0.0f64..0.99, a in 0.0f64..1.0,
                                      b in 0.0f64..1.0, cosine in any::<bool>(), total in 1u64..3000) {
        let s = DmloraSpec {
            p_start, p_end, ramp_start: a.min(b), ramp_end: a.max(b), stage2_start: 1.0,
            schedule: if cosine { RampShape::Cosine } else { RampShape::Linear }, ..Default::default()
        };
        let ps: Vec<f64> = (0..total).map(|t| branch_drop_prob(&s, t, total)).collect();
        let (lo, hi) = (p_start.min(p_end), p_start.max(p_end));
        prop_assert!(ps.iter().all(|p| *p >= lo - 1e-12 && *p <= hi + 1e-12));
        let up = p_end >= p_start;
        for w in ps.windows(2) {
            let ok = if up { w[1] >= w[0] - 1e-12 } else { w[1] <= w[0] + 1e-12 };
            prop_assert!(ok, "not monotone: {:?}", w);
        }
        prop_assert_eq!(ps[0], if s.ramp_end > 0.0 { p_start } else { p_end });
    }

    #[test]
    fn branch_masks_reproducible(seed in any::<u64>(), step in 0u64..10_000, layer in 0usize..48) {
        let s = DmloraSpec { p_start: 0.3, p_end: 0.7, stage2_start: 1.0, ..Default::default() };
        let a = branch_weights(&MaskSampler::new(seed), &s, step, 10_000, layer);
        let b = branch_weights(&MaskSampler::new(seed), &s, step, 10_000, layer);
        prop_assert_eq!(a, b);
    }
}
