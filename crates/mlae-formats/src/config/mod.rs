//! The experiment config: one TOML file (optionally extending others) that fully describes a
//! run. It is the only way to build a run, and its resolved form is written into the run
//! directory before training starts, so every result can be reproduced from its folder.
//!
//! ```toml
//! extends = "../base/vtab.toml"      # optional, relative to this file; deep-merged
//! [model]    preset = "vit-b16", checkpoint = "ckpt/ViT-B_16.npz", image_size = 224
//! [adapter]  kind = "mlae", targets = ["qkv"]
//! [adapter.mlae] experts = 8, expert_dropout = 0.5, coeff_init = 1.0
//! [data]     benchmark = "vtab", task = "cifar", root = "data/vtab-1k", protocol = "paper"
//! [train]    epochs = 500, batch_size = 64, lr = 5e-4, weight_decay = 1e-4
//! [output]   dir = "runs"
//! ```
//! Paths starting with `cache:` are resolved against the project cache directory (where
//! `cargo xtask fetch-demo` puts the demo data and backbone).
//!
//! [`ExperimentConfig::validate`] checks every section, so a tool that never trains (the
//! sweep's `--dry-run`) refuses the same configs the trainer would. Only what needs the
//! preset's architecture table (do the heads divide the width?) is left to mlae-vit.

mod sections;

pub use sections::{
    ArchOverride, DataConfig, DeviceSpec, ModelConfig, OutputConfig, Precision, Protocol, ScheduleKind,
    TrainConfig,
};

use crate::error::{FormatError, Invalid, Result};
use crate::layering;
use mlae_core::AdapterSpec;
use mlae_data::Benchmark;
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

impl ExperimentConfig {
    /// The top-level tables of a config, in file order.
    pub const SECTIONS: &'static [&'static str] = &["model", "adapter", "data", "train", "output"];

    /// Loads config files (each following its `extends`; later files win, so a fragment such
    /// as a masking ablation can be layered on a task config, and a later file's `unset` and
    /// `copy` act on the earlier ones, so a method fragment can replace `[adapter]`), applies `key.path=value`
    /// overrides, checks every key and value, and resolves paths. Errors name the file and key.
    ///
    /// An unquoted override that TOML reads as a number, bool or `nan`/`inf` but whose key
    /// wants a string (`--set output.name=nan`) gets its text, as the user typed it.
    pub fn load<P: AsRef<Path>>(paths: &[P], overrides: &[String]) -> Result<Self> {
        let Some(first) = paths.first() else {
            return Err(FormatError::NoConfig);
        };
        let origin = first.as_ref().to_path_buf();
        let mut table = toml::Table::new();
        for path in paths {
            layering::layer(&mut table, path.as_ref())?;
        }
        // (key, text) of the bare overrides still in effect (a later override of a key wins)
        let mut bare: Vec<(String, String)> = Vec::new();
        for ov in overrides {
            let (key, value) = layering::parse_override(ov).map_err(|message| FormatError::Config {
                path: origin.clone(),
                message: format!("--set {ov}: {message}"),
            })?;
            bare.retain(|(k, _)| *k != key);
            if let Some(text) = layering::bare_text(ov) {
                bare.push((key.clone(), text));
            }
            layering::set_path(&mut table, &key, value).map_err(|message| FormatError::Config {
                path: origin.clone(),
                message: format!("--set {ov}: {message}"),
            })?;
        }
        let mut cfg = loop {
            match Self::deserialize_table(table.clone()) {
                Ok(cfg) => break cfg,
                Err((key, message)) => match bare.iter().position(|(k, _)| *k == key) {
                    // a key that refuses the TOML reading: try the text (once per key)
                    Some(i) => {
                        let (key, text) = bare.swap_remove(i);
                        layering::set_path(&mut table, &key, toml::Value::String(text))
                            .expect("the key was set before");
                    }
                    None => return Err(Self::type_error(&table, &origin, &key, &message)),
                },
            }
        };
        cfg.resolve_paths();
        cfg.validate().map_err(|e| FormatError::Config { path: origin.clone(), message: e.0 })?;
        cfg.train.fill_defaults();
        Ok(cfg)
    }

    /// Parses an already merged table; `origin` names the source in errors.
    pub fn from_table(table: toml::Table, origin: &Path) -> Result<Self> {
        Self::deserialize_table(table.clone())
            .map_err(|(key, message)| Self::type_error(&table, origin, &key, &message))
    }

    /// Deserialises, returning the failing key path and serde's message.
    fn deserialize_table(table: toml::Table) -> std::result::Result<Self, (String, String)> {
        serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| (e.path().to_string(), e.inner().to_string()))
    }

    /// The error for `key`; when the key wants a string and got a number, bool or date, it
    /// says how to give the text (TOML reads `nan`, `inf`, `true`, `123` unquoted as values).
    fn type_error(table: &toml::Table, origin: &Path, key: &str, message: &str) -> FormatError {
        let wants_text = message.starts_with("invalid type") && message.contains("expected a string");
        let hint = match layering::get_path(table, key) {
            Some(v) if wants_text && !v.is_str() && !v.is_array() && !v.is_table() => {
                format!(
                    "; to give it as text, quote it: {key} = \"{v}\" (on the command line: --set '{key}=\"{v}\"')"
                )
            }
            _ => String::new(),
        };
        let hint = if message.contains("does not read it") {
            format!(
                "{hint}; to switch the kind of a config, layer a file on it that replaces [adapter] \
                 (`unset = [\"adapter\"]`, then its own [adapter]), such as configs/<kind>/base.toml"
            )
        } else {
            hint
        };
        let message = if hint.is_empty() { message } else { message.trim_end() };
        FormatError::Config { path: origin.to_path_buf(), message: format!("{key}: {message}{hint}") }
    }

    /// The resolved config as TOML (what is written into the run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises")
    }

    /// Checks what serde cannot: ranges and combinations, in every section. The message
    /// starts with the key.
    pub fn validate(&self) -> std::result::Result<(), Invalid> {
        self.adapter.validate().map_err(|e| Invalid(e.to_string()))?;
        let t = &self.train;
        let m = &self.model;
        let positive = |v: f64| v > 0.0 && v.is_finite();
        let non_negative = |v: f64| v >= 0.0 && v.is_finite();
        let checks: [(bool, String); 18] = [
            (t.epochs > 0, format!("train.epochs: must be at least 1, got {}", t.epochs)),
            (t.batch_size > 0, "train.batch_size: must be at least 1".into()),
            (t.eval_batch_size > 0, "train.eval_batch_size: must be at least 1".into()),
            (positive(t.lr), format!("train.lr: must be positive, got {}", t.lr)),
            (
                non_negative(t.weight_decay),
                format!("train.weight_decay: must be >= 0, got {}", t.weight_decay),
            ),
            (
                non_negative(t.warmup_epochs),
                format!("train.warmup_epochs: must be >= 0, got {}", t.warmup_epochs),
            ),
            // Only a rate the user wrote is checked; a default follows `lr` (see TrainConfig).
            (
                t.warmup_lr.is_none_or(non_negative),
                format!("train.warmup_lr: must be >= 0, got {}", t.warmup_lr()),
            ),
            (t.min_lr.is_none_or(non_negative), format!("train.min_lr: must be >= 0, got {}", t.min_lr())),
            // Above the peak, the decay would rise and the warm-up fall; a rate the schedule
            // never reads (no warm-up, a constant schedule) cannot do either.
            (
                !t.uses_min_lr() || t.min_lr() <= t.lr,
                format!("train.min_lr: {} is above train.lr = {}; the schedule would rise", t.min_lr(), t.lr),
            ),
            (
                !t.uses_warmup_lr() || t.warmup_lr() <= t.lr,
                format!(
                    "train.warmup_lr: {} is above train.lr = {}; the warm-up would fall",
                    t.warmup_lr(),
                    t.lr
                ),
            ),
            (
                (0.0..1.0).contains(&t.label_smoothing),
                format!("train.label_smoothing: must be in [0, 1), got {}", t.label_smoothing),
            ),
            (
                t.eval_every > 0 && t.checkpoint_every > 0,
                "train.eval_every / checkpoint_every: must be >= 1".into(),
            ),
            (t.threads != Some(0), "train.threads: must be at least 1 (leave it out for all cores)".into()),
            (
                t.max_steps != Some(0),
                "train.max_steps: must be at least 1 (leave it out to run every epoch)".into(),
            ),
            (
                (0.0..1.0).contains(&m.drop_path),
                format!("model.drop_path: must be in [0, 1), got {}", m.drop_path),
            ),
            (m.image_size >= 8, format!("model.image_size: {} is too small", m.image_size)),
            (m.num_classes.is_none_or(|n| n >= 1), "model.num_classes: must be at least 1".into()),
            (!self.data.task.is_empty(), "data.task: must name a task".into()),
        ];
        if let Some((_, msg)) = checks.into_iter().find(|(ok, _)| !ok) {
            return Err(Invalid(msg));
        }
        if let Some(a) = &m.arch {
            for (key, v) in [
                ("patch_size", a.patch_size),
                ("dim", a.dim),
                ("depth", a.depth),
                ("heads", a.heads),
                ("mlp_dim", a.mlp_dim),
            ] {
                if let Some(v) = v.filter(|&v| v < 1) {
                    return Err(Invalid(format!("model.arch.{key}: must be at least 1, got {v}")));
                }
            }
        }
        check_patch_grid(m)?;
        if let Some(c) = t.grad_clip
            && !positive(c)
        {
            return Err(Invalid(format!("train.grad_clip: must be positive, got {c}")));
        }
        t.device.parse::<DeviceSpec>()?;
        if let Some(split) = &self.data.split {
            if self.data.benchmark != Benchmark::Folder {
                return Err(Invalid(format!(
                    "data.split: held-out splits are drawn from folder tasks only; benchmark {} has \
                     its splits in files (remove data.split)",
                    self.data.benchmark
                )));
            }
            split.validate().map_err(|e| Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// Where the task's files are.
    pub fn data_source(&self) -> mlae_data::DataSource {
        mlae_data::DataSource {
            benchmark: self.data.benchmark,
            task: self.data.task.clone(),
            root: self.data.root.clone(),
            split: self.data.split.clone(),
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
            (Benchmark::Fgvc | Benchmark::Folder, _) => "train".into(),
            (_, Protocol::Paper) => "train800val200".into(),
            (_, Protocol::Val) => "train800".into(),
        }
    }

    /// The split selection is made on under the `val` protocol.
    pub fn val_split(&self) -> String {
        match self.data.benchmark {
            Benchmark::Fgvc | Benchmark::Folder => "val".into(),
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
        let method = self.adapter.label();
        format!("{}-{}-{}-s{}", self.data.task, method, self.data.protocol.as_str(), self.train.seed)
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

/// `model.image_size` must be a whole number of patches: the patch embedding would silently
/// drop the remainder (the last rows and columns of every image).
fn check_patch_grid(m: &ModelConfig) -> std::result::Result<(), Invalid> {
    let patch = m.arch.as_ref().and_then(|a| a.patch_size).unwrap_or(m.preset.patch_size());
    let size = m.image_size;
    if size % patch == 0 {
        return Ok(());
    }
    let below = size / patch * patch;
    let nearest = if below >= patch { format!("{below} or {}", below + patch) } else { format!("{patch}") };
    Err(Invalid(format!(
        "model.image_size: {size} is not a multiple of the patch size {patch}; the last {} pixels of \
         each row and column would be dropped. Use {nearest}",
        size - below
    )))
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

#[cfg(test)]
mod tests;
