//! The memory probes behind `peak_mem_mb` of each `metrics.jsonl` line.

/// The metrics line format is shared (mlae-formats): the trainer writes it, tools read it.
pub use mlae_formats::{EpochMetrics, EvalResult};

/// Peak resident memory of this process in MiB (`VmHWM` from /proc), or 0 if unknown.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Tracks the peak GPU memory in use, sampled through the CUDA driver (`cuMemGetInfo`), since
/// libtorch's allocator statistics are not reachable from tch. It counts what the caching
/// allocator holds (as `nvidia-smi` does), so it is an upper bound of the tensors alive.
#[derive(Debug, Default)]
pub struct GpuMemProbe {
    lib: Option<libloading::Library>,
    peak_bytes: u64,
}

type CuMemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;

impl GpuMemProbe {
    pub fn new() -> Self {
        // SAFETY: loading the NVIDIA driver library has no side effects beyond its own
        // initialisers; a machine without it simply gets no probe.
        let lib = unsafe { libloading::Library::new("libcuda.so.1") }.ok();
        Self { lib, peak_bytes: 0 }
    }

    /// Samples the memory in use now and updates the peak.
    pub fn sample(&mut self) {
        let Some(lib) = &self.lib else { return };
        // SAFETY: cuMemGetInfo_v2 has had this C signature since CUDA 3.2; it needs a current
        // context, which libtorch has made by the time a step ran on the GPU (else it fails
        // with an error code, which we ignore).
        let used = unsafe {
            let Ok(f) = lib.get::<CuMemGetInfo>(b"cuMemGetInfo_v2\0") else { return };
            let (mut free, mut total) = (0usize, 0usize);
            if f(&mut free, &mut total) != 0 {
                return;
            }
            total.saturating_sub(free) as u64
        };
        self.peak_bytes = self.peak_bytes.max(used);
    }

    pub fn peak_mb(&self) -> f64 {
        self.peak_bytes as f64 / (1024.0 * 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_has_a_resident_peak() {
        assert!(peak_rss_mb() > 0.0);
    }
}
