//! The math of Masked LoRA Experts (MLAE) and its baselines, with no tensor library.
//!
//! This crate is what people depend on alone: everything about methods, experts,
//! coefficients and masks that does not need libtorch lives here, so it builds and tests in
//! seconds. It owns:
//!
//! - [`methods`]: one module per fine-tuning method (linear probe, full, LoRA and
//!   LoRA+Dropout, MLAE, DMLoRA), each with its `[adapter.<method>]` config section, its own
//!   plan type, its parameter count and its training schedule, tied together by one registry
//!   ([`AdapterKind`], [`AdapterSpec`], [`AdapterPlan`]); [`method`] says what a method is;
//! - [`stages`]: a method's training stages ([`TrainSchedule`]): which parameter roles
//!   ([`ParamRole`]) train at a step, at which rate;
//! - [`target`]: the linear layers adapters go on ([`TargetLayer`], [`LayerSite`]);
//! - [`pattern`]: the paper's per-block mask patterns and the seeded random allocation;
//! - [`mask`]: expert-dropout masks reproducible from (seed, step) ([`MaskSampler`]);
//! - [`merge`]: `dW = B^T diag(m lambda) A`, and the exact export of MLAE as a LoRA;
//! - [`params`]: model sizes and parameter counts ([`count_params`]);
//! - [`flops`]: matrix-product FLOPs of a training step, for the bench's fraction of peak;
//! - [`memory`]: the floor of the memory a run needs, to refuse one that cannot fit;
//! - [`similarity`]: the paper's expert cosine similarity, without building expert matrices;
//! - [`rng`]: the workspace's one SplitMix64 (counter-based, replayable);
//! - [`stats`]: the benchmarks' shared summary statistics ([`stats::median`]).
//!
//! A method's libtorch layer (forward, merge, PEFT export) lives in mlae-vit's `adapter`
//! module, which has its own one-line-per-method registry; a new method is its module here,
//! one line in [`methods`]' registry, and its layer there.
//!
//! Layout convention (the official MLAE layer's): an adapted linear layer `in -> out` with `n`
//! experts of rank `k` has `A: (n k, in)`, `B: (n k, out)` and `lambda: (n,)`; expert `i` owns
//! rows `i k .. (i + 1) k`. Tensors are `f32`; statistics are accumulated in `f64`.
//!
//! ```
//! use mlae_core::{count_params, AdapterPlan, AdapterSpec, MaskSampler, ModelDims};
//! let spec: AdapterSpec = toml::from_str("[mlae]\nexpert_dropout = 0.5").unwrap();
//! let plan = spec.resolve(12).unwrap();
//! assert_eq!(count_params(&plan, &ModelDims::vit_b16(100, 224)).adapter, 295_008);
//! let AdapterPlan::Mlae(mlae) = &plan else { unreachable!() };
//! let l = &mlae.layers[0];
//! let scales = MaskSampler::new(0).layer_scales(0, 0, l.experts, l.expert_dropout);
//! assert!(scales.iter().all(|&s| s == 0.0 || s == 2.0));
//! ```

pub mod error;
pub mod flops;
pub mod mask;
pub mod memory;
pub mod merge;
pub mod method;
pub mod methods;
mod names;
pub mod params;
pub mod pattern;
pub mod rng;
pub mod similarity;
pub mod stages;
pub mod stats;
pub mod target;

pub use error::{CoreError, SpecError};
pub use mask::MaskSampler;
pub use merge::{
    PeftLora, add_delta_into, check_expert_shapes, fold_lambda_into_b, merge_delta, to_peft_lora,
    try_merge_delta,
};
pub use method::{Method, MethodPlan, Section};
pub use methods::dmlora::{self, DmloraPlan, DmloraSpec, RampShape, branch_drop_prob, in_stage2};
pub use methods::full::FullPlan;
pub use methods::linear_probe::LinearProbePlan;
pub use methods::lora::{LoraPlan, LoraSpec, UpdateDropoutOn};
pub use methods::mlae::{MaskSpec, MaskStrategy, MlaeLayerPlan, MlaePlan, MlaeSpec};
pub use methods::{AdapterKind, AdapterPlan, AdapterSpec, count_params};
pub use params::{ModelDims, ParamCount, layer_in_out};
pub use pattern::LayerPattern;
pub use similarity::{
    LayerSimilarity, SimilarityReport, expert_similarity, expert_similarity_with_coefficients, mean_pairwise,
    try_expert_similarity,
};
pub use stages::{ParamRole, TrainSchedule};
pub use target::{LayerSite, TargetLayer};
