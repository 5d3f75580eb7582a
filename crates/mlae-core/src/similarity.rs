//! Parameter cosine similarity among experts (paper appendix A.4).
//!
//! Each expert's full matrix `E_i = B_i^T A_i` (for qkv of ViT-B: 2304 x 768) is flattened and
//! compared with every other expert of the same layer by cosine similarity; the report averages
//! over pairs, then over layers. For plain LoRA the "experts" are the rank-1 outer products of
//! matching rows of A and B (pass the LoRA's A and B with `expert_rank = 1`).
//!
//! The matrices are never built. With `A_i` `(k, in)` and `B_i` `(k, out)`:
//!
//! ```text
//! <B_i^T A_i, B_j^T A_j>_F = tr(A_i^T B_i B_j^T A_j) = <A_i A_j^T, B_i B_j^T>_F
//! ```
//!
//! so two Gram matrices, `A A^T` and `B B^T` (`n k` square), give every inner product; for
//! rank-1 experts this is `cos(b_i a_i, b_j a_j) = cos(a_i, a_j) cos(b_i, b_j)`. Sums are in f64.
//!
//! A zero expert (B is zero at initialisation) has cosine 0 with everything, itself included,
//! like PyTorch's `cosine_similarity` with its epsilon.

use crate::error::CoreError;
use crate::merge::check_expert_shapes;
use ndarray::{Array2, ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

/// `X X^T` in f64, for the rows of `x` (which may be a strided view).
fn gram(x: ArrayView2<f32>) -> Array2<f64> {
    let x64 = x.mapv(f64::from);
    x64.dot(&x64.t())
}

/// [`expert_similarity`], returning an error instead of panicking on mismatched shapes.
///
/// ```
/// use mlae_core::try_expert_similarity;
/// use ndarray::Array2;
/// let a = Array2::<f32>::ones((4, 3));
/// assert_eq!(try_expert_similarity(a.view(), a.view(), 2).unwrap().dim(), (2, 2));
/// assert!(try_expert_similarity(a.view(), a.view(), 3).is_err()); // 4 rows, k = 3
/// ```
pub fn try_expert_similarity(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    expert_rank: usize,
) -> Result<Array2<f64>, CoreError> {
    let n = check_expert_shapes(a, b, None, None, expert_rank)?;
    let k = expert_rank;
    let (ga, gb) = (gram(a), gram(b));
    // inner[i][j] = sum over the k x k block (i, j) of ga * gb
    let mut inner = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in i..n {
            let mut s = 0.0;
            for p in 0..k {
                for q in 0..k {
                    s += ga[[i * k + p, j * k + q]] * gb[[i * k + p, j * k + q]];
                }
            }
            inner[[i, j]] = s;
            inner[[j, i]] = s;
        }
    }
    let norms: Vec<f64> = (0..n).map(|i| inner[[i, i]].max(0.0).sqrt()).collect();
    Ok(Array2::from_shape_fn((n, n), |(i, j)| {
        let d = norms[i] * norms[j];
        if d == 0.0 {
            0.0
        } else if i == j {
            1.0
        } else {
            (inner[[i, j]] / d).clamp(-1.0, 1.0)
        }
    }))
}

/// The `n x n` matrix of cosine similarities between the flattened experts `B_i^T A_i` of one
/// layer (A `(n k, in)`, B `(n k, out)`, expert `i` in rows `i k .. (i + 1) k`). For a LoRA in
/// PEFT's layout pass `lora_b.t()`.
///
/// # Panics
/// On mismatched shapes ([`try_expert_similarity`] returns the error).
///
/// ```
/// use mlae_core::expert_similarity;
/// use ndarray::array;
/// // rank-1 experts: cos(b_i a_i, b_j a_j) = cos(a_i, a_j) cos(b_i, b_j)
/// let a = array![[1.0f32, 0.0], [1.0, 1.0], [0.0, 2.0]];
/// let b = array![[1.0f32, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]];
/// let s = expert_similarity(a.view(), b.view(), 1);
/// assert!((s[[0, 1]] - 1.0 / 2f64.sqrt()).abs() < 1e-12); // same b, a at 45 degrees
/// assert_eq!(s[[0, 2]], 0.0);
/// assert_eq!(s[[1, 1]], 1.0);
/// ```
pub fn expert_similarity(a: ArrayView2<f32>, b: ArrayView2<f32>, expert_rank: usize) -> Array2<f64> {
    try_expert_similarity(a, b, expert_rank).unwrap_or_else(|e| panic!("expert_similarity: {e}"))
}

/// Like [`expert_similarity`] but for the scaled experts `lambda_i B_i^T A_i`: cosine ignores
/// the size of lambda, so only its sign matters (entries flip where `lambda_i lambda_j < 0`).
///
/// # Panics
/// On mismatched shapes.
///
/// ```
/// use mlae_core::{expert_similarity, expert_similarity_with_coefficients};
/// use ndarray::array;
/// let a = array![[1.0f32, 0.0], [1.0, 0.0]];
/// let b = array![[1.0f32], [1.0]];
/// let s = expert_similarity_with_coefficients(a.view(), b.view(), array![3.0f32, -0.5].view(), 1);
/// assert_eq!(s[[0, 1]], -1.0);
/// assert_eq!(expert_similarity(a.view(), b.view(), 1)[[0, 1]], 1.0);
/// ```
pub fn expert_similarity_with_coefficients(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    lambda: ArrayView1<f32>,
    expert_rank: usize,
) -> Array2<f64> {
    check_expert_shapes(a, b, Some(lambda.len()), None, expert_rank)
        .unwrap_or_else(|e| panic!("expert_similarity_with_coefficients: {e}"));
    let mut s = expert_similarity(a, b, expert_rank);
    let sign = |x: f32| {
        if x > 0.0 {
            1.0
        } else if x < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    for ((i, j), v) in s.indexed_iter_mut() {
        *v *= sign(lambda[i]) * sign(lambda[j]);
    }
    s
}

/// The mean of the strictly upper triangle (all pairs `i < j`); NaN when there are fewer
/// than two experts.
///
/// ```
/// use mlae_core::mean_pairwise;
/// use ndarray::array;
/// let m = array![[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]];
/// assert!((mean_pairwise(&m) - 0.4).abs() < 1e-12);
/// assert!(mean_pairwise(&array![[1.0]]).is_nan());
/// ```
pub fn mean_pairwise(m: &Array2<f64>) -> f64 {
    let n = m.nrows().min(m.ncols());
    let (mut sum, mut count) = (0.0, 0usize);
    for i in 0..n {
        for j in i + 1..n {
            sum += m[[i, j]];
            count += 1;
        }
    }
    if count == 0 { f64::NAN } else { sum / count as f64 }
}

/// The similarity of one layer's experts (one entry of [`SimilarityReport::layers`]).
///
/// ```
/// use mlae_core::SimilarityReport;
/// use ndarray::array;
/// let a = array![[1.0f32, 0.0], [1.0, 1.0]];
/// let b = array![[1.0f32], [1.0]];
/// let layer = &SimilarityReport::from_layers([("l", a.view(), b.view(), 1)]).layers[0];
/// assert_eq!(layer.name, "l");
/// assert!((layer.mean - layer.matrix[[0, 1]]).abs() < 1e-15);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSimilarity {
    /// The layer's name, e.g. `blocks.3.attn.qkv`.
    pub name: String,
    /// The `n x n` cosine matrix.
    pub matrix: Array2<f64>,
    /// Mean over pairs `i < j` (NaN for a single expert).
    pub mean: f64,
}

/// Similarity of every adapted layer of a model, as in the paper's Fig. 4 and 5.
///
/// ```
/// use mlae_core::SimilarityReport;
/// use ndarray::array;
/// let a = array![[1.0f32, 0.0], [0.0, 1.0]];
/// let b = array![[1.0f32, 1.0], [1.0, 1.0]];
/// let r = SimilarityReport::from_layers([("blocks.0.attn.qkv", a.view(), b.view(), 1)]);
/// assert_eq!(r.layers[0].mean, 0.0); // orthogonal a's
/// assert_eq!(r.mean, 0.0);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimilarityReport {
    /// One entry per layer, in the order given.
    pub layers: Vec<LayerSimilarity>,
    /// The mean of the layers' means (the paper's "average over the 12 blocks"), skipping
    /// layers with fewer than two experts; NaN if none has two.
    pub mean: f64,
}

impl SimilarityReport {
    /// Builds the report from `(name, A, B, expert_rank)` per layer; errors name the layer.
    pub fn try_from_layers<'a, I, S>(layers: I) -> Result<Self, CoreError>
    where
        I: IntoIterator<Item = (S, ArrayView2<'a, f32>, ArrayView2<'a, f32>, usize)>,
        S: Into<String>,
    {
        let mut out = Vec::new();
        for (name, a, b, k) in layers {
            let name = name.into();
            let matrix = try_expert_similarity(a, b, k).map_err(|e| match e {
                CoreError::Shape { what, message } => {
                    CoreError::Shape { what, message: format!("{message} (layer {name})") }
                }
                other => other,
            })?;
            let mean = mean_pairwise(&matrix);
            out.push(LayerSimilarity { name, matrix, mean });
        }
        let means: Vec<f64> = out.iter().map(|l| l.mean).filter(|m| !m.is_nan()).collect();
        let mean = if means.is_empty() { f64::NAN } else { means.iter().sum::<f64>() / means.len() as f64 };
        Ok(SimilarityReport { layers: out, mean })
    }

    /// [`SimilarityReport::try_from_layers`], panicking on mismatched shapes.
    pub fn from_layers<'a, I, S>(layers: I) -> Self
    where
        I: IntoIterator<Item = (S, ArrayView2<'a, f32>, ArrayView2<'a, f32>, usize)>,
        S: Into<String>,
    {
        Self::try_from_layers(layers).unwrap_or_else(|e| panic!("SimilarityReport: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::tests::mat;
    use proptest::prelude::*;

    /// The paper's procedure, literally: build each expert's matrix, flatten, cosine.
    fn direct(a: &Array2<f32>, b: &Array2<f32>, k: usize) -> Array2<f64> {
        let n = a.nrows() / k;
        let flat: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let ai = a.slice(ndarray::s![i * k..(i + 1) * k, ..]).mapv(f64::from);
                let bi = b.slice(ndarray::s![i * k..(i + 1) * k, ..]).mapv(f64::from);
                bi.t().dot(&ai).iter().copied().collect()
            })
            .collect();
        let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
        Array2::from_shape_fn((n, n), |(i, j)| {
            let d = dot(&flat[i], &flat[i]).sqrt() * dot(&flat[j], &flat[j]).sqrt();
            if d > 0.0 { dot(&flat[i], &flat[j]) / d } else { 0.0 }
        })
    }

    proptest! {
        #[test]
        fn factorised_equals_direct(n in 1usize..7, k in 1usize..4, inn in 1usize..24, out in 1usize..24,
                                    seed in any::<u64>()) {
            let a = mat(n * k, inn, seed);
            let b = mat(n * k, out, seed ^ 7);
            let fast = expert_similarity(a.view(), b.view(), k);
            let slow = direct(&a, &b, k);
            for (x, y) in fast.iter().zip(&slow) {
                prop_assert!((x - y).abs() < 1e-9, "{} vs {}", x, y);
            }
            prop_assert!(fast.iter().all(|v| (-1.0..=1.0).contains(v)));
            // symmetric, unit diagonal for non-zero experts
            for i in 0..n {
                prop_assert!((fast[[i, i]] - 1.0).abs() < 1e-12);
                for j in 0..n { prop_assert_eq!(fast[[i, j]], fast[[j, i]]); }
            }
        }
    }

    #[test]
    fn rank_one_is_product_of_cosines() {
        let a = mat(5, 9, 1);
        let b = mat(5, 11, 2);
        let s = expert_similarity(a.view(), b.view(), 1);
        let cos = |x: ArrayView1<f32>, y: ArrayView1<f32>| {
            let d = |p: ArrayView1<f32>, q: ArrayView1<f32>| {
                p.iter().zip(q).map(|(u, v)| (*u as f64) * (*v as f64)).sum::<f64>()
            };
            d(x, y) / (d(x, x).sqrt() * d(y, y).sqrt())
        };
        for i in 0..5 {
            for j in 0..5 {
                let want = cos(a.row(i), a.row(j)) * cos(b.row(i), b.row(j));
                assert!((s[[i, j]] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn peft_layout_via_transposed_view_and_zero_experts() {
        let a = mat(4, 6, 3);
        let b_peft = mat(8, 4, 4); // (out, r)
        let s = expert_similarity(a.view(), b_peft.t(), 1);
        assert_eq!(s, expert_similarity(a.view(), b_peft.t().to_owned().view(), 1));
        // at initialisation B = 0: all zeros, no NaN
        let z = expert_similarity(a.view(), Array2::<f32>::zeros((4, 8)).view(), 1);
        assert!(z.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn report_means_and_errors() {
        let a1 = mat(8, 12, 5);
        let b1 = mat(8, 20, 6);
        let a2 = mat(4, 12, 7);
        let b2 = mat(4, 20, 8);
        let single_a = mat(2, 12, 9);
        let single_b = mat(2, 20, 9);
        let r = SimilarityReport::from_layers([
            ("l0".to_string(), a1.view(), b1.view(), 1),
            ("l1".to_string(), a2.view(), b2.view(), 2),
            ("l2".to_string(), single_a.view(), single_b.view(), 2), // one expert: NaN, skipped
        ]);
        assert_eq!(r.layers.len(), 3);
        assert_eq!(r.layers[1].matrix.dim(), (2, 2));
        assert!(r.layers[2].mean.is_nan());
        assert!((r.mean - (r.layers[0].mean + r.layers[1].mean) / 2.0).abs() < 1e-15);
        let json = serde_json::to_string(&r.layers[0]).unwrap();
        assert!(json.contains("\"name\":\"l0\""));
        let e = SimilarityReport::try_from_layers([("bad", a1.view(), b2.view(), 1)]).unwrap_err();
        assert!(e.to_string().contains("(layer bad)"), "{e}");
    }
}
