//! Helpers the crate's unit tests share.

use std::path::{Path, PathBuf};

/// Writes `text` to `dir/name` and returns the path (config files for the layering and
/// config tests).
pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
