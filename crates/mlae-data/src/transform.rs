//! Decoding and the benchmarks' preprocessing: what happens between an image file and the
//! uint8 RGB pixels the trainer normalises on the device.

use crate::error::{DataError, Result};
use crate::resample::{Filter, crop_rgb, flip_horizontal, resize_rgb};
use crate::rng::{DOMAIN_CROP, Rng};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// The per-channel mean/std the trainer normalises with. Chosen explicitly in the config
/// because the papers disagree: the VTAB-1k lineage uses ImageNet's, the MLAE paper Inception's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalization {
    /// mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    Imagenet,
    /// mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5): pixels end up in [-1, 1].
    Inception,
}

impl Normalization {
    /// (mean, std) per RGB channel, for pixels scaled to [0, 1].
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Normalization::Imagenet => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            Normalization::Inception => ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
        }
    }
}

/// How a decoded image becomes a training or evaluation input. The output is always square.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transform {
    /// VTAB-1k: direct bicubic resize to `size` x `size` (aspect ratio not kept), no
    /// augmentation; what NOAH's `Resize((224, 224), interpolation=3)` does.
    Resize {
        /// Output side.
        size: u32,
    },
    /// FGVC evaluation: bilinear resize of the short side to `resize` (the long side scaled and
    /// truncated, as torchvision does), then the centre `crop` x `crop`.
    ResizeCenterCrop {
        /// Short side after resizing (256 for 224 inputs).
        resize: u32,
        /// Output side.
        crop: u32,
    },
    /// FGVC training: torchvision's RandomResizedCrop (area 8-100 %, aspect 3/4-4/3, bilinear)
    /// then a horizontal flip with probability 1/2, drawn from (seed, epoch, index). Images are
    /// decoded once with the short side reduced to `cache_short_side` (never enlarged) and the
    /// crops are taken from that copy, which is what makes 300 epochs affordable.
    RandomResizedCropFlip {
        /// Output side.
        size: u32,
        /// Short side of the decoded copy that crops are taken from.
        cache_short_side: u32,
    },
}

impl Transform {
    /// The VTAB-1k transform for `size` x `size` inputs.
    pub fn vtab(size: u32) -> Self {
        Transform::Resize { size }
    }

    /// The FGVC training transform for `size` x `size` inputs (decoded copy at 320/224 x size).
    pub fn fgvc_train(size: u32) -> Self {
        Transform::RandomResizedCropFlip { size, cache_short_side: size * 320 / 224 }
    }

    /// The FGVC evaluation transform (resize 256, centre crop 224, scaled with `size`).
    pub fn fgvc_eval(size: u32) -> Self {
        Transform::ResizeCenterCrop { resize: size * 256 / 224, crop: size }
    }

    /// Side of the square output.
    pub fn output_size(&self) -> u32 {
        match *self {
            Transform::Resize { size } | Transform::RandomResizedCropFlip { size, .. } => size,
            Transform::ResizeCenterCrop { crop, .. } => crop,
        }
    }

    /// Checks the parameters: sides must be positive, a crop no larger than what it is cut from.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: &str| {
            Err(DataError::Transform { transform: format!("{self:?}"), message: message.into() })
        };
        match *self {
            Transform::Resize { size: 0 } => bad("size must be positive"),
            Transform::ResizeCenterCrop { resize, crop } if crop == 0 || resize < crop => {
                bad("need 0 < crop <= resize")
            }
            Transform::RandomResizedCropFlip { size, cache_short_side }
                if size == 0 || cache_short_side == 0 =>
            {
                bad("size and cache_short_side must be positive")
            }
            _ => Ok(()),
        }
    }

    /// What is decoded and stored once (and cached) for this transform.
    pub(crate) fn decode_op(&self) -> DecodeOp {
        match *self {
            Transform::Resize { size } => DecodeOp::Resize { size },
            Transform::ResizeCenterCrop { resize, crop } => DecodeOp::ResizeCenterCrop { resize, crop },
            Transform::RandomResizedCropFlip { cache_short_side, .. } => {
                DecodeOp::ShortSide { side: cache_short_side }
            }
        }
    }
}

/// The deterministic part of a transform: applied once per image and cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DecodeOp {
    Resize { size: u32 },
    ResizeCenterCrop { resize: u32, crop: u32 },
    ShortSide { side: u32 },
}

/// Bumped whenever decoding or resampling changes its output, so caches are rebuilt.
pub(crate) const PIXEL_VERSION: u32 = 1;

impl DecodeOp {
    /// A short name for cache files and keys.
    pub(crate) fn tag(&self) -> String {
        match *self {
            DecodeOp::Resize { size } => format!("resize{size}"),
            DecodeOp::ResizeCenterCrop { resize, crop } => format!("resize{resize}-crop{crop}"),
            DecodeOp::ShortSide { side } => format!("short{side}"),
        }
    }

    /// Output side when it is the same for every image.
    pub(crate) fn fixed_size(&self) -> Option<usize> {
        match *self {
            DecodeOp::Resize { size } => Some(size as usize),
            DecodeOp::ResizeCenterCrop { crop, .. } => Some(crop as usize),
            DecodeOp::ShortSide { .. } => None,
        }
    }

    /// Applies the op to a decoded RGB image; returns (height, width, pixels). An output the
    /// allocator cannot give is an error (`what` names the image).
    pub(crate) fn apply(
        &self,
        img: &RgbPixels,
        what: impl Fn() -> String,
    ) -> Result<(usize, usize, Vec<u8>)> {
        let (w, h) = (img.width, img.height);
        let buffer = |len: usize, side: String| crate::alloc::zeroed(len, || format!("{} at {side}", what()));
        Ok(match *self {
            DecodeOp::Resize { size } => {
                let s = size as usize;
                let mut out = buffer(s.saturating_mul(s).saturating_mul(3), format!("{s} x {s} px"))?;
                resize_rgb(&img.data, w, h, &mut out, s, s, Filter::Bicubic);
                (s, s, out)
            }
            DecodeOp::ResizeCenterCrop { resize, crop } => {
                let (rw, rh) = short_side_size(w, h, resize as usize);
                let mut resized = buffer(rw.saturating_mul(rh).saturating_mul(3), format!("{rw} x {rh} px"))?;
                resize_rgb(&img.data, w, h, &mut resized, rw, rh, Filter::Bilinear);
                let c = crop as usize;
                // torchvision: top = int(round((h - crop) / 2)), Python rounding (half to even).
                let top = ((rh as f64 - c as f64) / 2.0).round_ties_even() as usize;
                let left = ((rw as f64 - c as f64) / 2.0).round_ties_even() as usize;
                (c, c, crop_rgb(&resized, rw, left, top, c, c))
            }
            DecodeOp::ShortSide { side } => {
                if w.min(h) <= side as usize {
                    return Ok((h, w, img.data.clone()));
                }
                let (rw, rh) = short_side_size(w, h, side as usize);
                let mut out = buffer(rw.saturating_mul(rh).saturating_mul(3), format!("{rw} x {rh} px"))?;
                resize_rgb(&img.data, w, h, &mut out, rw, rh, Filter::Bilinear);
                (rh, rw, out)
            }
        })
    }
}

/// torchvision's `Resize(int)`: the short side becomes `side`, the long side
/// `int(side * long / short)` (truncated). Returns (width, height).
pub(crate) fn short_side_size(w: usize, h: usize, side: usize) -> (usize, usize) {
    if w <= h {
        (side, (side as f64 * h as f64 / w as f64) as usize)
    } else {
        ((side as f64 * w as f64 / h as f64) as usize, side)
    }
}

/// A decoded image as packed 8-bit RGB.
pub(crate) struct RgbPixels {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Decodes JPEG or PNG bytes (any colour type: grey, palette, RGBA, 16-bit) to 8-bit RGB.
/// Alpha is dropped and grey replicated, as PIL's `convert("RGB")` does; EXIF orientation is
/// ignored, as PIL and torchvision ignore it.
pub(crate) fn decode_rgb(bytes: &[u8]) -> std::result::Result<RgbPixels, String> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read the header: {e}"))?;
    let format = reader.format().ok_or("not a JPEG or PNG file (unknown signature)")?;
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err("truncated JPEG (no end-of-image marker)".into());
    }
    let img = reader.decode().map_err(|e| format!("cannot decode {format:?}: {e}"))?;
    let rgb = img.into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    if width == 0 || height == 0 {
        return Err("the image has no pixels".into());
    }
    Ok(RgbPixels { width, height, data: rgb.into_raw() })
}

/// zune-jpeg fills a truncated scan with grey instead of failing, where PIL fails. So the
/// marker structure is walked: segments by their lengths (which skips EXIF thumbnails and
/// their own end markers), entropy-coded data up to the next real marker, until the
/// end-of-image marker. Bytes after it (camera trailers) are ignored, as decoders do.
fn jpeg_is_complete(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return false;
    }
    let mut i = 2;
    loop {
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else { return false };
        i += 1;
        match marker {
            0xD9 => return true,
            0xD0..=0xD7 | 0x01 => continue,
            _ => {
                let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else {
                    return false;
                };
                i += len;
                if len < 2 || i > b.len() {
                    return false;
                }
                if marker == 0xDA {
                    // Scan data: FF 00 is a stuffed byte and FF D0-D7 a restart; anything else ends it.
                    loop {
                        while i < b.len() && b[i] != 0xFF {
                            i += 1;
                        }
                        match b.get(i + 1) {
                            None => return false,
                            Some(0x00 | 0xD0..=0xD7) => i += 2,
                            Some(0xFF) => i += 1,
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params` with scale (0.08, 1) and ratio (3/4, 4/3):
/// ten tries at a random area and log-uniform aspect, else the largest centred crop within
/// the ratio range. Returns (top, left, height, width).
pub(crate) fn random_resized_crop_params(w: usize, h: usize, rng: &mut Rng) -> (usize, usize, usize, usize) {
    let area = (w * h) as f64;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.uniform(0.08, 1.0);
        let aspect = rng.uniform(lo, hi).exp();
        let cw = (target * aspect).sqrt().round_ties_even() as usize;
        let ch = (target / aspect).sqrt().round_ties_even() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.below((h - ch + 1) as u64) as usize;
            let left = rng.below((w - cw + 1) as u64) as usize;
            return (top, left, ch, cw);
        }
    }
    let ratio = w as f64 / h as f64;
    let (cw, ch) = if ratio < 3.0 / 4.0 {
        (w, (w as f64 / (3.0 / 4.0)).round_ties_even() as usize)
    } else if ratio > 4.0 / 3.0 {
        ((h as f64 * (4.0 / 3.0)).round_ties_even() as usize, h)
    } else {
        (w, h)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// One augmented view: random resized crop of the stored image, bilinear resize to `size`,
/// then a flip with probability 1/2. Pure function of (seed, epoch, index).
pub(crate) fn augment_into(
    img: &[u8],
    w: usize,
    h: usize,
    size: usize,
    key: (u64, u64, u64),
    out: &mut [u8],
) {
    let (seed, epoch, index) = key;
    let mut rng = Rng::new(seed, DOMAIN_CROP, epoch, index);
    let (top, left, ch, cw) = random_resized_crop_params(w, h, &mut rng);
    let crop = crop_rgb(img, w, left, top, cw, ch);
    resize_rgb(&crop, cw, ch, out, size, size, Filter::Bilinear);
    if rng.next_f64() < 0.5 {
        flip_horizontal(out, size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisations_are_the_published_constants() {
        let (m, s) = Normalization::Imagenet.mean_std();
        assert_eq!((m, s), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]));
        let (m, s) = Normalization::Inception.mean_std();
        assert_eq!((m, s), ([0.5; 3], [0.5; 3]));
        let n: Normalization = serde_json::from_str("\"inception\"").unwrap();
        assert_eq!(n, Normalization::Inception);
    }

    #[test]
    fn fgvc_transforms_scale_with_the_image_size() {
        assert_eq!(Transform::fgvc_eval(224), Transform::ResizeCenterCrop { resize: 256, crop: 224 });
        assert_eq!(Transform::fgvc_eval(112), Transform::ResizeCenterCrop { resize: 128, crop: 112 });
        assert_eq!(
            Transform::fgvc_train(224),
            Transform::RandomResizedCropFlip { size: 224, cache_short_side: 320 }
        );
        assert_eq!(Transform::fgvc_train(224).output_size(), 224);
    }

    #[test]
    fn impossible_transforms_are_rejected() {
        assert!(Transform::Resize { size: 0 }.validate().is_err());
        let err = Transform::ResizeCenterCrop { resize: 100, crop: 224 }.validate().unwrap_err().to_string();
        assert!(err.contains("crop <= resize"), "{err}");
        Transform::vtab(224).validate().unwrap();
    }

    #[test]
    fn short_side_follows_torchvision() {
        // 500x375 -> short side 256: long = int(256 * 500 / 375) = 341.
        assert_eq!(short_side_size(500, 375, 256), (341, 256));
        assert_eq!(short_side_size(375, 500, 256), (256, 341));
        assert_eq!(short_side_size(300, 300, 256), (256, 256));
    }

    #[test]
    fn random_crops_stay_inside_and_cover_the_documented_ranges() {
        let (w, h) = (400, 300);
        let (mut min_area, mut max_area) = (f64::MAX, 0.0f64);
        for i in 0..2000 {
            let mut rng = Rng::new(3, DOMAIN_CROP, 0, i);
            let (top, left, ch, cw) = random_resized_crop_params(w, h, &mut rng);
            assert!(top + ch <= h && left + cw <= w && ch > 0 && cw > 0);
            let frac = (ch * cw) as f64 / (w * h) as f64;
            min_area = min_area.min(frac);
            max_area = max_area.max(frac);
            let ratio = cw as f64 / ch as f64;
            // Rounding to whole pixels can push the aspect a little outside [3/4, 4/3].
            assert!((0.7..=1.4).contains(&ratio), "ratio {ratio}");
        }
        assert!(min_area < 0.12 && max_area > 0.8, "areas {min_area}..{max_area}");
    }

    #[test]
    fn truncated_jpegs_are_told_from_complete_ones() {
        let img = image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, (x ^ y) as u8])
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&img).unwrap();
        assert!(jpeg_is_complete(&jpeg));
        for keep in [10, jpeg.len() / 3, jpeg.len() / 2, jpeg.len() - 3, jpeg.len() - 1] {
            assert!(!jpeg_is_complete(&jpeg[..keep]), "cut at {keep} of {}", jpeg.len());
            assert!(decode_rgb(&jpeg[..keep]).is_err());
        }
        let mut trailer = jpeg.clone();
        trailer.extend_from_slice(&[0u8; 5000]);
        assert!(jpeg_is_complete(&trailer));
        assert_eq!(decode_rgb(&trailer).unwrap().data, decode_rgb(&jpeg).unwrap().data);
    }

    #[test]
    fn a_thin_image_falls_back_to_a_centred_crop() {
        // 1000x10: no 8-100 % area crop with aspect <= 4/3 fits, so the fallback is used.
        let mut rng = Rng::new(0, DOMAIN_CROP, 0, 0);
        let (top, left, ch, cw) = random_resized_crop_params(1000, 10, &mut rng);
        assert_eq!((top, ch, cw), (0, 10, 13));
        assert_eq!(left, (1000 - 13) / 2);
    }
}
