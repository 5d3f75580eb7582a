//! A run directory written before the per-method `[adapter]` tables still loads (resume,
//! eval, export read it through `RunLayout::read_config`), with each old key moved to where
//! its meaning is now; the same keys in a config a person writes are errors that name the new
//! key.

use mlae_core::{AdapterKind, LoraSpec, MaskStrategy};
use mlae_formats::RunLayout;
use mlae_formats::config::ExperimentConfig;

fn load_run_config(dir: &std::path::Path) -> Result<ExperimentConfig, mlae_formats::FormatError> {
    RunLayout::new(dir).read_config()
}

const OLD_RUN: &str = r#"
[model]
preset = "vit-ti16"
image_size = 32

[adapter]
kind = "KIND"
targets = ["qkv"]
experts = 4
expert_rank = 1
coeff_init = 0.5
dropout = 0.3

[adapter.mask]
strategy = "mixed"
pattern = "uniform"
seed = 0

[adapter.dmlora]
branches = 4
p_start = 0.0
p_end = 0.5
schedule = "linear"
ramp_start = 0.0
ramp_end = 0.7
stage2_start = 0.8
scale_init = 1.0

[data]
benchmark = "vtab"
task = "cifar"
root = "/data/vtab"
normalization = "inception"

[train]
epochs = 3
"#;

fn old_run(kind: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.toml");
    std::fs::write(&path, OLD_RUN.replace("KIND", kind)).unwrap();
    (tmp, path)
}

#[test]
fn an_old_run_directory_loads_with_its_keys_moved() {
    let (tmp, _) = old_run("mlae");
    let cfg = load_run_config(tmp.path()).unwrap();
    let m = &cfg.adapter.mlae;
    assert_eq!(
        (cfg.adapter.kind, m.experts, m.coeff_init, m.expert_dropout),
        (AdapterKind::Mlae, 4, 0.5, 0.3)
    );
    assert_eq!(m.mask.strategy, MaskStrategy::Mixed);
    // the run keeps its directory name: the label is the flat layout's
    assert_eq!(cfg.default_run_name(), "cifar-mlae-4x1-p0.3-init0.5-paper-s0");

    let (tmp, _) = old_run("lora-dropout");
    let cfg = load_run_config(tmp.path()).unwrap();
    assert_eq!(cfg.adapter.lora, LoraSpec { rank: 4, update_dropout: 0.3, ..Default::default() });
    assert_eq!(cfg.default_run_name(), "cifar-lora-dropout-r4-p0.3-paper-s0");

    let (tmp, _) = old_run("dmlora");
    let cfg = load_run_config(tmp.path()).unwrap();
    assert_eq!((cfg.adapter.dmlora.branches, cfg.adapter.dmlora.branch_rank), (4, 4));
    assert_eq!(cfg.default_run_name(), "cifar-dmlora-k4-r4-paper-s0");
}

#[test]
fn the_same_file_as_a_users_config_names_the_new_keys() {
    let (_tmp, path) = old_run("mlae");
    let err = ExperimentConfig::load(&[&path], &[]).unwrap_err().to_string();
    for want in [
        "adapter.experts was renamed: use adapter.mlae.experts (mlae), adapter.lora.rank (lora, lora-dropout) or \
         adapter.dmlora.branch_rank (dmlora)",
        "adapter.dropout was renamed: use adapter.mlae.expert_dropout (mlae), adapter.lora.input_dropout (lora) \
         or adapter.lora.update_dropout (lora-dropout)",
        "adapter.mask was renamed: use [adapter.mlae.mask]",
        "config.toml",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
}

/// What versions before the refusal of unread keys wrote: every method's table, whatever the
/// kind read (here kind lora with MLAE's and DMLoRA's tables and lora-dropout's keys).
const EVERY_TABLE_RUN: &str = r#"
[model]
preset = "vit-ti16"
image_size = 32

[adapter]
kind = "lora"
targets = ["qkv"]

[adapter.mlae]
experts = 8
expert_rank = 1
coeff_init = 1.0
adaptive_coeffs = true
expert_dropout = 0.5

[adapter.mlae.mask]
strategy = "stochastic"
pattern = "uniform"
seed = 0

[adapter.lora]
rank = 4
input_dropout = 0.1
update_dropout = 0.5
update_dropout_on = "output"

[adapter.dmlora]
branches = 4
branch_rank = 8
p_start = 0.0
p_end = 0.5
schedule = "linear"
ramp_start = 0.0
ramp_end = 0.7
stage2_start = 0.8
scale_init = 1.0

[data]
benchmark = "vtab"
task = "cifar"
root = "/data/vtab"
normalization = "inception"

[train]
epochs = 3
"#;

#[test]
fn a_run_directory_with_every_table_still_loads_and_a_config_may_not_hold_them() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.toml");
    std::fs::write(&path, EVERY_TABLE_RUN).unwrap();
    let cfg = load_run_config(tmp.path()).unwrap();
    assert_eq!(cfg.adapter.kind, AdapterKind::Lora);
    assert_eq!(cfg.adapter.lora, LoraSpec { rank: 4, input_dropout: 0.1, ..Default::default() });
    assert_eq!(cfg.adapter, cfg.adapter.reduced(), "what the kind does not read is dropped");
    assert_eq!(cfg.default_run_name(), "cifar-lora-r4-paper-s0");
    // the same file as a person's config names a key its kind does not read
    let err = ExperimentConfig::load(&[&path], &[]).unwrap_err().to_string();
    assert!(
        err.contains("adapter.lora.update_dropout: kind lora does not read it (only lora-dropout does)"),
        "{err}"
    );
    let without = EVERY_TABLE_RUN.replace("update_dropout = 0.5\nupdate_dropout_on = \"output\"\n", "");
    std::fs::write(&path, without).unwrap();
    let err = ExperimentConfig::load(&[&path], &[]).unwrap_err().to_string();
    assert!(err.contains("adapter.mlae: kind lora does not read it (only mlae does)"), "{err}");
}
