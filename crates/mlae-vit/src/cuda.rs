//! The CUDA stack under libtorch, asked at every level: whether this libtorch is a CUDA build
//! (`libtorch_cuda.so` mapped into the process), the CUDA and cuDNN versions it was built
//! with, and what the NVIDIA driver (`libcuda.so.1`, asked directly) sees.
//!
//! Why: libtorch alone only says "no CUDA", which cannot tell a CPU-only libtorch from a
//! missing or too old driver from a machine whose GPUs are hidden. [`diagnose`] says which.

use crate::runtime::GpuInfo;

/// What the NVIDIA driver says, asked without libtorch.
#[derive(Debug, Clone, PartialEq)]
pub enum Driver {
    /// `libcuda.so.1` cannot be loaded (the loader's words): no driver is installed, or it is
    /// not where the loader looks.
    Missing(String),
    /// `cuInit` failed: its error name and code, and the CUDA version the driver supports
    /// when it told us.
    InitFailed { code: i32, name: String, cuda_version: Option<i32> },
    /// The driver works: the CUDA version it supports (`cuDriverGetVersion`, e.g. 12080 for
    /// 12.8) and the GPUs it sees.
    Ready { cuda_version: i32, gpus: Vec<GpuInfo> },
}

impl Driver {
    /// One line for `doctor`.
    pub fn describe(&self) -> String {
        match self {
            Driver::Missing(e) => format!("not found ({e})"),
            Driver::InitFailed { code, name, cuda_version } => format!(
                "cuInit failed: {name} ({code}){}",
                cuda_version.map_or(String::new(), |v| format!(
                    "; the driver supports CUDA {}",
                    cuda_version_text(v)
                ))
            ),
            Driver::Ready { cuda_version, gpus } => {
                format!("supports CUDA {}, sees {} GPU(s)", cuda_version_text(*cuda_version), gpus.len())
            }
        }
    }

    pub fn gpus(&self) -> &[GpuInfo] {
        match self {
            Driver::Ready { gpus, .. } => gpus,
            _ => &[],
        }
    }
}

/// `12080` as `12.8` (the driver API's and the CUDA runtime's integer versions).
pub fn cuda_version_text(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// `91002` as `9.10.2` (cuDNN 9 counts major x 10000; earlier releases major x 1000).
pub fn cudnn_version_text(v: i64) -> String {
    if v >= 90000 {
        format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v % 1000) / 100, v % 100)
    }
}

/// The facts [`diagnose`] reads; [`facts`] collects them in this process.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaFacts {
    /// CUDA devices libtorch sees.
    pub torch_devices: i64,
    /// Whether `libtorch_cuda.so` is mapped into this process (a CUDA build of libtorch).
    pub libtorch_cuda: bool,
    /// The CUDA runtime version libtorch was built with (e.g. 13000), when it is a CUDA build.
    pub built_cuda: Option<i64>,
    /// The cuDNN version libtorch was built with, when it is a CUDA build.
    pub built_cudnn: Option<i64>,
    pub driver: Driver,
    /// The kernel module's version line (`/proc/driver/nvidia/version`), e.g. `570.86.15`.
    pub kernel_module: Option<String>,
    /// `CUDA_VISIBLE_DEVICES`, when set: it can hide every GPU.
    pub visible_devices: Option<String>,
}

/// Why libtorch sees no CUDA device; `None` from [`diagnose`] when it sees one.
#[derive(Debug, Clone, PartialEq)]
pub enum CudaProblem {
    /// `libtorch_cuda.so` is not loaded: this libtorch cannot use a GPU whatever the machine has.
    CpuOnlyLibtorch,
    /// No usable driver: `libcuda.so.1` is missing, or `cuInit` failed.
    NoDriver(String),
    /// The driver supports an older CUDA major version than libtorch was built with.
    DriverTooOld { driver: i32, built: i64 },
    /// The driver works but sees no GPU (or `CUDA_VISIBLE_DEVICES` hides them).
    NoGpu { visible_devices: Option<String> },
    /// Everything below libtorch looks fine, yet it sees no device.
    Unexplained { gpus: usize },
}

impl std::fmt::Display for CudaProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaProblem::CpuOnlyLibtorch => write!(
                f,
                "CPU-only libtorch: libtorch_cuda.so is not loaded, so no GPU can be used; install the CUDA \
                 build of torch 2.11.0 and point LD_LIBRARY_PATH at its lib/"
            ),
            CudaProblem::NoDriver(why) => write!(
                f,
                "no working NVIDIA driver: {why}; install or repair the driver (`nvidia-smi` must list the GPU)"
            ),
            CudaProblem::DriverTooOld { driver, built } => write!(
                f,
                "NVIDIA driver too old: it supports CUDA {} but libtorch was built with CUDA {}; update the \
                 driver or use a torch build for CUDA {}",
                cuda_version_text(*driver),
                cuda_version_text(*built as i32),
                driver / 1000
            ),
            CudaProblem::NoGpu { visible_devices: Some(v) } => write!(
                f,
                "no GPU visible: the NVIDIA driver sees none with CUDA_VISIBLE_DEVICES={v:?} (unset it, or \
                 name an existing GPU)"
            ),
            CudaProblem::NoGpu { visible_devices: None } => {
                write!(f, "no GPU visible: the NVIDIA driver works but sees no GPU on this machine")
            }
            CudaProblem::Unexplained { gpus } => write!(
                f,
                "libtorch sees no CUDA device although the driver sees {gpus} GPU(s) and libtorch is a CUDA \
                 build; run `nvidia-smi` and check the device permissions"
            ),
        }
    }
}

/// `CUresult` of `cuInit` when the driver works but finds no device.
const CUDA_ERROR_NO_DEVICE: i32 = 100;

/// Why libtorch sees no CUDA device, from the facts: first the libtorch build, then the
/// driver, then the GPUs. `None` when libtorch sees a device.
pub fn diagnose(f: &CudaFacts) -> Option<CudaProblem> {
    if f.torch_devices > 0 {
        return None;
    }
    if !f.libtorch_cuda {
        return Some(CudaProblem::CpuOnlyLibtorch);
    }
    let no_gpu = || CudaProblem::NoGpu { visible_devices: f.visible_devices.clone() };
    // A driver that did not say its version (0) is not judged too old.
    let too_old = |driver: i32| {
        f.built_cuda
            .filter(|b| driver > 0 && (driver as i64) / 1000 < b / 1000)
            .map(|built| CudaProblem::DriverTooOld { driver, built })
    };
    Some(match &f.driver {
        Driver::Missing(e) => CudaProblem::NoDriver(format!("libcuda.so.1 cannot be loaded ({e})")),
        Driver::InitFailed { code, .. } if *code == CUDA_ERROR_NO_DEVICE => no_gpu(),
        Driver::InitFailed { code, name, cuda_version } => match cuda_version.and_then(too_old) {
            Some(p) => p,
            None => CudaProblem::NoDriver(format!("cuInit failed with {name} ({code})")),
        },
        Driver::Ready { cuda_version, gpus } => match too_old(*cuda_version) {
            Some(p) => p,
            None if gpus.is_empty() => no_gpu(),
            None => CudaProblem::Unexplained { gpus: gpus.len() },
        },
    })
}

/// Whether a library whose file name is `name` is mapped into this process.
pub fn library_loaded(name: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|maps| {
        maps.lines().filter_map(|l| l.split_whitespace().nth(5)).any(|p| p.rsplit('/').next() == Some(name))
    })
}

/// Collects the facts in this process. Never fails; asks the driver even when libtorch sees
/// no device.
pub fn facts() -> CudaFacts {
    let libtorch_cuda = library_loaded("libtorch_cuda.so");
    // The versions come from libtorch's CUDA hooks, registered by libtorch_cuda.so; without it
    // the call raises a C++ error that tch turns into a panic.
    let built = |f: fn() -> i64| {
        if !libtorch_cuda {
            return None;
        }
        std::panic::catch_unwind(f).ok().filter(|v| *v > 0)
    };
    CudaFacts {
        torch_devices: tch::Cuda::device_count(),
        libtorch_cuda,
        built_cuda: built(tch::utils::version_cudart),
        built_cudnn: built(tch::utils::version_cudnn),
        driver: driver(),
        kernel_module: std::fs::read_to_string("/proc/driver/nvidia/version")
            .ok()
            .and_then(|t| t.lines().next().map(kernel_module_version)),
        visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
    }
}

/// The version in `NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15  Thu ...`, or the
/// whole line when it has another form.
fn kernel_module_version(line: &str) -> String {
    line.split("Kernel Module")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or(line.trim())
        .to_string()
}

/// Asks the driver API (`libcuda.so.1`) for its CUDA version and its devices: names, memory
/// and compute capability, because libtorch's C API that tch wraps exposes none of them.
pub fn driver() -> Driver {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDriverGetVersion = unsafe extern "C" fn(*mut i32) -> i32;
    type CuGetErrorName = unsafe extern "C" fn(i32, *mut *const std::ffi::c_char) -> i32;
    type CuDeviceGetCount = unsafe extern "C" fn(*mut i32) -> i32;
    type CuDeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type CuDeviceGetName = unsafe extern "C" fn(*mut std::ffi::c_char, i32, i32) -> i32;
    type CuDeviceTotalMem = unsafe extern "C" fn(*mut usize, i32) -> i32;
    type CuDeviceGetAttribute = unsafe extern "C" fn(*mut i32, i32, i32) -> i32;
    const MAJOR: i32 = 75; // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    const MINOR: i32 = 76;

    // SAFETY: libcuda.so.1 is the NVIDIA driver library; the symbols below have had these C
    // signatures since CUDA 3.2 (cuGetErrorName since 6.0), and every out-pointer we pass is
    // valid for the call. A missing symbol is reported, never called.
    unsafe {
        let lib = match libloading::Library::new("libcuda.so.1") {
            Ok(lib) => lib,
            // libloading's message is "dlopen failed"; the loader's own words are its source.
            Err(e) => {
                let why = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
                return Driver::Missing(why);
            }
        };
        let (Ok(init), Ok(version), Ok(count), Ok(get), Ok(name), Ok(mem)) = (
            lib.get::<CuInit>(b"cuInit\0"),
            lib.get::<CuDriverGetVersion>(b"cuDriverGetVersion\0"),
            lib.get::<CuDeviceGetCount>(b"cuDeviceGetCount\0"),
            lib.get::<CuDeviceGet>(b"cuDeviceGet\0"),
            lib.get::<CuDeviceGetName>(b"cuDeviceGetName\0"),
            lib.get::<CuDeviceTotalMem>(b"cuDeviceTotalMem_v2\0"),
        ) else {
            return Driver::Missing("it lacks the driver API's symbols".into());
        };
        let attribute = lib.get::<CuDeviceGetAttribute>(b"cuDeviceGetAttribute\0").ok();
        let mut v = 0i32;
        let cuda_version = (version(&mut v) == 0).then_some(v);
        let code = init(0);
        if code != 0 {
            let mut text: *const std::ffi::c_char = std::ptr::null();
            let name = match lib.get::<CuGetErrorName>(b"cuGetErrorName\0") {
                Ok(f) if f(code, &mut text) == 0 && !text.is_null() => {
                    std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned()
                }
                _ => "CUDA error".to_string(),
            };
            return Driver::InitFailed { code, name, cuda_version };
        }
        let mut n = 0i32;
        if count(&mut n) != 0 {
            n = 0;
        }
        let mut gpus = Vec::new();
        for i in 0..n {
            let mut dev = 0i32;
            if get(&mut dev, i) != 0 {
                continue;
            }
            let mut buf = [0 as std::ffi::c_char; 256];
            let name = if name(buf.as_mut_ptr(), buf.len() as i32, dev) == 0 {
                std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
            } else {
                "(unknown)".to_string()
            };
            let mut bytes = 0usize;
            let total = if mem(&mut bytes, dev) == 0 { bytes as u64 } else { 0 };
            let compute_capability = attribute.as_ref().and_then(|attr| {
                let (mut major, mut minor) = (0i32, 0i32);
                (attr(&mut major, MAJOR, dev) == 0 && attr(&mut minor, MINOR, dev) == 0)
                    .then_some((major, minor))
            });
            gpus.push(GpuInfo { index: i as usize, name, total_memory_bytes: total, compute_capability });
        }
        Driver::Ready { cuda_version: cuda_version.unwrap_or(0), gpus }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu() -> GpuInfo {
        GpuInfo {
            index: 0,
            name: "NVIDIA H100".into(),
            total_memory_bytes: 80 << 30,
            compute_capability: Some((9, 0)),
        }
    }

    /// A CUDA build of libtorch 2.11 (CUDA 13.0) on a machine whose driver supports 13.0 and
    /// sees one GPU, but libtorch sees none.
    fn facts() -> CudaFacts {
        CudaFacts {
            torch_devices: 0,
            libtorch_cuda: true,
            built_cuda: Some(13000),
            built_cudnn: Some(91002),
            driver: Driver::Ready { cuda_version: 13000, gpus: vec![gpu()] },
            kernel_module: Some("580.65.06".into()),
            visible_devices: None,
        }
    }

    #[test]
    fn each_cause_of_no_cuda_is_told_apart() {
        assert_eq!(diagnose(&CudaFacts { torch_devices: 1, ..facts() }), None);
        // A CPU-only libtorch comes first: no driver would help it.
        let cpu_only = CudaFacts { libtorch_cuda: false, built_cuda: None, ..facts() };
        assert_eq!(diagnose(&cpu_only), Some(CudaProblem::CpuOnlyLibtorch));
        assert!(diagnose(&cpu_only).unwrap().to_string().starts_with("CPU-only libtorch"));
        let missing =
            CudaFacts { driver: Driver::Missing("cannot open shared object file".into()), ..facts() };
        let text = diagnose(&missing).unwrap().to_string();
        assert!(text.starts_with("no working NVIDIA driver") && text.contains("libcuda.so.1"), "{text}");
        let old = CudaFacts { driver: Driver::Ready { cuda_version: 12040, gpus: vec![gpu()] }, ..facts() };
        assert_eq!(diagnose(&old), Some(CudaProblem::DriverTooOld { driver: 12040, built: 13000 }));
        let text = diagnose(&old).unwrap().to_string();
        assert!(
            text.contains("too old") && text.contains("CUDA 12.4") && text.contains("CUDA 13.0"),
            "{text}"
        );
        // Same major version: CUDA's minor-version compatibility, not the cause.
        let minor = CudaFacts {
            driver: Driver::Ready { cuda_version: 13000, gpus: vec![] },
            built_cuda: Some(13020),
            ..facts()
        };
        assert_eq!(diagnose(&minor), Some(CudaProblem::NoGpu { visible_devices: None }));
        let no_device = CudaFacts {
            driver: Driver::InitFailed {
                code: 100,
                name: "CUDA_ERROR_NO_DEVICE".into(),
                cuda_version: Some(13000),
            },
            visible_devices: Some(String::new()),
            ..facts()
        };
        let text = diagnose(&no_device).unwrap().to_string();
        assert!(text.starts_with("no GPU visible") && text.contains("CUDA_VISIBLE_DEVICES=\"\""), "{text}");
        let broken = CudaFacts {
            driver: Driver::InitFailed {
                code: 803,
                name: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH".into(),
                cuda_version: Some(13000),
            },
            ..facts()
        };
        assert!(diagnose(&broken).unwrap().to_string().contains("CUDA_ERROR_SYSTEM_DRIVER_MISMATCH (803)"));
        assert_eq!(diagnose(&facts()), Some(CudaProblem::Unexplained { gpus: 1 }));
    }

    #[test]
    fn versions_read_as_their_releases() {
        assert_eq!(gpu().describe(), "cuda:0 NVIDIA H100 (80.0 GiB, compute capability 9.0)");
        assert_eq!(cuda_version_text(12080), "12.8");
        assert_eq!(cuda_version_text(13000), "13.0");
        assert_eq!(cudnn_version_text(91002), "9.10.2");
        assert_eq!(cudnn_version_text(8907), "8.9.7");
        assert_eq!(
            kernel_module_version(
                "NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15  Thu Jan  9 2025"
            ),
            "570.86.15"
        );
    }

    /// This process: the answers agree with each other, whatever the machine has.
    #[test]
    fn the_facts_of_this_process_are_consistent() {
        let f = super::facts();
        assert_eq!(f.libtorch_cuda, f.built_cuda.is_some(), "{f:?}");
        assert!(library_loaded("libtorch_cpu.so"));
        assert!(!library_loaded("libnot-a-library.so"));
        assert_eq!(diagnose(&f).is_none(), f.torch_devices > 0, "{f:?}");
    }
}
