use super::*;
use crate::testing::write;

const BASE: &str = r#"
[model]
preset = "vit-ti16"
image_size = 32

[data]
benchmark = "vtab"
task = "cifar"
root = "/data/vtab"
normalization = "inception"

[train]
epochs = 3
lr = 1e-3
"#;

#[test]
fn extends_merges_and_overrides_win() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "base.toml", BASE);
    let child = write(
        tmp.path(),
        "child.toml",
        "extends = \"base.toml\"\n[adapter]\nkind = \"lora\"\n[adapter.lora]\nrank = 4\n[train]\nepochs = 7\n",
    );
    let cfg = ExperimentConfig::load(&[&child], &["train.lr=0.01".into(), "data.task=dtd".into()]).unwrap();
    assert_eq!(cfg.train.epochs, 7);
    assert_eq!(cfg.train.lr, 0.01);
    assert_eq!(cfg.train.batch_size, 64, "unset keys keep the paper's defaults");
    assert_eq!(cfg.data.task, "dtd");
    assert_eq!(cfg.adapter.lora.rank, 4);
    assert_eq!(cfg.train_split(), "train800val200");
    // The resolved TOML parses back to the same config.
    let again = ExperimentConfig::from_table(cfg.to_toml().parse().unwrap(), &child).unwrap();
    assert_eq!(again, cfg);
}

#[test]
fn unknown_keys_and_bad_values_name_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "c.toml", &format!("{BASE}\nlearning_rat = 3\n"));
    let err = ExperimentConfig::load(&[&p], &[]).unwrap_err().to_string();
    assert!(err.contains("c.toml") && err.contains("learning_rat"), "{err}");

    let p = write(tmp.path(), "d.toml", &BASE.replace("epochs = 3", "epochs = \"three\""));
    let err = ExperimentConfig::load(&[&p], &[]).unwrap_err().to_string();
    assert!(err.contains("d.toml") && err.contains("train.epochs"), "{err}");

    let p = write(tmp.path(), "e.toml", BASE);
    let err = ExperimentConfig::load(&[&p], &["train.label_smoothing=1.5".into()]).unwrap_err().to_string();
    assert!(err.contains("train.label_smoothing"), "{err}");
    let err = ExperimentConfig::load(&[&p], &["train.device=tpu".into()]).unwrap_err().to_string();
    assert!(err.contains("train.device"), "{err}");
    let err =
        ExperimentConfig::load(&[&p], &["adapter.mlae.expert_dropout=1.5".into()]).unwrap_err().to_string();
    assert!(err.contains("adapter.mlae.expert_dropout"), "{err}");
    // a key of the old flat layout names its new place, and the file
    let err = ExperimentConfig::load(&[&p], &["adapter.dropout=0.5".into()]).unwrap_err().to_string();
    assert!(err.contains("adapter.dropout was renamed: use adapter.mlae.expert_dropout (mlae)"), "{err}");
    assert!(err.contains("e.toml"), "{err}");
    let err = ExperimentConfig::load::<&Path>(&[], &[]).unwrap_err().to_string();
    assert!(err.contains("no config file"), "{err}");
}

/// `train.deterministic` is off unless written, written back only when on, and reads back.
#[test]
fn deterministic_defaults_off_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "c.toml", BASE);
    let cfg = ExperimentConfig::load(&[&p], &[]).unwrap();
    assert!(!cfg.train.deterministic);
    assert!(!cfg.to_toml().contains("deterministic"), "off is not written (earlier hashes hold)");
    let on = ExperimentConfig::load(&[&p], &["train.deterministic=true".into()]).unwrap();
    assert!(on.train.deterministic);
    let text = on.to_toml();
    assert!(text.contains("deterministic = true"), "{text}");
    let again = ExperimentConfig::from_table(text.parse().unwrap(), &p).unwrap();
    assert_eq!(again, on);
    let p = write(tmp.path(), "d.toml", &format!("{BASE}deterministic = \"yes\"\n"));
    let err = ExperimentConfig::load(&[&p], &[]).unwrap_err().to_string();
    assert!(err.contains("train.deterministic"), "{err}");
}

/// A change that breaks one rule.
type Spoil = fn(&mut ExperimentConfig);

/// Every section is checked, not only `[adapter]`: each override below breaks one rule and
/// the error names its key.
#[test]
fn validation_covers_every_section() {
    let table: toml::Table = BASE.parse().unwrap();
    let cfg = ExperimentConfig::from_table(table, Path::new("base.toml")).unwrap();
    cfg.validate().unwrap();
    let cases: &[(&str, Spoil)] = &[
        ("train.lr", |c| c.train.lr = -1.0),
        ("train.lr", |c| c.train.lr = f64::NAN),
        ("train.epochs", |c| c.train.epochs = 0),
        ("train.batch_size", |c| c.train.batch_size = 0),
        ("train.eval_batch_size", |c| c.train.eval_batch_size = 0),
        ("train.weight_decay", |c| c.train.weight_decay = -0.1),
        ("train.warmup_epochs", |c| c.train.warmup_epochs = -1.0),
        ("train.warmup_lr", |c| c.train.warmup_lr = Some(-1.0)),
        ("train.min_lr", |c| c.train.min_lr = Some(-1.0)),
        ("train.min_lr", |c| c.train.min_lr = Some(f64::NAN)),
        ("train.min_lr", |c| c.train.min_lr = Some(c.train.lr * 2.0)),
        ("train.warmup_lr", |c| c.train.warmup_lr = Some(f64::NAN)),
        ("train.warmup_lr", |c| c.train.warmup_lr = Some(c.train.lr * 2.0)),
        ("train.eval_every", |c| c.train.eval_every = 0),
        ("train.threads", |c| c.train.threads = Some(0)),
        ("train.max_steps", |c| c.train.max_steps = Some(0)),
        ("train.grad_clip", |c| c.train.grad_clip = Some(0.0)),
        ("train.device", |c| c.train.device = "gpu".into()),
        ("model.drop_path", |c| c.model.drop_path = 1.0),
        ("model.image_size", |c| c.model.image_size = 4),
        ("model.num_classes", |c| c.model.num_classes = Some(0)),
        ("model.arch.heads", |c| c.model.arch = Some(ArchOverride { heads: Some(0), ..Default::default() })),
        ("data.task", |c| c.data.task.clear()),
        ("adapter.mlae.expert_dropout", |c| c.adapter.mlae.expert_dropout = 1.5),
    ];
    for (key, spoil) in cases {
        let mut bad = cfg.clone();
        spoil(&mut bad);
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn devices_parse_to_their_spec() {
    assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
    assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
    assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
    assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
    assert!("cuda:x".parse::<DeviceSpec>().unwrap_err().to_string().contains("cuda:N"));
}

#[test]
fn later_config_files_win_over_earlier_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let base = write(tmp.path(), "task.toml", BASE);
    let frag = write(
        tmp.path(),
        "frag.toml",
        "[adapter.mlae]\nexpert_dropout = 0.0\n[adapter.mlae.mask]\nstrategy = \"fixed\"\n",
    );
    let cfg = ExperimentConfig::load(&[&base, &frag], &[]).unwrap();
    assert_eq!(cfg.adapter.mlae.expert_dropout, 0.0);
    assert_eq!(cfg.train.epochs, 3);
}

#[test]
fn extends_cycles_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write(tmp.path(), "a.toml", "extends = \"b.toml\"\n");
    write(tmp.path(), "b.toml", "extends = \"a.toml\"\n");
    let err = ExperimentConfig::load(&[&a], &[]).unwrap_err().to_string();
    assert!(err.contains("cycle"), "{err}");
}

#[test]
fn run_names_tell_runs_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "c.toml", BASE);
    let p_is = |p: f64| format!("adapter.mlae.expert_dropout={p}");
    let a = ExperimentConfig::load(&[&p], &[p_is(0.5)]).unwrap();
    let b = ExperimentConfig::load(&[&p], &[p_is(0.7)]).unwrap();
    let c = ExperimentConfig::load(&[&p], &["train.seed=1".into(), p_is(0.5)]).unwrap();
    let names = [a.default_run_name(), b.default_run_name(), c.default_run_name()];
    assert!(names[0] != names[1] && names[0] != names[2], "{names:?}");
    assert_eq!(names[0], "cifar-mlae-8x1-p0.5-init1-paper-s0", "the names of existing run directories");
}

#[test]
fn cache_paths_resolve_against_the_cache_dir_and_relative_ones_against_the_cwd() {
    let p = resolve_path(Path::new("cache:demo/x"));
    assert_eq!(p, mlae_data::cache_dir().join("demo/x"));
    let r = resolve_path(Path::new("rel/y"));
    assert!(r.is_absolute() && r.ends_with("rel/y"), "{}", r.display());
}

#[test]
fn pos_resize_defaults_to_antialias_and_takes_either_name() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "c.toml", BASE);
    assert_eq!(ExperimentConfig::load(&[&p], &[]).unwrap().model.pos_resize, crate::PosResize::Antialias);
    let cfg = ExperimentConfig::load(&[&p], &["model.pos_resize=bicubic".into()]).unwrap();
    assert_eq!(cfg.model.pos_resize, crate::PosResize::Bicubic);
    assert!(cfg.to_toml().contains("pos_resize = \"bicubic\""), "the resolved config records it");
    let err = ExperimentConfig::load(&[&p], &["model.pos_resize=nearest".into()]).unwrap_err().to_string();
    assert!(err.contains("model.pos_resize") && err.contains("nearest"), "{err}");
}

#[test]
fn bare_overrides_of_string_keys_keep_their_text() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "c.toml", BASE);
    let load =
        |ovs: &[&str]| ExperimentConfig::load(&[&p], &ovs.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    for text in ["nan", "inf", "-inf", "true", "123", "1.50", "1979-05-27"] {
        let cfg = load(&[&format!("output.name={text}")]).unwrap();
        assert_eq!(cfg.output.name.as_deref(), Some(text), "output.name={text}");
    }
    // several at once, in a string key that is not optional, and a later quoted value wins
    let cfg = load(&["data.task=123", "output.name=true", "output.name=\"x y\""]).unwrap();
    assert_eq!((cfg.data.task.as_str(), cfg.output.name.as_deref()), ("123", Some("x y")));
    // keys that want numbers keep the TOML reading, and validation speaks
    let err = load(&["train.lr=nan"]).unwrap_err().to_string();
    assert!(err.contains("train.lr: must be positive"), "{err}");
    assert_eq!(load(&["train.epochs=4"]).unwrap().train.epochs, 4);
    // an enum key: the text is tried, and its own error names the key
    let err = load(&["model.pos_resize=123"]).unwrap_err().to_string();
    assert!(err.contains("model.pos_resize") && err.contains("123"), "{err}");
}

#[test]
fn a_number_in_a_string_key_of_a_file_says_to_quote_it() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "c.toml", &format!("{BASE}\n[output]\nname = nan\n"));
    let err = ExperimentConfig::load(&[&p], &[]).unwrap_err().to_string();
    assert!(err.contains("c.toml") && err.contains("output.name"), "{err}");
    assert!(err.contains("quote it: output.name = \"nan\""), "{err}");
    // a wrong type that quoting would not fix gets no such hint
    let p = write(tmp.path(), "d.toml", &BASE.replace("epochs = 3", "epochs = \"three\""));
    assert!(!ExperimentConfig::load(&[&p], &[]).unwrap_err().to_string().contains("quote"));
}

/// `spec` with every table and key set away from its default, whatever the kind reads.
fn busy_adapter(kind: mlae_core::AdapterKind) -> AdapterSpec {
    use mlae_core::{DmloraSpec, LoraSpec, MlaeSpec, TargetLayer, UpdateDropoutOn};
    AdapterSpec {
        kind,
        targets: vec![TargetLayer::Qkv, TargetLayer::Fc1],
        mlae: MlaeSpec { experts: 4, expert_dropout: 0.3, coeff_init: 0.5, ..Default::default() },
        lora: LoraSpec {
            rank: 4,
            alpha: Some(8.0),
            input_dropout: 0.1,
            update_dropout: 0.2,
            update_dropout_on: UpdateDropoutOn::Matrix,
        },
        dmlora: DmloraSpec { branches: 2, stage2_lr: Some(0.01), ..Default::default() },
    }
}

/// What a run writes into its directory (`config.toml`) reads back, for every kind: as the run
/// directory's config (resume, eval, export), as a table, and as a person's config file (so a
/// run can be started again from its folder), with the tables and keys its kind reads.
#[test]
fn the_written_config_reads_back_for_every_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let base = write(tmp.path(), "base.toml", BASE);
    let cfg = ExperimentConfig::load(&[&base], &[]).unwrap();
    for kind in mlae_core::AdapterKind::ALL {
        let written = ExperimentConfig { adapter: busy_adapter(*kind), ..cfg.clone() };
        let want = ExperimentConfig { adapter: written.adapter.reduced(), ..written.clone() };
        let text = written.to_toml();
        let path = write(tmp.path(), "config.toml", &text);
        assert_eq!(
            ExperimentConfig::from_table(text.parse().unwrap(), &path).unwrap(),
            want,
            "{kind}:\n{text}"
        );
        assert_eq!(crate::RunLayout::new(tmp.path()).read_config().unwrap(), want, "{kind}");
        assert_eq!(ExperimentConfig::load(&[&path], &[]).unwrap(), want, "{kind}:\n{text}");
        assert_eq!(want.default_run_name(), written.default_run_name(), "{kind}");
    }
}

#[test]
fn a_key_the_kind_does_not_read_fails_naming_it_and_how_to_switch_kinds() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "mlae.toml",
        &format!("{BASE}\n[adapter]\nkind = \"mlae\"\n[adapter.mlae]\nexpert_dropout = 0.5\n"),
    );
    // switching the kind of an MLAE config leaves its [adapter.mlae] behind
    let err = ExperimentConfig::load(&[&p], &["adapter.kind=lora".into()]).unwrap_err().to_string();
    assert!(
        err.contains("mlae.toml")
            && err.contains("adapter.mlae: kind lora does not read it (only mlae does)"),
        "{err}"
    );
    assert!(err.contains("unset = [\"adapter\"]"), "{err}");
    let err = ExperimentConfig::load(&[&p], &["adapter.lora.rank=4".into()]).unwrap_err().to_string();
    assert!(err.contains("adapter.lora: kind mlae does not read it"), "{err}");
    let p = write(
        tmp.path(),
        "dora.toml",
        &format!("{BASE}\n[adapter]\nkind = \"dora\"\n[adapter.lora]\nupdate_dropout = 0.1\n"),
    );
    let err = ExperimentConfig::load(&[&p], &[]).unwrap_err().to_string();
    assert!(
        err.contains("adapter.lora.update_dropout: kind dora does not read it (only lora-dropout does)"),
        "{err}"
    );
    // a fragment that replaces [adapter] switches the kind
    let mlae = tmp.path().join("mlae.toml");
    let frag = write(
        tmp.path(),
        "lora-dropout.toml",
        "unset = [\"adapter\"]\ncopy = { \"adapter.lora.update_dropout\" = \"adapter.mlae.expert_dropout\" }\n\
         [adapter]\nkind = \"lora-dropout\"\n",
    );
    let cfg = ExperimentConfig::load(&[&mlae, &frag], &[]).unwrap();
    assert_eq!(
        (cfg.adapter.kind, cfg.adapter.lora.update_dropout),
        (mlae_core::AdapterKind::LoraDropout, 0.5)
    );
    assert_eq!(cfg.adapter, cfg.adapter.reduced());
}

/// A rate the user never wrote follows `lr` instead of refusing it, and a rate the schedule
/// never reads is not checked; the resolved config records the rates used and re-reads.
#[test]
fn default_rates_follow_lr_and_only_written_ones_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "c.toml", BASE);
    let small = ["train.lr=1e-9".to_string(), "train.warmup_epochs=0".to_string()];
    let cfg = ExperimentConfig::load(&[&p], &small).unwrap();
    assert_eq!((cfg.train.warmup_lr(), cfg.train.min_lr()), (1e-9, 1e-9));
    // With a warm-up, its unset start follows lr too.
    let cfg =
        ExperimentConfig::load(&[&p], &["train.lr=1e-9".into(), "train.warmup_epochs=2".into()]).unwrap();
    assert_eq!(cfg.train.warmup_lr(), 1e-9);
    // The usual lr keeps the usual defaults.
    let cfg = ExperimentConfig::load(&[&p], &[]).unwrap();
    assert_eq!((cfg.train.warmup_lr(), cfg.train.min_lr()), (1e-7, 1e-8));

    // The resolved config (what the run directory holds) records them and re-reads.
    for overrides in [&small[..], &[], &["train.warmup_epochs=0".into(), "train.warmup_lr=1".into()]] {
        let cfg = ExperimentConfig::load(&[&p], overrides).unwrap();
        let text = cfg.to_toml();
        assert!(text.contains("warmup_lr = ") && text.contains("min_lr = "), "{text}");
        let again = write(tmp.path(), "resolved.toml", &text);
        assert_eq!(ExperimentConfig::load(&[&again], &[]).unwrap(), cfg, "{overrides:?}");
    }

    // Written rates are still checked where the schedule reads them.
    let err = ExperimentConfig::load(&[&p], &["train.lr=1e-9".into(), "train.min_lr=1e-8".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("train.min_lr: 0.00000001 is above train.lr"), "{err}");
    let err = ExperimentConfig::load(&[&p], &["train.warmup_lr=1".into()]).unwrap_err().to_string();
    assert!(err.contains("train.warmup_lr: 1 is above train.lr"), "{err}");
    // ... and not where it does not: no warm-up, a constant schedule.
    ExperimentConfig::load(&[&p], &["train.warmup_epochs=0".into(), "train.warmup_lr=1".into()]).unwrap();
    ExperimentConfig::load(&[&p], &["train.schedule=constant".into(), "train.min_lr=1".into()]).unwrap();
}

/// An image size that is not a whole number of patches would lose its last pixels silently.
#[test]
fn image_sizes_must_be_whole_patches() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "c.toml", BASE);
    let dino = ["model.preset=dinov2-s14".to_string(), "model.image_size=57".to_string()];
    let err = ExperimentConfig::load(&[&p], &dino).unwrap_err().to_string();
    assert!(
        err.contains("model.image_size: 57 is not a multiple of the patch size 14")
            && err.contains("the last 1 pixels")
            && err.contains("Use 56 or 70"),
        "{err}"
    );
    // an overridden patch size is the one that counts
    let err = ExperimentConfig::load(&[&p], &["model.arch.patch_size=5".into()]).unwrap_err().to_string();
    assert!(err.contains("not a multiple of the patch size 5") && err.contains("Use 30 or 35"), "{err}");
    // smaller than one patch: the one valid size near it
    let err = ExperimentConfig::load(&[&p], &["model.image_size=12".into()]).unwrap_err().to_string();
    assert!(err.contains("Use 16"), "{err}");
    ExperimentConfig::load(&[&p], &["model.preset=dinov2-s14".into(), "model.image_size=56".into()]).unwrap();
    ExperimentConfig::load(&[&p], &["model.arch.patch_size=8".into()]).unwrap();
}

#[test]
fn a_held_out_split_parses_round_trips_and_names_a_bad_key() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = BASE.replace("benchmark = \"vtab\"", "benchmark = \"folder\"");
    let with = |split: &str| folder.replace("normalization", &format!("split = {split}\nnormalization"));
    let p = write(tmp.path(), "c.toml", &with("{ val = 0.1, test = 0.2, seed = 3 }"));
    let cfg = ExperimentConfig::load(&[&p], &[]).unwrap();
    let split = cfg.data.split.clone().unwrap();
    assert_eq!(split.seed, 3);
    assert_eq!(split.fractions, [("test".to_string(), 0.2), ("val".to_string(), 0.1)].into());
    assert_eq!(cfg.data_source().split, Some(split));
    assert_eq!([cfg.train_split(), cfg.val_split(), cfg.test_split()], ["train", "val", "test"]);
    let again = ExperimentConfig::from_table(cfg.to_toml().parse().unwrap(), &p).unwrap();
    assert_eq!(again, cfg);
    // no split: nothing written
    let p = write(tmp.path(), "plain.toml", &folder);
    let plain = ExperimentConfig::load(&[&p], &[]).unwrap();
    assert!(plain.data.split.is_none() && !plain.to_toml().contains("data.split"), "{}", plain.to_toml());

    for (split, key, want) in [
        ("{ val = 0.1, train = 0.2 }", "data.split.train", "`train` is where"),
        ("{ val = \"a tenth\" }", "data.split.val", "a fraction in (0, 1)"),
        ("{ val = 1.5 }", "data.split.val", "in (0, 1), got 1.5"),
        ("{ val = 0.1, seed = -2 }", "data.split.seed", "non-negative"),
        ("{ val = 0.5, test = 0.5 }", "data.split", "sum to 1"),
    ] {
        let p = write(tmp.path(), "bad.toml", &with(split));
        let err = ExperimentConfig::load(&[&p], &[]).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains(key) && err.contains(want), "{split}: {err}");
    }
    // other benchmarks have their splits in files
    let p = write(
        tmp.path(),
        "vtab.toml",
        &BASE.replace("normalization", "split = { val = 0.1 }\nnormalization"),
    );
    let err = ExperimentConfig::load(&[&p], &[]).unwrap_err().to_string();
    assert!(err.contains("data.split") && err.contains("folder tasks only"), "{err}");
}
