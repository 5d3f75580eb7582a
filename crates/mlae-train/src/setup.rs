//! What a run sets up from its config before anything trains or evaluates: the device, the
//! task, the transforms, the evaluation splits and the model with its backbone loaded. The
//! trainer and [`crate::evaluator::OpenRun`] both build from here.

use crate::config::{ExperimentConfig, Precision, VitConfigExt, resolve_device};
use crate::error::{Result, TrainError};
use mlae_data::{Benchmark, ImageSet, Transform};
use mlae_vit::AdaptedVit;
use tch::{Device, Kind};

/// The transforms for a benchmark: (train, eval). FGVC trains on random resized crops with
/// flips and evaluates on a centre crop (VPT); so does an image folder, since photos come in
/// any aspect ratio and that is what timm and torchvision fine-tune them with. Everything
/// else is VTAB's direct resize.
pub fn transforms(benchmark: Benchmark, size: u32) -> (Transform, Transform) {
    match benchmark {
        Benchmark::Fgvc | Benchmark::Folder => (Transform::fgvc_train(size), Transform::fgvc_eval(size)),
        _ => (Transform::vtab(size), Transform::vtab(size)),
    }
}

/// The config's device, with its thread count and cuDNN autotuning applied.
pub fn setup_device(cfg: &ExperimentConfig) -> Result<Device> {
    let device = resolve_device("train.device", &cfg.train.device).map_err(TrainError::Invalid)?;
    if let Some(n) = cfg.train.threads {
        tch::set_num_threads(n as i32);
    }
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    Ok(device)
}

/// Opens the config's task and checks that `model.num_classes`, when set, fits it.
pub fn open_task(cfg: &ExperimentConfig) -> Result<mlae_data::Task> {
    let mut task = mlae_data::open_task(&cfg.data_source())?;
    task.allow_outside_paths = cfg.data.allow_outside_paths;
    if let Some(n) = cfg.model.num_classes
        && n as usize != task.num_classes
    {
        return Err(TrainError::Invalid(format!(
            "model.num_classes is {n} but task {} has {} classes",
            cfg.data.task, task.num_classes
        )));
    }
    Ok(task)
}

/// The task's class names in label order (folder names, a list task's `classes.txt`, else
/// the label numbers).
pub fn class_names(task: &mlae_data::Task) -> Vec<String> {
    task.class_names()
}

/// Writes what a run keeps of its data into `<run>/data/`: the class names and, for an image
/// folder, the files of each split (a held-out split can then be audited and reused), so that
/// `predict` and exports name classes without the dataset. Returns the class names.
pub fn write_run_data(task: &mlae_data::Task, layout: &mlae_formats::RunLayout) -> Result<Vec<String>> {
    task.write_run_files(&layout.data_dir())?;
    Ok(task.class_names())
}

/// One split of a task through the config's evaluation transform, via the decoded cache.
pub fn load_eval_split(cfg: &ExperimentConfig, task: &mlae_data::Task, split: &str) -> Result<ImageSet> {
    let list = task.split(split)?;
    let (_, tf) = transforms(cfg.data.benchmark, cfg.model.image_size as u32);
    let cache = cfg.decoded_cache_dir();
    Ok(mlae_data::load_images(&list, &tf, task.num_classes, Some(&cache), cfg.train.seed)?)
}

/// Says so when the config loads no backbone. Training and `eval` warn; export and analysis
/// work on the run as it is and stay quiet.
pub fn warn_if_random_backbone(cfg: &ExperimentConfig) {
    if cfg.model.checkpoint.is_none() {
        tracing::warn!("model.checkpoint is not set: the backbone is randomly initialised");
    }
}

/// The config's model with its backbone loaded (position table resized as `model.pos_resize`
/// says; adapter and head freshly initialised from the seed), computing in `precision`.
pub fn build_model(
    cfg: &ExperimentConfig,
    num_classes: usize,
    device: Device,
    precision: Precision,
) -> Result<AdaptedVit> {
    let vit_cfg = cfg.vit_config(num_classes as i64);
    let mut model = AdaptedVit::new(&vit_cfg, &cfg.adapter, cfg.train.seed, device)?;
    model.set_pos_resize(Some(cfg.model.pos_resize));
    if let Some(ck) = &cfg.model.checkpoint {
        let report = model.load_backbone(ck, cfg.model.format)?;
        tracing::info!("loaded backbone {}: {report}", ck.display());
    }
    if precision == Precision::Bf16 {
        model.set_compute_kind(Kind::BFloat16);
    }
    Ok(model)
}
