//! Every config the project ships holds only what its kind reads, and a method fragment
//! (`configs/<kind>/base.toml`) switches any task config to its kind: it replaces the task's
//! `[adapter]` and keeps its recipe. The sweep grids' variants are these fragments layered on
//! the task configs, so a kind a grid produces loads here first.

use mlae_core::AdapterKind;
use mlae_formats::ExperimentConfig;
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
    ExperimentConfig::load(files, &[]).unwrap_or_else(|e| panic!("{files:?}: {e}"))
}

/// The task configs: each benchmark's, and the quickstart.
fn task_configs() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> =
        ["configs/vtab", "configs/fgvc", "configs/demo"].iter().flat_map(|d| tomls(d)).collect();
    all.push(root().join("configs/quickstart.toml"));
    all
}

#[test]
fn every_kind_but_mlae_has_a_fragment_that_switches_every_task_config_to_it() {
    let mut kinds = Vec::new();
    for kind in AdapterKind::ALL.iter().filter(|k| **k != AdapterKind::Mlae) {
        let frag = root().join(format!("configs/{kind}/base.toml"));
        assert!(frag.is_file(), "{kind} has no fragment {}", frag.display());
        for task in task_configs() {
            let alone = load(std::slice::from_ref(&task));
            assert_eq!(alone.adapter.kind, AdapterKind::Mlae, "{}", task.display());
            let cfg = load(&[task.clone(), frag.clone()]);
            let what = format!("{} + {}", task.display(), frag.display());
            assert_eq!(cfg.adapter.kind, *kind, "{what}");
            assert_eq!(cfg.adapter, cfg.adapter.reduced(), "{what}");
            cfg.adapter.resolve(12).unwrap_or_else(|e| panic!("{what}: {e}"));
            // the task's recipe stays
            assert_eq!(
                (&cfg.model, &cfg.data, &cfg.train),
                (&alone.model, &alone.data, &alone.train),
                "{what}"
            );
            // the resolved config it writes reads back as a person's config
            let again = ExperimentConfig::from_table(cfg.to_toml().parse().unwrap(), &task).unwrap();
            assert_eq!(again, cfg, "{what}");
        }
        kinds.push(kind.as_str());
    }
    assert_eq!(kinds, ["linear-probe", "full", "lora", "lora-dropout", "dmlora", "dora"]);
}

#[test]
fn lora_dropout_takes_the_tasks_p_and_the_other_fragments_their_own_settings() {
    let frag = |kind: &str| root().join(format!("configs/{kind}/base.toml"));
    for task in task_configs() {
        let p = load(std::slice::from_ref(&task)).adapter.mlae.expert_dropout;
        let ld = load(&[task.clone(), frag("lora-dropout")]).adapter;
        assert_eq!((ld.lora.rank, ld.lora.update_dropout), (8, p), "{}", task.display());
        for kind in ["lora", "dora"] {
            let a = load(&[task.clone(), frag(kind)]).adapter;
            assert_eq!((a.lora.rank, a.lora.input_dropout, a.lora.alpha), (8, 0.0, None), "{kind}");
        }
    }
}

#[test]
fn every_other_shipped_config_loads() {
    // the DMLoRA configs of a benchmark (extending its base and the fragment)
    for f in ["configs/dmlora/vtab.toml", "configs/dmlora/fgvc.toml"] {
        assert_eq!(load(&[root().join(f)]).adapter.kind, AdapterKind::Dmlora, "{f}");
    }
    // the masking ablations, on a task config
    let task = root().join("configs/vtab/dtd.toml");
    for frag in tomls("configs/ablations") {
        let cfg = load(&[task.clone(), frag.clone()]);
        assert_eq!(cfg.adapter.kind, AdapterKind::Mlae, "{}", frag.display());
    }
    // every base, alone
    for base in tomls("configs/base") {
        let cfg = load(std::slice::from_ref(&base));
        cfg.adapter.resolve(12).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    }
}
