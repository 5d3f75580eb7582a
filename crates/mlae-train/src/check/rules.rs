//! The PASS / FAIL rules of the check, one function per rule, on figures only (no tensors),
//! so that each rule is tested on its own.

use super::Verdict;
use crate::bench::ParityReport;
use tch::Device;

/// The training step passes when the mean loss of the last quarter of the steps is below
/// this fraction of the first quarter's.
pub const LOSS_FALL: f64 = 0.95;
/// Largest |logit difference| allowed between the merged and the unmerged model (fp32).
pub const MERGE_TOL: f64 = 1e-4;
/// Largest |logit difference| allowed between a CUDA device and the CPU in fp32, with TF32
/// off on the device (see [`parity_verdict`]).
pub const PARITY_FP32: f64 = 1e-4;
/// The same in bf16 (both sides computing in bf16).
pub const PARITY_BF16: f64 = 2e-2;
/// The compute capability from which a GPU computes bf16 natively (Ampere).
pub const BF16_MIN_CAPABILITY: (i32, i32) = (8, 0);

/// Mean of the first and of the last quarter of `losses` (at least one value each).
pub fn loss_ends(losses: &[f64]) -> Option<(f64, f64)> {
    if losses.len() < 2 {
        return None;
    }
    let k = (losses.len() / 4).max(1);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    Some((mean(&losses[..k]), mean(&losses[losses.len() - k..])))
}

/// Training: every loss finite, and the last quarter's mean below [`LOSS_FALL`] x the first's.
pub fn loss_verdict(losses: &[f64]) -> (Verdict, String) {
    if let Some(bad) = losses.iter().position(|l| !l.is_finite()) {
        return (Verdict::Fail, format!("loss {} at step {bad}", losses[bad]));
    }
    match loss_ends(losses) {
        None => (Verdict::Fail, format!("only {} losses recorded", losses.len())),
        Some((first, last)) if last < LOSS_FALL * first => (
            Verdict::Pass,
            format!("loss {first:.4} -> {last:.4} (first -> last quarter of {} steps)", losses.len()),
        ),
        Some((first, last)) => (
            Verdict::Fail,
            format!(
                "loss did not fall: {first:.4} -> {last:.4} (first -> last quarter of {} steps; must end below \
                 {LOSS_FALL} x)",
                losses.len()
            ),
        ),
    }
}

/// Merged inference: the merged model computes the unmerged one's logits within [`MERGE_TOL`]
/// (a NaN fails).
pub fn merge_verdict(max_abs_diff: f64) -> (Verdict, String) {
    let verdict = if max_abs_diff <= MERGE_TOL { Verdict::Pass } else { Verdict::Fail };
    (verdict, format!("merged vs unmerged logits max |diff| {max_abs_diff:.2e} (tolerance {MERGE_TOL:e})"))
}

/// GPU against CPU. The fp32 figure judged is the one with cuDNN off on the device: libtorch
/// lets cuDNN convolutions use TF32 by default (10 mantissa bits), which alone can move the
/// patch embedding past 1e-4, and tch 0.24 has no switch for TF32 (only for cuDNN). Without
/// cuDNN the convolution runs as a cuBLAS product, and libtorch keeps TF32 off for cuBLAS by
/// default. The cuDNN (TF32) figure is reported beside it, not judged.
pub fn parity_verdict(p: &ParityReport) -> (Verdict, String) {
    let fp32_ok = p.fp32_no_cudnn_max_abs_diff <= PARITY_FP32;
    let bf16_ok = p.bf16_max_abs_diff <= PARITY_BF16;
    let verdict = if fp32_ok && bf16_ok { Verdict::Pass } else { Verdict::Fail };
    let mark = |ok: bool| if ok { "" } else { " FAILED" };
    (
        verdict,
        format!(
            "max |logit diff| fp32 {:.2e} (TF32 off: cuDNN off; tolerance {PARITY_FP32:e}){}, bf16 {:.2e} \
             (tolerance {PARITY_BF16:e}){}; fp32 with cuDNN's TF32 {:.2e} (not judged); largest |logit| {:.3}",
            p.fp32_no_cudnn_max_abs_diff,
            mark(fp32_ok),
            p.bf16_max_abs_diff,
            mark(bf16_ok),
            p.fp32_max_abs_diff,
            p.cpu_logit_max_abs
        ),
    )
}

/// Whether the bf16 training step applies: the CPU computes bf16 (slowly); a GPU needs
/// compute capability [`BF16_MIN_CAPABILITY`] (unknown: tried). `Err` is the reason to skip.
pub fn bf16_applies(cuda: bool, gpu: &str, capability: Option<(i32, i32)>) -> Result<(), String> {
    match capability {
        Some(cc) if cuda && cc < BF16_MIN_CAPABILITY => Err(format!(
            "{gpu} has compute capability {}.{}; bf16 needs {}.{} (Ampere) or newer",
            cc.0, cc.1, BF16_MIN_CAPABILITY.0, BF16_MIN_CAPABILITY.1
        )),
        _ => Ok(()),
    }
}

/// The doctor: the libtorch release tch needs, and the requested device usable. A CPU that
/// stands in for a missing GPU under `auto` passes, saying why there is no CUDA.
pub fn doctor_verdict(
    version: Option<&str>,
    version_ok: bool,
    device: &Result<Device, String>,
    cuda_problem: Option<&str>,
) -> (Verdict, String) {
    let version = version.unwrap_or("unknown");
    if !version_ok {
        return (
            Verdict::Fail,
            format!("libtorch {version} is not the {} that tch needs", mlae_vit::runtime::EXPECTED_LIBTORCH),
        );
    }
    match (device, cuda_problem) {
        (Err(e), _) => (Verdict::Fail, e.clone()),
        (Ok(Device::Cuda(i)), _) => (Verdict::Pass, format!("libtorch {version}; CUDA device cuda:{i}")),
        (Ok(_), Some(why)) => {
            (Verdict::Pass, format!("libtorch {version}; no CUDA ({why}): the CPU variant runs"))
        }
        (Ok(_), None) => (Verdict::Pass, format!("libtorch {version}; the CPU was asked for")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_falling_finite_loss_passes_and_a_flat_one_fails() {
        let falling = [1.4, 1.3, 1.2, 1.0, 0.9, 0.8, 0.6, 0.5];
        let (v, note) = loss_verdict(&falling);
        assert_eq!(v, Verdict::Pass, "{note}");
        assert!(note.contains("1.3500 -> 0.5500"), "{note}");
        let (v, note) = loss_verdict(&[1.4, 1.4, 1.39, 1.38]);
        assert_eq!(v, Verdict::Fail);
        assert!(note.starts_with("loss did not fall"), "{note}");
        // A fall of 4 % is not enough.
        assert_eq!(loss_verdict(&[1.0, 1.0, 0.96, 0.96]).0, Verdict::Fail);
        assert_eq!(loss_verdict(&[1.0, 1.0, 0.94, 0.94]).0, Verdict::Pass);
        let (v, note) = loss_verdict(&[1.4, f64::NAN, 0.1, 0.1]);
        assert_eq!(v, Verdict::Fail);
        assert!(note.contains("step 1"), "{note}");
        assert_eq!(loss_verdict(&[1.0]).0, Verdict::Fail);
        assert_eq!(loss_verdict(&[]).0, Verdict::Fail);
    }

    #[test]
    fn a_merge_difference_over_the_tolerance_fails() {
        assert_eq!(merge_verdict(3e-6).0, Verdict::Pass);
        assert_eq!(merge_verdict(MERGE_TOL).0, Verdict::Pass);
        let (v, note) = merge_verdict(2e-3);
        assert_eq!(v, Verdict::Fail);
        assert!(note.contains("2.00e-3"), "{note}");
        assert_eq!(merge_verdict(f64::NAN).0, Verdict::Fail);
    }

    fn parity(fp32: f64, no_cudnn: f64, bf16: f64) -> ParityReport {
        ParityReport {
            batch: 8,
            cpu_logit_max_abs: 2.5,
            fp32_max_abs_diff: fp32,
            fp32_no_cudnn_max_abs_diff: no_cudnn,
            bf16_max_abs_diff: bf16,
        }
    }

    #[test]
    fn parity_judges_fp32_without_tf32() {
        // TF32 in cuDNN's convolution alone: 3e-3, but 2e-5 without it: PASS.
        let (v, note) = parity_verdict(&parity(3e-3, 2e-5, 1e-2));
        assert_eq!(v, Verdict::Pass, "{note}");
        assert!(note.contains("fp32 2.00e-5") && note.contains("3.00e-3 (not judged)"), "{note}");
        let (v, note) = parity_verdict(&parity(1e-5, 2e-4, 1e-2));
        assert_eq!(v, Verdict::Fail);
        assert!(note.contains("tolerance 1e-4) FAILED"), "{note}");
        let (v, note) = parity_verdict(&parity(1e-5, 1e-5, 3e-2));
        assert_eq!(v, Verdict::Fail);
        assert!(note.contains("tolerance 2e-2) FAILED"), "{note}");
        assert_eq!(parity_verdict(&parity(0.0, f64::NAN, 0.0)).0, Verdict::Fail);
    }

    #[test]
    fn the_doctor_fails_a_wrong_libtorch_or_a_missing_device_and_says_why() {
        let ok = Ok(Device::Cpu);
        let (v, note) = doctor_verdict(Some("2.11.0"), true, &ok, Some("CPU-only libtorch: ..."));
        assert_eq!(v, Verdict::Pass);
        assert_eq!(note, "libtorch 2.11.0; no CUDA (CPU-only libtorch: ...): the CPU variant runs");
        assert_eq!(doctor_verdict(Some("2.11.0"), true, &Ok(Device::Cuda(0)), None).0, Verdict::Pass);
        let (v, note) = doctor_verdict(Some("2.10.0"), false, &ok, None);
        assert_eq!(v, Verdict::Fail);
        assert!(note.contains("2.10.0 is not the 2.11.0"), "{note}");
        let missing = Err("--device = cuda: libtorch sees no CUDA device: no GPU visible".to_string());
        let (v, note) = doctor_verdict(Some("2.11.0"), true, &missing, Some("no GPU visible"));
        assert_eq!(v, Verdict::Fail);
        assert!(note.ends_with("no GPU visible"), "{note}");
    }

    #[test]
    fn bf16_is_skipped_on_gpus_before_ampere_only() {
        assert!(bf16_applies(false, "cpu", None).is_ok());
        assert!(bf16_applies(true, "cuda:0 NVIDIA H100", Some((9, 0))).is_ok());
        assert!(bf16_applies(true, "cuda:0 NVIDIA A100", Some((8, 0))).is_ok());
        assert!(bf16_applies(true, "cuda:0 (unknown GPU)", None).is_ok());
        let why = bf16_applies(true, "cuda:0 Tesla T4", Some((7, 5))).unwrap_err();
        assert_eq!(why, "cuda:0 Tesla T4 has compute capability 7.5; bf16 needs 8.0 (Ampere) or newer");
    }
}
