//! The shipped DMLoRA configs load, validate and describe what their comments say: DMLoRA on
//! the MLAE recipe of each benchmark, at MLAE's budget, and a variant of the `baselines` grid.

use mlae_core::{AdapterKind, AdapterPlan, AdapterSpec, DmloraSpec, ModelDims, count_params};
use mlae_data::Benchmark;
use mlae_train::config::ExperimentConfig;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn load(files: &[&str]) -> ExperimentConfig {
    let paths: Vec<PathBuf> = files.iter().map(|f| root().join(f)).collect();
    mlae_train::config::load(&paths, &[]).unwrap_or_else(|e| panic!("{files:?}: {e}"))
}

/// Every key of `[train]`, `[model]` and `data.normalization` equal: the same recipe.
fn same_recipe(a: &ExperimentConfig, b: &ExperimentConfig) {
    assert_eq!(a.train, b.train);
    assert_eq!(a.model, b.model);
    assert_eq!((a.data.benchmark, a.data.normalization), (b.data.benchmark, b.data.normalization));
}

#[test]
fn the_dmlora_configs_are_dmlora_on_the_mlae_recipe_and_budget() {
    for (benchmark, file, mlae, epochs) in [
        (Benchmark::Vtab, "configs/dmlora/vtab.toml", "configs/base/vtab.toml", 500),
        (Benchmark::Fgvc, "configs/dmlora/fgvc.toml", "configs/base/fgvc.toml", 300),
    ] {
        let cfg = load(&[file]);
        let a = &cfg.adapter;
        assert_eq!((a.kind, cfg.data.benchmark, cfg.train.epochs), (AdapterKind::Dmlora, benchmark, epochs));
        same_recipe(&cfg, &load(&[mlae]));
        // the documented defaults of this project's reading of the paper
        assert_eq!(a.dmlora, DmloraSpec { branches: 4, branch_rank: 2, ..Default::default() }, "{file}");
        // K r = 8 rows per layer, MLAE's 8 rank-1 experts, one scale instead of 8 lambdas
        let dims = ModelDims::vit_b16(100, 224);
        let plan = a.resolve(12).unwrap();
        let mlae = AdapterSpec::default().resolve(12).unwrap();
        let (AdapterPlan::Dmlora(dm), AdapterPlan::Mlae(ml)) = (&plan, &mlae) else { panic!("kinds") };
        assert!(dm.layers.len() == 12 && dm.rank() * 12 == ml.total_rank());
        assert_eq!(
            count_params(&mlae, &dims).adapter - count_params(&plan, &dims).adapter,
            12 * (8 - 1),
            "{file}"
        );
    }
}

#[test]
fn the_baselines_grid_runs_dmlora_on_each_task_config() {
    let text = std::fs::read_to_string(root().join("configs/grids/baselines.toml")).unwrap();
    let grid: toml::Table = text.parse().unwrap();
    let variants = grid["variants"].as_array().unwrap();
    let dm = variants.iter().find(|v| v["name"].as_str() == Some("dmlora")).expect("a dmlora variant");
    let extends: Vec<&str> = dm["extends"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(extends, ["configs/dmlora/base.toml"]);
    // The sweep layers the variant on each task config; the task's MLAE settings (expert
    // dropout, coefficient init) must not leak into DMLoRA: its plan is the fragment's alone.
    let alone = load(&["configs/dmlora/vtab.toml"]).adapter.resolve(12).unwrap();
    for task in ["configs/vtab/cifar.toml", "configs/fgvc/cub.toml"] {
        let cfg = load(&[task, extends[0]]);
        assert_eq!(cfg.adapter.kind, AdapterKind::Dmlora, "{task}");
        assert_eq!(cfg.adapter.resolve(12).unwrap(), alone, "{task}");
        same_recipe(&cfg, &load(&[task]));
    }
}
