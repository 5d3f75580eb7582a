//! Tests of the registry: the `[adapter]` table as TOML, old keys, dispatch, counts per kind.

use super::*;
use crate::methods::dmlora::DmloraSpec;
use crate::methods::lora::LoraSpec;
use crate::methods::mlae::{MaskSpec, MaskStrategy, MlaeSpec};
use crate::pattern::LayerPattern;
use crate::stages::ParamRole;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    adapter: AdapterSpec,
}

fn parse(s: &str) -> Result<AdapterSpec, String> {
    toml::from_str::<Config>(s).map(|c| c.adapter).map_err(|e| e.to_string())
}

#[test]
fn toml_defaults_and_round_trip() {
    let s = parse("[adapter]\nkind = \"lora\"\n").unwrap();
    assert_eq!(s, AdapterSpec { kind: AdapterKind::Lora, ..AdapterSpec::default() });
    let s = parse(
        "[adapter]\nkind = 'mlae'\ntargets = ['qkv', 'fc1']\n[adapter.mlae]\nexperts = 4\nexpert_rank = 2\n\
         coeff_init = 0.25\nexpert_dropout = 0.7\n[adapter.mlae.mask]\nstrategy = 'mixed'\npattern = 'random'\n\
         seed = 5\n",
    )
    .unwrap();
    assert_eq!(s.targets, [TargetLayer::Qkv, TargetLayer::Fc1]);
    let m = &s.mlae;
    assert_eq!((m.experts, m.expert_rank, m.coeff_init, m.expert_dropout), (4, 2, 0.25, 0.7));
    assert_eq!(m.mask.seed, 5);
    let back: AdapterSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    // a resolved config can be written back as TOML (None fields are left out)
    let mut full = s.clone();
    full.mlae.mask.experts_per_layer = Some(vec![8; 12]);
    full.lora.alpha = Some(16.0);
    full.dmlora.stage2_lr = Some(0.1);
    for spec in [s.clone(), full] {
        let text = toml::to_string(&spec).unwrap();
        assert_eq!(toml::from_str::<AdapterSpec>(&text).unwrap(), spec.reduced(), "{text}");
    }
    let all = parse(
        "[adapter]\nkind = 'dmlora'\n[adapter.dmlora]\nbranches = 3\nbranch_rank = 2\nstage2_lr = 0.01\n",
    )
    .unwrap();
    assert_eq!((all.dmlora.branches, all.dmlora.branch_rank, all.dmlora.stage2_lr), (3, 2, Some(0.01)));
    let lora = parse(
        "[adapter]\nkind = 'lora-dropout'\n[adapter.lora]\nrank = 4\nalpha = 8.0\nupdate_dropout = 0.1\n",
    )
    .unwrap();
    assert_eq!(
        lora.lora,
        LoraSpec { rank: 4, alpha: Some(8.0), input_dropout: 0.0, update_dropout: 0.1, ..Default::default() }
    );
}

#[test]
fn every_name_parses_in_toml() {
    for k in AdapterKind::ALL {
        let s = parse(&format!("[adapter]\nkind = '{k}'\n")).unwrap();
        assert_eq!(s.kind, *k);
        assert_eq!(s.resolve(12).unwrap().kind(), *k);
    }
    for t in TargetLayer::ALL {
        assert_eq!(parse(&format!("[adapter]\ntargets = ['{t}']\n")).unwrap().targets, [*t]);
    }
    for p in LayerPattern::ALL {
        let s = parse(&format!("[adapter.mlae.mask]\npattern = '{p}'\n")).unwrap();
        assert_eq!(s.mlae.mask.pattern, *p);
    }
    for m in MaskStrategy::ALL {
        assert_eq!(
            parse(&format!("[adapter.mlae.mask]\nstrategy = '{m}'\n")).unwrap().mlae.mask.strategy,
            *m
        );
    }
}

#[test]
fn sections_are_named_by_kind() {
    let sections: Vec<_> = AdapterKind::ALL.iter().map(|k| (k.as_str(), k.section())).collect();
    assert_eq!(
        sections,
        [
            ("linear-probe", None),
            ("full", None),
            ("lora", Some("lora")),
            ("lora-dropout", Some("lora")),
            ("mlae", Some("mlae")),
            ("dmlora", Some("dmlora")),
            ("dora", Some("lora"))
        ]
    );
}

#[test]
fn unknown_names_and_fields_are_rejected_with_the_key() {
    let e = parse("[adapter.mlae.mask]\npattern = 'zigzag'\n").unwrap_err();
    assert!(e.contains("zigzag") && e.contains("pattern") && e.contains("hourglass"), "{e}");
    let e = parse("[adapter]\nkind = 'lora'\nrank = 4\n").unwrap_err();
    assert!(e.contains("rank") && e.contains("unknown field"), "{e}");
    let e = parse("[adapter.dmlora]\nbranch = 4\n").unwrap_err();
    assert!(e.contains("branch") && e.contains("unknown field"), "{e}");
    let e = parse("[adapter.lora]\ndropout = 0.1\n").unwrap_err();
    assert!(e.contains("dropout") && e.contains("input_dropout"), "{e}");
    let e = parse("[adapter.mlae.mask]\np_per_layer = [0.1]\n").unwrap_err();
    assert!(e.contains("expert_dropout_per_layer"), "{e}");
    let e = parse("[adapter]\ntargets = ['qkv', 'mlp']\n").unwrap_err();
    assert!(e.contains("mlp") && e.contains("targets"), "{e}");
    let e = "zigzag".parse::<LayerPattern>().unwrap_err();
    assert_eq!(e.field(), "adapter.mlae.mask.pattern");
    assert!(e.to_string().contains("uniform, incremental"), "{e}");
}

#[test]
fn old_keys_fail_naming_the_new_key() {
    let cases = [
        (
            "experts = 8",
            "adapter.experts was renamed: use adapter.mlae.experts (mlae), adapter.lora.rank (lora, lora-dropout) or adapter.dmlora.branch_rank (dmlora)",
        ),
        ("expert_rank = 2", "adapter.expert_rank was renamed: use adapter.mlae.expert_rank"),
        ("coeff_init = 0.5", "adapter.coeff_init was renamed: use adapter.mlae.coeff_init"),
        ("lora_alpha = 16.0", "adapter.lora_alpha was renamed: use adapter.lora.alpha"),
        (
            "dropout = 0.5",
            "adapter.dropout was renamed: use adapter.mlae.expert_dropout (mlae), adapter.lora.input_dropout (lora) or adapter.lora.update_dropout (lora-dropout)",
        ),
        (
            "mask = { strategy = 'fixed' }",
            "adapter.mask was renamed: use [adapter.mlae.mask] (with p_per_layer renamed expert_dropout_per_layer)",
        ),
    ];
    for (line, want) in cases {
        let e = parse(&format!("[adapter]\nkind = 'lora'\n{line}\n")).unwrap_err();
        assert!(e.contains(want), "{line}: {e}");
    }
    // an old [adapter.mask] table, and several old keys at once: every one is named
    let e = parse("[adapter]\ndropout = 0.5\ncoeff_init = 1.0\n[adapter.mask]\nstrategy = 'mixed'\n")
        .unwrap_err();
    assert!(
        e.contains("adapter.coeff_init was renamed") && e.contains("; adapter.dropout was renamed"),
        "{e}"
    );
    assert!(e.contains("adapter.mask was renamed"), "{e}");
    // the typed error, for callers that deserialize through serde_json
    let e = serde_json::from_str::<AdapterSpec>(r#"{"dropout": 0.1}"#).unwrap_err().to_string();
    assert!(e.starts_with("adapter.dropout was renamed: use adapter.mlae.expert_dropout"), "{e}");
    let e: SpecError =
        AdapterSpec::try_from(toml::from_str::<AdapterTable>("coeff_init = 0.5\ndropout = 0.1").unwrap())
            .unwrap_err();
    assert_eq!(e.field(), "adapter.coeff_init");
}

/// What the flat layout's `AdapterSpec` wrote into a run's config.toml (every field).
fn stored_flat(kind: &str, experts: usize, dropout: f64) -> toml::Value {
    let text = format!(
        "kind = '{kind}'\ntargets = ['qkv', 'fc1']\nexperts = {experts}\nexpert_rank = 2\ncoeff_init = 0.25\n\
         lora_alpha = 16.0\ndropout = {dropout}\n[mask]\nstrategy = 'mixed'\npattern = 'uniform'\n\
         experts_per_layer = [1, 3]\nseed = 4\n[dmlora]\nbranches = 3\np_start = 0.0\np_end = 0.5\n\
         schedule = 'linear'\nramp_start = 0.0\nramp_end = 0.7\nstage2_start = 0.8\nscale_init = 1.0\n"
    );
    toml::Value::Table(toml::from_str(&text).unwrap())
}

#[test]
fn stored_specs_of_the_flat_layout_are_upgraded_by_kind() {
    let up = |kind, experts, p| AdapterSpec::from_stored(stored_flat(kind, experts, p)).unwrap();
    let targets = vec![TargetLayer::Qkv, TargetLayer::Fc1];
    let mlae = up("mlae", 4, 0.5);
    let mask = MaskSpec {
        strategy: MaskStrategy::Mixed,
        experts_per_layer: Some(vec![1, 3]),
        seed: 4,
        ..Default::default()
    };
    let want = MlaeSpec {
        experts: 4,
        expert_rank: 2,
        coeff_init: 0.25,
        adaptive_coeffs: true,
        expert_dropout: 0.5,
        mask,
    };
    assert_eq!((mlae.kind, &mlae.targets, &mlae.mlae), (AdapterKind::Mlae, &targets, &want));
    assert_eq!(mlae.lora, LoraSpec::default(), "kinds that did not read a key get nothing from it");
    let lora = up("lora", 4, 0.1);
    assert_eq!(
        lora.lora,
        LoraSpec {
            rank: 4,
            alpha: Some(16.0),
            input_dropout: 0.1,
            update_dropout: 0.0,
            ..Default::default()
        }
    );
    assert_eq!(lora.mlae, MlaeSpec::default());
    let lora_d = up("lora-dropout", 4, 0.3);
    assert_eq!(
        lora_d.lora,
        LoraSpec {
            rank: 4,
            alpha: Some(16.0),
            input_dropout: 0.0,
            update_dropout: 0.3,
            ..Default::default()
        }
    );
    let dm = up("dmlora", 2, 0.0);
    assert_eq!(dm.dmlora, DmloraSpec { branches: 3, branch_rank: 2, ..Default::default() });
    // the upgraded specs resolve to what the flat layout meant: same counts as before
    let dims = ModelDims::vit_b16(10, 224);
    assert_eq!(
        dm.resolve(2).unwrap().count_params(&dims).adapter,
        2 * ((6 * 3072 + 1) + (6 * (768 + 3072) + 1))
    );
    // [dmlora] had the current layout already (less branch_rank): it stays as stored
    let dmlora = DmloraSpec { branches: 3, ..Default::default() };
    let probe = AdapterSpec { kind: AdapterKind::LinearProbe, targets, dmlora, ..Default::default() };
    assert_eq!(up("linear-probe", 8, 0.0), probe);
    // the current layout reads as it is, from TOML and from JSON (adapter files' metadata)
    let spec = AdapterSpec {
        kind: AdapterKind::Lora,
        lora: LoraSpec { rank: 4, ..Default::default() },
        ..Default::default()
    };
    let toml_value = toml::Value::try_from(&spec).unwrap();
    assert_eq!(AdapterSpec::from_stored(toml_value).unwrap(), spec);
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(AdapterSpec::from_stored(&mut serde_json::Deserializer::from_str(&json)).unwrap(), spec);
    // and what is neither fails, naming the key
    let bad = toml::Value::Table(toml::from_str("kind = 'lora'\nrnak = 4").unwrap());
    assert!(AdapterSpec::from_stored(bad).unwrap_err().to_string().contains("rnak"));
}

/// A spec of `kind` whose every table and key differs from its default.
fn busy(kind: AdapterKind) -> AdapterSpec {
    AdapterSpec {
        kind,
        targets: vec![TargetLayer::Qkv, TargetLayer::Fc2],
        mlae: MlaeSpec {
            experts: 4,
            coeff_init: 0.5,
            expert_dropout: 0.3,
            mask: MaskSpec { experts_per_layer: None, seed: 3, ..Default::default() },
            ..Default::default()
        },
        lora: LoraSpec {
            rank: 4,
            alpha: Some(8.0),
            input_dropout: 0.1,
            update_dropout: 0.2,
            update_dropout_on: crate::UpdateDropoutOn::Matrix,
        },
        dmlora: DmloraSpec { branches: 2, stage2_lr: Some(0.01), ..Default::default() },
    }
}

#[test]
fn a_written_spec_holds_what_its_kind_reads_and_reads_back_for_every_kind() {
    for kind in AdapterKind::ALL {
        let spec = busy(*kind);
        let want = spec.reduced();
        assert_eq!(want.reduced(), want, "{kind}");
        assert_eq!((want.kind, &want.targets), (*kind, &spec.targets));
        // a config's TOML (a run directory's config.toml) and an adapter file's JSON, read as a
        // person's config (every key checked) and as a stored spec
        let text = toml::to_string(&spec).unwrap();
        let config = toml::Table::from_iter([("adapter".to_string(), toml::Value::try_from(&spec).unwrap())]);
        assert_eq!(parse(&toml::to_string(&config).unwrap()).unwrap(), want, "{kind}:\n{text}");
        assert_eq!(toml::from_str::<AdapterSpec>(&text).unwrap(), want, "{kind}:\n{text}");
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<AdapterSpec>(&json).unwrap(), want, "{kind}: {json}");
        let stored = AdapterSpec::from_stored(&mut serde_json::Deserializer::from_str(&json)).unwrap();
        assert_eq!(stored, want, "{kind}");
        // exactly its own table, with the keys it reads
        let table: toml::Table = toml::from_str(&text).unwrap();
        let tables: Vec<&str> = table.iter().filter(|(_, v)| v.is_table()).map(|(k, _)| k.as_str()).collect();
        assert_eq!(tables, kind.section().into_iter().collect::<Vec<_>>(), "{kind}");
        if let Some(section) = kind.section() {
            for key in kind.unread_keys() {
                assert!(!table[section].as_table().unwrap().contains_key(*key), "{kind}: {key}\n{text}");
            }
        }
        // the same label and plan as the spec it came from: what the kind reads is unchanged
        assert_eq!(want.label(), spec.label(), "{kind}");
        assert_eq!(want.resolve(12), spec.resolve(12), "{kind}");
    }
}

#[test]
fn keys_a_kind_does_not_read_are_refused_naming_them() {
    let cases = [
        (
            "dora",
            "[adapter.lora]\nrank = 4\nupdate_dropout = 0.1",
            "adapter.lora.update_dropout: kind dora does not read it (only lora-dropout does)",
        ),
        // written as its default: still written, still refused
        (
            "dora",
            "[adapter.lora]\nupdate_dropout = 0.0",
            "adapter.lora.update_dropout: kind dora does not read it (only lora-dropout does)",
        ),
        (
            "lora",
            "[adapter.lora]\nupdate_dropout_on = 'matrix'",
            "adapter.lora.update_dropout_on: kind lora does not read it (only lora-dropout does)",
        ),
        (
            "lora-dropout",
            "[adapter.lora]\nupdate_dropout = 0.5\ninput_dropout = 0.1",
            "adapter.lora.input_dropout: kind lora-dropout does not read it (only lora and dora do)",
        ),
        ("lora", "[adapter.mlae]\nexperts = 4", "adapter.mlae: kind lora does not read it (only mlae does)"),
        (
            "mlae",
            "[adapter.lora]\nrank = 8",
            "adapter.lora: kind mlae does not read it (only lora, lora-dropout and dora do)",
        ),
        (
            "linear-probe",
            "[adapter.dmlora]",
            "adapter.dmlora: kind linear-probe does not read it (only dmlora does)",
        ),
        (
            "full",
            "[adapter.mlae.mask]\nstrategy = 'fixed'",
            "adapter.mlae: kind full does not read it (only mlae does)",
        ),
    ];
    for (kind, tables, want) in cases {
        let e = parse(&format!("[adapter]\nkind = '{kind}'\n{tables}\n")).unwrap_err();
        assert!(e.contains(want), "{kind} {tables}: {e}");
        // the same through JSON, and as the typed error with the key as its field
        let table: toml::Table =
            toml::from_str(&format!("kind = '{kind}'\n{}", tables.replace("[adapter.", "["))).unwrap();
        let json = serde_json::to_string(&table).unwrap();
        let e = serde_json::from_str::<AdapterSpec>(&json).unwrap_err().to_string();
        assert!(e.starts_with(want), "{json}: {e}");
        let e = AdapterSpec::try_from(AdapterTable::deserialize(toml::Value::Table(table.clone())).unwrap())
            .unwrap_err();
        assert_eq!(e.field(), want.split(':').next().unwrap());
        // a spec the toolkit stored (older versions wrote every table) still reads
        let stored = AdapterSpec::from_stored(toml::Value::Table(table)).unwrap();
        assert_eq!(stored.kind.as_str(), kind);
    }
    // the default kind (mlae) when none is written
    let e = parse("[adapter.dmlora]\nbranches = 2\n").unwrap_err();
    assert!(e.contains("adapter.dmlora: kind mlae does not read it (only dmlora does)"), "{e}");
    // old keys are named first: they say where the key went
    let e = parse("[adapter]\nkind = 'lora'\ndropout = 0.1\n[adapter.mlae]\nexperts = 4\n").unwrap_err();
    assert!(e.contains("adapter.dropout was renamed"), "{e}");
    // what a kind reads is accepted, and what nobody wrote is never refused
    for (kind, tables) in [
        ("dora", "[adapter.lora]\nrank = 4\nalpha = 8.0\ninput_dropout = 0.1"),
        ("lora", "[adapter.lora]\ninput_dropout = 0.1"),
        ("lora-dropout", "[adapter.lora]\nupdate_dropout = 0.1\nupdate_dropout_on = 'matrix'"),
        ("mlae", "[adapter.mlae.mask]\nstrategy = 'none'"),
        ("dmlora", "[adapter.dmlora]\nbranches = 2"),
        ("linear-probe", ""),
        ("full", "targets = ['fc1']"),
    ] {
        let s = parse(&format!("[adapter]\nkind = '{kind}'\n{tables}\n")).unwrap();
        assert_eq!(s, s.reduced(), "{kind}");
    }
}

#[test]
fn every_kind_has_valid_examples_that_set_only_what_it_reads() {
    for kind in AdapterKind::ALL {
        for depth in [1, 2, 12] {
            let examples = kind.examples(depth);
            assert!(!examples.is_empty(), "{kind}");
            for spec in examples {
                assert_eq!(spec.kind, *kind);
                assert_eq!(spec.reduced(), spec, "{kind}");
                let plan = spec.resolve(depth).unwrap_or_else(|e| panic!("{kind} at depth {depth}: {e}"));
                let m = plan.method();
                assert_eq!(m.sites().len(), if kind.has_adapter() { depth } else { 0 }, "{kind}");
                for site in m.sites() {
                    assert!(m.update_rank(site) > 0, "{kind}: {}", site.name());
                }
            }
        }
    }
}

#[test]
fn update_ranks_per_kind() {
    let rank = |spec: AdapterSpec, block: usize, target: TargetLayer| {
        spec.resolve(12).unwrap().method().update_rank(LayerSite { block, target })
    };
    let q = TargetLayer::Qkv;
    assert_eq!(rank(AdapterSpec::default(), 3, q), 8);
    assert_eq!(rank(AdapterSpec::default(), 3, TargetLayer::Fc1), 0, "not adapted");
    let mlae = MlaeSpec { experts: 4, expert_rank: 2, ..Default::default() };
    assert_eq!(rank(AdapterSpec { mlae, ..Default::default() }, 0, q), 8);
    let kind =
        |kind| AdapterSpec { kind, lora: LoraSpec { rank: 4, ..Default::default() }, ..Default::default() };
    for k in [AdapterKind::Lora, AdapterKind::LoraDropout, AdapterKind::Dora] {
        assert_eq!(rank(kind(k), 11, q), 4, "{k}");
    }
    let dmlora = DmloraSpec { branches: 3, branch_rank: 2, ..Default::default() };
    assert_eq!(rank(AdapterSpec { kind: AdapterKind::Dmlora, dmlora, ..Default::default() }, 5, q), 6);
    for k in [AdapterKind::LinearProbe, AdapterKind::Full] {
        assert_eq!(rank(kind(k), 0, q), 0, "{k}");
    }
}

#[test]
fn unused_sections_are_not_validated() {
    let mut s = AdapterSpec { kind: AdapterKind::Lora, ..Default::default() };
    s.mlae.mask =
        MaskSpec { strategy: MaskStrategy::Stochastic, pattern: LayerPattern::Random, ..Default::default() };
    s.mlae.experts = 0;
    s.dmlora.branches = 0;
    assert!(s.resolve(12).is_ok());
    let lp = AdapterSpec {
        kind: AdapterKind::LinearProbe,
        targets: vec![],
        lora: LoraSpec { rank: 0, ..Default::default() },
        ..Default::default()
    };
    let plan = lp.resolve(12).unwrap();
    assert!(plan.sites().is_empty());
    assert_eq!(plan, AdapterPlan::LinearProbe(linear_probe::LinearProbePlan));
}

#[test]
fn common_checks() {
    let err = |s: AdapterSpec, depth| s.resolve(depth).unwrap_err();
    for kind in AdapterKind::ALL.iter().filter(|k| k.has_adapter()) {
        let e = err(AdapterSpec { kind: *kind, targets: vec![], ..Default::default() }, 12);
        assert_eq!(e.field(), "adapter.targets", "{kind}");
        let twice = AdapterSpec {
            kind: *kind,
            targets: vec![TargetLayer::Qkv, TargetLayer::Qkv],
            ..Default::default()
        };
        assert!(err(twice, 12).to_string().contains("qkv is listed twice"));
        let both = AdapterSpec {
            kind: *kind,
            targets: vec![TargetLayer::Q, TargetLayer::Qkv],
            ..Default::default()
        };
        let e = err(both, 12);
        assert!(e.field() == "adapter.targets" && e.to_string().contains("q is a slice of qkv"), "{e}");
    }
    assert_eq!(err(AdapterSpec::default(), 0).field(), "model.depth");
    assert_eq!(err(AdapterSpec { kind: AdapterKind::Full, ..Default::default() }, 0).field(), "model.depth");
}

#[test]
fn plans_per_kind() {
    let plan = |kind| AdapterSpec { kind, ..Default::default() }.resolve(12).unwrap();
    // lora-dropout keeps its dropout in the plan, lora its own
    let mut spec = AdapterSpec { kind: AdapterKind::LoraDropout, ..Default::default() };
    spec.lora = LoraSpec { input_dropout: 0.2, update_dropout: 0.1, ..Default::default() };
    let AdapterPlan::LoraDropout(p) = spec.resolve(12).unwrap() else { panic!("kind") };
    assert_eq!((p.input_dropout, p.update_dropout, p.scale), (0.0, 0.1, 1.0));
    spec.kind = AdapterKind::Lora;
    let AdapterPlan::Lora(p) = spec.resolve(12).unwrap() else { panic!("kind") };
    assert_eq!((p.input_dropout, p.update_dropout), (0.2, 0.0));
    // dmlora: K branches of rank r on every layer
    let mut spec = AdapterSpec { kind: AdapterKind::Dmlora, ..Default::default() };
    spec.dmlora.branch_rank = 2;
    let AdapterPlan::Dmlora(p) = spec.resolve(12).unwrap() else { panic!("kind") };
    assert_eq!((p.spec.branches, p.spec.branch_rank, p.layers.len()), (4, 2, 12));
    assert_eq!(p.spec, DmloraSpec { branch_rank: 2, ..Default::default() });
    // sites and their order are the same for every adapter kind
    let sites = plan(AdapterKind::Mlae).sites();
    for k in [AdapterKind::Lora, AdapterKind::LoraDropout, AdapterKind::Dmlora] {
        assert_eq!(plan(k).sites(), sites, "{k}");
    }
    // plans serialise tagged by kind, and come back
    for k in AdapterKind::ALL {
        let p = plan(*k);
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(&format!("\"{k}\"")), "{json}");
        assert_eq!(serde_json::from_str::<AdapterPlan>(&json).unwrap(), p);
    }
}

fn count(spec: AdapterSpec) -> ParamCount {
    count_params(&spec.resolve(12).unwrap(), &ModelDims::vit_b16(100, 224))
}

#[test]
fn counts_per_kind() {
    let lp = count(AdapterSpec { kind: AdapterKind::LinearProbe, ..Default::default() });
    assert_eq!((lp.adapter, lp.trainable), (0, 76_900));
    let full = count(AdapterSpec { kind: AdapterKind::Full, ..Default::default() });
    assert_eq!((full.adapter, full.trainable), (0, 85_798_656 + 76_900));
    let lora = count(AdapterSpec { kind: AdapterKind::Lora, ..Default::default() });
    assert_eq!(lora.adapter, 12 * 8 * 3072);
    let lora_d = count(AdapterSpec { kind: AdapterKind::LoraDropout, ..Default::default() });
    assert_eq!(lora_d.adapter, lora.adapter);
    let dmlora = DmloraSpec { branch_rank: 2, ..Default::default() };
    let dm = count(AdapterSpec { kind: AdapterKind::Dmlora, dmlora, ..Default::default() });
    assert_eq!(dm.adapter, 12 * (4 * 2 * 3072 + 1));
    // the 8x1 / 4x2 / 2x4 ablation: same A/B budget, fewer lambdas
    let k = |experts, expert_rank| {
        count(AdapterSpec {
            mlae: MlaeSpec { experts, expert_rank, ..Default::default() },
            ..Default::default()
        })
        .adapter
    };
    assert_eq!(k(8, 1), 295_008);
    assert_eq!(k(4, 2), 12 * (8 * 3072 + 4));
    assert_eq!(k(2, 4), 12 * (8 * 3072 + 2));
    // fixed patterns spend the same budget as 8 everywhere
    for pattern in [LayerPattern::Incremental, LayerPattern::Hourglass, LayerPattern::Random] {
        let mask = MaskSpec { strategy: MaskStrategy::Fixed, pattern, ..Default::default() };
        let spec = AdapterSpec { mlae: MlaeSpec { mask, ..Default::default() }, ..Default::default() };
        assert_eq!(count(spec).adapter, 295_008, "{pattern}");
    }
    // all four targets
    let all = count(AdapterSpec { targets: TargetLayer::WHOLE.to_vec(), ..Default::default() });
    assert_eq!(all.adapter, 12 * 8 * ((768 + 2304 + 1) + (768 + 768 + 1) + 2 * (768 + 3072 + 1)));
    assert!(format!("{all}").starts_with("trainable "));
    // q and v as slices of qkv: each a dim -> dim layer of its own
    let qv = count(AdapterSpec {
        kind: AdapterKind::Lora,
        targets: vec![TargetLayer::Q, TargetLayer::V],
        lora: LoraSpec { rank: 8, ..Default::default() },
        ..Default::default()
    });
    assert_eq!(qv.adapter, 12 * 2 * 8 * (768 + 768));
}

#[test]
fn one_stage_methods_train_every_role_at_the_main_rate() {
    let main = |step: u64| 1e-3 * (1.0 - step as f64 / 200.0);
    for kind in [
        AdapterKind::LinearProbe,
        AdapterKind::Full,
        AdapterKind::Lora,
        AdapterKind::LoraDropout,
        AdapterKind::Mlae,
    ] {
        let plan = AdapterSpec { kind, ..Default::default() }.resolve(12).unwrap();
        let s = plan.schedule();
        assert_eq!(
            (s.stage(0, 100), s.stage(99, 100), s.stage_start(0, 100), s.stage_start(1, 100)),
            (0, 0, Some(0), None)
        );
        for role in ParamRole::ALL {
            assert!(s.trains(*role, 0), "{kind} {role:?}");
            assert_eq!(s.lr(*role, 42, 100, &main), main(42), "{kind} {role:?}");
        }
        assert_eq!(s.describe(100), None);
    }
}
