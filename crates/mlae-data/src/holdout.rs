//! Held-out splits carved from a folder task's `train` split (`data.split`), for photo trees
//! that only have `train/`. The split is stratified by class and a pure function of the file
//! listing and the seed, so every run and machine holds out the same images.

use crate::error::{DataError, Result};
use crate::rng::{DOMAIN_HOLDOUT, Rng};
use crate::split_file::Item;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

/// The split the held-out images are taken from, and the one the rest stays in.
pub const TRAIN_SPLIT: &str = "train";

/// `data.split = { val = 0.1, test = 0.1, seed = 0 }`: every key but `seed` names a held-out
/// split and the fraction of each class's `train` images it takes.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldoutSplit {
    /// Split name -> fraction in (0, 1); the fractions sum below 1. Taken in key order.
    pub fractions: BTreeMap<String, f64>,
    /// Seed of the per-class shuffle (0 when not given).
    pub seed: u64,
}

impl HoldoutSplit {
    /// Checks the names and fractions (deserialising does; this is for values built in code).
    /// The message starts with the key, `data.split.<key>`.
    pub fn validate(&self) -> Result<()> {
        for (name, &f) in &self.fractions {
            check_name(name)
                .and_then(|()| check_fraction(f))
                .map_err(|m| DataError::Invalid(format!("data.split.{name}: {m}")))?;
        }
        self.check_table().map_err(|m| DataError::Invalid(format!("data.split: {m}")))
    }

    /// What concerns the table as a whole: at least one split, fractions summing below 1.
    fn check_table(&self) -> std::result::Result<(), String> {
        if self.fractions.is_empty() {
            return Err("names no split; give at least one, e.g. { val = 0.1, seed = 0 }".into());
        }
        let sum: f64 = self.fractions.values().sum();
        if sum >= 1.0 {
            return Err(format!(
                "the fractions sum to {sum}; they must sum below 1 so that images stay in train"
            ));
        }
        Ok(())
    }

    /// Splits one class's images (its `train` files) into the held-out splits and `train`.
    /// The files are shuffled by a stream keyed on the seed and the class name (so adding a
    /// class leaves the others' splits alone), then each split in key order takes
    /// `round(fraction * n)` of them, always leaving at least one for `train`. Each part keeps
    /// the sorted order of `files`.
    pub(crate) fn assign(&self, class: &str, files: &[Item]) -> BTreeMap<String, Vec<Item>> {
        let n = files.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = Rng::new(self.seed, DOMAIN_HOLDOUT, class_key(class), 0);
        for i in (1..n).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut out = BTreeMap::new();
        let mut next = 0;
        for (name, &f) in &self.fractions {
            let want = (f * n as f64).round() as usize;
            let take = want.min(n.saturating_sub(1).saturating_sub(next));
            let mut picked: Vec<usize> = order[next..next + take].to_vec();
            picked.sort_unstable();
            out.insert(name.clone(), picked.into_iter().map(|i| files[i].clone()).collect());
            next += take;
        }
        let mut rest: Vec<usize> = order[next..].to_vec();
        rest.sort_unstable();
        out.insert(TRAIN_SPLIT.to_string(), rest.into_iter().map(|i| files[i].clone()).collect());
        out
    }
}

/// A stable 64-bit key of a class name (the first 8 bytes of its SHA-256).
fn class_key(class: &str) -> u64 {
    let d = Sha256::digest(class.as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// A held-out split name becomes `<name>.txt` in the run folder and a split name in configs.
fn check_name(name: &str) -> std::result::Result<(), String> {
    if name == TRAIN_SPLIT {
        return Err("`train` is where the remaining images stay; name the held-out splits otherwise".into());
    }
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("`{name}` is not a split name: use letters, digits, `_` and `-`"));
    }
    Ok(())
}

fn check_fraction(f: f64) -> std::result::Result<(), String> {
    if f > 0.0 && f < 1.0 { Ok(()) } else { Err(format!("the fraction must be in (0, 1), got {f}")) }
}

impl Serialize for HoldoutSplit {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.fractions.len() + 1))?;
        for (name, f) in &self.fractions {
            map.serialize_entry(name, f)?;
        }
        map.serialize_entry("seed", &self.seed)?;
        map.end()
    }
}

/// Deserialises one value of the table, knowing its key; every per-key error is raised while
/// reading the value, so a path-tracking deserialiser names `data.split.<key>`.
enum Entry {
    Seed,
    Fraction(String),
}

enum Parsed {
    Seed(u64),
    Fraction(f64),
}

impl<'de> DeserializeSeed<'de> for Entry {
    type Value = Parsed;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Parsed, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Entry {
    type Value = Parsed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Seed => f.write_str("a non-negative integer seed"),
            Entry::Fraction(name) => write!(f, "a fraction in (0, 1) for split `{name}`"),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Parsed, E> {
        match self {
            Entry::Seed => Ok(Parsed::Seed(v)),
            Entry::Fraction(name) => fraction(&name, v as f64),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Parsed, E> {
        match self {
            Entry::Seed if v >= 0 => Ok(Parsed::Seed(v as u64)),
            Entry::Seed => Err(E::custom(format!("the seed must be a non-negative integer, got {v}"))),
            Entry::Fraction(name) => fraction(&name, v as f64),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Parsed, E> {
        match self {
            Entry::Seed => Err(E::custom(format!("the seed must be a non-negative integer, got {v}"))),
            Entry::Fraction(name) => fraction(&name, v),
        }
    }
}

fn fraction<E: de::Error>(name: &str, f: f64) -> std::result::Result<Parsed, E> {
    check_name(name).and_then(|()| check_fraction(f)).map(|()| Parsed::Fraction(f)).map_err(E::custom)
}

impl<'de> Deserialize<'de> for HoldoutSplit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Table;
        impl<'de> Visitor<'de> for Table {
            type Value = HoldoutSplit;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of held-out split fractions and a seed, e.g. { val = 0.1, test = 0.1, seed = 0 }")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<HoldoutSplit, A::Error> {
                let mut out = HoldoutSplit { fractions: BTreeMap::new(), seed: 0 };
                while let Some(key) = map.next_key::<String>()? {
                    let entry = if key == "seed" { Entry::Seed } else { Entry::Fraction(key.clone()) };
                    match map.next_value_seed(entry)? {
                        Parsed::Seed(s) => out.seed = s,
                        Parsed::Fraction(f) => {
                            out.fractions.insert(key, f);
                        }
                    }
                }
                out.check_table().map_err(<A::Error as de::Error>::custom)?;
                Ok(out)
            }
        }
        d.deserialize_map(Table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse(text: &str) -> std::result::Result<HoldoutSplit, String> {
        #[derive(Deserialize)]
        struct Wrap {
            split: HoldoutSplit,
        }
        toml::from_str::<Wrap>(text).map(|w| w.split).map_err(|e| e.to_string())
    }

    #[test]
    fn tables_parse_and_serialise_back() {
        let s = parse("split = { val = 0.1, test = 0.2, seed = 7 }").unwrap();
        assert_eq!(s.seed, 7);
        assert_eq!(
            s.fractions.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(),
            [("test", 0.2), ("val", 0.1)]
        );
        let text = toml::to_string(&BTreeMap::from([("split", s.clone())])).unwrap();
        assert_eq!(parse(&text).unwrap(), s);
        assert_eq!(parse("split = { val = 0.25 }").unwrap().seed, 0);
    }

    #[test]
    fn bad_keys_and_values_are_refused_with_the_key() {
        for (text, want) in [
            ("split = { val = \"0.1\" }", "fraction in (0, 1) for split `val`"),
            ("split = { val = 1.5 }", "must be in (0, 1), got 1.5"),
            ("split = { val = 0 }", "must be in (0, 1), got 0"),
            ("split = { train = 0.1 }", "`train` is where"),
            ("split = { \"a/b\" = 0.1 }", "`a/b` is not a split name"),
            ("split = { val = 0.1, seed = -1 }", "non-negative"),
            ("split = { val = 0.1, seed = 0.5 }", "non-negative"),
            ("split = { val = 0.6, test = 0.4 }", "sum to 1"),
            ("split = { seed = 3 }", "names no split"),
            ("split = 0.1", "a table of held-out split fractions"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    fn files(n: usize) -> Vec<Item> {
        (0..n)
            .map(|i| Item { path: PathBuf::from(format!("/t/train/c/{i:03}.png")), label: 0, line: i + 1 })
            .collect()
    }

    #[test]
    fn each_split_takes_its_rounded_share_and_train_keeps_one() {
        let s =
            HoldoutSplit { fractions: BTreeMap::from([("test".into(), 0.2), ("val".into(), 0.1)]), seed: 1 };
        let parts = s.assign("dog", &files(20));
        let sizes: Vec<(&str, usize)> = parts.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
        assert_eq!(sizes, [("test", 4), ("train", 14), ("val", 2)]);
        let mut all: Vec<Item> = parts.values().flatten().cloned().collect();
        all.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(all, files(20), "a partition of the class's files");
        assert!(parts.values().all(|v| v.windows(2).all(|w| w[0].path < w[1].path)), "sorted");
        // one image: it stays in train; two images with 0.4 + 0.4: one held out, one kept
        let one = s.assign("cat", &files(1));
        assert_eq!((one["train"].len(), one["val"].len(), one["test"].len()), (1, 0, 0));
        let s = HoldoutSplit { fractions: BTreeMap::from([("a".into(), 0.45), ("b".into(), 0.45)]), seed: 0 };
        let two = s.assign("cat", &files(2));
        assert_eq!((two["a"].len(), two["b"].len(), two["train"].len()), (1, 0, 1));
    }
}
