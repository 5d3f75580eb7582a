//! Writing and reading what a fine-tuning run produces: the adapter-only checkpoint, the merged
//! model in timm's layout, and a PEFT LoRA adapter.

use crate::adapter::ParamRole;
use crate::config::VitConfig;
use crate::error::{Result, VitError};
use crate::model::AdaptedVit;
use mlae_core::{AdapterKind, AdapterSpec};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor};

type NamedTensors = Vec<(String, Tensor)>;

/// Marks adapter checkpoints, so other safetensors files are rejected clearly.
pub const ADAPTER_FORMAT: &str = "mlae-adapter/1";

/// Writes f32 tensors (copied to the CPU) and metadata as safetensors, atomically (the
/// project's one policy, mlae-formats' `write_atomic`), so a reader never sees half a file.
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let mut bytes = vec![0u8; t.numel() * 4];
        t.copy_data_u8(&mut bytes, t.numel());
        owned.push((name.clone(), t.size().iter().map(|&d| d as usize).collect(), bytes));
    }
    let views = owned
        .iter()
        .map(|(n, s, b)| Ok((n.as_str(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| VitError::Format { path: path.into(), message: e.to_string() })?;
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| VitError::Format { path: path.into(), message: e.to_string() })?;
    mlae_formats::write_atomic(path, &bytes).map_err(VitError::io(path))
}

/// Reads every tensor of a safetensors file (any float kind, returned as stored) and its
/// metadata.
pub(crate) fn read_safetensors(path: &Path) -> Result<(NamedTensors, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(VitError::io(path))?;
    let err = |m: String| VitError::Format { path: path.into(), message: m };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| err(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    for (name, view) in st.iter() {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F64 => Kind::Double,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
            other => return Err(err(format!("tensor `{name}` has unsupported dtype {other:?}"))),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name.to_string(), Tensor::from_data_size(view.data(), &shape, kind)));
    }
    Ok((out, metadata))
}

impl AdaptedVit {
    /// Writes the trainable tensors (adapters and head; everything for `full`) as safetensors,
    /// with the adapter spec, the model config and the seed as JSON in the metadata
    /// (`adapter_spec`, `model_config`, `seed`). Bit-exact: tensors are stored as f32.
    pub fn save_adapter(&self, path: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self.trainable().into_iter().map(|(n, t, _)| (n, t)).collect();
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), ADAPTER_FORMAT.to_string());
        meta.insert("adapter_spec".to_string(), to_json(&self.spec));
        meta.insert("model_config".to_string(), to_json(&self.cfg));
        meta.insert("seed".to_string(), self.seed.to_string());
        write_safetensors(path, &tensors, meta)
    }

    /// Loads an adapter checkpoint written by [`AdaptedVit::save_adapter`] onto this model's
    /// backbone. When the file's adapter spec differs from the model's, the adapters are rebuilt
    /// from the file's spec first. A file made for another backbone shape (width, depth, MLP
    /// width, class count; for `full` the whole architecture) is an error naming both.
    pub fn load_adapter(&mut self, path: &Path) -> Result<()> {
        if self.merged {
            return Err(VitError::Config("unmerge the adapters before loading others".into()));
        }
        let (tensors, meta) = read_safetensors(path)?;
        let err = |m: String| VitError::Format { path: path.into(), message: m };
        if meta.get("format").map(String::as_str) != Some(ADAPTER_FORMAT) {
            return Err(err(format!(
                "not an MLAE adapter checkpoint (metadata format is not {ADAPTER_FORMAT})"
            )));
        }
        let field = |k: &str| meta.get(k).ok_or_else(|| err(format!("metadata has no `{k}`")));
        let spec: AdapterSpec =
            serde_json::from_str(field("adapter_spec")?).map_err(|e| err(format!("adapter_spec: {e}")))?;
        let cfg: VitConfig =
            serde_json::from_str(field("model_config")?).map_err(|e| err(format!("model_config: {e}")))?;
        self.check_fits(&cfg, spec.kind).map_err(err)?;
        if spec != self.spec {
            tracing::info!("{}: rebuilding the adapters for the file's spec ({})", path.display(), spec.kind);
            self.set_spec(&spec)?;
        }
        let mut by_name: HashMap<String, Tensor> = tensors.into_iter().collect();
        let mut pairs = Vec::new();
        for (name, dst, _) in self.trainable() {
            let src = by_name
                .remove(&name)
                .ok_or_else(|| VitError::MissingKey { path: path.into(), key: name.clone() })?;
            if src.size() != dst.size() {
                return Err(VitError::ShapeMismatch {
                    path: path.into(),
                    key: name,
                    found: src.size(),
                    expected: dst.size(),
                });
            }
            pairs.push((dst, src));
        }
        if let Some(extra) = by_name.keys().next() {
            return Err(err(format!(
                "tensor `{extra}` does not belong to a {} adapter of this model",
                spec.kind
            )));
        }
        tch::no_grad(|| {
            for (mut dst, src) in pairs {
                dst.copy_(&src);
            }
        });
        Ok(())
    }

    /// Whether tensors trained on a model of config `other` fit this one.
    fn check_fits(&self, other: &VitConfig, kind: AdapterKind) -> std::result::Result<(), String> {
        let c = &self.cfg;
        let shape = |c: &VitConfig| {
            format!("width {}, {} blocks, MLP {}, {} classes", c.dim, c.depth, c.mlp_dim, c.num_classes)
        };
        let fits = (c.dim, c.depth, c.mlp_dim, c.num_classes)
            == (other.dim, other.depth, other.mlp_dim, other.num_classes)
            && (kind != AdapterKind::Full
                || (c.patch_size, c.in_chans, c.image_size, c.layer_scale, c.qkv_bias)
                    == (
                        other.patch_size,
                        other.in_chans,
                        other.image_size,
                        other.layer_scale,
                        other.qkv_bias,
                    ));
        if fits {
            Ok(())
        } else {
            Err(format!(
                "the adapter was trained on a backbone with {} ({:?} {}px), this model has {} ({:?} {}px)",
                shape(other),
                other.preset,
                other.image_size,
                shape(c),
                c.preset,
                c.image_size
            ))
        }
    }

    /// Replaces the adapter spec: new plan, freshly initialised adapters, backbone trainable
    /// only for `full`.
    pub(crate) fn set_spec(&mut self, spec: &AdapterSpec) -> Result<()> {
        let plan = spec.resolve(self.cfg.depth as usize)?;
        let full = plan.kind == AdapterKind::Full;
        if full && self.compute_kind() != Kind::Float {
            return Err(VitError::Config(
                "switch to f32 before loading a full fine-tuning checkpoint".into(),
            ));
        }
        for (_, t) in self.backbone.tensors_mut() {
            *t = t.detach().set_requires_grad(full);
        }
        self.build_adapters(&plan)?;
        self.spec = spec.clone();
        // a backbone that was trainable (f32) and is now frozen takes the compute kind
        self.set_compute_kind(self.compute_kind());
        Ok(())
    }

    /// The backbone and head as timm names them, with every adapter merged into its weight
    /// (computed on the fly unless the model is merged), f32 on the CPU.
    fn merged_tensors(&self) -> Vec<(String, Tensor)> {
        let mut deltas: HashMap<String, Tensor> = HashMap::new();
        if !self.merged {
            for a in &self.adapters {
                deltas.insert(format!("{}.weight", a.layer_plan().name()), a.merged_delta());
            }
        }
        tch::no_grad(|| {
            let mut out: Vec<(String, Tensor)> = self
                .backbone
                .tensors()
                .into_iter()
                .map(|(name, t)| {
                    let t = t.to_kind(Kind::Float);
                    let t = match deltas.get(&name) {
                        Some(d) => t + d,
                        None => t,
                    };
                    (name, t)
                })
                .collect();
            out.push(("head.weight".into(), self.head.weight.detach()));
            if let Some(b) = &self.head.bias {
                out.push(("head.bias".into(), b.detach()));
            }
            out
        })
    }

    /// Writes the merged model as a timm state dict (safetensors) that
    /// `timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path,
    /// num_classes=C), **kwargs)` loads, with `(name, kwargs)` from [`VitConfig::timm_model`]
    /// (also in the file's metadata, `timm_model` and `timm_kwargs`). timm discards a
    /// checkpoint's head unless the overlay's `num_classes` equals the model's.
    pub fn export_merged_timm(&self, path: &Path) -> Result<()> {
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert("model_config".to_string(), to_json(&self.cfg));
        let (name, kwargs) = self.cfg.timm_model();
        meta.insert("timm_model".to_string(), name.to_string());
        meta.insert("timm_kwargs".to_string(), kwargs.to_string());
        write_safetensors(path, &self.merged_tensors(), meta)
    }

    /// Writes a PEFT LoRA adapter directory (`adapter_config.json`, `adapter_model.safetensors`)
    /// for the timm model: keys `base_model.model.blocks.N.attn.qkv.lora_A.weight` `(r, in)` and
    /// `lora_B.weight` `(out, r)`. MLAE's lambda and DMLoRA's s_l / K are folded into B by
    /// mlae-core, so each layer is an exact LoRA with alpha = r; layers of other ranks or alphas go
    /// to `rank_pattern` / `alpha_pattern`. The head travels as `modules_to_save = ["head"]`
    /// (PEFT saves it as `base_model.model.head.weight`), so
    /// `PeftModel.from_pretrained(timm_model, dir)` reproduces this model's logits.
    pub fn export_peft(&self, dir: &Path) -> Result<()> {
        if self.adapters.is_empty() {
            return Err(VitError::Config(format!(
                "adapter kind {} has no low-rank adapter to export as PEFT LoRA; export the merged timm model",
                self.plan.kind
            )));
        }
        std::fs::create_dir_all(dir).map_err(VitError::io(dir))?;
        let mut tensors = Vec::new();
        let mut layers: Vec<(String, usize, f64)> = Vec::new();
        for a in &self.adapters {
            let name = a.layer_plan().name();
            let lora = a.to_peft()?;
            let to_tensor = |m: &ndarray::Array2<f32>| {
                let (r, c) = m.dim();
                Tensor::from_slice(m.as_standard_layout().as_slice().expect("standard layout"))
                    .view([r as i64, c as i64])
            };
            tensors.push((format!("base_model.model.{name}.lora_A.weight"), to_tensor(&lora.lora_a)));
            tensors.push((format!("base_model.model.{name}.lora_B.weight"), to_tensor(&lora.lora_b)));
            layers.push((name, lora.rank, lora.alpha));
        }
        for (name, t, role) in self.trainable() {
            if role == ParamRole::Head {
                tensors.push((format!("base_model.model.{name}"), t));
            }
        }
        // The most common (rank, alpha) is the default; the others are patterns.
        let mut counts: BTreeMap<(usize, u64), usize> = BTreeMap::new();
        for (_, r, a) in &layers {
            *counts.entry((*r, a.to_bits())).or_default() += 1;
        }
        let (r, alpha_bits) = counts
            .iter()
            .max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k)))
            .map(|(k, _)| *k)
            .expect("layers");
        let alpha = f64::from_bits(alpha_bits);
        let mut rank_pattern = serde_json::Map::new();
        let mut alpha_pattern = serde_json::Map::new();
        for (name, lr, la) in &layers {
            if *lr != r {
                rank_pattern.insert(name.clone(), (*lr).into());
            }
            if *la != alpha {
                alpha_pattern.insert(name.clone(), (*la).into());
            }
        }
        let dropout = if self.plan.kind == AdapterKind::Lora { self.plan.lora_dropout } else { 0.0 };
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": null,
            "base_model_name_or_path": self.cfg.timm_model().0,
            "auto_mapping": {
                "base_model_class": "VisionTransformer",
                "parent_library": "timm.models.vision_transformer"
            },
            "r": r,
            "lora_alpha": alpha,
            "lora_dropout": dropout,
            "target_modules": layers.iter().map(|(n, _, _)| n.clone()).collect::<Vec<_>>(),
            "rank_pattern": rank_pattern,
            "alpha_pattern": alpha_pattern,
            "modules_to_save": ["head"],
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "inference_mode": true,
        });
        let text = serde_json::to_string_pretty(&config).expect("JSON values serialise");
        let cfg_path = dir.join("adapter_config.json");
        std::fs::write(&cfg_path, text + "\n").map_err(VitError::io(&cfg_path))?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert("mlae_adapter_kind".to_string(), self.plan.kind.to_string());
        write_safetensors(&dir.join("adapter_model.safetensors"), &tensors, meta)
    }
}

/// JSON for the metadata of our own files (these config types always serialise).
fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("config types serialise to JSON")
}
