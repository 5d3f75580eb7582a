//! Which keys of `[adapter]` a kind reads: a config may write only those ([`refuse_unread`]),
//! and a stored spec writes only those ([`ReadKeys`]).
//!
//! To refuse only what a person wrote (a default nobody wrote is never refused), each section
//! is read with the keys it was written with ([`Written`]). The keys are recorded while serde
//! reads the table (any self-describing format: a config's TOML, an adapter file's JSON), and
//! the table's own type still does all the parsing, so its errors (unknown fields, wrong
//! types) are unchanged.

use super::AdapterKind;
use crate::error::SpecError;
use crate::method::{Method, Section};
use serde::de::value::{MapAccessDeserializer, StrDeserializer};
use serde::de::{DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::marker::PhantomData;

/// A table and its top-level keys (in the order the format gives them).
#[derive(Debug)]
pub(crate) struct Written<T> {
    pub(crate) value: T,
    pub(crate) keys: Vec<String>,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Written<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(Tables(PhantomData))
    }
}

struct Tables<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for Tables<T> {
    type Value = Written<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Written<T>, A::Error> {
        let mut keys = Vec::new();
        let value = T::deserialize(MapAccessDeserializer::new(Recording { map, keys: &mut keys }))?;
        Ok(Written { value, keys })
    }
}

/// Passes a map through, noting each key.
struct Recording<'k, A> {
    map: A,
    keys: &'k mut Vec<String>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Recording<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let Some(key) = self.map.next_key::<String>()? else { return Ok(None) };
        let de: StrDeserializer<'_, A::Error> = key.as_str().into_deserializer();
        let value = seed.deserialize(de)?;
        self.keys.push(key);
        Ok(Some(value))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

/// A method's section as a stored spec writes it: the keys the method reads.
pub(super) struct ReadKeys<'a, M: Method>(pub(super) &'a M::Section, pub(super) PhantomData<M>);

impl<M: Method> Serialize for ReadKeys<'_, M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_read(M::UNREAD_KEYS, serializer)
    }
}

/// Refuses a section that `kind` does not read, or a key of its section that it does not
/// read, that a config wrote; the error names the key and the kinds that read it.
pub(super) fn refuse_unread(kind: AdapterKind, section: &str, keys: &[String]) -> Result<(), SpecError> {
    let readers = |key: Option<&str>| -> Vec<AdapterKind> {
        AdapterKind::ALL
            .iter()
            .copied()
            .filter(|k| k.section() == Some(section) && key.is_none_or(|key| !k.unread_keys().contains(&key)))
            .collect()
    };
    let refuse = |field: String, key: Option<&str>| {
        let only = match readers(key).as_slice() {
            [] => "no kind does".to_string(),
            [one] => format!("only {one} does"),
            [some @ .., last] => {
                let some: Vec<&str> = some.iter().map(|k| k.as_str()).collect();
                format!("only {} and {last} do", some.join(", "))
            }
        };
        Err(SpecError::invalid(field, format!("kind {kind} does not read it ({only})")))
    };
    if kind.section() != Some(section) {
        return refuse(format!("adapter.{section}"), None);
    }
    match keys.iter().find(|key| kind.unread_keys().contains(&key.as_str())) {
        Some(key) => refuse(format!("adapter.{section}.{key}"), Some(key)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct T {
        a: u32,
        b: Option<f64>,
        c: Vec<String>,
    }

    #[test]
    fn keys_are_those_written_and_the_value_parses_as_its_type() {
        let mut w: Written<T> = toml::from_str("b = 0.5\na = 3").unwrap();
        w.keys.sort();
        assert_eq!((w.value, w.keys), (T { a: 3, b: Some(0.5), c: vec![] }, vec!["a".into(), "b".into()]));
        let w: Written<T> = serde_json::from_str(r#"{"c": ["x"]}"#).unwrap();
        assert_eq!((w.value.c, w.keys), (vec!["x".to_string()], vec!["c".to_string()]));
        let w: Written<T> = toml::from_str("").unwrap();
        assert!(w.keys.is_empty());
        // the type's own errors
        let e = toml::from_str::<Written<T>>("d = 1").unwrap_err().to_string();
        assert!(e.contains("unknown field `d`") && e.contains("expected one of"), "{e}");
        let e = toml::from_str::<Written<T>>("a = 'x'").unwrap_err().to_string();
        assert!(e.contains("invalid type"), "{e}");
    }
}
