//! The training loop: epochs of seeded batches, one optimizer step each, an evaluation and
//! checkpoints at the end of every epoch, and a clean stop on an interrupt.

use super::session::{Session, TrainData};
use super::stage::{Stages, group_lrs, log_stage_plan};
use super::{RunOptions, Summary};
use crate::config::Protocol;
use crate::error::{Result, TrainError};
use crate::metrics::{EpochMetrics, peak_rss_mb};
use crate::progress::Progress;
use crate::rundir::{RunState, Status};
use crate::step::mix;
use mlae_vit::{ForwardCtx, ParamRole};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tch::{Kind, Tensor};

impl Session {
    /// The preprocessed images and the labels of batch `b` of the epoch, whose indices are
    /// `idx` on the host and `order` (the epoch's whole order, uploaded once) on the device.
    /// An augmented batch comes from the prefetcher, which then starts on `next`.
    fn train_batch(
        &self,
        order: &Tensor,
        b: usize,
        idx: &[i64],
        next: Option<&[i64]>,
        epoch: u64,
    ) -> (Tensor, Tensor) {
        let index = order.narrow(0, (b * self.cfg.train.batch_size) as i64, idx.len() as i64);
        match &self.train {
            TrainData::Resident { images, labels, .. } => (
                self.evaluator.preprocess().apply(&images.index_select(0, &index)),
                labels.index_select(0, &index),
            ),
            TrainData::Augmented { labels, size, prefetch, .. } => {
                let as_usize = |v: &[i64]| v.iter().map(|&i| i as usize).collect::<Vec<_>>();
                let mut prefetch = prefetch.borrow_mut();
                let buf = prefetch.take(epoch, &as_usize(idx));
                if let Some(next) = next {
                    prefetch.request(epoch, &as_usize(next));
                }
                let x = Tensor::from_data_size(
                    &buf,
                    &[idx.len() as i64, *size as i64, *size as i64, 3],
                    Kind::Uint8,
                )
                .to_device(self.device);
                (self.evaluator.preprocess().apply(&x), labels.index_select(0, &index))
            }
        }
    }

    fn interrupted(&self, opts: &RunOptions) -> bool {
        opts.interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
            || opts.interrupt_at_step.is_some_and(|s| self.state.step >= s)
    }

    /// Trains from the current state to the end (or `max_steps`, or an interrupt).
    pub(super) fn run(&mut self, opts: &RunOptions) -> Result<Summary> {
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
        log_stage_plan(self.model.plan().schedule(), self.total_steps);
        self.tb = Some(super::tensorboard::TbLog::open(&self.run.tensorboard_dir()));
        self.check_training = self.state.step == 0;
        // The method's stage in force; the first step of this process applies its stage.
        let mut stages = Stages::default();
        if self.pause_due(opts) {
            // resumed at (or past) the requested pause: score and stop without training
            return self.pause(&progress, wall_before);
        }

        while self.state.epoch < t.epochs && self.state.step < max_steps {
            let epoch = self.state.epoch;
            let epoch_start = Instant::now();
            let order = permutation(n, mix(t.seed, 0x5eed_0000 + epoch));
            // The epoch's order goes to the device once; each step takes a slice of it.
            let order_t = Tensor::from_slice(&order).to_device(self.device);
            let batches: Vec<&[i64]> = order.chunks(t.batch_size).collect();
            for (b, idx) in batches.iter().enumerate().skip(self.state.batch_in_epoch) {
                if self.state.step >= max_steps {
                    break;
                }
                let step = self.state.step;
                stages.sync(&self.model, &mut self.optim, step, self.total_steps);
                let step_start = Instant::now();
                let (x, y) = self.train_batch(&order_t, b, idx, batches.get(b + 1).copied(), epoch);
                let lrs =
                    group_lrs(self.model.plan().schedule(), &self.optim.group_roles, &self.schedule, step);
                let ctx = ForwardCtx::train(step, self.total_steps);
                let outcome = self.step.run(&self.model, &mut self.optim.opt, (&x, &y), ctx, &lrs);
                let (loss_value, correct) = match outcome {
                    Ok(o) => (o.loss, o.correct),
                    Err(e) => return self.fail_non_finite(&progress, step, epoch, e.what),
                };
                let secs = step_start.elapsed().as_secs_f64();
                let lr = self.schedule.lr_at(step);
                if let Some(tb) = &mut self.tb {
                    tb.step(step + 1, loss_value, lr);
                }
                let st = &mut self.state;
                st.step += 1;
                st.batch_in_epoch = b + 1;
                st.epoch_loss_sum += loss_value * idx.len() as f64;
                st.epoch_correct += correct;
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
                // max_steps reached mid-epoch: the run ends here, evaluated and checkpointed
                self.finish_partial_epoch(
                    epoch_start,
                    &progress,
                    wall_before + wall_start.elapsed().as_secs_f64(),
                )?;
                break;
            }
            self.finish_epoch(epoch_start, &progress, wall_before + wall_start.elapsed().as_secs_f64())?;
            // A pause due here comes first: it is a clean stop too (checkpoint and status), and
            // an interrupt that lands at the rung would otherwise leave the run unscored there.
            if self.pause_due(opts) {
                return self.pause(&progress, wall_before + wall_start.elapsed().as_secs_f64());
            }
            if self.interrupted(opts) {
                return self.stop_interrupted(&progress, wall_before + wall_start.elapsed().as_secs_f64());
            }
        }
        progress.finish();
        self.state.wall_seconds = wall_before + wall_start.elapsed().as_secs_f64();
        self.finalize()
    }

    /// Writes `last` and the interrupted status; the run resumes from there.
    fn stop_interrupted(&mut self, progress: &Progress, wall: f64) -> Result<Summary> {
        progress.finish();
        self.state.wall_seconds = wall;
        self.save_checkpoint(&self.run.last_checkpoint())?;
        let (step, epoch) = (self.state.step, self.state.epoch);
        self.run.write_status(&Status { state: RunState::Interrupted, step, epoch, message: None })?;
        Err(TrainError::Interrupted { step, checkpoint: self.run.last_checkpoint() })
    }

    /// Whether `stop_after_epoch` asks for a pause now: at an epoch boundary, at or past the
    /// requested epoch, before the last epoch (a run at its end finishes instead).
    fn pause_due(&self, opts: &RunOptions) -> bool {
        opts.stop_after_epoch.is_some_and(|k| {
            self.state.epoch >= k
                && self.state.epoch < self.cfg.train.epochs
                && self.state.batch_in_epoch == 0
        })
    }

    /// Scores the validation split into `rungs.jsonl` (not into `metrics.jsonl`: the run's own
    /// epoch selection and results stay those of an unpaused run), writes `last` and the
    /// paused status. Evaluation draws no random numbers, so the resumed run is unchanged.
    fn pause(&mut self, progress: &Progress, wall: f64) -> Result<Summary> {
        progress.finish();
        self.state.wall_seconds = wall;
        let (step, epoch) = (self.state.step, self.state.epoch);
        let split = self.cfg.val_split();
        let mut score = None;
        if let Some((_, set)) = self.evals.iter().find(|(name, _)| *name == split) {
            let r = self.evaluator.evaluate_split(&self.model, set, None).result;
            self.run.append_rung(&mlae_formats::RungScore {
                epoch,
                step,
                split: split.clone(),
                acc: r.acc,
                loss: r.loss,
            })?;
            score = Some((split, r.acc));
        }
        self.save_checkpoint(&self.run.last_checkpoint())?;
        self.run.write_status(&Status { state: RunState::Paused, step, epoch, message: None })?;
        Err(TrainError::Paused {
            epoch,
            epochs: self.cfg.train.epochs,
            score,
            checkpoint: self.run.last_checkpoint(),
        })
    }

    /// Marks the run failed on a NaN or infinity, naming what became non-finite and the last
    /// finite checkpoint on disk.
    fn fail_non_finite(&self, progress: &Progress, step: u64, epoch: u64, what: String) -> Result<Summary> {
        progress.finish();
        // the step and epoch as the metrics count them (1-based); the status keeps the steps done
        let err = TrainError::NonFinite {
            step: step + 1,
            epoch: epoch + 1,
            what,
            last_good: self.last_good_note(),
        };
        self.fail(step, epoch, err)
    }

    /// Marks the run failed at `step` with `err`'s message in its status, and returns `err`.
    fn fail<T>(&self, step: u64, epoch: u64, err: TrainError) -> Result<T> {
        let message = Some(err.to_string());
        self.run.write_status(&Status { state: RunState::Failed, step, epoch, message })?;
        Err(err)
    }

    /// After the first epoch of a run (or its first `max_steps`): fails when no adapter tensor
    /// has had a non-zero gradient, i.e. the adapter is dead (e.g. a coefficient so small that
    /// every gradient underflows) and the run would otherwise finish as a success at the
    /// head's accuracy. Weight decay alone moving A does not count as training.
    fn check_adapter_trained(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.check_training) || self.state.step < 2 {
            return Ok(());
        }
        let mut adapter: Vec<&String> = self
            .optim
            .roles
            .iter()
            .filter(|(_, role)| !matches!(role, ParamRole::Head | ParamRole::Backbone))
            .map(|(name, _)| name)
            .collect();
        adapter.sort();
        if adapter.is_empty() || adapter.iter().any(|n| self.optim.opt.gradient_seen(n) != Some(false)) {
            return Ok(());
        }
        let step = self.state.step;
        let message = format!(
            "no adapter tensor had a non-zero gradient in the first {step} steps ({} and the other {} \
             tensors): the adapter is not training; check the adapter's settings (a coefficient or \
             scale so small or so large that its gradients vanish) and train.lr",
            adapter[0],
            adapter.len() - 1
        );
        self.fail(step, self.state.epoch, TrainError::NotTraining(message))
    }

    /// Evaluates every evaluation split, keeping the test split's confusion matrix (for the
    /// per-class results the end of the run writes) with `epoch`, the epoch it belongs to.
    fn evaluate_all(&mut self, epoch: u64) -> BTreeMap<String, mlae_formats::EvalResult> {
        let test = self.cfg.test_split();
        let mut eval = BTreeMap::new();
        for (split, set) in &self.evals {
            let out = self.evaluator.evaluate_split(&self.model, set, None);
            if *split == test {
                self.test_confusion = Some((epoch, out.confusion));
            }
            eval.insert(split.clone(), out.result);
        }
        eval
    }

    /// The metrics line of the epoch that ends now (completed or cut short by `max_steps`).
    fn epoch_metrics(
        &mut self,
        epoch: u64,
        eval: BTreeMap<String, mlae_formats::EvalResult>,
        epoch_start: Instant,
    ) -> EpochMetrics {
        let peak = if self.device.is_cuda() { self.mem.peak_mb() } else { peak_rss_mb() };
        self.state.peak_mem_mb = self.state.peak_mem_mb.max(peak);
        let st = &self.state;
        EpochMetrics {
            epoch,
            step: st.step,
            lr: self.schedule.lr_at(st.step.saturating_sub(1)),
            train_loss: st.epoch_loss_sum / st.epoch_seen.max(1) as f64,
            train_acc: st.epoch_correct as f64 / st.epoch_seen.max(1) as f64,
            eval,
            images_per_s: st.epoch_seen as f64 / st.epoch_train_seconds.max(1e-9),
            seconds: epoch_start.elapsed().as_secs_f64(),
            peak_mem_mb: st.peak_mem_mb,
        }
    }

    /// The end of a run stopped by `train.max_steps` inside an epoch: evaluates every split,
    /// logs the partial epoch (numbered as the epoch it belongs to) and writes `last`. The
    /// loop state keeps its place in the epoch, so a resume with a larger `max_steps`
    /// continues it.
    fn finish_partial_epoch(&mut self, epoch_start: Instant, progress: &Progress, wall: f64) -> Result<()> {
        self.check_adapter_trained()?;
        let eval = self.evaluate_all(self.state.epoch + 1);
        let metrics = self.epoch_metrics(self.state.epoch + 1, eval, epoch_start);
        self.run.append_metrics(&metrics)?;
        if let Some(tb) = &mut self.tb {
            tb.epoch(&metrics);
        }
        progress.epoch(&metrics);
        self.state.wall_seconds = wall;
        self.save_checkpoint(&self.run.last_checkpoint())?;
        self.write_plot();
        Ok(())
    }

    /// Evaluates, logs the epoch's metrics, and writes the checkpoints that are due.
    fn finish_epoch(&mut self, epoch_start: Instant, progress: &Progress, wall: f64) -> Result<()> {
        self.check_adapter_trained()?;
        let t = self.cfg.train.clone();
        self.state.epoch += 1;
        let epoch = self.state.epoch;
        let last = epoch == t.epochs;
        let mut eval = BTreeMap::new();
        if epoch.is_multiple_of(t.eval_every) || last {
            eval = self.evaluate_all(epoch);
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
        let metrics = self.epoch_metrics(epoch, eval, epoch_start);
        self.run.append_metrics(&metrics)?;
        if let Some(tb) = &mut self.tb {
            tb.epoch(&metrics);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
