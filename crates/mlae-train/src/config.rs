//! The experiment config, as the trainer uses it. The config itself (its sections, layering,
//! validation, `cache:` paths) is a shared format and lives in mlae-formats; this module adds
//! what needs libtorch or the model crate: the architecture a config builds, the check of
//! that architecture, and the libtorch device.

pub use mlae_formats::config::*;

use crate::error::{Result, TrainError};
use mlae_formats::{FormatError, layering};
use std::path::Path;

/// Loads and checks a config as [`ExperimentConfig::load`] does, then checks the model's
/// architecture (the preset changed by `model.arch`), which needs the preset table of
/// mlae-vit. Errors name the key, and the `--set` (an entry of `overrides`) that gave its value
/// or else the first file.
pub fn load<P: AsRef<Path>>(paths: &[P], overrides: &[String]) -> Result<ExperimentConfig> {
    let cfg = ExperimentConfig::load(paths, overrides).map_err(|e| blame_override(e, overrides))?;
    if let Err(e) = cfg.vit_config(2).validate() {
        let path = paths.first().map(|p| p.as_ref().to_path_buf()).unwrap_or_default();
        let message = e.to_string();
        // mlae-vit names the architecture's fields `model.heads`; the config's are `model.arch.heads`
        let as_config = message.strip_prefix("model.").map(|rest| format!("model.arch.{rest}"));
        let blamed = as_config.iter().chain([&message]).find_map(|m| layering::override_behind(overrides, m));
        return Err(match blamed {
            Some(ov) => TrainError::Invalid(format!("--set {ov}: {message}")),
            None => FormatError::Config { path, message }.into(),
        });
    }
    Ok(cfg)
}

/// A config error whose value came from an override names the `--set`, not the file it was
/// laid on: `config: --set train.epochs=abc: train.epochs: invalid type: ...`.
fn blame_override(e: FormatError, overrides: &[String]) -> TrainError {
    match e {
        // an override that does not parse or does not fit the table: already named
        FormatError::Config { message, .. } if message.starts_with("--set ") => TrainError::Invalid(message),
        FormatError::Config { path, message } => match layering::override_behind(overrides, &message) {
            Some(ov) => TrainError::Invalid(format!("--set {ov}: {message}")),
            None => FormatError::Config { path, message }.into(),
        },
        other => other.into(),
    }
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
        assert!(err.contains("--set model.arch.heads=5") && err.contains("model.heads"), "{err}");
        assert!(!err.contains("c.toml"), "the value came from --set, not the file: {err}");
        std::fs::write(&p, std::fs::read_to_string(&p).unwrap() + "[model.arch]\nheads = 5\n").unwrap();
        let err = load(&[&p], &["train.lr=1e-3".into()]).unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("model.heads") && !err.contains("--set"), "{err}");
        std::fs::write(&p, std::fs::read_to_string(&p).unwrap().replace("heads = 5", "heads = 2")).unwrap();
        // A bad value or key given with --set names the --set, not the file.
        for (set, words) in [
            ("train.epochs=abc", "train.epochs: invalid type"),
            ("train.epohcs=3", "unknown field `epohcs`"),
            ("train.lr=-1", "train.lr: must be positive"),
            ("no-equals", "expected key.path=value"),
        ] {
            let err = load(&[&p], &["train.lr=1e-3".into(), set.into()]).unwrap_err().to_string();
            assert!(err.contains(&format!("--set {set}: ")) && err.contains(words), "{err}");
            assert!(!err.contains("c.toml"), "{err}");
        }
        assert_eq!(parse_device("cpu"), Ok(tch::Device::Cpu));
        assert_eq!(parse_device("cuda:1"), Ok(tch::Device::Cuda(1)));
        assert!(parse_device("tpu").unwrap_err().contains("train.device"));
    }
}
