//! Config layering: a file may `extends` others, tables deep-merge, a file may remove or copy
//! what the files below it set, and `key.path=value` overrides come last.
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
//! - `unset = ["adapter", "train.min_lr"]` removes those key paths (tables with everything in
//!   them) from what was layered below the file: its bases, and the files before it in a list
//!   of bases or of `--config` files. A path that is not set is left alone. This is how a
//!   fragment switches the method of a task config: a kind's config may not hold the tables
//!   of other kinds (mlae-core's `AdapterSpec`), so the fragment replaces `[adapter]`;
//! - `copy = { "adapter.lora.update_dropout" = "adapter.mlae.expert_dropout" }` sets each key
//!   to the value its source has below the file (read before `unset` applies), an error when
//!   nothing below sets the source. The file's own keys win over both;
//! - an override's value is read as TOML (number, bool, array, quoted string) or else taken as a
//!   bare string, so `--set data.task=dtd` and `--set train.lr=1e-3` both do what they say;
//!   an unquoted text that TOML reads as a number, bool or date (`nan`, `inf`, `true`, `123`)
//!   is kept as text too ([`bare_text`]), for a key that turns out to want a string.

use crate::error::{FormatError, Result};
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// Reads a config file and everything it `extends`, merged.
pub fn load(path: &Path) -> Result<Table> {
    let mut merged = Table::new();
    layer(&mut merged, path)?;
    Ok(merged)
}

/// Layers a config file and everything it `extends` on `below` (the files given before it):
/// its `unset` and `copy` act on `below` too.
pub fn layer(below: &mut Table, path: &Path) -> Result<()> {
    layer_file(below, path, &mut Vec::new())
}

/// Resolves the `extends` of a table that came from (or will be written to) `origin`, which
/// need not exist yet: relative bases are taken from its directory.
pub fn resolve(table: Table, origin: &Path) -> Result<Table> {
    let mut stack = vec![origin.canonicalize().unwrap_or_else(|_| origin.to_path_buf())];
    let mut merged = Table::new();
    layer_table(&mut merged, table, origin, &mut stack)?;
    Ok(merged)
}

fn layer_file(below: &mut Table, path: &Path, stack: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| FormatError::Io { path: path.to_path_buf(), source };
    let canon = path.canonicalize().map_err(io)?;
    if stack.contains(&canon) {
        return Err(invalid(path, "`extends` forms a cycle"));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let table: Table = text.parse().map_err(|e: toml::de::Error| invalid(path, e.to_string()))?;
    stack.push(canon);
    let layered = layer_table(below, table, path, stack);
    stack.pop();
    layered
}

/// Layers `table` (from `origin`) on `below`: its bases first, then its `copy` and `unset`,
/// then its own keys. Tables merge key by key whichever way the files are grouped, so layering
/// every file on one table in order gives what merging each file's own merge would.
fn layer_table(below: &mut Table, mut table: Table, origin: &Path, stack: &mut Vec<PathBuf>) -> Result<()> {
    let bases = take_extends(&mut table, origin)?;
    let unset = take_unset(&mut table, origin)?;
    let copy = take_copy(&mut table, origin)?;
    let dir = origin.parent().unwrap_or(Path::new("."));
    for base in bases {
        layer_file(below, &dir.join(base), stack)?;
    }
    let copied = copy
        .into_iter()
        .map(|(to, from)| match get_path(below, &from) {
            Some(v) => Ok((to, v.clone())),
            None => Err(invalid(origin, format!("copy: `{from}` (for `{to}`) is not set below this file"))),
        })
        .collect::<Result<Vec<_>>>()?;
    for key in &unset {
        remove_path(below, key);
    }
    for (to, value) in copied {
        set_path(below, &to, value).map_err(|m| invalid(origin, format!("copy: {m}")))?;
    }
    merge(below, table);
    Ok(())
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

/// `unset = ["a.b", ...]`: key paths.
fn take_unset(table: &mut Table, origin: &Path) -> Result<Vec<String>> {
    let expected =
        |found: &Value| invalid(origin, format!("unset: expected a list of key paths, found {found}"));
    match table.remove("unset") {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) if is_key_path(&s) => Ok(s),
                other => Err(expected(&other)),
            })
            .collect(),
        Some(other) => Err(expected(&other)),
    }
}

/// `copy = { "to.key" = "from.key", ... }`.
fn take_copy(table: &mut Table, origin: &Path) -> Result<Vec<(String, String)>> {
    let expected = |found: &Value| {
        invalid(
            origin,
            format!("copy: expected a table of key paths (\"to.key\" = \"from.key\"), found {found}"),
        )
    };
    match table.remove("copy") {
        None => Ok(Vec::new()),
        Some(Value::Table(items)) => items
            .into_iter()
            .map(|(to, from)| match from {
                Value::String(from) if is_key_path(&to) && is_key_path(&from) => Ok((to, from)),
                other => Err(expected(&other)),
            })
            .collect(),
        Some(other) => Err(expected(&other)),
    }
}

fn is_key_path(s: &str) -> bool {
    !s.is_empty() && !s.split('.').any(str::is_empty)
}

/// Removes `a.b.c` (with everything below it) if it is set.
fn remove_path(table: &mut Table, key: &str) {
    match key.split_once('.') {
        None => {
            table.remove(key);
        }
        Some((first, rest)) => {
            if let Some(Value::Table(t)) = table.get_mut(first) {
                remove_path(t, rest);
            }
        }
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

/// Which of `overrides` (`key.path=value` texts, in the order they were applied) a config error
/// comes from, so that the error can name the `--set` rather than the config file.
///
/// `message` is the error's message, which starts with the key at fault
/// (`train.lr: must be positive, got -1`, `train.epochs: invalid type: ...`); for an unknown key
/// serde gives the table's path and names the key (`train: unknown field `epohcs`, ...`). The
/// override is the last one that set that key or a table above it, or one that set a key below
/// it where a value was expected (`--set train.lr.x=1` makes `train.lr` a table) or where the
/// key is unknown. `None` when the message names no key that an override set: the value came
/// from a file.
pub fn override_behind<'a>(overrides: &'a [String], message: &str) -> Option<&'a str> {
    let (key, rest) = error_key(message)?;
    if rest.contains("missing field") {
        // an override only adds keys: a missing one is the file's
        return None;
    }
    // a key below the one at fault counts where a value was expected, or where the key at fault
    // is unknown (`--set trian.epochs=3` makes the table `trian`)
    let below_counts = rest.contains("invalid type: map") || rest.contains("unknown field");
    overrides
        .iter()
        .rev()
        .find(|ov| {
            let Ok((set, _)) = parse_override(ov) else {
                return false;
            };
            let above = |a: &str, b: &str| b.strip_prefix(a).is_some_and(|r| r.starts_with('.'));
            set == key || above(&set, &key) || (below_counts && above(&key, &set))
        })
        .map(String::as_str)
}

/// The key path a config error message starts with (`a.b.c`, followed by `:` or a space or
/// nothing) and the rest of the message. Made precise where serde's path stops at a table: an
/// unknown key (`a.b: unknown field `c`` is about `a.b.c`, and one on the root path `.` about
/// `c`), or a message that names a key inside the table (`adapter: adapter.dropout was
/// renamed ...` is about `adapter.dropout`).
fn error_key(message: &str) -> Option<(String, &str)> {
    let (key, rest) = leading_key(message)?;
    let unknown =
        rest.split_once("unknown field `").and_then(|(_, r)| r.split_once('`')).map(|(name, _)| name);
    let inner = rest.strip_prefix(": ").and_then(leading_key).map(|(k, _)| k);
    let key = match (unknown, inner) {
        (Some(name), _) if key == "." => name.to_string(),
        (Some(name), _) if key != name && !key.ends_with(&format!(".{name}")) => format!("{key}.{name}"),
        (_, Some(inner)) if inner.strip_prefix(key).is_some_and(|r| r.starts_with('.')) => inner.to_string(),
        _ if key == "." => return None,
        _ => key.to_string(),
    };
    Some((key, rest))
}

/// A key path at the start of `text`, followed by `:`, a space or nothing, and what follows it.
fn leading_key(text: &str) -> Option<(&str, &str)> {
    let is_key = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
    let end = text.find(|c: char| !is_key(c)).unwrap_or(text.len());
    let (key, rest) = text.split_at(end);
    (!key.is_empty() && (rest.is_empty() || rest.starts_with([':', ' ']))).then_some((key, rest))
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
    use crate::testing::write;

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
    fn unset_and_copy_act_on_everything_below_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "task.toml",
            "[adapter]\nkind = \"mlae\"\ntargets = [\"qkv\"]\n[adapter.mlae]\nexpert_dropout = 0.7\n\
             [adapter.mlae.mask]\nstrategy = \"mixed\"\n[train]\nepochs = 5\nmin_lr = 0.1\n",
        );
        let frag = write(
            tmp.path(),
            "frag.toml",
            "unset = [\"adapter\", \"train.min_lr\", \"not.there\"]\n\
             copy = { \"adapter.lora.update_dropout\" = \"adapter.mlae.expert_dropout\" }\n\
             [adapter]\nkind = \"lora-dropout\"\n[adapter.lora]\nrank = 4\n",
        );
        let want: Table =
            "[adapter]\nkind = \"lora-dropout\"\n[adapter.lora]\nrank = 4\nupdate_dropout = 0.7\n\
                           [train]\nepochs = 5\n"
                .parse()
                .unwrap();
        // a file after the task config in a list of files, as `--config a --config b` layers them
        let mut t = load(&tmp.path().join("task.toml")).unwrap();
        layer(&mut t, &frag).unwrap();
        assert_eq!(t, want);
        // a fragment after the task config in one `extends` list, as a sweep's run config has it
        let run: Table = "extends = [\"task.toml\", \"frag.toml\"]\n[train]\nepochs = 2\n".parse().unwrap();
        let t = resolve(run, &tmp.path().join("run.toml")).unwrap();
        assert_eq!(get_path(&t, "adapter.lora.update_dropout"), Some(&Value::Float(0.7)));
        assert_eq!(get_path(&t, "train.epochs"), Some(&Value::Integer(2)), "the file's own keys win");
        assert!(get_path(&t, "adapter.mlae").is_none() && get_path(&t, "train.min_lr").is_none());
        // a file that extends the fragment: the fragment still acts on what is below it
        write(tmp.path(), "both.toml", "extends = [\"task.toml\", \"frag.toml\"]\n");
        let mut t = Table::new();
        layer(&mut t, &tmp.path().join("both.toml")).unwrap();
        assert_eq!(t, want);
        // its own keys are not unset: a file may unset a table and write it anew
        let own = write(tmp.path(), "own.toml", "unset = [\"train\"]\n[train]\nlr = 1.0\n");
        let mut t = load(&tmp.path().join("task.toml")).unwrap();
        layer(&mut t, &own).unwrap();
        assert_eq!(t.get("train"), Some(&Value::Table("lr = 1.0".parse().unwrap())));
        // without the directives a file layers as before
        let plain = write(tmp.path(), "plain.toml", "[train]\nepochs = 9\n");
        let mut t = load(&tmp.path().join("task.toml")).unwrap();
        let mut merged = t.clone();
        merge(&mut merged, load(&plain).unwrap());
        layer(&mut t, &plain).unwrap();
        assert_eq!(t, merged);
    }

    #[test]
    fn bad_unset_and_copy_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = |name: &str, text: &str| {
            let p = write(tmp.path(), name, text);
            load(&p).unwrap_err().to_string()
        };
        let e = bad("a.toml", "unset = \"adapter\"\n");
        assert!(e.contains("a.toml") && e.contains("unset: expected a list of key paths"), "{e}");
        let e = bad("b.toml", "unset = [\"a..b\"]\n");
        assert!(e.contains("b.toml") && e.contains("unset"), "{e}");
        let e = bad("c.toml", "copy = { \"a.b\" = 1 }\n");
        assert!(e.contains("c.toml") && e.contains("copy: expected a table of key paths"), "{e}");
        let e = bad("d.toml", "copy = { \"a.b\" = \"x.y\" }\n");
        assert!(
            e.contains("d.toml") && e.contains("copy: `x.y` (for `a.b`) is not set below this file"),
            "{e}"
        );
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
    fn config_errors_are_traced_to_the_override_that_set_the_key() {
        let ovs: Vec<String> = [
            "train.epochs=abc",
            "train.lr=1e-3",
            "adapter.mlae.expert_dropout=1.5",
            "model.x.y=1",
            "train.lr=-1",
        ]
        .map(String::from)
        .to_vec();
        let behind = |message: &str| override_behind(&ovs, message);
        assert_eq!(
            behind("train.epochs: invalid type: string \"abc\", expected u64"),
            Some("train.epochs=abc")
        );
        assert_eq!(behind("train.lr: must be positive, got -1"), Some("train.lr=-1"), "the last one wins");
        assert_eq!(
            behind("adapter.mlae.expert_dropout: must be in [0, 1), got 1.5"),
            Some("adapter.mlae.expert_dropout=1.5")
        );
        // an unknown key: serde names the table and the key
        let unknown = ["train.epohcs=3".to_string()];
        assert_eq!(
            override_behind(&unknown, "train: unknown field `epohcs`, expected one of `epochs`"),
            Some("train.epohcs=3")
        );
        assert_eq!(override_behind(&unknown, "train.epohcs: unknown field `epohcs`"), Some("train.epohcs=3"));
        assert_eq!(
            override_behind(
                &unknown,
                "train.epohcs: unknown field `epohcs`, expected one of `epochs`\nin `train`\n"
            ),
            Some("train.epohcs=3")
        );
        let renamed = ["adapter.dropout=0.5".to_string()];
        assert_eq!(
            override_behind(
                &renamed,
                "adapter: adapter.dropout was renamed: use adapter.mlae.expert_dropout"
            ),
            Some("adapter.dropout=0.5")
        );
        let top = ["trian.epochs=3".to_string()];
        assert_eq!(
            override_behind(&top, ".: unknown field `trian`, expected one of `model`"),
            Some("trian.epochs=3")
        );
        // a key below a value turned the value into a table
        assert_eq!(behind("model.x: invalid type: map, expected a string"), Some("model.x.y=1"));
        // ...but an error about a key that no override set is the file's
        assert_eq!(behind("train: unknown field `batch_szie`, expected one of `epochs`"), None);
        assert_eq!(behind("train.batch_size: must be at least 1, got 0"), None);
        assert_eq!(behind("train: missing field `lr`"), None);
        assert_eq!(behind("the split is empty"), None);
        assert_eq!(override_behind(&[], "train.epochs: invalid type"), None);
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
