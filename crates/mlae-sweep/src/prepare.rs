//! A planned run made concrete: its generated config, checked whole, and its fingerprint.

use crate::config;
use crate::dir::{SweepDir, write_file};
use crate::error::{Result, io_err};
use crate::grid::{self, RunSpec};
use std::path::PathBuf;

/// A run ready to launch: its spec, generated config and fingerprint.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub spec: RunSpec,
    pub config: PathBuf,
    pub text: String,
    pub fingerprint: String,
    /// The settings a reader checks first (method, p, init, protocol, epochs, the overrides).
    pub summary: String,
    /// `train.epochs` of the resolved config.
    pub epochs: u64,
    /// Pause the run once this many epochs are done (a halving rung); not part of the config,
    /// so the paused run keeps its fingerprint and resumes.
    pub stop_after_epoch: Option<u64>,
}

/// Keys shown for each run of a plan, when the merged config has them: the method, its own key
/// settings (`AdapterKind::key_settings`), then these.
const SHOWN: &[&str] = &["data.protocol", "train.epochs"];

/// Keys every run sets that its name already says.
const IN_NAME: &[&str] = &["data.task", "train.seed"];

/// The keys a run's plan line shows: the method and its key settings, `SHOWN`, then every
/// other key the variant or `--set` overrides (say `train.lr`), so that two variants that differ
/// only there are told apart by a dry run. `output.*` (the sweep's own) and `IN_NAME` are left out.
fn summary_keys<'a>(
    key_settings: &'a [&'a str],
    spec: &'a RunSpec,
    extra: &'a [(String, toml::Value)],
) -> Vec<&'a str> {
    let mut keys: Vec<&str> = vec!["adapter.kind"];
    keys.extend(key_settings.iter().copied());
    keys.extend(SHOWN.iter().copied());
    for (k, _) in spec.set.iter().chain(extra) {
        if !k.starts_with("output.") && !IN_NAME.contains(&k.as_str()) && !keys.contains(&k.as_str()) {
            keys.push(k);
        }
    }
    keys
}

/// Builds each run's generated config, checks the whole config it resolves to, and
/// fingerprints it. Writes nothing.
pub fn prepare(
    sweep: &SweepDir,
    grid_name: &str,
    extra: &[(String, toml::Value)],
    specs: &[RunSpec],
) -> Result<Vec<Prepared>> {
    let runs_dir = sweep.runs_dir();
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let table = config::generated(spec, extra, &runs_dir)?;
        let path = sweep.config(&spec.name);
        let text = config::render(&table, &format!("grid {grid_name}, run {}", spec.name))?;
        let merged = config::merged(&table, &path)?;
        let cfg = config::check_merged(&merged, &path, &spec.name)?;
        let summary = summary_keys(cfg.adapter.kind.key_settings(), spec, extra)
            .iter()
            .filter_map(|k| config::get_path(&merged, k).map(|v| format!("{k}={}", grid::value_text(v))))
            .collect::<Vec<_>>()
            .join(" ");
        out.push(Prepared {
            spec: spec.clone(),
            config: path,
            text,
            fingerprint: config::fingerprint(&merged),
            summary,
            epochs: cfg.train.epochs,
            stop_after_epoch: None,
        });
    }
    Ok(out)
}

/// Writes the runs' generated configs (only those whose text changed).
pub fn write_configs(runs: &[Prepared]) -> Result<()> {
    for p in runs {
        if std::fs::read_to_string(&p.config).ok().as_deref() != Some(p.text.as_str()) {
            write_file(&p.config, p.text.as_bytes())?;
        }
    }
    Ok(())
}

/// The fingerprint of a run's generated config as the files it extends read now.
pub fn current_fingerprint(sweep: &SweepDir, run: &str) -> Result<String> {
    let path = sweep.config(run);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        crate::error::SweepError::Invalid(format!("{} is not valid TOML: {e}", path.display()))
    })?;
    Ok(config::fingerprint(&config::merged(&table, &path)?))
}
