//! The training loop: config in, finished run directory out.
//!
//! Everything random is a pure function of (seed, step) or (seed, epoch): expert masks
//! (mlae-core's sampler), dropout and drop-path (libtorch's generator is re-seeded before
//! every step), the data order and augmentation. A run resumed from a checkpoint therefore
//! replays exactly what the uninterrupted run would have done.

use crate::checkpoint;
use crate::config::{ExperimentConfig, Precision, Protocol, VitConfigExt, parse_device};
use crate::error::{Result, TrainError};
use crate::metrics::{EpochMetrics, EvalResult, GpuMemProbe, peak_rss_mb};
use crate::optim::{AdamW, AdamWConfig, ParamGroup};
use crate::progress::Progress;
use crate::rundir::{RunDir, RunState, Status, read_jsonl};
use crate::schedule::LrSchedule;
use mlae_core::{AdapterKind, DmloraSpec};
use mlae_data::{Benchmark, ImageSet, Transform};
use mlae_vit::{AdaptedVit, ForwardCtx, ParamRole};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// How a run is started, beyond its config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overwrite an existing run directory.
    pub force: bool,
    /// Show a progress bar when stderr is a terminal.
    pub progress: bool,
    /// Set by a Ctrl-C handler: the loop writes a checkpoint and stops cleanly.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Behave as if interrupted once this many optimizer steps are done (counted from the
    /// start of the run, not of this process): a deterministic Ctrl-C for testing resume.
    pub interrupt_at_step: Option<u64>,
}

/// `summary.json` and the checkpoint names are run-directory formats (mlae-formats).
pub use mlae_formats::{Summary, WhichCheckpoint};

/// Loop state saved in every checkpoint's metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct LoopState {
    step: u64,
    /// Completed epochs.
    epoch: u64,
    /// Batches done in the current (incomplete) epoch, with their running sums.
    batch_in_epoch: usize,
    epoch_loss_sum: f64,
    epoch_correct: u64,
    epoch_seen: u64,
    epoch_train_seconds: f64,
    /// Best selection metric so far (test for `paper`, val for `val`) and its epoch.
    best_metric: Option<f64>,
    best_epoch: Option<u64>,
    train_seconds: f64,
    train_images: u64,
    wall_seconds: f64,
    peak_mem_mb: f64,
    config_hash: String,
}

/// Starts a new run from a config.
pub fn finetune(cfg: ExperimentConfig, opts: &RunOptions) -> Result<Summary> {
    // Refuse an occupied directory before any work, but create it only once the model and
    // data are known to fit, so a config that cannot run leaves nothing behind.
    RunDir::check_new(&cfg.run_dir(), opts.force)?;
    let mut session = Session::build(cfg, |cfg| {
        let run = RunDir::create(&cfg.run_dir(), opts.force)?;
        let hash = run.write_config(&cfg.to_toml())?;
        Ok((run, hash))
    })?;
    session.run(opts)
}

/// Continues a run from `checkpoints/last.safetensors` in its directory.
pub fn resume(run_dir: &Path, opts: &RunOptions) -> Result<Summary> {
    let run = RunDir::open(run_dir)?;
    if let Some(s) = crate::rundir::read_status(run_dir)
        && s.state == RunState::Finished
        && run.summary_path().is_file()
    {
        tracing::info!("{} already finished; nothing to resume", run_dir.display());
        let text =
            std::fs::read_to_string(run.summary_path()).map_err(crate::error::io_err(run.summary_path()))?;
        return serde_json::from_str(&text).map_err(|e| TrainError::RunDir {
            path: run.summary_path(),
            message: format!("unreadable summary: {e}"),
        });
    }
    let cfg = load_run_config(run_dir)?;
    let text = std::fs::read_to_string(run.config_path()).map_err(crate::error::io_err(run.config_path()))?;
    let hash = crate::rundir::config_hash(&text);
    let mut session = Session::build(cfg, |_| Ok((run, hash)))?;
    let last = session.run.last_checkpoint();
    if last.is_file() {
        session.restore(&last)?;
        tracing::info!(
            "resuming {} at step {} (epoch {})",
            run_dir.display(),
            session.state.step,
            session.state.epoch
        );
    } else {
        tracing::warn!("{} has no checkpoint yet; starting from step 0", run_dir.display());
    }
    session.run(opts)
}

/// The resolved config stored in a run directory.
pub fn load_run_config(run_dir: &Path) -> Result<ExperimentConfig> {
    Ok(mlae_formats::RunLayout::new(run_dir).read_config()?)
}

/// Training images, resident on the device (deterministic transforms) or produced per batch
/// on the CPU (augmentation).
enum TrainData {
    Resident { images: Tensor, labels: Tensor, len: usize },
    Augmented { set: mlae_data::AugmentedSet, labels: Tensor, size: usize },
}

impl TrainData {
    fn len(&self) -> usize {
        match self {
            TrainData::Resident { len, .. } => *len,
            TrainData::Augmented { set, .. } => set.len(),
        }
    }
}

struct Session {
    cfg: ExperimentConfig,
    run: RunDir,
    device: Device,
    model: AdaptedVit,
    opt: AdamW,
    /// Role of each optimizer parameter, by name (DMLoRA's stage 2 freezes by role).
    roles: HashMap<String, ParamRole>,
    schedule: LrSchedule,
    train: TrainData,
    evals: Vec<(String, ImageSet)>,
    mean_std: (Tensor, Tensor),
    total_steps: u64,
    state: LoopState,
    mem: GpuMemProbe,
    device_label: String,
}

impl Session {
    /// Loads the data and builds the model; `open_run` is called only once both fit, to get
    /// the run directory and its config hash.
    fn build(
        cfg: ExperimentConfig,
        open_run: impl FnOnce(&ExperimentConfig) -> Result<(RunDir, String)>,
    ) -> Result<Self> {
        let device = parse_device(&cfg.train.device).map_err(TrainError::Invalid)?;
        if let Some(n) = cfg.train.threads {
            tch::set_num_threads(n as i32);
        }
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let task = mlae_data::open_task(&cfg.data_source())?;
        let num_classes = task.num_classes;
        if let Some(n) = cfg.model.num_classes
            && n as usize != num_classes
        {
            return Err(TrainError::Invalid(format!(
                "model.num_classes is {n} but task {} has {num_classes} classes",
                cfg.data.task
            )));
        }
        let size = cfg.model.image_size as u32;
        let cache = Some(cfg.decoded_cache_dir());
        let (train_tf, eval_tf) = transforms(cfg.data.benchmark, size);

        // The model first: a config that does not fit (image size vs patch, checkpoint
        // shapes) fails before any image is decoded.
        let vit_cfg = cfg.vit_config(num_classes as i64);
        let mut model = AdaptedVit::new(&vit_cfg, &cfg.adapter, cfg.train.seed, device)?;
        if let Some(ck) = &cfg.model.checkpoint {
            let report = model.load_backbone(ck, cfg.model.format)?;
            tracing::info!("loaded backbone {}: {report}", ck.display());
        } else {
            tracing::warn!("model.checkpoint is not set: the backbone is randomly initialised");
        }
        if cfg.train.precision == Precision::Bf16 {
            model.set_compute_kind(Kind::BFloat16);
        }

        let train_list = task.split(&cfg.train_split())?;
        let train = match &train_tf {
            Transform::RandomResizedCropFlip { .. } => {
                let set =
                    mlae_data::AugmentedSet::new(&train_list, &train_tf, num_classes, cache.as_deref())?;
                let labels = Tensor::from_slice(set.labels()).to_device(device);
                TrainData::Augmented { set, labels, size: size as usize }
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
            let list = task.split(&split)?;
            let set = mlae_data::load_images(&list, &eval_tf, num_classes, cache.as_deref(), cfg.train.seed)?;
            evals.push((split, set));
        }

        let (mean, std) = cfg.data.normalization.mean_std();
        let mean_std = (
            Tensor::from_slice(&mean).view([1, 3, 1, 1]).to_device(device),
            Tensor::from_slice(&std).view([1, 3, 1, 1]).to_device(device),
        );

        let n = train.len();
        if n == 0 {
            return Err(TrainError::Invalid(format!("the training split {} is empty", cfg.train_split())));
        }
        let steps_per_epoch = n.div_ceil(cfg.train.batch_size) as u64;
        let total_steps = steps_per_epoch * cfg.train.epochs;
        let schedule = LrSchedule {
            kind: cfg.train.schedule,
            peak: cfg.train.lr,
            min_lr: cfg.train.min_lr,
            warmup_steps: (cfg.train.warmup_epochs * steps_per_epoch as f64).round() as u64,
            warmup_start: cfg.train.warmup_lr,
            total_steps,
        };

        let groups = vec![
            ParamGroup { name: "main".into(), weight_decay: cfg.train.weight_decay },
            ParamGroup { name: "scales".into(), weight_decay: cfg.train.weight_decay },
        ];
        let mut roles = HashMap::new();
        let params: Vec<(String, Tensor, usize)> = model
            .trainable()
            .into_iter()
            .map(|(name, t, role)| {
                let group = usize::from(role == ParamRole::BranchScale);
                roles.insert(name.clone(), role);
                (name, t, group)
            })
            .collect();
        let opt = AdamW::new(AdamWConfig::default(), groups, params);

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
        let state = LoopState { config_hash, ..LoopState::default() };
        Ok(Self {
            cfg,
            run,
            device,
            model,
            opt,
            roles,
            schedule,
            train,
            evals,
            mean_std,
            total_steps,
            state,
            mem: GpuMemProbe::new(),
            device_label,
        })
    }

    /// Loads parameters, optimizer state and loop state from a checkpoint.
    fn restore(&mut self, path: &Path) -> Result<()> {
        let loaded = checkpoint::load(path)?;
        let err = |message: String| TrainError::Checkpoint { path: path.to_path_buf(), message };
        let state: LoopState =
            serde_json::from_str(loaded.metadata.get("state").ok_or_else(|| err("no loop state".into()))?)
                .map_err(|e| err(format!("loop state: {e}")))?;
        if state.config_hash != self.state.config_hash {
            return Err(err(format!(
                "it was written for config {} but config.toml now hashes to {}: the config changed",
                short(&state.config_hash),
                short(&self.state.config_hash)
            )));
        }
        copy_params(&self.model, &loaded, path)?;
        let optim: HashMap<String, Tensor> = loaded
            .tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("optim.").map(|k| (k.to_string(), v.to_device(self.device))))
            .collect();
        let steps: HashMap<String, u64> = serde_json::from_str(
            loaded.metadata.get("optim_steps").ok_or_else(|| err("no optimizer step counts".into()))?,
        )
        .map_err(|e| err(format!("optimizer step counts: {e}")))?;
        self.opt.load_state(&optim, &steps).map_err(err)?;
        let epoch = state.epoch;
        self.state = state;
        self.run.retain_metrics(|v| v["epoch"].as_u64().is_some_and(|e| e <= epoch))?;
        Ok(())
    }

    fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> =
            self.model.trainable().into_iter().map(|(n, t, _)| (format!("model.{n}"), t)).collect();
        let (optim, steps) = self.opt.state();
        tensors.extend(optim.into_iter().map(|(n, t)| (format!("optim.{n}"), t)));
        let mut meta = HashMap::new();
        meta.insert("state".into(), serde_json::to_string(&self.state).expect("state serialises"));
        meta.insert("optim_steps".into(), serde_json::to_string(&steps).expect("steps serialise"));
        meta.insert("adapter".into(), serde_json::to_string(&self.cfg.adapter).expect("spec serialises"));
        checkpoint::save(path, &tensors, &meta)
    }

    /// Normalised float images (N,3,H,W) from uint8 HWC on the device.
    fn preprocess(&self, u8_nhwc: &Tensor) -> Tensor {
        let x = u8_nhwc.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0;
        let x = (x - &self.mean_std.0) / &self.mean_std.1;
        match self.cfg.train.precision {
            Precision::Fp32 => x,
            Precision::Bf16 => x.to_kind(Kind::BFloat16),
        }
    }

    fn train_batch(&self, idx: &[i64], epoch: u64) -> (Tensor, Tensor) {
        let index = Tensor::from_slice(idx).to_device(self.device);
        match &self.train {
            TrainData::Resident { images, labels, .. } => {
                (self.preprocess(&images.index_select(0, &index)), labels.index_select(0, &index))
            }
            TrainData::Augmented { set, labels, size } => {
                let idx_usize: Vec<usize> = idx.iter().map(|&i| i as usize).collect();
                let mut buf = vec![0u8; idx.len() * size * size * 3];
                set.fill_batch(&idx_usize, epoch, self.cfg.train.seed, &mut buf);
                let x = Tensor::from_data_size(
                    &buf,
                    &[idx.len() as i64, *size as i64, *size as i64, 3],
                    Kind::Uint8,
                )
                .to_device(self.device);
                (self.preprocess(&x), labels.index_select(0, &index))
            }
        }
    }

    /// Accuracy and mean loss on an image set; optionally the logits (row-major [N, C]).
    fn evaluate(&self, set: &ImageSet, mut dump: Option<&mut Vec<f32>>) -> EvalResult {
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

    /// DMLoRA's settings when this run trains a dmlora adapter.
    fn dmlora(&self) -> Option<&DmloraSpec> {
        (self.cfg.adapter.kind == AdapterKind::Dmlora).then_some(&self.cfg.adapter.dmlora)
    }

    fn is_stage2(&self, step: u64) -> bool {
        self.dmlora().is_some_and(|d| mlae_core::dmlora::in_stage2(d, step, self.total_steps))
    }

    /// Puts the model and optimizer in the stage of `step`. Both derive from the step alone,
    /// so a resumed run re-applies them here (the loop calls this at its first step) and
    /// crosses the switch at the same step as an uninterrupted one.
    ///
    /// Stage 2 freezes the branches twice over: `requires_grad` off, so autograd computes no
    /// gradient for them (the scales' and earlier layers' gradients still flow through), and
    /// the optimizer's frozen flag, so AdamW neither decays them nor moves their moments
    /// (tch cannot unset a gradient left over from stage 1; see [`AdamW::set_frozen`]).
    fn apply_stage(&mut self, step: u64) {
        let stage2 = self.is_stage2(step);
        let roles = &self.roles;
        let frozen = self.opt.set_frozen(stage2, |name| roles.get(name) == Some(&ParamRole::Adapter));
        for (_, t, role) in self.model.trainable() {
            if role == ParamRole::Adapter {
                let _ = t.set_requires_grad(!stage2);
            }
        }
        if stage2 {
            let start = self.dmlora().and_then(|d| mlae_core::dmlora::stage2_start_step(d, self.total_steps));
            let when = if start == Some(step) {
                format!("begins at step {step}")
            } else {
                format!("since step {} (resumed at step {step})", start.unwrap_or(step))
            };
            tracing::info!(
                "DMLoRA stage 2 {when} of {}: {frozen} branch tensors frozen, all branches on; the \
                 per-layer scales and the head train on",
                self.total_steps
            );
        }
    }

    fn interrupted(&self, opts: &RunOptions) -> bool {
        opts.interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
            || opts.interrupt_at_step.is_some_and(|s| self.state.step >= s)
    }

    fn run(&mut self, opts: &RunOptions) -> Result<Summary> {
        let cfg = self.cfg.clone();
        let t = &cfg.train;
        let wall_start = Instant::now();
        let wall_before = self.state.wall_seconds;
        let max_steps = t.max_steps.unwrap_or(u64::MAX).min(self.total_steps);
        let progress = Progress::new(max_steps, self.state.step, t.epochs, opts.progress);
        self.run.write_status(&Status {
            state: RunState::Running,
            step: self.state.step,
            epoch: self.state.epoch,
            message: None,
        })?;
        let n = self.train.len();
        if let Some(d) = self.dmlora() {
            let p = |step| mlae_core::branch_drop_prob(d, step, self.total_steps);
            match mlae_core::dmlora::stage2_start_step(d, self.total_steps) {
                Some(s) => tracing::info!(
                    "DMLoRA: {} branches per layer, drop probability {:.3} at step 0 -> {:.3} at step {}; \
                     stage 2 (branches frozen, scales and head train) from step {s} of {}",
                    d.branches,
                    p(0),
                    p(s - 1),
                    s - 1,
                    self.total_steps
                ),
                None => tracing::info!(
                    "DMLoRA: {} branches per layer, drop probability {:.3} at step 0 -> {:.3} at the end; \
                     no stage 2 in {} steps",
                    d.branches,
                    p(0),
                    p(self.total_steps.saturating_sub(1)),
                    self.total_steps
                ),
            }
        }
        // The stage in force; `None` makes the first step of this process apply its stage.
        let mut stage2 = None;

        while self.state.epoch < t.epochs && self.state.step < max_steps {
            let epoch = self.state.epoch;
            let epoch_start = Instant::now();
            let order = permutation(n, mix(t.seed, 0x5eed_0000 + epoch));
            let batches: Vec<&[i64]> = order.chunks(t.batch_size).collect();
            for (b, idx) in batches.iter().enumerate().skip(self.state.batch_in_epoch) {
                if self.state.step >= max_steps {
                    break;
                }
                let step = self.state.step;
                if stage2 != Some(self.is_stage2(step)) {
                    self.apply_stage(step);
                    stage2 = Some(self.is_stage2(step));
                }
                let step_start = Instant::now();
                tch::manual_seed(mix(t.seed, step) as i64 & i64::MAX);
                let (x, y) = self.train_batch(idx, epoch);
                let ctx = ForwardCtx { train: true, step, total_steps: self.total_steps };
                let logits = self.model.forward_t(&x, &ctx).to_kind(Kind::Float);
                let loss = logits.cross_entropy_loss::<Tensor>(
                    &y,
                    None,
                    tch::Reduction::Mean,
                    -100,
                    t.label_smoothing,
                );
                let loss_value = loss.double_value(&[]);
                if !loss_value.is_finite() {
                    let message = format!("non-finite loss {loss_value} at step {step}");
                    self.run.write_status(&Status {
                        state: RunState::Failed,
                        step,
                        epoch,
                        message: Some(message),
                    })?;
                    progress.finish();
                    return Err(TrainError::NonFinite {
                        step,
                        epoch,
                        value: loss_value,
                        checkpoint: self.run.last_checkpoint(),
                    });
                }
                self.opt.zero_grad();
                loss.backward();
                if let Some(c) = t.grad_clip {
                    self.opt.clip_grad_norm(c);
                }
                self.opt.step(&group_lrs(&self.schedule, self.dmlora(), step));
                let correct =
                    tch::no_grad(|| logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]));
                let secs = step_start.elapsed().as_secs_f64();
                let st = &mut self.state;
                st.step += 1;
                st.batch_in_epoch = b + 1;
                st.epoch_loss_sum += loss_value * idx.len() as f64;
                st.epoch_correct += correct as u64;
                st.epoch_seen += idx.len() as u64;
                st.epoch_train_seconds += secs;
                st.train_seconds += secs;
                st.train_images += idx.len() as u64;
                if self.device.is_cuda() {
                    self.mem.sample();
                }
                let ips = st.epoch_seen as f64 / st.epoch_train_seconds.max(1e-9);
                progress.step(
                    st.step,
                    epoch,
                    st.epoch_loss_sum / st.epoch_seen as f64,
                    st.epoch_correct as f64 / st.epoch_seen as f64,
                    ips,
                );
                if self.interrupted(opts) {
                    return self
                        .stop_interrupted(&progress, wall_before + wall_start.elapsed().as_secs_f64());
                }
            }
            if self.state.batch_in_epoch < batches.len() {
                break; // max_steps reached mid-epoch
            }
            self.finish_epoch(epoch_start, &progress, wall_before + wall_start.elapsed().as_secs_f64())?;
            if self.interrupted(opts) {
                return self.stop_interrupted(&progress, wall_before + wall_start.elapsed().as_secs_f64());
            }
        }
        progress.finish();
        self.state.wall_seconds = wall_before + wall_start.elapsed().as_secs_f64();
        self.finalize()
    }

    fn stop_interrupted(&mut self, progress: &Progress, wall: f64) -> Result<Summary> {
        progress.finish();
        self.state.wall_seconds = wall;
        self.save_checkpoint(&self.run.last_checkpoint())?;
        let (step, epoch) = (self.state.step, self.state.epoch);
        self.run.write_status(&Status { state: RunState::Interrupted, step, epoch, message: None })?;
        Err(TrainError::Interrupted { step, checkpoint: self.run.last_checkpoint() })
    }

    fn finish_epoch(&mut self, epoch_start: Instant, progress: &Progress, wall: f64) -> Result<()> {
        let t = self.cfg.train.clone();
        self.state.epoch += 1;
        let epoch = self.state.epoch;
        let last = epoch == t.epochs;
        let mut eval = BTreeMap::new();
        if epoch.is_multiple_of(t.eval_every) || last {
            for (split, set) in &self.evals {
                eval.insert(split.clone(), self.evaluate(set, None));
            }
        }
        let selection = match self.cfg.data.protocol {
            Protocol::Paper => self.cfg.test_split(),
            Protocol::Val => self.cfg.val_split(),
        };
        let mut improved = false;
        if let Some(r) = eval.get(&selection)
            && self.state.best_metric.is_none_or(|b| r.acc > b)
        {
            self.state.best_metric = Some(r.acc);
            self.state.best_epoch = Some(epoch);
            improved = true;
        }
        let peak = if self.device.is_cuda() { self.mem.peak_mb() } else { peak_rss_mb() };
        self.state.peak_mem_mb = self.state.peak_mem_mb.max(peak);
        let st = &self.state;
        let metrics = EpochMetrics {
            epoch,
            step: st.step,
            lr: self.schedule.lr_at(st.step.saturating_sub(1)),
            train_loss: st.epoch_loss_sum / st.epoch_seen.max(1) as f64,
            train_acc: st.epoch_correct as f64 / st.epoch_seen.max(1) as f64,
            eval,
            images_per_s: st.epoch_seen as f64 / st.epoch_train_seconds.max(1e-9),
            seconds: epoch_start.elapsed().as_secs_f64(),
            peak_mem_mb: st.peak_mem_mb,
        };
        self.run.append_metrics(&metrics)?;
        progress.epoch(&metrics);
        let st = &mut self.state;
        st.batch_in_epoch = 0;
        st.epoch_loss_sum = 0.0;
        st.epoch_correct = 0;
        st.epoch_seen = 0;
        st.epoch_train_seconds = 0.0;
        st.wall_seconds = wall;
        if improved {
            self.save_checkpoint(&self.run.best_checkpoint())?;
        }
        if epoch.is_multiple_of(t.checkpoint_every) || last {
            self.save_checkpoint(&self.run.last_checkpoint())?;
        }
        self.write_plot();
        self.run.write_status(&Status {
            state: RunState::Running,
            step: self.state.step,
            epoch,
            message: None,
        })?;
        Ok(())
    }

    fn write_plot(&self) {
        let rows: Vec<EpochMetrics> = read_jsonl(&self.run.metrics_path())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect();
        if let Err(e) = crate::plot::plot_curves(&rows, &self.run.plot_path()) {
            tracing::warn!("could not draw {}: {e}", self.run.plot_path().display());
        }
    }

    fn finalize(&mut self) -> Result<Summary> {
        let test_split = self.cfg.test_split();
        let test_set = &self.evals.iter().find(|(s, _)| *s == test_split).expect("test split loaded").1;
        // The last epoch's test accuracy, from metrics when that epoch evaluated it.
        let rows: Vec<EpochMetrics> = read_jsonl(&self.run.metrics_path())?
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect();
        let final_test = match rows.last().and_then(|m| m.eval.get(&test_split)) {
            Some(r) if rows.last().is_some_and(|m| m.epoch == self.state.epoch) => r.acc,
            _ => self.evaluate(test_set, None).acc,
        };
        let best_test = rows
            .iter()
            .filter_map(|m| m.eval.get(&test_split).map(|r| (r.acc, m.epoch)))
            .fold(None, |b: Option<(f64, u64)>, x| if b.is_none_or(|b| x.0 > b.0) { Some(x) } else { b });
        let mut notes = Vec::new();
        let (test_acc, best_val, selected) = match self.cfg.data.protocol {
            Protocol::Paper => {
                notes.push("protocol paper: trained on the train+val split; test_acc is the test accuracy after the last epoch".into());
                notes.push("best_test_acc is test-set selection (the best test accuracy seen during training), as the lineage's code reports; it is not an honest estimate".into());
                (final_test, None, None)
            }
            Protocol::Val => {
                let best = self.run.best_checkpoint();
                let selected_acc = if best.is_file() {
                    let current = self.model_snapshot();
                    self.load_params(&best)?;
                    let acc = self.evaluate(test_set, None).acc;
                    self.restore_params(current);
                    acc
                } else {
                    final_test
                };
                notes.push(format!(
                    "protocol val: trained on {}, epoch selected on {}, test_acc is the test accuracy of the selected epoch",
                    self.cfg.train_split(),
                    self.cfg.val_split()
                ));
                (selected_acc, self.state.best_metric, self.state.best_epoch)
            }
        };
        let count = self.model.param_count();
        let info = mlae_vit::runtime::runtime_info();
        let mut versions = BTreeMap::new();
        versions.insert("mlae".into(), env!("CARGO_PKG_VERSION").into());
        versions.insert("libtorch".into(), info.libtorch_version.clone().unwrap_or_else(|| "unknown".into()));
        let summary = Summary {
            task: self.cfg.data.task.clone(),
            benchmark: format!("{:?}", self.cfg.data.benchmark).to_lowercase(),
            method: serde_json::to_value(self.cfg.adapter.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            protocol: self.cfg.data.protocol,
            test_acc,
            test_acc_final: final_test,
            best_test_acc: best_test.map(|b| b.0),
            best_test_epoch: best_test.map(|b| b.1),
            best_val_acc: best_val,
            selected_epoch: selected,
            epochs: self.state.epoch,
            steps: self.state.step,
            trainable_params: count.trainable,
            adapter_params: count.adapter,
            head_params: count.head,
            total_params: count.total,
            wall_seconds: self.state.wall_seconds,
            train_images_per_s: self.state.train_images as f64 / self.state.train_seconds.max(1e-9),
            peak_mem_mb: self.state.peak_mem_mb,
            device: self.device_label.clone(),
            precision: self.cfg.train.precision,
            seed: self.cfg.train.seed,
            config_hash: self.state.config_hash.clone(),
            versions,
            notes,
            dmlora_stage2_step: self
                .dmlora()
                .and_then(|d| mlae_core::dmlora::stage2_start_step(d, self.total_steps))
                .filter(|&s| s < self.state.step),
        };
        self.run.write_json(&self.run.summary_path(), &summary)?;
        self.write_plot();
        self.run.write_status(&Status {
            state: RunState::Finished,
            step: self.state.step,
            epoch: self.state.epoch,
            message: None,
        })?;
        Ok(summary)
    }

    fn model_snapshot(&self) -> Vec<Tensor> {
        self.model.trainable().into_iter().map(|(_, t, _)| t.detach().copy()).collect()
    }

    fn restore_params(&self, snapshot: Vec<Tensor>) {
        tch::no_grad(|| {
            for ((_, mut t, _), s) in self.model.trainable().into_iter().zip(snapshot) {
                t.copy_(&s);
            }
        });
    }

    /// Copies the model parameters of a checkpoint into the model (not the optimizer).
    fn load_params(&self, path: &Path) -> Result<()> {
        copy_params(&self.model, &checkpoint::load(path)?, path)
    }
}

/// Copies a checkpoint's `model.*` tensors into the model's trainable parameters; a missing
/// parameter or a shape mismatch is an error naming both.
fn copy_params(model: &AdaptedVit, loaded: &checkpoint::Loaded, path: &Path) -> Result<()> {
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

/// Learning rates of the optimizer's groups at `step`: `[main, scales]`, where "main" holds
/// the head and the adapter factors (DMLoRA's branches) and "scales" DMLoRA's per-layer
/// scales.
///
/// Both follow `schedule` except in DMLoRA's stage 2, where the branches are frozen, the head
/// stays on the main schedule, and the scales get their own rate: `stage2_lr` at the first
/// step of stage 2, then decaying with the main schedule's shape,
/// `stage2_lr * lr(step) / lr(stage2 start)`. So `stage2_lr` is the rate the scales have when
/// stage 2 begins (not a peak to be rescaled by how far the cosine has already decayed), and
/// leaving it unset is the same as setting it to the main rate at that step.
fn group_lrs(schedule: &LrSchedule, dmlora: Option<&DmloraSpec>, step: u64) -> [f64; 2] {
    let lr = schedule.lr_at(step);
    let scales = match dmlora {
        Some(d) if mlae_core::in_stage2(d, step, schedule.total_steps) => {
            let start = mlae_core::dmlora::stage2_start_step(d, schedule.total_steps).unwrap_or(step);
            let at_start = schedule.lr_at(start);
            match d.stage2_lr {
                Some(s2) if at_start > 0.0 => s2 * lr / at_start,
                Some(s2) => s2,
                None => lr,
            }
        }
        _ => lr,
    };
    [lr, scales]
}

/// The transforms for a benchmark: (train, eval). FGVC trains on random resized crops with
/// flips and evaluates on a centre crop (VPT); everything else is VTAB's direct resize.
pub(crate) fn transforms(benchmark: Benchmark, size: u32) -> (Transform, Transform) {
    match benchmark {
        Benchmark::Fgvc => (Transform::fgvc_train(size), Transform::fgvc_eval(size)),
        _ => (Transform::vtab(size), Transform::vtab(size)),
    }
}

/// SplitMix64 of (seed, x): decorrelated seeds for epochs and steps.
fn mix(seed: u64, x: u64) -> u64 {
    let mut z = seed ^ x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded Fisher-Yates permutation of 0..n.
fn permutation(n: usize, seed: u64) -> Vec<i64> {
    let mut v: Vec<i64> = (0..n as i64).collect();
    let mut state = seed;
    for i in (1..n).rev() {
        state = mix(state, i as u64);
        let j = (state % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
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
    let path = mlae_formats::RunLayout::new(run_dir).checkpoint(which);
    copy_params(&model, &checkpoint::load(&path)?, &path)?;
    Ok((cfg, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage2_lr_is_the_scales_rate_when_stage_2_begins_then_decays_with_the_schedule() {
        let schedule = LrSchedule {
            kind: crate::schedule::ScheduleKind::Cosine,
            peak: 1e-3,
            min_lr: 1e-8,
            warmup_steps: 10,
            warmup_start: 1e-7,
            total_steps: 100,
        };
        let d = DmloraSpec { stage2_start: 0.8, stage2_lr: Some(0.05), ..Default::default() };
        let unset = DmloraSpec { stage2_lr: None, ..d.clone() };
        for step in 0..100 {
            let lr = schedule.lr_at(step);
            assert_eq!(group_lrs(&schedule, None, step), [lr, lr], "other kinds: one schedule");
            assert_eq!(group_lrs(&schedule, Some(&unset), step), [lr, lr], "stage2_lr unset: the main rate");
            let [main, scales] = group_lrs(&schedule, Some(&d), step);
            assert_eq!(main, lr, "the head and branches stay on the main schedule");
            if step < 80 {
                assert_eq!(scales, lr, "stage 1: the scales train with everything else");
            } else {
                // 0.05 at the switch, then the main schedule's decay
                let want = 0.05 * lr / schedule.lr_at(80);
                assert!((scales - want).abs() < 1e-15, "step {step}: {scales} vs {want}");
            }
        }
        assert!((group_lrs(&schedule, Some(&d), 80)[1] - 0.05).abs() < 1e-15);
        assert!(group_lrs(&schedule, Some(&d), 99)[1] < 0.05 * 0.01, "annealed by the end");
    }

    #[test]
    fn permutations_are_seeded_and_complete() {
        let a = permutation(100, 7);
        assert_eq!(a, permutation(100, 7));
        assert_ne!(a, permutation(100, 8));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<i64>>());
    }
}
