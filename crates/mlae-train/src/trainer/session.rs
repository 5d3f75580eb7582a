//! Session set-up: everything a run needs before its first step (device, model, data,
//! optimizer, schedule), built from a config and checked to fit before the run directory is
//! touched.

use super::checkpointing;
use super::state::LoopState;
use crate::config::{ExperimentConfig, Protocol};
use crate::error::{Result, TrainError};
use crate::evaluator::{EvalSplit, Evaluator};
use crate::lr_schedule::LrSchedule;
use crate::metrics::GpuMemProbe;
use crate::rundir::RunDir;
use crate::setup::{
    build_model, load_eval_split, open_task, setup_device, transforms, warn_if_random_backbone,
};
use crate::step::{Optimizer, TrainStep, param_groups};
use mlae_data::Transform;
use mlae_vit::AdaptedVit;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Training images, resident on the device (deterministic transforms) or produced per batch
/// on the CPU (augmentation).
pub(super) enum TrainData {
    Resident {
        images: Tensor,
        labels: Tensor,
        len: usize,
    },
    Augmented {
        set: std::sync::Arc<mlae_data::AugmentedSet>,
        labels: Tensor,
        size: usize,
        /// Builds the next batch while a step runs (see [`super::prefetch`]).
        prefetch: std::cell::RefCell<super::prefetch::Prefetcher>,
    },
}

impl TrainData {
    pub(super) fn len(&self) -> usize {
        match self {
            TrainData::Resident { len, .. } => *len,
            TrainData::Augmented { set, .. } => set.len(),
        }
    }
}

/// One run being trained: its config and directory, the model, the optimizer, the data
/// and the loop state.
pub(super) struct Session {
    pub(super) cfg: ExperimentConfig,
    pub(super) run: RunDir,
    pub(super) device: Device,
    pub(super) model: AdaptedVit,
    /// AdamW with one group per parameter role (the method's schedule gives each its rate).
    pub(super) optim: Optimizer,
    /// The one training step ([`crate::step`]), shared with the benchmark and the check.
    pub(super) step: TrainStep,
    pub(super) schedule: LrSchedule,
    pub(super) train: TrainData,
    pub(super) evals: Vec<(String, EvalSplit)>,
    /// Evaluates the model and preprocesses every batch, training batches included.
    pub(super) evaluator: Evaluator,
    pub(super) total_steps: u64,
    pub(super) state: LoopState,
    pub(super) mem: GpuMemProbe,
    pub(super) device_label: String,
    /// The step at which `checkpoints/last.safetensors` was last written or restored by this
    /// process, for the message of a run that fails later.
    pub(super) last_saved_step: std::cell::Cell<Option<u64>>,
    /// Set when this process starts the run at step 0: the end of the first epoch checks
    /// that the adapter trains (see `Session::check_adapter_trained`).
    pub(super) check_training: bool,
    /// TensorBoard logging, opened when the loop starts.
    pub(super) tb: Option<super::tensorboard::TbLog>,
    /// The class names in label order (`data/classes.txt`), for the per-class results.
    pub(super) classes: Vec<String>,
    /// The confusion matrix of the test split at the epoch it was last evaluated, so the end
    /// of the run writes per-class results without evaluating again.
    pub(super) test_confusion: Option<(u64, Vec<u64>)>,
}

impl Session {
    /// Loads the data and builds the model; `open_run` is called only once both fit, to get
    /// the run directory and its config hash.
    pub(super) fn build(
        cfg: ExperimentConfig,
        open_run: impl FnOnce(&ExperimentConfig) -> Result<(RunDir, String)>,
    ) -> Result<Self> {
        let device = setup_device(&cfg)?;
        let task = open_task(&cfg)?;
        crate::memcheck::check_fits(&cfg, &task, device)?;
        let num_classes = task.num_classes;
        let size = cfg.model.image_size as u32;
        let cache = Some(cfg.decoded_cache_dir());
        let (train_tf, _) = transforms(cfg.data.benchmark, size);

        // The model first: a config that does not fit (image size vs patch, checkpoint
        // shapes) fails before any image is decoded.
        warn_if_random_backbone(&cfg);
        let model = build_model(&cfg, num_classes, device, cfg.train.precision)?;

        let train_list = task.split(&cfg.train_split())?;
        let train = match &train_tf {
            Transform::RandomResizedCropFlip { .. } => {
                let set =
                    mlae_data::AugmentedSet::new(&train_list, &train_tf, num_classes, cache.as_deref())?;
                let labels = Tensor::from_slice(set.labels()).to_device(device);
                let set = std::sync::Arc::new(set);
                let prefetch = super::prefetch::Prefetcher::new(std::sync::Arc::clone(&set), cfg.train.seed);
                TrainData::Augmented { set, labels, size: size as usize, prefetch: prefetch.into() }
            }
            _ => {
                let set = mlae_data::load_images(
                    &train_list,
                    &train_tf,
                    num_classes,
                    cache.as_deref(),
                    cfg.train.seed,
                )?;
                let images = Tensor::from_data_size(
                    set.pixels(),
                    &[set.len as i64, set.height as i64, set.width as i64, 3],
                    Kind::Uint8,
                )
                .to_device(device);
                let labels = Tensor::from_slice(&set.labels).to_device(device);
                TrainData::Resident { images, labels, len: set.len }
            }
        };
        let mut eval_splits = vec![cfg.test_split()];
        if cfg.data.protocol == Protocol::Val {
            eval_splits.insert(0, cfg.val_split());
        }
        let mut evals = Vec::new();
        for split in eval_splits {
            let mut eval = EvalSplit::new(load_eval_split(&cfg, &task, &split)?);
            // On a GPU the split stays there when it fits (with room to spare for training),
            // so each epoch's evaluation uploads nothing.
            if let Device::Cuda(i) = device
                && crate::memcheck::gpu_free_bytes(i).is_some_and(|free| eval.bytes() * 4 < free)
            {
                eval.keep_on(device);
            }
            evals.push((split, eval));
        }

        let evaluator = Evaluator::new(&cfg, device);

        let n = train.len();
        if n == 0 {
            return Err(TrainError::Invalid(format!("the training split {} is empty", cfg.train_split())));
        }
        let steps_per_epoch = n.div_ceil(cfg.train.batch_size) as u64;
        let total_steps = steps_per_epoch * cfg.train.epochs;
        let schedule = LrSchedule {
            kind: cfg.train.schedule,
            peak: cfg.train.lr,
            min_lr: cfg.train.min_lr(),
            warmup_steps: (cfg.train.warmup_epochs * steps_per_epoch as f64).round() as u64,
            warmup_start: cfg.train.warmup_lr(),
            total_steps,
        };

        let optim = param_groups(&model, cfg.train.weight_decay);
        let step = TrainStep {
            seed: cfg.train.seed,
            label_smoothing: cfg.train.label_smoothing,
            grad_clip: cfg.train.grad_clip,
        };

        let info = mlae_vit::runtime::runtime_info();
        let device_label = info.device_label(device);
        let count = model.param_count();
        tracing::info!(
            "{} on {}: {} trainable parameters (adapter {}, head {}), {} training images, {} steps/epoch",
            cfg.data.task,
            device_label,
            count.trainable,
            count.adapter,
            count.head,
            n,
            steps_per_epoch
        );
        let (run, config_hash) = open_run(&cfg)?;
        let classes = crate::setup::write_run_data(&task, run.layout())?;
        let state = LoopState { config_hash, ..LoopState::default() };
        Ok(Self {
            cfg,
            run,
            device,
            model,
            optim,
            step,
            schedule,
            train,
            evals,
            evaluator,
            total_steps,
            state,
            mem: GpuMemProbe::new(),
            device_label,
            last_saved_step: std::cell::Cell::new(None),
            check_training: false,
            tb: None,
            classes,
            test_confusion: None,
        })
    }

    /// Loads parameters, optimizer state and loop state from a checkpoint of this run.
    pub(super) fn restore(&mut self, path: &Path) -> Result<()> {
        let state =
            checkpointing::restore(path, &self.model, &mut self.optim, self.device, &self.state.config_hash)?;
        let epoch = state.epoch;
        if path == self.run.last_checkpoint() {
            self.last_saved_step.set(Some(state.step));
        }
        self.state = state;
        self.run.retain_metrics(|v| v["epoch"].as_u64().is_some_and(|e| e <= epoch))?;
        Ok(())
    }

    /// Writes the trainable parameters, the optimizer state and the loop state to `path`.
    pub(super) fn save_checkpoint(&self, path: &Path) -> Result<()> {
        checkpointing::save(path, &self.model, &self.optim, &self.state, &self.cfg.adapter)?;
        if path == self.run.last_checkpoint() {
            self.last_saved_step.set(Some(self.state.step));
        }
        Ok(())
    }

    /// Which checkpoint on disk is the last finite one, for the error of a run that stops on
    /// a NaN or infinity (training checks every step, so `last` never holds one).
    pub(super) fn last_good_note(&self) -> String {
        let last = self.run.last_checkpoint();
        match self.last_saved_step.get() {
            Some(step) if last.is_file() => format!(
                "the last finite checkpoint is {} (step {step}); nothing was written after it",
                last.display()
            ),
            _ if last.is_file() => format!("the last finite checkpoint is {}", last.display()),
            _ => "no checkpoint had been written yet, so there is nothing to resume: fix the config and \
                  start again with --force"
                .into(),
        }
    }
}
