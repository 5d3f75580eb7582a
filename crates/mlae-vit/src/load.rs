//! Loading a backbone (any format the importers read) into the model.

use crate::error::{Result, VitError};
use crate::import::{CheckpointFormat, StateDict, read_checkpoint};
use crate::model::{AdaptedVit, fresh_head};
use crate::pos_embed::{PosResize, resample_pos_embed, square_grid};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// What happened to the classification head when a checkpoint was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadLoad {
    /// The checkpoint's head had the task's class count and was loaded.
    Loaded,
    /// The model keeps its freshly initialised head, for the reason given.
    Fresh(String),
}

/// A summary of a loaded checkpoint, for the log and the run summary.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The file (or `<state dict>`).
    pub source: PathBuf,
    pub format: CheckpointFormat,
    /// Tensors copied into the model.
    pub loaded: usize,
    /// `(checkpoint grid, model grid)` when the position table was resampled.
    pub pos_embed_resized: Option<(i64, i64)>,
    /// How the position table is resized, on loading and for inputs of another size.
    pub pos_resize: PosResize,
    pub head: HeadLoad,
    /// Checkpoint keys the model does not use.
    pub unused: Vec<String>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} tensors from {:?} checkpoint", self.loaded, self.format)?;
        if let Some((from, to)) = self.pos_embed_resized {
            write!(f, ", position table resized {from}x{from} -> {to}x{to} ({})", self.pos_resize)?;
        }
        match &self.head {
            HeadLoad::Loaded => write!(f, ", head loaded")?,
            HeadLoad::Fresh(why) => write!(f, ", fresh head ({why})")?,
        }
        if !self.unused.is_empty() {
            write!(f, ", {} unused keys", self.unused.len())?;
        }
        Ok(())
    }
}

fn shape_error(path: &Path, key: &str, found: &Tensor, expected: &Tensor) -> VitError {
    VitError::ShapeMismatch {
        path: path.into(),
        key: key.into(),
        found: found.size(),
        expected: expected.size(),
    }
}

/// Copies `src` into `dst` (casting kind and device), outside autograd.
fn copy_into(dst: &Tensor, src: &Tensor) {
    let mut d = dst.shallow_clone();
    tch::no_grad(|| d.copy_(src));
}

impl AdaptedVit {
    /// Chooses how the position table is resized, for the checkpoints loaded afterwards and for
    /// inputs of another size. `None` (the default) follows the checkpoint's library
    /// ([`PosResize::for_format`]), which reproduces that library's outputs; `Some` overrides it,
    /// e.g. to resize a DINOv2 checkpoint the way timm's loader does.
    pub fn set_pos_resize(&mut self, mode: Option<PosResize>) {
        self.pos_resize = mode;
    }

    /// The position-table resize in effect: the chosen one, else the convention of the
    /// checkpoint loaded last (timm's until one is loaded).
    pub fn pos_resize(&self) -> PosResize {
        self.pos_resize.unwrap_or(self.checkpoint_pos_resize)
    }

    /// Reads a checkpoint (format inferred when `None`) and loads it; see
    /// [`AdaptedVit::load_state_dict`].
    pub fn load_backbone(&mut self, path: &Path, format: Option<CheckpointFormat>) -> Result<LoadReport> {
        let sd = read_checkpoint(path, format)?;
        self.load_from(&sd, path)
    }

    /// Loads timm-named tensors into the backbone and, when its class count matches, the head.
    ///
    /// - a missing key, or a tensor of another shape, is an error naming the key and both shapes;
    /// - a position table of another square grid is resampled to the model's, in the convention
    ///   of the checkpoint's library ([`PosResize::for_format`]) unless
    ///   [`AdaptedVit::set_pos_resize`] chose one;
    /// - a head of another class count (or none) leaves the fresh head, and the log says so;
    /// - keys the model does not use are listed at debug level;
    /// - layer-scale gammas in a checkpoint for a model without layer-scale are an error (the
    ///   checkpoint is a different architecture).
    pub fn load_state_dict(&mut self, sd: &StateDict) -> Result<LoadReport> {
        self.load_from(sd, Path::new("<state dict>"))
    }

    fn load_from(&mut self, sd: &StateDict, origin: &Path) -> Result<LoadReport> {
        if self.is_merged() {
            return Err(VitError::Config("unmerge the adapters before loading a backbone".into()));
        }
        let src: HashMap<&str, &Tensor> = sd.tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let mut used: HashSet<String> = HashSet::with_capacity(src.len());
        if !self.cfg.layer_scale
            && let Some(k) = src.keys().find(|k| k.ends_with(".ls1.gamma") || k.ends_with(".ls2.gamma"))
        {
            return Err(VitError::Format {
                path: origin.into(),
                message: format!(
                    "`{k}` is a layer-scale weight (DINOv2-style) but the model has no layer-scale; \
                     choose the matching preset (dinov2-s14)"
                ),
            });
        }
        let pos_resize = self.pos_resize.unwrap_or(PosResize::for_format(sd.format));
        let mut pos_embed_resized = None;
        // Check every shape before copying anything, so a failed load leaves the model intact.
        let mut plan: Vec<(&Tensor, Tensor)> = Vec::new();
        for (name, dst) in self.backbone.tensors() {
            let s = *src
                .get(name.as_str())
                .ok_or_else(|| VitError::MissingKey { path: origin.into(), key: name.clone() })?;
            used.insert(name.clone());
            if s.size() == dst.size() {
                plan.push((dst, s.shallow_clone()));
                continue;
            }
            let (fs, ds) = (s.size(), dst.size());
            let resizable = name == "pos_embed" && fs.len() == 3 && fs[0] == 1 && fs[2] == ds[2];
            match (resizable, square_grid(fs.get(1).copied().unwrap_or(0), 1)) {
                (true, Some(old)) => {
                    let g = self.cfg.grid();
                    let resized = resample_pos_embed(s, (g, g), 1, pos_resize)?;
                    tracing::info!(
                        "{}: position table resized from {old}x{old} to {g}x{g} ({pos_resize})",
                        origin.display()
                    );
                    pos_embed_resized = Some((old, g));
                    plan.push((dst, resized));
                }
                _ => return Err(shape_error(origin, &name, s, dst)),
            }
        }
        let head = match (src.get("head.weight"), src.get("head.bias")) {
            (Some(w), Some(b)) if w.size().first() == Some(&self.cfg.num_classes) => {
                let hb = self.head.bias.as_ref().expect("the head has a bias");
                if w.size() != self.head.weight.size() {
                    return Err(shape_error(origin, "head.weight", w, &self.head.weight));
                }
                if b.size() != hb.size() {
                    return Err(shape_error(origin, "head.bias", b, hb));
                }
                plan.push((&self.head.weight, w.shallow_clone()));
                plan.push((hb, b.shallow_clone()));
                used.extend(["head.weight".to_string(), "head.bias".to_string()]);
                HeadLoad::Loaded
            }
            (Some(w), _) => {
                let found = w.size().first().copied().unwrap_or(0);
                HeadLoad::Fresh(format!(
                    "the checkpoint's head has {found} classes, the task {}",
                    self.cfg.num_classes
                ))
            }
            (None, _) => HeadLoad::Fresh("the checkpoint has no head".into()),
        };
        let loaded = plan.len();
        for (dst, s) in &plan {
            copy_into(dst, s);
        }
        self.checkpoint_pos_resize = PosResize::for_format(sd.format);
        self.rebase_adapters();
        if let HeadLoad::Fresh(why) = &head {
            // fresh even if an earlier load had filled the head
            let (w, b) = fresh_head(&self.cfg, self.seed, self.device);
            copy_into(&self.head.weight, &w);
            copy_into(self.head.bias.as_ref().expect("the head has a bias"), &b);
            tracing::info!("{}: using a freshly initialised head: {why}", origin.display());
        }
        let unused: Vec<String> =
            sd.tensors.iter().map(|(k, _)| k).filter(|k| !used.contains(*k)).cloned().collect();
        if !unused.is_empty() {
            tracing::debug!("{}: keys the model does not use: {}", origin.display(), unused.join(", "));
        }
        Ok(LoadReport {
            source: origin.to_path_buf(),
            format: sd.format,
            loaded,
            pos_embed_resized,
            pos_resize,
            head,
            unused,
        })
    }
}
