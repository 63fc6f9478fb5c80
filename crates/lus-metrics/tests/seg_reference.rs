//! Compares lus-metrics with scikit-learn and scipy numbers stored in
//! `fixtures/seg_reference.json` (regenerate with `fixtures/make_seg_reference.py`).

use lus_metrics::{ConfusionMatrix, Connectivity, label_class};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/seg_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bytes(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u8::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

/// Reference floats, `null` meaning NaN.
fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

fn assert_close(case: &str, what: &str, ours: &[f64], theirs: &[f64]) {
    assert_eq!(ours.len(), theirs.len(), "{case} {what}");
    for (c, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let same = (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-12;
        assert!(same, "{case}: {what} of class {c}: ours {a}, reference {b}");
    }
}

#[test]
fn confusion_scores_match_scikit_learn() {
    let data = fixture();
    let cases = data["confusion_cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    let mut nan_seen = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let n = case["num_classes"].as_u64().unwrap() as usize;
        let ignore = case["ignore_id"].as_u64().map(|v| v as u8);
        let (truth, pred) = (bytes(&case["truth"]), bytes(&case["pred"]));
        let mut m = ConfusionMatrix::new(n);
        m.update(&truth, &pred, ignore).unwrap();
        let expected: Vec<u64> = case["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
            .collect();
        assert_eq!(m.counts(), expected.as_slice(), "{name}: confusion matrix");
        let scores = m.per_class();
        let col =
            |f: fn(&lus_metrics::ClassScores) -> f64| scores.iter().map(f).collect::<Vec<_>>();
        assert_close(name, "IoU", &col(|s| s.iou), &floats(&case["iou"]));
        assert_close(name, "Dice", &col(|s| s.dice), &floats(&case["dice"]));
        assert_close(
            name,
            "precision",
            &col(|s| s.precision),
            &floats(&case["precision"]),
        );
        assert_close(name, "recall", &col(|s| s.recall), &floats(&case["recall"]));
        let support: Vec<u64> = scores.iter().map(|s| s.support).collect();
        let expected_support: Vec<u64> = case["support"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(support, expected_support, "{name}: support");
        // The nan-mean is the mean of the reference's defined values.
        let defined: Vec<f64> = floats(&case["iou"])
            .into_iter()
            .filter(|v| !v.is_nan())
            .collect();
        nan_seen += n - defined.len();
        let expected_miou = defined.iter().sum::<f64>() / defined.len() as f64;
        assert!(
            (m.mean(true).miou - expected_miou).abs() < 1e-12,
            "{name}: mIoU"
        );
    }
    assert!(nan_seen > 0, "the fixture must exercise undefined classes");
}

#[test]
fn component_labels_match_scipy_ndimage_label() {
    let data = fixture();
    let cases = data["component_cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let w = case["width"].as_u64().unwrap() as usize;
        let h = case["height"].as_u64().unwrap() as usize;
        let mask = bytes(&case["mask"]);
        for (key, conn) in [("four", Connectivity::Four), ("eight", Connectivity::Eight)] {
            let c = label_class(&mask, w, h, 1, conn).unwrap();
            let reference = &case[key];
            assert_eq!(
                c.count as u64,
                reference["count"].as_u64().unwrap(),
                "{name} {key}"
            );
            let labels: Vec<u32> = reference["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(c.labels, labels, "{name} {key}: label image");
        }
    }
}
