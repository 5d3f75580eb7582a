//! Where adapters go: the linear layers of a ViT block ([`TargetLayer`]) and one adapted
//! layer of a model ([`LayerSite`]), shared by every method.

use crate::error::SpecError;
use crate::names::named_enum;
use serde::{Deserialize, Serialize};

/// A linear layer of a ViT block that an adapter can wrap. Serde names are lowercase.
///
/// ```
/// use mlae_core::TargetLayer;
/// assert_eq!(TargetLayer::Qkv.module_path(), "attn.qkv");
/// assert_eq!("fc2".parse::<TargetLayer>().unwrap(), TargetLayer::Fc2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetLayer {
    /// The fused query/key/value projection, dim -> 3 dim (the paper's placement).
    Qkv,
    /// The attention output projection, dim -> dim.
    Proj,
    /// The first MLP layer, dim -> mlp_dim.
    Fc1,
    /// The second MLP layer, mlp_dim -> dim.
    Fc2,
    /// The query rows of the fused qkv (rows 0..dim of its weight), dim -> dim: an adapter of
    /// its own on that slice, as if q were a separate linear layer (the lineage's "LoRA on q
    /// and v" inside timm's fused qkv).
    Q,
    /// The key rows of the fused qkv (dim..2 dim).
    K,
    /// The value rows of the fused qkv (2 dim..3 dim).
    V,
}

named_enum!(TargetLayer, "adapter.targets", {
    Qkv => "qkv", Proj => "proj", Fc1 => "fc1", Fc2 => "fc2", Q => "q", K => "k", V => "v"
});

impl TargetLayer {
    /// The four whole linear layers of a block (every target but the q/k/v slices).
    pub const WHOLE: &'static [TargetLayer] =
        &[TargetLayer::Qkv, TargetLayer::Proj, TargetLayer::Fc1, TargetLayer::Fc2];

    /// The module path inside a timm block (`blocks.N.<path>`), as used by timm and PEFT keys.
    /// For the q/k/v slices, a name beside the fused layer's (`attn.q`): timm has no such
    /// module, the slice lives in [`TargetLayer::fused`].
    pub fn module_path(self) -> &'static str {
        match self {
            TargetLayer::Qkv => "attn.qkv",
            TargetLayer::Proj => "attn.proj",
            TargetLayer::Fc1 => "mlp.fc1",
            TargetLayer::Fc2 => "mlp.fc2",
            TargetLayer::Q => "attn.q",
            TargetLayer::K => "attn.k",
            TargetLayer::V => "attn.v",
        }
    }

    /// The linear layer of the block that holds this target: `qkv` for its slices, else itself.
    ///
    /// ```
    /// use mlae_core::TargetLayer;
    /// assert_eq!(TargetLayer::V.fused(), TargetLayer::Qkv);
    /// assert_eq!(TargetLayer::V.qkv_slice(), Some(2));
    /// assert_eq!(TargetLayer::Proj.fused(), TargetLayer::Proj);
    /// ```
    pub fn fused(self) -> TargetLayer {
        if self.qkv_slice().is_some() { TargetLayer::Qkv } else { self }
    }

    /// Which third of the fused qkv's output rows a slice target adapts (q 0, k 1, v 2).
    pub fn qkv_slice(self) -> Option<usize> {
        match self {
            TargetLayer::Q => Some(0),
            TargetLayer::K => Some(1),
            TargetLayer::V => Some(2),
            _ => None,
        }
    }
}

/// One adapted linear layer of a model: which block, which layer of it.
///
/// ```
/// use mlae_core::{LayerSite, TargetLayer};
/// let s = LayerSite { block: 2, target: TargetLayer::Qkv };
/// assert_eq!(s.name(), "blocks.2.attn.qkv");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSite {
    /// Block index, from 0.
    pub block: usize,
    /// Which linear layer of the block.
    pub target: TargetLayer,
}

impl LayerSite {
    /// A stable name, `blocks.<block>.<module path>`, as in timm and PEFT keys.
    pub fn name(&self) -> String {
        format!("blocks.{}.{}", self.block, self.target.module_path())
    }
}

impl std::fmt::Display for LayerSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Checks `adapter.targets` for a method that adapts layers: not empty, no repeats.
pub(crate) fn check_targets(targets: &[TargetLayer]) -> Result<(), SpecError> {
    if targets.is_empty() {
        return Err(SpecError::invalid(
            "adapter.targets",
            "is empty; list at least one of qkv, proj, fc1, fc2 (or q, k, v: slices of qkv)",
        ));
    }
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].contains(t) {
            return Err(SpecError::invalid("adapter.targets", format!("{t} is listed twice")));
        }
        if t.qkv_slice().is_some() && targets.contains(&TargetLayer::Qkv) {
            return Err(SpecError::invalid(
                "adapter.targets",
                format!(
                    "{t} is a slice of qkv, which is adapted whole too; list qkv or its slices (q, k, v)"
                ),
            ));
        }
    }
    Ok(())
}

/// Every adapted layer, block by block and within a block in the order of `targets`: the
/// plan order, whose index is the `layer` of the mask draws (so masks replay from
/// (seed, step)).
///
/// ```
/// use mlae_core::{TargetLayer, target::sites};
/// let s = sites(&[TargetLayer::Fc1, TargetLayer::Qkv], 2);
/// assert_eq!(s.iter().map(|s| s.name()).collect::<Vec<_>>(),
///            ["blocks.0.mlp.fc1", "blocks.0.attn.qkv", "blocks.1.mlp.fc1", "blocks.1.attn.qkv"]);
/// ```
pub fn sites(targets: &[TargetLayer], depth: usize) -> Vec<LayerSite> {
    (0..depth).flat_map(|block| targets.iter().map(move |&target| LayerSite { block, target })).collect()
}
