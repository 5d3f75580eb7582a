//! One evaluator for everything that runs trained weights: the training loop's evaluation
//! after each epoch, `mlae-cli eval`, `export` and `analyze`.
//!
//! [`OpenRun`] opens a run directory for inference: its resolved config, its task, and on
//! request the model with the weights asked for ([`ModelSource`]: a checkpoint, an exported
//! adapter or a merged model) and the decoded images of one split. It builds no optimizer and
//! decodes no split but the one evaluated, so a run whose training data is gone still
//! evaluates and exports. [`Evaluator`] measures accuracy and loss of a model on an image
//! set, with the [`Preprocess`] that training uses too.

use crate::checkpoint::{self, copy_params};
use crate::config::{ExperimentConfig, Precision, VitConfigExt};
use crate::error::{Result, TrainError};
use crate::metrics::EvalResult;
use crate::setup::{build_model, load_eval_split, open_task, setup_device, warn_if_random_backbone};
use mlae_core::AdapterKind;
use mlae_data::{ImageSet, Normalization};
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
    pub fn evaluate(&self, model: &AdaptedVit, set: &ImageSet, dump: Option<&mut Vec<f32>>) -> EvalResult {
        self.evaluate_counted(model, set, dump).result
    }

    /// [`Evaluator::evaluate`] with the confusion matrix. The loss sum and the matrix are
    /// accumulated on the device and read once at the end, so a GPU is not made to wait on
    /// the host after every batch; the sums are the same f64 additions in the same order as
    /// reading each batch would give.
    pub fn evaluate_counted(
        &self,
        model: &AdaptedVit,
        set: &ImageSet,
        mut dump: Option<&mut Vec<f32>>,
    ) -> Evaluation {
        let bs = self.batch_size;
        let ctx = ForwardCtx::eval();
        let (mut loss_sum, mut counts, mut classes) = (None::<Tensor>, None::<Tensor>, 0i64);
        tch::no_grad(|| {
            let labels = Tensor::from_slice(&set.labels).to_device(self.device);
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
                let y = labels.narrow(0, start as i64, (end - start) as i64);
                let logits = model.forward_t(&self.preprocess.apply(&x), &ctx).to_kind(Kind::Float);
                classes = logits.size()[1];
                let batch_loss = logits
                    .cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Sum, -100, 0.0)
                    .to_kind(Kind::Double);
                loss_sum = Some(match loss_sum.take() {
                    Some(sum) => sum + batch_loss,
                    None => batch_loss,
                });
                let pairs = &y * classes + logits.argmax(-1, false);
                let batch_counts = pairs.bincount::<Tensor>(None, classes * classes);
                counts = Some(match counts.take() {
                    Some(c) => c + batch_counts,
                    None => batch_counts,
                });
                if let Some(out) = dump.as_deref_mut() {
                    out.extend(
                        Vec::<f32>::try_from(logits.to_device(Device::Cpu).flatten(0, -1))
                            .expect("f32 logits"),
                    );
                }
            }
        });
        let loss_sum = loss_sum.map_or(0.0, |t| t.double_value(&[]));
        let confusion: Vec<u64> = counts.map_or_else(Vec::new, |t| {
            Vec::<i64>::try_from(t.to_device(Device::Cpu))
                .expect("i64 counts")
                .into_iter()
                .map(|n| n as u64)
                .collect()
        });
        let correct: u64 = (0..classes as usize).map(|i| confusion[i * classes as usize + i]).sum();
        let n = set.len.max(1) as f64;
        Evaluation {
            result: EvalResult { acc: correct as f64 / n, loss: loss_sum / n, n: set.len },
            confusion,
            classes: classes as usize,
        }
    }
}

/// What [`Evaluator::evaluate_counted`] measured on one image set.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub result: EvalResult,
    /// Row-major `[true][predicted]` counts, `classes` squared (empty for an empty set).
    pub confusion: Vec<u64>,
    pub classes: usize,
}

/// One split evaluated by [`OpenRun::evaluate`].
#[derive(Debug, Clone)]
pub struct SplitEval {
    pub split: String,
    pub result: EvalResult,
    /// Row-major `[n, classes]`, in the split's order.
    pub logits: Vec<f32>,
    pub classes: usize,
    /// Row-major `[true][predicted]` counts.
    pub confusion: Vec<u64>,
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

    /// The run's model on `device` with the weights of `source`, computing in `precision`,
    /// its outputs named by the run's classes (so exports carry them).
    pub fn model(&self, source: &ModelSource, device: Device, precision: Precision) -> Result<AdaptedVit> {
        let mut model = self.model_weights(source, device, precision)?;
        model.set_class_names(self.class_names()?)?;
        Ok(model)
    }

    fn model_weights(
        &self,
        source: &ModelSource,
        device: Device,
        precision: Precision,
    ) -> Result<AdaptedVit> {
        load_weights(&self.cfg, &self.dir, self.task.num_classes, source, device, precision)
    }

    /// The run's class names in label order: `data/classes.txt` as training wrote it, else
    /// (a run from before that file) the task's.
    pub fn class_names(&self) -> Result<Vec<String>> {
        match mlae_formats::RunLayout::new(&self.dir).read_classes()? {
            Some(names) => Ok(names),
            None => Ok(crate::setup::class_names(&self.task)),
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
        let out = Evaluator::new(&self.cfg, device).evaluate_counted(&model, &set, Some(&mut logits));
        let classes = logits.len().checked_div(out.result.n).unwrap_or(0);
        Ok(SplitEval { split, result: out.result, logits, classes, confusion: out.confusion })
    }
}

/// A run's model with the weights of `source`, for a head of `num_classes` (the run's own
/// task need not be at hand: `predict` counts the classes in `data/classes.txt`).
pub fn load_weights(
    cfg: &ExperimentConfig,
    run_dir: &Path,
    num_classes: usize,
    source: &ModelSource,
    device: Device,
    precision: Precision,
) -> Result<AdaptedVit> {
    match source {
        ModelSource::Checkpoint(which) => {
            let model = build_model(cfg, num_classes, device, precision)?;
            let path = checkpoint_path(run_dir, *which);
            copy_params(&model, &checkpoint::load(&path)?, &path)?;
            Ok(model)
        }
        ModelSource::Adapter(path) => {
            let mut model = build_model(cfg, num_classes, device, precision)?;
            model.load_adapter(path)?;
            Ok(model)
        }
        ModelSource::Merged(path) => {
            let plain = mlae_core::AdapterSpec { kind: AdapterKind::LinearProbe, ..Default::default() };
            let vit_cfg = cfg.vit_config(num_classes as i64);
            let mut model = AdaptedVit::new(&vit_cfg, &plain, 0, device)?;
            model.set_pos_resize(Some(cfg.model.pos_resize));
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
