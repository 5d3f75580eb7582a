//! A split's file read into items: `path label` list files (VTAB-1k, demo and `list` tasks)
//! and FGVC's JSON objects, each item keeping the line it came from for error messages.

use crate::error::{DataError, Location, Result, io_err};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// One image of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The image file (the list's relative path joined to the task or image folder).
    pub path: PathBuf,
    /// Class index in `0..num_classes` (FGVC ids already remapped).
    pub label: i64,
    /// 1-based line of the list file, or entry number of the JSON file.
    pub line: usize,
}

/// The items of one split, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitList {
    pub name: String,
    /// The list or JSON file.
    pub source: PathBuf,
    pub items: Vec<Item>,
    /// Whether `source` is a JSON file (item `line`s are then entry numbers).
    pub json: bool,
}

impl SplitList {
    /// Where item `i` is listed, for error messages.
    pub fn location(&self, i: usize) -> Location {
        Location::new(&self.source, self.items[i].line, self.json)
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the split has no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Parses `path label` lines. Blank lines and lines starting with `#` are skipped; the label
/// is the last whitespace-separated field, so paths may contain spaces. Returns the items and
/// the lines that could not be parsed, a line that is not UTF-8 text among them (the other
/// lines are still read, so `data check` lists every such line).
pub(crate) fn parse_list(bytes: &[u8], file: &Path, base: &Path) -> (Vec<Item>, Vec<(Location, String)>) {
    let mut items = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let at = Location::new(file, i + 1, false);
        let line = match std::str::from_utf8(raw) {
            Ok(text) => text.trim(),
            Err(e) => {
                bad.push((at, not_utf8(raw, e.valid_up_to())));
                continue;
            }
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((path, label)) = line.rsplit_once(char::is_whitespace) else {
            bad.push((at, format!("`{line}` has no label; expected `<image path> <label>`")));
            continue;
        };
        match label.parse::<i64>() {
            Ok(label) => items.push(Item { path: base.join(path.trim_end()), label, line: i + 1 }),
            Err(_) => bad.push((at, format!("label `{label}` is not an integer (line `{line}`)"))),
        }
    }
    (items, bad)
}

/// What is wrong with a list line that is not UTF-8 text: the line as far as it can be shown,
/// and the first offending byte with its column.
fn not_utf8(raw: &[u8], valid_up_to: usize) -> String {
    let shown = String::from_utf8_lossy(raw.trim_ascii());
    format!(
        "the line is not UTF-8 text (byte 0x{:02x} at column {}): `{shown}`; save the file as UTF-8",
        raw[valid_up_to],
        valid_up_to + 1
    )
}

/// The entries of a JSON object in file order (serde_json's map would sort them).
pub(crate) fn read_json_entries(path: &Path) -> Result<Vec<(String, serde_json::Value)>> {
    struct Entries(Vec<(String, serde_json::Value)>);
    impl<'de> Deserialize<'de> for Entries {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Entries;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object mapping image paths to class ids")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> std::result::Result<Entries, A::Error> {
                    let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                    while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                        out.push(entry);
                    }
                    Ok(Entries(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    let text = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice::<Entries>(&text)
        .map(|e| e.0)
        .map_err(|e| DataError::Json { path: path.to_path_buf(), message: e.to_string() })
}

/// A split whose largest class has more than this many times the images of its smallest gets
/// a note: accuracy then says little about the small classes.
const IMBALANCE_RATIO: usize = 3;

/// The note on a split's class imbalance, among the classes it has images of.
pub(crate) fn imbalance_note(list: &SplitList, names: &[String]) -> Option<String> {
    let mut counts = BTreeMap::<i64, usize>::new();
    for item in &list.items {
        *counts.entry(item.label).or_default() += 1;
    }
    let (&big, &most) = counts.iter().max_by_key(|(l, n)| (**n, std::cmp::Reverse(**l)))?;
    let (&small, &least) = counts.iter().min_by_key(|(l, n)| (**n, **l))?;
    let name = |l: i64| names.get(l as usize).cloned().unwrap_or_else(|| l.to_string());
    (most > IMBALANCE_RATIO * least).then(|| {
        format!(
            "class imbalance: the largest class, `{}`, has {most} images, {:.1}x the smallest, `{}`, with {least}",
            name(big),
            most as f64 / least as f64,
            name(small)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lines_parse_with_spaces_comments_and_crlf() {
        let text = "images/a.jpg 3\r\n\n# a comment\nimages/my photo.png 0\n";
        let (items, bad) = parse_list(text.as_bytes(), Path::new("t.txt"), Path::new("/d"));
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], Item { path: PathBuf::from("/d/images/a.jpg"), label: 3, line: 1 });
        assert_eq!(items[1].path, PathBuf::from("/d/images/my photo.png"));
        assert_eq!(items[1].line, 4);
    }

    #[test]
    fn bad_list_lines_name_the_line() {
        let (items, bad) = parse_list(b"a.jpg 1\nb.jpg\nc.jpg x\n", Path::new("t.txt"), Path::new("/d"));
        assert_eq!(items.len(), 1);
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].0.to_string(), "t.txt:2");
        assert!(bad[0].1.contains("no label"), "{}", bad[0].1);
        assert!(bad[1].1.contains("`x` is not an integer"), "{}", bad[1].1);
    }

    #[test]
    fn a_list_line_that_is_not_utf8_names_the_file_and_line() {
        // `caf\xe9` is Latin-1; the lines around it still parse.
        let (items, bad) =
            parse_list(b"a.jpg 1\r\nimages/caf\xe9.jpg 2\nc.jpg 0\n", Path::new("t.txt"), Path::new("/d"));
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].line, 3);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0.to_string(), "t.txt:2");
        assert!(bad[0].1.contains("not UTF-8") && bad[0].1.contains("0xe9 at column 11"), "{}", bad[0].1);
    }
}
