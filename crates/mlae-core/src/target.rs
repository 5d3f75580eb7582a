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
}

named_enum!(TargetLayer, "adapter.targets", { Qkv => "qkv", Proj => "proj", Fc1 => "fc1", Fc2 => "fc2" });

impl TargetLayer {
    /// The module path inside a timm block (`blocks.N.<path>`), as used by timm and PEFT keys.
    pub fn module_path(self) -> &'static str {
        match self {
            TargetLayer::Qkv => "attn.qkv",
            TargetLayer::Proj => "attn.proj",
            TargetLayer::Fc1 => "mlp.fc1",
            TargetLayer::Fc2 => "mlp.fc2",
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

/// Checks `adapter.targets` for a method that adapts layers: not empty, no repeats.
pub(crate) fn check_targets(targets: &[TargetLayer]) -> Result<(), SpecError> {
    if targets.is_empty() {
        return Err(SpecError::invalid(
            "adapter.targets",
            "is empty; list at least one of qkv, proj, fc1, fc2",
        ));
    }
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].contains(t) {
            return Err(SpecError::invalid("adapter.targets", format!("{t} is listed twice")));
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
