//! Merging experts into a weight update, and exporting MLAE as an exact LoRA.
//!
//! Layout (the official layer's): `A` is `(n k, in)` and `B` is `(n k, out)`; expert `i` owns
//! rows `i k .. (i + 1) k` of both, and `lambda` has one coefficient per expert. The update is
//!
//! ```text
//! dW = B^T diag(m * lambda, each repeated k) A        (out, in)
//! ```
//!
//! so a layer computes `y = W x + dW x`. Because `B^T diag(w) A = (diag(w) B)^T A`, folding
//! lambda into B turns an MLAE adapter into a plain rank-`n k` LoRA with scaling 1: the export is
//! exact (up to one rounding of the products `lambda_i b_i`), and the merged model costs nothing
//! extra at inference.

use crate::error::CoreError;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis, linalg::general_mat_mul};
use serde::{Deserialize, Serialize};

/// Checks that A, B, lambda (and a mask) describe the same experts; returns the number of
/// experts `n`.
///
/// ```
/// use mlae_core::check_expert_shapes;
/// use ndarray::Array2;
/// let a = Array2::<f32>::zeros((8, 16));
/// let b = Array2::<f32>::zeros((8, 48));
/// assert_eq!(check_expert_shapes(a.view(), b.view(), Some(4), None, 2).unwrap(), 4);
/// assert!(check_expert_shapes(a.view(), b.view(), Some(4), None, 3).is_err()); // 8 rows, k = 3
/// ```
pub fn check_expert_shapes(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    lambda_len: Option<usize>,
    mask_len: Option<usize>,
    expert_rank: usize,
) -> Result<usize, CoreError> {
    let shape = |what, message: String| Err(CoreError::Shape { what, message });
    if expert_rank == 0 {
        return shape("expert_rank", "must be at least 1".into());
    }
    let rows = a.nrows();
    if b.nrows() != rows {
        return shape("B", format!("has {} rows but A has {rows}; both need n * k rows", b.nrows()));
    }
    if !rows.is_multiple_of(expert_rank) {
        return shape("A", format!("has {rows} rows, not a multiple of expert_rank = {expert_rank}"));
    }
    let n = rows / expert_rank;
    if let Some(l) = lambda_len
        && l != n
    {
        return shape(
            "lambda",
            format!("has {l} entries but there are {n} experts ({rows} rows / k = {expert_rank})"),
        );
    }
    if let Some(m) = mask_len
        && m != n
    {
        return shape("mask", format!("has {m} entries but there are {n} experts"));
    }
    Ok(n)
}

/// The per-row weights `m_i * lambda_i`, each repeated `k` times.
fn row_weights(lambda: ArrayView1<f32>, mask: Option<ArrayView1<f32>>, k: usize) -> Array1<f32> {
    Array1::from_iter(
        lambda.iter().enumerate().flat_map(|(i, &l)| std::iter::repeat_n(mask.map_or(l, |m| m[i] * l), k)),
    )
}

/// `A` with row `j` scaled by `w[j]`.
fn scale_rows(a: ArrayView2<f32>, w: &Array1<f32>) -> Array2<f32> {
    let mut out = a.to_owned();
    for (mut row, &s) in out.axis_iter_mut(Axis(0)).zip(w) {
        row *= s;
    }
    out
}

/// [`merge_delta`], returning an error instead of panicking on mismatched shapes.
///
/// ```
/// use mlae_core::try_merge_delta;
/// use ndarray::{array, Array2};
/// let a = Array2::<f32>::ones((4, 3)); // 2 experts of rank 2, in = 3
/// let b = Array2::<f32>::ones((4, 5)); // out = 5
/// let dw = try_merge_delta(a.view(), b.view(), array![1.0f32, 0.5].view(), None, 2).unwrap();
/// assert_eq!(dw, Array2::from_elem((5, 3), 3.0)); // 2 * 1 + 2 * 0.5
/// assert!(try_merge_delta(a.view(), b.view(), array![1.0f32].view(), None, 2).is_err());
/// ```
pub fn try_merge_delta(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    lambda: ArrayView1<f32>,
    mask: Option<ArrayView1<f32>>,
    expert_rank: usize,
) -> Result<Array2<f32>, CoreError> {
    check_expert_shapes(a, b, Some(lambda.len()), mask.map(|m| m.len()), expert_rank)?;
    let w = row_weights(lambda, mask, expert_rank);
    Ok(b.t().dot(&scale_rows(a, &w)))
}

/// The weight update `dW = B^T diag(m * lambda) A`, shape `(out, in)`, for experts of rank
/// `expert_rank`. `mask` holds one factor per expert (0/1, or the scales of
/// [`crate::MaskSampler`]); `None` means all on, as at inference.
///
/// # Panics
/// On mismatched shapes (see [`check_expert_shapes`]; [`try_merge_delta`] returns the error).
///
/// ```
/// use mlae_core::merge_delta;
/// use ndarray::{array, Array1};
/// // two rank-1 experts, in = 2, out = 3
/// let a = array![[1.0f32, 0.0], [0.0, 1.0]];
/// let b = array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]];
/// let lambda = array![2.0f32, 1.0];
/// let dw = merge_delta(a.view(), b.view(), lambda.view(), None, 1);
/// assert_eq!(dw, array![[2.0, 4.0], [4.0, 5.0], [6.0, 6.0]]);
/// // masking expert 1 leaves 2 b_0 a_0
/// let m = array![1.0f32, 0.0];
/// let dw = merge_delta(a.view(), b.view(), lambda.view(), Some(m.view()), 1);
/// assert_eq!(dw, array![[2.0, 0.0], [4.0, 0.0], [6.0, 0.0]]);
/// ```
pub fn merge_delta(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    lambda: ArrayView1<f32>,
    mask: Option<ArrayView1<f32>>,
    expert_rank: usize,
) -> Array2<f32> {
    try_merge_delta(a, b, lambda, mask, expert_rank).unwrap_or_else(|e| panic!("merge_delta: {e}"))
}

/// Adds `dW = B^T diag(m * lambda) A` into a weight `w` of shape `(out, in)` in place (the
/// timm/PyTorch layout of a linear layer's weight), without allocating dW.
///
/// ```
/// use mlae_core::{add_delta_into, merge_delta};
/// use ndarray::{array, Array2};
/// let a = array![[1.0f32, 2.0]];
/// let b = array![[3.0f32, 4.0, 5.0]];
/// let l = array![0.5f32];
/// let mut w = Array2::<f32>::ones((3, 2));
/// add_delta_into(w.view_mut(), a.view(), b.view(), l.view(), None, 1).unwrap();
/// assert_eq!(w, merge_delta(a.view(), b.view(), l.view(), None, 1) + 1.0);
/// ```
pub fn add_delta_into(
    w: ArrayViewMut2<f32>,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    lambda: ArrayView1<f32>,
    mask: Option<ArrayView1<f32>>,
    expert_rank: usize,
) -> Result<(), CoreError> {
    check_expert_shapes(a, b, Some(lambda.len()), mask.map(|m| m.len()), expert_rank)?;
    if w.dim() != (b.ncols(), a.ncols()) {
        return Err(CoreError::Shape {
            what: "W",
            message: format!("is {:?} but the update is ({}, {}) = (out, in)", w.dim(), b.ncols(), a.ncols()),
        });
    }
    let scaled = scale_rows(a, &row_weights(lambda, mask, expert_rank));
    let mut w = w;
    general_mat_mul(1.0, &b.t(), &scaled, 1.0, &mut w);
    Ok(())
}

/// B with each expert's rows scaled by its lambda: `B' = diag(lambda repeated k) B`, so that
/// `B'^T A = B^T diag(lambda) A`.
///
/// # Panics
/// If `b.nrows() != lambda.len() * expert_rank`.
///
/// ```
/// use mlae_core::fold_lambda_into_b;
/// use ndarray::array;
/// let b = array![[1.0f32, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]];
/// let folded = fold_lambda_into_b(b.view(), array![10.0f32, -1.0].view(), 2);
/// assert_eq!(folded, array![[10.0, 10.0], [20.0, 20.0], [-3.0, -3.0], [-4.0, -4.0]]);
/// ```
pub fn fold_lambda_into_b(b: ArrayView2<f32>, lambda: ArrayView1<f32>, expert_rank: usize) -> Array2<f32> {
    assert!(
        expert_rank > 0 && b.nrows() == lambda.len() * expert_rank,
        "fold_lambda_into_b: B has {} rows but lambda has {} entries of rank {expert_rank}",
        b.nrows(),
        lambda.len()
    );
    scale_rows(b, &row_weights(lambda, None, expert_rank))
}

/// A LoRA in PEFT's layout: `lora_a` is `(r, in)`, `lora_b` is `(out, r)`, and the layer
/// computes `base(x) + lora_b (lora_a x) * alpha / r`.
///
/// ```
/// use mlae_core::PeftLora;
/// use ndarray::array;
/// let lora = PeftLora { lora_a: array![[1.0f32, 2.0]], lora_b: array![[1.0f32], [3.0]], rank: 1, alpha: 2.0 };
/// assert_eq!(lora.scaling(), 2.0);
/// assert_eq!(lora.delta(), array![[2.0, 4.0], [6.0, 12.0]]);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftLora {
    /// `(r, in)`: PEFT's `lora_A.weight`.
    pub lora_a: Array2<f32>,
    /// `(out, r)`: PEFT's `lora_B.weight`.
    pub lora_b: Array2<f32>,
    /// r, PEFT's `r`.
    pub rank: usize,
    /// PEFT's `lora_alpha`; for an exported MLAE adapter alpha = r, so the scaling is 1.
    pub alpha: f64,
}

impl PeftLora {
    /// PEFT's scaling, alpha / r.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The update this LoRA adds to the weight: `scaling * lora_b lora_a`, `(out, in)`.
    pub fn delta(&self) -> Array2<f32> {
        let mut d = self.lora_b.dot(&self.lora_a);
        let s = self.scaling() as f32;
        if s != 1.0 {
            d *= s;
        }
        d
    }
}

/// Exports an MLAE layer (all experts on, as at inference) as a rank-`n k` PEFT LoRA with
/// alpha = r, by folding lambda into B. Exact: `lora_b lora_a` equals [`merge_delta`] up to
/// the single rounding of each product `lambda_i b_i` (bit-for-bit when lambda are powers of 2).
///
/// # Panics
/// On mismatched shapes (see [`check_expert_shapes`]).
///
/// ```
/// use mlae_core::{merge_delta, to_peft_lora};
/// use ndarray::array;
/// let a = array![[1.0f32, 2.0], [3.0, 4.0]];
/// let b = array![[1.0f32, 0.0, 1.0], [0.0, 1.0, 1.0]];
/// let lambda = array![0.5f32, 2.0];
/// let lora = to_peft_lora(a.view(), b.view(), lambda.view(), 1);
/// assert_eq!(lora.lora_a.dim(), (2, 2));
/// assert_eq!(lora.lora_b.dim(), (3, 2));
/// assert_eq!((lora.rank, lora.alpha, lora.scaling()), (2, 2.0, 1.0));
/// assert_eq!(lora.delta(), merge_delta(a.view(), b.view(), lambda.view(), None, 1));
/// ```
pub fn to_peft_lora(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    lambda: ArrayView1<f32>,
    expert_rank: usize,
) -> PeftLora {
    check_expert_shapes(a, b, Some(lambda.len()), None, expert_rank)
        .unwrap_or_else(|e| panic!("to_peft_lora: {e}"));
    let rank = a.nrows();
    PeftLora {
        lora_a: a.to_owned(),
        lora_b: fold_lambda_into_b(b, lambda, expert_rank).reversed_axes().as_standard_layout().into_owned(),
        rank,
        alpha: rank as f64,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic pseudo-random matrix with entries in [-1, 1).
    pub(crate) fn mat(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        let key = crate::rng::stream_key(seed, 0, rows as u64, cols as u64);
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            (crate::rng::unit_f64(crate::rng::nth_u64(key, (i * cols + j) as u64)) * 2.0 - 1.0) as f32
        })
    }

    /// sum_i m_i lambda_i B_i^T A_i, one expert at a time, each as a sum of outer products.
    fn naive(
        a: &Array2<f32>,
        b: &Array2<f32>,
        lambda: &[f32],
        mask: Option<&[f32]>,
        k: usize,
    ) -> Array2<f64> {
        let (inn, out) = (a.ncols(), b.ncols());
        let mut dw = Array2::<f64>::zeros((out, inn));
        for (i, &l) in lambda.iter().enumerate() {
            let w = l as f64 * mask.map_or(1.0, |m| m[i] as f64);
            for row in i * k..(i + 1) * k {
                for o in 0..out {
                    for c in 0..inn {
                        dw[[o, c]] += w * b[[row, o]] as f64 * a[[row, c]] as f64;
                    }
                }
            }
        }
        dw
    }

    fn max_abs_diff(x: &Array2<f32>, y: &Array2<f64>) -> f64 {
        x.iter().zip(y).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max)
    }

    proptest! {
        #[test]
        fn merge_equals_sum_of_expert_outer_products(n in 1usize..6, k in 1usize..4, inn in 1usize..20,
                                                     out in 1usize..20, seed in any::<u64>(), masked in any::<bool>()) {
            let a = mat(n * k, inn, seed);
            let b = mat(n * k, out, seed ^ 1);
            let lambda: Vec<f32> = mat(1, n, seed ^ 2).iter().map(|x| x * 4.0).collect();
            let mask: Vec<f32> = (0..n).map(|i| if (seed >> i) & 1 == 1 { 2.0 } else { 0.0 }).collect();
            let mask_opt = masked.then_some(&mask[..]);
            let got = merge_delta(a.view(), b.view(), ArrayView1::from(&lambda), mask_opt.map(ArrayView1::from), k);
            prop_assert_eq!(got.dim(), (out, inn));
            let want = naive(&a, &b, &lambda, mask_opt, k);
            // each entry sums n k products of magnitude <= 4 * 2: f32 error well under 1e-4
            prop_assert!(max_abs_diff(&got, &want) < 1e-4, "diff {}", max_abs_diff(&got, &want));
        }

        #[test]
        fn lora_fold_is_exact(n in 1usize..6, k in 1usize..4, inn in 1usize..20, out in 1usize..20,
                              seed in any::<u64>()) {
            let a = mat(n * k, inn, seed);
            let b = mat(n * k, out, seed ^ 1);
            let lambda: Vec<f32> = mat(1, n, seed ^ 2).iter().map(|x| x * 4.0).collect();
            let l = ArrayView1::from(&lambda);
            let lora = to_peft_lora(a.view(), b.view(), l, k);
            prop_assert_eq!(lora.rank, n * k);
            prop_assert_eq!(lora.scaling(), 1.0);
            // the LoRA forward equals the MLAE forward on an input
            let x = mat(inn, 3, seed ^ 3);
            let lora_y = lora.lora_b.dot(&lora.lora_a.dot(&x));
            let mlae_y = merge_delta(a.view(), b.view(), l, None, k).dot(&x);
            let diff = (&lora_y - &mlae_y).iter().fold(0.0f32, |m, v| m.max(v.abs()));
            prop_assert!(diff < 1e-4, "{}", diff);
            let want = naive(&a, &b, &lambda, None, k);
            prop_assert!(max_abs_diff(&lora.delta(), &want) < 1e-4);
        }
    }

    #[test]
    fn fold_is_bit_exact_for_power_of_two_coefficients() {
        let (n, k, inn, out) = (4, 2, 33, 65);
        let a = mat(n * k, inn, 1);
        let b = mat(n * k, out, 2);
        let lambda = ndarray::array![0.125f32, 4.0, -2.0, 1.0];
        let lora = to_peft_lora(a.view(), b.view(), lambda.view(), k);
        // With exact scalings, (lambda b) a and b (lambda a) round identically.
        assert_eq!(lora.delta(), merge_delta(a.view(), b.view(), lambda.view(), None, k));
        assert!(lora.lora_b.is_standard_layout());
    }

    #[test]
    fn add_into_matches_merge_and_checks_w() {
        let a = mat(6, 7, 3);
        let b = mat(6, 5, 4);
        let lambda = ndarray::array![1.0f32, -0.5, 3.0];
        let mask = ndarray::array![2.0f32, 0.0, 2.0];
        let w0 = mat(5, 7, 5);
        let mut w = w0.clone();
        add_delta_into(w.view_mut(), a.view(), b.view(), lambda.view(), Some(mask.view()), 2).unwrap();
        let want = &w0 + &merge_delta(a.view(), b.view(), lambda.view(), Some(mask.view()), 2);
        assert!((&w - &want).iter().all(|d| d.abs() < 1e-5));
        let mut wrong = Array2::<f32>::zeros((7, 5));
        let e = add_delta_into(wrong.view_mut(), a.view(), b.view(), lambda.view(), None, 2).unwrap_err();
        assert!(e.to_string().starts_with("W: is (7, 5)"), "{e}");
    }

    #[test]
    fn shape_errors_name_the_argument() {
        let a = Array2::<f32>::zeros((4, 3));
        let b = Array2::<f32>::zeros((4, 2));
        let l2 = Array1::<f32>::ones(2);
        let l3 = Array1::<f32>::ones(3);
        let e = try_merge_delta(a.view(), b.view(), l3.view(), None, 2).unwrap_err();
        assert!(e.to_string().starts_with("lambda: has 3 entries but there are 2 experts"), "{e}");
        let e = try_merge_delta(a.view(), b.view(), l2.view(), Some(l3.view()), 2).unwrap_err();
        assert!(e.to_string().starts_with("mask:"), "{e}");
        let e = try_merge_delta(a.view(), b.view(), l2.view(), None, 0).unwrap_err();
        assert!(e.to_string().starts_with("expert_rank:"), "{e}");
        let e = try_merge_delta(a.view(), b.view(), l2.view(), None, 3).unwrap_err();
        assert!(e.to_string().starts_with("A: has 4 rows"), "{e}");
    }

    #[test]
    #[should_panic(expected = "merge_delta: lambda")]
    fn merge_delta_panics_with_the_message() {
        let a = Array2::<f32>::zeros((4, 3));
        merge_delta(a.view(), a.view(), Array1::<f32>::ones(3).view(), None, 1);
    }
}
