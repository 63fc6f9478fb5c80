//! Object-level detection counts for the line classes (pleural line, A-lines, B-lines).
//!
//! Each connected component of a class is one object. Predicted and true objects are matched
//! one-to-one, **greedily by IoU**: every (predicted, true) pair that overlaps with
//! `IoU >= iou_threshold` is a candidate; candidates are taken in order of decreasing IoU
//! (ties: smaller predicted label, then smaller true label — labels are in raster order, see
//! [`crate::components`]), skipping pairs whose predicted or true object is already matched.
//! Matched pairs are true positives; unmatched predicted objects are false positives and
//! unmatched true objects false negatives. Greedy matching is what COCO-style detection
//! evaluation does; for line objects overlaps are nearly always one-to-one, so it agrees with
//! an optimal (Hungarian) assignment in practice, and it is deterministic and cheap.

use std::ops::{Add, AddAssign};

use crate::components::{Connectivity, check_len, label_class};
use crate::error::{MetricsError, Result};

/// How objects are found and matched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObjectConfig {
    /// Neighbourhood that joins pixels into one object (default eight).
    pub connectivity: Connectivity,
    /// Predicted objects with fewer pixels than this are dropped before matching: they count
    /// neither as true nor as false positives (but are reported in
    /// [`ObjectCounts::ignored_small`]). True objects are never dropped. Default 0 (keep all).
    pub min_area: usize,
    /// Smallest IoU between a predicted and a true object for them to match; pairs must also
    /// share at least one pixel, so 0.0 means "any overlap". Default 0.1: a line predicted one
    /// or two pixels off its true position still overlaps it by far more than a tenth of their
    /// union, while a speck that merely touches a large object does not count as finding it.
    pub iou_threshold: f32,
}

impl Default for ObjectConfig {
    fn default() -> Self {
        Self {
            connectivity: Connectivity::Eight,
            min_area: 0,
            iou_threshold: 0.1,
        }
    }
}

/// Object counts for one class of one image; add them up over images (`+`, `+=`, `sum`).
/// A per-image false-positive rate is `fp / images`, computed by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObjectCounts {
    /// Matched pairs.
    pub tp: usize,
    /// Predicted objects without a match.
    pub fp: usize,
    /// True objects without a match.
    pub fn_: usize,
    /// Predicted objects taken into account (after the `min_area` filter): `tp + fp`.
    pub pred_objects: usize,
    /// True objects: `tp + fn_`.
    pub truth_objects: usize,
    /// Predicted objects dropped for being smaller than `min_area`.
    pub ignored_small: usize,
}

impl ObjectCounts {
    /// `tp / (tp + fp)`, NaN without predicted objects.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    /// `tp / (tp + fn)`, NaN without true objects.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    /// `2 tp / (2 tp + fp + fn)`, NaN without any object.
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        f64::NAN
    } else {
        num as f64 / den as f64
    }
}

impl Add for ObjectCounts {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            tp: self.tp + o.tp,
            fp: self.fp + o.fp,
            fn_: self.fn_ + o.fn_,
            pred_objects: self.pred_objects + o.pred_objects,
            truth_objects: self.truth_objects + o.truth_objects,
            ignored_small: self.ignored_small + o.ignored_small,
        }
    }
}

impl AddAssign for ObjectCounts {
    fn add_assign(&mut self, o: Self) {
        *self = *self + o;
    }
}

impl std::iter::Sum for ObjectCounts {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), Add::add)
    }
}

/// Counts matched, spurious and missed objects of `class` (see the module docs for the
/// matching rule). `truth` and `pred` are row-major class-id masks of `width x height`.
pub fn object_counts(
    truth: &[u8],
    pred: &[u8],
    width: usize,
    height: usize,
    class: u8,
    cfg: &ObjectConfig,
) -> Result<ObjectCounts> {
    check_len("object counts (truth)", truth.len(), width, height)?;
    check_len("object counts (prediction)", pred.len(), width, height)?;
    if !(cfg.iou_threshold.is_finite() && (0.0..=1.0).contains(&cfg.iou_threshold)) {
        return Err(MetricsError::InvalidInput(format!(
            "object iou_threshold must be in [0, 1], got {}",
            cfg.iou_threshold
        )));
    }
    let t = label_class(truth, width, height, class, cfg.connectivity)?;
    let p = label_class(pred, width, height, class, cfg.connectivity)?;
    let kept: Vec<bool> = p.areas.iter().map(|&a| a >= cfg.min_area).collect();
    let ignored_small = kept.iter().filter(|k| !**k).count();

    // Intersections of every overlapping (pred, truth) pair; a sorted vector of pairs is
    // enough because line objects overlap few partners.
    let mut pairs: Vec<(u32, u32)> = p
        .labels
        .iter()
        .zip(&t.labels)
        .filter(|&(&lp, &lt)| lp != 0 && lt != 0 && kept[lp as usize - 1])
        .map(|(&lp, &lt)| (lp, lt))
        .collect();
    pairs.sort_unstable();
    let mut candidates: Vec<(f64, u32, u32)> = Vec::new();
    for run in pairs.chunk_by(|a, b| a == b) {
        let (lp, lt) = run[0];
        let inter = run.len();
        let union = p.areas[lp as usize - 1] + t.areas[lt as usize - 1] - inter;
        let iou = inter as f64 / union as f64;
        if iou >= f64::from(cfg.iou_threshold) {
            candidates.push((iou, lp, lt));
        }
    }
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut pred_used = vec![false; p.count + 1];
    let mut truth_used = vec![false; t.count + 1];
    let mut tp = 0;
    for (_, lp, lt) in candidates {
        if !pred_used[lp as usize] && !truth_used[lt as usize] {
            pred_used[lp as usize] = true;
            truth_used[lt as usize] = true;
            tp += 1;
        }
    }
    let pred_objects = p.count - ignored_small;
    Ok(ObjectCounts {
        tp,
        fp: pred_objects - tp,
        fn_: t.count - tp,
        pred_objects,
        truth_objects: t.count,
        ignored_small,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// '.' = 0, digits = class ids.
    fn parse(rows: &[&str]) -> (Vec<u8>, usize, usize) {
        let w = rows[0].len();
        let data = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| if b == b'.' { 0 } else { b - b'0' }))
            .collect();
        (data, w, rows.len())
    }

    #[test]
    fn one_hit_one_spurious_one_missed() {
        let (truth, w, h) = parse(&[
            "4444....", //
            "........", //
            "....4444", //
            "........",
        ]);
        let (pred, _, _) = parse(&[
            "444.....", // overlaps the first true line: IoU 3/4
            "........", //
            "........", // misses the second
            "4.......", // spurious
        ]);
        let c = object_counts(&truth, &pred, w, h, 4, &ObjectConfig::default()).unwrap();
        assert_eq!(
            c,
            ObjectCounts {
                tp: 1,
                fp: 1,
                fn_: 1,
                pred_objects: 2,
                truth_objects: 2,
                ignored_small: 0
            }
        );
        assert_eq!((c.precision(), c.recall(), c.f1()), (0.5, 0.5, 0.5));
        // min_area 2 drops the one-pixel speck: no false positive left.
        let cfg = ObjectConfig {
            min_area: 2,
            ..ObjectConfig::default()
        };
        let c = object_counts(&truth, &pred, w, h, 4, &cfg).unwrap();
        assert_eq!((c.tp, c.fp, c.fn_, c.ignored_small), (1, 0, 1, 1));
    }

    #[test]
    fn one_prediction_covering_two_truths_matches_only_the_better_one() {
        let (truth, w, h) = parse(&["55.5"]);
        let (pred, _, _) = parse(&["5555"]);
        // IoU with the left truth 2/4, with the right 1/4: greedy takes the left.
        let c = object_counts(&truth, &pred, w, h, 5, &ObjectConfig::default()).unwrap();
        assert_eq!((c.tp, c.fp, c.fn_), (1, 0, 1));
    }

    #[test]
    fn threshold_decides_weak_overlaps() {
        let (truth, w, h) = parse(&["3333333333"]);
        let (pred, _, _) = parse(&["3........."]);
        let strict = ObjectConfig {
            iou_threshold: 0.2,
            ..ObjectConfig::default()
        };
        let c = object_counts(&truth, &pred, w, h, 3, &strict).unwrap();
        assert_eq!((c.tp, c.fp, c.fn_), (0, 1, 1));
        let any = ObjectConfig {
            iou_threshold: 0.0,
            ..ObjectConfig::default()
        };
        let c = object_counts(&truth, &pred, w, h, 3, &any).unwrap();
        assert_eq!((c.tp, c.fp, c.fn_), (1, 0, 0));
        // Threshold 0 still needs a shared pixel.
        let (far, _, _) = parse(&["3333333333"]);
        let (none, _, _) = parse(&[".........."]);
        let c = object_counts(&none, &far, w, h, 3, &any).unwrap();
        assert_eq!((c.tp, c.fp, c.fn_), (0, 1, 0));
        let bad = ObjectConfig {
            iou_threshold: f32::NAN,
            ..ObjectConfig::default()
        };
        assert!(object_counts(&truth, &pred, w, h, 3, &bad).is_err());
    }

    #[test]
    fn counts_add_up() {
        let a = ObjectCounts {
            tp: 1,
            fp: 2,
            fn_: 3,
            pred_objects: 3,
            truth_objects: 4,
            ignored_small: 1,
        };
        let total: ObjectCounts = [a, a, ObjectCounts::default()].into_iter().sum();
        assert_eq!(total.tp, 2);
        assert_eq!(total.truth_objects, 8);
        assert!(ObjectCounts::default().precision().is_nan());
    }
}
