//! Split files name images relative to their task folder. A line such as `/etc/passwd 0` or
//! `../../../etc/hostname 0` would have the loader open any file the user can read; such paths
//! are refused unless the config says otherwise (`data.allow_outside_paths`).
//!
//! The check is lexical (it reads the path, not the file system): a symlink inside the task
//! folder may still point elsewhere, which is the owner of the folder's choice.

use crate::error::{DataError, Location};
use crate::split_file::Item;
use std::path::{Component, Path};

/// Why `path` (an item's file: the split file's path joined to the task or image folder) is
/// outside the task folder `dir`, or `None` when it is inside.
pub(crate) fn outside(dir: &Path, path: &Path) -> Option<String> {
    let Ok(rel) = path.strip_prefix(dir) else {
        return Some(format!("`{}` is an absolute path outside the task folder", path.display()));
    };
    let mut depth = 0usize;
    for c in rel.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Some(format!("`{}` climbs out of the task folder with `..`", rel.display()));
            }
        }
    }
    None
}

/// Splits `items` into those inside the task folder `dir` and one problem per item outside
/// it, each naming the split file and line (or JSON entry). With `allow` every item is kept.
pub(crate) fn keep_inside(
    items: Vec<Item>,
    split_file: &Path,
    dir: &Path,
    json: bool,
    allow: bool,
) -> (Vec<Item>, Vec<DataError>) {
    if allow {
        return (items, Vec::new());
    }
    let mut problems = Vec::new();
    let kept = items
        .into_iter()
        .filter(|item| match outside(dir, &item.path) {
            None => true,
            Some(why) => {
                problems.push(DataError::BadEntry {
                    at: Location::new(split_file, item.line, json),
                    message: format!(
                        "{why} ({}); image paths are relative to the task folder; to read files \
                         elsewhere set data.allow_outside_paths = true",
                        dir.display()
                    ),
                });
                false
            }
        })
        .collect();
    (kept, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn item(dir: &str, rel: &str, line: usize) -> Item {
        Item { path: Path::new(dir).join(rel), label: 0, line }
    }

    #[test]
    fn paths_inside_the_task_folder_pass() {
        for rel in
            ["a.png", "images/train/0001.jpg", "./a.png", "images/../a.png", "a/b/../../c.png", "a b.png"]
        {
            assert_eq!(outside(Path::new("/data/t"), &Path::new("/data/t").join(rel)), None, "{rel}");
        }
    }

    #[test]
    fn absolute_paths_and_climbing_out_are_named() {
        let dir = Path::new("/data/t");
        // the loader joins a line to the task folder; an absolute line replaces it
        let why = outside(dir, Path::new("/etc/passwd")).unwrap();
        assert!(why.contains("`/etc/passwd` is an absolute path"), "{why}");
        for rel in ["../../../etc/hostname", "..", "images/../../x.png", "a/../../t/x.png"] {
            let why = outside(dir, &dir.join(rel)).unwrap_or_else(|| panic!("{rel} passed"));
            assert!(why.contains("climbs out") && why.contains(rel), "{why}");
        }
    }

    #[test]
    fn items_outside_are_problems_naming_file_and_line_unless_allowed() {
        let items = vec![item("/d", "a.png", 1), item("/d", "/etc/passwd", 2), item("/d", "../x.png", 4)];
        let file = PathBuf::from("/d/train.txt");
        let (kept, problems) = keep_inside(items.clone(), &file, Path::new("/d"), false, false);
        assert_eq!(kept, items[..1]);
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(text[0].starts_with("/d/train.txt:2: `/etc/passwd`"), "{text:?}");
        assert!(text[1].starts_with("/d/train.txt:4: `../x.png`"), "{text:?}");
        assert!(text.iter().all(|t| t.contains("data.allow_outside_paths = true")), "{text:?}");
        let (_, problems) = keep_inside(items.clone(), &file, Path::new("/d"), true, false);
        assert!(problems[0].to_string().contains("(entry 2)"));
        let (kept, problems) = keep_inside(items.clone(), &file, Path::new("/d"), false, true);
        assert_eq!((kept, problems.len()), (items, 0));
    }
}
