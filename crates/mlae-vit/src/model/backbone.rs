//! The frozen part of the ViT, everything but the head, with timm's names and initialisation.

use super::block::{Block, Norm, block_tensors};
use crate::adapted::AdaptedLinear;
use crate::config::VitConfig;
use crate::init;
use crate::linear::Linear;
use tch::{Device, Kind, Tensor};

/// The frozen part: everything but the head.
pub(crate) struct Backbone {
    pub cls_token: Tensor,
    pub pos_embed: Tensor,
    pub patch_weight: Tensor,
    pub patch_bias: Tensor,
    pub blocks: Vec<Block>,
    pub norm: Norm,
}

impl Backbone {
    /// timm's initialisation (`init_weights_vit_timm`): linear weights `trunc_normal_(std = 0.02)`
    /// (bounds +-2 absolute, see [`init::trunc_normal`]) with zero bias, position table the same,
    /// class token normal(1e-6), patch convolution PyTorch's default U(+-1/sqrt(fan_in)), norms
    /// 1/0, layer-scale `layer_scale_init`.
    pub(crate) fn random(cfg: &VitConfig, seed: u64, device: Device) -> Backbone {
        let (d, h) = (cfg.dim, cfg.mlp_dim);
        let lin = |name: &str, out: i64, inn: i64, bias: bool| {
            AdaptedLinear::new(Linear {
                weight: init::trunc_normal(seed, name, &[out, inn], 0.02, device),
                bias: bias.then(|| Tensor::zeros([out], (Kind::Float, device))),
            })
        };
        let norm = || Norm { weight: init::full(&[d], 1.0, device), bias: init::full(&[d], 0.0, device) };
        let ls = || cfg.layer_scale.then(|| init::full(&[d], cfg.layer_scale_init, device));
        let fan_in = cfg.in_chans * cfg.patch_size * cfg.patch_size;
        let bound = 1.0 / (fan_in as f64).sqrt();
        Backbone {
            cls_token: init::normal(seed, "cls_token", &[1, 1, d], 1e-6, device),
            pos_embed: init::trunc_normal(seed, "pos_embed", &[1, cfg.num_tokens(), d], 0.02, device),
            patch_weight: init::uniform(
                seed,
                "patch_embed.proj.weight",
                &[d, cfg.in_chans, cfg.patch_size, cfg.patch_size],
                -bound,
                bound,
                device,
            ),
            patch_bias: init::uniform(seed, "patch_embed.proj.bias", &[d], -bound, bound, device),
            blocks: (0..cfg.depth)
                .map(|i| {
                    let n = |s: &str| format!("blocks.{i}.{s}");
                    Block {
                        index: i as usize,
                        norm1: norm(),
                        qkv: lin(&n("attn.qkv.weight"), 3 * d, d, cfg.qkv_bias),
                        proj: lin(&n("attn.proj.weight"), d, d, true),
                        ls1: ls(),
                        norm2: norm(),
                        fc1: lin(&n("mlp.fc1.weight"), h, d, true),
                        fc2: lin(&n("mlp.fc2.weight"), d, h, true),
                        ls2: ls(),
                    }
                })
                .collect(),
            norm: norm(),
        }
    }

    /// Every tensor with its timm name, in timm's state-dict order.
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        let mut v = vec![
            ("cls_token".to_string(), &self.cls_token),
            ("pos_embed".to_string(), &self.pos_embed),
            ("patch_embed.proj.weight".to_string(), &self.patch_weight),
            ("patch_embed.proj.bias".to_string(), &self.patch_bias),
        ];
        for (i, b) in self.blocks.iter().enumerate() {
            v.extend(block_tensors!(b, &).into_iter().map(|(n, t)| (format!("blocks.{i}.{n}"), t)));
        }
        v.push(("norm.weight".to_string(), &self.norm.weight));
        v.push(("norm.bias".to_string(), &self.norm.bias));
        v
    }

    /// [`Backbone::tensors`], mutably (to cast or replace them).
    pub fn tensors_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut v = vec![
            ("cls_token".to_string(), &mut self.cls_token),
            ("pos_embed".to_string(), &mut self.pos_embed),
            ("patch_embed.proj.weight".to_string(), &mut self.patch_weight),
            ("patch_embed.proj.bias".to_string(), &mut self.patch_bias),
        ];
        for (i, b) in self.blocks.iter_mut().enumerate() {
            v.extend(block_tensors!(b, &mut).into_iter().map(|(n, t)| (format!("blocks.{i}.{n}"), t)));
        }
        v.push(("norm.weight".to_string(), &mut self.norm.weight));
        v.push(("norm.bias".to_string(), &mut self.norm.bias));
        v
    }
}

/// A fresh classifier as timm makes one: weight `trunc_normal_(std = 0.02)`, bias 0.
pub(crate) fn fresh_head(cfg: &VitConfig, seed: u64, device: Device) -> (Tensor, Tensor) {
    (
        init::trunc_normal(seed, "head.weight", &[cfg.num_classes, cfg.dim], 0.02, device),
        Tensor::zeros([cfg.num_classes], (Kind::Float, device)),
    )
}
