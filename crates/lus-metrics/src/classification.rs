//! Example-level classification metrics (COVID / pneumonia / healthy, or any `K >= 2`
//! classes) from true class ids and per-example class probabilities, ROC curves, and
//! bootstrap confidence intervals: over examples ([`Predictions::bootstrap`]) or over
//! clusters of correlated examples such as the frames of a clip or the clips of a patient
//! ([`Predictions::cluster_bootstrap`]); and the macro AUC averaged over folds
//! ([`fold_averaged_auc`]) rather than pooled.
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

use std::collections::HashMap;
use std::hash::Hash;

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
    /// Nan-mean of the per-class one-vs-rest AUCs, over the examples given. On predictions
    /// concatenated from several folds (models) this is a **pooled** AUC; see
    /// [`fold_averaged_auc`] for the mean of the per-fold AUCs.
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

    /// Every metric on these examples, all of them together. When these predictions are
    /// the test predictions of several folds (several trained models) concatenated, the AUCs
    /// are **pooled**: one ranking mixes the scores of different models, which is only fair
    /// if their probabilities are calibrated alike. [`fold_averaged_auc`] averages the
    /// per-fold AUCs instead.
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
        check_bootstrap_settings(settings)?;
        let point = self.metrics().named_values(class_names, false)?;
        let seeds: Vec<u64> = (0..settings.resamples).map(|_| rng.next_u64()).collect();
        let n = self.num_examples();
        Ok(
            self.percentile_intervals(class_names, settings.confidence, point, seeds.len(), |b| {
                resample_counts(n, seeds[b])
            }),
        )
    }

    /// Percentile bootstrap intervals that resample whole **clusters** (clips, patients) with
    /// replacement instead of examples: the same metrics, percentiles and NaN rule as
    /// [`Predictions::bootstrap`].
    ///
    /// Why: frames of one clip (or clips of one patient) are strongly correlated, so the
    /// example bootstrap treats them as independent evidence and gives intervals that are far
    /// too narrow. Resampling the clusters keeps the within-cluster correlation in every
    /// resample.
    ///
    /// `clusters[i]` is the cluster id of example `i` (any hashable id: `String`, `&str`,
    /// `usize`, ...). Cluster `g` is the `g`-th distinct id in order of first appearance in
    /// `clusters` ([`cluster_indices`]); a cluster's examples need not be contiguous.
    ///
    /// Draws, exactly (so that [`cluster_bootstrap_draws`] and a reference implementation can
    /// reproduce them): `rng` gives one `u64` per resample, in order; resample `b` seeds a
    /// `ChaCha8Rng` (`rand_chacha`, `seed_from_u64`) with that value and draws `G` cluster
    /// indices (`G` = number of clusters) one after the other, each uniform in `0..G` by
    /// Lemire's multiply-and-reject on `next_u64` (a draw `w` is accepted when the low 64
    /// bits of `w * G` are `>= (2^64 - G) mod G`, and gives the high 64 bits). The resample
    /// holds every example of every drawn cluster, once per draw, so its size varies with the
    /// sizes of the drawn clusters. `rng` has advanced by exactly `resamples` words
    /// afterwards, and the result does not depend on the rayon thread count. With one example
    /// per cluster (in example order) this is exactly [`Predictions::bootstrap`] with the same
    /// `rng`.
    ///
    /// A resample that lacks a class (no example of it drawn) leaves the metrics that need
    /// that class undefined (NaN, e.g. its recall or AUC); such a resample is skipped for
    /// those metrics only, and [`ConfidenceInterval::resamples_used`] says how many were used
    /// (the rule of [`Predictions::bootstrap`]).
    ///
    /// Errors: `clusters.len()` differs from the number of examples, zero resamples, a
    /// confidence outside `(0, 1)`, bad class names.
    pub fn cluster_bootstrap<C: Eq + Hash>(
        &self,
        clusters: &[C],
        class_names: &[&str],
        settings: &BootstrapSettings,
        rng: &mut impl Rng,
    ) -> Result<Vec<ConfidenceInterval>> {
        let index = self.cluster_index(clusters)?;
        check_bootstrap_settings(settings)?;
        let point = self.metrics().named_values(class_names, false)?;
        let seeds: Vec<u64> = (0..settings.resamples).map(|_| rng.next_u64()).collect();
        let g = index.num_clusters();
        Ok(
            self.percentile_intervals(class_names, settings.confidence, point, seeds.len(), |b| {
                index.counts(&cluster_draw(g, seeds[b]))
            }),
        )
    }

    /// The intervals of [`Predictions::cluster_bootstrap`] from explicit resamples:
    /// `draws[b]` lists the cluster indices (as in [`cluster_indices`], repeats allowed) of
    /// resample `b`. For checks against a reference implementation, and for resampling
    /// schemes other than the default (e.g. fewer draws than clusters).
    /// [`cluster_bootstrap_draws`] gives the draws of [`Predictions::cluster_bootstrap`].
    ///
    /// Errors: as [`Predictions::cluster_bootstrap`], plus no resample, an empty resample or a
    /// cluster index out of range (naming the resample).
    pub fn cluster_bootstrap_from_draws<C: Eq + Hash>(
        &self,
        clusters: &[C],
        class_names: &[&str],
        confidence: f64,
        draws: &[Vec<usize>],
    ) -> Result<Vec<ConfidenceInterval>> {
        let index = self.cluster_index(clusters)?;
        check_bootstrap_settings(&BootstrapSettings {
            resamples: draws.len(),
            confidence,
        })?;
        for (b, draw) in draws.iter().enumerate() {
            index
                .check_draw(draw)
                .map_err(|e| MetricsError::InvalidInput(format!("resample {b}: {e}")))?;
        }
        let point = self.metrics().named_values(class_names, false)?;
        Ok(
            self.percentile_intervals(class_names, confidence, point, draws.len(), |b| {
                index.counts(&draws[b])
            }),
        )
    }

    /// Every metric of one cluster resample: the sample made of all examples of the clusters
    /// in `draw` (cluster indices as in [`cluster_indices`]; a cluster drawn twice counts
    /// twice). Errors on a length mismatch of `clusters`, an empty draw or an index out of
    /// range.
    pub fn cluster_resample_metrics<C: Eq + Hash>(
        &self,
        clusters: &[C],
        draw: &[usize],
    ) -> Result<ClassificationMetrics> {
        let index = self.cluster_index(clusters)?;
        index.check_draw(draw).map_err(MetricsError::InvalidInput)?;
        Ok(self.weighted_metrics(&self.rankings(), &index.counts(draw)))
    }

    fn cluster_index<C: Eq + Hash>(&self, clusters: &[C]) -> Result<ClusterIndex> {
        if clusters.len() != self.num_examples() {
            return Err(MetricsError::LengthMismatch {
                what: "cluster bootstrap",
                left_name: "cluster ids",
                left: clusters.len(),
                right_name: "examples",
                right: self.num_examples(),
            });
        }
        Ok(ClusterIndex::new(clusters))
    }

    /// Point estimates `point` and the percentile intervals over `resamples` resamples, the
    /// `b`-th holding example `i` `counts_of(b)[i]` times (computed in parallel).
    fn percentile_intervals(
        &self,
        class_names: &[&str],
        confidence: f64,
        point: Vec<(String, f64)>,
        resamples: usize,
        counts_of: impl Fn(usize) -> Vec<u64> + Sync,
    ) -> Vec<ConfidenceInterval> {
        let rankings = self.rankings();
        let resampled: Vec<Vec<f64>> = (0..resamples)
            .into_par_iter()
            .map(|b| {
                self.weighted_metrics(&rankings, &counts_of(b))
                    .named_values(class_names, false)
                    .expect("class names were validated for the point estimate")
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect()
            })
            .collect();
        let alpha = 1.0 - confidence;
        point
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
            .collect()
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

fn check_bootstrap_settings(settings: &BootstrapSettings) -> Result<()> {
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
    Ok(())
}

/// Cluster index (`0..G`, in order of first appearance) of each of `ids`, the cluster ids of
/// the examples in order: the numbering the cluster bootstrap's draws refer to. E.g.
/// `["p7", "p2", "p7", "p9"]` gives `[0, 1, 0, 2]`.
pub fn cluster_indices<C: Eq + Hash>(ids: &[C]) -> Vec<usize> {
    let mut seen: HashMap<&C, usize> = HashMap::with_capacity(ids.len());
    ids.iter()
        .map(|id| {
            let next = seen.len();
            *seen.entry(id).or_insert(next)
        })
        .collect()
}

/// The draws of [`Predictions::cluster_bootstrap`] with `num_clusters` clusters and
/// `resamples` resamples from `rng` (same state as given there): `draws[b]` holds the
/// `num_clusters` cluster indices of resample `b`, in draw order (see that method for the
/// exact recipe). `rng` advances by `resamples` words, as in the bootstrap. With zero
/// clusters every draw is empty.
pub fn cluster_bootstrap_draws(
    num_clusters: usize,
    resamples: usize,
    rng: &mut impl Rng,
) -> Vec<Vec<usize>> {
    (0..resamples)
        .map(|_| rng.next_u64())
        .collect::<Vec<_>>()
        .into_iter()
        .map(|seed| cluster_draw(num_clusters, seed))
        .collect()
}

/// `g` cluster indices drawn uniformly with replacement from a `ChaCha8Rng` seeded with
/// `seed` (the recipe of [`resample_counts`], which counts instead of listing).
fn cluster_draw(g: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..g).map(|_| below(&mut rng, g as u64) as usize).collect()
}

/// Examples grouped by cluster, clusters numbered as in [`cluster_indices`].
struct ClusterIndex {
    /// Cluster of each example.
    of_example: Vec<usize>,
    /// Number of clusters `G`.
    num_clusters: usize,
}

impl ClusterIndex {
    fn new<C: Eq + Hash>(ids: &[C]) -> Self {
        let of_example = cluster_indices(ids);
        let num_clusters = of_example.iter().max().map_or(0, |m| m + 1);
        Self {
            of_example,
            num_clusters,
        }
    }

    fn num_clusters(&self) -> usize {
        self.num_clusters
    }

    /// A draw must be non-empty and name existing clusters.
    fn check_draw(&self, draw: &[usize]) -> std::result::Result<(), String> {
        if draw.is_empty() {
            return Err("a cluster resample draws no cluster".into());
        }
        if let Some((j, c)) = draw
            .iter()
            .enumerate()
            .find(|(_, c)| **c >= self.num_clusters)
        {
            return Err(format!(
                "draw {j} is cluster {c}, but there are only {} clusters (indices 0..={})",
                self.num_clusters,
                self.num_clusters - 1
            ));
        }
        Ok(())
    }

    /// How many times each example is in the resample made of the clusters `draw`.
    fn counts(&self, draw: &[usize]) -> Vec<u64> {
        let mut times = vec![0u64; self.num_clusters];
        for &c in draw {
            times[c] += 1;
        }
        self.of_example.iter().map(|&c| times[c]).collect()
    }
}

/// Macro AUC averaged over folds: see [`fold_averaged_auc`].
#[derive(Debug, Clone, PartialEq)]
pub struct FoldAuc {
    /// Macro AUC ([`ClassificationMetrics::macro_auc`]) of each fold, in input order; NaN
    /// where undefined (fewer than two classes in that fold's truth).
    pub per_fold: Vec<f64>,
    /// Mean over the folds with a defined AUC; NaN when none has one.
    pub mean: f64,
    /// Sample standard deviation (`ddof = 1`) over the folds with a defined AUC; NaN for
    /// fewer than two.
    pub std: f64,
    /// Folds whose AUC entered the mean.
    pub folds_used: usize,
    /// Folds skipped because their AUC is NaN.
    pub folds_skipped: usize,
}

/// Mean and standard deviation over folds of the per-fold macro AUC, each fold's AUC
/// computed on that fold's own test predictions.
///
/// Why: concatenating the test predictions of all folds and computing one AUC (a *pooled*
/// AUC, what [`Predictions::metrics`] gives on concatenated predictions) ranks together
/// scores of different models, whose probabilities need not be calibrated alike, so a pooled
/// AUC can be lower (or higher) than every fold's own. The per-fold mean measures what each
/// trained model achieves.
///
/// Folds with an undefined (NaN) macro AUC are skipped and counted in
/// [`FoldAuc::folds_skipped`]. Errors on no fold, or on folds with different class counts
/// (naming the first one that differs).
pub fn fold_averaged_auc(folds: &[Predictions]) -> Result<FoldAuc> {
    let Some(first) = folds.first() else {
        return Err(MetricsError::InvalidInput(
            "fold-averaged AUC of zero folds".into(),
        ));
    };
    if let Some((f, p)) = folds
        .iter()
        .enumerate()
        .find(|(_, p)| p.num_classes() != first.num_classes())
    {
        return Err(MetricsError::InvalidInput(format!(
            "fold-averaged AUC: fold {f} has {} classes, fold 0 has {}",
            p.num_classes(),
            first.num_classes()
        )));
    }
    let per_fold: Vec<f64> = folds.iter().map(|p| p.metrics().macro_auc).collect();
    let defined: Vec<f64> = per_fold.iter().copied().filter(|v| !v.is_nan()).collect();
    let summary = crate::stats::summarize(&defined);
    Ok(FoldAuc {
        mean: summary.mean,
        std: summary.std,
        folds_used: defined.len(),
        folds_skipped: per_fold.len() - defined.len(),
        per_fold,
    })
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
