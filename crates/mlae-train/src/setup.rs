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

/// The config's device, with its thread count and cuDNN autotuning applied; with
/// `train.deterministic`, cuDNN deterministic without autotuning and cuBLAS with a fixed
/// workspace instead (the model's half, attention written out, is [`build_model`]'s).
pub fn setup_device(cfg: &ExperimentConfig) -> Result<Device> {
    let deterministic = cfg.train.deterministic;
    if deterministic {
        fix_cublas_workspace();
    }
    let device = resolve_device("train.device", &cfg.train.device).map_err(TrainError::Invalid)?;
    if let Some(n) = cfg.train.threads {
        tch::set_num_threads(n as i32);
    }
    if device.is_cuda() {
        // autotuning times candidate kernels and keeps the fastest: the choice can differ
        // between runs, and so can the bits
        tch::Cuda::cudnn_set_benchmark(!deterministic);
        if deterministic {
            match set_cudnn_deterministic(true) {
                Ok(true) => tracing::info!("train.deterministic: cuDNN deterministic, no autotuning"),
                Ok(false) => tracing::warn!("train.deterministic: cuDNN's deterministic flag did not take"),
                Err(e) => tracing::warn!("train.deterministic: cannot set cuDNN deterministic ({e})"),
            }
        }
    }
    Ok(device)
}

/// Sets `CUBLAS_WORKSPACE_CONFIG=:4096:8` unless the user set it. Why: with several workspaces
/// per stream cuBLAS may split a reduction differently from one call to the next, and NVIDIA
/// documents a fixed workspace configuration as the condition for repeatable results (what
/// PyTorch's `use_deterministic_algorithms` asks for). cuBLAS and libtorch read it when the
/// first cuBLAS handle is made (the first matmul on the GPU), so this must run before the model
/// does; setup does it first thing.
fn fix_cublas_workspace() {
    const KEY: &str = "CUBLAS_WORKSPACE_CONFIG";
    if std::env::var_os(KEY).is_none() {
        // SAFETY: setup runs on the main thread before the loader and the model start, so no
        // other thread of ours reads the environment while it changes.
        unsafe { std::env::set_var(KEY, ":4096:8") };
    }
}

/// Sets cuDNN's deterministic mode (PyTorch's `torch.backends.cudnn.deterministic`) and returns
/// whether it reads back as set. tch exposes the benchmark switch but not this one, so it is
/// libtorch's own `at::globalContext().setDeterministicCuDNN(on)`, found in libtorch_cpu by its
/// C++ symbol (a non-virtual member: the context pointer is the first argument).
fn set_cudnn_deterministic(on: bool) -> std::result::Result<bool, String> {
    type GlobalContext = unsafe extern "C" fn() -> *mut std::ffi::c_void;
    type SetFlag = unsafe extern "C" fn(*mut std::ffi::c_void, bool);
    type GetFlag = unsafe extern "C" fn(*const std::ffi::c_void) -> bool;
    // SAFETY: libtorch_cpu is already mapped (the process links it), so this returns it; the
    // symbols' signatures are libtorch's (`Context& globalContext()`,
    // `void Context::setDeterministicCuDNN(bool)`, `bool Context::deterministicCuDNN() const`).
    unsafe {
        let lib = libloading::Library::new("libtorch_cpu.so").map_err(|e| e.to_string())?;
        let context: libloading::Symbol<GlobalContext> =
            lib.get(b"_ZN2at13globalContextEv").map_err(|e| format!("at::globalContext: {e}"))?;
        let set: libloading::Symbol<SetFlag> = lib
            .get(b"_ZN2at7Context21setDeterministicCuDNNEb")
            .map_err(|e| format!("at::Context::setDeterministicCuDNN: {e}"))?;
        let get: libloading::Symbol<GetFlag> = lib
            .get(b"_ZNK2at7Context18deterministicCuDNNEv")
            .map_err(|e| format!("at::Context::deterministicCuDNN: {e}"))?;
        let ctx = context();
        set(ctx, on);
        Ok(get(ctx) == on)
    }
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
    // the fused attention's backward is not repeatable on CUDA; on the CPU it is, and the
    // default path stays as it is
    model.set_explicit_attention(cfg.train.deterministic && device.is_cuda());
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The symbol lookup reaches libtorch's context (which lives in libtorch_cpu, so this runs
    /// without a GPU) and the flag reads back.
    #[test]
    fn cudnn_deterministic_is_set_through_libtorchs_context() {
        assert_eq!(set_cudnn_deterministic(true), Ok(true));
        assert_eq!(set_cudnn_deterministic(false), Ok(true));
    }
}
