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

/// `spec` given as `key` (`train.device`, `--device`) as a device this process can use: the
/// string parsed as [`parse_device`] does, then a CUDA device checked against the devices
/// libtorch sees. Why: libtorch panics at the first tensor put on a device that does not
/// exist; the error here names the key, the value and why CUDA is missing when it is.
pub fn resolve_device(key: &str, spec: &str) -> std::result::Result<tch::Device, String> {
    let parsed = spec
        .parse::<DeviceSpec>()
        .map_err(|_| format!("{key}: `{spec}` is not one of auto, cpu, cuda, cuda:N"))?;
    let count = tch::Cuda::device_count();
    pick_device(key, spec, parsed, count, || {
        mlae_vit::runtime::runtime_info().cuda_problem().map_or("no reason found".into(), |p| p.to_string())
    })
}

/// [`resolve_device`] given the number of CUDA devices libtorch sees and, when it sees none,
/// why (asked only then).
fn pick_device(
    key: &str,
    spec: &str,
    parsed: DeviceSpec,
    cuda_devices: i64,
    why_none: impl FnOnce() -> String,
) -> std::result::Result<tch::Device, String> {
    match parsed {
        DeviceSpec::Cpu => Ok(tch::Device::Cpu),
        DeviceSpec::Auto if cuda_devices > 0 => Ok(tch::Device::Cuda(0)),
        DeviceSpec::Auto => Ok(tch::Device::Cpu),
        DeviceSpec::Cuda(n) if (n as i64) < cuda_devices => Ok(tch::Device::Cuda(n)),
        DeviceSpec::Cuda(_) if cuda_devices > 0 => Err(format!(
            "{key} = {spec}: no such device; libtorch sees {cuda_devices} CUDA device(s), cuda:0 to cuda:{}",
            cuda_devices - 1
        )),
        DeviceSpec::Cuda(_) => Err(format!("{key} = {spec}: libtorch sees no CUDA device: {}", why_none())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_that_does_not_exist_names_the_key_and_why() {
        let never = || -> String { panic!("asked why although devices exist") };
        let pick = |spec: &str, n| {
            pick_device("train.device", spec, spec.parse().unwrap(), n, || "no GPU visible".into())
        };
        assert_eq!(pick("cpu", 0), Ok(tch::Device::Cpu));
        assert_eq!(pick("auto", 0), Ok(tch::Device::Cpu));
        assert_eq!(pick("auto", 2), Ok(tch::Device::Cuda(0)));
        assert_eq!(pick_device("k", "cuda:1", DeviceSpec::Cuda(1), 2, never), Ok(tch::Device::Cuda(1)));
        let err = pick_device("train.device", "cuda:7", DeviceSpec::Cuda(7), 2, never).unwrap_err();
        assert_eq!(
            err,
            "train.device = cuda:7: no such device; libtorch sees 2 CUDA device(s), cuda:0 to cuda:1"
        );
        assert_eq!(
            pick("cuda", 0).unwrap_err(),
            "train.device = cuda: libtorch sees no CUDA device: no GPU visible"
        );
        // This machine: an error (never a panic) unless it has eight GPUs.
        match resolve_device("train.device", "cuda:7") {
            Ok(d) => assert_eq!(d, tch::Device::Cuda(7)),
            Err(e) => assert!(e.starts_with("train.device = cuda:7: "), "{e}"),
        }
        assert_eq!(
            resolve_device("--device", "tpu").unwrap_err(),
            "--device: `tpu` is not one of auto, cpu, cuda, cuda:N"
        );
    }

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
