//! One image file through an evaluation transform, outside any split: what `mlae-cli predict`
//! classifies. The same decoding and resampling as [`crate::load_images`], so a photo scored
//! here sees exactly the pixels it would have seen in a test split.

use crate::error::{DataError, Result};
use crate::transform::{Transform, decode_rgb};
use std::path::{Path, PathBuf};

/// The file extensions [`image_files`] picks up (case-insensitive): the formats decoding reads.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Whether `path` has one of [`IMAGE_EXTENSIONS`].
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Decodes an image file and applies a deterministic transform: `(side, side, 3)` uint8 RGB,
/// row-major. A random transform (training augmentation) is refused: predictions must not
/// depend on a draw.
pub fn load_image(path: &Path, tf: &Transform) -> Result<Vec<u8>> {
    if matches!(tf, Transform::RandomResizedCropFlip { .. }) {
        return Err(DataError::Transform {
            transform: format!("{tf:?}"),
            message: "a random transform cannot score a single image; use the evaluation transform".into(),
        });
    }
    let unreadable = |message: String| DataError::Unreadable { path: path.to_path_buf(), message };
    let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
    let img = decode_rgb(&bytes).map_err(unreadable)?;
    let (_, _, pixels) = tf.decode_op().apply(&img, || path.display().to_string())?;
    Ok(pixels)
}

/// The images named by `inputs`: a file as given (whatever its extension, so a mistyped
/// file is reported rather than skipped), a folder walked recursively for files with
/// [`IMAGE_EXTENSIONS`] in sorted order, skipping hidden entries. A path that does not exist
/// is an error naming it.
pub fn image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| DataError::Io { path: input.clone(), source: e })?;
        if meta.is_dir() {
            walk(input, &mut out)?;
        } else {
            out.push(input.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |e| DataError::Io { path: dir.to_path_buf(), source: e };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)?;
    entries.sort();
    for path in entries {
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_image_path(&path) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path, w: u32, h: u32, v: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(w, h, image::Rgb([v, v / 2, 255 - v])).save(path).unwrap();
    }

    #[test]
    fn folders_are_walked_in_order_and_files_are_taken_as_given() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        png(&d.join("b/2.png"), 4, 4, 10);
        png(&d.join("a/x/1.JPG.png"), 4, 4, 20);
        png(&d.join("a/.hidden/3.png"), 4, 4, 30);
        std::fs::write(d.join("a/notes.txt"), "x").unwrap();
        std::fs::write(d.join("loose.bin"), "x").unwrap();
        let files = image_files(&[d.to_path_buf(), d.join("loose.bin")]).unwrap();
        let rel: Vec<_> =
            files.iter().map(|p| p.strip_prefix(d).unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(rel, ["a/x/1.JPG.png", "b/2.png", "loose.bin"]);
        let err = image_files(&[d.join("missing")]).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn an_image_gets_the_evaluation_transform_and_a_bad_one_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().join("g.png");
        png(&good, 10, 6, 100);
        let px = load_image(&good, &Transform::vtab(8)).unwrap();
        assert_eq!(px.len(), 8 * 8 * 3);
        assert_eq!(&px[..3], &[100, 50, 155]);
        let bad = tmp.path().join("bad.jpg");
        std::fs::write(&bad, b"\xFF\xD8\xFF\xE0 not really").unwrap();
        let err = load_image(&bad, &Transform::vtab(8)).unwrap_err().to_string();
        assert!(err.starts_with(&bad.display().to_string()), "{err}");
        let err = load_image(&good, &Transform::fgvc_train(8)).unwrap_err().to_string();
        assert!(err.contains("random transform"), "{err}");
    }
}
