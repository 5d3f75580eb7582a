//! How a benchmark's tasks group into the columns of a results table, read from the manifests
//! so that the task lists and their order are written down once. The manifests list tasks in
//! the paper's column order (Table 1 for VTAB-1k, Table 11 for FGVC), which is the order of a
//! sweep's plan and of its report's columns. The demo's tasks group by their manifest `group`
//! (image tasks, structured tasks), as VTAB-1k's do by domain.

use crate::catalogue::Benchmark;
use crate::error::{DataError, Result};
use crate::manifest::{self, Domain};

/// Tasks reported together: a VTAB-1k domain, a demo group, or every task of another benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskGroup {
    /// The group's title as the paper prints it (`Natural`, ...; `FGVC` for a flat benchmark;
    /// `Image tasks` and `Structured tasks` for the demo).
    pub name: String,
    /// Its tasks, in column order.
    pub tasks: Vec<String>,
}

impl Benchmark {
    /// The benchmarks with a task manifest, which a sweep can run (`list` and `folder` have none).
    pub fn with_manifest() -> Vec<Benchmark> {
        Benchmark::ALL.into_iter().filter(|b| !matches!(b, Benchmark::List | Benchmark::Folder)).collect()
    }

    /// Whether results are reported as group means plus their mean, as the paper does for
    /// VTAB-1k's three domains.
    pub fn has_domain_groups(self) -> bool {
        self == Benchmark::Vtab
    }

    /// The tasks in column order, grouped: VTAB-1k by domain, the demo by its manifest's
    /// `group`, any other benchmark as one group. A group whose tasks are not listed together
    /// is a manifest defect.
    pub fn task_groups(self) -> Result<Vec<TaskGroup>> {
        let bad = |message: String| DataError::Manifest { name: self.name(), message };
        let demo = if self == Benchmark::Demo { Some(manifest::demo()?) } else { None };
        let mut groups: Vec<TaskGroup> = Vec::new();
        for t in self.tasks()? {
            let name = match (t.domain, demo) {
                (Some(d), _) => domain_title(d).to_string(),
                (None, _) if self.has_domain_groups() => {
                    return Err(bad(format!("task {} has no domain", t.name)));
                }
                (None, Some(m)) => match m.tasks.iter().find(|d| d.name == t.name) {
                    Some(d) => d.group.title().to_string(),
                    None => return Err(bad(format!("task {} is not in the demo manifest", t.name))),
                },
                (None, None) => self.name().to_uppercase(),
            };
            if let Some(g) = groups.last_mut()
                && g.name == name
            {
                g.tasks.push(t.name);
                continue;
            }
            if groups.iter().any(|g| g.name == name) {
                return Err(bad(format!(
                    "task {} (domain {name}) is listed apart from the rest of its domain; list the tasks \
                     in the paper's column order, domain by domain",
                    t.name
                )));
            }
            groups.push(TaskGroup { name, tasks: vec![t.name] });
        }
        Ok(groups)
    }

    /// Every task of the manifest's groups, in column order.
    pub fn task_names(self) -> Result<Vec<String>> {
        Ok(self.task_groups()?.into_iter().flat_map(|g| g.tasks).collect())
    }

    /// The tasks a sweep runs when it is not told which: every task but the demo's `opt_in`
    /// ones, which run only when named.
    pub fn default_tasks(self) -> Result<Vec<String>> {
        let opt_in: Vec<&str> = match self {
            Benchmark::Demo => {
                manifest::demo()?.tasks.iter().filter(|t| t.opt_in).map(|t| t.name.as_str()).collect()
            }
            _ => Vec::new(),
        };
        Ok(self.task_names()?.into_iter().filter(|t| !opt_in.contains(&t.as_str())).collect())
    }
}

/// How the paper names a VTAB-1k domain.
fn domain_title(d: Domain) -> &'static str {
    match d {
        Domain::Natural => "Natural",
        Domain::Specialized => "Specialized",
        Domain::Structured => "Structured",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtab_has_19_tasks_in_three_domains_and_the_others_one_group() {
        let vtab = Benchmark::Vtab.task_groups().unwrap();
        let shape: Vec<(&str, usize)> = vtab.iter().map(|g| (g.name.as_str(), g.tasks.len())).collect();
        assert_eq!(shape, [("Natural", 7), ("Specialized", 4), ("Structured", 8)]);
        assert_eq!(Benchmark::Vtab.task_names().unwrap().len(), 19);
        let fgvc = Benchmark::Fgvc.task_groups().unwrap();
        assert_eq!(fgvc.len(), 1);
        assert_eq!(fgvc[0].name, "FGVC");
        assert!(!Benchmark::Fgvc.has_domain_groups());
        assert_eq!(Benchmark::with_manifest(), [Benchmark::Vtab, Benchmark::Fgvc, Benchmark::Demo]);
        assert!(Benchmark::List.task_groups().unwrap().is_empty());
        assert_eq!(Benchmark::Vtab.default_tasks().unwrap(), Benchmark::Vtab.task_names().unwrap());
    }

    #[test]
    fn the_demo_groups_image_and_structured_tasks_and_sweeps_the_image_ones_by_default() {
        let demo = Benchmark::Demo.task_groups().unwrap();
        let got: Vec<(&str, Vec<&str>)> =
            demo.iter().map(|g| (g.name.as_str(), g.tasks.iter().map(String::as_str).collect())).collect();
        assert_eq!(
            got,
            [
                ("Image tasks", vec!["mnist5k", "digits", "fashion_mnist"]),
                ("Structured tasks", vec!["dsprites_loc", "dsprites_ori", "count"])
            ]
        );
        assert!(!Benchmark::Demo.has_domain_groups(), "the demo's report stays one flat table");
        assert_eq!(Benchmark::Demo.default_tasks().unwrap(), ["mnist5k", "digits", "fashion_mnist"]);
        assert!(Benchmark::Folder.task_groups().unwrap().is_empty());
    }
}
