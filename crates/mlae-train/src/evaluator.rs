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
use mlae_vit::{AdaptedVit, ForwardCtx, transfer};
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
        dump: Option<&mut Vec<f32>>,
    ) -> Evaluation {
        self.run(model, set, None, dump)
    }

    /// [`Evaluator::evaluate_counted`] on a split that may be resident on the device, which
    /// then uploads nothing.
    pub fn evaluate_split(
        &self,
        model: &AdaptedVit,
        split: &EvalSplit,
        dump: Option<&mut Vec<f32>>,
    ) -> Evaluation {
        self.run(model, &split.set, split.resident.as_ref(), dump)
    }

    fn run(
        &self,
        model: &AdaptedVit,
        set: &ImageSet,
        resident: Option<&(Tensor, Tensor)>,
        mut dump: Option<&mut Vec<f32>>,
    ) -> Evaluation {
        let bs = self.batch_size;
        let ctx = ForwardCtx::eval();
        let (mut loss_sum, mut counts, mut classes) = (None::<Tensor>, None::<Tensor>, 0i64);
        let (h, w) = (set.height as i64, set.width as i64);
        tch::no_grad(|| {
            let labels = match resident {
                Some((_, labels)) => labels.shallow_clone(),
                None => transfer::upload_i64(&set.labels, self.device),
            };
            for start in (0..set.len).step_by(bs) {
                let end = (start + bs).min(set.len);
                let n = (end - start) as i64;
                let x = match resident {
                    Some((images, _)) => images.narrow(0, start as i64, n),
                    None => {
                        let stride = set.height * set.width * 3;
                        transfer::upload_u8(
                            &set.pixels()[start * stride..end * stride],
                            &[n, h, w, 3],
                            self.device,
                        )
                    }
                };
                let y = labels.narrow(0, start as i64, n);
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
        // One read for the loss sum and the matrix together (counts are exact in f64).
        let (loss_sum, confusion) = match (loss_sum, counts) {
            (Some(loss), Some(c)) => {
                let both = transfer::read_f64(&Tensor::cat(&[loss.view([1]), c.to_kind(Kind::Double)], 0));
                (both[0], both[1..].iter().map(|&v| v as u64).collect::<Vec<u64>>())
            }
            _ => (0.0, Vec::new()),
        };
        let correct: u64 = (0..classes as usize).map(|i| confusion[i * classes as usize + i]).sum();
        let n = set.len.max(1) as f64;
        Evaluation {
            result: EvalResult { acc: correct as f64 / n, loss: loss_sum / n, n: set.len },
            confusion,
            classes: classes as usize,
        }
    }
}

/// An evaluation split of a training run, its pixels and labels kept on the device when they
/// fit there ([`EvalSplit::keep_on`]), so each epoch's evaluation uploads nothing.
pub struct EvalSplit {
    pub set: ImageSet,
    resident: Option<(Tensor, Tensor)>,
}

impl EvalSplit {
    pub fn new(set: ImageSet) -> Self {
        Self { set, resident: None }
    }

    /// Copies the split to `device` once (two uploads: images and labels).
    pub fn keep_on(&mut self, device: Device) {
        let s = &self.set;
        let images =
            transfer::upload_u8(s.pixels(), &[s.len as i64, s.height as i64, s.width as i64, 3], device);
        self.resident = Some((images, transfer::upload_i64(&s.labels, device)));
    }

    /// Whether the split lives on the device.
    pub fn is_resident(&self) -> bool {
        self.resident.is_some()
    }

    /// The split's size in bytes (pixels and labels).
    pub fn bytes(&self) -> usize {
        self.set.len * (self.set.height * self.set.width * 3 + 8)
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

    /// A list task of `n` 8 px PNGs in 3 classes, decoded.
    fn image_set(n: usize) -> (tempfile::TempDir, ImageSet) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t");
        std::fs::create_dir_all(&dir).unwrap();
        let mut list = String::new();
        for i in 0..n {
            let img = image::RgbImage::from_fn(8, 8, |x, y| {
                image::Rgb([(x * 30) as u8, (y * 30) as u8, (i * 20) as u8])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
            list.push_str(&format!("{i}.png {}\n", i % 3));
        }
        std::fs::write(dir.join("test.txt"), list).unwrap();
        let src = mlae_data::DataSource {
            benchmark: mlae_data::Benchmark::List,
            task: "t".into(),
            root: tmp.path().into(),
            split: None,
        };
        let split = mlae_data::open_task(&src).unwrap().split("test").unwrap();
        let set = mlae_data::load_images(&split, &mlae_data::Transform::vtab(8), 3, None, 0).unwrap();
        (tmp, set)
    }

    /// An evaluation reads the device once; a resident split uploads nothing, one on the host
    /// uploads its labels once and each batch's pixels; the results are the same.
    #[test]
    fn an_evaluation_reads_once_and_a_resident_split_uploads_nothing() {
        let (_tmp, set) = image_set(10);
        let vit = mlae_vit::VitConfig {
            preset: None,
            patch_size: 4,
            dim: 16,
            depth: 1,
            heads: 2,
            mlp_dim: 32,
            in_chans: 3,
            image_size: 8,
            num_classes: 3,
            qkv_bias: true,
            layer_scale: false,
            layer_scale_init: 1.0,
            drop_path: 0.0,
            eps: 1e-6,
        };
        let model = AdaptedVit::new(&vit, &mlae_core::AdapterSpec::default(), 0, Device::Cpu).unwrap();
        let ev = Evaluator {
            preprocess: Preprocess::new(Normalization::Imagenet, Precision::Fp32, Device::Cpu),
            batch_size: 4,
            device: Device::Cpu,
        };
        let mut split = EvalSplit::new(set);
        let t0 = transfer::Transfers::now();
        let host = ev.evaluate_split(&model, &split, None);
        let t1 = transfer::Transfers::now();
        assert_eq!(t1.since(t0), transfer::Transfers { reads: 1, uploads: 1 + 3 }, "labels + 3 batches");
        split.keep_on(Device::Cpu);
        let t2 = transfer::Transfers::now();
        let resident = ev.evaluate_split(&model, &split, None);
        assert_eq!(transfer::Transfers::now().since(t2), transfer::Transfers { reads: 1, uploads: 0 });
        assert_eq!(
            (host.result.acc, host.result.loss, &host.confusion),
            (resident.result.acc, resident.result.loss, &resident.confusion)
        );
        assert_eq!(host.confusion.iter().sum::<u64>(), 10);
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
