//! Two `lus run` processes on one experiment at once (a user who starts it twice, overlapping
//! shards, a resubmitted array task): each cell is trained by exactly one of them, both
//! finish, and the results are those of one run alone.

mod common;

use common::{lus, stderr};

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

const CELLS: [&str; 7] = [
    "pretrain/dense-seed0",
    "classify/dense-seed0-fold0",
    "classify/dense-seed0-fold1",
    "classify/dense-seed0-fold2",
    "classify/none-seed0-fold0",
    "classify/none-seed0-fold1",
    "classify/none-seed0-fold2",
];

fn experiment(dir: &Path, runs: &str) -> String {
    common::write_tiny_grid(
        dir,
        "concurrent",
        runs,
        "seeds = [0]\nfolds = 3\ninner_folds = 4\narms = [\"dense\", \"none\"]",
    )
}

#[test]
fn two_runners_at_once_train_each_cell_once_and_agree_with_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let alone = experiment(dir.path(), "alone");
    let out = lus(&["run", &alone, "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let both = experiment(dir.path(), "both");
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_lus"))
            .args(["run", &both])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the lus binary starts")
    };
    let (first, second) = (start(), start());
    let outputs = [
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    ];
    for out in &outputs {
        assert!(out.status.success(), "{}", stderr(out));
    }
    let logs: Vec<String> = outputs.iter().map(stderr).collect();
    // Every cell is either trained or found complete by each process: exactly one of the two
    // finds it complete (the other trained it). Without the cell locks both start the first
    // cell at once and neither skips it.
    for cell in CELLS {
        let skipped = format!(
            "{}: complete, skipped",
            dir.path().join("both/concurrent").join(cell).display()
        );
        let skips: usize = logs.iter().map(|l| l.matches(&skipped).count()).sum();
        assert_eq!(
            skips, 1,
            "{cell}: found complete by {skips} of the 2 runners (1 expected)\n--- first\n{}\n--- second\n{}",
            logs[0], logs[1]
        );
    }
    let results = |runs: &str| {
        fs::read_to_string(
            dir.path()
                .join(format!("reports-{runs}/concurrent/cls_results.csv")),
        )
        .unwrap()
    };
    assert_eq!(
        results("both"),
        results("alone"),
        "two concurrent runners must give the results of one run"
    );
    assert!(
        dir.path()
            .join("both/concurrent/pretrain/dense-seed0.lock")
            .is_file()
    );
}
