//! The statistics for cross-validated comparisons (corrected resampled t-test, Holm
//! adjustment, cluster bootstrap, fold-averaged AUC, power of the corrected test) against numpy / scipy / statsmodels /
//! scikit-learn numbers stored in `fixtures/cv_stats_reference.json` (regenerate with
//! `fixtures/make_cv_stats_reference.py`), plus edge cases and properties.

use lus_metrics::stats::{
    ALL_CELL_DIFFERENCES_ZERO, CvCell, compare_cv_cells, corrected_resampled_t_test,
    corrected_resampled_t_test_paired, corrected_t_test_detectable_difference,
    corrected_t_test_power, holm_adjust, noncentral_t_cdf, paired_t_test, sample_std,
    student_t_quantile,
};
use lus_metrics::{
    BootstrapSettings, ConfidenceInterval, Predictions, cluster_bootstrap_draws, cluster_indices,
    fold_averaged_auc,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cv_stats_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A reference float: `null` is NaN.
fn float(v: &Value) -> f64 {
    match v {
        Value::Null => f64::NAN,
        _ => v.as_f64().unwrap(),
    }
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(float).collect()
}

fn ints(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Equal, both NaN, or within `rel` relative (and 1e-300 absolute) of each other.
fn close(a: f64, b: f64, rel: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= rel * b.abs().max(1e-300)
}

fn assert_close(what: &str, ours: f64, reference: f64, rel: f64) {
    assert!(
        close(ours, reference, rel),
        "{what}: ours {ours}, reference {reference}"
    );
}

fn predictions(truth: &Value, probabilities: &Value) -> Predictions {
    let rows: Vec<Vec<f64>> = probabilities
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    Predictions::from_rows(&ints(truth), &rows).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------- corrected resampled t-test

#[test]
fn corrected_t_test_matches_the_numpy_formula() {
    let data = fixture();
    let cases = data["corrected_ttest"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (x, y) = (floats(&case["x"]), floats(&case["y"]));
        let ratio = float(&case["ratio"]);
        let e = &case["expected"];
        let r = corrected_resampled_t_test_paired(&x, &y, ratio).unwrap();
        let cells = case["repetitions"].as_u64().unwrap() * case["folds"].as_u64().unwrap();
        assert_eq!(r.cells as u64, cells, "{name}: cells");
        assert_eq!(r.undefined, None, "{name}");
        assert_eq!(r.test_train_ratio, ratio);
        assert_close(
            &format!("{name}: mean"),
            r.mean_difference,
            float(&e["mean"]),
            1e-12,
        );
        assert_close(
            &format!("{name}: std"),
            r.std_difference,
            float(&e["std"]),
            1e-12,
        );
        assert_close(
            &format!("{name}: correction"),
            r.correction,
            float(&e["correction"]),
            1e-15,
        );
        assert_close(
            &format!("{name}: t"),
            r.statistic,
            float(&e["statistic"]),
            1e-12,
        );
        assert_eq!(r.df, float(&e["df"]), "{name}: df");
        assert_close(&format!("{name}: p"), r.p_value, float(&e["p"]), 1e-10);
        // The same test from the differences.
        let d: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
        assert_eq!(corrected_resampled_t_test(&d, ratio).unwrap(), r);
        // Undoing the correction gives scipy's ttest_rel statistic, and our plain t-test.
        let uncorrected = r.statistic * (r.correction * r.cells as f64).sqrt();
        assert_close(
            &format!("{name}: uncorrected t"),
            uncorrected,
            float(&case["ttest_rel_statistic"]),
            1e-12,
        );
        let plain = paired_t_test(&x, &y).unwrap();
        assert_close(
            &format!("{name}: plain p"),
            plain.p_value,
            float(&case["ttest_rel_p"]),
            1e-10,
        );
        // The correction only ever makes the test more conservative.
        assert!(r.p_value >= plain.p_value, "{name}");
        assert!(r.statistic.abs() <= plain.statistic.abs(), "{name}");
    }
}

#[test]
fn cv_cells_drop_missing_cells_pairwise() {
    let data = fixture();
    for case in data["cv_cells"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let cells: Vec<CvCell> = case["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let opt = |v: &Value| v.as_f64();
                CvCell {
                    repetition: c[0].as_u64().unwrap(),
                    fold: c[1].as_u64().unwrap() as usize,
                    x: opt(&c[2]),
                    y: opt(&c[3]),
                }
            })
            .collect();
        let pairs = |v: &Value| -> Vec<(u64, usize)> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap(), p[1].as_u64().unwrap() as usize))
                .collect()
        };
        let cmp = compare_cv_cells(&cells, float(&case["ratio"])).unwrap();
        assert_eq!(cmp.used, pairs(&case["used"]), "{name}: used cells");
        assert_eq!(cmp.dropped, pairs(&case["dropped"]), "{name}: dropped");
        let e = &case["expected"];
        assert_eq!(cmp.test.cells, cmp.used.len());
        assert_close(name, cmp.test.mean_difference, float(&e["mean"]), 1e-12);
        assert_close(name, cmp.test.correction, float(&e["correction"]), 1e-15);
        assert_close(name, cmp.test.statistic, float(&e["statistic"]), 1e-12);
        assert_close(name, cmp.test.p_value, float(&e["p"]), 1e-10);
        // The order of the records does not matter, bit for bit.
        let mut reversed = cells.clone();
        reversed.reverse();
        assert_eq!(
            compare_cv_cells(&reversed, float(&case["ratio"])).unwrap(),
            cmp
        );
    }
}

#[test]
fn corrected_t_test_two_cells_by_hand() {
    // d = (0.3, 0.1): mean 0.2, var 0.02; ratio 1 (2-fold): correction 1/2 + 1 = 3/2,
    // t = 0.2 / sqrt(0.03), df 1: p = 1 - 2 atan(|t|) / pi (Cauchy).
    let r = corrected_resampled_t_test(&[0.3, 0.1], 1.0).unwrap();
    assert_eq!((r.cells, r.df, r.correction), (2, 1.0, 1.5));
    let t = 0.2 / 0.03f64.sqrt();
    assert!((r.statistic - t).abs() < 1e-12, "{}", r.statistic);
    let p = 1.0 - 2.0 * t.atan() / std::f64::consts::PI;
    assert!((r.p_value - p).abs() < 1e-12, "{} vs {p}", r.p_value);
}

#[test]
fn corrected_t_test_zero_variance_follows_scipy() {
    // All differences zero: 0 / 0, NaN with a reason.
    let r = corrected_resampled_t_test(&[0.0; 6], 0.5).unwrap();
    assert!(r.statistic.is_nan() && r.p_value.is_nan());
    assert_eq!(r.undefined, Some(ALL_CELL_DIFFERENCES_ZERO));
    assert_eq!((r.mean_difference, r.std_difference), (0.0, 0.0));
    // Constant non-zero differences: t = ±inf, p = 0 (as ttest_rel / paired_t_test).
    let r = corrected_resampled_t_test(&[0.25; 4], 0.5).unwrap();
    assert_eq!(
        (r.statistic, r.p_value, r.undefined),
        (f64::INFINITY, 0.0, None)
    );
    let r = corrected_resampled_t_test(&[-0.5; 3], 0.5).unwrap();
    assert_eq!((r.statistic, r.p_value), (f64::NEG_INFINITY, 0.0));
}

#[test]
fn corrected_t_test_errors_name_the_problem() {
    let err = |r: lus_metrics::Result<_>| -> String {
        let r: lus_metrics::Result<lus_metrics::CorrectedTTestResult> = r;
        r.unwrap_err().to_string()
    };
    let e = err(corrected_resampled_t_test(&[0.1], 0.5));
    assert!(e.contains("at least 2 cells") && e.contains("got 1"), "{e}");
    assert!(err(corrected_resampled_t_test(&[], 0.5)).contains("got 0"));
    let e = err(corrected_resampled_t_test(&[0.1, f64::NAN, 0.2], 0.5));
    assert!(e.contains("cell 1") && e.contains("NaN"), "{e}");
    let e = err(corrected_resampled_t_test(&[0.1, f64::INFINITY], 0.5));
    assert!(e.contains("inf"), "{e}");
    for bad in [0.0, -0.5, f64::NAN, f64::INFINITY] {
        let e = err(corrected_resampled_t_test(&[0.1, 0.2], bad));
        assert!(e.contains("ratio") && e.contains("1 / (k - 1)"), "{e}");
    }
    let e = err(corrected_resampled_t_test_paired(
        &[0.1, 0.2],
        &[0.1, 0.2, 0.3],
        0.5,
    ));
    assert!(e.contains("length mismatch"), "{e}");
    let e = err(corrected_resampled_t_test_paired(
        &[0.1, f64::NAN],
        &[0.1, 0.2],
        0.5,
    ));
    assert!(e.contains("pair 1"), "{e}");

    let cell = |repetition, fold, x, y| CvCell {
        repetition,
        fold,
        x,
        y,
    };
    let e = compare_cv_cells(
        &[
            cell(1, 0, Some(0.5), Some(0.4)),
            cell(1, 0, Some(0.6), None),
        ],
        0.5,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("repetition 1, fold 0") && e.contains("twice"),
        "{e}"
    );
    let e = compare_cv_cells(
        &[
            cell(1, 0, Some(0.5), Some(0.4)),
            cell(1, 1, Some(0.6), Some(f64::NAN)),
        ],
        0.5,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("fold 1") && e.contains("score y = NaN"), "{e}");
    // Only one cell left after dropping: the count of dropped cells is in the message.
    let e = compare_cv_cells(
        &[
            cell(1, 0, Some(0.5), Some(0.4)),
            cell(1, 1, None, Some(0.4)),
            cell(2, 0, Some(0.5), None),
        ],
        0.5,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("got 1") && e.contains("2 of 3 cells dropped"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------- Holm

#[test]
fn holm_matches_statsmodels() {
    let data = fixture();
    let cases = data["holm"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let p = floats(&case["p"]);
        let expected = floats(&case["adjusted"]);
        let ours = holm_adjust(&p).unwrap();
        assert_eq!(ours.len(), expected.len(), "{name}");
        for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
            // The same products and maxima as statsmodels: exact without NaN.
            if case["has_nan"].as_bool().unwrap() {
                assert!(
                    close(*a, *b, 1e-15),
                    "{name}[{i}]: ours {a}, statsmodels {b}"
                );
            } else {
                assert_eq!(a.to_bits(), b.to_bits(), "{name}[{i}]: ours {a}, ref {b}");
            }
        }
    }
}

#[test]
fn holm_leaves_nan_out_of_the_family() {
    // Family of 3 (the NaN is not counted): 0.01 * 3, 0.03 * 2, max(0.04, 0.06).
    let adjusted = holm_adjust(&[0.01, f64::NAN, 0.04, 0.03]).unwrap();
    assert_eq!(adjusted[0], 0.03);
    assert!(adjusted[1].is_nan());
    assert_eq!(adjusted[3], 0.06);
    assert_eq!(adjusted[2], 0.06);
    assert!(holm_adjust(&[f64::NAN]).unwrap()[0].is_nan());
    assert!(holm_adjust(&[]).unwrap().is_empty());
    for bad in [-0.01, 1.5, f64::INFINITY] {
        let e = holm_adjust(&[0.2, bad]).unwrap_err().to_string();
        assert!(e.contains("index 1") && e.contains("[0, 1]"), "{e}");
    }
}

proptest! {
    /// Adjusted values are monotone in the raw ones, never below them, at most 1, at most
    /// Bonferroni's `m p`; NaN stays NaN in place.
    #[test]
    fn holm_is_monotone_and_bounded(
        p in prop::collection::vec(
            prop_oneof![8 => 0.0f64..=1.0, 1 => Just(f64::NAN), 1 => Just(0.01)],
            0..25,
        )
    ) {
        let adjusted = holm_adjust(&p).unwrap();
        let m = p.iter().filter(|v| !v.is_nan()).count() as f64;
        for (i, (&raw, &adj)) in p.iter().zip(&adjusted).enumerate() {
            prop_assert_eq!(raw.is_nan(), adj.is_nan(), "index {}", i);
            if raw.is_nan() {
                continue;
            }
            prop_assert!(adj >= raw && adj <= 1.0 && adj <= (m * raw).min(1.0));
            for (&raw2, &adj2) in p.iter().zip(&adjusted) {
                if raw <= raw2 {
                    prop_assert!(adj <= adj2, "p {} -> {}, p {} -> {}", raw, adj, raw2, adj2);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------ cluster bootstrap

#[test]
fn cluster_resamples_match_scikit_learn_on_the_same_draws() {
    let data = fixture();
    let case = &data["cluster_bootstrap_draws"];
    let p = predictions(&case["truth"], &case["probabilities"]);
    let ids = strings(&case["cluster_ids"]);
    assert_eq!(cluster_indices(&ids), ints(&case["cluster_index"]));
    let names = strings(&case["class_names"]);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let metric_names = strings(&case["metric_names"]);
    let draws: Vec<Vec<usize>> = case["draws"].as_array().unwrap().iter().map(ints).collect();
    let values = case["resample_metrics"].as_array().unwrap();
    let mut nan_seen = 0;
    for (b, (draw, expected)) in draws.iter().zip(values).enumerate() {
        let m = p.cluster_resample_metrics(&ids, draw).unwrap();
        let ours: Vec<(String, f64)> = m
            .named(&names)
            .unwrap()
            .into_iter()
            .filter(|(n, _)| !n.starts_with("support_"))
            .collect();
        let expected = floats(expected);
        assert_eq!(ours.len(), expected.len());
        for ((name, a), (reference_name, e)) in ours.iter().zip(metric_names.iter().zip(&expected))
        {
            assert_eq!(name, reference_name);
            nan_seen += usize::from(e.is_nan());
            assert!(
                close(*a, *e, 1e-12),
                "resample {b}: {name}: ours {a}, reference {e}"
            );
        }
    }
    // Some resamples lack class c (the NaN rule is exercised).
    assert!(nan_seen > 0);
    // Percentile intervals over the same draws (undefined resamples skipped per metric).
    let confidence = float(&case["confidence"]);
    let intervals = p
        .cluster_bootstrap_from_draws(&ids, &names, confidence, &draws)
        .unwrap();
    let expected = case["intervals"].as_array().unwrap();
    assert_eq!(intervals.len(), expected.len());
    let mut partial = 0;
    for (ci, e) in intervals.iter().zip(expected) {
        assert_eq!(ci.metric, e["metric"].as_str().unwrap());
        let used = e["resamples_used"].as_u64().unwrap() as usize;
        assert_eq!(ci.resamples_used, used, "{}", ci.metric);
        partial += usize::from(used < draws.len());
        assert_close(&ci.metric, ci.estimate, float(&e["estimate"]), 1e-12);
        assert_close(&ci.metric, ci.lower, float(&e["lower"]), 1e-12);
        assert_close(&ci.metric, ci.upper, float(&e["upper"]), 1e-12);
    }
    assert!(partial > 0);
}

#[test]
fn cluster_bootstrap_is_its_documented_draws() {
    let data = fixture();
    let case = &data["cluster_bootstrap_draws"];
    let p = predictions(&case["truth"], &case["probabilities"]);
    let ids = strings(&case["cluster_ids"]);
    let names = ["a", "b", "c"];
    let settings = BootstrapSettings {
        resamples: 300,
        confidence: 0.9,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let ours = p
        .cluster_bootstrap(&ids, &names, &settings, &mut rng)
        .unwrap();
    let after = rand::Rng::next_u64(&mut rng);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let num_clusters = cluster_indices(&ids).into_iter().max().unwrap() + 1;
    let draws = cluster_bootstrap_draws(num_clusters, settings.resamples, &mut rng);
    // The same number of words consumed.
    assert_eq!(rand::Rng::next_u64(&mut rng), after);
    assert!(draws.iter().all(|d| d.len() == num_clusters));
    let explicit = p
        .cluster_bootstrap_from_draws(&ids, &names, settings.confidence, &draws)
        .unwrap();
    assert_eq!(ours, explicit);
    // Deterministic given the seed; another seed gives other resamples.
    let again = p
        .cluster_bootstrap(&ids, &names, &settings, &mut ChaCha8Rng::seed_from_u64(11))
        .unwrap();
    assert_eq!(ours, again);
    let other = p
        .cluster_bootstrap(&ids, &names, &settings, &mut ChaCha8Rng::seed_from_u64(12))
        .unwrap();
    assert_ne!(ours, other);
    // Any id type: the clusters as numbers give the same intervals.
    let numeric: Vec<usize> = cluster_indices(&ids).iter().map(|g| 1000 - g).collect();
    let by_number = p
        .cluster_bootstrap(
            &numeric,
            &names,
            &settings,
            &mut ChaCha8Rng::seed_from_u64(11),
        )
        .unwrap();
    assert_eq!(ours, by_number);
}

fn interval<'a>(intervals: &'a [ConfidenceInterval], metric: &str) -> &'a ConfidenceInterval {
    intervals.iter().find(|c| c.metric == metric).unwrap()
}

#[test]
fn cluster_bootstrap_of_clustered_data_is_wide_like_the_analytic_one() {
    let data = fixture();
    let case = &data["cluster_distribution"];
    let p = predictions(&case["truth"], &case["probabilities"]);
    let ids = ints(&case["cluster_ids"]);
    let names = ["neg", "pos"];
    let confidence = float(&case["confidence"]);
    let settings = BootstrapSettings {
        resamples: 4000,
        confidence,
    };
    let cluster = p
        .cluster_bootstrap(&ids, &names, &settings, &mut ChaCha8Rng::seed_from_u64(1))
        .unwrap();
    let example = p
        .bootstrap(&names, &settings, &mut ChaCha8Rng::seed_from_u64(1))
        .unwrap();
    let (c, e) = (
        interval(&cluster, "accuracy"),
        interval(&example, "accuracy"),
    );
    assert_eq!(c.estimate, float(&case["accuracy"]));
    let sim_c = floats(&case["cluster_interval_simulated"]);
    let sim_e = floats(&case["example_interval_simulated"]);
    let analytic = floats(&case["cluster_quantiles_analytic"]);
    // Accuracy of a cluster resample is Binomial(40, 0.7) / 40 (atoms 1/40 apart): the
    // percentile bounds land within one atom of the analytic and the simulated quantiles.
    let atom = 1.0 / case["num_clusters"].as_u64().unwrap() as f64;
    for (ours, (sim, exact)) in [c.lower, c.upper].iter().zip(sim_c.iter().zip(&analytic)) {
        assert!(
            (ours - sim).abs() <= atom + 1e-12,
            "{ours} vs simulated {sim}"
        );
        assert!(
            (ours - exact).abs() <= atom + 1e-12,
            "{ours} vs analytic {exact}"
        );
    }
    let n = p.num_examples() as f64;
    for (ours, sim) in [e.lower, e.upper].iter().zip(&sim_e) {
        assert!(
            (ours - sim).abs() <= 2.0 / n + 1e-12,
            "{ours} vs simulated {sim}"
        );
    }
    // Clusters of 8 perfectly correlated examples: the width grows by about sqrt(8) = 2.8.
    let ratio = (c.upper - c.lower) / (e.upper - e.lower);
    assert!((2.2..3.6).contains(&ratio), "width ratio {ratio}");
    // The spread of the resampled accuracies is the analytic one.
    let draws = cluster_bootstrap_draws(40, 4000, &mut ChaCha8Rng::seed_from_u64(1));
    let accuracies: Vec<f64> = draws
        .iter()
        .map(|d| p.cluster_resample_metrics(&ids, d).unwrap().accuracy)
        .collect();
    let sd = sample_std(&accuracies);
    let analytic_sd = float(&case["cluster_std_analytic"]);
    // The sd of a sample sd of 4000 normal-ish values is about 1.1 %; allow 5 %.
    assert!(
        (sd / analytic_sd - 1.0).abs() < 0.05,
        "sd {sd} vs {analytic_sd}"
    );
    assert!((float(&case["cluster_std_simulated"]) / analytic_sd - 1.0).abs() < 0.01);
}

#[test]
fn singleton_clusters_are_the_example_bootstrap() {
    let data = fixture();
    let case = &data["cluster_bootstrap_draws"];
    let p = predictions(&case["truth"], &case["probabilities"]);
    let names = ["a", "b", "c"];
    let settings = BootstrapSettings {
        resamples: 200,
        confidence: 0.95,
    };
    // One example per cluster, numbered in example order: the very same resamples.
    let ids: Vec<usize> = (0..p.num_examples()).collect();
    let example = p
        .bootstrap(&names, &settings, &mut ChaCha8Rng::seed_from_u64(5))
        .unwrap();
    let cluster = p
        .cluster_bootstrap(&ids, &names, &settings, &mut ChaCha8Rng::seed_from_u64(5))
        .unwrap();
    assert_eq!(example, cluster);
    // Distribution-wise with other random streams: ids in another order (so the cluster
    // numbering differs from the example order) and another seed give intervals close to the
    // example bootstrap's.
    let settings = BootstrapSettings {
        resamples: 3000,
        confidence: 0.9,
    };
    let ids: Vec<String> = (0..p.num_examples())
        .map(|i| format!("frame-{}", (i * 7919) % 1009))
        .collect();
    let example = p
        .bootstrap(&names, &settings, &mut ChaCha8Rng::seed_from_u64(21))
        .unwrap();
    let cluster = p
        .cluster_bootstrap(&ids, &names, &settings, &mut ChaCha8Rng::seed_from_u64(22))
        .unwrap();
    for metric in ["accuracy", "macro_f1", "macro_auc", "recall_a"] {
        let (e, c) = (interval(&example, metric), interval(&cluster, metric));
        let width = e.upper - e.lower;
        assert!(
            (c.lower - e.lower).abs() < 0.15 * width && (c.upper - e.upper).abs() < 0.15 * width,
            "{metric}: cluster [{}, {}] vs example [{}, {}]",
            c.lower,
            c.upper,
            e.lower,
            e.upper
        );
    }
}

#[test]
fn cluster_bootstrap_errors_name_the_problem() {
    let p = Predictions::new(&[0, 1, 1], &[0.9, 0.1, 0.4, 0.6, 0.2, 0.8], 2).unwrap();
    let names = ["n", "p"];
    let settings = BootstrapSettings::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let e = p
        .cluster_bootstrap(&["a", "b"], &names, &settings, &mut rng)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("length mismatch") && e.contains("cluster ids"),
        "{e}"
    );
    let bad = BootstrapSettings {
        resamples: 0,
        ..settings
    };
    let e = p
        .cluster_bootstrap(&["a", "b", "a"], &names, &bad, &mut rng)
        .unwrap_err()
        .to_string();
    assert!(e.contains("zero resamples"), "{e}");
    let ids = ["a", "b", "a"];
    let e = p
        .cluster_bootstrap_from_draws(&ids, &names, 0.95, &[vec![0, 1], vec![0, 2]])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("resample 1") && e.contains("cluster 2") && e.contains("only 2 clusters"),
        "{e}"
    );
    let e = p
        .cluster_bootstrap_from_draws(&ids, &names, 0.95, &[vec![]])
        .unwrap_err()
        .to_string();
    assert!(e.contains("resample 0") && e.contains("no cluster"), "{e}");
    let e = p
        .cluster_bootstrap_from_draws(&ids, &names, 1.0, &[vec![0]])
        .unwrap_err()
        .to_string();
    assert!(e.contains("confidence"), "{e}");
    assert!(p.cluster_resample_metrics(&ids, &[5]).is_err());
    // Cluster 0 drawn twice: examples 0 and 2 twice each.
    let m = p.cluster_resample_metrics(&ids, &[0, 0]).unwrap();
    assert_eq!(m.num_examples, 4);
    assert_eq!(cluster_indices(&["p7", "p2", "p7", "p9"]), vec![0, 1, 0, 2]);
}

// ----------------------------------------------------------------------- fold-averaged AUC

#[test]
fn fold_averaged_auc_matches_scikit_learn() {
    let data = fixture();
    let case = &data["fold_auc"];
    let folds: Vec<Predictions> = case["folds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| predictions(&f["truth"], &f["probabilities"]))
        .collect();
    let r = fold_averaged_auc(&folds).unwrap();
    let per_fold = floats(&case["per_fold"]);
    assert_eq!(r.per_fold.len(), per_fold.len());
    for (i, (a, b)) in r.per_fold.iter().zip(&per_fold).enumerate() {
        assert_close(&format!("fold {i}"), *a, *b, 1e-12);
    }
    assert_close("mean", r.mean, float(&case["mean"]), 1e-12);
    assert_close("std", r.std, float(&case["std"]), 1e-12);
    assert_eq!(r.folds_used as u64, case["folds_used"].as_u64().unwrap());
    assert_eq!(
        r.folds_skipped as u64,
        case["folds_skipped"].as_u64().unwrap()
    );
    assert_eq!(r.folds_skipped, 1);
    // The pooled AUC of the concatenated folds (what Predictions::metrics gives) differs.
    let mut truth = Vec::new();
    let mut probs = Vec::new();
    for f in &folds {
        truth.extend_from_slice(f.truth());
        probs.extend_from_slice(f.probabilities());
    }
    let pooled = Predictions::new(&truth, &probs, 3)
        .unwrap()
        .metrics()
        .macro_auc;
    assert_close("pooled", pooled, float(&case["pooled"]), 1e-12);
    assert!(pooled < r.mean - 0.02, "pooled {pooled}, mean {}", r.mean);
}

#[test]
fn fold_averaged_auc_edge_cases() {
    let one_class = Predictions::new(&[1, 1], &[0.3, 0.7, 0.6, 0.4], 2).unwrap();
    let perfect = Predictions::new(&[0, 1], &[0.7, 0.3, 0.2, 0.8], 2).unwrap();
    let r = fold_averaged_auc(std::slice::from_ref(&one_class)).unwrap();
    assert!(r.mean.is_nan() && r.std.is_nan());
    assert_eq!((r.folds_used, r.folds_skipped), (0, 1));
    let r = fold_averaged_auc(&[perfect.clone(), one_class]).unwrap();
    assert_eq!((r.mean, r.folds_used, r.folds_skipped), (1.0, 1, 1));
    assert!(r.std.is_nan());
    let e = fold_averaged_auc(&[]).unwrap_err().to_string();
    assert!(e.contains("zero folds"), "{e}");
    let three = Predictions::new(&[0], &[0.5, 0.3, 0.2], 3).unwrap();
    let e = fold_averaged_auc(&[perfect, three])
        .unwrap_err()
        .to_string();
    assert!(e.contains("fold 1 has 3 classes, fold 0 has 2"), "{e}");
}

#[test]
fn noncentral_t_and_quantiles_match_scipy() {
    let f = fixture();
    for c in f["power"]["nct_cdf"].as_array().unwrap() {
        let (t, df, nc) = (float(&c["t"]), float(&c["df"]), float(&c["nc"]));
        let ours = noncentral_t_cdf(t, df, nc);
        let reference = float(&c["cdf"]);
        assert!(
            (ours - reference).abs() <= 1e-12 + 1e-8 * reference.abs(),
            "nct.cdf({t}, {df}, {nc}): ours {ours}, scipy {reference}"
        );
    }
    for c in f["power"]["t_quantile"].as_array().unwrap() {
        let (q, df) = (float(&c["q"]), float(&c["df"]));
        assert_close(
            &format!("t.ppf({q}, {df})"),
            student_t_quantile(q, df),
            float(&c["t"]),
            1e-12,
        );
    }
    assert_eq!(student_t_quantile(0.5, 3.0), 0.0);
    assert!(student_t_quantile(1.0, 3.0).is_nan() && student_t_quantile(0.9, 0.0).is_nan());
    assert!(noncentral_t_cdf(f64::NAN, 3.0, 1.0).is_nan());
    assert!(noncentral_t_cdf(1.0, 0.0, 1.0).is_nan());
    assert_eq!(noncentral_t_cdf(f64::INFINITY, 3.0, 2.0), 1.0);
    assert_eq!(noncentral_t_cdf(f64::NEG_INFINITY, 3.0, 2.0), 0.0);
}

#[test]
fn corrected_t_test_power_matches_scipy() {
    let f = fixture();
    for c in f["power"]["power"].as_array().unwrap() {
        let ours = corrected_t_test_power(
            float(&c["effect"]),
            float(&c["std"]),
            c["cells"].as_u64().unwrap() as usize,
            float(&c["ratio"]),
            float(&c["alpha"]),
        )
        .unwrap();
        assert!(
            (ours - float(&c["power"])).abs() < 1e-10,
            "power of {c}: ours {ours}"
        );
    }
    for c in f["power"]["detectable"].as_array().unwrap() {
        let ours = corrected_t_test_detectable_difference(
            float(&c["std"]),
            c["cells"].as_u64().unwrap() as usize,
            float(&c["ratio"]),
            float(&c["alpha"]),
            float(&c["power"]),
        )
        .unwrap();
        assert_close(
            &format!("detectable difference of {c}"),
            ours,
            float(&c["difference"]),
            1e-8,
        );
    }
}

#[test]
fn corrected_t_test_power_edges_and_errors() {
    // No effect: the power is the level; the sign of the effect does not matter.
    let at_zero = corrected_t_test_power(0.0, 0.05, 10, 0.25, 0.05).unwrap();
    assert!((at_zero - 0.05).abs() < 1e-12, "{at_zero}");
    let up = corrected_t_test_power(0.07, 0.05, 10, 0.25, 0.05).unwrap();
    let down = corrected_t_test_power(-0.07, 0.05, 10, 0.25, 0.05).unwrap();
    assert!((up - down).abs() < 1e-12);
    // More cells, or a smaller test/train ratio, never lose power; a bigger effect gains.
    let more_cells = corrected_t_test_power(0.07, 0.05, 20, 0.25, 0.05).unwrap();
    let more_folds = corrected_t_test_power(0.07, 0.05, 10, 1.0 / 9.0, 0.05).unwrap();
    let bigger = corrected_t_test_power(0.09, 0.05, 10, 0.25, 0.05).unwrap();
    assert!(more_cells > up && more_folds > up && bigger > up);
    // The correction's floor: with k = 3 folds no number of repetitions beats
    // sqrt(1/2) x the std, so a difference of one std stays hard to detect.
    let floor = corrected_t_test_power(0.05, 0.05, 3000, 0.5, 0.05).unwrap();
    assert!(floor < 0.55, "{floor}");
    // The detectable difference has the asked power.
    let d = corrected_t_test_detectable_difference(0.05, 10, 0.25, 0.05, 0.8).unwrap();
    let p = corrected_t_test_power(d, 0.05, 10, 0.25, 0.05).unwrap();
    assert!((p - 0.8).abs() < 1e-8, "{d} {p}");
    for (what, result) in [
        (
            "at least 2 cells",
            corrected_t_test_power(0.1, 0.05, 1, 0.25, 0.05),
        ),
        (
            "std of the differences",
            corrected_t_test_power(0.1, 0.0, 10, 0.25, 0.05),
        ),
        ("ratio", corrected_t_test_power(0.1, 0.05, 10, 0.0, 0.05)),
        ("level", corrected_t_test_power(0.1, 0.05, 10, 0.25, 1.0)),
        (
            "effect",
            corrected_t_test_power(f64::NAN, 0.05, 10, 0.25, 0.05),
        ),
        (
            "target power",
            corrected_t_test_detectable_difference(0.05, 10, 0.25, 0.05, 0.01),
        ),
    ] {
        let err = result.unwrap_err().to_string();
        assert!(err.contains(what), "{what}: {err}");
    }
}
