//! Benchmark datasets for MLAE as the papers lay them out, handed out as raw pixels and
//! labels. No libtorch: the training crate turns pixels into tensors.
//!
//! - [`Benchmark`] and [`TaskSpec`] are the task catalogue of the manifests in
//!   `data-manifests/` (VTAB-1k in the NOAH/SPT layout, FGVC in the VPT layout, the demo
//!   tasks); [`open_task`] resolves a (benchmark, task, root) triple against it (or a user's
//!   own list files or image folders, with [`HoldoutSplit`]s drawn from `train`) and
//!   [`Task::split`] reads a split's list file into a [`SplitList`].
//! - [`load_images`] decodes a split with a [`Transform`] into one uint8 NHWC block, in
//!   parallel and deterministically, through an on-disk cache that later runs memory-map;
//!   [`AugmentedSet`] does the same for per-epoch random crops; [`load_image`] one file on
//!   its own (prediction).
//! - [`check`] validates a dataset tree and reports every problem; [`demo`] builds the demo
//!   tasks from the csv.gz files that PyPI packages carry and the IDX files of Debian packages;
//!   [`structured`] draws the demo's structured tasks (position, orientation, counting).

mod alloc;
mod catalogue;
pub mod check;
mod decoded;
pub mod demo;
mod error;
mod folder;
mod groups;
mod holdout;
mod imageset;
pub mod manifest;
mod paths;
mod resample;
mod rng;
mod run_files;
mod single;
mod split_file;
pub mod structured;
mod task;
mod transform;

pub use catalogue::{Benchmark, TaskSpec};
pub use check::{CheckOptions, CheckReport, Problem, SplitReport, TaskReport, check};
pub use decoded::CacheStatus;
pub use error::{DataError, Location, Result};
pub use groups::TaskGroup;
pub use holdout::HoldoutSplit;
pub use imageset::{AugmentedSet, ImageSet, load_images};
pub use manifest::Domain;
pub use resample::{Filter, resize_rgb};
pub use single::{IMAGE_EXTENSIONS, image_files, is_image_path, load_image};
pub use split_file::{Item, SplitList};
pub use task::{CLASSES_FILE, DataSource, Task, open_task};
pub use transform::{Normalization, Transform};

use std::path::PathBuf;

/// Where downloads and decoded images live, outside the repository: `$MLAE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/mlae`, else `~/.cache/mlae` (the system temp folder if there is no home).
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("MLAE_CACHE_DIR") {
        return dir;
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return dir.join("mlae");
    }
    match var("HOME") {
        Some(home) => home.join(".cache").join("mlae"),
        None => std::env::temp_dir().join("mlae-cache"),
    }
}
