use super::*;
use crate::methods::{AdapterKind, AdapterPlan, AdapterSpec};

fn spec(strategy: MaskStrategy, pattern: LayerPattern) -> MlaeSpec {
    MlaeSpec { mask: MaskSpec { strategy, pattern, ..Default::default() }, ..Default::default() }
}

fn resolve(s: &MlaeSpec, depth: usize) -> Result<MlaePlan, SpecError> {
    let spec = AdapterSpec { kind: AdapterKind::Mlae, mlae: s.clone(), ..Default::default() };
    match spec.resolve(depth)? {
        AdapterPlan::Mlae(p) => Ok(p),
        other => panic!("an mlae spec resolved to {other:?}"),
    }
}

fn err(s: &MlaeSpec, depth: usize) -> SpecError {
    resolve(s, depth).unwrap_err()
}

#[test]
fn invalid_numbers_name_their_field() {
    for p in [1.0, 1.2, -0.1, f64::NAN] {
        let e = err(&MlaeSpec { expert_dropout: p, ..Default::default() }, 12);
        assert_eq!(e.field(), "adapter.mlae.expert_dropout", "{e}");
        assert!(e.to_string().contains("outside [0, 1)"), "{e}");
    }
    let e = err(&MlaeSpec { expert_dropout: 1.2, ..Default::default() }, 12);
    assert_eq!(e.to_string(), "adapter.mlae.expert_dropout: 1.2 is outside [0, 1)");
    assert_eq!(err(&MlaeSpec { experts: 0, ..Default::default() }, 12).field(), "adapter.mlae.experts");
    assert_eq!(
        err(&MlaeSpec { expert_rank: 0, ..Default::default() }, 12).field(),
        "adapter.mlae.expert_rank"
    );
    assert_eq!(
        err(&MlaeSpec { coeff_init: 0.0, ..Default::default() }, 12).field(),
        "adapter.mlae.coeff_init"
    );
}

#[test]
fn lists_must_match_depth() {
    let mut s = spec(MaskStrategy::Fixed, LayerPattern::Uniform);
    s.mask.experts_per_layer = Some(vec![8; 11]);
    assert_eq!(
        err(&s, 12).to_string(),
        "adapter.mlae.mask.experts_per_layer: has 11 entries but the model has 12 blocks"
    );
    s.mask.experts_per_layer = Some(vec![4, 0, 4]);
    assert_eq!(err(&s, 3).field(), "adapter.mlae.mask.experts_per_layer[1]");
    let mut s = spec(MaskStrategy::Stochastic, LayerPattern::Uniform);
    s.mask.expert_dropout_per_layer = Some(vec![0.1; 13]);
    assert_eq!(err(&s, 12).field(), "adapter.mlae.mask.expert_dropout_per_layer");
    s.mask.expert_dropout_per_layer = Some(vec![0.1, 1.5]);
    assert_eq!(
        err(&s, 2).to_string(),
        "adapter.mlae.mask.expert_dropout_per_layer[1]: 1.5 is outside [0, 1)"
    );
}

#[test]
fn contradictions_are_rejected() {
    // stochastic + random
    let e = err(&spec(MaskStrategy::Stochastic, LayerPattern::Random), 12);
    assert_eq!(e.field(), "adapter.mlae.mask.pattern");
    assert!(e.to_string().contains("random"), "{e}");
    // expert dropout ignored by none / fixed
    for st in [MaskStrategy::None, MaskStrategy::Fixed] {
        let s = MlaeSpec { expert_dropout: 0.3, ..spec(st, LayerPattern::Uniform) };
        assert_eq!(err(&s, 12).field(), "adapter.mlae.expert_dropout");
    }
    // expert dropout with a per-block stochastic pattern
    let s = MlaeSpec { expert_dropout: 0.3, ..spec(MaskStrategy::Stochastic, LayerPattern::Hourglass) };
    assert_eq!(err(&s, 12).field(), "adapter.mlae.expert_dropout");
    // pattern with none
    assert_eq!(
        err(&spec(MaskStrategy::None, LayerPattern::Incremental), 12).field(),
        "adapter.mlae.mask.pattern"
    );
    // list with a named pattern, list with the wrong strategy
    let mut s = spec(MaskStrategy::Fixed, LayerPattern::Incremental);
    s.mask.experts_per_layer = Some(vec![8; 12]);
    assert_eq!(err(&s, 12).field(), "adapter.mlae.mask.experts_per_layer");
    let mut s = spec(MaskStrategy::Stochastic, LayerPattern::Uniform);
    s.mask.experts_per_layer = Some(vec![8; 12]);
    assert_eq!(err(&s, 12).field(), "adapter.mlae.mask.experts_per_layer");
    let mut s = spec(MaskStrategy::Mixed, LayerPattern::Uniform);
    s.mask.expert_dropout_per_layer = Some(vec![0.5; 12]);
    assert_eq!(err(&s, 12).field(), "adapter.mlae.mask.expert_dropout_per_layer");
    // paper allocation patterns assume 8 experts
    let s = MlaeSpec { experts: 4, ..spec(MaskStrategy::Fixed, LayerPattern::Protruding) };
    assert_eq!(err(&s, 12).field(), "adapter.mlae.experts");
}

#[test]
fn resolve_semantics() {
    let ps = |p: &MlaePlan| p.layers.iter().map(|l| l.expert_dropout).collect::<Vec<_>>();
    // none
    let plan = resolve(&spec(MaskStrategy::None, LayerPattern::Uniform), 12).unwrap();
    assert!(plan.layers.iter().all(|l| l.experts == 8 && l.expert_dropout == 0.0));
    assert_eq!(plan.strategy, MaskStrategy::None);
    assert!(!plan.has_expert_dropout());
    // stochastic uniform uses expert_dropout
    let s = MlaeSpec { expert_dropout: 0.7, ..spec(MaskStrategy::Stochastic, LayerPattern::Uniform) };
    let plan = resolve(&s, 5).unwrap();
    assert!(plan.layers.iter().all(|l| l.experts == 8 && l.expert_dropout == 0.7));
    assert!(plan.has_expert_dropout());
    // stochastic pattern
    let plan = resolve(&spec(MaskStrategy::Stochastic, LayerPattern::Protruding), 12).unwrap();
    assert_eq!(ps(&plan), pattern::STOCHASTIC_PROTRUDING);
    assert!(plan.layers.iter().all(|l| l.experts == 8));
    // stochastic explicit list at another depth
    let mut s = spec(MaskStrategy::Stochastic, LayerPattern::Uniform);
    s.mask.expert_dropout_per_layer = Some(vec![0.0, 0.5, 0.9]);
    assert_eq!(ps(&resolve(&s, 3).unwrap()), [0.0, 0.5, 0.9]);
    // fixed explicit list, 2 targets, expert rank 2
    let mut s = MlaeSpec { expert_rank: 2, ..spec(MaskStrategy::Fixed, LayerPattern::Uniform) };
    s.mask.experts_per_layer = Some(vec![1, 3]);
    let targets = [TargetLayer::Fc1, TargetLayer::Qkv];
    Mlae::validate(&s, &targets).unwrap();
    let plan = Mlae::resolve(&s, &targets, 2).unwrap();
    let got: Vec<_> = plan
        .layers
        .iter()
        .map(|l| (l.site.block, l.site.target, l.experts, l.expert_rank, l.expert_dropout))
        .collect();
    assert_eq!(
        got,
        [
            (0, TargetLayer::Fc1, 1, 2, 0.0),
            (0, TargetLayer::Qkv, 1, 2, 0.0),
            (1, TargetLayer::Fc1, 3, 2, 0.0),
            (1, TargetLayer::Qkv, 3, 2, 0.0)
        ]
    );
    assert_eq!(plan.total_rank(), 16);
    assert_eq!(plan.layer(1, TargetLayer::Qkv).unwrap().experts, 3);
    assert!(plan.layer(1, TargetLayer::Proj).is_none());
    // fixed uniform = experts everywhere
    assert!(
        resolve(&spec(MaskStrategy::Fixed, LayerPattern::Uniform), 7)
            .unwrap()
            .layers
            .iter()
            .all(|l| l.experts == 8)
    );
    // mixed random: seeded, reproducible, mean 8
    let mut s = MlaeSpec { expert_dropout: 0.5, ..spec(MaskStrategy::Mixed, LayerPattern::Random) };
    s.mask.seed = 11;
    let a = resolve(&s, 12).unwrap();
    assert_eq!(a, resolve(&s, 12).unwrap());
    assert_eq!(a.layers.iter().map(|l| l.experts).sum::<usize>(), 96);
    assert!(a.layers.iter().all(|l| l.expert_dropout == 0.5 && (1..=14).contains(&l.experts)));
    let plan_json = serde_json::to_string(&a).unwrap();
    assert_eq!(serde_json::from_str::<MlaePlan>(&plan_json).unwrap(), a);
}

#[test]
fn layer_params_count_a_b_and_lambdas() {
    let s = MlaeSpec { experts: 4, expert_rank: 2, ..Default::default() };
    let plan = resolve(&s, 12).unwrap();
    // 4 experts of rank 2 on qkv (768 -> 2304): 8 rows of A and B, plus 4 lambdas
    assert_eq!(plan.layers[0].params(&ModelDims::vit_b16(10, 224)), 8 * 3072 + 4);
}

#[test]
fn frozen_coefficients_stay_in_the_adapter_but_do_not_train() {
    // Table 5's rows without adaptive coefficients: lambda fixed at its init.
    let s: MlaeSpec = toml::from_str("adaptive_coeffs = false\ncoeff_init = 2.0").unwrap();
    assert!(!s.adaptive_coeffs);
    assert!(MlaeSpec::default().adaptive_coeffs, "adaptive by default, as the paper's method");
    assert!(Mlae::label(&s).ends_with("-init2-frozen"), "{}", Mlae::label(&s));
    let plan = resolve(&s, 12).unwrap();
    assert!(!plan.trains(ParamRole::Coefficient, 0) && !plan.ever_trains(ParamRole::Coefficient));
    assert!(plan.trains(ParamRole::Adapter, 0) && plan.trains(ParamRole::Head, 0));
    assert!(plan.describe(100).unwrap().contains("frozen at 2"));

    let dims = ModelDims::vit_b16(100, 224);
    let count = |s: &MlaeSpec| {
        let spec = AdapterSpec { kind: AdapterKind::Mlae, mlae: s.clone(), ..Default::default() };
        spec.resolve(12).unwrap().count_params(&dims)
    };
    let (frozen, adaptive) = (count(&s), count(&MlaeSpec::default()));
    assert_eq!(frozen.adapter, adaptive.adapter, "the lambdas are still part of the adapter");
    assert_eq!(adaptive.trainable - frozen.trainable, 12 * 8, "one lambda per expert per layer");

    // A plan stored before the switch existed trained its lambdas.
    let mut stored = serde_json::to_value(resolve(&MlaeSpec::default(), 12).unwrap()).unwrap();
    stored.as_object_mut().unwrap().remove("adaptive_coeffs");
    let old: MlaePlan = serde_json::from_value(stored).unwrap();
    assert!(old.adaptive_coeffs);
}
