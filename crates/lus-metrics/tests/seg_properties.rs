//! Property tests of the segmentation metrics and the component labelling.

use std::collections::VecDeque;

use lus_metrics::{ConfusionMatrix, Connectivity, ObjectConfig, label_class, object_counts};
use proptest::prelude::*;

const IGNORE: u8 = 255;
const CLASSES: usize = 4;

/// A random image size and a mask of class ids `0..CLASSES` (biased towards 0 so that
/// components have holes and several blobs), plus occasional ignore pixels when `ignore`.
fn mask(width: usize, height: usize, ignore: bool) -> impl Strategy<Value = Vec<u8>> {
    let cell = if ignore {
        prop_oneof![4 => Just(0u8), 4 => 1u8..CLASSES as u8, 1 => Just(IGNORE)].boxed()
    } else {
        prop_oneof![4 => Just(0u8), 4 => 1u8..CLASSES as u8].boxed()
    };
    proptest::collection::vec(cell, width * height)
}

/// (width, height, truth, prediction); the prediction never holds the ignore id.
fn pair() -> impl Strategy<Value = (usize, usize, Vec<u8>, Vec<u8>)> {
    (1usize..24, 1usize..24)
        .prop_flat_map(|(w, h)| (Just(w), Just(h), mask(w, h, true), mask(w, h, false)))
}

fn conn() -> impl Strategy<Value = Connectivity> {
    prop_oneof![Just(Connectivity::Four), Just(Connectivity::Eight)]
}

proptest! {
    #[test]
    fn merge_equals_update_on_concatenation((_, _, t1, p1) in pair(), (_, _, t2, p2) in pair()) {
        let mut a = ConfusionMatrix::new(CLASSES);
        a.update(&t1, &p1, Some(IGNORE)).unwrap();
        let mut b = ConfusionMatrix::new(CLASSES);
        b.update(&t2, &p2, Some(IGNORE)).unwrap();
        a.merge(&b);
        let mut whole = ConfusionMatrix::new(CLASSES);
        let t: Vec<u8> = t1.iter().chain(&t2).copied().collect();
        let p: Vec<u8> = p1.iter().chain(&p2).copied().collect();
        whole.update(&t, &p, Some(IGNORE)).unwrap();
        prop_assert_eq!(a, whole);
    }

    #[test]
    fn scores_are_consistent((_, _, truth, pred) in pair()) {
        let mut m = ConfusionMatrix::new(CLASSES);
        m.update(&truth, &pred, Some(IGNORE)).unwrap();
        let counted = truth.iter().filter(|&&t| t != IGNORE).count() as u64;
        let scores = m.per_class();
        prop_assert_eq!(scores.iter().map(|s| s.support).sum::<u64>(), counted);
        prop_assert_eq!(scores.iter().map(|s| s.predicted).sum::<u64>(), counted);
        for s in &scores {
            // IoU and Dice are undefined together, and IoU = D / (2 - D) <= Dice.
            prop_assert_eq!(s.iou.is_nan(), s.dice.is_nan());
            prop_assert_eq!(s.iou.is_nan(), s.support == 0 && s.predicted == 0);
            if !s.iou.is_nan() {
                prop_assert!(s.iou <= s.dice + 1e-15, "{:?}", s);
                prop_assert!((s.iou - s.dice / (2.0 - s.dice)).abs() < 1e-12);
                prop_assert!((0.0..=1.0).contains(&s.iou));
            }
            prop_assert_eq!(s.recall.is_nan(), s.support == 0);
            prop_assert_eq!(s.precision.is_nan(), s.predicted == 0);
        }
    }

    #[test]
    fn perfect_prediction_scores_one_and_finds_every_object(
        (w, h, truth, _) in pair(), connectivity in conn()
    ) {
        // Predict the truth exactly (the ignore pixels become background in the prediction).
        let pred: Vec<u8> = truth.iter().map(|&t| if t == IGNORE { 0 } else { t }).collect();
        let mut m = ConfusionMatrix::new(CLASSES);
        m.update(&truth, &pred, Some(IGNORE)).unwrap();
        for s in m.per_class() {
            if s.support > 0 {
                prop_assert_eq!((s.iou, s.dice, s.precision, s.recall), (1.0, 1.0, 1.0, 1.0));
            }
        }
        let cfg = ObjectConfig { connectivity, ..ObjectConfig::default() };
        for class in 1..CLASSES as u8 {
            let c = object_counts(&truth, &pred, w, h, class, &cfg).unwrap();
            prop_assert_eq!(c.fp, 0);
            prop_assert_eq!(c.fn_, 0);
            prop_assert_eq!(c.tp, c.truth_objects);
        }
    }

    #[test]
    fn object_counts_balance((w, h, truth, pred) in pair(), min_area in 0usize..4, thr in 0.0f32..1.0) {
        let cfg = ObjectConfig { connectivity: Connectivity::Eight, min_area, iou_threshold: thr };
        for class in 1..CLASSES as u8 {
            let c = object_counts(&truth, &pred, w, h, class, &cfg).unwrap();
            prop_assert_eq!(c.tp + c.fp, c.pred_objects);
            prop_assert_eq!(c.tp + c.fn_, c.truth_objects);
            let all = label_class(&pred, w, h, class, Connectivity::Eight).unwrap();
            prop_assert_eq!(c.pred_objects + c.ignored_small, all.count);
        }
    }

    #[test]
    fn components_partition_the_class_pixels(
        (w, h, m, _) in pair(), connectivity in conn(), class in 0u8..CLASSES as u8
    ) {
        let c = label_class(&m, w, h, class, connectivity).unwrap();
        let in_class = |i: usize| m[i] == class;
        // Every class pixel is labelled, nothing else is.
        for (i, &l) in c.labels.iter().enumerate() {
            prop_assert_eq!(l != 0, in_class(i));
            prop_assert!(l as usize <= c.count);
        }
        prop_assert_eq!(c.areas.iter().sum::<usize>(), (0..m.len()).filter(|&i| in_class(i)).count());
        // Labels appear first in raster order 1, 2, 3, ...
        let mut next = 1;
        for &l in &c.labels {
            if l as usize == next { next += 1; }
            prop_assert!((l as usize) < next || l == 0);
        }
        // Each component is exactly the set reached by a flood fill from its first pixel.
        let offsets: &[(isize, isize)] = match connectivity {
            Connectivity::Four => &[(1, 0), (-1, 0), (0, 1), (0, -1)],
            Connectivity::Eight => &[(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)],
        };
        let mut seen = vec![false; m.len()];
        for label in 1..=c.count as u32 {
            let start = c.labels.iter().position(|&l| l == label).unwrap();
            let mut queue = VecDeque::from([start]);
            seen[start] = true;
            let mut area = 0;
            while let Some(i) = queue.pop_front() {
                prop_assert_eq!(c.labels[i], label);
                area += 1;
                let (x, y) = ((i % w) as isize, (i / w) as isize);
                for (dx, dy) in offsets {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize { continue; }
                    let j = ny as usize * w + nx as usize;
                    if in_class(j) && !seen[j] {
                        seen[j] = true;
                        queue.push_back(j);
                    }
                }
            }
            prop_assert_eq!(area, c.areas[label as usize - 1]);
        }
    }
}
