//! A floor of the memory a training run needs, computed from its sizes before anything is
//! allocated, so that a config that cannot fit is refused with the figure instead of being
//! found out by the kernel (an OOM kill) or by the allocator (an abort).
//!
//! Every part counts only what the run is sure to hold at once, so the total stays below
//! what it really uses (libtorch's workspaces, the allocator's slack, the checkpoint while it
//! loads and the process itself come on top): a run refused on this floor could not run.
//!
//! - **Weights**: the frozen parameters in the compute precision, the trained ones in fp32.
//! - **Training state**: a gradient and AdamW's two moments per trained parameter (fp32).
//! - **Decoded images**: `side * side * 3` bytes per image of every split the run loads.
//! - **Activations**: what backward needs of one training batch, per block and token: the
//!   normalised input, q, k, v, the attention output, the MLP's hidden pre-activation and the
//!   block's two residual inputs (`6 * dim + mlp_dim` values; attention's token-by-token
//!   matrix is not counted, as fused attention does not keep it). A run that trains nothing
//!   inside the blocks (a linear probe) keeps none of them; its floor, like evaluation's, is
//!   one block's forward of a batch.

use crate::params::{ModelDims, ParamCount};

/// What a run is made of, as far as memory goes.
#[derive(Debug, Clone, PartialEq)]
pub struct RunShape {
    pub dims: ModelDims,
    pub params: ParamCount,
    /// Whether backward runs through the blocks (an adapter in them, or full fine-tuning).
    pub backprop_blocks: bool,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    /// Bytes of a value in the compute precision: 4 (fp32) or 2 (bf16).
    pub compute_bytes: usize,
    /// The side of a decoded image in pixels.
    pub image_side: usize,
    /// The images of each split the run decodes.
    pub images: Vec<usize>,
}

/// The parts of the floor, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryFloor {
    /// Frozen weights (the position table among them).
    pub frozen_weights: f64,
    /// Of which the position table.
    pub pos_table: f64,
    /// Trained weights with their gradients and AdamW moments.
    pub trained: f64,
    /// Decoded images of every split.
    pub images: f64,
    /// Of which the training split.
    pub train_images: f64,
    /// Activations of one batch (training, or evaluation's batch if larger).
    pub activations: f64,
}

impl MemoryFloor {
    /// Everything on one device (a CPU run).
    pub fn total(&self) -> f64 {
        self.frozen_weights + self.trained + self.images + self.activations
    }

    /// What a GPU holds: the model, its training state, a batch's activations and the
    /// training images (kept resident there); the host keeps the decoded images.
    pub fn on_gpu(&self) -> f64 {
        self.frozen_weights + self.trained + self.train_images + self.activations
    }
}

/// The floor of `shape`. The first entry of `images` is the training split.
///
/// ```
/// use mlae_core::memory::{RunShape, floor};
/// use mlae_core::{AdapterSpec, ModelDims, count_params};
/// let dims = ModelDims::vit_b16(100, 224);
/// let params = count_params(&AdapterSpec::default().resolve(12).unwrap(), &dims);
/// let shape = RunShape { dims, params, backprop_blocks: true, batch_size: 64,
///     eval_batch_size: 256, compute_bytes: 4, image_side: 224, images: vec![1000, 20_000] };
/// let f = floor(&shape);
/// // ViT-B/16 weights: 343 MB; a batch of 64 keeps 197 tokens x 7680 values x 12 blocks
/// assert!((f.frozen_weights / 1e6 - 343.2).abs() < 0.1, "{}", f.frozen_weights);
/// assert!((f.activations / 1e9 - 4.65).abs() < 0.01, "{}", f.activations);
/// ```
pub fn floor(shape: &RunShape) -> MemoryFloor {
    let d = &shape.dims;
    let p = &shape.params;
    let frozen = p.total.saturating_sub(p.trainable) as f64;
    let tokens = (d.num_patches + 1) as f64;
    let (dim, mlp, depth) = (d.dim as f64, d.mlp_dim as f64, d.depth as f64);
    let value = shape.compute_bytes as f64;
    let per_image = (shape.image_side * shape.image_side * 3) as f64;
    let kept = if shape.backprop_blocks {
        depth * shape.batch_size as f64 * tokens * (6.0 * dim + mlp) * value
    } else {
        0.0
    };
    // one block's forward: q, k, v and the MLP's hidden values of a batch
    let block = |batch: usize| batch as f64 * tokens * (3.0 * dim + mlp) * value;
    let pos_table = if p.trainable >= p.total { 0.0 } else { tokens * dim * value };
    MemoryFloor {
        frozen_weights: frozen * value,
        pos_table,
        trained: p.trainable as f64 * 16.0,
        images: shape.images.iter().sum::<usize>() as f64 * per_image,
        train_images: shape.images.first().copied().unwrap_or(0) as f64 * per_image,
        activations: kept.max(block(shape.batch_size)).max(block(shape.eval_batch_size)),
    }
}

/// Bytes for a reader: `512 MiB`, `3.2 GiB`, `2,400.0 TiB`.
pub fn human_bytes(bytes: f64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let (value, unit) = match bytes {
        b if b < 1024.0 * MIB => (b / MIB, "MiB"),
        b if b < 1024.0 * 1024.0 * MIB => (b / (1024.0 * MIB), "GiB"),
        b => (b / (1024.0 * 1024.0 * MIB), "TiB"),
    };
    if unit == "MiB" { format!("{value:.0} {unit}") } else { format!("{value:.1} {unit}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AdapterSpec, count_params};

    fn shape(dims: ModelDims, spec: &AdapterSpec) -> RunShape {
        let params = count_params(&spec.resolve(dims.depth).unwrap(), &dims);
        RunShape {
            dims,
            params,
            backprop_blocks: true,
            batch_size: 64,
            eval_batch_size: 256,
            compute_bytes: 4,
            image_side: 56,
            images: vec![1000, 1000],
        }
    }

    #[test]
    fn the_quickstart_fits_in_little_and_a_million_experts_do_not() {
        let spec = AdapterSpec::default();
        let f = floor(&shape(ModelDims::dinov2_s14(10, 56), &spec));
        // 21.5M frozen parameters, 151k trained, 2,000 images of 56 x 56 x 3, 200 MB of activations
        assert!(f.total() < 400e6 && f.total() > 200e6, "{f:?}");
        assert_eq!(f.images, 2000.0 * 56.0 * 56.0 * 3.0);
        let mut big = spec.clone();
        big.mlae.experts = 1_000_000;
        let f = floor(&shape(ModelDims::dinov2_s14(10, 56), &big));
        // 12 layers x 10^6 experts x (384 + 1152 + 1) parameters, 16 bytes each
        assert!((f.trained / 1e9 - 295.1).abs() < 0.1, "{}", f.trained);
    }

    #[test]
    fn a_huge_image_size_shows_in_the_position_table_images_and_activations() {
        let s = shape(ModelDims::dinov2_s14(10, 100_002), &AdapterSpec::default());
        let s = RunShape { image_side: 100_002, ..s };
        let f = floor(&s);
        // 7143^2 + 1 positions of width 384 in fp32: the 78,370,483,200 bytes of the abort
        assert_eq!(f.pos_table, 78_370_483_200.0);
        assert!(f.frozen_weights > f.pos_table);
        assert!(f.activations > 5e14 && f.images > 5e13, "{f:?}");
    }

    #[test]
    fn a_linear_probe_keeps_no_block_activations_and_bf16_halves_them() {
        let dims = ModelDims::vit_b16(100, 224);
        let mut s = shape(dims, &AdapterSpec::default());
        let full = floor(&s).activations;
        s.compute_bytes = 2;
        assert_eq!(floor(&s).activations, full / 2.0);
        s.backprop_blocks = false;
        s.compute_bytes = 4;
        // evaluation's batch of 256 through one block
        assert_eq!(floor(&s).activations, 256.0 * 197.0 * (3.0 * 768.0 + 3072.0) * 4.0);
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(512.0 * 1024.0 * 1024.0), "512 MiB");
        assert_eq!(human_bytes(3.25 * 1024.0 * 1024.0 * 1024.0), "3.2 GiB");
        assert_eq!(human_bytes(2.0 * 1024f64.powi(4)), "2.0 TiB");
    }
}
