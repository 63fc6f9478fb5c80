//! Property tests of the classification metrics and the paired tests, and behaviour tests of
//! the bootstrap intervals.

use lus_metrics::stats::{student_t_cdf, wilcoxon_signed_rank};
use lus_metrics::{BootstrapSettings, Predictions, RocCurve, paired_t_test};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const NAMES: [&str; 3] = ["healthy", "covid", "pneumonia"];

/// Up to 40 examples of 2 or 3 classes. Probabilities are built from small integer weights
/// so that tied scores and tied argmaxes are common.
fn predictions() -> impl Strategy<Value = Predictions> {
    (2usize..=3, 1usize..40).prop_flat_map(|(k, n)| {
        (
            proptest::collection::vec(0..k, n),
            proptest::collection::vec(proptest::collection::vec(0u32..5, k), n),
        )
            .prop_map(move |(truth, weights)| {
                let rows: Vec<Vec<f64>> = weights
                    .iter()
                    .map(|w| {
                        let total: u32 = w.iter().sum::<u32>();
                        if total == 0 {
                            vec![1.0 / k as f64; k]
                        } else {
                            w.iter().map(|&v| f64::from(v) / f64::from(total)).collect()
                        }
                    })
                    .collect();
                Predictions::from_rows(&truth, &rows).unwrap()
            })
    })
}

fn in_unit_or_nan(v: f64) -> bool {
    v.is_nan() || (0.0..=1.0).contains(&v)
}

proptest! {
    #[test]
    fn metrics_are_probabilities_and_the_confusion_counts_every_example(p in predictions()) {
        let m = p.metrics();
        let names = &NAMES[..p.num_classes()];
        prop_assert_eq!(m.confusion.total(), p.num_examples() as u64);
        prop_assert_eq!(m.num_examples, p.num_examples());
        for (name, v) in m.named(names).unwrap() {
            if name.starts_with("support_") {
                prop_assert!(v >= 0.0 && v <= p.num_examples() as f64);
            } else {
                prop_assert!(in_unit_or_nan(v), "{} = {}", name, v);
            }
        }
        // Accuracy and weighted F1 are always defined; balanced accuracy too (some class has
        // support); a class's recall is NaN exactly when it has no support.
        prop_assert!(!m.accuracy.is_nan() && !m.weighted_f1.is_nan());
        prop_assert!(!m.balanced_accuracy.is_nan());
        for s in &m.per_class {
            prop_assert_eq!(s.recall.is_nan(), s.support == 0);
            prop_assert_eq!(s.precision.is_nan(), s.predicted == 0);
            prop_assert_eq!(s.auc.is_nan(), s.support == 0 || s.support == p.num_examples() as u64);
        }
        let supports: u64 = m.per_class.iter().map(|s| s.support).sum();
        prop_assert_eq!(supports, p.num_examples() as u64);
    }

    #[test]
    fn metrics_do_not_depend_on_example_order(p in predictions(), seed in any::<u64>()) {
        // A seeded Fisher-Yates permutation of the examples.
        let n = p.num_examples();
        let k = p.num_classes();
        let mut order: Vec<usize> = (0..n).collect();
        let mut state = seed | 1;
        for i in (1..n).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (state >> 33) as usize % (i + 1));
        }
        let truth: Vec<usize> = order.iter().map(|&i| p.truth()[i]).collect();
        let probs: Vec<f64> = order
            .iter()
            .flat_map(|&i| p.probabilities()[i * k..(i + 1) * k].to_vec())
            .collect();
        let q = Predictions::new(&truth, &probs, k).unwrap();
        // Bit-identical: the scores come from integer counts.
        let names = &NAMES[..k];
        prop_assert_eq!(
            format!("{:?}", p.metrics().named(names).unwrap()),
            format!("{:?}", q.metrics().named(names).unwrap())
        );
        for c in 0..k {
            // Debug text, so that NaN rates (one label only) compare equal.
            prop_assert_eq!(
                format!("{:?}", p.roc_curve(c).unwrap()),
                format!("{:?}", q.roc_curve(c).unwrap())
            );
        }
    }

    #[test]
    fn reversing_the_scores_mirrors_the_auc(
        labels in proptest::collection::vec(any::<bool>(), 1..60),
        raw in proptest::collection::vec(0u8..8, 60),
    ) {
        let scores: Vec<f64> = labels.iter().zip(&raw).map(|(_, &r)| f64::from(r) / 8.0).collect();
        let reversed: Vec<f64> = scores.iter().map(|s| -s).collect();
        let a = RocCurve::from_scores(&labels, &scores).unwrap();
        let b = RocCurve::from_scores(&labels, &reversed).unwrap();
        let both = labels.iter().any(|&l| l) && labels.iter().any(|&l| !l);
        prop_assert_eq!(a.auc.is_nan(), !both);
        if both {
            prop_assert!((a.auc + b.auc - 1.0).abs() < 1e-12, "{} + {}", a.auc, b.auc);
            // The curve is monotone and ends at (1, 1).
            prop_assert_eq!((a.fpr.last().copied(), a.tpr.last().copied()), (Some(1.0), Some(1.0)));
            for w in a.fpr.windows(2).chain(a.tpr.windows(2)) {
                prop_assert!(w[0] <= w[1]);
            }
            // Swapping the labels mirrors the AUC too.
            let flipped: Vec<bool> = labels.iter().map(|l| !l).collect();
            let c = RocCurve::from_scores(&flipped, &scores).unwrap();
            prop_assert!((a.auc + c.auc - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn two_class_auc_is_the_same_for_both_classes(
        truth in proptest::collection::vec(0usize..2, 2..40),
        raw in proptest::collection::vec(0u8..=8, 40),
    ) {
        // p1 on a grid of 1/8: 1 - p1 is exact, so the two columns rank in exactly
        // opposite orders.
        let rows: Vec<[f64; 2]> = raw[..truth.len()]
            .iter()
            .map(|&r| [1.0 - f64::from(r) / 8.0, f64::from(r) / 8.0])
            .collect();
        let m = Predictions::from_rows(&truth, &rows).unwrap().metrics();
        let (a0, a1) = (m.per_class[0].auc, m.per_class[1].auc);
        prop_assert!((a0.is_nan() && a1.is_nan()) || a0 == a1, "{} {}", a0, a1);
    }

    #[test]
    fn paired_tests_are_symmetric_and_bounded(
        pairs in proptest::collection::vec((0u8..20, 0u8..20), 0..35)
    ) {
        let x: Vec<f64> = pairs.iter().map(|p| f64::from(p.0) / 20.0).collect();
        let y: Vec<f64> = pairs.iter().map(|p| f64::from(p.1) / 20.0).collect();
        let (w, w_swapped) = (wilcoxon_signed_rank(&x, &y).unwrap(), wilcoxon_signed_rank(&y, &x).unwrap());
        let (t, t_swapped) = (paired_t_test(&x, &y).unwrap(), paired_t_test(&y, &x).unwrap());
        prop_assert!(in_unit_or_nan(w.p_value) && in_unit_or_nan(t.p_value));
        prop_assert_eq!(w.p_value.is_nan(), w.undefined.is_some());
        prop_assert_eq!(t.p_value.is_nan(), t.undefined.is_some());
        prop_assert_eq!(w.p_value.to_bits(), w_swapped.p_value.to_bits());
        prop_assert_eq!(t.p_value.to_bits(), t_swapped.p_value.to_bits());
        prop_assert_eq!(w.r_plus + w.r_minus, (w.n_nonzero * (w.n_nonzero + 1)) as f64 / 2.0);
    }

    #[test]
    fn t_cdf_is_a_symmetric_distribution_function(t in -40.0f64..40.0, df in 0.2f64..300.0) {
        let (lo, hi) = (student_t_cdf(t, df), student_t_cdf(-t, df));
        prop_assert!((lo + hi - 1.0).abs() < 1e-14, "{} + {}", lo, hi);
        prop_assert!(student_t_cdf(t + 0.01, df) >= lo);
        prop_assert!((0.0..=1.0).contains(&lo));
    }
}

/// Predictions of a moderately good classifier on `n` examples (deterministic).
fn synthetic(n: usize, seed: u64) -> Predictions {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut unit = || (rand::Rng::next_u64(&mut rng) >> 11) as f64 / (1u64 << 53) as f64;
    let mut truth = Vec::new();
    let mut probs = Vec::new();
    for i in 0..n {
        let t = i % 3;
        let mut w = [unit(), unit(), unit()];
        w[t] += 0.6 * unit() + 0.2;
        let s: f64 = w.iter().sum();
        truth.push(t);
        probs.extend(w.iter().map(|v| v / s));
    }
    Predictions::new(&truth, &probs, 3).unwrap()
}

#[test]
fn bootstrap_intervals_contain_the_estimate_and_shrink_with_n() {
    let settings = BootstrapSettings::default();
    let width = |n: usize| {
        let p = synthetic(n, 7);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let cis = p.bootstrap(&NAMES, &settings, &mut rng).unwrap();
        // Every metric but the supports, in the order of `named`.
        let named = p.metrics().named(&NAMES).unwrap();
        let expected: Vec<&str> = named
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !n.starts_with("support_"))
            .collect();
        assert_eq!(
            cis.iter().map(|c| c.metric.as_str()).collect::<Vec<_>>(),
            expected
        );
        for ci in &cis {
            assert!(
                ci.lower <= ci.estimate && ci.estimate <= ci.upper,
                "n = {n}: {ci:?}"
            );
            assert!(ci.lower < ci.upper, "n = {n}: degenerate {ci:?}");
            assert_eq!(ci.resamples_used, 1000, "n = {n}: {ci:?}");
        }
        let ci = cis.iter().find(|c| c.metric == "macro_auc").unwrap();
        eprintln!(
            "n = {n}: macro AUC {:.3} [{:.3}, {:.3}]",
            ci.estimate, ci.lower, ci.upper
        );
        cis.iter()
            .find(|c| c.metric == "accuracy")
            .map(|c| c.upper - c.lower)
            .unwrap()
    };
    let (small, large) = (width(90), width(1440));
    // The width scales like 1 / sqrt(n): 16x the examples, about a quarter of the width.
    let ratio = large / small;
    assert!(
        ratio > 0.15 && ratio < 0.4,
        "{small} -> {large} (ratio {ratio})"
    );
}

#[test]
fn bootstrap_is_reproducible_and_independent_of_the_thread_count() {
    let p = synthetic(120, 3);
    let settings = BootstrapSettings {
        resamples: 300,
        confidence: 0.9,
    };
    let run = |threads: usize, seed: u64| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let cis = p.bootstrap(&NAMES, &settings, &mut rng).unwrap();
            // The caller's generator advanced by exactly one word per resample.
            let mut expected = ChaCha8Rng::seed_from_u64(seed);
            for _ in 0..settings.resamples {
                rand::Rng::next_u64(&mut expected);
            }
            assert_eq!(
                rand::Rng::next_u64(&mut rng),
                rand::Rng::next_u64(&mut expected)
            );
            format!("{cis:?}")
        })
    };
    let one = run(1, 11);
    assert_eq!(one, run(4, 11));
    assert_eq!(one, run(1, 11));
    assert_ne!(one, run(1, 12));
}

#[test]
fn bootstrap_skips_resamples_where_a_metric_is_undefined() {
    // Class 2 has a single example among 30: about (29/30)^30 = 36% of the resamples miss
    // it, and its recall is undefined there. Class 1 is absent: never defined.
    let mut truth = vec![0usize; 15];
    truth.extend(vec![2; 1]);
    truth.extend(vec![0; 14]);
    let probs: Vec<f64> = (0..30)
        .flat_map(|i| {
            if i % 4 == 0 {
                [0.3, 0.1, 0.6]
            } else {
                [0.7, 0.1, 0.2]
            }
        })
        .collect();
    let p = Predictions::new(&truth, &probs, 3).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let cis = p
        .bootstrap(&NAMES, &BootstrapSettings::default(), &mut rng)
        .unwrap();
    let get = |name: &str| cis.iter().find(|c| c.metric == name).unwrap();
    let recall = get("recall_pneumonia");
    assert!(
        (560..720).contains(&recall.resamples_used),
        "{recall:?} (expected about 638 of 1000)"
    );
    let absent = get("recall_covid");
    assert_eq!(absent.resamples_used, 0);
    assert!(absent.estimate.is_nan() && absent.lower.is_nan() && absent.upper.is_nan());
    assert_eq!(get("accuracy").resamples_used, 1000);
    // Bad settings and names are errors.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let zero = BootstrapSettings {
        resamples: 0,
        ..Default::default()
    };
    assert!(p.bootstrap(&NAMES, &zero, &mut rng).is_err());
    let wide = BootstrapSettings {
        confidence: 1.0,
        ..Default::default()
    };
    assert!(p.bootstrap(&NAMES, &wide, &mut rng).is_err());
    assert!(
        p.bootstrap(&NAMES[..2], &BootstrapSettings::default(), &mut rng)
            .is_err()
    );
}
