//! The experiment config, as the trainer uses it. The config itself (its sections, layering,
//! validation, `cache:` paths) is a shared format and lives in mlae-formats; this module adds
//! what needs libtorch or the model crate: the architecture a config builds, the check of
//! that architecture, and the libtorch device.

pub use mlae_formats::config::*;

use crate::error::Result;
use mlae_formats::FormatError;
use std::path::Path;

/// Loads and checks a config as [`ExperimentConfig::load`] does, then checks the model's
/// architecture (the preset changed by `model.arch`), which needs the preset table of
/// mlae-vit. Errors name the first file and the key.
pub fn load<P: AsRef<Path>>(paths: &[P], overrides: &[String]) -> Result<ExperimentConfig> {
    let cfg = ExperimentConfig::load(paths, overrides)?;
    if let Err(e) = cfg.vit_config(2).validate() {
        let path = paths.first().map(|p| p.as_ref().to_path_buf()).unwrap_or_default();
        return Err(FormatError::Config { path, message: e.to_string() }.into());
    }
    Ok(cfg)
}

/// The model architecture a config describes.
pub trait VitConfigExt {
    /// The architecture for a task with `num_classes` classes: the preset, changed by
    /// `model.arch`, at `model.image_size`, with `model.drop_path`.
    fn vit_config(&self, num_classes: i64) -> mlae_vit::VitConfig;
}

impl VitConfigExt for ExperimentConfig {
    fn vit_config(&self, num_classes: i64) -> mlae_vit::VitConfig {
        let m = &self.model;
        let mut v = mlae_vit::VitConfig::from_preset(m.preset, m.image_size, num_classes);
        v.drop_path = m.drop_path;
        if let Some(a) = &m.arch {
            v.patch_size = a.patch_size.unwrap_or(v.patch_size);
            v.dim = a.dim.unwrap_or(v.dim);
            v.depth = a.depth.unwrap_or(v.depth);
            v.heads = a.heads.unwrap_or(v.heads);
            v.mlp_dim = a.mlp_dim.unwrap_or(v.mlp_dim);
        }
        v
    }
}

/// `auto`, `cpu`, `cuda`, `cuda:N` as a libtorch device.
pub fn parse_device(s: &str) -> std::result::Result<tch::Device, String> {
    Ok(match s.parse::<DeviceSpec>().map_err(|e| e.to_string())? {
        DeviceSpec::Auto => tch::Device::cuda_if_available(),
        DeviceSpec::Cpu => tch::Device::Cpu,
        DeviceSpec::Cuda(n) => tch::Device::Cuda(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_architecture_is_checked_at_load_and_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("c.toml");
        std::fs::write(
            &p,
            "[model]\npreset = \"vit-ti16\"\nimage_size = 32\n[data]\nbenchmark = \"vtab\"\ntask = \"cifar\"\n\
             root = \"/data\"\nnormalization = \"inception\"\n",
        )
        .unwrap();
        let cfg = load(&[&p], &["model.arch.depth=2".into()]).unwrap();
        assert_eq!(cfg.vit_config(10).depth, 2);
        let err = load(&[&p], &["model.arch.heads=5".into()]).unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("model.heads"), "{err}");
        assert_eq!(parse_device("cpu"), Ok(tch::Device::Cpu));
        assert_eq!(parse_device("cuda:1"), Ok(tch::Device::Cuda(1)));
        assert!(parse_device("tpu").unwrap_err().contains("train.device"));
    }
}
