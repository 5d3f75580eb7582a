//! The benchmarks a sweep can run and how their tasks group, in the paper's column order.
//!
//! Kept here rather than read from mlae-data's manifests so that planning a sweep and
//! writing a report need nothing but this binary; a test checks that every task has its
//! config file under `configs/<benchmark>/`.

use anyhow::{Result, bail};

/// One benchmark: its name on the command line and its task groups.
#[derive(Debug, Clone, Copy)]
pub struct Benchmark {
    pub name: &'static str,
    /// (group, tasks). VTAB-1k's average is the mean of the group means (the paper's Table 1).
    pub groups: &'static [(&'static str, &'static [&'static str])],
}

pub const VTAB: Benchmark = Benchmark {
    name: "vtab",
    groups: &[
        (
            "Natural",
            &["cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"],
        ),
        ("Specialized", &["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"]),
        (
            "Structured",
            &[
                "clevr_count",
                "clevr_dist",
                "dmlab",
                "kitti",
                "dsprites_loc",
                "dsprites_ori",
                "smallnorb_azi",
                "smallnorb_ele",
            ],
        ),
    ],
};

pub const FGVC: Benchmark = Benchmark {
    name: "fgvc",
    groups: &[("FGVC", &["cub", "nabirds", "oxford_flowers", "stanford_dogs", "stanford_cars"])],
};

/// The demo tasks `cargo xtask fetch-demo` builds (laid out like VTAB-1k tasks).
pub const DEMO: Benchmark = Benchmark { name: "demo", groups: &[("Demo", &["mnist5k", "digits"])] };

pub const ALL: [Benchmark; 3] = [VTAB, FGVC, DEMO];

impl Benchmark {
    pub fn by_name(name: &str) -> Result<Benchmark> {
        match ALL.iter().find(|b| b.name == name) {
            Some(b) => Ok(*b),
            None => bail!("--benchmark {name}: expected one of vtab, fgvc, demo"),
        }
    }

    /// Every task, in column order.
    pub fn tasks(&self) -> Vec<String> {
        self.groups.iter().flat_map(|(_, ts)| ts.iter().map(|t| t.to_string())).collect()
    }

    /// Whether the paper reports this benchmark as group means plus their mean (VTAB-1k).
    pub fn has_domain_groups(&self) -> bool {
        self.groups.len() > 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtab_has_19_tasks_in_three_groups_and_every_task_has_a_config() {
        assert_eq!(VTAB.tasks().len(), 19);
        assert_eq!(VTAB.groups.iter().map(|g| g.1.len()).collect::<Vec<_>>(), [7, 4, 8]);
        let root = crate::util::root();
        for b in ALL {
            for t in b.tasks() {
                let path = root.join(format!("configs/{}/{t}.toml", b.name));
                assert!(path.is_file(), "{} is missing", path.display());
            }
        }
        assert!(Benchmark::by_name("imagenet").unwrap_err().to_string().contains("vtab, fgvc, demo"));
    }
}
