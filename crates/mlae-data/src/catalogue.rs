//! The benchmarks and their task catalogue: what the manifests in `data-manifests/` say about
//! each task (name, folder, classes, split files), independent of where the data lives.

use crate::error::{DataError, Result};
use crate::manifest::{self, Domain};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Which layout (and manifest) a dataset follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Benchmark {
    /// VTAB-1k, NOAH/SPT layout (`data-manifests/vtab-1k.toml`).
    Vtab,
    /// FGVC, VPT layout (`data-manifests/fgvc.toml`).
    Fgvc,
    /// Demo tasks built by `cargo xtask fetch-demo`, VTAB layout (`data-manifests/demo.toml`).
    Demo,
    /// A user's own data: `<root>/<task>/<split>.txt` list files, any split names.
    List,
    /// A user's own photos in torchvision's ImageFolder layout:
    /// `<root>/<task>/<split>/<class>/<image>` (images at any depth under the class folder);
    /// the classes are the sorted folder names of the `train` split.
    Folder,
}

impl Benchmark {
    /// Every benchmark, in documentation order.
    pub const ALL: [Benchmark; 5] =
        [Benchmark::Vtab, Benchmark::Fgvc, Benchmark::Demo, Benchmark::List, Benchmark::Folder];

    /// The lowercase name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Vtab => "vtab",
            Benchmark::Fgvc => "fgvc",
            Benchmark::Demo => "demo",
            Benchmark::List => "list",
            Benchmark::Folder => "folder",
        }
    }

    /// The tasks the manifest lists (empty for `List` and `Folder`, which have no manifest).
    pub fn tasks(self) -> Result<Vec<TaskSpec>> {
        Ok(match self {
            Benchmark::Vtab => {
                let m = manifest::vtab()?;
                m.tasks
                    .iter()
                    .map(|t| TaskSpec {
                        benchmark: self,
                        name: t.name.clone(),
                        title: t.title.clone(),
                        folder: t.folder.clone(),
                        classes: t.classes,
                        domain: Some(t.domain),
                        splits: m.splits.iter().map(|s| (s.clone(), format!("{s}.txt"))).collect(),
                        sizes: t.sizes.clone(),
                        image_dir: None,
                    })
                    .collect()
            }
            Benchmark::Demo => {
                let m = manifest::demo()?;
                m.tasks.iter().map(|t| TaskSpec::from_demo(t, &m.splits)).collect()
            }
            Benchmark::Fgvc => manifest::fgvc()?
                .datasets
                .iter()
                .map(|d| TaskSpec {
                    benchmark: self,
                    name: d.name.clone(),
                    title: d.title.clone(),
                    folder: d.folder.clone(),
                    classes: d.classes,
                    domain: None,
                    splits: vec![
                        ("train".into(), d.splits.train.clone()),
                        ("val".into(), d.splits.val.clone()),
                        ("test".into(), d.splits.test.clone()),
                    ],
                    sizes: BTreeMap::new(),
                    image_dir: Some(d.image_dir.clone()),
                })
                .collect(),
            Benchmark::List | Benchmark::Folder => Vec::new(),
        })
    }

    /// The manifest entry of one task, or an error listing the known names.
    pub fn task(self, name: &str) -> Result<TaskSpec> {
        let tasks = self.tasks()?;
        let known = tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ");
        tasks.iter().find(|t| t.name == name).cloned().ok_or_else(|| DataError::UnknownTask {
            benchmark: self.name().into(),
            task: name.into(),
            known,
        })
    }
}

impl fmt::Display for Benchmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Benchmark {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Benchmark::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("unknown benchmark `{s}`; expected one of vtab, fgvc, demo, list, folder"))
    }
}

/// What the manifest says about one task, independent of where the data lives.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub benchmark: Benchmark,
    pub name: String,
    pub title: String,
    /// Folder under the benchmark root.
    pub folder: String,
    pub classes: usize,
    /// VTAB-1k group, for VTAB tasks.
    pub domain: Option<Domain>,
    /// (split name, file name relative to the task folder), in manifest order.
    pub splits: Vec<(String, String)>,
    /// Exact sizes of the splits that have one.
    pub sizes: BTreeMap<String, usize>,
    /// For JSON layouts: the folder image paths are relative to ("" = the task folder).
    pub image_dir: Option<String>,
}

impl TaskSpec {
    /// The spec of a demo task (VTAB layout) with the given split names.
    pub fn from_demo(t: &manifest::DemoTask, splits: &[String]) -> TaskSpec {
        TaskSpec {
            benchmark: Benchmark::Demo,
            name: t.name.clone(),
            title: t.title.clone(),
            folder: t.folder.clone(),
            classes: t.classes,
            domain: None,
            splits: splits.iter().map(|s| (s.clone(), format!("{s}.txt"))).collect(),
            sizes: t.sizes.clone(),
            image_dir: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmarks_parse_from_their_names() {
        for b in Benchmark::ALL {
            assert_eq!(b.name().parse::<Benchmark>().unwrap(), b);
            assert_eq!(serde_json::to_string(&b).unwrap(), format!("\"{b}\""));
        }
        assert!("imagenet".parse::<Benchmark>().unwrap_err().contains("vtab, fgvc, demo, list, folder"));
    }

    #[test]
    fn unknown_tasks_list_the_known_ones() {
        let err = Benchmark::Vtab.task("cifar10").unwrap_err().to_string();
        assert!(err.contains("no task `cifar10`") && err.contains("cifar, caltech101"), "{err}");
        assert_eq!(Benchmark::Fgvc.task("cub").unwrap().splits[0], ("train".into(), "train.json".into()));
    }
}
