//! Pixel-level segmentation metrics from a confusion matrix.
//!
//! # Undefined scores are NaN, and NaN is left out of means
//!
//! Every score is a ratio whose denominator can be zero. This crate does **not** substitute 0
//! or 1 for a zero denominator (scikit-learn's `zero_division` default substitutes 0, which
//! silently drags a mean down for a class that simply did not occur). Instead:
//!
//! | situation for class `c`                   | IoU | Dice | precision | recall |
//! |-------------------------------------------|-----|------|-----------|--------|
//! | absent in truth **and** prediction        | NaN | NaN  | NaN       | NaN    |
//! | absent in truth, predicted somewhere      | 0   | 0    | 0         | NaN    |
//! | present in truth, never predicted         | 0   | 0    | NaN       | 0      |
//!
//! and every mean ([`ConfusionMatrix::mean`], [`nan_mean`]) averages only the defined (non-NaN)
//! values — the common "nan-mean" convention (`numpy.nanmean` over the per-class scores, as in
//! the mmsegmentation / torchmetrics style of reporting mIoU). A mean over no defined value is
//! NaN. The matrix accumulates pixels over everything passed to [`ConfusionMatrix::update`]
//! (micro over pixels), so a per-class NaN means "absent from the whole accumulated set"; to
//! average per image, keep one matrix per image and [`nan_mean`] the per-image scores.

use rayon::prelude::*;

use crate::error::{MetricsError, Result};

/// Scores of one class (see the module docs for the NaN conventions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassScores {
    /// Class id.
    pub class: usize,
    /// Intersection over union: `tp / (tp + fp + fn)`.
    pub iou: f64,
    /// Dice / F1: `2 tp / (2 tp + fp + fn)`.
    pub dice: f64,
    /// `tp / (tp + fp)`.
    pub precision: f64,
    /// `tp / (tp + fn)`.
    pub recall: f64,
    /// Pixels whose truth is this class (`tp + fn`).
    pub support: u64,
    /// Pixels predicted as this class (`tp + fp`).
    pub predicted: u64,
}

/// Class-averaged scores (nan-means over the classes taken into account) and pixel accuracy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanScores {
    /// Mean IoU over the classes whose IoU is defined.
    pub miou: f64,
    /// Mean Dice over the classes whose Dice is defined.
    pub mdice: f64,
    /// Mean precision over the classes whose precision is defined.
    pub precision: f64,
    /// Mean recall over the classes whose recall is defined.
    pub recall: f64,
    /// Correctly classified pixels over all counted pixels, every class included (the class
    /// selection does not change it); NaN when no pixel was counted.
    pub pixel_accuracy: f64,
    /// How many of the selected classes had a defined IoU (i.e. entered `miou`).
    pub classes_in_mean: usize,
}

/// A `num_classes x num_classes` pixel confusion matrix: row = truth, column = prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix for class ids `0..num_classes`.
    pub fn new(num_classes: usize) -> Self {
        Self {
            num_classes,
            counts: vec![0; num_classes * num_classes],
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Row-major counts: `counts()[truth * num_classes + prediction]`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Pixels with truth `truth` predicted as `pred`. Panics if an id is `>= num_classes`
    /// (a programming error, not a data error).
    pub fn count(&self, truth: usize, pred: usize) -> u64 {
        assert!(truth < self.num_classes && pred < self.num_classes);
        self.counts[truth * self.num_classes + pred]
    }

    /// Total pixels counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds one image (or any pair of equally long label buffers). Pixels whose **truth** is
    /// `ignore_id` are skipped whatever their prediction. Any other id `>= num_classes`, in
    /// truth or prediction, is an error naming the value and pixel; on error the matrix is
    /// left unchanged.
    pub fn update(&mut self, truth: &[u8], pred: &[u8], ignore_id: Option<u8>) -> Result<()> {
        if truth.len() != pred.len() {
            return Err(MetricsError::LengthMismatch {
                what: "confusion matrix update",
                left_name: "truth",
                left: truth.len(),
                right_name: "prediction",
                right: pred.len(),
            });
        }
        let n = self.num_classes;
        // Count into a scratch matrix first so that an error midway leaves `self` untouched.
        let mut local = vec![0u64; n * n];
        for (index, (&t, &p)) in truth.iter().zip(pred).enumerate() {
            if Some(t) == ignore_id {
                continue;
            }
            let (t, p) = (t as usize, p as usize);
            if t >= n || p >= n {
                let (which, value) = if t >= n {
                    ("truth", t)
                } else {
                    ("prediction", p)
                };
                return Err(MetricsError::ClassOutOfRange {
                    which,
                    value: value as u8,
                    index,
                    num_classes: n,
                });
            }
            local[t * n + p] += 1;
        }
        for (c, l) in self.counts.iter_mut().zip(&local) {
            *c += l;
        }
        Ok(())
    }

    /// Builds a matrix from many `(truth, prediction)` pairs in parallel. The counts are
    /// integers, so the result is exactly the same for any rayon thread count. The first
    /// failing pair (in input order) is reported, prefixed with its index.
    pub fn from_pairs(
        num_classes: usize,
        pairs: &[(&[u8], &[u8])],
        ignore_id: Option<u8>,
    ) -> Result<Self> {
        let partial: Vec<Result<Self>> = pairs
            .par_iter()
            .map(|(truth, pred)| {
                let mut m = Self::new(num_classes);
                m.update(truth, pred, ignore_id)?;
                Ok(m)
            })
            .collect();
        let mut total = Self::new(num_classes);
        for (i, m) in partial.into_iter().enumerate() {
            let m = m.map_err(|e| MetricsError::InPair {
                index: i,
                source: Box::new(e),
            })?;
            total.merge(&m);
        }
        Ok(total)
    }

    /// Adds another matrix's counts (to reduce batches or threads). Panics if the class
    /// counts differ (a programming error).
    pub fn merge(&mut self, other: &Self) {
        assert_eq!(
            self.num_classes, other.num_classes,
            "merging confusion matrices of different class counts"
        );
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
    }

    /// Scores of every class `0..num_classes`, in class order.
    pub fn per_class(&self) -> Vec<ClassScores> {
        let n = self.num_classes;
        (0..n)
            .map(|c| {
                let tp = self.counts[c * n + c];
                let support: u64 = self.counts[c * n..(c + 1) * n].iter().sum();
                let predicted: u64 = (0..n).map(|t| self.counts[t * n + c]).sum();
                let (fp, fn_) = (predicted - tp, support - tp);
                ClassScores {
                    class: c,
                    iou: ratio(tp, tp + fp + fn_),
                    dice: ratio(2 * tp, 2 * tp + fp + fn_),
                    precision: ratio(tp, predicted),
                    recall: ratio(tp, support),
                    support,
                    predicted,
                }
            })
            .collect()
    }

    /// Nan-means over all classes, or all but class 0 (background) when
    /// `include_background` is false. Pixel accuracy always counts every pixel.
    pub fn mean(&self, include_background: bool) -> MeanScores {
        let first = usize::from(!include_background);
        let classes: Vec<usize> = (first..self.num_classes).collect();
        self.mean_over(&classes)
    }

    /// Nan-means over the given classes (e.g. only the line classes). Ids `>= num_classes`
    /// are ignored.
    pub fn mean_over(&self, classes: &[usize]) -> MeanScores {
        let scores = self.per_class();
        let picked: Vec<&ClassScores> = classes.iter().filter_map(|&c| scores.get(c)).collect();
        let m =
            |f: fn(&ClassScores) -> f64| nan_mean(&picked.iter().map(|s| f(s)).collect::<Vec<_>>());
        let correct: u64 = (0..self.num_classes)
            .map(|c| self.counts[c * self.num_classes + c])
            .sum();
        MeanScores {
            miou: m(|s| s.iou),
            mdice: m(|s| s.dice),
            precision: m(|s| s.precision),
            recall: m(|s| s.recall),
            pixel_accuracy: ratio(correct, self.total()),
            classes_in_mean: picked.iter().filter(|s| !s.iou.is_nan()).count(),
        }
    }
}

/// `num / den`, NaN when `den == 0`.
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        f64::NAN
    } else {
        num as f64 / den as f64
    }
}

/// Mean of the non-NaN values; NaN when there are none. Summed in the given order, so the
/// result does not depend on threading.
pub fn nan_mean(values: &[f64]) -> f64 {
    let (sum, count) = values
        .iter()
        .filter(|v| !v.is_nan())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_two_class_example() {
        // truth 0 0 1 1 1 ; pred 0 1 1 1 0 -> tp0=1 fp0=1 fn0=1 ; tp1=2 fp1=1 fn1=1
        let mut m = ConfusionMatrix::new(2);
        m.update(&[0, 0, 1, 1, 1], &[0, 1, 1, 1, 0], None).unwrap();
        assert_eq!(m.counts(), &[1, 1, 1, 2]);
        let s = m.per_class();
        assert_eq!(s[0].iou, 1.0 / 3.0);
        assert_eq!(s[0].dice, 0.5);
        assert_eq!(s[1].iou, 0.5);
        assert_eq!(s[1].dice, 4.0 / 6.0);
        assert_eq!(s[1].precision, 2.0 / 3.0);
        assert_eq!(s[1].recall, 2.0 / 3.0);
        assert_eq!((s[1].support, s[1].predicted), (3, 3));
        let mean = m.mean(true);
        assert!((mean.miou - (1.0 / 3.0 + 0.5) / 2.0).abs() < 1e-15);
        assert_eq!(mean.pixel_accuracy, 3.0 / 5.0);
        assert_eq!(m.mean(false).miou, 0.5);
    }

    #[test]
    fn edge_cases_follow_the_documented_table() {
        // class 1 absent everywhere, class 2 only predicted, class 3 only in truth.
        let mut m = ConfusionMatrix::new(4);
        m.update(&[0, 0, 3, 3], &[0, 2, 0, 0], None).unwrap();
        let s = m.per_class();
        assert!(s[1].iou.is_nan() && s[1].dice.is_nan());
        assert!(s[1].precision.is_nan() && s[1].recall.is_nan());
        assert_eq!((s[2].iou, s[2].dice, s[2].precision), (0.0, 0.0, 0.0));
        assert!(s[2].recall.is_nan());
        assert_eq!((s[3].iou, s[3].dice, s[3].recall), (0.0, 0.0, 0.0));
        assert!(s[3].precision.is_nan());
        // Class 1 is left out of the means: mIoU = (iou0 + 0 + 0) / 3 with iou0 = 1/4.
        let mean = m.mean(true);
        assert_eq!(mean.classes_in_mean, 3);
        assert!((mean.miou - 0.25 / 3.0).abs() < 1e-15);
        // Mean precision over classes 0 and 2 only (1 and 3 are NaN): (1/3 + 0) / 2.
        assert!((mean.precision - 1.0 / 6.0).abs() < 1e-15);
        assert!(ConfusionMatrix::new(3).mean(true).miou.is_nan());
    }

    #[test]
    fn ignore_and_errors() {
        let mut m = ConfusionMatrix::new(3);
        // The 255 in truth is skipped even though its prediction 9 is out of range.
        m.update(&[255, 1, 2], &[9, 1, 1], Some(255)).unwrap();
        assert_eq!(m.total(), 2);
        let before = m.clone();
        let err = m
            .update(&[1, 7], &[1, 1], Some(255))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("truth") && err.contains('7') && err.contains("pixel 1"),
            "{err}"
        );
        let err = m.update(&[1, 1], &[1, 200], None).unwrap_err().to_string();
        assert!(err.contains("prediction") && err.contains("200"), "{err}");
        let err = m.update(&[1], &[1, 1], None).unwrap_err().to_string();
        assert!(err.contains("length mismatch"), "{err}");
        assert_eq!(m, before, "a failed update must not change the matrix");
    }

    #[test]
    fn from_pairs_equals_sequential_updates_and_reports_the_failing_pair() {
        let a: Vec<u8> = (0..97).map(|i| (i * 7 % 5) as u8).collect();
        let b: Vec<u8> = (0..97).map(|i| (i * 3 % 5) as u8).collect();
        let pairs = [(&a[..], &b[..]), (&b[..], &a[..]), (&a[..], &a[..])];
        let par = ConfusionMatrix::from_pairs(5, &pairs, None).unwrap();
        let mut seq = ConfusionMatrix::new(5);
        for (t, p) in pairs {
            seq.update(t, p, None).unwrap();
        }
        assert_eq!(par, seq);
        let err = ConfusionMatrix::from_pairs(4, &pairs, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("pair 0: truth mask has class id 4"),
            "{err}"
        );
    }
}
