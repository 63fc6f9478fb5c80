//! Compares the classification metrics and the paired statistics with scikit-learn and scipy
//! numbers stored in `fixtures/cls_reference.json` (regenerate with
//! `fixtures/make_cls_reference.py`).

use lus_metrics::stats::{
    WilcoxonMethod, mean, paired_t_test, regularized_incomplete_beta, sample_std, student_t_cdf,
    wilcoxon_signed_rank,
};
use lus_metrics::{Predictions, RocCurve};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cls_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A reference float: `null` is NaN, `"inf"` / `"-inf"` are infinities.
fn float(v: &Value) -> f64 {
    match v {
        Value::Null => f64::NAN,
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
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

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= tol
}

fn assert_all_close(case: &str, what: &str, ours: &[f64], theirs: &[f64], tol: f64) {
    assert_eq!(ours.len(), theirs.len(), "{case}: {what} length");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            close(*a, *b, tol),
            "{case}: {what}[{i}]: ours {a}, reference {b}"
        );
    }
}

fn predictions(case: &Value) -> Predictions {
    let rows: Vec<Vec<f64>> = case["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    Predictions::from_rows(&ints(&case["truth"]), &rows).unwrap()
}

#[test]
fn classification_metrics_match_scikit_learn() {
    let data = fixture();
    let cases = data["classification_cases"].as_array().unwrap();
    assert!(cases.len() >= 7);
    let (mut undefined_seen, mut sklearn_macro_seen) = (0, 0);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let p = predictions(case);
        let k = p.num_classes();
        assert_eq!(k, case["num_classes"].as_u64().unwrap() as usize);
        assert_eq!(p.predicted(), ints(&case["predicted"]), "{name}: argmax");
        let m = p.metrics();
        let expected: Vec<u64> = case["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
            .collect();
        assert_eq!(
            m.confusion.counts(),
            expected.as_slice(),
            "{name}: confusion"
        );
        assert_eq!(m.num_examples, p.num_examples());
        let scalar = |what: &str, ours: f64| {
            let reference = float(&case[what]);
            assert!(
                close(ours, reference, 1e-12),
                "{name}: {what}: ours {ours}, reference {reference}"
            );
        };
        scalar("accuracy", m.accuracy);
        scalar("balanced_accuracy", m.balanced_accuracy);
        scalar("weighted_f1", m.weighted_f1);
        scalar("macro_precision", m.macro_precision);
        scalar("macro_recall", m.macro_recall);
        scalar("macro_f1", m.macro_f1);
        scalar("macro_auc", m.macro_auc);
        let col = |f: fn(&lus_metrics::ClassMetrics) -> f64| {
            m.per_class.iter().map(f).collect::<Vec<_>>()
        };
        for (what, ours) in [
            ("precision", col(|s| s.precision)),
            ("recall", col(|s| s.recall)),
            ("f1", col(|s| s.f1)),
            ("specificity", col(|s| s.specificity)),
            ("auc", col(|s| s.auc)),
        ] {
            let reference = floats(&case[what]);
            undefined_seen += reference.iter().filter(|v| v.is_nan()).count();
            assert_all_close(name, what, &ours, &reference, 1e-12);
        }
        let support: Vec<usize> = m.per_class.iter().map(|s| s.support as usize).collect();
        assert_eq!(support, ints(&case["support"]), "{name}: support");
        if let Some(sk) = case.get("sklearn_macro") {
            // Every class present and predicted: scikit-learn's own macro averages agree.
            sklearn_macro_seen += 1;
            for (what, ours) in [
                ("precision", m.macro_precision),
                ("recall", m.macro_recall),
                ("f1", m.macro_f1),
                ("auc", m.macro_auc),
            ] {
                let reference = float(&sk[what]);
                assert!(
                    close(ours, reference, 1e-12),
                    "{name}: sklearn macro {what}: ours {ours}, reference {reference}"
                );
            }
        }
        for (c, curve) in case["roc"].as_array().unwrap().iter().enumerate() {
            let roc = p.roc_curve(c).unwrap();
            let what = format!("class {c} ROC");
            assert_all_close(
                name,
                &format!("{what} fpr"),
                &roc.fpr,
                &floats(&curve["fpr"]),
                1e-15,
            );
            assert_all_close(
                name,
                &format!("{what} tpr"),
                &roc.tpr,
                &floats(&curve["tpr"]),
                1e-15,
            );
            assert_all_close(
                name,
                &format!("{what} thresholds"),
                &roc.thresholds,
                &floats(&curve["thresholds"]),
                0.0,
            );
            assert!(
                close(roc.auc, m.per_class[c].auc, 0.0),
                "{name}: {what} AUC"
            );
            // The binary entry point gives the same curve.
            let positive: Vec<bool> = p.truth().iter().map(|&t| t == c).collect();
            let scores: Vec<f64> = (0..p.num_examples())
                .map(|i| p.probabilities()[i * k + c])
                .collect();
            let binary = RocCurve::from_scores(&positive, &scores).unwrap();
            assert_eq!(format!("{binary:?}"), format!("{roc:?}"), "{name}: {what}");
        }
    }
    assert!(
        undefined_seen >= 3,
        "the fixture must exercise undefined scores"
    );
    assert!(sklearn_macro_seen >= 4);
}

#[test]
fn paired_tests_match_scipy() {
    let data = fixture();
    let cases = data["paired_cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    let mut methods = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (x, y) = (floats(&case["x"]), floats(&case["y"]));
        let d: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
        assert!(
            close(mean(&x), float(&case["mean_x"]), 1e-13),
            "{name}: mean"
        );
        assert!(
            close(sample_std(&x), float(&case["std_x"]), 1e-13),
            "{name}: std"
        );
        assert!(
            close(mean(&d), float(&case["mean_diff"]), 1e-13),
            "{name}: mean diff"
        );
        assert!(
            close(sample_std(&d), float(&case["std_diff"]), 1e-13),
            "{name}: std diff"
        );

        let w = wilcoxon_signed_rank(&x, &y).unwrap();
        let (stat, p) = (
            float(&case["wilcoxon_statistic"]),
            float(&case["wilcoxon_p"]),
        );
        assert!(
            close(w.statistic, stat, 1e-12),
            "{name}: W ours {} scipy {stat}",
            w.statistic
        );
        assert!(
            close(w.p_value, p, 1e-12 + 1e-9 * p),
            "{name}: Wilcoxon p ours {} scipy {p} ({:?})",
            w.p_value,
            w.method
        );
        assert_eq!(
            w.n_nonzero,
            x.len() - case["n_zero"].as_u64().unwrap() as usize
        );
        methods.push(w.method);

        let t = paired_t_test(&x, &y).unwrap();
        let (stat, p) = (float(&case["ttest_statistic"]), float(&case["ttest_p"]));
        assert!(
            close(t.statistic, stat, 1e-9 * stat.abs().max(1.0)),
            "{name}: t ours {} scipy {stat}",
            t.statistic
        );
        assert!(
            close(t.p_value, p, 1e-10),
            "{name}: t-test p ours {} scipy {p}",
            t.p_value
        );
        assert_eq!(t.df, (x.len() - 1) as f64);
    }
    // Both computations are exercised.
    assert!(methods.contains(&WilcoxonMethod::Exact));
    assert!(methods.contains(&WilcoxonMethod::Normal));
}

#[test]
fn student_t_cdf_matches_scipy_to_1e10() {
    let data = fixture();
    let cases = data["t_cdf"].as_array().unwrap();
    assert!(cases.len() >= 100);
    let mut worst = 0.0f64;
    for case in cases {
        let (t, df, cdf) = (float(&case["t"]), float(&case["df"]), float(&case["cdf"]));
        let ours = student_t_cdf(t, df);
        worst = worst.max((ours - cdf).abs());
        assert!(
            (ours - cdf).abs() <= 1e-10,
            "t = {t}, df = {df}: ours {ours}, scipy {cdf}"
        );
        // Far tails: relative accuracy too, where the value is not rounded away.
        if cdf < 1e-3 && cdf > 1e-300 {
            assert!(
                ((ours - cdf) / cdf).abs() < 1e-9,
                "t = {t}, df = {df}: tail ours {ours}, scipy {cdf}"
            );
        }
    }
    eprintln!("largest |t CDF - scipy| = {worst:e}");
}

#[test]
fn incomplete_beta_matches_scipy_betainc() {
    let data = fixture();
    let cases = data["betainc"].as_array().unwrap();
    assert!(cases.len() >= 200);
    let mut worst = 0.0f64;
    for case in cases {
        let (a, b, x) = (float(&case["a"]), float(&case["b"]), float(&case["x"]));
        let value = float(&case["value"]);
        let ours = regularized_incomplete_beta(a, b, x);
        let tol = 1e-12 + 1e-10 * value.abs();
        if value > 1e-300 {
            worst = worst.max(((ours - value) / value).abs());
        }
        assert!(
            (ours - value).abs() <= tol,
            "I_{x}({a}, {b}): ours {ours}, scipy {value}"
        );
    }
    eprintln!("largest relative |I_x(a, b) - scipy| = {worst:e}");
}

#[test]
fn student_t_cdf_matches_closed_forms_near_zero_and_in_the_tails() {
    // df = 1 (Cauchy): 1/2 + atan(t)/pi. df = 2: 1/2 + t / (2 sqrt(2 + t^2)).
    // df = 4: 1/2 + u (3 - u^2) / 4 with u = t / sqrt(4 + t^2).
    for t in [
        -1e6, -30.0, -2.5, -1e-3, -1e-8, 0.0, 1e-12, 1e-8, 1e-4, 0.3, 1.0, 7.0, 1e6,
    ] {
        let cauchy = 0.5 + f64::atan(t) / std::f64::consts::PI;
        let two = 0.5 + t / (2.0 * (2.0 + t * t).sqrt());
        let u = t / (4.0 + t * t).sqrt();
        let four = 0.5 + u * (3.0 - u * u) / 4.0;
        for (df, exact) in [(1.0, cauchy), (2.0, two), (4.0, four)] {
            let ours = student_t_cdf(t, df);
            assert!(
                (ours - exact).abs() <= 2e-16 + 1e-14 * exact,
                "t = {t}, df = {df}: ours {ours}, closed form {exact}"
            );
        }
    }
    assert_eq!(student_t_cdf(f64::INFINITY, 3.0), 1.0);
    assert_eq!(student_t_cdf(f64::NEG_INFINITY, 3.0), 0.0);
    assert!(student_t_cdf(f64::NAN, 3.0).is_nan());
    assert!(student_t_cdf(1.0, 0.0).is_nan());
}
