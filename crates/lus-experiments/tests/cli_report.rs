//! The report of a tiny grid (2 seeds x 3 folds, arms dense / sparse / none): the corrected
//! comparison table with Holm-adjusted p-values, the warnings and findings blocks, the cluster
//! bootstrap over independent units and the pooled vs fold-averaged AUC; and the same cells
//! reported with one arm, where there is nothing to compare.

mod common;

use common::{lus, stderr};

use std::fs;
use std::path::Path;

use lus_experiments::report_cls::COMPARISON_HEADER;

fn experiment(dir: &Path) -> String {
    let text = common::tiny_grid_toml(
        "rep",
        &dir.join("runs"),
        &dir.join("reports"),
        1,
        "seeds = [0, 1]\nfolds = 3\ninner_folds = 4\narms = [\"dense\", \"sparse\", \"none\"]",
    );
    let path = dir.join("rep.toml");
    fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The rows of the markdown table under `header`, split into trimmed cells.
fn table_rows(report: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = report.lines().skip_while(|l| *l != header);
    assert!(lines.next().is_some(), "no table {header:?} in\n{report}");
    lines
        .skip(1) // the rule
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn the_report_corrects_comparisons_warns_and_states_findings() {
    let dir = tempfile::tempdir().unwrap();
    let config = experiment(dir.path());
    let out = lus(&["run", &config, "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report_dir = dir.path().join("reports/rep");
    let report = fs::read_to_string(report_dir.join("REPORT.md")).unwrap();
    for needle in [
        COMPARISON_HEADER,
        "Holm",
        "Nadeau & Bengio",
        "1/n + 1/2 for 3 folds",
        "## Warnings",
        "## Findings",
        "independent units",
        "pooled macro AUC",
        "macro AUC, mean over folds",
        "dense − sparse: ",
        "FP / image",
        "Frame and clip level",
    ] {
        assert!(
            report.contains(needle),
            "REPORT.md lacks {needle:?}:\n{report}"
        );
    }
    for gone in ["Wilcoxon p", "t-test p"] {
        assert!(!report.contains(gone), "REPORT.md still has {gone:?}");
    }
    // Setup, then Warnings, then Findings, before the result tables.
    let at = |s: &str| report.find(s).unwrap();
    assert!(at("## Setup") < at("## Warnings"));
    assert!(at("## Warnings") < at("## Findings"));
    assert!(at("## Findings") < at("## Test results against"));

    // 3 pairs of arms x 3 metrics; every Holm p at least its raw p.
    let rows = table_rows(&report, COMPARISON_HEADER);
    assert_eq!(rows.len(), 9, "{rows:?}");
    for row in &rows {
        assert_eq!(row.len(), 8, "{row:?}");
        let (raw, holm) = (&row[6], &row[7]);
        if raw == "-" {
            assert_eq!(holm, "-", "{row:?}");
            continue;
        }
        let (raw, holm): (f64, f64) = (raw.parse().unwrap(), holm.parse().unwrap());
        assert!(holm >= raw && holm <= 1.0, "{row:?}");
        // 2 seeds x 3 folds, less the dropped ones.
        let cells: usize = row[2].split(' ').next().unwrap().parse().unwrap();
        assert!((2..=6).contains(&cells), "{row:?}");
    }
    // One findings sentence per pair on balanced accuracy.
    assert_eq!(
        report.matches(" balanced accuracy over ").count(),
        3,
        "{report}"
    );
    // The pooled table: one row per arm and seed, units = scanner images (each its own).
    let pooled_header = "| arm | seed | examples | units | accuracy | balanced accuracy | macro F1 | pooled macro AUC | macro AUC, mean over folds |";
    let pooled = table_rows(&report, pooled_header);
    assert_eq!(pooled.len(), 6, "{pooled:?}");
    for row in &pooled {
        assert_eq!((row[2].as_str(), row[3].as_str()), ("24", "24"), "{row:?}");
    }
    assert!(report.contains("1000 resamples of the 24 independent units"));
    assert_eq!(
        fs::read_to_string(report_dir.join("cls_results.csv"))
            .unwrap()
            .lines()
            .count(),
        1 + 18
    );
    for figure in ["roc-covid.png", "confusion-sparse.png", "cls-bars.png"] {
        assert!(
            report_dir.join("figures").join(figure).is_file(),
            "{figure}"
        );
    }

    // The same cells with one classifier arm: the report says there is nothing to compare.
    let one = lus(&["report", &config, "--set", "grid.arms=[\"dense\"]"]);
    assert!(one.status.success(), "{}", stderr(&one));
    let report = fs::read_to_string(report_dir.join("REPORT.md")).unwrap();
    for needle in [
        "One classifier arm has results (dense): no comparison",
        "Comparisons over cross-validation cells\n\nOne classifier arm has results (dense)",
        "## Warnings",
        "pooled macro AUC",
    ] {
        assert!(
            report.contains(needle),
            "REPORT.md lacks {needle:?}:\n{report}"
        );
    }
    assert!(!report.contains(COMPARISON_HEADER));
}
