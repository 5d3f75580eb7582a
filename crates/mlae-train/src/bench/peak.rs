//! The machine's measured fp32 matrix-product peak, the yardstick of the training step's
//! achieved FLOP/s.

use super::config::median;
use crate::error::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// fp32 matrix-product throughput of this libtorch on `device`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatmulPeak {
    /// Side of the square products.
    pub size: i64,
    /// The faster of the two paths below, in GFLOP/s: the peak.
    pub gflops: f64,
    /// `torch.matmul` (the BLAS libtorch links, MKL on x86).
    pub blas_gflops: f64,
    /// The same product as a oneDNN 1x1 convolution, the CPU path of mlae-vit's frozen linear
    /// layers (on AMD CPUs MKL does not use AVX-512 and oneDNN does); `None` on CUDA.
    pub onednn_gflops: Option<f64>,
    pub threads: i32,
}

/// The machine's measured fp32 matmul peak: `warmup + steps` products of two random
/// `size x size` matrices per path, timed one by one (each read back), `2 size^3` / median
/// time. The training step's achieved FLOP/s is stated as a fraction of it; a large square
/// product is the best case of a GEMM library, so the fraction says how far the step's mixed,
/// smaller products (and its other work) are from it.
pub fn matmul_peak(device: Device, size: i64, warmup: usize, steps: usize) -> Result<MatmulPeak> {
    if size < 1 || steps == 0 {
        return Err(TrainError::Bench(format!("matmul size {size} and steps {steps} must be at least 1")));
    }
    tch::manual_seed(0);
    let a = Tensor::randn([size, size], (Kind::Float, device));
    let b = Tensor::randn([size, size], (Kind::Float, device));
    let flops = 2.0 * (size as f64).powi(3);
    let time = |f: &dyn Fn() -> Tensor| {
        let mut times = Vec::with_capacity(steps);
        tch::no_grad(|| {
            for i in 0..warmup + steps {
                let start = Instant::now();
                let _ = f().double_value(&[0, 0]);
                if i >= warmup {
                    times.push(start.elapsed().as_secs_f64());
                }
            }
        });
        flops / median(&times) / 1e9
    };
    let blas_gflops = time(&|| a.matmul(&b));
    let onednn_gflops = (device == Device::Cpu && tch::utils::has_mkldnn())
        .then(|| time(&|| mlae_vit::linear::linear_onednn(&a, &b, None)));
    Ok(MatmulPeak {
        size,
        gflops: blas_gflops.max(onednn_gflops.unwrap_or(0.0)),
        blas_gflops,
        onednn_gflops,
        threads: tch::get_num_threads(),
    })
}
