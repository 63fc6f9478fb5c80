//! The whole study on a tiny grid: pretraining, reverse transfer per arm x seed x fold, the
//! report; sharded runs merging to the same results as one run; stage order enforced.

mod common;

use common::{lus, stderr};

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

fn experiment(dir: &Path, runs: &str) -> String {
    common::write_tiny_grid(
        dir,
        "grid",
        runs,
        "seeds = [0]\nfolds = 3\ninner_folds = 4\narms = [\"dense\", \"none\"]",
    )
}

/// `id -> (fold, truth)` of every test prediction of an arm.
fn tested(runs: &Path, arm: &str) -> BTreeMap<String, (usize, String)> {
    let mut out = BTreeMap::new();
    for fold in 0..3 {
        let path = runs.join(format!(
            "grid/classify/{arm}-seed0-fold{fold}/test/predictions.csv"
        ));
        let text = fs::read_to_string(&path).unwrap();
        let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (id, truth) = (column("id"), column("truth"));
        for line in text.lines().skip(1) {
            let cells: Vec<&str> = line.split(',').collect();
            let previous = out.insert(cells[id].to_string(), (fold, cells[truth].to_string()));
            assert!(previous.is_none(), "{} tested twice", cells[1]);
        }
    }
    out
}

#[test]
fn the_grid_runs_every_cell_reports_and_shards_merge_to_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let whole = experiment(dir.path(), "whole");
    let out = lus(&["run", &whole, "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs = dir.path().join("whole");
    for arm in ["dense", "none"] {
        let tested = tested(&runs, arm);
        assert_eq!(
            tested.len(),
            24,
            "every pool example is tested exactly once per arm"
        );
        let mut tested_total = 0;
        for fold in 0..3 {
            let cell = runs.join(format!("grid/classify/{arm}-seed0-fold{fold}"));
            assert!(cell.join("run.json").is_file());
            let split = fs::read_to_string(cell.join("split.csv")).unwrap();
            let count = |role: &str| split.lines().filter(|l| l.ends_with(role)).count();
            let (train, val, test) = (count(",train"), count(",val"), count(",test"));
            // Stratified thirds of 24 (8 per class): 7 to 9 each; a quarter of the rest validates.
            assert!((7..=9).contains(&test), "{split}");
            assert_eq!(train + val + test, 24, "{split}");
            assert!((3..=6).contains(&val), "{split}");
            tested_total += test;
        }
        assert_eq!(tested_total, 24);
    }
    // Both arms saw the same folds.
    let folds = |arm| -> Vec<usize> { tested(&runs, arm).values().map(|v| v.0).collect() };
    assert_eq!(folds("dense"), folds("none"));

    let report_dir = dir.path().join("reports-whole/grid");
    let report = fs::read_to_string(report_dir.join("REPORT.md")).unwrap();
    for needle in [
        "Comparisons over cross-validation cells",
        "dense − none",
        "bootstrap",
        "FP / image",
        "none (n=3)",
        "at build revision `",
        "the cells were trained at `",
        "(7 cells)",
    ] {
        assert!(report.contains(needle), "REPORT.md lacks {needle:?}");
    }
    let results = fs::read_to_string(report_dir.join("cls_results.csv")).unwrap();
    assert_eq!(results.lines().count(), 1 + 6);
    for figure in [
        "roc-covid.png",
        "confusion-dense.png",
        "cls-bars.png",
        "cls-learning-curves.png",
    ] {
        assert!(
            report_dir.join("figures").join(figure).is_file(),
            "{figure}"
        );
    }

    // Running again skips every cell.
    let again = lus(&["run", &whole]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        stderr(&again).matches("complete, skipped").count(),
        1 + 6,
        "{}",
        stderr(&again)
    );

    // The classification stage alone refuses to start without its pretraining.
    let sharded = experiment(dir.path(), "sharded");
    let early = lus(&["run", &sharded, "--quiet", "--stage", "classify"]);
    assert!(!early.status.success());
    assert!(stderr(&early).contains("pretraining"), "{}", stderr(&early));

    // Two shards, pretraining then classification, then the report: the same results.
    for stage in ["pretrain", "classify"] {
        for shard in ["0/2", "1/2"] {
            let out = lus(&[
                "run", &sharded, "--quiet", "--stage", stage, "--shard", shard,
            ]);
            assert!(out.status.success(), "{stage} {shard}: {}", stderr(&out));
        }
    }
    let report = lus(&["report", &sharded]);
    assert!(report.status.success(), "{}", stderr(&report));
    assert_eq!(
        fs::read_to_string(dir.path().join("reports-sharded/grid/cls_results.csv")).unwrap(),
        results,
        "sharded and unsharded runs must give the same results"
    );
    let bad = lus(&["run", &sharded, "--shard", "2/2"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("0 <= K < N"), "{}", stderr(&bad));
}

#[test]
fn a_synth_folder_serves_both_the_pretraining_and_the_diagnostic_pool() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("synth");
    let synth = lus(&[
        "synth",
        "--count",
        "40",
        "--size",
        "64",
        "--seed",
        "4",
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(synth.status.success(), "{}", stderr(&synth));
    let config = experiment(dir.path(), "folder");
    let text = fs::read_to_string(&config).unwrap().replace(
        "[dataset]\n",
        &format!(
            "[dataset]\nsource = \"folder\"\nfolder = {:?}\n",
            data.display().to_string()
        ),
    );
    let text = text.replace("[dataset.scanner]\nsize = 64\n", "");
    fs::write(&config, text).unwrap();
    let out = lus(&["run", &config, "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let results =
        fs::read_to_string(dir.path().join("reports-folder/grid/cls_results.csv")).unwrap();
    assert_eq!(results.lines().count(), 1 + 6);
    // The pool comes after the pretraining rows of the shuffled manifest: no overlap.
    let split = fs::read_to_string(
        dir.path()
            .join("folder/grid/classify/dense-seed0-fold0/split.csv"),
    )
    .unwrap();
    assert_eq!(split.lines().count(), 1 + 24);
    // Too few rows for what the config asks: an error naming the manifest and the settings.
    let short = lus(&["run", &config, "--set", "dataset.classify_samples=40"]);
    assert!(!short.status.success());
    let message = stderr(&short);
    assert!(
        message.contains("manifest.csv") && message.contains("classify_samples"),
        "{message}"
    );
}
