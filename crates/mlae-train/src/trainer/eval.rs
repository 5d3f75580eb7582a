//! Evaluation of a session's model, and of a finished run's weights.

use super::checkpointing::copy_params;
use super::load_run_config;
use super::session::{Session, transforms};
use crate::checkpoint;
use crate::config::{ExperimentConfig, Precision};
use crate::error::{Result, TrainError};
use crate::metrics::EvalResult;
use crate::rundir::RunDir;
use mlae_core::AdapterKind;
use mlae_data::ImageSet;
use mlae_vit::{AdaptedVit, ForwardCtx};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

impl Session {
    /// Accuracy and mean loss on an image set; optionally the logits (row-major [N, C]).
    pub(super) fn evaluate(&self, set: &ImageSet, mut dump: Option<&mut Vec<f32>>) -> EvalResult {
        let bs = self.cfg.train.eval_batch_size;
        let (mut correct, mut loss_sum) = (0i64, 0f64);
        let ctx = ForwardCtx { train: false, step: self.state.step, total_steps: self.total_steps };
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
                let logits = self.model.forward_t(&self.preprocess(&x), &ctx).to_kind(Kind::Float);
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

/// Which trained weights [`evaluate_run`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalSource {
    /// One of the run's own checkpoints.
    Checkpoint(WhichCheckpoint),
    /// An adapter file written by `mlae-cli export --format adapter` (or `save_adapter`),
    /// loaded onto the run's backbone.
    Adapter(PathBuf),
    /// A merged model written by `mlae-cli export --format merged` (timm safetensors with the
    /// head), run as a plain ViT with no adapter.
    Merged(PathBuf),
}

/// Evaluates a run's weights on a split (default: the run's test split). Returns the result,
/// the logits (row-major `[N, C]`, in the split's order) and `C`.
pub fn evaluate_run(
    run_dir: &Path,
    split: Option<&str>,
    source: &EvalSource,
) -> Result<(EvalResult, Vec<f32>, usize)> {
    let cfg = load_run_config(run_dir)?;
    let run = RunDir::open(run_dir)?;
    let text = std::fs::read_to_string(run.config_path()).map_err(crate::error::io_err(run.config_path()))?;
    let hash = crate::rundir::config_hash(&text);
    let mut session = Session::build(cfg, |_| Ok((run, hash)))?;
    match source {
        EvalSource::Checkpoint(which) => {
            let path = match which {
                WhichCheckpoint::Last => session.run.last_checkpoint(),
                WhichCheckpoint::Best => session.run.best_checkpoint(),
            };
            session.load_params(&path)?;
        }
        EvalSource::Adapter(path) => session.model.load_adapter(path)?,
        EvalSource::Merged(path) => {
            let classes = session.model.config().num_classes;
            let plain = mlae_core::AdapterSpec { kind: AdapterKind::LinearProbe, ..Default::default() };
            let mut model = AdaptedVit::new(&session.cfg.vit_config(classes), &plain, 0, session.device)?;
            let report = model.load_backbone(path, Some(mlae_vit::CheckpointFormat::Timm))?;
            if !matches!(report.head, mlae_vit::HeadLoad::Loaded) {
                return Err(TrainError::Invalid(format!(
                    "{}: the merged model's head does not fit the task ({report})",
                    path.display()
                )));
            }
            if session.cfg.train.precision == Precision::Bf16 {
                model.set_compute_kind(Kind::BFloat16);
            }
            session.model = model;
        }
    }
    let split = split.map(String::from).unwrap_or_else(|| session.cfg.test_split());
    if !session.evals.iter().any(|(s, _)| *s == split) {
        let task = mlae_data::open_task(&session.cfg.data_source())?;
        let list = task.split(&split)?;
        let (_, tf) = transforms(session.cfg.data.benchmark, session.cfg.model.image_size as u32);
        let cache = session.cfg.decoded_cache_dir();
        let set = mlae_data::load_images(&list, &tf, task.num_classes, Some(&cache), session.cfg.train.seed)?;
        session.evals.push((split.clone(), set));
    }
    let set = &session.evals.iter().find(|(s, _)| *s == split).expect("loaded above").1;
    let mut logits = Vec::new();
    let result = session.evaluate(set, Some(&mut logits));
    let classes = logits.len().checked_div(result.n).unwrap_or(0);
    Ok((result, logits, classes))
}

/// Which checkpoint of a run to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhichCheckpoint {
    Best,
    Last,
}

/// Builds the model of a run with its trained parameters (for export and analysis).
pub fn load_run_model(run_dir: &Path, which: WhichCheckpoint) -> Result<(ExperimentConfig, AdaptedVit)> {
    let cfg = load_run_config(run_dir)?;
    let device = Device::Cpu;
    let task = mlae_data::open_task(&cfg.data_source())?;
    let vit_cfg = cfg.vit_config(task.num_classes as i64);
    let mut model = AdaptedVit::new(&vit_cfg, &cfg.adapter, cfg.train.seed, device)?;
    if let Some(ck) = &cfg.model.checkpoint {
        model.load_backbone(ck, cfg.model.format)?;
    }
    let path: PathBuf = run_dir.join("checkpoints").join(match which {
        WhichCheckpoint::Best => "best.safetensors",
        WhichCheckpoint::Last => "last.safetensors",
    });
    copy_params(&model, &checkpoint::load(&path)?, &path)?;
    Ok((cfg, model))
}
