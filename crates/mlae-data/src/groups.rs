//! How a benchmark's tasks group into the columns of a results table, read from the manifests
//! so that the task lists and their order are written down once. The manifests list tasks in
//! the paper's column order (Table 1 for VTAB-1k, Table 11 for FGVC), which is the order of a
//! sweep's plan and of its report's columns.

use crate::catalogue::Benchmark;
use crate::error::{DataError, Result};
use crate::manifest::Domain;

/// Tasks reported together: a VTAB-1k domain, or every task of another benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskGroup {
    /// The group's title as the paper prints it (`Natural`, ...; `FGVC` for a flat benchmark).
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

    /// The tasks in column order, grouped: VTAB-1k by domain, any other benchmark as one
    /// group. A domain whose tasks are not listed together is a manifest defect.
    pub fn task_groups(self) -> Result<Vec<TaskGroup>> {
        let bad = |message: String| DataError::Manifest { name: self.name(), message };
        let mut groups: Vec<TaskGroup> = Vec::new();
        for t in self.tasks()? {
            let name = match t.domain {
                Some(d) => domain_title(d).to_string(),
                None if self.has_domain_groups() => {
                    return Err(bad(format!("task {} has no domain", t.name)));
                }
                None => self.name().to_uppercase(),
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
        assert!(Benchmark::Folder.task_groups().unwrap().is_empty());
    }
}
