//! Grids: a TOML file under `configs/grids/` that expands into runs.
//!
//! ```toml
//! description = "..."
//! config = "configs/{benchmark}/{task}.toml"   # per-task config every run extends
//! protocol = "val"                             # sets data.protocol (paper | val)
//! seeds = [0]                                  # default seeds (--seeds overrides)
//! [benchmark_seeds]                            # per-benchmark default seeds
//! fgvc = [0, 1, 42]
//! [set]                                        # overrides for every run
//! "train.eval_every" = 50
//! [axes]                                       # cartesian product of overrides
//! "adapter.mlae.expert_dropout" = [0.0, 0.5]
//! [[variants]]                                 # named variants (methods, ablations)
//! name = "lora-qv"
//! extends = ["configs/lora/base.toml"]         # fragments, later wins (a method's fragment
//!                                              # replaces the task config's [adapter])
//! set = { "adapter.targets" = ["q", "v"] }
//! [select]                                     # search, then one final run per task
//! metric = "best_val_acc"                      # from each search run's summary.json
//! final_protocol = "paper"
//! ```

use crate::error::{Result, SweepError, bail, io_err};
use mlae_formats::{ExperimentConfig, Protocol, Summary};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    pub description: String,
    /// Config every run extends; `{benchmark}` and `{task}` are substituted.
    pub config: String,
    #[serde(default)]
    pub protocol: Option<Protocol>,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    #[serde(default)]
    pub benchmark_seeds: BTreeMap<String, Vec<u64>>,
    #[serde(default)]
    pub set: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub axes: BTreeMap<String, Vec<toml::Value>>,
    #[serde(default)]
    pub variants: Vec<Variant>,
    #[serde(default)]
    pub select: Option<Select>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    #[serde(default)]
    pub set: BTreeMap<String, toml::Value>,
    /// Config fragments layered on the task config, in order (later files win).
    #[serde(default)]
    pub extends: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Select {
    /// The summary field that selects. Only `best_val_acc`: selecting on test is not offered.
    pub metric: SelectMetric,
    /// Protocol of the final runs.
    pub final_protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectMetric {
    BestValAcc,
}

impl SelectMetric {
    /// The `summary.json` field.
    pub fn field(self) -> &'static str {
        match self {
            SelectMetric::BestValAcc => "best_val_acc",
        }
    }

    /// The metric's value in a run's summary (None when the run did not record it).
    pub fn value(self, summary: &Summary) -> Option<f64> {
        match self {
            SelectMetric::BestValAcc => summary.best_val_acc,
        }
    }
}

/// Keys the sweep sets itself; a grid or `--set` must not.
const RESERVED: &[(&str, &str)] = &[
    ("data.task", "the sweep sets it per run (use --tasks)"),
    ("train.seed", "the sweep sets it per run (use seeds or --seeds)"),
    ("data.protocol", "use the grid's `protocol` key"),
    ("output", "the sweep places every run in its own directory"),
];

/// Top-level tables of an experiment config.
pub const SECTIONS: &[&str] = ExperimentConfig::SECTIONS;

/// Checks one override key; `what` says where it came from, for the error.
pub fn check_key(key: &str, what: &str) -> Result<()> {
    let first = key.split('.').next().unwrap_or_default();
    if key.split('.').any(str::is_empty) || !SECTIONS.contains(&first) {
        bail!(
            "{what}: `{key}` is not a config key (expected <section>.<key>, section one of {})",
            SECTIONS.join(", ")
        );
    }
    for (reserved, why) in RESERVED {
        if key == *reserved || key.starts_with(&format!("{reserved}.")) {
            bail!("{what}: `{key}` cannot be set here: {why}");
        }
    }
    Ok(())
}

/// One run of a sweep, fully specified.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// Unique, readable name: stage, task, variant, hyper-parameters, seed.
    pub name: String,
    pub task: String,
    pub variant: String,
    pub seed: u64,
    pub stage: Stage,
    /// Config files the run's generated config extends, in order (later files win).
    pub extends: Vec<PathBuf>,
    /// Overrides applied after `extends`, in order (key path, TOML value).
    pub set: Vec<(String, toml::Value)>,
    /// The axes point; a search run's point is what its final run inherits when selected.
    pub point: Vec<(String, toml::Value)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// A run of a grid without selection.
    Run,
    /// A run of the search stage (val protocol).
    Search,
    /// The selected setting, trained under the final protocol.
    Final,
}

impl Grid {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let grid: Grid = toml::from_str(&text)
            .map_err(|e| SweepError::Invalid(format!("grid {}: {e}", path.display())))?;
        grid.check().map_err(|e| SweepError::Invalid(format!("grid {}: {e}", path.display())))?;
        Ok(grid)
    }

    fn check(&self) -> Result<()> {
        for k in self.set.keys() {
            check_key(k, "set")?;
        }
        for (k, values) in &self.axes {
            check_key(k, "axes")?;
            if values.is_empty() {
                bail!("axes.\"{k}\": give at least one value");
            }
        }
        let mut names = BTreeSet::new();
        for v in &self.variants {
            if v.name.is_empty() || !v.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!("variants: name `{}` must be letters, digits, `-` or `_`", v.name);
            }
            if !names.insert(&v.name) {
                bail!("variants: `{}` is listed twice", v.name);
            }
            for k in v.set.keys() {
                check_key(k, &format!("variant {}: set", v.name))?;
            }
        }
        for b in self.benchmark_seeds.keys() {
            let known: Vec<&str> =
                mlae_data::Benchmark::with_manifest().into_iter().map(|b| b.name()).collect();
            if !known.contains(&b.as_str()) {
                bail!("benchmark_seeds.{b}: not a benchmark ({})", known.join(", "));
            }
        }
        if self.select.is_some() {
            if self.axes.is_empty() {
                bail!("[select] needs [axes] to select among");
            }
            if self.protocol != Some(Protocol::Val) {
                bail!("[select] needs protocol = \"val\": the search must not see the test split");
            }
        }
        Ok(())
    }

    /// The grid's default seeds for a benchmark.
    pub fn seeds_for(&self, benchmark: &str) -> Vec<u64> {
        self.benchmark_seeds.get(benchmark).cloned().unwrap_or_else(|| self.seeds.clone())
    }

    /// The variants, or one implicit `mlae` variant (the task config as it is).
    pub fn variants(&self) -> Vec<Variant> {
        if self.variants.is_empty() {
            vec![Variant { name: "mlae".into(), set: BTreeMap::new(), extends: Vec::new() }]
        } else {
            self.variants.clone()
        }
    }

    /// Expands the grid into runs. For a search grid these are the search runs; the final
    /// runs come from their results through [`final_run`].
    pub fn expand(
        &self,
        root: &Path,
        benchmark: &str,
        tasks: &[String],
        seeds: &[u64],
    ) -> Result<Vec<RunSpec>> {
        let points = cartesian(&self.axes);
        let stage = if self.select.is_some() { Stage::Search } else { Stage::Run };
        // Each task's config and each variant's fragments, checked once.
        let mut bases = Vec::new();
        for task in tasks {
            let template = root.join(self.config.replace("{benchmark}", benchmark).replace("{task}", task));
            if !template.is_file() {
                bail!("the grid's config for task {task} is {}, which does not exist", template.display());
            }
            for variant in self.variants() {
                let mut extends = vec![template.clone()];
                for e in &variant.extends {
                    let path = root.join(e);
                    if !path.is_file() {
                        bail!("variant {}: extends {}, which does not exist", variant.name, path.display());
                    }
                    extends.push(path);
                }
                bases.push((task, variant, extends));
            }
        }
        // Seed outermost: a sweep stopped part-way holds whole seeds (every task and method of
        // seed 0 before any of seed 1), whose rows compare like for like.
        let mut runs = Vec::new();
        for &seed in seeds {
            for (task, variant, extends) in &bases {
                for point in &points {
                    let mut set: Vec<(String, toml::Value)> =
                        self.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    set.extend(variant.set.iter().map(|(k, v)| (k.clone(), v.clone())));
                    set.extend(point.iter().cloned());
                    if let Some(p) = self.protocol {
                        set.push(("data.protocol".into(), toml::Value::String(p.as_str().into())));
                    }
                    set.push(("data.task".into(), toml::Value::String((*task).clone())));
                    set.push(("train.seed".into(), toml::Value::Integer(seed as i64)));
                    runs.push(RunSpec {
                        name: run_name(task, &variant.name, point, seed, stage),
                        task: (*task).clone(),
                        variant: variant.name.clone(),
                        seed,
                        stage,
                        extends: extends.clone(),
                        set,
                        point: point.clone(),
                    });
                }
            }
        }
        let mut seen = BTreeSet::new();
        for r in &runs {
            if !seen.insert(&r.name) {
                bail!("two runs would share the name {} (axes whose last key segment is the same?)", r.name);
            }
        }
        Ok(runs)
    }
}

/// The final run of a selected search run: same config and point, the final protocol. Its
/// name does not carry the point, so a changed selection replaces it (the changed config
/// moves the old run aside) instead of leaving two finals for one task.
pub fn final_run(selected: &RunSpec, final_protocol: Protocol) -> RunSpec {
    let mut set: Vec<(String, toml::Value)> =
        selected.set.iter().filter(|(k, _)| k != "data.protocol").cloned().collect();
    set.push(("data.protocol".into(), toml::Value::String(final_protocol.as_str().into())));
    RunSpec {
        name: run_name(&selected.task, &selected.variant, &[], selected.seed, Stage::Final),
        stage: Stage::Final,
        set,
        ..selected.clone()
    }
}

/// `task.variant.key1=v1,key2=v2.s0` (keys by their last segment), prefixed `search.` or
/// `final.` for those stages; only `[A-Za-z0-9._=,-]` so it is a safe directory name.
pub fn run_name(
    task: &str,
    variant: &str,
    point: &[(String, toml::Value)],
    seed: u64,
    stage: Stage,
) -> String {
    let mut name = match stage {
        Stage::Run => String::new(),
        Stage::Search => "search.".into(),
        Stage::Final => "final.".into(),
    };
    name.push_str(task);
    name.push('.');
    name.push_str(variant);
    if !point.is_empty() {
        let parts: Vec<String> = point
            .iter()
            .map(|(k, v)| format!("{}={}", k.rsplit('.').next().unwrap_or(k), value_text(v)))
            .collect();
        name.push('.');
        name.push_str(&parts.join(","));
    }
    name.push_str(&format!(".s{seed}"));
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "._=,-".contains(c) { c } else { '_' }).collect()
}

/// A TOML value as a reader writes it (strings unquoted).
pub fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every combination of the axes' values, keys in sorted order (one empty point if none).
fn cartesian(axes: &BTreeMap<String, Vec<toml::Value>>) -> Vec<Vec<(String, toml::Value)>> {
    let mut points: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
    for (key, values) in axes {
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push((key.clone(), v.clone()));
                    q
                })
            })
            .collect();
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(text: &str) -> Grid {
        let g: Grid = toml::from_str(text).unwrap();
        g.check().unwrap();
        g
    }

    fn project(tasks: &[&str]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("configs/demo")).unwrap();
        for t in tasks {
            std::fs::write(tmp.path().join(format!("configs/demo/{t}.toml")), "").unwrap();
        }
        tmp
    }

    #[test]
    fn axes_expand_to_their_cartesian_product_per_task_and_seed() {
        let tmp = project(&["a", "b"]);
        let g = grid(
            r#"description = "x"
config = "configs/{benchmark}/{task}.toml"
[axes]
"adapter.dropout" = [0.0, 0.5, 0.7]
"adapter.coeff_init" = [1.0, 2.0]
"#,
        );
        let runs = g.expand(tmp.path(), "demo", &["a".into(), "b".into()], &[0, 1]).unwrap();
        assert_eq!(runs.len(), 2 * 3 * 2 * 2);
        let names: BTreeSet<_> = runs.iter().map(|r| r.name.clone()).collect();
        assert_eq!(names.len(), runs.len(), "names are unique");
        let r = runs.iter().find(|r| r.name == "a.mlae.coeff_init=2.0,dropout=0.5.s1").expect("named run");
        assert_eq!(r.seed, 1);
        assert!(r.set.contains(&("adapter.dropout".into(), toml::Value::Float(0.5))));
        assert!(r.set.contains(&("train.seed".into(), toml::Value::Integer(1))));
        assert!(r.set.contains(&("data.task".into(), toml::Value::String("a".into()))));
    }

    #[test]
    fn variants_layer_their_fragments_after_the_task_config() {
        let tmp = project(&["a"]);
        std::fs::write(tmp.path().join("configs/frag.toml"), "").unwrap();
        let g = grid(
            r#"description = "x"
config = "configs/demo/{task}.toml"
[[variants]]
name = "lora"
set = { "adapter.kind" = "lora" }
[[variants]]
name = "frag"
extends = ["configs/frag.toml"]
"#,
        );
        let runs = g.expand(tmp.path(), "demo", &["a".into()], &[0]).unwrap();
        assert_eq!(runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a.lora.s0", "a.frag.s0"]);
        assert_eq!(
            runs[1].extends,
            [tmp.path().join("configs/demo/a.toml"), tmp.path().join("configs/frag.toml")]
        );
        assert!(runs[0].set.contains(&("adapter.kind".into(), toml::Value::String("lora".into()))));
    }

    #[test]
    fn runs_come_seed_by_seed_so_a_stopped_sweep_holds_whole_seeds() {
        let tmp = project(&["a", "b"]);
        let g = grid(
            r#"description = "x"
config = "configs/demo/{task}.toml"
[[variants]]
name = "lora"
[[variants]]
name = "mlae"
"#,
        );
        let runs = g.expand(tmp.path(), "demo", &["a".into(), "b".into()], &[0, 1]).unwrap();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a.lora.s0",
                "a.mlae.s0",
                "b.lora.s0",
                "b.mlae.s0", //
                "a.lora.s1",
                "a.mlae.s1",
                "b.lora.s1",
                "b.mlae.s1"
            ]
        );
    }

    #[test]
    fn a_search_grid_plans_search_runs_and_finals_keep_the_point() {
        let tmp = project(&["t"]);
        let g = grid(
            r#"description = "x"
config = "configs/demo/{task}.toml"
protocol = "val"
[axes]
"adapter.dropout" = [0.1, 0.3]
[select]
metric = "best_val_acc"
final_protocol = "paper"
"#,
        );
        let runs = g.expand(tmp.path(), "demo", &["t".into()], &[0]).unwrap();
        assert!(runs.iter().all(|r| r.stage == Stage::Search && r.name.starts_with("search.")));
        let fin = final_run(&runs[1], Protocol::Paper);
        assert_eq!(fin.name, "final.t.mlae.s0");
        assert_eq!(fin.stage, Stage::Final);
        assert!(fin.set.contains(&("adapter.dropout".into(), toml::Value::Float(0.3))));
        assert!(fin.set.contains(&("data.protocol".into(), toml::Value::String("paper".into()))));
        assert!(!fin.set.contains(&("data.protocol".into(), toml::Value::String("val".into()))));
    }

    #[test]
    fn bad_grids_are_refused_with_the_key() {
        let parse = |text: &str| -> String {
            match toml::from_str::<Grid>(text) {
                Ok(g) => g.check().unwrap_err().to_string(),
                Err(e) => e.to_string(),
            }
        };
        let err = parse("description = \"x\"\nconfig = \"c\"\nsedes = [1]\n");
        assert!(err.contains("sedes"), "{err}");
        let err = parse("description = \"x\"\nconfig = \"c\"\n[set]\n\"data.task\" = \"cifar\"\n");
        assert!(err.contains("data.task") && err.contains("--tasks"), "{err}");
        let err = parse("description = \"x\"\nconfig = \"c\"\n[axes]\n\"adaptor.dropout\" = [0.1]\n");
        assert!(err.contains("adaptor.dropout"), "{err}");
        let err = parse(
            "description = \"x\"\nconfig = \"c\"\n[axes]\n\"adapter.dropout\" = [0.1]\n\
             [select]\nmetric = \"best_val_acc\"\nfinal_protocol = \"paper\"\n",
        );
        assert!(err.contains("protocol = \"val\""), "{err}");
        let err = parse(
            "description = \"x\"\nconfig = \"c\"\n[select]\nmetric = \"test_acc\"\nfinal_protocol = \"paper\"\n",
        );
        assert!(err.contains("test_acc"), "{err}");
    }

    #[test]
    fn per_benchmark_seeds_override_the_default() {
        let g =
            grid("description = \"x\"\nconfig = \"c\"\nseeds = [0]\n[benchmark_seeds]\nfgvc = [0, 1, 42]\n");
        assert_eq!(g.seeds_for("fgvc"), [0, 1, 42]);
        assert_eq!(g.seeds_for("vtab"), [0]);
    }

    #[test]
    fn a_missing_task_config_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let g = grid("description = \"x\"\nconfig = \"configs/{task}.toml\"\n");
        let err = g.expand(tmp.path(), "vtab", &["nope".into()], &[0]).unwrap_err().to_string();
        assert!(err.contains("configs/nope.toml"), "{err}");
    }
}
