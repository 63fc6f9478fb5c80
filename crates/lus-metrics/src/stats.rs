//! Summary statistics and paired tests for comparing arms (dense-pretrained,
//! sparse-pretrained, not pretrained) over the same seeds x folds.
//!
//! # Which test for cross-validation cells
//!
//! The cells of a repeated k-fold cross-validation are not independent (their training sets
//! overlap), so [`paired_t_test`] and [`wilcoxon_signed_rank`] over cells are anti-
//! conservative. For those comparisons use [`corrected_resampled_t_test`] (or
//! [`compare_cv_cells`] on a report's cell records), which inflates the variance by the
//! Nadeau-Bengio correction, and adjust a family of such p-values with [`holm_adjust`].
//! The plain tests stay for independent samples and for backwards compatibility.
//!
//! The two paired tests reproduce scipy 1.17 with its default arguments:
//!
//! - [`paired_t_test`] = `scipy.stats.ttest_rel(x, y)`: `t = mean(d) / (std(d, ddof=1) /
//!   sqrt(n))` with `d = x - y`, `n - 1` degrees of freedom, two-sided p-value from the
//!   Student-t distribution (via [`regularized_incomplete_beta`]). Differences that are all
//!   equal but not zero give `t = ±inf`, `p = 0`, as scipy.
//! - [`wilcoxon_signed_rank`] = `scipy.stats.wilcoxon(x, y)` (`zero_method="wilcox"`,
//!   `correction=False`, `alternative="two-sided"`, `method="auto"`): zero differences are
//!   dropped, the absolute differences are ranked (ties get their average rank), `R+` / `R-`
//!   are the rank sums of the positive / negative differences, and the statistic is
//!   `min(R+, R-)`. With `n` = number of pairs (zeros included, as scipy counts them):
//!   - `n <= 50`, no tied absolute differences and no zero: exact null distribution of `R+`;
//!   - `n <= 13` with ties or zeros: scipy runs a permutation test over all `2^n` sign
//!     flips, which is the exact distribution of `R+` given the (average) ranks; we compute
//!     that distribution directly (same numbers, no enumeration);
//!   - otherwise: normal approximation `z = (R+ - m(m+1)/4) / se` over the `m` non-zero
//!     differences, `se² = (m(m+1)(2m+1) - Σ(t³ - t)/2) / 24` with `t` the sizes of the
//!     groups of tied absolute differences, no continuity correction.
//!
//!   The exact two-sided p-value is `min(1, 2 min(P(R+ <= r), P(R+ >= r)))`.
//!
//! # Degenerate input: NaN, never a panic
//!
//! Inputs of different lengths or with non-finite values are errors. Otherwise every result
//! is returned, with NaN p-value and a [`TTestResult::undefined`] /
//! [`WilcoxonResult::undefined`] reason where the test has no meaning:
//! - fewer than 2 pairs ([`TOO_FEW_PAIRS`]). scipy's Wilcoxon returns p = 1 for one pair (a
//!   single sign flip can never be significant); we prefer to say "no test";
//! - all differences zero ([`ALL_DIFFERENCES_ZERO`]). scipy returns p = 1 for `n <= 13`
//!   (permutation test) and NaN above; we always return NaN: there is nothing to test.

use crate::error::{MetricsError, Result};

/// Reason of a NaN p-value: fewer than two pairs.
pub const TOO_FEW_PAIRS: &str = "fewer than 2 pairs";
/// Reason of a NaN p-value: every pair has a zero difference.
pub const ALL_DIFFERENCES_ZERO: &str = "all differences are zero";

/// Largest number of pairs for which scipy's `method="auto"` uses the exact distribution
/// when there are no ties and no zeros.
pub const WILCOXON_EXACT_MAX_PAIRS: usize = 50;
/// Largest number of pairs for which scipy's `method="auto"` still computes an exact
/// (permutation) p-value with ties or zeros.
pub const WILCOXON_PERMUTATION_MAX_PAIRS: usize = 13;

/// Mean, sample standard deviation and count of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of values.
    pub n: usize,
    /// Arithmetic mean; NaN for no values.
    pub mean: f64,
    /// Sample standard deviation (`ddof = 1`); NaN for fewer than two values.
    pub std: f64,
}

/// Arithmetic mean; NaN for an empty slice (a NaN value propagates).
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sample standard deviation with `ddof = 1` (`numpy.std(values, ddof=1)`): the square root
/// of the sum of squared deviations from the mean over `n - 1`; NaN for `n < 2`.
pub fn sample_std(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return f64::NAN;
    }
    let m = mean(values);
    let ss: f64 = values.iter().map(|v| (v - m) * (v - m)).sum();
    (ss / (values.len() - 1) as f64).sqrt()
}

/// [`mean`] and [`sample_std`] together.
pub fn summarize(values: &[f64]) -> Summary {
    Summary {
        n: values.len(),
        mean: mean(values),
        std: sample_std(values),
    }
}

/// `x[i] - y[i]` for paired values (same seed and fold in two arms). Errors on a length
/// mismatch or a non-finite value (naming the pair).
pub fn paired_differences(x: &[f64], y: &[f64]) -> Result<Vec<f64>> {
    if x.len() != y.len() {
        return Err(MetricsError::LengthMismatch {
            what: "paired samples",
            left_name: "x",
            left: x.len(),
            right_name: "y",
            right: y.len(),
        });
    }
    for (i, (a, b)) in x.iter().zip(y).enumerate() {
        if !a.is_finite() || !b.is_finite() {
            return Err(MetricsError::InvalidInput(format!(
                "pair {i}: values ({a}, {b}) are not both finite; drop undefined pairs from \
                 both arms first"
            )));
        }
    }
    Ok(x.iter().zip(y).map(|(a, b)| a - b).collect())
}

/// Result of [`paired_t_test`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TTestResult {
    /// Number of pairs.
    pub n: usize,
    /// Mean of `x - y`.
    pub mean_difference: f64,
    /// Sample standard deviation of `x - y`.
    pub std_difference: f64,
    /// The t statistic (positive when `x` is larger on average).
    pub statistic: f64,
    /// Degrees of freedom, `n - 1`.
    pub df: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// Why the p-value is NaN ([`TOO_FEW_PAIRS`], [`ALL_DIFFERENCES_ZERO`]), if it is.
    pub undefined: Option<&'static str>,
}

/// Paired t-test of `x` against `y`, as `scipy.stats.ttest_rel(x, y)` (see the module docs).
pub fn paired_t_test(x: &[f64], y: &[f64]) -> Result<TTestResult> {
    let d = paired_differences(x, y)?;
    let n = d.len();
    let mean_difference = mean(&d);
    let std_difference = sample_std(&d);
    let df = n as f64 - 1.0;
    let undefined = if n < 2 {
        Some(TOO_FEW_PAIRS)
    } else if d.iter().all(|&v| v == 0.0) {
        Some(ALL_DIFFERENCES_ZERO)
    } else {
        None
    };
    let (statistic, p_value) = match undefined {
        Some(_) => (f64::NAN, f64::NAN),
        None => {
            // Constant non-zero differences: std 0, t = ±inf, p = 0 (scipy does the same).
            let t = mean_difference / (std_difference / (n as f64).sqrt());
            (t, student_t_two_sided_p(t, df))
        }
    };
    Ok(TTestResult {
        n,
        mean_difference,
        std_difference,
        statistic,
        df,
        p_value,
        undefined,
    })
}

/// How the Wilcoxon p-value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WilcoxonMethod {
    /// Exact null distribution of `R+` given the ranks.
    Exact,
    /// Normal approximation with tie correction.
    Normal,
    /// No test (NaN p-value, see [`WilcoxonResult::undefined`]).
    Undefined,
}

/// Result of [`wilcoxon_signed_rank`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WilcoxonResult {
    /// Number of pairs.
    pub n: usize,
    /// Pairs with a non-zero difference (the ones ranked).
    pub n_nonzero: usize,
    /// Rank sum of the positive differences (`x > y`).
    pub r_plus: f64,
    /// Rank sum of the negative differences.
    pub r_minus: f64,
    /// `min(R+, R-)`, scipy's two-sided statistic.
    pub statistic: f64,
    /// `(R+ - m(m+1)/4) / se` for the normal approximation (positive when `x` tends to be
    /// larger); NaN for the exact method.
    pub z: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// Which computation gave `p_value`.
    pub method: WilcoxonMethod,
    /// Why the p-value is NaN ([`TOO_FEW_PAIRS`], [`ALL_DIFFERENCES_ZERO`]), if it is.
    pub undefined: Option<&'static str>,
}

/// Wilcoxon signed-rank test of `x` against `y`, as `scipy.stats.wilcoxon(x, y)` with its
/// defaults (see the module docs for the method choice and the degenerate cases).
pub fn wilcoxon_signed_rank(x: &[f64], y: &[f64]) -> Result<WilcoxonResult> {
    let d = paired_differences(x, y)?;
    let n = d.len();
    let nonzero: Vec<f64> = d.iter().copied().filter(|&v| v != 0.0).collect();
    let m = nonzero.len();
    let (ranks, tie_sizes) = average_ranks(&nonzero.iter().map(|v| v.abs()).collect::<Vec<_>>());
    let r_plus: f64 = nonzero
        .iter()
        .zip(&ranks)
        .filter(|(v, _)| **v > 0.0)
        .map(|(_, r)| r)
        .sum();
    let r_minus: f64 = nonzero
        .iter()
        .zip(&ranks)
        .filter(|(v, _)| **v < 0.0)
        .map(|(_, r)| r)
        .sum();
    let mut result = WilcoxonResult {
        n,
        n_nonzero: m,
        r_plus,
        r_minus,
        statistic: r_plus.min(r_minus),
        z: f64::NAN,
        p_value: f64::NAN,
        method: WilcoxonMethod::Undefined,
        undefined: None,
    };
    if n < 2 {
        result.undefined = Some(TOO_FEW_PAIRS);
        return Ok(result);
    }
    if m == 0 {
        result.undefined = Some(ALL_DIFFERENCES_ZERO);
        return Ok(result);
    }
    let has_ties = tie_sizes.iter().any(|&t| t > 1);
    let has_zeros = m < n;
    let exact = if has_ties || has_zeros {
        n <= WILCOXON_PERMUTATION_MAX_PAIRS
    } else {
        n <= WILCOXON_EXACT_MAX_PAIRS
    };
    if exact {
        result.method = WilcoxonMethod::Exact;
        result.p_value = exact_signed_rank_p(&ranks, r_plus);
    } else {
        let mf = m as f64;
        let tie_term: f64 = tie_sizes
            .iter()
            .map(|&t| {
                let t = t as f64;
                t * t * t - t
            })
            .sum();
        let se = ((mf * (mf + 1.0) * (2.0 * mf + 1.0) - tie_term / 2.0) / 24.0).sqrt();
        let z = (r_plus - mf * (mf + 1.0) * 0.25) / se;
        result.method = WilcoxonMethod::Normal;
        result.z = z;
        result.p_value = normal_two_sided_p(z);
    }
    Ok(result)
}

/// Everything the report says about two arms over the same pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedComparison {
    /// Mean and std of `x`.
    pub x: Summary,
    /// Mean and std of `y`.
    pub y: Summary,
    /// Mean and std of `x - y`.
    pub difference: Summary,
    /// Paired t-test.
    pub t_test: TTestResult,
    /// Wilcoxon signed-rank test.
    pub wilcoxon: WilcoxonResult,
}

/// Summaries of `x`, `y` and `x - y` and both paired tests.
pub fn compare_paired(x: &[f64], y: &[f64]) -> Result<PairedComparison> {
    let d = paired_differences(x, y)?;
    Ok(PairedComparison {
        x: summarize(x),
        y: summarize(y),
        difference: summarize(&d),
        t_test: paired_t_test(x, y)?,
        wilcoxon: wilcoxon_signed_rank(x, y)?,
    })
}

/// Reason of a NaN p-value of [`corrected_resampled_t_test`]: every cell's difference is
/// zero (0 / 0, as `scipy.stats.ttest_rel` gives for all-zero differences).
pub const ALL_CELL_DIFFERENCES_ZERO: &str = "all cell differences are zero";

/// Result of [`corrected_resampled_t_test`] (and of the helpers built on it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CorrectedTTestResult {
    /// Number of cells `n` (repetitions x folds, after any pairwise dropping).
    pub cells: usize,
    /// Mean of the per-cell differences `x - y`.
    pub mean_difference: f64,
    /// Sample standard deviation (`ddof = 1`) of the per-cell differences.
    pub std_difference: f64,
    /// The `n_test / n_train` ratio the caller passed.
    pub test_train_ratio: f64,
    /// The variance factor used in place of the plain t-test's `1 / n`:
    /// `1 / n + n_test / n_train`.
    pub correction: f64,
    /// `mean / sqrt(correction * var)` (positive when `x` is larger on average).
    pub statistic: f64,
    /// Degrees of freedom, `n - 1`.
    pub df: f64,
    /// Two-sided p-value from Student's t with `df` degrees of freedom.
    pub p_value: f64,
    /// Why the p-value is NaN ([`ALL_CELL_DIFFERENCES_ZERO`]), if it is.
    pub undefined: Option<&'static str>,
}

/// Corrected resampled t-test (Nadeau & Bengio 2003, "Inference for the generalization
/// error"; in the corrected repeated k-fold form of Bouckaert & Frank 2004, "Evaluating the
/// replicability of significance tests for comparing learning algorithms") on the per-cell
/// differences `d = x - y` of `n = r x k` cross-validation cells (r repetitions / seeds of
/// k folds).
///
/// Why: the cells of a cross-validation share training data, so their differences are
/// positively correlated and the plain paired t-test ([`paired_t_test`]), which treats them
/// as independent, underestimates the variance of the mean and rejects far too often. The
/// correction replaces the `1 / n` of the variance of the mean by `1 / n + n_test / n_train`:
///
/// `t = mean(d) / sqrt((1 / n + n_test / n_train) * var(d))`, `var` with `ddof = 1`,
/// `df = n - 1`, two-sided `p = P(|T_df| >= |t|)`.
///
/// `test_train_ratio` is `n_test / n_train` of one cell; for k-fold cross-validation it is
/// `1 / (k - 1)`. With a ratio of 0 the statistic would be `scipy.stats.ttest_rel`'s.
///
/// Zero variance follows [`paired_t_test`] (and scipy's `ttest_rel`): all differences zero
/// gives `t = NaN`, `p = NaN` with [`CorrectedTTestResult::undefined`] set; differences that
/// are all equal but not zero give `t = ±inf`, `p = 0`.
///
/// Errors: fewer than 2 cells, a non-finite difference (named by its index), a ratio that
/// is not positive and finite.
pub fn corrected_resampled_t_test(
    differences: &[f64],
    test_train_ratio: f64,
) -> Result<CorrectedTTestResult> {
    let n = differences.len();
    if n < 2 {
        return Err(MetricsError::InvalidInput(format!(
            "corrected resampled t-test: needs at least 2 cells (repetitions x folds), got {n}"
        )));
    }
    if !(test_train_ratio > 0.0 && test_train_ratio.is_finite()) {
        return Err(MetricsError::InvalidInput(format!(
            "corrected resampled t-test: test/train size ratio {test_train_ratio} is not a \
             positive finite number (for k-fold cross-validation it is 1 / (k - 1))"
        )));
    }
    if let Some((i, d)) = differences.iter().enumerate().find(|(_, d)| !d.is_finite()) {
        return Err(MetricsError::InvalidInput(format!(
            "corrected resampled t-test: difference {d} of cell {i} is not finite; drop \
             undefined cells from both arms first"
        )));
    }
    let mean_difference = mean(differences);
    let variance = differences
        .iter()
        .map(|v| (v - mean_difference) * (v - mean_difference))
        .sum::<f64>()
        / (n - 1) as f64;
    let correction = 1.0 / n as f64 + test_train_ratio;
    let df = (n - 1) as f64;
    let undefined = differences
        .iter()
        .all(|&v| v == 0.0)
        .then_some(ALL_CELL_DIFFERENCES_ZERO);
    let (statistic, p_value) = match undefined {
        Some(_) => (f64::NAN, f64::NAN),
        None => {
            // Constant non-zero differences: variance 0, t = ±inf, p = 0 (as scipy).
            let t = mean_difference / (correction * variance).sqrt();
            (t, student_t_two_sided_p(t, df))
        }
    };
    Ok(CorrectedTTestResult {
        cells: n,
        mean_difference,
        std_difference: variance.sqrt(),
        test_train_ratio,
        correction,
        statistic,
        df,
        p_value,
        undefined,
    })
}

/// [`corrected_resampled_t_test`] of the per-cell scores `x` and `y` of two arms (cell `i`
/// of both is the same repetition and fold), on `x - y`. Errors also on a length mismatch or
/// a non-finite score (naming the cell).
pub fn corrected_resampled_t_test_paired(
    x: &[f64],
    y: &[f64],
    test_train_ratio: f64,
) -> Result<CorrectedTTestResult> {
    let d = paired_differences(x, y)?;
    corrected_resampled_t_test(&d, test_train_ratio)
}

/// One cross-validation cell of a comparison of two arms: repetition (seed) and fold, and
/// each arm's score there, `None` where that arm has no result for the cell (not run yet,
/// failed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CvCell {
    /// Repetition of the k-fold split (the seed, in lus).
    pub repetition: u64,
    /// Fold index within the repetition.
    pub fold: usize,
    /// Score of the first arm.
    pub x: Option<f64>,
    /// Score of the second arm.
    pub y: Option<f64>,
}

/// Result of [`compare_cv_cells`].
#[derive(Debug, Clone, PartialEq)]
pub struct CvComparison {
    /// The corrected resampled t-test over the cells both arms have.
    pub test: CorrectedTTestResult,
    /// `(repetition, fold)` of the cells used, in increasing order.
    pub used: Vec<(u64, usize)>,
    /// `(repetition, fold)` of the cells dropped because one arm (or both) had no score, in
    /// increasing order.
    pub dropped: Vec<(u64, usize)>,
}

/// [`corrected_resampled_t_test`] straight from a report's cell records.
///
/// Cells where either arm's score is `None` are dropped pairwise (from both arms) and listed
/// in [`CvComparison::dropped`]; the test then runs on the remaining `n` cells with
/// `correction = 1 / n + test_train_ratio` and `df = n - 1` (with dropped cells the design
/// is no longer a full r x k grid, and the correction is an approximation). The differences
/// are taken in increasing `(repetition, fold)` order, so the result does not depend on the
/// order of `cells`.
///
/// Errors: a `(repetition, fold)` given twice, a present score that is not finite (named by
/// its cell: pass `None` for a cell without a result), and the errors of
/// [`corrected_resampled_t_test`] (fewer than 2 cells left, bad ratio).
pub fn compare_cv_cells(cells: &[CvCell], test_train_ratio: f64) -> Result<CvComparison> {
    let mut sorted: Vec<&CvCell> = cells.iter().collect();
    sorted.sort_by_key(|c| (c.repetition, c.fold));
    let mut used = Vec::new();
    let mut dropped = Vec::new();
    let mut differences = Vec::new();
    for (i, c) in sorted.iter().enumerate() {
        let key = (c.repetition, c.fold);
        if i > 0 && (sorted[i - 1].repetition, sorted[i - 1].fold) == key {
            return Err(MetricsError::InvalidInput(format!(
                "cross-validation cell (repetition {}, fold {}) is given twice",
                key.0, key.1
            )));
        }
        for (arm, v) in [("x", c.x), ("y", c.y)] {
            if let Some(v) = v.filter(|v| !v.is_finite()) {
                return Err(MetricsError::InvalidInput(format!(
                    "cross-validation cell (repetition {}, fold {}): score {arm} = {v} is not \
                     finite; pass None for a cell without a result",
                    key.0, key.1
                )));
            }
        }
        match (c.x, c.y) {
            (Some(x), Some(y)) => {
                used.push(key);
                differences.push(x - y);
            }
            _ => dropped.push(key),
        }
    }
    let test = corrected_resampled_t_test(&differences, test_train_ratio).map_err(|e| {
        if dropped.is_empty() {
            e
        } else {
            MetricsError::InvalidInput(format!(
                "{e} ({} of {} cells dropped because an arm has no score there)",
                dropped.len(),
                cells.len()
            ))
        }
    })?;
    Ok(CvComparison {
        test,
        used,
        dropped,
    })
}

/// Holm-Bonferroni adjusted p-values of a family of comparisons (Holm 1979), equal to
/// `statsmodels.stats.multitest.multipletests(p, method="holm")[1]`.
///
/// Why: a report tests several pairs of arms and several metrics; each raw p-value alone
/// overstates the evidence. Holm controls the family-wise error rate like Bonferroni but is
/// uniformly more powerful.
///
/// Step-down: with the `m` p-values sorted increasingly `p(1) <= ... <= p(m)`, the adjusted
/// value of `p(i)` is `min(1, max_{j <= i} (m - j + 1) p(j))`, so adjusted values are
/// monotone in the raw ones, never below them, and capped at 1. The result is in the input
/// order.
///
/// NaN p-values (a test that could not be run, e.g. [`ALL_DIFFERENCES_ZERO`]) stay NaN and
/// are **not counted** in the family size `m`: an undefined test cannot produce a false
/// rejection. (statsmodels has no NaN rule: it would sort them last and count them.) With no
/// NaN the values equal statsmodels' exactly.
///
/// Errors on a p-value that is not NaN and not in `[0, 1]` (naming its index).
pub fn holm_adjust(p_values: &[f64]) -> Result<Vec<f64>> {
    if let Some((i, p)) = p_values
        .iter()
        .enumerate()
        .find(|(_, p)| !p.is_nan() && !(0.0..=1.0).contains(*p))
    {
        return Err(MetricsError::InvalidInput(format!(
            "Holm adjustment: p-value {p} (index {i}) is not in [0, 1]"
        )));
    }
    let mut order: Vec<usize> = (0..p_values.len())
        .filter(|&i| !p_values[i].is_nan())
        .collect();
    // Stable: tied p-values keep input order (their adjusted values are equal either way).
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let m = order.len();
    let mut adjusted = vec![f64::NAN; p_values.len()];
    let mut running_max = 0.0f64;
    for (j, &i) in order.iter().enumerate() {
        running_max = running_max.max(p_values[i] * (m - j) as f64);
        adjusted[i] = running_max.min(1.0);
    }
    Ok(adjusted)
}

/// The `q`-quantile of Student's t with `df` degrees of freedom, by bisection on
/// [`student_t_cdf`] (to the last bit of f64). NaN for `q` outside (0, 1) or a `df` that is
/// not positive and finite.
pub fn student_t_quantile(q: f64, df: f64) -> f64 {
    if !(q > 0.0 && q < 1.0 && df > 0.0 && df.is_finite()) {
        return f64::NAN;
    }
    if q < 0.5 {
        return -student_t_quantile(1.0 - q, df);
    }
    if q == 0.5 {
        return 0.0;
    }
    let mut hi = 1.0f64;
    while student_t_cdf(hi, df) < q {
        hi *= 2.0;
        if !hi.is_finite() {
            return f64::INFINITY;
        }
    }
    let mut lo = 0.0f64;
    loop {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            return mid;
        }
        if student_t_cdf(mid, df) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
}

/// CDF `P(T <= t)` of the non-central t distribution with `df > 0` degrees of freedom and
/// non-centrality `nc` (`scipy.stats.nct.cdf(t, df, nc)`); NaN for NaN arguments or a bad
/// `df`.
///
/// For `t >= 0` the series of Guenther (1978) / Lenth (1989, AS 243):
/// `F(t) = Φ(−nc) + ½ Σ_j [p_j I_x(j + ½, df/2) + q_j I_x(j + 1, df/2)]` with
/// `x = t² / (t² + df)`, Poisson weights `p_j = e^{−nc²/2} (nc²/2)^j / j!` and
/// `q_j = nc e^{−nc²/2} (nc²/2)^j / (√2 Γ(j + 3/2))`; for `t < 0`,
/// `F(t; nc) = 1 − F(−t; −nc)`. The terms are summed until they are below 1e-17 past the
/// Poisson mode, which is exact to about 1e-12 for the `|nc| < 40` of power calculations.
pub fn noncentral_t_cdf(t: f64, df: f64, nc: f64) -> f64 {
    if t.is_nan() || nc.is_nan() || !(df > 0.0 && df.is_finite()) {
        return f64::NAN;
    }
    if t < 0.0 {
        return 1.0 - noncentral_t_cdf(-t, df, -nc);
    }
    if nc == 0.0 {
        return student_t_cdf(t, df);
    }
    if t.is_infinite() {
        return 1.0;
    }
    let half_nc2 = 0.5 * nc * nc;
    let ln_half_nc2 = half_nc2.ln();
    let ln_abs_nc = nc.abs().ln() - 0.5 * std::f64::consts::LN_2;
    let t2 = t * t;
    let (x, y) = (t2 / (t2 + df), df / (t2 + df));
    let mut sum = 0.0;
    for j in 0..100_000u32 {
        let jf = f64::from(j);
        let ln_poisson = -half_nc2 + jf * ln_half_nc2;
        let p = (ln_poisson - ln_gamma(jf + 1.0)).exp();
        let q = nc.signum() * (ln_poisson - ln_gamma(jf + 1.5) + ln_abs_nc).exp();
        let term = p * incomplete_beta(jf + 0.5, df / 2.0, x, y)
            + q * incomplete_beta(jf + 1.0, df / 2.0, x, y);
        sum += term;
        if jf > half_nc2 && p.abs() + q.abs() < 1e-17 {
            break;
        }
    }
    (normal_cdf(-nc) + 0.5 * sum).clamp(0.0, 1.0)
}

/// Power of the two-sided [`corrected_resampled_t_test`] at level `alpha` to detect a true
/// mean difference `effect` over `cells` cross-validation cells whose differences have
/// standard deviation `std_difference`, with the cells' `test_train_ratio` (`1 / (k − 1)`
/// for k-fold).
///
/// The statistic is taken as non-central t with `cells − 1` degrees of freedom and
/// non-centrality `effect / (std_difference · sqrt(1 / cells + test_train_ratio))`: the
/// variance model the correction itself assumes (Nadeau & Bengio 2003), so this is the power
/// *of that model*, as approximate as the correction. `power = P(T > t_c) + P(T < −t_c)`,
/// `t_c` the `1 − alpha / 2` quantile of the central t.
///
/// Why: a comparison that is "not significant" says little unless the design could have
/// detected the difference that matters; this and [`corrected_t_test_detectable_difference`]
/// put a number on it, from the observed spread or a pilot's.
///
/// Errors: fewer than 2 cells, a non-finite effect, a `std_difference` that is not positive
/// and finite, a bad ratio, `alpha` outside (0, 1).
pub fn corrected_t_test_power(
    effect: f64,
    std_difference: f64,
    cells: usize,
    test_train_ratio: f64,
    alpha: f64,
) -> Result<f64> {
    check_power_inputs(std_difference, cells, test_train_ratio, alpha)?;
    if !effect.is_finite() {
        return Err(MetricsError::InvalidInput(format!(
            "corrected t-test power: effect {effect} is not finite"
        )));
    }
    let df = (cells - 1) as f64;
    let critical = student_t_quantile(1.0 - alpha / 2.0, df);
    let nc = effect / (std_difference * (1.0 / cells as f64 + test_train_ratio).sqrt());
    Ok((1.0 - noncentral_t_cdf(critical, df, nc) + noncentral_t_cdf(-critical, df, nc)).min(1.0))
}

/// The smallest true difference (positive) the two-sided [`corrected_resampled_t_test`]
/// detects with probability `power` at level `alpha` (the minimum detectable difference), for
/// the design and spread of [`corrected_t_test_power`]; by bisection on it, to 1e-10 of the
/// std. Errors as [`corrected_t_test_power`], and on `power` outside (alpha, 1).
pub fn corrected_t_test_detectable_difference(
    std_difference: f64,
    cells: usize,
    test_train_ratio: f64,
    alpha: f64,
    power: f64,
) -> Result<f64> {
    check_power_inputs(std_difference, cells, test_train_ratio, alpha)?;
    if !(power > alpha && power < 1.0) {
        return Err(MetricsError::InvalidInput(format!(
            "corrected t-test power: target power {power} is not in (alpha = {alpha}, 1)"
        )));
    }
    let power_at = |effect: f64| {
        corrected_t_test_power(effect, std_difference, cells, test_train_ratio, alpha)
    };
    let mut hi = std_difference;
    while power_at(hi)? < power {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    while hi - lo > 1e-10 * std_difference {
        let mid = 0.5 * (lo + hi);
        if power_at(mid)? < power {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(0.5 * (lo + hi))
}

fn check_power_inputs(
    std_difference: f64,
    cells: usize,
    test_train_ratio: f64,
    alpha: f64,
) -> Result<()> {
    let problem = if cells < 2 {
        format!("needs at least 2 cells, got {cells}")
    } else if !(std_difference > 0.0 && std_difference.is_finite()) {
        format!("std of the differences {std_difference} is not positive and finite")
    } else if !(test_train_ratio > 0.0 && test_train_ratio.is_finite()) {
        format!("test/train size ratio {test_train_ratio} is not positive and finite")
    } else if !(alpha > 0.0 && alpha < 1.0) {
        format!("level {alpha} is not in (0, 1)")
    } else {
        return Ok(());
    };
    Err(MetricsError::InvalidInput(format!(
        "corrected t-test power: {problem}"
    )))
}

/// Average ranks (1-based, ties share their mean rank, as `scipy.stats.rankdata`) of finite
/// values, and the sizes of the groups of equal values.
fn average_ranks(values: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut tie_sizes = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end hold ranks start+1 ..= end; their mean.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        tie_sizes.push(end - start);
        start = end;
    }
    (ranks, tie_sizes)
}

/// Exact two-sided p-value of the signed-rank sum `r_plus` when each rank enters `R+` with
/// probability 1/2 independently. Average ranks are multiples of 1/2, so the distribution is
/// counted over doubled (integer) ranks; with at most 50 ranks the counts stay below
/// `2^50`, exact in `u64` and in `f64`.
fn exact_signed_rank_p(ranks: &[f64], r_plus: f64) -> f64 {
    let doubled: Vec<usize> = ranks.iter().map(|r| (2.0 * r).round() as usize).collect();
    let total: usize = doubled.iter().sum();
    // ways[s] = number of sign assignments whose doubled R+ is s.
    let mut ways = vec![0u64; total + 1];
    ways[0] = 1;
    let mut reach = 0;
    for &r in &doubled {
        for s in (0..=reach).rev() {
            if ways[s] != 0 {
                ways[s + r] += ways[s];
            }
        }
        reach += r;
    }
    let observed = (2.0 * r_plus).round() as usize;
    let below: u64 = ways[..=observed].iter().sum();
    let above: u64 = ways[observed..].iter().sum();
    let all = 2f64.powi(ranks.len() as i32);
    (2.0 * below.min(above) as f64 / all).min(1.0)
}

/// Two-sided p-value `P(|Z| >= |z|)` of a standard normal `z`: `erfc(|z| / sqrt 2)`.
pub fn normal_two_sided_p(z: f64) -> f64 {
    erfc(z.abs() / std::f64::consts::SQRT_2)
}

/// Standard normal CDF `P(Z <= z)`, accurate in both tails.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// Student-t CDF `P(T <= t)` with `df > 0` degrees of freedom (non-integer allowed); NaN
/// for a NaN `t` or a `df` that is not positive and finite.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    if t.is_nan() || !(df > 0.0 && df.is_finite()) {
        return f64::NAN;
    }
    let tail = 0.5 * student_t_two_sided_p(t, df);
    if t > 0.0 { 1.0 - tail } else { tail }
}

/// `P(|T| >= |t|)`: `I_x(df/2, 1/2)` with `x = df / (df + t²)`, computed without forming
/// `1 - x` by subtraction (so that small `|t|` keeps its precision) and without
/// overflowing for huge `|t|`.
fn student_t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_nan() {
        return f64::NAN;
    }
    let t2 = t * t;
    if t2.is_infinite() {
        return 0.0;
    }
    let x = df / (df + t2);
    let y = t2 / (df + t2);
    incomplete_beta(df / 2.0, 0.5, x, y)
}

/// Regularised incomplete beta function `I_x(a, b)` for `a, b > 0`, `0 <= x <= 1`; NaN
/// outside that domain. Evaluated with the continued fraction of DLMF 8.17.22 (modified
/// Lentz), on `I_x(a, b)` or on `1 - I_{1-x}(b, a)` whichever converges faster, with the
/// prefactor `x^a (1-x)^b / B(a, b)` computed in logarithms (`ln B` arranged as in R's
/// `lbeta`, so that large `a` or `b` do not cancel). Tested against `scipy.special.betainc`
/// for `a` in 0.5..=200, `b` in 0.5..=80 (tests/cls_reference.rs).
pub fn regularized_incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if !(a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite() && (0.0..=1.0).contains(&x)) {
        return f64::NAN;
    }
    incomplete_beta(a, b, x, 1.0 - x)
}

/// `I_x(a, b)` given both `x` and `y = 1 - x` (the caller may know `y` more precisely).
fn incomplete_beta(a: f64, b: f64, x: f64, y: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if y <= 0.0 {
        return 1.0;
    }
    let ln_front = a * x.ln() + b * y.ln() - ln_beta(a, b);
    // The continued fraction converges quickly for x < (a + 1) / (a + b + 2).
    if x * (a + b + 2.0) < a + 1.0 {
        ln_front.exp() * beta_continued_fraction(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_continued_fraction(b, a, y) / b
    }
}

/// Continued fraction of `I_x(a, b)` (Numerical Recipes' `betacf`, modified Lentz). NaN if
/// it has not converged after [`BETA_CF_MAX_ITERATIONS`] terms (far beyond anything the
/// t-test needs: the count grows like `sqrt(max(a, b))`).
fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let mut c = 1.0;
    let mut d = 1.0 / guard(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..=BETA_CF_MAX_ITERATIONS {
        let m = m as f64;
        let m2 = 2.0 * m;
        // Even step.
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        h *= d * c;
        // Odd step.
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            return h;
        }
    }
    f64::NAN
}

/// Iteration cap of the incomplete-beta continued fraction.
pub const BETA_CF_MAX_ITERATIONS: usize = 100_000;

/// `ln(sqrt(2 pi))`.
const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;

/// `ln Γ(x) - [(x - 1/2) ln x - x + ln sqrt(2π)]` for `x >= 10`: the Stirling series, whose
/// next term is below 1e-16 there.
fn stirling_correction(x: f64) -> f64 {
    let x2 = 1.0 / (x * x);
    (1.0 / 12.0
        + x2 * (-1.0 / 360.0
            + x2 * (1.0 / 1260.0
                + x2 * (-1.0 / 1680.0
                    + x2 * (1.0 / 1188.0 + x2 * (-691.0 / 360_360.0 + x2 * (1.0 / 156.0)))))))
        / x
}

/// `ln Γ(x)` for `x > 0`: Stirling's series from 10 up, the recurrence
/// `Γ(x) = Γ(x + k) / (x (x+1) ... (x+k-1))` below.
fn ln_gamma(x: f64) -> f64 {
    if x >= 10.0 {
        return (x - 0.5) * x.ln() - x + LN_SQRT_2PI + stirling_correction(x);
    }
    let mut shifted = x;
    let mut product = 1.0;
    while shifted < 10.0 {
        product *= shifted;
        shifted += 1.0;
    }
    ln_gamma(shifted) - product.ln()
}

/// `ln B(a, b)`, arranged as in R's `lbeta` so that large arguments do not cancel: the big
/// `ln Γ` terms are combined analytically and only the small Stirling corrections are added.
fn ln_beta(a: f64, b: f64) -> f64 {
    let (p, q) = if a < b { (a, b) } else { (b, a) };
    if p >= 10.0 {
        let corr = stirling_correction(p) + stirling_correction(q) - stirling_correction(p + q);
        -0.5 * q.ln()
            + LN_SQRT_2PI
            + corr
            + (p - 0.5) * (p / (p + q)).ln()
            + q * (-p / (p + q)).ln_1p()
    } else if q >= 10.0 {
        let corr = stirling_correction(q) - stirling_correction(p + q);
        ln_gamma(p) + corr + p - p * (p + q).ln() + (q - 0.5) * (-p / (p + q)).ln_1p()
    } else {
        ln_gamma(p) + ln_gamma(q) - ln_gamma(p + q)
    }
}

/// Complementary error function, ported from FreeBSD's `s_erf.c` (via the `libm` crate):
/// rational approximations on `[0, 0.84375)`, `[0.84375, 1.25)`, `[1.25, 1/0.35)` and
/// `[1/0.35, 28)`, with `exp(-x²)` split so that it keeps full relative precision. Error
/// below 1 ulp-ish everywhere; in the upper tail it stays relatively accurate down to
/// subnormal values, which a `1 - erf` formula would not.
///
/// ```text
/// Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
/// Developed at SunPro, a Sun Microsystems, Inc. business.
/// Permission to use, copy, modify, and distribute this software is freely granted,
/// provided that this notice is preserved.
/// ```
fn erfc(x: f64) -> f64 {
    let high = (x.to_bits() >> 32) as u32;
    let negative = high >> 31 != 0;
    let ix = high & 0x7fff_ffff;
    if ix >= 0x7ff0_0000 {
        // erfc(nan) = nan, erfc(+inf) = 0, erfc(-inf) = 2.
        return if x.is_nan() {
            x
        } else if negative {
            2.0
        } else {
            0.0
        };
    }
    if ix < 0x3feb_0000 {
        // |x| < 0.84375
        if ix < 0x3c70_0000 {
            return 1.0 - x;
        }
        let z = x * x;
        let r = PP0 + z * (PP1 + z * (PP2 + z * (PP3 + z * PP4)));
        let s = 1.0 + z * (QQ1 + z * (QQ2 + z * (QQ3 + z * (QQ4 + z * QQ5))));
        let y = r / s;
        if negative || ix < 0x3fd0_0000 {
            return 1.0 - (x + x * y);
        }
        return 0.5 - (x - 0.5 + x * y);
    }
    if ix < 0x403c_0000 {
        // 0.84375 <= |x| < 28
        let tail = erfc_mid(ix, x);
        return if negative { 2.0 - tail } else { tail };
    }
    if negative { 2.0 } else { 0.0 }
}

/// `erfc(|x|)` for `0.84375 <= |x| < 28` (`ix` = high word of `|x|`).
fn erfc_mid(ix: u32, x: f64) -> f64 {
    let x = x.abs();
    if ix < 0x3ff4_0000 {
        // |x| < 1.25
        let s = x - 1.0;
        let p = PA0 + s * (PA1 + s * (PA2 + s * (PA3 + s * (PA4 + s * (PA5 + s * PA6)))));
        let q = 1.0 + s * (QA1 + s * (QA2 + s * (QA3 + s * (QA4 + s * (QA5 + s * QA6)))));
        return 1.0 - ERX - p / q;
    }
    let s = 1.0 / (x * x);
    let (r, big_s) = if ix < 0x4006_db6d {
        // |x| < 1 / 0.35
        (
            RA0 + s * (RA1 + s * (RA2 + s * (RA3 + s * (RA4 + s * (RA5 + s * (RA6 + s * RA7)))))),
            1.0 + s
                * (SA1
                    + s * (SA2
                        + s * (SA3 + s * (SA4 + s * (SA5 + s * (SA6 + s * (SA7 + s * SA8))))))),
        )
    } else {
        (
            RB0 + s * (RB1 + s * (RB2 + s * (RB3 + s * (RB4 + s * (RB5 + s * RB6))))),
            1.0 + s * (SB1 + s * (SB2 + s * (SB3 + s * (SB4 + s * (SB5 + s * (SB6 + s * SB7)))))),
        )
    };
    // z = x with the low 32 bits cleared: z² is exact, so exp(-z²) carries no rounding of x².
    let z = f64::from_bits(x.to_bits() & 0xffff_ffff_0000_0000);
    (-z * z - 0.5625).exp() * ((z - x) * (z + x) + r / big_s).exp() / x
}

/// Coefficients of FreeBSD's `s_erf.c`, as their exact bit patterns.
const ERX: f64 = f64::from_bits(0x3feb0ac160000000);
const PP0: f64 = f64::from_bits(0x3fc06eba8214db68);
const PP1: f64 = f64::from_bits(0xbfd4cd7d691cb913);
const PP2: f64 = f64::from_bits(0xbf9d2a51dbd7194f);
const PP3: f64 = f64::from_bits(0xbf77a291236668e4);
const PP4: f64 = f64::from_bits(0xbef8ead6120016ac);
const QQ1: f64 = f64::from_bits(0x3fd97779cddadc09);
const QQ2: f64 = f64::from_bits(0x3fb0a54c5536ceba);
const QQ3: f64 = f64::from_bits(0x3f74d022c4d36b0f);
const QQ4: f64 = f64::from_bits(0x3f215dc9221c1a10);
const QQ5: f64 = f64::from_bits(0xbed09c4342a26120);
const PA0: f64 = f64::from_bits(0xbf6359b8bef77538);
const PA1: f64 = f64::from_bits(0x3fda8d00ad92b34d);
const PA2: f64 = f64::from_bits(0xbfd7d240fbb8c3f1);
const PA3: f64 = f64::from_bits(0x3fd45fca805120e4);
const PA4: f64 = f64::from_bits(0xbfbc63983d3e28ec);
const PA5: f64 = f64::from_bits(0x3fa22a36599795eb);
const PA6: f64 = f64::from_bits(0xbf61bf380a96073f);
const QA1: f64 = f64::from_bits(0x3fbb3e6618eee323);
const QA2: f64 = f64::from_bits(0x3fe14af092eb6f33);
const QA3: f64 = f64::from_bits(0x3fb2635cd99fe9a7);
const QA4: f64 = f64::from_bits(0x3fc02660e763351f);
const QA5: f64 = f64::from_bits(0x3f8bedc26b51dd1c);
const QA6: f64 = f64::from_bits(0x3f888b545735151d);
const RA0: f64 = f64::from_bits(0xbf843412600d6435);
const RA1: f64 = f64::from_bits(0xbfe63416e4ba7360);
const RA2: f64 = f64::from_bits(0xc0251e0441b0e726);
const RA3: f64 = f64::from_bits(0xc04f300ae4cba38d);
const RA4: f64 = f64::from_bits(0xc0644cb184282266);
const RA5: f64 = f64::from_bits(0xc067135cebccabb2);
const RA6: f64 = f64::from_bits(0xc054526557e4d2f2);
const RA7: f64 = f64::from_bits(0xc023a0efc69ac25c);
const SA1: f64 = f64::from_bits(0x4033a6b9bd707687);
const SA2: f64 = f64::from_bits(0x4061350c526ae721);
const SA3: f64 = f64::from_bits(0x407b290dd58a1a71);
const SA4: f64 = f64::from_bits(0x40842b1921ec2868);
const SA5: f64 = f64::from_bits(0x407ad02157700314);
const SA6: f64 = f64::from_bits(0x405b28a3ee48ae2c);
const SA7: f64 = f64::from_bits(0x401a47ef8e484a93);
const SA8: f64 = f64::from_bits(0xbfaeeff2ee749a62);
const RB0: f64 = f64::from_bits(0xbf84341239e86f4a);
const RB1: f64 = f64::from_bits(0xbfe993ba70c285de);
const RB2: f64 = f64::from_bits(0xc031c209555f995a);
const RB3: f64 = f64::from_bits(0xc064145d43c5ed98);
const RB4: f64 = f64::from_bits(0xc083ec881375f228);
const RB5: f64 = f64::from_bits(0xc09004616a2e5992);
const RB6: f64 = f64::from_bits(0xc07e384e9bdc383f);
const SB1: f64 = f64::from_bits(0x403e568b261d5190);
const SB2: f64 = f64::from_bits(0x40745cae221b9f0a);
const SB3: f64 = f64::from_bits(0x409802eb189d5118);
const SB4: f64 = f64::from_bits(0x40a8ffb7688c246a);
const SB5: f64 = f64::from_bits(0x40a3f219cedf3be6);
const SB6: f64 = f64::from_bits(0x407da874e79fe763);
const SB7: f64 = f64::from_bits(0xc03670e242712d62);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_std_with_degenerate_sizes() {
        assert_eq!(mean(&[1.0, 2.0, 6.0]), 3.0);
        // Squared deviations 4 + 1 + 9 = 14 over n - 1 = 2.
        assert_eq!(sample_std(&[1.0, 2.0, 6.0]), 7f64.sqrt());
        assert!(mean(&[]).is_nan());
        assert!(sample_std(&[5.0]).is_nan());
        let s = summarize(&[5.0]);
        assert_eq!((s.n, s.mean), (1, 5.0));
        assert!(s.std.is_nan());
    }

    #[test]
    fn average_ranks_share_ties() {
        let (ranks, ties) = average_ranks(&[3.0, 1.0, 3.0, 2.0, 3.0]);
        assert_eq!(ranks, vec![4.0, 1.0, 4.0, 2.0, 4.0]);
        assert_eq!(ties, vec![1, 1, 3]);
    }

    #[test]
    fn exact_distribution_by_hand() {
        // n = 3, ranks 1, 2, 3: R+ takes 0,1,2,3,3,4,5,6 over the 8 sign patterns.
        // R+ = 0: P(R+ <= 0) = 1/8 -> p = 1/4.
        assert_eq!(exact_signed_rank_p(&[1.0, 2.0, 3.0], 0.0), 0.25);
        // R+ = 3: P(<= 3) = 5/8, P(>= 3) = 5/8 -> p = min(1, 10/8) = 1.
        assert_eq!(exact_signed_rank_p(&[1.0, 2.0, 3.0], 3.0), 1.0);
        // Ties: ranks 1.5, 1.5, 3 -> doubled 3, 3, 6; R+ = 4.5 (doubled 9) only when the
        // pattern is {1.5, 3}: two of eight patterns; P(>= 9) = 3/8 (also {all}) -> p = 3/4.
        assert_eq!(exact_signed_rank_p(&[1.5, 1.5, 3.0], 4.5), 0.75);
    }

    #[test]
    fn degenerate_tests_are_nan_with_a_reason() {
        let w = wilcoxon_signed_rank(&[1.0], &[0.0]).unwrap();
        assert!(w.p_value.is_nan());
        assert_eq!(
            (w.undefined, w.method),
            (Some(TOO_FEW_PAIRS), WilcoxonMethod::Undefined)
        );
        let w = wilcoxon_signed_rank(&[1.0, 2.0], &[1.0, 2.0]).unwrap();
        assert_eq!(w.undefined, Some(ALL_DIFFERENCES_ZERO));
        assert!(w.p_value.is_nan());
        let t = paired_t_test(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(t.undefined, Some(ALL_DIFFERENCES_ZERO));
        assert!(t.p_value.is_nan() && t.statistic.is_nan());
        let t = paired_t_test(&[], &[]).unwrap();
        assert_eq!(t.undefined, Some(TOO_FEW_PAIRS));
        // Constant non-zero differences: a certain effect, as scipy.
        let t = paired_t_test(&[2.0, 3.0, 4.0], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(
            (t.statistic, t.p_value, t.undefined),
            (f64::INFINITY, 0.0, None)
        );
        let e = paired_t_test(&[1.0, f64::NAN], &[1.0, 2.0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("pair 1"), "{e}");
        let e = wilcoxon_signed_rank(&[1.0], &[1.0, 2.0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("length mismatch"), "{e}");
    }

    #[test]
    fn swapping_the_arms_flips_the_sign_only() {
        let x = [0.81, 0.79, 0.85, 0.77, 0.9, 0.84, 0.8, 0.83];
        let y = [0.78, 0.8, 0.8, 0.75, 0.86, 0.85, 0.74, 0.8];
        let (a, b) = (
            compare_paired(&x, &y).unwrap(),
            compare_paired(&y, &x).unwrap(),
        );
        assert_eq!(a.t_test.statistic, -b.t_test.statistic);
        assert_eq!(a.t_test.p_value, b.t_test.p_value);
        assert_eq!(a.wilcoxon.p_value, b.wilcoxon.p_value);
        assert_eq!(a.wilcoxon.statistic, b.wilcoxon.statistic);
        assert_eq!(
            (a.wilcoxon.r_plus, a.wilcoxon.r_minus),
            (b.wilcoxon.r_minus, b.wilcoxon.r_plus)
        );
    }

    #[test]
    fn normal_tails_and_incomplete_beta_identities() {
        assert!((normal_two_sided_p(1.959_963_984_540_054) - 0.05).abs() < 1e-15);
        // Phi(-10) = 7.619853024160527e-24 (relative accuracy in the far tail).
        assert!((normal_cdf(-10.0) / 7.619_853_024_160_527e-24 - 1.0).abs() < 1e-13);
        assert_eq!(normal_cdf(0.0), 0.5);
        // I_x(a, 1) = x^a and I_x(1, b) = 1 - (1 - x)^b.
        for x in [0.01, 0.3, 0.5, 0.9] {
            assert!((regularized_incomplete_beta(2.5, 1.0, x) - x.powf(2.5)).abs() < 1e-15);
            let v = 1.0 - (1.0 - x).powi(4);
            assert!((regularized_incomplete_beta(1.0, 4.0, x) - v).abs() < 1e-15);
            // Symmetry I_x(a, b) = 1 - I_{1-x}(b, a).
            let s = regularized_incomplete_beta(3.3, 0.7, x)
                + regularized_incomplete_beta(0.7, 3.3, 1.0 - x);
            assert!((s - 1.0).abs() < 1e-14, "{s}");
        }
        assert!(regularized_incomplete_beta(-1.0, 1.0, 0.5).is_nan());
        assert!(regularized_incomplete_beta(1.0, 1.0, 1.5).is_nan());
        // ln Gamma at integers is ln((n-1)!); at 1/2 it is ln(sqrt(pi)).
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-14);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-14);
        assert!((ln_gamma(30.0) - 8_841_761_993_739_701_954_543_616_000_000f64.ln()).abs() < 1e-12);
        // ln B(a, b) for large arguments: B(200, 80) via ln Gamma differences.
        let direct = ln_gamma(200.0) + ln_gamma(80.0) - ln_gamma(280.0);
        assert!((ln_beta(200.0, 80.0) - direct).abs() < 1e-10);
    }
}
