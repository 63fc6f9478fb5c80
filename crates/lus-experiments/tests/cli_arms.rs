//! Ablations as data: a new label recipe, a new pretraining arm and new classifier arms in
//! TOML only, run end to end and reported by name; and what re-runs when settings change on a
//! finished experiment (execution settings: nothing; a result setting: exactly the cells that
//! depend on it).

mod common;

use common::stderr;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn experiment(dir: &Path) -> PathBuf {
    let text = format!(
        r#"name = "arms"
runs_dir = "{runs}"
reports_dir = "{reports}"
[dataset]
train = 8
val = 4
test = 4
classify_samples = 16
[dataset.scanner]
size = 64

# A recipe of this experiment: the line classes at full extent, nothing else.
[recipes.dense-lines]
lines = "full"

[pretrain.train]
epochs = 1
batch_size = 4
lr = 0.003
device = "cpu"
[pretrain.unet]
depth = 2
base_channels = 4
[pretrain.data]
size = 32
[evaluation]
overlay_examples = 1
truths = ["dense", "sparse", "dense-lines"]
[classify.train]
epochs = 1
batch_size = 4
device = "cpu"
[classify.classifier]
head_channels = 4
[classify.data]
size = 32

[[grid.pretrain]]
name = "dense"
recipe = "dense"
[[grid.pretrain]]
name = "dense-lines"
recipe = "dense-lines"
[[grid.pretrain]]
name = "sparse-w1"
recipe = "sparse"
overrides = {{ "dataset.sparse_width" = 1.0, "pretrain.train.lr" = 0.002 }}

[grid]
seeds = [0]
folds = 2
inner_folds = 2
arms = [
  "dense",
  "dense-lines",
  {{ name = "sparse-w1-frozen", pretrain = "sparse-w1", classifier = {{ freeze = "encoder" }} }},
  "none",
]
"#,
        runs = dir.join("runs").display(),
        reports = dir.join("reports").display()
    );
    let path = dir.join("arms.toml");
    fs::write(&path, text).unwrap();
    path
}

fn lus_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lus"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the lus binary runs")
}

/// `cell folder -> run.json` of every finished cell (a re-run rewrites it: new start time).
fn manifests(runs: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stage in ["pretrain", "classify"] {
        let Ok(entries) = fs::read_dir(runs.join("arms").join(stage)) else {
            continue;
        };
        for entry in entries {
            let dir = entry.unwrap().path();
            if let Ok(text) = fs::read_to_string(dir.join("run.json")) {
                let name = format!("{stage}/{}", dir.file_name().unwrap().to_string_lossy());
                out.insert(name, text);
            }
        }
    }
    out
}

#[test]
fn new_arms_in_toml_only_run_and_report_by_name_and_reruns_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let config = experiment(dir.path());
    let config = config.to_str().unwrap();
    let out = lus_with(&["run", config, "--quiet"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    let runs = dir.path().join("runs");
    let first = manifests(&runs);
    assert_eq!(first.len(), 3 + 4 * 2, "{:?}", first.keys());
    for truth in ["dense", "sparse", "dense-lines"] {
        assert!(
            runs.join(format!(
                "arms/pretrain/sparse-w1-seed0/eval/test-{truth}.parquet"
            ))
            .is_file(),
            "{truth}"
        );
    }
    // The arm's overrides are applied and its recipe written out in its cell's config.
    let cell_config =
        fs::read_to_string(runs.join("arms/pretrain/sparse-w1-seed0/config.resolved.toml"))
            .unwrap();
    assert!(cell_config.contains("lr = 0.002"), "{cell_config}");
    assert!(cell_config.contains("px_at_128 = 1.0"), "{cell_config}");

    let report_dir = dir.path().join("reports/arms");
    let report = fs::read_to_string(report_dir.join("REPORT.md")).unwrap();
    for needle in [
        "**dense-lines** (recipe `dense-lines`",
        "**sparse-w1** (recipe `sparse`; overrides",
        "Test results against dense-lines ground truth (reference)",
        "sparse-w1-frozen (n=2)",
        "dense-lines − none",
        "prediction of the sparse-w1 U-Net",
        "8-connected",
    ] {
        assert!(
            report.contains(needle),
            "REPORT.md lacks {needle:?}:\n{report}"
        );
    }
    let seg = fs::read_to_string(report_dir.join("seg_results.csv")).unwrap();
    assert!(seg.contains("sparse-w1,0,dense-lines"), "{seg}");

    // Execution settings change nothing: every cell is skipped, no manifest is rewritten.
    let again = lus_with(
        &[
            "run",
            config,
            "--set",
            "pretrain.train.log_every=1",
            "--set",
            "classify.train.log_every=2",
            "--set",
            "pretrain.train.checkpoint_every_steps=1",
            "--set",
            "pretrain.data.prefetch=0",
            "--set",
            "pretrain.unet.kernels=candle",
            "--set",
            "evaluation.overlay_examples=2",
            "--set",
            "pretrain.train.device=cpu",
        ],
        &[("RAYON_NUM_THREADS", "1")],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        stderr(&again).matches("complete, skipped").count(),
        first.len(),
        "{}",
        stderr(&again)
    );
    assert_eq!(manifests(&runs), first);

    // A result setting re-runs exactly the cells that depend on it: the pretraining arms that
    // take the experiment's lr (not sparse-w1, which sets its own) and the classification
    // cells on their networks; the none arm and sparse-w1's cells stay.
    let changed = lus_with(
        &["run", config, "--quiet", "--set", "pretrain.train.lr=0.005"],
        &[],
    );
    assert!(changed.status.success(), "{}", stderr(&changed));
    let after = manifests(&runs);
    let rerun: Vec<&String> = after
        .iter()
        .filter(|(cell, text)| first.get(*cell) != Some(text))
        .map(|(cell, _)| cell)
        .collect();
    assert_eq!(
        rerun,
        [
            "classify/dense-lines-seed0-fold0",
            "classify/dense-lines-seed0-fold1",
            "classify/dense-seed0-fold0",
            "classify/dense-seed0-fold1",
            "pretrain/dense-lines-seed0",
            "pretrain/dense-seed0",
        ],
        "{}",
        stderr(&changed)
    );
    // Nothing is lost: the superseded cells are kept.
    let superseded = fs::read_dir(runs.join("arms/superseded")).unwrap().count();
    assert_eq!(superseded, rerun.len());
    assert!(
        stderr(&changed).contains("pretrain.train.lr: 0.003 -> 0.005"),
        "{}",
        stderr(&changed)
    );

    // A changed truth re-evaluates the trained networks in place, training nothing.
    let truths = lus_with(
        &[
            "run",
            config,
            "--set",
            "pretrain.train.lr=0.005",
            "--set",
            "evaluation.object_iou=0.5",
        ],
        &[],
    );
    assert!(truths.status.success(), "{}", stderr(&truths));
    let message = stderr(&truths);
    assert_eq!(
        message
            .matches("evaluating the trained network again")
            .count(),
        3,
        "{message}"
    );
    assert!(!message.contains("epoch   1"), "{message}");
    assert_eq!(
        fs::read_dir(runs.join("arms/superseded")).unwrap().count(),
        superseded
    );
}
