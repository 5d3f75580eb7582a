//! Per-epoch metrics (one JSON line each in `metrics.jsonl`) and the memory probe.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Accuracy and loss on one split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub acc: f64,
    pub loss: f64,
    pub n: usize,
}

/// One line of `metrics.jsonl`, written after each epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epochs completed (1-based).
    pub epoch: u64,
    /// Optimizer steps completed.
    pub step: u64,
    /// Learning rate of the main group at the last step of the epoch.
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    /// Evaluations run after this epoch, keyed by split name (`test`, `val200`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eval: BTreeMap<String, EvalResult>,
    /// Training throughput over the epoch.
    pub images_per_s: f64,
    /// Wall time of the epoch (training and evaluation).
    pub seconds: f64,
    /// Peak memory so far: process RSS on CPU, device memory in use on CUDA.
    pub peak_mem_mb: f64,
}

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
    fn epoch_metrics_round_trip_through_json() {
        let mut eval = BTreeMap::new();
        eval.insert("test".to_string(), EvalResult { acc: 0.5, loss: 1.25, n: 10 });
        let m = EpochMetrics {
            epoch: 3,
            step: 48,
            lr: 1e-3,
            train_loss: 0.75,
            train_acc: 0.8,
            eval,
            images_per_s: 12.5,
            seconds: 4.0,
            peak_mem_mb: 100.0,
        };
        let line = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<EpochMetrics>(&line).unwrap(), m);
        assert!(peak_rss_mb() > 0.0);
    }
}
