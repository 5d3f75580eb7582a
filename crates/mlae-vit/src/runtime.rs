//! What libtorch this process runs on: version, location, CUDA devices, threads.
//!
//! Used by `mlae-cli doctor` and written into every run's summary, so that a result can
//! always be traced to the library and hardware that produced it.

use std::path::{Path, PathBuf};

/// The PyTorch release that tch 0.24 is built for; any other libtorch is a set-up error.
pub const EXPECTED_LIBTORCH: &str = "2.11.0";

/// One CUDA device as the driver reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    pub index: usize,
    pub name: String,
    pub total_memory_bytes: u64,
    /// (major, minor), e.g. (9, 0) for an H100; bf16 needs 8.0 or newer.
    pub compute_capability: Option<(i32, i32)>,
}

impl GpuInfo {
    /// `cuda:0 NVIDIA H100 (79.2 GiB, compute capability 9.0)`.
    pub fn describe(&self) -> String {
        let cc =
            self.compute_capability.map_or(String::new(), |(a, b)| format!(", compute capability {a}.{b}"));
        format!(
            "cuda:{} {} ({:.1} GiB{cc})",
            self.index,
            self.name,
            self.total_memory_bytes as f64 / 1073741824.0
        )
    }
}

/// A snapshot of the runtime, cheap to take (no kernels are launched).
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    /// Version of the loaded libtorch, read from the files beside it (`version.py` of a pip
    /// install, or `build-version` of a libtorch zip).
    pub libtorch_version: Option<String>,
    /// Directory of the `libtorch_cpu.so` actually mapped into this process.
    pub libtorch_dir: Option<PathBuf>,
    /// The libtorch directory the binary was linked against (its rpath).
    pub linked_dir: Option<&'static str>,
    pub cuda_available: bool,
    pub cudnn_available: bool,
    pub cuda_device_count: i64,
    /// The GPUs the NVIDIA driver sees, asked directly (also when libtorch sees none).
    pub gpus: Vec<GpuInfo>,
    /// The CUDA stack below libtorch: its build, the driver, and why CUDA is unusable if it is.
    pub cuda: crate::cuda::CudaFacts,
    pub torch_threads: i32,
    pub torch_interop_threads: i32,
    pub available_cores: usize,
    pub has_mkl: bool,
    pub has_mkldnn: bool,
    pub has_openmp: bool,
}

impl RuntimeInfo {
    /// Why libtorch sees no CUDA device (a CPU-only build, the driver, no GPU); `None` when
    /// it sees one.
    pub fn cuda_problem(&self) -> Option<crate::cuda::CudaProblem> {
        crate::cuda::diagnose(&self.cuda)
    }

    /// True when the loaded libtorch is the release tch expects.
    pub fn version_ok(&self) -> bool {
        self.libtorch_version.as_deref().is_some_and(|v| v.split('+').next() == Some(EXPECTED_LIBTORCH))
    }

    /// A short device description for summaries, e.g. `cpu (2 threads)` or `cuda:0 NVIDIA H100`.
    pub fn device_label(&self, device: tch::Device) -> String {
        match device {
            tch::Device::Cuda(i) => {
                let name = self.gpus.iter().find(|g| g.index == i).map(|g| g.name.as_str());
                format!("cuda:{i} {}", name.unwrap_or("(unknown GPU)"))
            }
            _ => format!("cpu ({} threads)", self.torch_threads),
        }
    }
}

/// Whether frozen fp32 linear layers on the CPU run through oneDNN ([`set_onednn_linear`]).
static ONEDNN_LINEAR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Fewest rows (tokens times batch) for which the oneDNN path is used. On ViT-S shapes it was
/// as fast as BLAS at 197 rows (one 224 px image) and faster from a few hundred rows on; tiny
/// inputs such as the head's class-token rows stay on BLAS.
pub const ONEDNN_LINEAR_MIN_ROWS: i64 = 128;

/// Chooses how fp32 linear layers run on the CPU: through oneDNN as a 1x1 convolution on a
/// channels-last view (default; `MLAE_ONEDNN_LINEAR=0` in the environment turns it off at
/// start-up), or through libtorch's `linear` (MKL's sgemm). Both compute the same function;
/// oneDNN was 10-20 % faster on the GEMM shapes of ViT-S/B on an AVX-512 CPU, forward and
/// backward, where MKL does not use AVX-512 on AMD processors.
pub fn set_onednn_linear(enabled: bool) {
    ONEDNN_LINEAR.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`set_onednn_linear`] is on (and not turned off by `MLAE_ONEDNN_LINEAR=0`).
pub fn onednn_linear_enabled() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let env_on = *ENV.get_or_init(|| std::env::var("MLAE_ONEDNN_LINEAR").map_or(true, |v| v != "0"));
    env_on && ONEDNN_LINEAR.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether a linear layer on `x` computing in `kind` takes the oneDNN path: fp32 on the CPU,
/// enough rows, oneDNN compiled in, and more than one thread (libtorch picks oneDNN for a
/// 1x1 convolution of one image only when it may use several threads).
pub(crate) fn onednn_linear_applies(x: &tch::Tensor, kind: tch::Kind) -> bool {
    if kind != tch::Kind::Float || x.kind() != tch::Kind::Float || x.device() != tch::Device::Cpu {
        return false;
    }
    let size = x.size();
    let rows: i64 = size[..size.len().saturating_sub(1)].iter().product();
    rows >= ONEDNN_LINEAR_MIN_ROWS
        && onednn_linear_enabled()
        && tch::get_num_threads() > 1
        && *MKLDNN.get_or_init(tch::utils::has_mkldnn)
}

static MKLDNN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Keeps freed tensor memory in the process for reuse instead of handing it back to the
/// kernel after every step.
///
/// Why: glibc serves large allocations with fresh mappings and trims freed heap tops, so a
/// training step's activations (tens of MiB each) are faulted in and zeroed page by page again
/// at every step: about 110k page faults per ViT-S/16 step at batch 16, some 8 % of the step
/// on 2 cores. Raising glibc's mmap threshold to its maximum (32 MiB) and the trim threshold to
/// 1 GiB keeps that memory in the heap. The price is resident memory that is freed but still
/// mapped. Call once at start-up, before tensors exist; `MLAE_TUNE_MALLOC=0` skips it.
/// Returns whether it was applied (only with glibc).
pub fn tune_allocator() -> bool {
    if std::env::var("MLAE_TUNE_MALLOC").is_ok_and(|v| v == "0") {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocation policy; it is safe to call at any
        // time and returns 0 when a value is refused.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
        };
        ALLOCATOR_TUNED.store(ok, std::sync::atomic::Ordering::Relaxed);
        ok
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

static ALLOCATOR_TUNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`tune_allocator`] was applied in this process.
pub fn allocator_tuned() -> bool {
    ALLOCATOR_TUNED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Collects the runtime facts. Never fails: what cannot be read is reported as unknown.
pub fn runtime_info() -> RuntimeInfo {
    let libtorch_dir = loaded_libtorch_dir();
    let libtorch_version = libtorch_dir.as_deref().and_then(libtorch_version_near);
    let cuda_available = tch::Cuda::is_available();
    let cuda_device_count = if cuda_available { tch::Cuda::device_count() } else { 0 };
    let cuda = crate::cuda::facts();
    RuntimeInfo {
        libtorch_version,
        libtorch_dir,
        linked_dir: option_env!("MLAE_LIBTORCH_LIB"),
        cuda_available,
        cudnn_available: cuda_available && tch::Cuda::cudnn_is_available(),
        cuda_device_count,
        gpus: cuda.driver.gpus().to_vec(),
        cuda,
        torch_threads: tch::get_num_threads(),
        torch_interop_threads: tch::get_num_interop_threads(),
        available_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        has_mkl: tch::utils::has_mkl(),
        has_mkldnn: tch::utils::has_mkldnn(),
        has_openmp: tch::utils::has_openmp(),
    }
}

/// The directory of the libtorch mapped into this process, from `/proc/self/maps`: the
/// ground truth, whatever rpath or LD_LIBRARY_PATH said.
fn loaded_libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
}

/// Reads the version of a libtorch from the files next to its `lib` directory.
pub fn libtorch_version_near(lib_dir: &Path) -> Option<String> {
    let root = lib_dir.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("__version__") {
                let v = rest.trim_start_matches([' ', '=', ':']).trim();
                let v = v.rsplit('=').next().unwrap_or(v).trim().trim_matches(['\'', '"']);
                if !v.is_empty() {
                    return Some(v.to_string());
                }
            }
        }
    }
    std::fs::read_to_string(root.join("build-version"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_of_a_pip_install() {
        let dir = std::env::temp_dir().join(format!("mlae-vit-ver-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::write(
            dir.join("version.py"),
            "from typing import Optional\n__version__ = '2.11.0+cu130'\ncuda: Optional[str] = '13.0'\n",
        )
        .unwrap();
        assert_eq!(libtorch_version_near(&dir.join("lib")).as_deref(), Some("2.11.0+cu130"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_loaded_libtorch_is_the_expected_release() {
        let info = runtime_info();
        assert!(info.libtorch_dir.is_some(), "libtorch_cpu.so not found in /proc/self/maps");
        assert!(info.version_ok(), "unexpected libtorch version {:?}", info.libtorch_version);
        assert!(info.torch_threads >= 1);
    }
}
