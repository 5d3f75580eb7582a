//! What a run records about its data: the class names, and for a folder task the list of each
//! split, so that the run folder says which images every split held (a drawn held-out split
//! included) and the lists can be read back as a `list` task.

use crate::error::{DataError, Result, io_err};
use crate::folder::{class_name_problem, file_name_problem};
use crate::task::{CLASSES_FILE, SplitFormat, Task};
use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;

impl Task {
    /// Writes `<dir>/classes.txt` (one class name a line, see [`Task::class_names`]) and, for a
    /// folder task, `<dir>/<split>.txt` for every split in the list format (`<path relative to
    /// the task folder> <label>`, in split order). Each file is written to a temporary file in
    /// `dir` and renamed, so a reader never sees half a file.
    pub fn write_run_files(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut classes = String::new();
        for name in self.class_names() {
            if let Some(message) = class_name_problem(OsStr::new(&name)) {
                return Err(DataError::BadName {
                    path: dir.join(CLASSES_FILE),
                    message: format!("`{name}`: {message}"),
                });
            }
            classes.push_str(&name);
            classes.push('\n');
        }
        write_atomic(&dir.join(CLASSES_FILE), classes.as_bytes())?;
        let SplitFormat::Folder { items } = &self.format else {
            return Ok(());
        };
        for (split, list) in items {
            let mut text = String::new();
            for item in list {
                text.push_str(&list_path(&self.dir, &item.path)?);
                text.push(' ');
                text.push_str(&item.label.to_string());
                text.push('\n');
            }
            write_atomic(&dir.join(format!("{split}.txt")), text.as_bytes())?;
        }
        Ok(())
    }
}

/// An image's path as a list file line gives it: relative to the task folder, with `./` in
/// front when it starts with `#` (a comment) or whitespace (trimmed); names a list file cannot
/// hold are an error naming the image.
fn list_path(task_dir: &Path, image: &Path) -> Result<String> {
    let bad = |message: String| DataError::BadName { path: image.to_path_buf(), message };
    let rel = image
        .strip_prefix(task_dir)
        .map_err(|_| bad(format!("the image is outside the task folder {}", task_dir.display())))?;
    if let Some(message) = file_name_problem(rel) {
        return Err(bad(message));
    }
    let rel = rel.to_str().expect("checked to be UTF-8");
    Ok(if rel.starts_with('#') || rel.starts_with(char::is_whitespace) {
        format!("./{rel}")
    } else {
        rel.to_string()
    })
}

/// Writes `bytes` to a temporary file beside `path`, then renames it to `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    tmp.write_all(bytes).and_then(|()| tmp.as_file().sync_all()).map_err(io_err(tmp.path()))?;
    tmp.persist(path).map_err(|e| DataError::Io { path: path.to_path_buf(), source: e.error })?;
    // The temporary file was created private; the run folder's files are for anyone to read.
    crate::decoded::make_world_readable(path, false).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_paths_survive_the_list_parser() {
        let dir = Path::new("/t");
        assert_eq!(
            list_path(dir, Path::new("/t/train/golden retriever/a b.jpg")).unwrap(),
            "train/golden retriever/a b.jpg"
        );
        assert_eq!(list_path(dir, Path::new("/t/#old/c/x.png")).unwrap(), "./#old/c/x.png");
        assert_eq!(list_path(dir, Path::new("/t/ sp/c/x.png")).unwrap(), "./ sp/c/x.png");
        let err = list_path(dir, Path::new("/t/train/c/x.png ")).unwrap_err().to_string();
        assert!(err.contains("ends with whitespace"), "{err}");
        let err = list_path(dir, Path::new("/elsewhere/x.png")).unwrap_err().to_string();
        assert!(err.contains("outside the task folder"), "{err}");
    }
}
