//! One evaluator for everything that runs trained weights: the training loop's evaluation
//! after each epoch, `mlae-cli eval`, `export` and `analyze`.
//!
//! [`OpenRun`] opens a run directory for inference: its resolved config, its task, and on
//! request the model with the weights asked for ([`ModelSource`]: a checkpoint, an exported
//! adapter or a merged model) and the decoded images of one split. It builds no optimizer and
//! decodes no split but the one evaluated, so a run whose training data is gone still
//! evaluates and exports. [`Evaluator`] measures accuracy and loss of a model on an image
//! set, with the [`Preprocess`] that training uses too.

use crate::checkpoint;
use crate::config::{ExperimentConfig, Precision, VitConfigExt, resolve_device};
use crate::error::{Result, TrainError};
use crate::metrics::EvalResult;
use mlae_core::AdapterKind;
use mlae_data::{Benchmark, ImageSet, Normalization, Transform};
use mlae_vit::{AdaptedVit, ForwardCtx};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Which checkpoint of a run to use (a run-directory format, mlae-formats').
pub use mlae_formats::WhichCheckpoint;

/// Where the trained weights of a model come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// One of the run's own checkpoints.
    Checkpoint(WhichCheckpoint),
    /// An adapter file written by `mlae-cli export --format adapter` (or `save_adapter`),
    /// loaded onto the run's backbone.
    Adapter(PathBuf),
    /// A merged model written by `mlae-cli export --format merged` (timm safetensors with the
    /// head), run as a plain ViT with no adapter.
    Merged(PathBuf),
}

/// The resolved config stored in a run directory.
pub fn load_run_config(run_dir: &Path) -> Result<ExperimentConfig> {
    Ok(mlae_formats::RunLayout::new(run_dir).read_config()?)
}

/// The file of a run's checkpoint. Readers do not lock the run (only a writer does), so this
/// names the file without opening a [`crate::rundir::RunDir`]; it is the layout's.
pub fn checkpoint_path(run_dir: &Path, which: WhichCheckpoint) -> PathBuf {
    mlae_formats::RunLayout::new(run_dir).checkpoint(which)
}

/// Copies a checkpoint's `model.*` tensors into the model's trainable parameters; a missing
/// parameter or a shape mismatch is an error naming both.
pub fn copy_params(model: &AdaptedVit, loaded: &checkpoint::Loaded, path: &Path) -> Result<()> {
    let err = |message: String| TrainError::Checkpoint { path: path.to_path_buf(), message };
    tch::no_grad(|| {
        for (name, mut t, _) in model.trainable() {
            let src = loaded
                .tensors
                .get(&format!("model.{name}"))
                .ok_or_else(|| err(format!("parameter {name} is missing")))?;
            if src.size() != t.size() {
                return Err(err(format!(
                    "parameter {name} has shape {:?}, the model has {:?}",
                    src.size(),
                    t.size()
                )));
            }
            t.copy_(src);
        }
        Ok(())
    })
}

/// The transforms for a benchmark: (train, eval). FGVC trains on random resized crops with
/// flips and evaluates on a centre crop (VPT); everything else is VTAB's direct resize.
pub(crate) fn transforms(benchmark: Benchmark, size: u32) -> (Transform, Transform) {
    match benchmark {
        Benchmark::Fgvc => (Transform::fgvc_train(size), Transform::fgvc_eval(size)),
        _ => (Transform::vtab(size), Transform::vtab(size)),
    }
}

/// The config's device, with its thread count and cuDNN autotuning applied.
pub(crate) fn setup_device(cfg: &ExperimentConfig) -> Result<Device> {
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
pub(crate) fn open_task(cfg: &ExperimentConfig) -> Result<mlae_data::Task> {
    let task = mlae_data::open_task(&cfg.data_source())?;
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

/// One split of a task through the config's evaluation transform, via the decoded cache.
pub(crate) fn load_eval_split(
    cfg: &ExperimentConfig,
    task: &mlae_data::Task,
    split: &str,
) -> Result<ImageSet> {
    let list = task.split(split)?;
    let (_, tf) = transforms(cfg.data.benchmark, cfg.model.image_size as u32);
    let cache = cfg.decoded_cache_dir();
    Ok(mlae_data::load_images(&list, &tf, task.num_classes, Some(&cache), cfg.train.seed)?)
}

/// Says so when the config loads no backbone. Training and `eval` warn; export and analysis
/// work on the run as it is and stay quiet.
pub(crate) fn warn_if_random_backbone(cfg: &ExperimentConfig) {
    if cfg.model.checkpoint.is_none() {
        tracing::warn!("model.checkpoint is not set: the backbone is randomly initialised");
    }
}

/// The config's model with its backbone loaded (position table resized as `model.pos_resize`
/// says; adapter and head freshly initialised from the seed), computing in `precision`.
pub(crate) fn build_model(
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

/// Uint8 NHWC images to the model's input: float NCHW in `[0, 1]`, normalised, in the
/// compute precision. Training and evaluation share it, so they see identical inputs.
pub struct Preprocess {
    mean: Tensor,
    std: Tensor,
    precision: Precision,
}

impl Preprocess {
    pub fn new(normalization: Normalization, precision: Precision, device: Device) -> Self {
        let (mean, std) = normalization.mean_std();
        Self {
            mean: Tensor::from_slice(&mean).view([1, 3, 1, 1]).to_device(device),
            std: Tensor::from_slice(&std).view([1, 3, 1, 1]).to_device(device),
            precision,
        }
    }

    /// The preprocessing of a run's config.
    pub fn for_config(cfg: &ExperimentConfig, device: Device) -> Self {
        Self::new(cfg.data.normalization, cfg.train.precision, device)
    }

    /// Normalised images `(N, 3, H, W)` from uint8 `(N, H, W, 3)` on the same device.
    pub fn apply(&self, u8_nhwc: &Tensor) -> Tensor {
        let x = u8_nhwc.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0;
        let x = (x - &self.mean) / &self.std;
        match self.precision {
            Precision::Fp32 => x,
            Precision::Bf16 => x.to_kind(Kind::BFloat16),
        }
    }
}

/// Accuracy and mean loss of a model on decoded image sets, in batches on one device.
pub struct Evaluator {
    preprocess: Preprocess,
    batch_size: usize,
    device: Device,
}

impl Evaluator {
    /// The evaluator of a run's config (its normalisation, precision and eval batch size).
    pub fn new(cfg: &ExperimentConfig, device: Device) -> Self {
        Self {
            preprocess: Preprocess::for_config(cfg, device),
            batch_size: cfg.train.eval_batch_size,
            device,
        }
    }

    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// Accuracy and mean loss on an image set (every adapter in inference mode); optionally
    /// the logits, row-major `[N, C]` in the set's order.
    pub fn evaluate(
        &self,
        model: &AdaptedVit,
        set: &ImageSet,
        mut dump: Option<&mut Vec<f32>>,
    ) -> EvalResult {
        let bs = self.batch_size;
        let (mut correct, mut loss_sum) = (0i64, 0f64);
        let ctx = ForwardCtx::eval();
        tch::no_grad(|| {
            for start in (0..set.len).step_by(bs) {
                let end = (start + bs).min(set.len);
                let pixels =
                    &set.pixels()[start * set.height * set.width * 3..end * set.height * set.width * 3];
                let x = Tensor::from_data_size(
                    pixels,
                    &[(end - start) as i64, set.height as i64, set.width as i64, 3],
                    Kind::Uint8,
                )
                .to_device(self.device);
                let y = Tensor::from_slice(&set.labels[start..end]).to_device(self.device);
                let logits = model.forward_t(&self.preprocess.apply(&x), &ctx).to_kind(Kind::Float);
                loss_sum += logits
                    .cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Sum, -100, 0.0)
                    .double_value(&[]);
                correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
                if let Some(out) = dump.as_deref_mut() {
                    out.extend(
                        Vec::<f32>::try_from(logits.to_device(Device::Cpu).flatten(0, -1))
                            .expect("f32 logits"),
                    );
                }
            }
        });
        let n = set.len.max(1) as f64;
        EvalResult { acc: correct as f64 / n, loss: loss_sum / n, n: set.len }
    }
}

/// One split evaluated by [`OpenRun::evaluate`].
#[derive(Debug, Clone)]
pub struct SplitEval {
    pub split: String,
    pub result: EvalResult,
    /// Row-major `[n, classes]`, in the split's order.
    pub logits: Vec<f32>,
    pub classes: usize,
}

/// A run directory opened for inference: its config and task, nothing decoded yet.
#[derive(Debug)]
pub struct OpenRun {
    pub dir: PathBuf,
    pub cfg: ExperimentConfig,
    pub task: mlae_data::Task,
}

impl OpenRun {
    /// Reads the run's resolved config and opens its task (no list file is read).
    pub fn open(run_dir: &Path) -> Result<Self> {
        let cfg = load_run_config(run_dir)?;
        let task = open_task(&cfg)?;
        Ok(Self { dir: run_dir.to_path_buf(), cfg, task })
    }

    /// The run's model on `device` with the weights of `source`, computing in `precision`.
    pub fn model(&self, source: &ModelSource, device: Device, precision: Precision) -> Result<AdaptedVit> {
        match source {
            ModelSource::Checkpoint(which) => {
                let model = build_model(&self.cfg, self.task.num_classes, device, precision)?;
                let path = checkpoint_path(&self.dir, *which);
                copy_params(&model, &checkpoint::load(&path)?, &path)?;
                Ok(model)
            }
            ModelSource::Adapter(path) => {
                let mut model = build_model(&self.cfg, self.task.num_classes, device, precision)?;
                model.load_adapter(path)?;
                Ok(model)
            }
            ModelSource::Merged(path) => {
                let plain = mlae_core::AdapterSpec { kind: AdapterKind::LinearProbe, ..Default::default() };
                let vit_cfg = self.cfg.vit_config(self.task.num_classes as i64);
                let mut model = AdaptedVit::new(&vit_cfg, &plain, 0, device)?;
                model.set_pos_resize(Some(self.cfg.model.pos_resize));
                let report = model.load_backbone(path, Some(mlae_vit::CheckpointFormat::Timm))?;
                if !matches!(report.head, mlae_vit::HeadLoad::Loaded) {
                    return Err(TrainError::Invalid(format!(
                        "{}: the merged model's head does not fit the task ({report})",
                        path.display()
                    )));
                }
                if precision == Precision::Bf16 {
                    model.set_compute_kind(Kind::BFloat16);
                }
                Ok(model)
            }
        }
    }

    /// One split of the run's task through its evaluation transform (via the decoded cache).
    pub fn load_split(&self, split: &str) -> Result<ImageSet> {
        load_eval_split(&self.cfg, &self.task, split)
    }

    /// Evaluates the weights of `source` on a split (default: the run's test split) on the
    /// run's device and precision.
    pub fn evaluate(&self, split: Option<&str>, source: &ModelSource) -> Result<SplitEval> {
        let device = setup_device(&self.cfg)?;
        warn_if_random_backbone(&self.cfg);
        let model = self.model(source, device, self.cfg.train.precision)?;
        let split = split.map(String::from).unwrap_or_else(|| self.cfg.test_split());
        let set = self.load_split(&split)?;
        let mut logits = Vec::new();
        let result = Evaluator::new(&self.cfg, device).evaluate(&model, &set, Some(&mut logits));
        let classes = logits.len().checked_div(result.n).unwrap_or(0);
        Ok(SplitEval { split, result, logits, classes })
    }
}

/// Evaluates a run's weights on a split (default: its test split); see [`OpenRun::evaluate`].
pub fn evaluate_run(run_dir: &Path, split: Option<&str>, source: &ModelSource) -> Result<SplitEval> {
    OpenRun::open(run_dir)?.evaluate(split, source)
}

/// A run's model with the parameters of one checkpoint, on the CPU in fp32 (for export and
/// analysis).
pub fn load_run_model(run_dir: &Path, which: WhichCheckpoint) -> Result<(ExperimentConfig, AdaptedVit)> {
    let run = OpenRun::open(run_dir)?;
    let model = run.model(&ModelSource::Checkpoint(which), Device::Cpu, Precision::Fp32)?;
    Ok((run.cfg, model))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    #[test]
    fn checkpoint_paths_follow_the_run_directory_layout() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), "").unwrap();
        let run = crate::rundir::RunDir::open(dir.path()).unwrap();
        assert_eq!(checkpoint_path(dir.path(), WhichCheckpoint::Last), run.last_checkpoint());
        assert_eq!(checkpoint_path(dir.path(), WhichCheckpoint::Best), run.best_checkpoint());
        assert_eq!(WhichCheckpoint::reported(Protocol::Paper), WhichCheckpoint::Last);
        assert_eq!(WhichCheckpoint::reported(Protocol::Val), WhichCheckpoint::Best);
    }

    #[test]
    fn preprocess_normalises_to_nchw_in_the_compute_precision() {
        let x = Tensor::from_slice(&[0u8, 255, 51, 102, 153, 204]).view([1, 1, 2, 3]);
        let p = Preprocess::new(Normalization::Inception, Precision::Fp32, Device::Cpu).apply(&x);
        assert_eq!(p.size(), [1, 3, 1, 2]);
        // (v / 255 - 0.5) / 0.5, channel-first: pixel 0 is (0, 255, 51), pixel 1 (102, 153, 204).
        let want = [-1.0, -0.2, 1.0, 0.2, -0.6, 0.6];
        let got = Vec::<f32>::try_from(p.flatten(0, -1)).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        let bf = Preprocess::new(Normalization::Inception, Precision::Bf16, Device::Cpu).apply(&x);
        assert_eq!(bf.kind(), Kind::BFloat16);
    }
}
