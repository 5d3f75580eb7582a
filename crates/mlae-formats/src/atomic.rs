//! The one atomic-write policy of the project: readers see the old file or the new one,
//! never a partial one, and a crash right after the call keeps the new one.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path`: the parent folder is created, then a temp file in it is written
/// and fsynced, renamed over `path`, and the folder is fsynced so the rename itself is durable.
/// The temp file is removed on failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // one temp name per call: two threads of a process may write the same file at once
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes a folder of files as one: `fill` writes into a fresh temp folder beside `dir`, which
/// then takes `dir`'s place by a rename, so a reader (or a process killed half-way) sees the
/// whole folder or none of it. An existing `dir` is replaced (moved aside first, removed
/// last: a kill between the two renames leaves no `dir`, never a mixed one). Temp folders left
/// by writers that died are removed first (those of live processes stay).
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    let parent = dir.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("dir");
    let prefix = format!(".{name}.tmp-");
    for entry in std::fs::read_dir(parent)?.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let pid = rest.trim_end_matches("-old");
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
    let staging = parent.join(format!("{prefix}{}", std::process::id()));
    let old = parent.join(format!("{prefix}{}-old", std::process::id()));
    std::fs::create_dir(&staging)?;
    let result = (|| {
        fill(&staging)?;
        if let Ok(d) = File::open(&staging) {
            let _ = d.sync_all();
        }
        let replaced = dir.exists();
        if replaced {
            std::fs::rename(dir, &old)?;
        }
        std::fs::rename(&staging, dir)?;
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
        if replaced {
            std::fs::remove_dir_all(&old)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// sha256 of bytes, lower-case hex (config hashes and sweep fingerprints).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_creates_the_folder_and_leaves_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("sub/x.json");
        write_atomic(&p, b"old").unwrap();
        write_atomic(&p, b"new contents").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new contents");
        let names: Vec<_> =
            std::fs::read_dir(tmp.path().join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // A path whose parent is a file cannot be written; the error is the OS's.
        assert!(write_atomic(&p.join("y"), b"z").is_err());
    }

    #[test]
    fn a_folder_is_written_whole_and_replaces_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        // what a writer killed earlier left
        std::fs::create_dir_all(tmp.path().join(".out.tmp-4194305/x")).unwrap();
        write_dir_atomic(&dir, |d| std::fs::write(d.join("a"), "1")).unwrap();
        std::fs::write(dir.join("stray"), "").unwrap();
        write_dir_atomic(&dir, |d| std::fs::write(d.join("b"), "2")).unwrap();
        let names = |p: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&dir), ["b"]);
        assert_eq!(names(tmp.path()), ["out"], "no temp folder stays");
        // a failing writer leaves the old folder as it was
        let err = write_dir_atomic(&dir, |d| {
            std::fs::write(d.join("c"), "3")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(names(&dir), ["b"]);
        assert_eq!(names(tmp.path()), ["out"]);
    }

    #[test]
    fn sha256_is_the_standard_digest() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
