//! The tensors of one foreign checkpoint while a converter takes them apart: lookups that fail
//! with the file and the key as the file spells it, shape checks, and the keys left over.

use crate::error::{Result, VitError};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

/// Keyed tensors of one file; converters `take` what they map and keep the rest.
pub(crate) struct Source<'p> {
    path: &'p Path,
    /// Prepended to keys in error messages: the part of the file's key that the converter
    /// stripped (`dinov2.`, `backbone.`), so the message shows the key as stored.
    prefix: String,
    /// (key without the prefix, whether the file had the prefix, tensor until taken)
    entries: Vec<(String, bool, Option<Tensor>)>,
    index: HashMap<String, usize>,
}

impl<'p> Source<'p> {
    pub(crate) fn new(path: &'p Path, tensors: Vec<(String, Tensor)>) -> Self {
        Self::with_prefix(path, tensors, "")
    }

    /// Keys under `prefix` lose it; others are kept as they are.
    pub(crate) fn with_prefix(path: &'p Path, tensors: Vec<(String, Tensor)>, prefix: &str) -> Self {
        let entries: Vec<(String, bool, Option<Tensor>)> = tensors
            .into_iter()
            .map(|(k, t)| match k.strip_prefix(prefix) {
                Some(rest) if !prefix.is_empty() => (rest.to_string(), true, Some(t)),
                _ => (k, false, Some(t)),
            })
            .collect();
        let index = entries.iter().enumerate().map(|(i, (k, _, _))| (k.clone(), i)).collect();
        Self { path, prefix: prefix.to_string(), entries, index }
    }

    pub(crate) fn path(&self) -> &'p Path {
        self.path
    }

    /// The key as the file stores it, for messages.
    pub(crate) fn stored(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.index.get(key).is_some_and(|&i| self.entries[i].2.is_some())
    }

    /// The error for a key the file lacks.
    pub(crate) fn missing(&self, key: &str) -> VitError {
        VitError::MissingKey { path: self.path.into(), key: self.stored(key) }
    }

    /// Removes and returns a tensor, or fails naming the file and the key.
    pub(crate) fn take(&mut self, key: &str) -> Result<Tensor> {
        self.index.get(key).and_then(|&i| self.entries[i].2.take()).ok_or_else(|| self.missing(key))
    }

    /// [`take`](Self::take) plus a check of the exact shape.
    pub(crate) fn take_shaped(&mut self, key: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.take(key)?;
        self.check_shape(key, &t, shape)?;
        Ok(t)
    }

    /// [`take`](Self::take) plus a check of the rank; `layout` names the dimensions for the
    /// message (e.g. `"(in, heads, head_dim)"`).
    pub(crate) fn take_rank(&mut self, key: &str, rank: usize, layout: &str) -> Result<Tensor> {
        let t = self.take(key)?;
        if t.dim() != rank {
            return Err(VitError::Format {
                path: self.path.into(),
                message: format!(
                    "`{}` has shape {:?}; expected {rank} dimensions {layout}",
                    self.stored(key),
                    t.size()
                ),
            });
        }
        Ok(t)
    }

    pub(crate) fn check_shape(&self, key: &str, t: &Tensor, shape: &[i64]) -> Result<()> {
        if t.size() != shape {
            return Err(VitError::ShapeMismatch {
                path: self.path.into(),
                key: self.stored(key),
                found: t.size(),
                expected: shape.to_vec(),
            });
        }
        Ok(())
    }

    /// The tensors nobody took, in file order, under their stored names; logged at debug level
    /// because the loader decides whether they matter.
    pub(crate) fn into_rest(self) -> Vec<(String, Tensor)> {
        let prefix = self.prefix;
        self.entries
            .into_iter()
            .filter_map(|(k, had_prefix, t)| t.map(|t| (k, had_prefix, t)))
            .map(|(k, had_prefix, t)| {
                let key = if had_prefix { format!("{prefix}{k}") } else { k };
                tracing::debug!(key = %key, shape = ?t.size(), "kept a tensor the converter does not map");
                (key, t)
            })
            .collect()
    }
}
