//! Refuses a run that cannot fit in memory before anything big is allocated. Without it, a
//! million experts or a 100,000 px image size are found out by the kernel (an OOM kill, exit
//! 137) or by the allocator (an abort with a backtrace), after minutes of loading.
//!
//! The need is mlae-core's floor ([`mlae_core::memory`]): parameters, training state,
//! decoded images and one batch's activations, each counted low. It is compared with what the
//! machine has now: on the host the smaller of `MemAvailable` (/proc/meminfo) and the room
//! left under the process's memory cgroup limit, if any; on CUDA the device's free memory.
//! The error names the parts with their figures and the config key that drives each, largest
//! first. `MLAE_MEMORY_CHECK=off` skips the check (a machine whose swap should count, say).

use crate::config::{ExperimentConfig, Precision, Protocol, VitConfigExt};
use crate::error::{Result, TrainError};
use mlae_core::memory::{MemoryFloor, RunShape, floor, human_bytes};
use std::path::{Path, PathBuf};
use tch::Device;

/// Memory a run can use on one side, and where the figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Room {
    pub bytes: f64,
    pub source: String,
}

/// Where a part of the need lives: all of it on a CPU run; a CUDA run keeps the model, its
/// training state, a batch and the training images on the GPU, the decoded images on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Cpu,
    Gpu,
    Host,
}

/// Checks that `cfg`'s run on `task` can fit on `device`; an error says why not.
pub fn check_fits(cfg: &ExperimentConfig, task: &mlae_data::Task, device: Device) -> Result<()> {
    if std::env::var("MLAE_MEMORY_CHECK").is_ok_and(|v| v == "off") {
        return Ok(());
    }
    let Some(shape) = run_shape(cfg, task) else { return Ok(()) };
    let f = floor(&shape);
    let (side, room) = match device {
        Device::Cuda(i) => match gpu_room(i) {
            Some(room) if f.on_gpu() > room.bytes => (Side::Gpu, Some(room)),
            _ => (Side::Host, host_room()),
        },
        _ => (Side::Cpu, host_room()),
    };
    tracing::debug!("memory floor {f:?}, {side:?} room {room:?}");
    match room {
        Some(room) => refusal(cfg, &shape, &f, side, &room).map_or(Ok(()), |m| Err(TrainError::Invalid(m))),
        None => Ok(()),
    }
}

/// The sizes of `cfg`'s run, or `None` when the config is invalid in a way the model
/// builder reports better (it runs next).
fn run_shape(cfg: &ExperimentConfig, task: &mlae_data::Task) -> Option<RunShape> {
    let vit = cfg.vit_config(task.num_classes as i64);
    vit.validate().ok()?;
    let dims = vit.dims();
    let plan = cfg.adapter.resolve(dims.depth).ok()?;
    let params = plan.count_params(&dims);
    let mut splits = vec![cfg.train_split()];
    if cfg.data.protocol == Protocol::Val {
        splits.push(cfg.val_split());
    }
    splits.push(cfg.test_split());
    // a split that does not read is reported when it is loaded, next
    let images = splits.iter().map(|s| task.split(s).map_or(0, |l| l.len())).collect();
    Some(RunShape {
        dims,
        params,
        backprop_blocks: plan.trains_backbone() || !plan.sites().is_empty(),
        batch_size: cfg.train.batch_size,
        eval_batch_size: cfg.train.eval_batch_size,
        compute_bytes: if cfg.train.precision == Precision::Bf16 { 2 } else { 4 },
        image_side: cfg.model.image_size.max(0) as usize,
        images,
    })
}

/// The message refusing the run when its floor on `side` is above `room`, else `None`.
fn refusal(
    cfg: &ExperimentConfig,
    shape: &RunShape,
    f: &MemoryFloor,
    side: Side,
    room: &Room,
) -> Option<String> {
    let need = match side {
        Side::Cpu => f.total(),
        Side::Gpu => f.on_gpu(),
        Side::Host => f.images,
    };
    if need <= room.bytes {
        return None;
    }
    let side_px = cfg.model.image_size;
    let tokens = shape.dims.num_patches + 1;
    let at_size = format!("model.image_size = {side_px}");
    let adapter_key = cfg.adapter.kind.key_settings().first().copied().unwrap_or("adapter.kind");
    let (images, count) = match side {
        Side::Gpu => (f.train_images, shape.images.first().copied().unwrap_or(0)),
        _ => (f.images, shape.images.iter().sum()),
    };
    // (bytes, what, the key that drives it)
    let mut parts: Vec<(f64, String, &str)> = vec![(
        images,
        format!("decoded images ({} of {side_px} x {side_px} px; {at_size})", thousands(count)),
        "model.image_size",
    )];
    if side != Side::Host {
        parts.push((
            f.trained,
            format!(
                "trained parameters with their gradients and AdamW moments ({} parameters; {adapter_key} = {})",
                thousands(shape.params.trainable),
                config_value(cfg, adapter_key)
            ),
            adapter_key,
        ));
        parts.push(if f.pos_table > f.frozen_weights / 2.0 {
            (
                f.frozen_weights,
                format!("frozen weights (a position table of {} positions at {at_size})", thousands(tokens)),
                "model.image_size",
            )
        } else {
            (
                f.frozen_weights,
                format!("frozen weights (model.preset = {})", config_value(cfg, "model.preset")),
                "model.preset",
            )
        });
        parts.push((
            f.activations,
            format!(
                "activations of a batch (train.batch_size = {}, {} tokens an image at {at_size})",
                cfg.train.batch_size,
                thousands(tokens)
            ),
            // past a few thousand tokens an image, the size is what to change
            if tokens > 4096 { "model.image_size" } else { "train.batch_size" },
        ));
    }
    parts.sort_by(|a, b| b.0.total_cmp(&a.0));
    let listed: Vec<String> =
        parts.iter().map(|(bytes, what, _)| format!("{what} {}", human_bytes(*bytes))).collect();
    let place = match side {
        Side::Cpu => "",
        Side::Gpu => " on the GPU",
        Side::Host => " on the host",
    };
    let key = parts[0].2;
    Some(format!(
        "{key}: this run needs at least {} of memory{place} but {} is available ({}): {}; lower {key}",
        human_bytes(need),
        human_bytes(room.bytes),
        room.source,
        listed.join(", "),
    ))
}

/// `key`'s value in the config as TOML writes it (`1000000`, `vit-b16`).
fn config_value(cfg: &ExperimentConfig, key: &str) -> String {
    let json = serde_json::to_value(cfg).unwrap_or_default();
    let pointer = format!("/{}", key.replace('.', "/"));
    match json.pointer(&pointer) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "?".into(),
    }
}

/// `18444000000` -> `18,444,000,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What the host can give now: `MemAvailable`, or less when a memory cgroup limit is nearer.
pub fn host_room() -> Option<Room> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo_available(&meminfo)?;
    let mut room = Room { bytes: available, source: "MemAvailable in /proc/meminfo".into() };
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for (dir, limit, usage) in cgroup_files(&cgroups, Path::new("/sys/fs/cgroup")) {
        let read = |p: &Path| std::fs::read_to_string(p).ok().and_then(|t| t.trim().parse::<f64>().ok());
        if let (Some(limit), Some(usage)) = (read(&limit), read(&usage))
            && limit < 2f64.powi(60)
            && limit - usage < room.bytes
        {
            room = Room {
                bytes: (limit - usage).max(0.0),
                source: format!(
                    "the memory cgroup {} allows {} more",
                    dir.display(),
                    human_bytes(limit - usage)
                ),
            };
        }
    }
    Some(room)
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn meminfo_available(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// The (folder, limit file, usage file) of the process's memory cgroup and its ancestors,
/// from /proc/self/cgroup: cgroup v2 (`0::/path`: memory.max, memory.current) or v1 (a
/// `memory` controller line: memory.limit_in_bytes, memory.usage_in_bytes).
fn cgroup_files(proc_cgroup: &str, root: &Path) -> Vec<(PathBuf, PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let (base, limit, usage) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes", "memory.usage_in_bytes")
        } else {
            continue;
        };
        let mut dir = base.join(path.trim_start_matches('/'));
        loop {
            out.push((dir.clone(), dir.join(limit), dir.join(usage)));
            if dir == base || !dir.pop() {
                break;
            }
        }
    }
    out
}

/// Free memory of CUDA device `index` through the driver (the primary context, which
/// libtorch uses), or `None` when the driver cannot say.
/// Free memory on CUDA device `index` as the driver reports it (`None` when it cannot be asked).
pub fn gpu_free_bytes(index: usize) -> Option<usize> {
    gpu_room(index).map(|r| r.bytes as usize)
}

fn gpu_room(index: usize) -> Option<Room> {
    use std::ffi::c_void;
    type Init = unsafe extern "C" fn(u32) -> i32;
    type DeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type Retain = unsafe extern "C" fn(*mut *mut c_void, i32) -> i32;
    type Release = unsafe extern "C" fn(i32) -> i32;
    type Push = unsafe extern "C" fn(*mut c_void) -> i32;
    type Pop = unsafe extern "C" fn(*mut *mut c_void) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    // SAFETY: the driver's C entry points with the signatures of cuda.h (stable since CUDA
    // 11); every call's status is checked, and the context pushed is popped and released.
    unsafe {
        let lib = libloading::Library::new("libcuda.so.1").ok()?;
        let init = lib.get::<Init>(b"cuInit\0").ok()?;
        let device_get = lib.get::<DeviceGet>(b"cuDeviceGet\0").ok()?;
        let retain = lib.get::<Retain>(b"cuDevicePrimaryCtxRetain\0").ok()?;
        let release = lib.get::<Release>(b"cuDevicePrimaryCtxRelease_v2\0").ok()?;
        let push = lib.get::<Push>(b"cuCtxPushCurrent_v2\0").ok()?;
        let pop = lib.get::<Pop>(b"cuCtxPopCurrent_v2\0").ok()?;
        let mem_get_info = lib.get::<MemGetInfo>(b"cuMemGetInfo_v2\0").ok()?;
        let mut device = 0;
        if init(0) != 0 || device_get(&mut device, i32::try_from(index).ok()?) != 0 {
            return None;
        }
        let mut ctx = std::ptr::null_mut();
        if retain(&mut ctx, device) != 0 {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        let mut ok = push(ctx) == 0;
        if ok {
            ok = mem_get_info(&mut free, &mut total) == 0;
            let mut popped = std::ptr::null_mut();
            pop(&mut popped);
        }
        release(device);
        ok.then(|| Room { bytes: free as f64, source: format!("free memory of CUDA device {index}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_cgroup_files_are_read_as_the_kernel_writes_them() {
        let meminfo =
            "MemTotal:       24000000 kB\nMemFree:        17000000 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(meminfo_available(meminfo), Some(22_000_000.0 * 1024.0));
        let root = Path::new("/sys/fs/cgroup");
        let v1 = "9:name=systemd:/\n4:memory:/process_api/abc\n3:cpuset:/\n";
        let files = cgroup_files(v1, root);
        let dirs: Vec<_> = files.iter().map(|f| f.0.display().to_string()).collect();
        assert_eq!(
            dirs,
            [
                "/sys/fs/cgroup/memory/process_api/abc",
                "/sys/fs/cgroup/memory/process_api",
                "/sys/fs/cgroup/memory"
            ]
        );
        assert!(files[0].1.ends_with("abc/memory.limit_in_bytes"));
        let v2 = cgroup_files("0::/user.slice/session-1.scope\n", root);
        assert_eq!(v2[0].1, Path::new("/sys/fs/cgroup/user.slice/session-1.scope/memory.max"));
        assert_eq!(v2.last().unwrap().0, root);
    }

    /// The quickstart's sizes (DINOv2 ViT-S/14 at 56 px, 10 classes, 1,000 + 1,000 images).
    fn quickstart(sets: &[&str]) -> (ExperimentConfig, RunShape) {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("c.toml");
        std::fs::write(
            &p,
            "[model]\npreset = \"dinov2-s14\"\nimage_size = 56\n[data]\nbenchmark = \"demo\"\ntask = \"mnist5k\"\n\
             root = \"/data\"\nnormalization = \"imagenet\"\n",
        )
        .unwrap();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let cfg = crate::config::load(&[&p], &sets).unwrap();
        let dims = cfg.vit_config(10).dims();
        let plan = cfg.adapter.resolve(dims.depth).unwrap();
        let shape = RunShape {
            params: plan.count_params(&dims),
            dims,
            backprop_blocks: true,
            batch_size: cfg.train.batch_size,
            eval_batch_size: cfg.train.eval_batch_size,
            compute_bytes: 4,
            image_side: cfg.model.image_size as usize,
            images: vec![1000, 1000],
        };
        (cfg, shape)
    }

    fn room(gib: f64) -> Room {
        Room { bytes: gib * 1024f64.powi(3), source: "test".into() }
    }

    #[test]
    fn what_cannot_fit_is_refused_naming_the_key_and_the_figures() {
        let (cfg, shape) = quickstart(&[]);
        assert_eq!(refusal(&cfg, &shape, &floor(&shape), Side::Cpu, &room(16.0)), None);

        let (cfg, shape) = quickstart(&["adapter.mlae.experts=1000000"]);
        let msg = refusal(&cfg, &shape, &floor(&shape), Side::Cpu, &room(16.0)).unwrap();
        assert!(
            msg.starts_with("adapter.mlae.experts: this run needs at least 275.1 GiB of memory but 16.0 GiB is available (test): \
                 trained parameters with their gradients and AdamW moments (18,444,003,850 parameters; \
                 adapter.mlae.experts = 1000000) 274.8 GiB, ")
                && msg.ends_with("; lower adapter.mlae.experts"),
            "{msg}"
        );
        // on a GPU, the GPU's parts
        let msg = refusal(&cfg, &shape, &floor(&shape), Side::Gpu, &room(80.0)).unwrap();
        assert!(
            msg.contains("of memory on the GPU but 80.0 GiB") && msg.contains("decoded images (1,000 of"),
            "{msg}"
        );

        let (cfg, shape) = quickstart(&["model.image_size=100002"]);
        let msg = refusal(&cfg, &shape, &floor(&shape), Side::Cpu, &room(16.0)).unwrap();
        assert!(
            msg.starts_with("model.image_size: this run needs at least") && msg.contains("51,022,450 tokens"),
            "{msg}"
        );
        assert!(
            msg.contains("a position table of 51,022,450 positions at model.image_size = 100002) 73.1 GiB"),
            "{msg}"
        );
        // a CUDA run's host only holds the decoded images
        let msg = refusal(&cfg, &shape, &floor(&shape), Side::Host, &room(16.0)).unwrap();
        assert!(msg.contains("on the host") && !msg.contains("activations"), "{msg}");
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(18_444_000_000), "18,444,000,000");
    }

    #[test]
    fn this_machine_reports_some_room() {
        if Path::new("/proc/meminfo").exists() {
            let room = host_room().unwrap();
            assert!(room.bytes > 0.0, "{room:?}");
        }
    }
}
