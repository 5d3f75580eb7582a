//! The benchmarks a sweep can run and how their tasks group, read from mlae-data's manifests
//! (`data-manifests/*.toml`), so that the task lists and their order are written down once.
//! The manifests list tasks in the paper's column order (Table 1 for VTAB-1k, Table 11 for
//! FGVC), which is the order of the plan and of the report's columns.

use anyhow::{Context, Result, bail};
use mlae_data::Domain;

/// One benchmark: its name on the command line and its task groups.
#[derive(Debug, Clone, PartialEq)]
pub struct Benchmark {
    pub name: &'static str,
    /// (group, tasks), in manifest order. VTAB-1k: its three domains, whose means the paper
    /// averages (Table 1); the other benchmarks: one group.
    pub groups: Vec<(String, Vec<String>)>,
    /// Whether the groups are VTAB-1k's domains (reported as group means plus their mean).
    pub domains: bool,
}

/// The benchmarks with a manifest (mlae-data's `list` has none, so it cannot be swept).
pub fn names() -> Vec<&'static str> {
    mlae_data::Benchmark::ALL
        .into_iter()
        .filter(|b| *b != mlae_data::Benchmark::List)
        .map(|b| b.name())
        .collect()
}

/// How the paper names a VTAB-1k domain.
fn domain_title(d: Domain) -> &'static str {
    match d {
        Domain::Natural => "Natural",
        Domain::Specialized => "Specialized",
        Domain::Structured => "Structured",
    }
}

impl Benchmark {
    pub fn by_name(name: &str) -> Result<Benchmark> {
        let bench = match name.parse::<mlae_data::Benchmark>() {
            Ok(b) if names().contains(&b.name()) => b,
            _ => bail!("--benchmark {name}: expected one of {}", names().join(", ")),
        };
        let specs = bench.tasks().with_context(|| format!("reading the {name} manifest"))?;
        let domains = specs.iter().any(|t| t.domain.is_some());
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for t in specs {
            let group = match t.domain {
                Some(d) => domain_title(d).to_string(),
                None if domains => bail!("data-manifests, benchmark {name}: task {} has no domain", t.name),
                None => name.to_uppercase(),
            };
            if let Some((g, tasks)) = groups.last_mut()
                && *g == group
            {
                tasks.push(t.name);
                continue;
            }
            if groups.iter().any(|(g, _)| *g == group) {
                bail!(
                    "data-manifests, benchmark {name}: task {} (domain {group}) is listed apart from the rest of its \
                     domain; list the tasks in the paper's column order, domain by domain",
                    t.name
                );
            }
            groups.push((group, vec![t.name]));
        }
        Ok(Benchmark { name: bench.name(), groups, domains })
    }

    /// Every task, in column order.
    pub fn tasks(&self) -> Vec<String> {
        self.groups.iter().flat_map(|(_, ts)| ts.iter().cloned()).collect()
    }

    /// Whether the paper reports this benchmark as group means plus their mean (VTAB-1k).
    pub fn has_domain_groups(&self) -> bool {
        self.domains
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtab_has_19_tasks_in_three_groups_and_every_task_has_a_config() {
        let vtab = Benchmark::by_name("vtab").unwrap();
        assert_eq!(vtab.tasks().len(), 19);
        let groups: Vec<(&str, usize)> = vtab.groups.iter().map(|g| (g.0.as_str(), g.1.len())).collect();
        assert_eq!(groups, [("Natural", 7), ("Specialized", 4), ("Structured", 8)]);
        assert!(vtab.has_domain_groups());
        let root = crate::util::root();
        for name in names() {
            let b = Benchmark::by_name(name).unwrap();
            assert!(!b.tasks().is_empty(), "{name}");
            for t in b.tasks() {
                let path = root.join(format!("configs/{name}/{t}.toml"));
                assert!(path.is_file(), "{} is missing", path.display());
            }
        }
        let fgvc = Benchmark::by_name("fgvc").unwrap();
        assert!(!fgvc.has_domain_groups());
        assert_eq!(fgvc.groups.len(), 1);
        assert!(Benchmark::by_name("imagenet").unwrap_err().to_string().contains("vtab, fgvc, demo"));
        assert!(Benchmark::by_name("list").is_err(), "a list benchmark has no tasks to sweep");
    }
}
