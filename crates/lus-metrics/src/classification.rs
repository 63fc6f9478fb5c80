//! Example-level classification metrics (COVID / pneumonia / healthy, or any `K >= 2`
//! classes) from true class ids and per-example class probabilities, ROC curves, and
//! bootstrap confidence intervals.
//!
//! # Conventions
//!
//! - **Prediction** = argmax of an example's probabilities; ties go to the lowest class id
//!   (as `numpy.argmax`).
//! - **Confusion matrix**: a [`ConfusionMatrix`] (row = truth, column = prediction), so at
//!   most 256 classes.
//! - **Undefined is NaN, and NaN is left out of means** (the same rule as the segmentation
//!   metrics in [`crate::confusion`]):
//!
//! | situation for class `c`                  | precision | recall | specificity | F1  | AUC |
//! |------------------------------------------|-----------|--------|-------------|-----|-----|
//! | absent from the truth, never predicted   | NaN       | NaN    | defined     | NaN | NaN |
//! | absent from the truth, predicted         | 0         | NaN    | defined     | 0   | NaN |
//! | present, never predicted                 | NaN       | 0      | defined     | 0   | def.|
//! | every example is of class `c`            | defined   | defined| NaN         | def.| NaN |
//!
//!   The macro means (`macro_precision`, `macro_recall`, `macro_f1`, `macro_auc`) are
//!   nan-means over the classes whose value is defined ([`nan_mean`]); NaN when none is.
//! - **Where scikit-learn differs**: with `labels=range(K)` and the default
//!   `zero_division="warn"`, scikit-learn substitutes 0 for an undefined precision / recall /
//!   F1 and keeps it in the macro mean (so a class that merely did not occur drags the macro
//!   mean down); we report NaN and leave it out. Where every class is present in the truth and
//!   predicted at least once, both agree exactly. `balanced_accuracy` equals scikit-learn's
//!   `balanced_accuracy_score` in every case (scikit-learn also drops the classes absent from
//!   the truth there), and `weighted_f1` equals `f1_score(average="weighted")` in every case
//!   (a class absent from the truth has weight 0). `roc_auc_score(multi_class="ovr")` raises
//!   an error when a class is absent from the truth; we give that class NaN and average the
//!   others.
//! - **AUC** is one-vs-rest per class: class `c`'s probability as the score, "truth is `c`"
//!   as the label; the area under the ROC curve whose points are taken at every distinct
//!   score (tied scores form one diagonal step), by the trapezoid rule, as
//!   `sklearn.metrics.roc_auc_score`. It is computed from integer counts, so it does not
//!   depend on the order of the examples. With two classes whose probabilities sum exactly to
//!   1, both per-class AUCs and the macro AUC equal the binary AUC.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::confusion::{ConfusionMatrix, nan_mean};
use crate::error::{MetricsError, Result};

/// How far a row of probabilities may sum from 1 (softmax outputs in `f32`, averaged over
/// test-time augmentations or folds, stay far inside this).
pub const PROBABILITY_SUM_TOLERANCE: f64 = 1e-4;

/// Most classes a [`Predictions`] may have (class ids must fit the `u8` of
/// [`ConfusionMatrix`]).
pub const MAX_CLASSES: usize = 256;

/// True class ids and class probabilities of `N` examples, validated: `N >= 1`,
/// `2 <= K <= 256` classes, every id `< K`, every probability finite and `>= 0`, every row
/// summing to 1 within [`PROBABILITY_SUM_TOLERANCE`].
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    num_classes: usize,
    truth: Vec<usize>,
    /// Row-major `N x K`.
    probabilities: Vec<f64>,
}

/// Scores of one class (see the module docs for when a value is NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassMetrics {
    /// Class id.
    pub class: usize,
    /// `tp / (tp + fp)`.
    pub precision: f64,
    /// Sensitivity, `tp / (tp + fn)`.
    pub recall: f64,
    /// `tn / (tn + fp)`.
    pub specificity: f64,
    /// `2 tp / (2 tp + fp + fn)`.
    pub f1: f64,
    /// One-vs-rest ROC AUC.
    pub auc: f64,
    /// Examples whose truth is this class.
    pub support: u64,
    /// Examples predicted as this class.
    pub predicted: u64,
}

/// All metrics of one set of predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationMetrics {
    /// Number of examples.
    pub num_examples: usize,
    /// Row = truth, column = argmax prediction.
    pub confusion: ConfusionMatrix,
    /// Fraction of examples whose argmax is the truth.
    pub accuracy: f64,
    /// Mean recall over the classes present in the truth (scikit-learn's
    /// `balanced_accuracy_score`; equal to `macro_recall`).
    pub balanced_accuracy: f64,
    /// Nan-mean of the per-class precisions.
    pub macro_precision: f64,
    /// Nan-mean of the per-class recalls.
    pub macro_recall: f64,
    /// Nan-mean of the per-class F1 scores.
    pub macro_f1: f64,
    /// Per-class F1 weighted by support.
    pub weighted_f1: f64,
    /// Nan-mean of the per-class one-vs-rest AUCs.
    pub macro_auc: f64,
    /// Per-class scores, in class order.
    pub per_class: Vec<ClassMetrics>,
}

/// Points of a ROC curve, as `sklearn.metrics.roc_curve(..., drop_intermediate=False)`:
/// the first point is `(0, 0)` at threshold `+inf`, then one point per distinct score in
/// decreasing order (the point counts every example whose score is `>=` the threshold).
/// `tpr` is all NaN when there is no positive example, `fpr` all NaN when there is no
/// negative one (scikit-learn does the same, with a warning).
#[derive(Debug, Clone, PartialEq)]
pub struct RocCurve {
    /// False positive rates, non-decreasing.
    pub fpr: Vec<f64>,
    /// True positive rates, non-decreasing.
    pub tpr: Vec<f64>,
    /// Score thresholds, decreasing; `thresholds[0]` is `+inf`.
    pub thresholds: Vec<f64>,
    /// Area under the curve (trapezoid rule); NaN when only one label occurs.
    pub auc: f64,
}

/// Settings of [`Predictions::bootstrap`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootstrapSettings {
    /// Number of resamples `B` (default 1000).
    pub resamples: usize,
    /// Coverage of the interval (default 0.95: the 2.5th and 97.5th percentiles).
    pub confidence: f64,
}

impl Default for BootstrapSettings {
    fn default() -> Self {
        Self {
            resamples: 1000,
            confidence: 0.95,
        }
    }
}

/// A percentile bootstrap interval of one named metric.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfidenceInterval {
    /// Metric name, as in [`ClassificationMetrics::named`].
    pub metric: String,
    /// The metric on the original examples.
    pub estimate: f64,
    /// Lower percentile of the resampled values (NaN when no resample defined the metric).
    pub lower: f64,
    /// Upper percentile of the resampled values (NaN when no resample defined the metric).
    pub upper: f64,
    /// Resamples in which the metric was defined (a resample without any example of a class
    /// has no recall for it, ...); the percentiles are taken over these only.
    pub resamples_used: usize,
}

impl Predictions {
    /// Validates `truth` (`N` class ids) and `probabilities` (row-major `N x num_classes`).
    /// Errors name the offending example (and class).
    pub fn new(truth: &[usize], probabilities: &[f64], num_classes: usize) -> Result<Self> {
        if !(2..=MAX_CLASSES).contains(&num_classes) {
            return Err(MetricsError::InvalidInput(format!(
                "classification needs 2 to {MAX_CLASSES} classes, got {num_classes}"
            )));
        }
        if truth.is_empty() {
            return Err(MetricsError::InvalidInput(
                "classification metrics of zero examples".into(),
            ));
        }
        if probabilities.len() != truth.len() * num_classes {
            return Err(MetricsError::LengthMismatch {
                what: "class probabilities (examples x classes)",
                left_name: "the probabilities",
                left: probabilities.len(),
                right_name: "truth x classes",
                right: truth.len() * num_classes,
            });
        }
        for (example, (&t, row)) in truth
            .iter()
            .zip(probabilities.chunks_exact(num_classes))
            .enumerate()
        {
            if t >= num_classes {
                return Err(MetricsError::InvalidInput(format!(
                    "example {example}: true class id {t}, but only {num_classes} classes \
                     (ids 0..={})",
                    num_classes - 1
                )));
            }
            if let Some((class, p)) = row
                .iter()
                .enumerate()
                .find(|(_, p)| !(p.is_finite() && **p >= 0.0))
            {
                return Err(MetricsError::InvalidInput(format!(
                    "example {example}, class {class}: probability {p} is not a finite \
                     non-negative number"
                )));
            }
            let sum: f64 = row.iter().sum();
            if (sum - 1.0).abs() > PROBABILITY_SUM_TOLERANCE {
                return Err(MetricsError::InvalidInput(format!(
                    "example {example}: class probabilities sum to {sum}, not 1 (tolerance \
                     {PROBABILITY_SUM_TOLERANCE}); pass softmax outputs, not logits"
                )));
            }
        }
        Ok(Self {
            num_classes,
            truth: truth.to_vec(),
            probabilities: probabilities.to_vec(),
        })
    }

    /// Like [`Predictions::new`] with one probability row per example; the class count is
    /// the length of the first row, and every row must have it.
    pub fn from_rows<R: AsRef<[f64]>>(truth: &[usize], rows: &[R]) -> Result<Self> {
        if rows.len() != truth.len() {
            return Err(MetricsError::LengthMismatch {
                what: "classification examples",
                left_name: "truth",
                left: truth.len(),
                right_name: "probability rows",
                right: rows.len(),
            });
        }
        let num_classes = rows.first().map_or(0, |r| r.as_ref().len());
        let mut flat = Vec::with_capacity(rows.len() * num_classes);
        for (example, row) in rows.iter().enumerate() {
            let row = row.as_ref();
            if row.len() != num_classes {
                return Err(MetricsError::InvalidInput(format!(
                    "example {example}: {} class probabilities, example 0 has {num_classes}",
                    row.len()
                )));
            }
            flat.extend_from_slice(row);
        }
        Self::new(truth, &flat, num_classes)
    }

    /// Number of examples `N`.
    pub fn num_examples(&self) -> usize {
        self.truth.len()
    }

    /// Number of classes `K`.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// True class ids.
    pub fn truth(&self) -> &[usize] {
        &self.truth
    }

    /// Row-major `N x K` probabilities.
    pub fn probabilities(&self) -> &[f64] {
        &self.probabilities
    }

    /// Argmax class of every example (ties go to the lowest id).
    pub fn predicted(&self) -> Vec<usize> {
        self.probabilities
            .chunks_exact(self.num_classes)
            .map(argmax)
            .collect()
    }

    /// Every metric on these examples.
    pub fn metrics(&self) -> ClassificationMetrics {
        let auc = self
            .rankings()
            .iter()
            .enumerate()
            .map(|(c, r)| r.curve_counts(|i| self.truth[i] == c, |_| 1).auc())
            .collect();
        let mut confusion = ConfusionMatrix::new(self.num_classes);
        let truth: Vec<u8> = self.truth.iter().map(|&t| t as u8).collect();
        let pred: Vec<u8> = self.predicted().into_iter().map(|p| p as u8).collect();
        confusion
            .update(&truth, &pred, None)
            .expect("ids were validated to be < num_classes <= 256");
        ClassificationMetrics::from_parts(confusion, auc)
    }

    /// One-vs-rest ROC curve of `class` (its probability as the score). Errors when `class`
    /// is not `< K`.
    pub fn roc_curve(&self, class: usize) -> Result<RocCurve> {
        if class >= self.num_classes {
            return Err(MetricsError::InvalidInput(format!(
                "ROC curve of class {class}, but only {} classes",
                self.num_classes
            )));
        }
        let k = self.num_classes;
        let ranking = Ranking::new(self.num_examples(), |i| self.probabilities[i * k + class]);
        Ok(ranking.roc_curve(|i| self.truth[i] == class))
    }

    /// Percentile bootstrap intervals of every metric of [`ClassificationMetrics::named`]
    /// except the supports: `settings.resamples` times, `N` examples are drawn with
    /// replacement and every metric is computed on the draw. A resample in which a metric is
    /// undefined (NaN) is skipped for that metric; [`ConfidenceInterval::resamples_used`] says
    /// how many were used. The percentiles interpolate linearly between order statistics
    /// (`numpy.percentile`'s default).
    ///
    /// Reproducibility: `rng` (seeded by the caller) gives one `u64` per resample, in order;
    /// resample `b` draws its examples from a `ChaCha8Rng` seeded with that value. The
    /// resamples are computed in parallel, so the result is the same for any rayon thread
    /// count, and `rng` has advanced by exactly `resamples` words afterwards.
    pub fn bootstrap(
        &self,
        class_names: &[&str],
        settings: &BootstrapSettings,
        rng: &mut impl Rng,
    ) -> Result<Vec<ConfidenceInterval>> {
        if settings.resamples == 0 {
            return Err(MetricsError::InvalidInput(
                "bootstrap with zero resamples".into(),
            ));
        }
        if !(settings.confidence > 0.0 && settings.confidence < 1.0) {
            return Err(MetricsError::InvalidInput(format!(
                "bootstrap confidence {} is not in (0, 1)",
                settings.confidence
            )));
        }
        let point = self.metrics().named_values(class_names, false)?;
        let seeds: Vec<u64> = (0..settings.resamples).map(|_| rng.next_u64()).collect();
        let rankings = self.rankings();
        let resampled: Vec<Vec<f64>> = seeds
            .par_iter()
            .map(|&seed| {
                let counts = resample_counts(self.num_examples(), seed);
                self.weighted_metrics(&rankings, &counts)
                    .named_values(class_names, false)
                    .expect("class names were validated for the point estimate")
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect()
            })
            .collect();
        let alpha = 1.0 - settings.confidence;
        Ok(point
            .into_iter()
            .enumerate()
            .map(|(m, (metric, estimate))| {
                let mut values: Vec<f64> = resampled
                    .iter()
                    .map(|r| r[m])
                    .filter(|v| !v.is_nan())
                    .collect();
                values.sort_by(f64::total_cmp);
                ConfidenceInterval {
                    metric,
                    estimate,
                    lower: percentile_sorted(&values, alpha / 2.0),
                    upper: percentile_sorted(&values, 1.0 - alpha / 2.0),
                    resamples_used: values.len(),
                }
            })
            .collect())
    }

    /// One ranking of the examples per class, by decreasing probability of that class.
    fn rankings(&self) -> Vec<Ranking> {
        let k = self.num_classes;
        (0..k)
            .map(|c| Ranking::new(self.num_examples(), |i| self.probabilities[i * k + c]))
            .collect()
    }

    /// Metrics of the sample that holds example `i` `counts[i]` times.
    fn weighted_metrics(&self, rankings: &[Ranking], counts: &[u64]) -> ClassificationMetrics {
        let k = self.num_classes;
        let mut truth = Vec::with_capacity(self.num_examples());
        let mut pred = Vec::with_capacity(self.num_examples());
        for (i, &count) in counts.iter().enumerate() {
            let p = argmax(&self.probabilities[i * k..(i + 1) * k]) as u8;
            for _ in 0..count {
                truth.push(self.truth[i] as u8);
                pred.push(p);
            }
        }
        let mut confusion = ConfusionMatrix::new(k);
        confusion
            .update(&truth, &pred, None)
            .expect("ids were validated to be < num_classes <= 256");
        let auc = rankings
            .iter()
            .enumerate()
            .map(|(c, r)| r.curve_counts(|i| self.truth[i] == c, |i| counts[i]).auc())
            .collect();
        ClassificationMetrics::from_parts(confusion, auc)
    }
}

impl ClassificationMetrics {
    /// Derives every score from the confusion matrix and the per-class AUCs.
    fn from_parts(confusion: ConfusionMatrix, auc: Vec<f64>) -> Self {
        let k = confusion.num_classes();
        let total = confusion.total();
        let per_class: Vec<ClassMetrics> = (0..k)
            .map(|c| {
                let tp = confusion.count(c, c);
                let support: u64 = (0..k).map(|p| confusion.count(c, p)).sum();
                let predicted: u64 = (0..k).map(|t| confusion.count(t, c)).sum();
                let (fp, fn_) = (predicted - tp, support - tp);
                let negatives = total - support;
                ClassMetrics {
                    class: c,
                    precision: ratio(tp, predicted),
                    recall: ratio(tp, support),
                    specificity: ratio(negatives - fp, negatives),
                    f1: ratio(2 * tp, 2 * tp + fp + fn_),
                    auc: auc[c],
                    support,
                    predicted,
                }
            })
            .collect();
        let column = |f: fn(&ClassMetrics) -> f64| per_class.iter().map(f).collect::<Vec<_>>();
        let correct: u64 = (0..k).map(|c| confusion.count(c, c)).sum();
        // A class with support has a defined F1, and one without has weight 0.
        let weighted_f1 = per_class
            .iter()
            .filter(|s| s.support > 0)
            .map(|s| s.f1 * s.support as f64)
            .sum::<f64>()
            / total as f64;
        let macro_recall = nan_mean(&column(|s| s.recall));
        Self {
            num_examples: total as usize,
            accuracy: ratio(correct, total),
            balanced_accuracy: macro_recall,
            macro_precision: nan_mean(&column(|s| s.precision)),
            macro_recall,
            macro_f1: nan_mean(&column(|s| s.f1)),
            weighted_f1,
            macro_auc: nan_mean(&column(|s| s.auc)),
            per_class,
            confusion,
        }
    }

    /// The metrics as `(name, value)` pairs for result tables, in this order: `accuracy`,
    /// `balanced_accuracy`, `macro_precision`, `macro_recall`, `macro_f1`, `weighted_f1`,
    /// `macro_auc`, then for each class `<name>` in class order `precision_<name>`,
    /// `recall_<name>`, `specificity_<name>`, `f1_<name>`, `auc_<name>`, `support_<name>`
    /// (the support as a float). `class_names` must hold one non-empty, unique name per
    /// class.
    pub fn named(&self, class_names: &[&str]) -> Result<Vec<(String, f64)>> {
        self.named_values(class_names, true)
    }

    fn named_values(&self, class_names: &[&str], with_support: bool) -> Result<Vec<(String, f64)>> {
        let k = self.per_class.len();
        if class_names.len() != k {
            return Err(MetricsError::InvalidInput(format!(
                "{} class names for {k} classes",
                class_names.len()
            )));
        }
        for (i, name) in class_names.iter().enumerate() {
            if name.is_empty() {
                return Err(MetricsError::InvalidInput(format!(
                    "class {i} has an empty name"
                )));
            }
            if class_names[..i].contains(name) {
                return Err(MetricsError::InvalidInput(format!(
                    "class name {name:?} is used twice"
                )));
            }
        }
        let mut out = vec![
            ("accuracy".to_string(), self.accuracy),
            ("balanced_accuracy".to_string(), self.balanced_accuracy),
            ("macro_precision".to_string(), self.macro_precision),
            ("macro_recall".to_string(), self.macro_recall),
            ("macro_f1".to_string(), self.macro_f1),
            ("weighted_f1".to_string(), self.weighted_f1),
            ("macro_auc".to_string(), self.macro_auc),
        ];
        for (s, name) in self.per_class.iter().zip(class_names) {
            out.push((format!("precision_{name}"), s.precision));
            out.push((format!("recall_{name}"), s.recall));
            out.push((format!("specificity_{name}"), s.specificity));
            out.push((format!("f1_{name}"), s.f1));
            out.push((format!("auc_{name}"), s.auc));
            if with_support {
                out.push((format!("support_{name}"), s.support as f64));
            }
        }
        Ok(out)
    }
}

impl RocCurve {
    /// The ROC curve of binary labels (`true` = positive) and scores (higher = more
    /// positive). Errors on an empty input, a length mismatch or a non-finite score.
    pub fn from_scores(is_positive: &[bool], scores: &[f64]) -> Result<Self> {
        if is_positive.len() != scores.len() {
            return Err(MetricsError::LengthMismatch {
                what: "ROC curve",
                left_name: "labels",
                left: is_positive.len(),
                right_name: "scores",
                right: scores.len(),
            });
        }
        if scores.is_empty() {
            return Err(MetricsError::InvalidInput(
                "ROC curve of zero examples".into(),
            ));
        }
        if let Some((i, s)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
            return Err(MetricsError::InvalidInput(format!(
                "ROC curve: score {s} of example {i} is not finite"
            )));
        }
        let ranking = Ranking::new(scores.len(), |i| scores[i]);
        Ok(ranking.roc_curve(|i| is_positive[i]))
    }
}

/// Examples in decreasing order of one score, cut into runs of equal score (a run is one
/// ROC point). Sorting once lets the bootstrap evaluate any resample (given as per-example
/// counts) in linear time.
struct Ranking {
    order: Vec<usize>,
    /// Exclusive end of each run in `order`.
    run_ends: Vec<usize>,
    /// Score of each run.
    run_scores: Vec<f64>,
}

/// Cumulative (true positive, false positive) counts at the end of every run, plus the
/// trapezoid area in integer units.
struct CurveCounts {
    tps: Vec<u64>,
    fps: Vec<u64>,
    /// Twice the area under the un-normalised curve (`fp` on x, `tp` on y): an integer.
    twice_area: u128,
}

impl Ranking {
    fn new(n: usize, score: impl Fn(usize) -> f64) -> Self {
        let mut order: Vec<usize> = (0..n).collect();
        // Stable, so equal scores keep example order (irrelevant to the counts, but it keeps
        // the ranking deterministic).
        order.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
        let mut run_ends = Vec::new();
        let mut run_scores = Vec::new();
        for (pos, &i) in order.iter().enumerate() {
            let s = score(i);
            // `==`, not bits: 0.0 and -0.0 are one threshold.
            if run_scores.last() != Some(&s) {
                if pos > 0 {
                    run_ends.push(pos);
                }
                run_scores.push(s);
            }
        }
        if n > 0 {
            run_ends.push(n);
        }
        Self {
            order,
            run_ends,
            run_scores,
        }
    }

    fn curve_counts(
        &self,
        is_positive: impl Fn(usize) -> bool,
        weight: impl Fn(usize) -> u64,
    ) -> CurveCounts {
        let (mut tp, mut fp, mut twice_area) = (0u64, 0u64, 0u128);
        let mut tps = Vec::with_capacity(self.run_ends.len());
        let mut fps = Vec::with_capacity(self.run_ends.len());
        let mut start = 0;
        for &end in &self.run_ends {
            let (mut dtp, mut dfp) = (0u64, 0u64);
            for &i in &self.order[start..end] {
                let w = weight(i);
                if is_positive(i) {
                    dtp += w;
                } else {
                    dfp += w;
                }
            }
            // Trapezoid between (fp, tp) and (fp + dfp, tp + dtp).
            twice_area += u128::from(dfp) * u128::from(2 * tp + dtp);
            tp += dtp;
            fp += dfp;
            tps.push(tp);
            fps.push(fp);
            start = end;
        }
        CurveCounts {
            tps,
            fps,
            twice_area,
        }
    }

    fn roc_curve(&self, is_positive: impl Fn(usize) -> bool) -> RocCurve {
        let counts = self.curve_counts(is_positive, |_| 1);
        let auc = counts.auc();
        let (p, n) = counts.totals();
        let rate = |v: u64, total: u64| {
            if total == 0 {
                f64::NAN
            } else {
                v as f64 / total as f64
            }
        };
        let mut fpr = vec![rate(0, n)];
        let mut tpr = vec![rate(0, p)];
        let mut thresholds = vec![f64::INFINITY];
        for ((&tp, &fp), &s) in counts.tps.iter().zip(&counts.fps).zip(&self.run_scores) {
            fpr.push(rate(fp, n));
            tpr.push(rate(tp, p));
            thresholds.push(s);
        }
        RocCurve {
            fpr,
            tpr,
            thresholds,
            auc,
        }
    }
}

impl CurveCounts {
    /// (positives, negatives).
    fn totals(&self) -> (u64, u64) {
        (
            self.tps.last().copied().unwrap_or(0),
            self.fps.last().copied().unwrap_or(0),
        )
    }

    fn auc(&self) -> f64 {
        let (p, n) = self.totals();
        if p == 0 || n == 0 {
            return f64::NAN;
        }
        // One division of exact integers: the area is correctly rounded.
        self.twice_area as f64 / (2.0 * p as f64 * n as f64)
    }
}

fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (c, &p) in row.iter().enumerate().skip(1) {
        // Strictly greater: a tie keeps the lower id.
        if p > row[best] {
            best = c;
        }
    }
    best
}

/// `num / den`, NaN when `den == 0`.
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        f64::NAN
    } else {
        num as f64 / den as f64
    }
}

/// How many times each of `n` examples is drawn in `n` draws with replacement, from a
/// `ChaCha8Rng` seeded with `seed`.
fn resample_counts(n: usize, seed: u64) -> Vec<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut counts = vec![0u64; n];
    for _ in 0..n {
        counts[below(&mut rng, n as u64) as usize] += 1;
    }
    counts
}

/// A uniform integer in `0..bound` (`bound > 0`) by Lemire's multiply-and-reject: unbiased,
/// and a fixed recipe, so the resamples never change with a rand upgrade.
fn below(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    // Products whose low word falls below this threshold would over-represent some values.
    let threshold = bound.wrapping_neg() % bound;
    loop {
        let product = u128::from(rng.next_u64()) * u128::from(bound);
        if product as u64 >= threshold {
            return (product >> 64) as u64;
        }
    }
}

/// The `q`-quantile (`0 <= q <= 1`) of sorted values with linear interpolation between order
/// statistics (`numpy.percentile`'s default "linear" method); NaN for no values.
pub(crate) fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let h = (n - 1) as f64 * q;
            let lo = h.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_nan(v: f64, what: &str) {
        assert!(v.is_nan(), "{what} should be NaN, is {v}");
    }

    #[test]
    fn hand_computed_three_class_example() {
        // truth   0 0 0 1 1 2 ; argmax 0 0 1 1 2 2 (example 3 ties 1/2 -> 1)
        let probs = [
            [0.8, 0.1, 0.1],
            [0.6, 0.3, 0.1],
            [0.3, 0.5, 0.2],
            [0.2, 0.4, 0.4],
            [0.1, 0.2, 0.7],
            [0.0, 0.1, 0.9],
        ];
        let p = Predictions::from_rows(&[0, 0, 0, 1, 1, 2], &probs).unwrap();
        assert_eq!(p.predicted(), vec![0, 0, 1, 1, 2, 2]);
        let m = p.metrics();
        assert_eq!(m.confusion.counts(), &[2, 1, 0, 0, 1, 1, 0, 0, 1]);
        assert_eq!(m.accuracy, 4.0 / 6.0);
        let c = &m.per_class;
        assert_eq!(
            (c[0].precision, c[0].recall, c[0].f1),
            (1.0, 2.0 / 3.0, 0.8)
        );
        assert_eq!((c[1].precision, c[1].recall), (0.5, 0.5));
        assert_eq!((c[2].precision, c[2].recall), (0.5, 1.0));
        // Class 2: negatives are the 5 others, one of them predicted 2.
        assert_eq!(c[2].specificity, 0.8);
        assert!((m.balanced_accuracy - (2.0 / 3.0 + 0.5 + 1.0) / 3.0).abs() < 1e-15);
        // Class 0 scores: positives 0.8, 0.6, 0.3; negatives 0.2, 0.1, 0.0 -> perfect.
        assert_eq!(c[0].auc, 1.0);
        // Class 1 scores: positives 0.4, 0.2; negatives 0.5, 0.3, 0.1, 0.1. Pairs won:
        // 0.4 beats 0.3, 0.1, 0.1 (3); 0.2 beats 0.1, 0.1 (2) -> 5 / 8.
        assert_eq!(c[1].auc, 5.0 / 8.0);
        let weighted = (3.0 * 0.8 + 2.0 * 0.5 + 1.0 * (2.0 / 3.0)) / 6.0;
        assert!((m.weighted_f1 - weighted).abs() < 1e-15);
    }

    #[test]
    fn tied_scores_count_half() {
        // One positive and one negative with the same score: AUC 0.5, ROC a single diagonal.
        let roc = RocCurve::from_scores(&[true, false], &[0.3, 0.3]).unwrap();
        assert_eq!(roc.auc, 0.5);
        assert_eq!(roc.fpr, vec![0.0, 1.0]);
        assert_eq!(roc.tpr, vec![0.0, 1.0]);
        assert_eq!(roc.thresholds, vec![f64::INFINITY, 0.3]);
        // 0.0 and -0.0 are one threshold.
        let roc = RocCurve::from_scores(&[true, false, true], &[0.0, -0.0, 1.0]).unwrap();
        assert_eq!(roc.thresholds.len(), 3);
        assert_eq!(roc.auc, 0.75);
    }

    #[test]
    fn absent_and_never_predicted_classes_follow_the_table() {
        // Class 2 absent from the truth but predicted once; class 1 never predicted.
        let probs = [
            [0.7, 0.2, 0.1],
            [0.2, 0.3, 0.5],
            [0.4, 0.35, 0.25],
            [0.9, 0.05, 0.05],
        ];
        let p = Predictions::from_rows(&[0, 0, 1, 1], &probs).unwrap();
        let m = p.metrics();
        let c = &m.per_class;
        assert_eq!((c[2].precision, c[2].f1), (0.0, 0.0));
        assert_nan(c[2].recall, "recall of an absent class");
        assert_nan(c[2].auc, "AUC of an absent class");
        assert_eq!(c[2].specificity, 0.75);
        assert_nan(c[1].precision, "precision of a never-predicted class");
        assert_eq!((c[1].recall, c[1].f1), (0.0, 0.0));
        // Macro recall / balanced accuracy over classes 0 and 1 only: (1/2 + 0) / 2.
        assert_eq!(m.balanced_accuracy, 0.25);
        assert_eq!(m.macro_recall, 0.25);
        // Class 0 is predicted for examples 0, 2, 3 (one right); macro precision averages
        // classes 0 and 2 only: (1/3 + 0) / 2.
        assert_eq!(c[0].precision, 1.0 / 3.0);
        assert_eq!(m.macro_precision, 1.0 / 6.0);
        // Macro AUC over classes 0 and 1 only.
        assert_eq!(m.macro_auc, (c[0].auc + c[1].auc) / 2.0);
    }

    #[test]
    fn one_example_and_one_class_only() {
        let p = Predictions::new(&[1], &[0.3, 0.7], 2).unwrap();
        let m = p.metrics();
        assert_eq!(m.accuracy, 1.0);
        assert_eq!(m.balanced_accuracy, 1.0);
        let c = &m.per_class;
        assert_eq!((c[1].precision, c[1].recall, c[1].f1), (1.0, 1.0, 1.0));
        assert_nan(c[1].specificity, "specificity without negatives");
        assert_eq!(c[0].specificity, 1.0);
        assert_nan(c[0].recall, "recall of an absent class");
        assert_nan(c[0].f1, "F1 of a class absent and never predicted");
        assert_nan(m.macro_auc, "macro AUC with one class in the truth");
        assert_eq!(m.macro_f1, 1.0);
        assert_eq!(m.weighted_f1, 1.0);
        let roc = p.roc_curve(1).unwrap();
        assert!(roc.fpr.iter().all(|v| v.is_nan()));
        assert_eq!(roc.tpr, vec![0.0, 1.0]);
    }

    #[test]
    fn validation_names_the_problem() {
        let err = |r: Result<Predictions>| r.unwrap_err().to_string();
        let e = err(Predictions::new(&[0, 3], &[0.5, 0.5, 0.5, 0.5], 2));
        assert!(e.contains("example 1") && e.contains("class id 3"), "{e}");
        let e = err(Predictions::new(&[0, 1], &[0.5, 0.5, f64::NAN, 0.5], 2));
        assert!(e.contains("example 1, class 0") && e.contains("NaN"), "{e}");
        let e = err(Predictions::new(&[0], &[-0.1, 1.1], 2));
        assert!(e.contains("-0.1"), "{e}");
        let e = err(Predictions::new(&[0], &[2.0, 3.0], 2));
        assert!(e.contains("sum to 5"), "{e}");
        let e = err(Predictions::new(&[0], &[0.5, 0.5, 0.0], 2));
        assert!(e.contains("length mismatch"), "{e}");
        assert!(err(Predictions::new(&[], &[], 2)).contains("zero examples"));
        assert!(err(Predictions::new(&[0], &[1.0], 1)).contains("2 to 256"));
        let e = err(Predictions::from_rows(
            &[0, 1],
            &[vec![0.5, 0.5], vec![1.0]],
        ));
        assert!(e.contains("example 1"), "{e}");
        let m = Predictions::new(&[0], &[1.0, 0.0], 2).unwrap().metrics();
        assert!(m.named(&["a"]).is_err());
        assert!(
            m.named(&["a", "a"])
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(m.named(&["a", ""]).is_err());
        let p = Predictions::new(&[0], &[1.0, 0.0], 2).unwrap();
        assert!(p.roc_curve(2).is_err());
    }

    #[test]
    fn weighted_metrics_equal_metrics_of_the_explicit_resample() {
        let k = 3;
        let truth: Vec<usize> = (0..40).map(|i| (i * 7 + i / 5) % k).collect();
        let probs: Vec<f64> = (0..40)
            .flat_map(|i| {
                // Coarse values so that ties occur.
                let a = ((i * 13) % 5) as f64;
                let b = ((i * 3) % 4) as f64;
                let c = (truth[i] * 3) as f64;
                let s = a + b + c + 1.0;
                [a / s, b / s, (c + 1.0) / s]
            })
            .collect();
        let p = Predictions::new(&truth, &probs, k).unwrap();
        let rankings = p.rankings();
        for seed in 0..5 {
            let counts = resample_counts(40, seed);
            assert_eq!(counts.iter().sum::<u64>(), 40);
            let mut t = Vec::new();
            let mut rows = Vec::new();
            for (i, &c) in counts.iter().enumerate() {
                for _ in 0..c {
                    t.push(truth[i]);
                    rows.push(probs[i * k..(i + 1) * k].to_vec());
                }
            }
            let explicit = Predictions::from_rows(&t, &rows).unwrap().metrics();
            let weighted = p.weighted_metrics(&rankings, &counts);
            let names = ["a", "b", "c"];
            assert_eq!(
                format!("{:?}", weighted.named(&names).unwrap()),
                format!("{:?}", explicit.named(&names).unwrap())
            );
            assert_eq!(weighted.confusion, explicit.confusion);
        }
    }

    #[test]
    fn below_is_uniform_enough_and_percentiles_interpolate() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut hist = [0u32; 7];
        for _ in 0..70_000 {
            hist[below(&mut rng, 7) as usize] += 1;
        }
        // Each bin expects 10000, sd ~ 93.
        assert!(
            hist.iter().all(|&h| (9_600..10_400).contains(&h)),
            "{hist:?}"
        );
        let v = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(percentile_sorted(&v, 0.0), 1.0);
        assert_eq!(percentile_sorted(&v, 1.0), 8.0);
        assert_eq!(percentile_sorted(&v, 0.5), 3.0);
        assert_eq!(percentile_sorted(&v, 0.025), 1.075);
        assert!(percentile_sorted(&[], 0.5).is_nan());
    }
}
