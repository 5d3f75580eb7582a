//! Writing and reading what a fine-tuning run produces: the adapter-only checkpoint, the merged
//! model in timm's layout, and a PEFT LoRA adapter.

use crate::adapter::{ParamRole, PeftLayer};
use crate::config::VitConfig;
use crate::error::{Result, VitError};
use crate::model::AdaptedVit;
use crate::tensor_io::{read_safetensors, write_safetensors};
use mlae_core::{AdapterSpec, TargetLayer};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Marks adapter checkpoints, so other safetensors files are rejected clearly.
pub const ADAPTER_FORMAT: &str = "mlae-adapter/1";

/// The safetensors metadata key that carries the class names (a JSON array in label order).
pub const LABELS_KEY: &str = "labels";

/// The file of a PEFT export directory that says which labels the head predicts, with the
/// `id2label` / `label2id` maps that Hugging Face model configs use.
pub const PEFT_LABELS_FILE: &str = "labels.json";

/// The class names stored in a safetensors file this toolkit wrote (adapter or merged model),
/// if it carries them.
pub fn read_labels(path: &Path) -> Result<Option<Vec<String>>> {
    let (_, meta) = read_safetensors(path)?;
    meta.get(LABELS_KEY)
        .map(|text| {
            serde_json::from_str(text).map_err(|e| VitError::Format {
                path: path.into(),
                message: format!("metadata `{LABELS_KEY}` is not a JSON list of names: {e}"),
            })
        })
        .transpose()
}

impl AdaptedVit {
    /// Names the head's outputs, in label order; exports then carry them (safetensors metadata
    /// `labels`, a PEFT directory's `labels.json`), so a model says what it predicts.
    pub fn set_class_names(&mut self, names: Vec<String>) -> Result<()> {
        if names.len() as i64 != self.cfg.num_classes {
            return Err(VitError::Config(format!(
                "{} class names for a head of {} classes",
                names.len(),
                self.cfg.num_classes
            )));
        }
        self.class_names = Some(names);
        Ok(())
    }

    /// The class names set by [`AdaptedVit::set_class_names`].
    pub fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }

    /// Adds the class names (when set) to a safetensors metadata map.
    fn label_meta(&self, meta: &mut HashMap<String, String>) {
        if let Some(names) = &self.class_names {
            meta.insert(LABELS_KEY.to_string(), serde_json::to_string(names).expect("strings serialise"));
        }
    }

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
        self.label_meta(&mut meta);
        write_safetensors(path, &tensors, meta)
    }

    /// Loads an adapter checkpoint written by [`AdaptedVit::save_adapter`] onto this model's
    /// backbone. When the file's adapter spec differs from the model's, the adapters are rebuilt
    /// from the file's spec first. A file made for another backbone shape (width, depth, MLP
    /// width, class count; for `full` the whole architecture) is an error naming both.
    pub fn load_adapter(&mut self, path: &Path) -> Result<()> {
        if self.is_merged() {
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
        // Stored by this toolkit, possibly in the flat [adapter] layout of older versions.
        let spec = AdapterSpec::from_stored(&mut serde_json::Deserializer::from_str(field("adapter_spec")?))
            .map_err(|e| err(format!("adapter_spec: {e}")))?;
        let cfg: VitConfig =
            serde_json::from_str(field("model_config")?).map_err(|e| err(format!("model_config: {e}")))?;
        let trains_backbone =
            spec.resolve(cfg.depth as usize).map_err(|e| err(e.to_string()))?.trains_backbone();
        self.check_fits(&cfg, trains_backbone).map_err(err)?;
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
    /// A method that trains the backbone itself (`trains_backbone`) also needs the same
    /// patch, input and layer layout.
    fn check_fits(&self, other: &VitConfig, trains_backbone: bool) -> std::result::Result<(), String> {
        let c = &self.cfg;
        let shape = |c: &VitConfig| {
            format!("width {}, {} blocks, MLP {}, {} classes", c.dim, c.depth, c.mlp_dim, c.num_classes)
        };
        let fits = (c.dim, c.depth, c.mlp_dim, c.num_classes)
            == (other.dim, other.depth, other.mlp_dim, other.num_classes)
            && (!trains_backbone
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
        let full = plan.trains_backbone();
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
    /// (each layer computes its merged weight, on the fly unless it is merged), f32 on the CPU.
    fn merged_tensors(&self) -> Vec<(String, Tensor)> {
        let merged: HashMap<String, Tensor> = self
            .adapted_layers()
            .map(|(id, l)| (format!("{}.weight", id.name()), l.merged_weight()))
            .collect();
        tch::no_grad(|| {
            let mut out: Vec<(String, Tensor)> = self
                .backbone
                .tensors()
                .into_iter()
                .map(|(name, t)| {
                    let t = match merged.get(&name) {
                        Some(w) => w.shallow_clone(),
                        None => t.to_kind(Kind::Float),
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
        self.label_meta(&mut meta);
        write_safetensors(path, &self.merged_tensors(), meta)
    }

    /// Writes a PEFT LoRA adapter directory (`adapter_config.json`, `adapter_model.safetensors`)
    /// for the timm model: keys `base_model.model.blocks.N.attn.qkv.lora_A.weight` `(r, in)` and
    /// `lora_B.weight` `(out, r)`. MLAE's lambda and DMLoRA's s_l / K are folded into B by
    /// mlae-core, so each layer is an exact LoRA with alpha = r; layers of other ranks or alphas go
    /// to `rank_pattern` / `alpha_pattern`. Each layer says what it stores and which config
    /// fields it sets ([`crate::AdapterLayer::peft_layer`]). The head travels as
    /// `modules_to_save = ["head"]` (PEFT saves it as `base_model.model.head.weight`), so
    /// `PeftModel.from_pretrained(timm_model, dir)` reproduces this model's logits.
    pub fn export_peft(&self, dir: &Path) -> Result<()> {
        if self.adapters().next().is_none() {
            return Err(VitError::Config(format!(
                "adapter kind {} has no low-rank adapter to export as PEFT LoRA; export the merged timm model",
                self.plan.kind()
            )));
        }
        let mut tensors = Vec::new();
        let mut layers: Vec<(String, usize, f64)> = Vec::new();
        let mut fields = Vec::new();
        let mut slices: Vec<(String, Vec<(TargetLayer, PeftLayer)>)> = Vec::new();
        for a in self.adapters() {
            let site = a.site();
            if site.target.qkv_slice().is_some() {
                let fused = format!("blocks.{}.{}", site.block, TargetLayer::Qkv.module_path());
                let layer = (site.target, a.peft_layer()?);
                match slices.iter_mut().find(|(n, _)| *n == fused) {
                    Some((_, v)) => v.push(layer),
                    None => slices.push((fused, vec![layer])),
                }
                continue;
            }
            let name = site.name();
            let peft = a.peft_layer()?;
            for (suffix, t) in peft.tensors {
                tensors.push((format!("base_model.model.{name}.{suffix}"), t));
            }
            layers.push((name.clone(), peft.rank, peft.alpha));
            fields.push((name, peft.config));
        }
        for (name, parts) in slices {
            let peft = stack_qkv_slices(&name, parts, self.cfg.dim)?;
            for (suffix, t) in peft.tensors {
                tensors.push((format!("base_model.model.{name}.{suffix}"), t));
            }
            layers.push((name.clone(), peft.rank, peft.alpha));
            fields.push((name, peft.config));
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
        let mut config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": null,
            "base_model_name_or_path": self.cfg.timm_model().0,
            "auto_mapping": {
                "base_model_class": "VisionTransformer",
                "parent_library": "timm.models.vision_transformer"
            },
            "r": r,
            "lora_alpha": alpha,
            "lora_dropout": 0.0,
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
        for (key, value) in model_wide_fields(fields)? {
            config[key] = value;
        }
        let text = serde_json::to_string_pretty(&config).expect("JSON values serialise");
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert("mlae_adapter_kind".to_string(), self.plan.kind().to_string());
        self.label_meta(&mut meta);
        let labels = self.class_names.as_ref().map(|names| {
            let id2label: serde_json::Map<String, serde_json::Value> =
                names.iter().enumerate().map(|(i, n)| (i.to_string(), n.clone().into())).collect();
            let label2id: serde_json::Map<String, serde_json::Value> =
                names.iter().enumerate().map(|(i, n)| (n.clone(), i.into())).collect();
            let v =
                serde_json::json!({ "num_labels": names.len(), "id2label": id2label, "label2id": label2id });
            serde_json::to_string_pretty(&v).expect("JSON values serialise")
        });
        // The directory appears whole or not at all, even if the process is killed half-way.
        mlae_formats::write_dir_atomic(dir, |staging| {
            if let Some(labels) = &labels {
                std::fs::write(staging.join(PEFT_LABELS_FILE), format!("{labels}\n"))?;
            }
            std::fs::write(staging.join("adapter_config.json"), text + "\n")?;
            write_safetensors(&staging.join("adapter_model.safetensors"), &tensors, meta)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .map_err(VitError::io(dir))
    }
}

/// The q/k/v slice adapters of one fused qkv as ONE exact PEFT LoRA on `attn.qkv`: the slices'
/// A stacked, `(sum r_i, in)`, and B block-diagonal, `(3 dim, sum r_i)`, slice i's B (times its
/// scale alpha_i / r_i) in its rows and its own columns, zeros elsewhere; alpha = sum r_i, so
/// PEFT's scale is 1. `x A^T B^T` then adds each slice's update to its rows only, as here. A
/// kind that stores more than a plain LoRA (DoRA's magnitude) cannot be stacked so.
fn stack_qkv_slices(name: &str, parts: Vec<(TargetLayer, PeftLayer)>, dim: i64) -> Result<PeftLayer> {
    let total: usize = parts.iter().map(|(_, p)| p.rank).sum();
    let mut a_rows = Vec::new();
    let b = Tensor::zeros([3 * dim, total as i64], (Kind::Float, Device::Cpu));
    let mut col = 0i64;
    let mut config = serde_json::Map::new();
    for (target, p) in parts {
        let get = |key: &str| p.tensors.iter().find(|(k, _)| k == key).map(|(_, t)| t.shallow_clone());
        let (Some(a), Some(bi), 2) = (get("lora_A.weight"), get("lora_B.weight"), p.tensors.len()) else {
            let keys: Vec<&str> = p.tensors.iter().map(|(k, _)| k.as_str()).collect();
            return Err(VitError::Config(format!(
                "{name}: the adapter on the {target} slice stores {keys:?}; only plain low-rank slices \
                 (lora, lora-dropout, mlae, dmlora) stack into one PEFT LoRA on the fused qkv. Export \
                 the merged timm model instead (mlae-cli export --merged)"
            )));
        };
        let r = p.rank as i64;
        let first = target.qkv_slice().expect("a slice target") as i64 * dim;
        let scale = p.alpha / p.rank as f64;
        tch::no_grad(|| b.narrow(0, first, dim).narrow(1, col, r).copy_(&(bi.to_kind(Kind::Float) * scale)));
        a_rows.push(a.to_kind(Kind::Float));
        col += r;
        for (k, v) in p.config {
            config.insert(k, v);
        }
    }
    Ok(PeftLayer {
        tensors: vec![("lora_A.weight".into(), Tensor::cat(&a_rows, 0)), ("lora_B.weight".into(), b)],
        rank: total,
        alpha: total as f64,
        config,
    })
}

/// The `adapter_config.json` fields that the layers set (`(layer name, fields)`), which PEFT
/// holds once for the whole adapter: an error names two layers that disagree.
fn model_wide_fields(
    layers: Vec<(String, serde_json::Map<String, serde_json::Value>)>,
) -> Result<BTreeMap<String, serde_json::Value>> {
    let mut out: BTreeMap<String, (serde_json::Value, String)> = BTreeMap::new();
    for (name, fields) in layers {
        for (key, value) in fields {
            match out.get(&key) {
                Some((v, first)) if *v != value => {
                    return Err(VitError::Config(format!(
                        "PEFT's `{key}` is one value for the whole adapter, but {first} has {v} and {name} \
                         has {value}"
                    )));
                }
                Some(_) => {}
                None => {
                    out.insert(key, (value, name.clone()));
                }
            }
        }
    }
    Ok(out.into_iter().map(|(k, (v, _))| (k, v)).collect())
}

/// JSON for the metadata of our own files (these config types always serialise).
fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("config types serialise to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_must_agree_on_model_wide_peft_fields() {
        let fields = |pairs: &[(&str, serde_json::Value)]| {
            pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<serde_json::Map<_, _>>()
        };
        let a = ("blocks.0.attn.qkv".to_string(), fields(&[("lora_dropout", 0.1.into())]));
        let b = (
            "blocks.1.attn.qkv".to_string(),
            fields(&[("lora_dropout", 0.1.into()), ("use_dora", true.into())]),
        );
        let got = model_wide_fields(vec![a.clone(), b]).unwrap();
        assert_eq!(got["lora_dropout"], 0.1);
        assert_eq!(got["use_dora"], true);
        let c = ("blocks.1.mlp.fc1".to_string(), fields(&[("lora_dropout", 0.0.into())]));
        let e = model_wide_fields(vec![a, c]).unwrap_err().to_string();
        assert!(
            e.contains("lora_dropout") && e.contains("blocks.0.attn.qkv") && e.contains("blocks.1.mlp.fc1"),
            "{e}"
        );
    }
}
