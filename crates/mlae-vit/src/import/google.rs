//! Google's ViT `.npz` (Flax parameter names, e.g. `ViT-B_16.npz` imagenet21k) to timm.
//!
//! Flax stores a dense kernel as (in, out), the transpose of torch's (out, in) weight, and keeps
//! the attention projections per head. With D the width, H heads of size hd, M the MLP width:
//!
//! | npz key (Flax) | shape | timm key | conversion |
//! |---|---|---|---|
//! | `embedding/kernel` | (p, p, 3, D) HWIO | `patch_embed.proj.weight` | permute to OIHW (D, 3, p, p) |
//! | `embedding/bias` | (D) | `patch_embed.proj.bias` | |
//! | `cls` | (1, 1, D) | `cls_token` | |
//! | `Transformer/posembed_input/pos_embedding` | (1, N, D) | `pos_embed` | |
//! | `Transformer/encoderblock_{i}/LayerNorm_0/{scale,bias}` | (D) | `blocks.i.norm1.{weight,bias}` | |
//! | `.../MultiHeadDotProductAttention_1/{query,key,value}/kernel` | (D, H, hd) | `blocks.i.attn.qkv.weight` | each to (H·hd, D), rows [q; k; v] |
//! | `.../MultiHeadDotProductAttention_1/{query,key,value}/bias` | (H, hd) | `blocks.i.attn.qkv.bias` | flattened, [q; k; v] |
//! | `.../MultiHeadDotProductAttention_1/out/kernel` | (H, hd, D) | `blocks.i.attn.proj.weight` | to (H·hd, D), transposed |
//! | `.../MultiHeadDotProductAttention_1/out/bias` | (D) | `blocks.i.attn.proj.bias` | |
//! | `.../LayerNorm_2/{scale,bias}` | (D) | `blocks.i.norm2.*` | |
//! | `.../MlpBlock_3/Dense_0/{kernel,bias}` | (D, M) | `blocks.i.mlp.fc1.*` | kernel transposed |
//! | `.../MlpBlock_3/Dense_1/{kernel,bias}` | (M, D) | `blocks.i.mlp.fc2.*` | kernel transposed |
//! | `Transformer/encoder_norm/{scale,bias}` | (D) | `norm.*` | |
//! | `pre_logits/{kernel,bias}` (optional) | (D, R) | `pre_logits.fc.*` | kernel transposed; **unused** by timm's ViT (kept, reported by the loader) |
//! | `head/{kernel,bias}` (optional) | (R or D, C) | `head.*` | kernel transposed |
//!
//! Blocks are counted from `encoderblock_0` up. Other keys are kept under their npz names.

use super::Source;
use crate::error::Result;
use std::path::Path;
use tch::Tensor;

const BLOCK: &str = "Transformer/encoderblock_";
const MHA: &str = "MultiHeadDotProductAttention_1";

/// Converts the arrays of a Google npz to timm tensors.
pub(crate) fn convert(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    let mut src = Source::new(path, tensors);
    let mut out: Vec<(String, Tensor)> = Vec::new();

    let kernel = src.take_rank("embedding/kernel", 4, "(patch, patch, channels, dim)")?;
    let d = kernel.size()[3];
    let bias = src.take_shaped("embedding/bias", &[d])?;
    let cls = src.take_shaped("cls", &[1, 1, d])?;
    let pos_key = "Transformer/posembed_input/pos_embedding";
    let pos = src.take_rank(pos_key, 3, "(1, tokens, dim)")?;
    src.check_shape(pos_key, &pos, &[1, pos.size()[1], d])?;
    out.push(("cls_token".into(), cls));
    out.push(("pos_embed".into(), pos));
    out.push(("patch_embed.proj.weight".into(), kernel.permute([3, 2, 0, 1]).contiguous()));
    out.push(("patch_embed.proj.bias".into(), bias));

    let depth = (0..).take_while(|i| src.has(&format!("{BLOCK}{i}/LayerNorm_0/scale"))).count();
    if depth == 0 {
        // Names the first key a block needs: the clearest hint when the file is something else.
        return Err(src.missing(&format!("{BLOCK}0/LayerNorm_0/scale")));
    }
    for i in 0..depth {
        block(&mut src, i, d, &mut out)?;
    }

    out.push(("norm.weight".into(), src.take_shaped("Transformer/encoder_norm/scale", &[d])?));
    out.push(("norm.bias".into(), src.take_shaped("Transformer/encoder_norm/bias", &[d])?));

    let mut head_in = d;
    if src.has("pre_logits/kernel") {
        let (w, b) = dense(&mut src, "pre_logits", Some(d), None)?;
        head_in = w.size()[0];
        tracing::debug!(path = %path.display(), "keeping pre_logits (timm's ViT has no such layer)");
        out.push(("pre_logits.fc.weight".into(), w));
        out.push(("pre_logits.fc.bias".into(), b));
    }
    if src.has("head/kernel") {
        let (w, b) = dense(&mut src, "head", Some(head_in), None)?;
        out.push(("head.weight".into(), w));
        out.push(("head.bias".into(), b));
    }
    out.extend(src.into_rest());
    Ok(out)
}

/// A Flax dense layer `{prefix}/kernel` (in, out) and `{prefix}/bias` (out) as a torch weight
/// (out, in) and bias; `fan_in`/`fan_out` are checked when known.
fn dense(
    src: &mut Source<'_>,
    prefix: &str,
    fan_in: Option<i64>,
    fan_out: Option<i64>,
) -> Result<(Tensor, Tensor)> {
    let key = format!("{prefix}/kernel");
    let k = src.take_rank(&key, 2, "(in, out)")?;
    let (i, o) = (fan_in.unwrap_or(k.size()[0]), fan_out.unwrap_or(k.size()[1]));
    src.check_shape(&key, &k, &[i, o])?;
    let b = src.take_shaped(&format!("{prefix}/bias"), &[o])?;
    Ok((k.tr().contiguous(), b))
}

fn block(src: &mut Source<'_>, i: usize, d: i64, out: &mut Vec<(String, Tensor)>) -> Result<()> {
    let p = format!("{BLOCK}{i}/");
    let t = format!("blocks.{i}.");
    out.push((format!("{t}norm1.weight"), src.take_shaped(&format!("{p}LayerNorm_0/scale"), &[d])?));
    out.push((format!("{t}norm1.bias"), src.take_shaped(&format!("{p}LayerNorm_0/bias"), &[d])?));

    // The query kernel fixes the head layout; key and value must match it.
    let q_key = format!("{p}{MHA}/query/kernel");
    let q = src.take_rank(&q_key, 3, "(dim, heads, head_dim)")?;
    src.check_shape(&q_key, &q, &[d, q.size()[1], q.size()[2]])?;
    let (h, hd) = (q.size()[1], q.size()[2]);
    let mut weights = vec![q];
    let mut biases = Vec::new();
    for name in ["key", "value"] {
        weights.push(src.take_shaped(&format!("{p}{MHA}/{name}/kernel"), &[d, h, hd])?);
    }
    for name in ["query", "key", "value"] {
        biases.push(src.take_shaped(&format!("{p}{MHA}/{name}/bias"), &[h, hd])?.reshape([h * hd]));
    }
    // (D, H, hd) -> (D, H*hd) -> (H*hd, D): rows are head-major, as timm's qkv expects.
    let weights: Vec<Tensor> = weights.iter().map(|w| w.reshape([d, h * hd]).tr()).collect();
    out.push((format!("{t}attn.qkv.weight"), Tensor::cat(&weights, 0).contiguous()));
    out.push((format!("{t}attn.qkv.bias"), Tensor::cat(&biases, 0)));
    let proj = src.take_shaped(&format!("{p}{MHA}/out/kernel"), &[h, hd, d])?;
    out.push((format!("{t}attn.proj.weight"), proj.reshape([h * hd, d]).tr().contiguous()));
    out.push((format!("{t}attn.proj.bias"), src.take_shaped(&format!("{p}{MHA}/out/bias"), &[d])?));

    out.push((format!("{t}norm2.weight"), src.take_shaped(&format!("{p}LayerNorm_2/scale"), &[d])?));
    out.push((format!("{t}norm2.bias"), src.take_shaped(&format!("{p}LayerNorm_2/bias"), &[d])?));
    let (w1, b1) = dense(src, &format!("{p}MlpBlock_3/Dense_0"), Some(d), None)?;
    let m = w1.size()[0];
    let (w2, b2) = dense(src, &format!("{p}MlpBlock_3/Dense_1"), Some(m), Some(d))?;
    out.push((format!("{t}mlp.fc1.weight"), w1));
    out.push((format!("{t}mlp.fc1.bias"), b1));
    out.push((format!("{t}mlp.fc2.weight"), w2));
    out.push((format!("{t}mlp.fc2.bias"), b2));
    Ok(())
}
