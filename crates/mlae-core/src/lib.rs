//! The math of Masked LoRA Experts (MLAE), with no tensor library.
//!
//! This crate is what people depend on alone: everything about experts, coefficients and
//! masks that does not need libtorch lives here, so it builds and tests in seconds.
//!
//! - [`spec`]: the `[adapter]` config ([`AdapterSpec`]) and its resolution into per-layer
//!   plans ([`AdapterPlan`], [`LayerPlan`]);
//! - [`pattern`]: the paper's per-block mask patterns and the seeded random allocation;
//! - [`mask`]: expert-dropout masks reproducible from (seed, step) ([`MaskSampler`]);
//! - [`merge`]: `dW = B^T diag(m lambda) A`, and the exact export of MLAE as a LoRA;
//! - [`params`]: parameter counts per configuration ([`count_params`]);
//! - [`similarity`]: the paper's expert cosine similarity, without building expert matrices;
//! - [`dmlora`]: DMLoRA's branch weights, dropout schedule and two stages.
//!
//! Layout convention (the official MLAE layer's): an adapted linear layer `in -> out` with `n`
//! experts of rank `k` has `A: (n k, in)`, `B: (n k, out)` and `lambda: (n,)`; expert `i` owns
//! rows `i k .. (i + 1) k`. Tensors are `f32`; statistics are accumulated in `f64`.
//!
//! ```
//! use mlae_core::{count_params, AdapterSpec, MaskSampler, ModelDims};
//! let spec: AdapterSpec = toml::from_str("dropout = 0.5").unwrap();
//! let plan = spec.resolve(12).unwrap();
//! assert_eq!(count_params(&plan, &ModelDims::vit_b16(100, 224)).adapter, 295_008);
//! let scales = MaskSampler::new(0).layer_scales(0, 0, plan.layers[0].experts, plan.layers[0].p);
//! assert!(scales.iter().all(|&s| s == 0.0 || s == 2.0));
//! ```

pub mod dmlora;
pub mod error;
pub mod mask;
pub mod merge;
pub mod params;
pub mod pattern;
mod rng;
pub mod similarity;
pub mod spec;

pub use dmlora::{branch_drop_prob, in_stage2};
pub use error::{CoreError, SpecError};
pub use mask::MaskSampler;
pub use merge::{
    PeftLora, add_delta_into, check_expert_shapes, fold_lambda_into_b, merge_delta, to_peft_lora,
    try_merge_delta,
};
pub use params::{ModelDims, ParamCount, count_params, layer_in_out, layer_params};
pub use similarity::{
    LayerSimilarity, SimilarityReport, expert_similarity, expert_similarity_with_coefficients, mean_pairwise,
    try_expert_similarity,
};
pub use spec::{
    AdapterKind, AdapterPlan, AdapterSpec, DmloraSpec, LayerPattern, LayerPlan, MaskSpec, MaskStrategy,
    RampShape, TargetLayer,
};
