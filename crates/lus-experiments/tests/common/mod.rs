//! What the end-to-end tests of the `lus` binary share.

#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs the `lus` binary built for these tests.
pub fn lus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lus"))
        .args(args)
        .output()
        .expect("the lus binary runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that the command failed and that its message contains `needle`.
#[track_caller]
pub fn assert_fails_saying(out: &Output, needle: &str) {
    assert!(
        !out.status.success(),
        "succeeded; expected a failure naming {needle:?}"
    );
    assert!(
        stderr(out).contains(needle),
        "expected {needle:?} in: {}",
        stderr(out)
    );
}

/// A tiny experiment (scanner at 64 px, a depth-2 U-Net at 32 px, one epoch of pretraining)
/// with classification and the given `[grid]` lines, runs and reports in the given folders.
pub fn tiny_grid_toml(
    name: &str,
    runs: &std::path::Path,
    reports: &std::path::Path,
    classify_epochs: usize,
    grid: &str,
) -> String {
    format!(
        r#"name = "{name}"
runs_dir = "{runs}"
reports_dir = "{reports}"
[dataset]
train = 8
val = 4
test = 4
classify_samples = 24
[dataset.scanner]
size = 64
[pretrain.train]
epochs = 1
batch_size = 4
device = "cpu"
[pretrain.unet]
depth = 2
base_channels = 4
[pretrain.data]
size = 32
[evaluation]
overlay_examples = 1
[classify.train]
epochs = {classify_epochs}
batch_size = 4
lr = 0.003
device = "cpu"
best_metric = "val_balanced_accuracy"
[classify.classifier]
head_channels = 4
[classify.data]
size = 32
[grid]
{grid}
"#,
        runs = runs.display(),
        reports = reports.display()
    )
}

/// Writes [`tiny_grid_toml`] (2 classification epochs) as `<dir>/<runs>.toml`, with runs in
/// `<dir>/<runs>` and reports in `<dir>/reports-<runs>`, and returns the file's path: the same
/// experiment run in several folders (one run vs shards, vs two runners, vs Slurm) compares.
pub fn write_tiny_grid(dir: &std::path::Path, name: &str, runs: &str, grid: &str) -> String {
    let text = tiny_grid_toml(
        name,
        &dir.join(runs),
        &dir.join(format!("reports-{runs}")),
        2,
        grid,
    );
    let path = dir.join(format!("{runs}.toml"));
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}
