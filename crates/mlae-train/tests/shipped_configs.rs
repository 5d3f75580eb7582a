//! Every config the project ships loads and validates as a user would run it: each benchmark
//! config names a task of its manifest and covers every task, and every masking-ablation
//! fragment layered on a task config resolves for ViT-B/16's 12 blocks. A typo in a config
//! must fail here, not hours into a sweep.

use mlae_core::{AdapterKind, AdapterPlan, MaskStrategy};
use mlae_data::Benchmark;
use mlae_train::config::ExperimentConfig;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn tomls(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{dir} holds no config");
    files
}

fn load(files: &[PathBuf]) -> ExperimentConfig {
    mlae_train::config::load(files, &[]).unwrap_or_else(|e| panic!("{files:?}: {e}"))
}

/// Loads every task config of a folder and returns the task names, checking the benchmark.
fn tasks_of(dir: &str, benchmark: Benchmark) -> BTreeSet<String> {
    tomls(dir)
        .into_iter()
        .map(|f| {
            let cfg = load(std::slice::from_ref(&f));
            assert_eq!(cfg.data.benchmark, benchmark, "{}", f.display());
            assert_eq!(cfg.adapter.kind, AdapterKind::Mlae, "{}", f.display());
            // the baselines grid's LoRA+Dropout runs with the task's p, on dW x (its fragment
            // replaces the task's [adapter] and copies the p)
            let ld = load(&[f.clone(), root().join("configs/lora-dropout/base.toml")]);
            let lora = &ld.adapter.lora;
            assert_eq!(ld.adapter.kind, AdapterKind::LoraDropout, "{}", f.display());
            assert_eq!(lora.update_dropout, cfg.adapter.mlae.expert_dropout, "{}", f.display());
            assert_eq!(
                (lora.rank, lora.input_dropout, lora.update_dropout_on),
                (8, 0.0, mlae_core::UpdateDropoutOn::Output),
                "{}",
                f.display()
            );
            cfg.adapter.resolve(12).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let stem = f.file_stem().unwrap().to_str().unwrap().to_string();
            assert_eq!(cfg.data.task, stem, "{}: the file name is the task", f.display());
            cfg.data.task
        })
        .collect()
}

#[test]
fn every_vtab_task_config_loads_and_the_manifest_is_covered() {
    let manifest: BTreeSet<String> =
        mlae_data::manifest::vtab().unwrap().tasks.iter().map(|t| t.name.clone()).collect();
    assert_eq!(manifest.len(), 19);
    assert_eq!(tasks_of("configs/vtab", Benchmark::Vtab), manifest);
}

#[test]
fn every_fgvc_config_loads_and_the_manifest_is_covered() {
    let manifest: BTreeSet<String> =
        mlae_data::manifest::fgvc().unwrap().datasets.iter().map(|d| d.name.clone()).collect();
    assert_eq!(manifest.len(), 5);
    assert_eq!(tasks_of("configs/fgvc", Benchmark::Fgvc), manifest);
}

#[test]
fn demo_and_quickstart_configs_load() {
    let manifest: BTreeSet<String> =
        mlae_data::manifest::demo().unwrap().tasks.iter().map(|t| t.name.clone()).collect();
    assert_eq!(tasks_of("configs/demo", Benchmark::Demo), manifest);
    let quick = load(&[root().join("configs/quickstart.toml")]);
    assert_eq!((quick.data.task.as_str(), quick.output.name.as_deref()), ("mnist5k", Some("quickstart")));
}

#[test]
fn every_masking_ablation_layers_on_a_task_config() {
    let task = root().join("configs/vtab/dtd.toml");
    let base = load(std::slice::from_ref(&task));
    let mut seen = BTreeSet::new();
    for frag in tomls("configs/ablations") {
        let cfg = load(&[task.clone(), frag.clone()]);
        let plan = cfg.adapter.resolve(12).unwrap_or_else(|e| panic!("{}: {e}", frag.display()));
        let name = frag.file_stem().unwrap().to_str().unwrap();
        let mask = &cfg.adapter.mlae.mask;
        let strategy = mask.strategy;
        assert!(name.contains(strategy.as_str()), "{name}: strategy {strategy}");
        assert!(name.ends_with(mask.pattern.as_str()), "{name}");
        let AdapterPlan::Mlae(plan) = plan else { panic!("{name}: not an MLAE plan") };
        if strategy != MaskStrategy::Stochastic {
            // fixed allocations: the paper's patterns keep 8 experts per block on average
            let kept: usize = plan.layers.iter().map(|l| l.experts).sum();
            assert_eq!(kept, 8 * 12, "{name}");
        }
        // the fragment changes the adapter only
        assert_eq!((&cfg.train, &cfg.model, &cfg.data.task), (&base.train, &base.model, &base.data.task));
        seen.insert((strategy.as_str(), mask.pattern.as_str()));
    }
    assert_eq!(seen.len(), 15, "Table 4: 3 strategies x 5 patterns (stochastic: uniform in place of random)");
}
