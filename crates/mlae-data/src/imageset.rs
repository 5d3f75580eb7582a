//! What the trainer receives: a whole split as one NHWC uint8 block ([`ImageSet`]), or a
//! training split that is cropped and flipped afresh each epoch ([`AugmentedSet`]).

use crate::decoded::{CacheStatus, Decoded, decode_split};
use crate::error::{DataError, Location, Result};
use crate::split_file::SplitList;
use crate::transform::{DecodeOp, Transform, augment_into};
use rayon::prelude::*;
use std::path::Path;

/// Decoded, transformed uint8 RGB images, NHWC, row-major, plus labels.
pub struct ImageSet {
    /// Number of images.
    pub len: usize,
    pub height: usize,
    pub width: usize,
    /// One label per image, in `0..num_classes`.
    pub labels: Vec<i64>,
    storage: Storage,
    cache: CacheStatus,
}

enum Storage {
    /// Memory-mapped or in-memory block from the decoder, already NHWC.
    Decoded(Decoded),
    /// Produced here (one augmented view per image).
    Owned(Vec<u8>),
}

impl std::fmt::Debug for ImageSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSet")
            .field("len", &self.len)
            .field("height", &self.height)
            .field("width", &self.width)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl ImageSet {
    /// All pixels: `len * height * width * 3` bytes, image after image, RGB interleaved.
    pub fn pixels(&self) -> &[u8] {
        match &self.storage {
            Storage::Decoded(d) => d.data(),
            Storage::Owned(v) => v,
        }
    }

    /// The pixels of image `i` (`height * width * 3` bytes).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.height * self.width * 3;
        &self.pixels()[i * n..(i + 1) * n]
    }

    /// Whether the set holds no images (never true for a set returned by [`load_images`]).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What the decoded cache did for this set.
    pub fn cache_status(&self) -> &CacheStatus {
        &self.cache
    }

    /// Whether the pixels are memory-mapped from the cache rather than held in memory.
    pub fn is_mapped(&self) -> bool {
        matches!(&self.storage, Storage::Decoded(d) if d.is_mapped())
    }
}

/// Checks what every loader needs: a valid transform, a non-empty split, labels in range.
fn validate(list: &SplitList, tf: &Transform, num_classes: usize) -> Result<()> {
    tf.validate()?;
    if list.is_empty() {
        return Err(DataError::EmptySplit { path: list.source.clone() });
    }
    for item in &list.items {
        if item.label < 0 || item.label as usize >= num_classes {
            let task =
                list.source.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
            return Err(DataError::LabelOutOfRange {
                at: Location::new(&list.source, item.line, list.json),
                label: item.label,
                task: task.unwrap_or_default(),
                classes: num_classes,
            });
        }
    }
    Ok(())
}

/// Decodes a split and applies `tf`, in parallel; the bytes do not depend on the thread count.
///
/// With `cache` set, the decoded block is stored there once and memory-mapped afterwards (see
/// [`CacheStatus`]). `seed` only matters for `RandomResizedCropFlip`, which gives one augmented
/// view per image (epoch 0 of [`AugmentedSet`]); training should use [`AugmentedSet`].
pub fn load_images(
    list: &SplitList,
    tf: &Transform,
    num_classes: usize,
    cache: Option<&Path>,
    seed: u64,
) -> Result<ImageSet> {
    validate(list, tf, num_classes)?;
    if let Transform::RandomResizedCropFlip { size, .. } = *tf {
        let set = AugmentedSet::new(list, tf, num_classes, cache)?;
        let s = size as usize;
        let mut out =
            crate::alloc::zeroed(list.len().saturating_mul(s).saturating_mul(s).saturating_mul(3), || {
                format!("the {} images of {} at {s} x {s} px", list.len(), list.source.display())
            })?;
        let idx: Vec<usize> = (0..list.len()).collect();
        set.fill_batch(&idx, 0, seed, &mut out);
        let cache = set.decoded.status.clone();
        return Ok(ImageSet {
            len: list.len(),
            height: s,
            width: s,
            labels: set.labels,
            storage: Storage::Owned(out),
            cache,
        });
    }
    let op = tf.decode_op();
    let side = op.fixed_size().expect("Resize and ResizeCenterCrop have a fixed output size");
    let decoded = decode_split(list, op, cache)?;
    debug_assert!(decoded.records.iter().all(|r| (r.height as usize, r.width as usize) == (side, side)));
    Ok(ImageSet {
        len: list.len(),
        height: side,
        width: side,
        labels: list.items.iter().map(|i| i.label).collect(),
        cache: decoded.status.clone(),
        storage: Storage::Decoded(decoded),
    })
}

/// A training split with per-epoch augmentation (FGVC): decoded once with the short side
/// reduced (and cached), then cropped and flipped per batch.
pub struct AugmentedSet {
    decoded: Decoded,
    labels: Vec<i64>,
    size: usize,
}

impl std::fmt::Debug for AugmentedSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AugmentedSet")
            .field("len", &self.labels.len())
            .field("size", &self.size)
            .field("cache", &self.decoded.status)
            .finish_non_exhaustive()
    }
}

impl AugmentedSet {
    /// Decodes the split for `tf`, which must be `RandomResizedCropFlip`.
    pub fn new(list: &SplitList, tf: &Transform, num_classes: usize, cache: Option<&Path>) -> Result<Self> {
        validate(list, tf, num_classes)?;
        let Transform::RandomResizedCropFlip { size, .. } = *tf else {
            return Err(DataError::Transform {
                transform: format!("{tf:?}"),
                message: "AugmentedSet needs RandomResizedCropFlip; use load_images for fixed transforms"
                    .into(),
            });
        };
        let op = tf.decode_op();
        debug_assert!(matches!(op, DecodeOp::ShortSide { .. }));
        let decoded = decode_split(list, op, cache)?;
        Ok(AugmentedSet {
            decoded,
            labels: list.items.iter().map(|i| i.label).collect(),
            size: size as usize,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no images (never true for a constructed set).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// One label per image.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// Side of the square outputs.
    pub fn size(&self) -> usize {
        self.size
    }

    /// What the decoded cache did for this set.
    pub fn cache_status(&self) -> &CacheStatus {
        &self.decoded.status
    }

    /// (height, width) of the stored copy of image `i`, which crops are taken from.
    pub fn stored_size(&self, i: usize) -> (usize, usize) {
        let (h, w, _) = self.decoded.image(i);
        (h, w)
    }

    /// Fills `out` (`idx.len() * size * size * 3` bytes, NHWC) with one augmented view of each
    /// image in `idx`, a pure function of (seed, epoch, index): the same whatever the batch
    /// composition or thread count.
    ///
    /// # Panics
    /// If `out` has the wrong length or an index is out of range (caller bugs).
    pub fn fill_batch(&self, idx: &[usize], epoch: u64, seed: u64, out: &mut [u8]) {
        let stride = self.size * self.size * 3;
        assert_eq!(
            out.len(),
            idx.len() * stride,
            "fill_batch: out must hold {} images of {stride} bytes",
            idx.len()
        );
        out.par_chunks_mut(stride).zip(idx.par_iter()).for_each(|(dst, &i)| {
            assert!(i < self.len(), "fill_batch: index {i} out of range for {} images", self.len());
            let (h, w, img) = self.decoded.image(i);
            augment_into(img, w, h, self.size, (seed, epoch, i as u64), dst);
        });
    }
}
