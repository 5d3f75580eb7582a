//! A libtorch (tch) Vision Transformer with adapter hooks on any linear layer, and the
//! checkpoint formats it reads and writes.
//!
//! - [`AdaptedVit`]: timm's ViT (names, init, numerics) with LoRA, LoRA+dropout, MLAE or
//!   DMLoRA adapters on any of `qkv`, `proj`, `fc1`, `fc2`, or a linear probe / full
//!   fine-tuning; merge/unmerge; adapter checkpoints; merged timm and PEFT LoRA exports;
//! - [`adapter`]: the adapter layers behind one trait, [`AdapterLayer`], one module per kind
//!   and the registry that builds them. A method's config, plan, parameter count and schedule
//!   live in its mlae-core module (`mlae_core::methods`); its libtorch layer lives here, with
//!   one line in this side's registry (`adapter::build`);
//! - [`linear`]: the frozen linear layer; [`adapted`]: [`AdaptedLinear`], which owns a frozen
//!   layer, its adapters and its merge state; [`ctx`]: what a forward pass tells the layers;
//! - [`import`]: readers of foreign checkpoint formats into timm naming;
//! - [`tensor_io`]: the safetensors dtype table and tensor <-> ndarray copies.

pub mod adapted;
pub mod adapter;
pub mod config;
pub mod ctx;
pub mod cuda;
pub mod error;
pub mod export;
pub mod import;
mod init;
pub mod linear;
pub mod load;
pub mod model;
pub mod pos_embed;
pub mod runtime;
pub mod tensor_io;
pub mod transfer;

pub use adapted::AdaptedLinear;
pub use adapter::{
    AdapterCtx, AdapterLayer, DmloraLayer, ExpertFactors, LoraDropoutLayer, LoraLayer, MlaeLayer, ParamRole,
    PeftLayer,
};
pub use config::{Preset, VitConfig};
pub use ctx::{ForwardCtx, StepWeights};
pub use error::{Result, VitError};
pub use import::{CheckpointFormat, StateDict, infer_format, read_checkpoint};
pub use linear::Linear;
pub use load::{HeadLoad, LoadReport};
pub use mlae_core::{LayerSite, TargetLayer};
pub use model::{AdaptedVit, LayerHook};
pub use pos_embed::{PosResize, resample_pos_embed};
