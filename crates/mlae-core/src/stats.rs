//! Summary statistics the benchmarks share (the Rust bench, and xtask's comparisons against
//! PyTorch and PIL), in one place so every table takes its medians the same way.

/// The median of `v`, the mean of the two middle values for an even count; NaN when `v` is
/// empty (so a missing figure shows as missing rather than as zero). NaNs in `v` sort last
/// (`f64::total_cmp`).
///
/// ```
/// assert_eq!(mlae_core::stats::median(&[3.0, 1.0, 2.0]), 2.0);
/// assert!(mlae_core::stats::median(&[]).is_nan());
/// ```
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_even_and_empty() {
        assert_eq!(median(&[5.0]), 5.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
        assert_eq!(median(&[-1.0, 1.0]), 0.0);
        assert!(median(&[]).is_nan());
    }
}
