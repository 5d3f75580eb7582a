//! The `[adapter]` keys that were renamed, checked on every parse of an adapter table: the
//! flat layout that per-method tables replaced put `experts`, `expert_rank`, `coeff_init`,
//! `lora_alpha`, `dropout` and `[adapter.mask]` directly under `[adapter]`, where `experts`
//! and `dropout` meant something else for every kind.
//!
//! In a config a person writes, an old key is an error that names its new place: one key that
//! means one thing is the point of the change, and guessing which method an old `dropout`
//! meant would bring the ambiguity back. A spec the toolkit stored itself (a run directory's
//! `config.toml`, an adapter file's metadata) states its kind, so it is upgraded instead, and
//! old runs resume and old adapter files load.

use super::{AdapterKind, AdapterSpec};
use crate::error::SpecError;
use crate::methods::mlae::{MaskSpec, MaskStrategy};
use crate::pattern::LayerPattern;
use serde::Deserialize;

/// Old key under `[adapter]` -> where its meaning lives now.
const RENAMED: &[(&str, &str)] = &[
    (
        "experts",
        "adapter.mlae.experts (mlae), adapter.lora.rank (lora, lora-dropout) or adapter.dmlora.branch_rank \
         (dmlora)",
    ),
    ("expert_rank", "adapter.mlae.expert_rank"),
    ("coeff_init", "adapter.mlae.coeff_init"),
    ("lora_alpha", "adapter.lora.alpha"),
    (
        "dropout",
        "adapter.mlae.expert_dropout (mlae), adapter.lora.input_dropout (lora) or adapter.lora.update_dropout \
         (lora-dropout)",
    ),
    ("mask", "[adapter.mlae.mask] (with p_per_layer renamed expert_dropout_per_layer)"),
];

/// The old `[adapter.mask]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlatMask {
    strategy: MaskStrategy,
    pattern: LayerPattern,
    experts_per_layer: Option<Vec<usize>>,
    p_per_layer: Option<Vec<f64>>,
    seed: u64,
}

/// The old keys found in an `[adapter]` table.
#[derive(Debug, Default)]
pub(super) struct FlatKeys {
    pub(super) experts: Option<usize>,
    pub(super) expert_rank: Option<usize>,
    pub(super) coeff_init: Option<f64>,
    pub(super) lora_alpha: Option<f64>,
    pub(super) dropout: Option<f64>,
    pub(super) mask: Option<FlatMask>,
}

impl FlatKeys {
    fn present(&self) -> Vec<&'static str> {
        let keys = [
            ("experts", self.experts.is_some()),
            ("expert_rank", self.expert_rank.is_some()),
            ("coeff_init", self.coeff_init.is_some()),
            ("lora_alpha", self.lora_alpha.is_some()),
            ("dropout", self.dropout.is_some()),
            ("mask", self.mask.is_some()),
        ];
        keys.iter().filter(|(_, p)| *p).map(|(k, _)| *k).collect()
    }

    /// A config: fails when any old key is present, naming the new key of every one of them.
    pub(super) fn refuse(&self) -> Result<(), SpecError> {
        let found = self.present();
        let Some(first) = found.first() else { return Ok(()) };
        let message = found
            .iter()
            .map(|k| {
                let new = RENAMED.iter().find(|(old, _)| old == k).map_or("?", |(_, new)| new);
                format!("adapter.{k} was renamed: use {new}")
            })
            .collect::<Vec<_>>()
            .join("; ");
        Err(SpecError::Renamed { field: format!("adapter.{first}"), message })
    }

    /// A stored spec: moves each old key to where its meaning is for the spec's kind. A
    /// stored spec of the flat layout holds every key (defaults written out), so the kinds
    /// that did not read a key get nothing from it.
    pub(super) fn upgrade(self, spec: &mut AdapterSpec) {
        let FlatKeys { experts, expert_rank, coeff_init, lora_alpha, dropout, mask } = self;
        match spec.kind {
            AdapterKind::Mlae => {
                let m = &mut spec.mlae;
                m.experts = experts.unwrap_or(m.experts);
                m.expert_rank = expert_rank.unwrap_or(m.expert_rank);
                m.coeff_init = coeff_init.unwrap_or(m.coeff_init);
                m.expert_dropout = dropout.unwrap_or(m.expert_dropout);
                if let Some(f) = mask {
                    m.mask = MaskSpec {
                        strategy: f.strategy,
                        pattern: f.pattern,
                        experts_per_layer: f.experts_per_layer,
                        expert_dropout_per_layer: f.p_per_layer,
                        seed: f.seed,
                    };
                }
            }
            AdapterKind::Lora | AdapterKind::LoraDropout => {
                let l = &mut spec.lora;
                l.rank = experts.unwrap_or(l.rank);
                l.alpha = lora_alpha.or(l.alpha);
                if spec.kind == AdapterKind::Lora {
                    l.input_dropout = dropout.unwrap_or(l.input_dropout);
                } else {
                    l.update_dropout = dropout.unwrap_or(l.update_dropout);
                }
            }
            AdapterKind::Dmlora => spec.dmlora.branch_rank = experts.unwrap_or(spec.dmlora.branch_rank),
            // linear-probe, full, and every method added after the flat layout
            _ => {}
        }
    }
}
