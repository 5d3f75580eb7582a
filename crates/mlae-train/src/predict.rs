//! `mlae-cli predict`: a trained run classifies image files. The run's own evaluation
//! preprocessing (its transform, normalisation and precision), batched, with class names from
//! the run directory, so it works where the training data is not. A file that cannot be read
//! is reported by name and the others are still classified.

use crate::config::ExperimentConfig;
use crate::error::{Result, TrainError};
use crate::evaluator::{ModelSource, OpenRun, Preprocess, load_run_config, load_weights};
use crate::setup::{setup_device, transforms};
use indicatif::ProgressBar;
use mlae_data::Transform;
use mlae_vit::{AdaptedVit, ForwardCtx};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The classes of one image, most probable first: (label, probability).
pub type Ranked = Vec<(usize, f32)>;

/// What became of one input file.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub path: PathBuf,
    /// The top-k classes, or why the file could not be classified.
    pub result: std::result::Result<Ranked, String>,
}

/// A run's model ready to classify files.
pub struct Predictor {
    model: AdaptedVit,
    preprocess: Preprocess,
    transform: Transform,
    device: Device,
    batch_size: usize,
    classes: Vec<String>,
}

impl Predictor {
    /// Opens `run_dir` with the weights of `source`. `device` overrides the run's
    /// `train.device` (same syntax: `cpu`, `cuda`, `cuda:N`, `auto`).
    pub fn open(run_dir: &Path, source: &ModelSource, device: Option<&str>) -> Result<Self> {
        let mut cfg = load_run_config(run_dir)?;
        if let Some(d) = device {
            cfg.train.device = d.to_string();
        }
        let classes = match mlae_formats::RunLayout::new(run_dir).read_classes()? {
            Some(names) => names,
            // A run from before `data/classes.txt`: its task says how many classes there are.
            None => OpenRun::open(run_dir)?.class_names()?,
        };
        let device = setup_device(&cfg)?;
        let mut model = load_weights(&cfg, run_dir, classes.len(), source, device, cfg.train.precision)?;
        model.set_class_names(classes.clone())?;
        if let ModelSource::Merged(path) = source
            && let Some(file_names) = mlae_vit::export::read_labels(path)?
            && file_names != classes
        {
            tracing::warn!(
                "{} names other classes than the run ({} against {}); printing the run's",
                path.display(),
                file_names.len(),
                classes.len()
            );
        }
        Ok(Self::new(&cfg, model, device, classes))
    }

    fn new(cfg: &ExperimentConfig, model: AdaptedVit, device: Device, classes: Vec<String>) -> Self {
        let (_, transform) = transforms(cfg.data.benchmark, cfg.model.image_size as u32);
        Self {
            model,
            preprocess: Preprocess::for_config(cfg, device),
            transform,
            device,
            batch_size: cfg.train.eval_batch_size.max(1),
            classes,
        }
    }

    /// The class names, in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Classifies `files` in batches, handing each outcome to `emit` in input order. A
    /// progress bar shows on a terminal when there is more than one batch.
    pub fn predict(&self, files: &[PathBuf], top_k: usize, mut emit: impl FnMut(Outcome)) -> Result<()> {
        let k = top_k.clamp(1, self.classes.len());
        let bar = progress_bar(files.len(), self.batch_size);
        for chunk in files.chunks(self.batch_size) {
            let tf = self.transform;
            let loaded: Vec<_> =
                chunk.par_iter().map(|p| mlae_data::load_image(p, &tf).map_err(|e| e.to_string())).collect();
            let good: Vec<&Vec<u8>> = loaded.iter().filter_map(|r| r.as_ref().ok()).collect();
            let mut ranked = self.classify(&good, k)?.into_iter();
            for (path, r) in chunk.iter().zip(loaded.iter()) {
                let result = match r {
                    Ok(_) => Ok(ranked.next().expect("one ranking per decoded image")),
                    Err(e) => Err(e.clone()),
                };
                emit(Outcome { path: path.clone(), result });
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Softmax probabilities of a batch of transformed images, top `k` per image.
    fn classify(&self, images: &[&Vec<u8>], k: usize) -> Result<Vec<Ranked>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let side = self.transform.output_size() as i64;
        let pixels: Vec<u8> = images.iter().flat_map(|v| v.iter().copied()).collect();
        let (probs, idx) = tch::no_grad(|| {
            let x = Tensor::from_data_size(&pixels, &[images.len() as i64, side, side, 3], Kind::Uint8)
                .to_device(self.device);
            let logits = self.model.forward_t(&self.preprocess.apply(&x), &ForwardCtx::eval());
            let p = logits.to_kind(Kind::Float).softmax(-1, Kind::Float);
            let (values, indices) = p.topk(k as i64, -1, true, true);
            (values.to_device(Device::Cpu), indices.to_device(Device::Cpu))
        });
        let probs = Vec::<f32>::try_from(probs.flatten(0, -1))
            .map_err(|e| TrainError::Invalid(format!("reading probabilities: {e}")))?;
        let idx = Vec::<i64>::try_from(idx.flatten(0, -1))
            .map_err(|e| TrainError::Invalid(format!("reading classes: {e}")))?;
        Ok(idx
            .chunks(k)
            .zip(probs.chunks(k))
            .map(|(i, p)| i.iter().zip(p).map(|(&i, &p)| (i as usize, p)).collect())
            .collect())
    }
}

fn progress_bar(files: usize, batch: usize) -> ProgressBar {
    if files <= batch {
        return ProgressBar::hidden();
    }
    crate::progress::terminal_bar(files as u64, "images").unwrap_or_else(ProgressBar::hidden)
}
