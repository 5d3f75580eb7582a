//! Config layering: a file may `extends` others, tables deep-merge, and `key.path=value`
//! overrides come last.
//!
//! `mlae-cli finetune` resolves a config with these rules, and `cargo xtask sweep` must resolve
//! it identically to fingerprint a run (a changed value anywhere in the chain must start the run
//! afresh), without linking libtorch. One implementation serves both.
//!
//! Rules:
//! - `extends = "base.toml"` or `extends = ["a.toml", "b.toml"]`, relative to the extending
//!   file; later bases win over earlier ones, the extending file wins over all of them;
//! - tables merge key by key, any other value replaces the one below it (arrays too);
//! - a cycle of `extends` is an error naming the file;
//! - an override's value is read as TOML (number, bool, array, quoted string) or else taken as a
//!   bare string, so `--set data.task=dtd` and `--set train.lr=1e-3` both do what they say;
//!   an unquoted text that TOML reads as a number, bool or date (`nan`, `inf`, `true`, `123`)
//!   is kept as text too ([`bare_text`]), for a key that turns out to want a string.

use crate::error::{FormatError, Result};
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// Reads a config file and everything it `extends`, merged.
pub fn load(path: &Path) -> Result<Table> {
    load_file(path, &mut Vec::new())
}

/// Resolves the `extends` of a table that came from (or will be written to) `origin`, which
/// need not exist yet: relative bases are taken from its directory.
pub fn resolve(table: Table, origin: &Path) -> Result<Table> {
    let mut stack = vec![origin.canonicalize().unwrap_or_else(|_| origin.to_path_buf())];
    resolve_in(table, origin, &mut stack)
}

fn load_file(path: &Path, stack: &mut Vec<PathBuf>) -> Result<Table> {
    let io = |source| FormatError::Io { path: path.to_path_buf(), source };
    let canon = path.canonicalize().map_err(io)?;
    if stack.contains(&canon) {
        return Err(invalid(path, "`extends` forms a cycle"));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let table: Table = text.parse().map_err(|e: toml::de::Error| invalid(path, e.to_string()))?;
    stack.push(canon);
    let merged = resolve_in(table, path, stack);
    stack.pop();
    merged
}

fn resolve_in(mut table: Table, origin: &Path, stack: &mut Vec<PathBuf>) -> Result<Table> {
    let bases = take_extends(&mut table, origin)?;
    let dir = origin.parent().unwrap_or(Path::new("."));
    let mut merged = Table::new();
    for base in bases {
        merge(&mut merged, load_file(&dir.join(base), stack)?);
    }
    merge(&mut merged, table);
    Ok(merged)
}

fn take_extends(table: &mut Table, origin: &Path) -> Result<Vec<String>> {
    let expected = |found: &Value| {
        invalid(origin, format!("extends: expected a file name or a list of them, found {found}"))
    };
    match table.remove("extends") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(expected(&other)),
            })
            .collect(),
        Some(other) => Err(expected(&other)),
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> FormatError {
    FormatError::Config { path: path.to_path_buf(), message: message.into() }
}

/// Deep merge: tables merge key by key; anything else in `top` replaces `base`.
pub fn merge(base: &mut Table, top: Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Splits `key.path=value`; the value is TOML or else a bare string. Errors are messages for
/// the caller to place (they know whether it was `--set` or a grid entry).
pub fn parse_override(text: &str) -> Result<(String, Value), String> {
    let (key, raw) = text.split_once('=').ok_or("expected key.path=value")?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(format!("`{key}` is not a key path"));
    }
    Ok((key.to_string(), parse_value(raw)))
}

/// A value as `--set` reads it: TOML if it parses, else the trimmed text as a string.
pub fn parse_value(raw: &str) -> Value {
    let raw = raw.trim();
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

/// The text of an override whose value TOML read as a number, bool or date although it was not
/// quoted (`output.name=nan`, `=inf`, `=true`, `=123`): a string-typed key takes this text
/// instead (see `ExperimentConfig::load`). `None` for strings, arrays and tables.
pub fn bare_text(text: &str) -> Option<String> {
    let (_, raw) = text.split_once('=')?;
    match parse_value(raw) {
        Value::String(_) | Value::Array(_) | Value::Table(_) => None,
        _ => Some(raw.trim().to_string()),
    }
}

/// Sets `a.b.c = value`, creating tables on the way.
pub fn set_path(table: &mut Table, key: &str, value: Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, parents) = parts.split_last().ok_or("empty key")?;
    let mut cur = table;
    for part in parents {
        let entry = cur.entry(part.to_string()).or_insert_with(|| Value::Table(Table::new()));
        cur = match entry {
            Value::Table(t) => t,
            _ => return Err(format!("`{part}` is not a table")),
        };
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

/// The value at `a.b.c`, if any.
pub fn get_path<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut cur = table.get(parts.next()?)?;
    for part in parts {
        cur = cur.as_table()?.get(part)?;
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn extends_chains_merge_and_later_files_win() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "base.toml", "[a]\nx = 1\ny = [1, 2]\n[a.deep]\nk = \"base\"\n");
        write(tmp.path(), "mid.toml", "extends = \"base.toml\"\n[a]\ny = [3]\n");
        write(tmp.path(), "frag.toml", "[a.deep]\nk = \"frag\"\n");
        let top = write(tmp.path(), "top.toml", "extends = [\"mid.toml\", \"frag.toml\"]\n[b]\nz = true\n");
        let t = load(&top).unwrap();
        assert_eq!(get_path(&t, "a.x"), Some(&Value::Integer(1)));
        assert_eq!(get_path(&t, "a.y"), Some(&Value::Array(vec![Value::Integer(3)])), "arrays replace");
        assert_eq!(get_path(&t, "a.deep.k").and_then(Value::as_str), Some("frag"));
        assert_eq!(get_path(&t, "b.z"), Some(&Value::Boolean(true)));
        assert!(t.get("extends").is_none());
        // the same from an in-memory table at a path that does not exist yet
        let mem: Table = "extends = [\"mid.toml\", \"frag.toml\"]\n[b]\nz = true\n".parse().unwrap();
        assert_eq!(resolve(mem, &tmp.path().join("not-yet.toml")).unwrap(), t);
    }

    #[test]
    fn cycles_missing_files_and_bad_extends_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "a.toml", "extends = \"b.toml\"\n");
        let b = write(tmp.path(), "b.toml", "extends = \"a.toml\"\n");
        let err = load(&b).unwrap_err().to_string();
        assert!(err.contains("b.toml") && err.contains("cycle"), "{err}");
        let m = write(tmp.path(), "m.toml", "extends = \"gone.toml\"\n");
        let err = load(&m).unwrap_err().to_string();
        assert!(err.contains("gone.toml"), "{err}");
        let n = write(tmp.path(), "n.toml", "extends = 3\n");
        let err = load(&n).unwrap_err().to_string();
        assert!(err.contains("n.toml") && err.contains("extends: expected a file name"), "{err}");
        let bad = write(tmp.path(), "bad.toml", "[a\n");
        assert!(load(&bad).unwrap_err().to_string().contains("bad.toml"));
    }

    #[test]
    fn overrides_read_toml_or_bare_strings_and_set_nested_keys() {
        assert_eq!(parse_override("train.lr=1e-3").unwrap(), ("train.lr".into(), Value::Float(1e-3)));
        assert_eq!(parse_override(" data.task = dtd ").unwrap().1, Value::String("dtd".into()));
        assert_eq!(parse_override("x.s=\"a b\"").unwrap().1, Value::String("a b".into()));
        assert!(parse_override("no-equals").is_err());
        assert!(parse_override("a..b=1").is_err());
        // numbers, bools and the float words are TOML; their text is kept for string keys
        for (text, raw) in [("o.n=nan", "nan"), ("o.n= inf", "inf"), ("o.n=true", "true"), ("o.n=123", "123")]
        {
            assert!(!parse_override(text).unwrap().1.is_str(), "{text}");
            assert_eq!(bare_text(text).as_deref(), Some(raw), "{text}");
        }
        assert_eq!(bare_text("o.n=1.50").as_deref(), Some("1.50"), "the text as typed, not 1.5");
        for text in ["o.n=\"nan\"", "o.n=dtd", "o.n=[1, 2]", "no-equals"] {
            assert_eq!(bare_text(text), None, "{text}");
        }
        let mut t = Table::new();
        set_path(&mut t, "a.b.c", Value::Integer(1)).unwrap();
        assert_eq!(get_path(&t, "a.b.c"), Some(&Value::Integer(1)));
        assert!(set_path(&mut t, "a.b.c.d", Value::Integer(2)).unwrap_err().contains("`c` is not a table"));
    }
}
