//! The paper's per-block mask patterns (appendix A.5, Fig. 2) for ViT-B's 12 blocks.
//!
//! Fixed allocations all spend the same budget, 96 experts (8 per block on average). The
//! printed hourglass/protruding lists in the paper are garbled (13 and 11 entries); the lists
//! here are readings of them with 12 entries summing to 96 ([`FIXED_HOURGLASS`],
//! [`FIXED_PROTRUDING`], built from the incremental list's 2/6/10/14 steps). Stochastic
//! patterns keep 8 experts per block and vary the dropout; their names describe the expected
//! number of surviving experts (incremental = more survivors in later blocks).

use crate::error::SpecError;
use crate::names::named_enum;
use crate::rng::{DOMAIN_PATTERN, SplitMix64};
use serde::{Deserialize, Serialize};

/// How a mask varies over the blocks (paper A.5). For fixed/mixed masks the pattern gives the
/// number of experts per block; for stochastic masks, the expert dropout per block. The
/// paper's values are for 12 blocks (the tables below).
///
/// ```
/// use mlae_core::LayerPattern;
/// assert_eq!(LayerPattern::Hourglass.fixed_experts(12, 8, 0).unwrap().iter().sum::<usize>(), 96);
/// assert!(LayerPattern::Hourglass.fixed_experts(24, 8, 0).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerPattern {
    /// The same everywhere: `adapter.mlae.experts` experts, or `adapter.mlae.expert_dropout`.
    #[default]
    Uniform,
    /// More experts (lower dropout) in later blocks.
    Incremental,
    /// More experts (lower dropout) in earlier blocks.
    Decremental,
    /// Many experts (low dropout) at both ends, few in the middle.
    Hourglass,
    /// Few experts (high dropout) at both ends, many in the middle.
    Protruding,
    /// Fixed/mixed only: seeded random counts in 1..=14 with mean 8.
    Random,
}

named_enum!(LayerPattern, "adapter.mlae.mask.pattern", {
    Uniform => "uniform", Incremental => "incremental", Decremental => "decremental",
    Hourglass => "hourglass", Protruding => "protruding", Random => "random",
});

/// Depth for which the paper gives its patterns (ViT-B/16).
pub const PAPER_DEPTH: usize = 12;
/// Average experts per block behind the paper's fixed patterns (budget 96 over 12 blocks).
pub const PAPER_EXPERTS: usize = 8;
/// Bounds of the paper's random allocation: every block gets 1..=14 experts.
pub const RANDOM_MIN_EXPERTS: usize = 1;
/// See [`RANDOM_MIN_EXPERTS`].
pub const RANDOM_MAX_EXPERTS: usize = 14;

/// Fixed, incremental: experts per block 1..12.
pub const FIXED_INCREMENTAL: [usize; 12] = [2, 2, 2, 6, 6, 6, 10, 10, 10, 14, 14, 14];
/// Fixed, decremental.
pub const FIXED_DECREMENTAL: [usize; 12] = [14, 14, 14, 10, 10, 10, 6, 6, 6, 2, 2, 2];
/// Fixed, hourglass.
pub const FIXED_HOURGLASS: [usize; 12] = [14, 14, 14, 2, 2, 2, 2, 2, 2, 14, 14, 14];
/// Fixed, protruding.
pub const FIXED_PROTRUDING: [usize; 12] = [2, 2, 2, 14, 14, 14, 14, 14, 14, 2, 2, 2];

/// Stochastic, incremental: dropout per block 1..12.
pub const STOCHASTIC_INCREMENTAL: [f64; 12] = [0.8, 0.8, 0.7, 0.7, 0.6, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0];
/// Stochastic, decremental.
pub const STOCHASTIC_DECREMENTAL: [f64; 12] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.7, 0.7, 0.8, 0.8];
/// Stochastic, hourglass.
pub const STOCHASTIC_HOURGLASS: [f64; 12] = [0.0, 0.1, 0.3, 0.5, 0.6, 0.8, 0.8, 0.6, 0.5, 0.3, 0.1, 0.0];
/// Stochastic, protruding.
pub const STOCHASTIC_PROTRUDING: [f64; 12] = [0.8, 0.6, 0.5, 0.3, 0.1, 0.0, 0.0, 0.1, 0.3, 0.5, 0.6, 0.8];

fn needs_paper_depth(pattern: LayerPattern, depth: usize, list_field: &str) -> SpecError {
    SpecError::invalid(
        "adapter.mlae.mask.pattern",
        format!(
            "\"{pattern}\" is defined for {PAPER_DEPTH} blocks (the paper's ViT-B) but this model has {depth}; \
             give {list_field} with {depth} entries instead"
        ),
    )
}

impl LayerPattern {
    /// Experts per block for a fixed or mixed mask. `experts` is the uniform count; `seed`
    /// drives the random pattern. Named patterns need `depth == 12` (and are the paper's values
    /// for 8 experts on average; [`crate::AdapterSpec::validate`] enforces `experts == 8`).
    ///
    /// ```
    /// use mlae_core::LayerPattern;
    /// assert_eq!(LayerPattern::Uniform.fixed_experts(3, 5, 0).unwrap(), [5, 5, 5]);
    /// let r = LayerPattern::Random.fixed_experts(12, 8, 42).unwrap();
    /// assert_eq!(r.iter().sum::<usize>(), 96);
    /// assert_eq!(r, LayerPattern::Random.fixed_experts(12, 8, 42).unwrap()); // seeded
    /// ```
    pub fn fixed_experts(self, depth: usize, experts: usize, seed: u64) -> Result<Vec<usize>, SpecError> {
        let paper = match self {
            LayerPattern::Uniform => return Ok(vec![experts; depth]),
            LayerPattern::Random => {
                return random_allocation(
                    seed,
                    depth,
                    RANDOM_MIN_EXPERTS,
                    RANDOM_MAX_EXPERTS,
                    PAPER_EXPERTS * depth,
                );
            }
            LayerPattern::Incremental => FIXED_INCREMENTAL,
            LayerPattern::Decremental => FIXED_DECREMENTAL,
            LayerPattern::Hourglass => FIXED_HOURGLASS,
            LayerPattern::Protruding => FIXED_PROTRUDING,
        };
        if depth != PAPER_DEPTH {
            return Err(needs_paper_depth(self, depth, "adapter.mlae.mask.experts_per_layer"));
        }
        Ok(paper.to_vec())
    }

    /// Dropout per block for a stochastic mask; `p` is the uniform probability. Named patterns
    /// need `depth == 12`; the random pattern has no stochastic form (an error).
    ///
    /// ```
    /// use mlae_core::LayerPattern;
    /// assert_eq!(LayerPattern::Uniform.stochastic_dropout(2, 0.5).unwrap(), [0.5, 0.5]);
    /// assert_eq!(LayerPattern::Incremental.stochastic_dropout(12, 0.0).unwrap()[0], 0.8);
    /// assert!(LayerPattern::Random.stochastic_dropout(12, 0.0).is_err());
    /// ```
    pub fn stochastic_dropout(self, depth: usize, p: f64) -> Result<Vec<f64>, SpecError> {
        let paper = match self {
            LayerPattern::Uniform => return Ok(vec![p; depth]),
            LayerPattern::Random => {
                return Err(SpecError::invalid(
                    "adapter.mlae.mask.pattern",
                    "\"random\" is an allocation pattern for fixed and mixed masks; stochastic masks have \
                     no random pattern",
                ));
            }
            LayerPattern::Incremental => STOCHASTIC_INCREMENTAL,
            LayerPattern::Decremental => STOCHASTIC_DECREMENTAL,
            LayerPattern::Hourglass => STOCHASTIC_HOURGLASS,
            LayerPattern::Protruding => STOCHASTIC_PROTRUDING,
        };
        if depth != PAPER_DEPTH {
            return Err(needs_paper_depth(self, depth, "adapter.mlae.mask.expert_dropout_per_layer"));
        }
        Ok(paper.to_vec())
    }
}

/// A random allocation of `total` experts over `depth` blocks with every block in `min..=max`,
/// drawn uniformly from all such allocations (exact counting, then sequential sampling), from
/// a seeded hash RNG so the same seed gives the same allocation on every machine.
///
/// The paper's random pattern is `random_allocation(seed, 12, 1, 14, 96)`.
///
/// ```
/// use mlae_core::pattern::random_allocation;
/// let a = random_allocation(7, 12, 1, 14, 96).unwrap();
/// assert_eq!(a.len(), 12);
/// assert_eq!(a.iter().sum::<usize>(), 96);
/// assert!(a.iter().all(|&e| (1..=14).contains(&e)));
/// assert!(random_allocation(7, 2, 1, 14, 30).is_err()); // 2 blocks cannot hold 30
/// ```
pub fn random_allocation(
    seed: u64,
    depth: usize,
    min: usize,
    max: usize,
    total: usize,
) -> Result<Vec<usize>, SpecError> {
    if min > max || depth * min > total || depth * max < total {
        return Err(SpecError::invalid(
            "adapter.mlae.mask.pattern",
            format!("cannot place {total} experts in {depth} blocks with {min}..={max} per block"),
        ));
    }
    // ways[i][s]: number of allocations of blocks i.. that sum to s (f64: exact up to 2^53,
    // which covers the paper's 14^12 ~ 5.7e13; beyond that the weights are still accurate to
    // 1e-16 relative, which is all sampling needs).
    let mut ways = vec![vec![0.0f64; total + 1]; depth + 1];
    ways[depth][0] = 1.0;
    for i in (0..depth).rev() {
        for s in 0..=total {
            ways[i][s] = (min..=max.min(s)).map(|c| ways[i + 1][s - c]).sum();
        }
    }
    let mut rng = SplitMix64::new(seed, DOMAIN_PATTERN, depth as u64, total as u64);
    let mut left = total;
    let mut out = Vec::with_capacity(depth);
    for i in 0..depth {
        let mut u = rng.next_f64() * ways[i][left];
        let mut pick = None;
        let mut last_ok = min;
        for c in min..=max.min(left) {
            let w = ways[i + 1][left - c];
            if w == 0.0 {
                continue;
            }
            last_ok = c;
            if u < w {
                pick = Some(c);
                break;
            }
            u -= w;
        }
        // Rounding can leave u just past the last weight: take the last feasible count.
        let c = pick.unwrap_or(last_ok);
        out.push(c);
        left -= c;
    }
    debug_assert_eq!(left, 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_patterns_spend_the_paper_budget() {
        for p in LayerPattern::ALL {
            let e = p.fixed_experts(12, 8, 0).unwrap();
            assert_eq!(e.len(), 12);
            assert_eq!(e.iter().sum::<usize>(), 96, "{p}");
            assert!(e.iter().all(|&x| (1..=14).contains(&x)), "{p}");
        }
        assert_eq!(LayerPattern::Decremental.fixed_experts(12, 8, 0).unwrap(), FIXED_DECREMENTAL);
        // the decremental pattern is the incremental one reversed, protruding the hourglass swapped
        let mut rev = FIXED_INCREMENTAL;
        rev.reverse();
        assert_eq!(rev, FIXED_DECREMENTAL);
        assert!(FIXED_HOURGLASS.iter().zip(FIXED_PROTRUDING).all(|(a, b)| a + b == 16));
    }

    #[test]
    fn stochastic_patterns_are_the_papers() {
        assert_eq!(LayerPattern::Hourglass.stochastic_dropout(12, 0.0).unwrap(), STOCHASTIC_HOURGLASS);
        for p in LayerPattern::ALL.iter().filter(|p| **p != LayerPattern::Random) {
            let ps = p.stochastic_dropout(12, 0.3).unwrap();
            assert!(ps.iter().all(|x| (0.0..1.0).contains(x)));
        }
        let mut rev = STOCHASTIC_INCREMENTAL;
        rev.reverse();
        assert_eq!(rev, STOCHASTIC_DECREMENTAL);
    }

    #[test]
    fn other_depths_are_refused_with_a_pointer_to_the_list() {
        let e = LayerPattern::Incremental.fixed_experts(24, 8, 0).unwrap_err();
        assert_eq!(e.field(), "adapter.mlae.mask.pattern");
        assert!(e.to_string().contains("experts_per_layer with 24 entries"), "{e}");
        let e = LayerPattern::Hourglass.stochastic_dropout(6, 0.0).unwrap_err();
        assert!(e.to_string().contains("expert_dropout_per_layer with 6 entries"), "{e}");
        // random is defined by its constraints and works at any depth
        let r = LayerPattern::Random.fixed_experts(24, 8, 1).unwrap();
        assert_eq!(r.iter().sum::<usize>(), 192);
    }

    #[test]
    fn random_allocation_covers_the_range_and_varies_with_the_seed() {
        let draws: Vec<Vec<usize>> = (0..200).map(|s| random_allocation(s, 12, 1, 14, 96).unwrap()).collect();
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 190);
        let flat: Vec<usize> = draws.iter().flatten().copied().collect();
        assert_eq!(*flat.iter().min().unwrap(), 1);
        assert_eq!(*flat.iter().max().unwrap(), 14);
        // uniform over allocations: every block has the same marginal, mean 8.
        for block in 0..12 {
            let mean = draws.iter().map(|d| d[block] as f64).sum::<f64>() / draws.len() as f64;
            assert!((mean - 8.0).abs() < 1.0, "block {block}: {mean}");
        }
        // tight constraints have exactly one answer
        assert_eq!(random_allocation(3, 4, 1, 14, 4).unwrap(), [1, 1, 1, 1]);
        assert_eq!(random_allocation(3, 4, 1, 14, 56).unwrap(), [14, 14, 14, 14]);
    }

    proptest! {
        #[test]
        fn random_allocation_meets_its_constraints(seed in any::<u64>(), depth in 1usize..40, mean in 1usize..14) {
            let a = random_allocation(seed, depth, 1, 14, mean * depth).unwrap();
            prop_assert_eq!(a.len(), depth);
            prop_assert_eq!(a.iter().sum::<usize>(), mean * depth);
            prop_assert!(a.iter().all(|&e| (1..=14).contains(&e)));
        }
    }
}
