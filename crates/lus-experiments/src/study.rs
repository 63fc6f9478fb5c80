//! `lus run FILE`: every cell of an experiment's grid (arm x seed), then the report;
//! `lus report FILE`: the report from whatever cells are complete.
//!
//! Cells live in `<runs_dir>/<name>/pretrain/<arm>-seed<seed>/` (see [`crate::seg_cell`]).
//! A complete cell is skipped, an interrupted one resumes from its last epoch, so a killed
//! `lus run` continues where it stopped when run again.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::Args;
use lus_data::LabelMode;

use crate::config::ExperimentConfig;
use crate::dataset::Dataset;
use crate::report::{CellResult, write_report};
use crate::seg_cell::{cell_config, is_complete, run_cell};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Experiment file (TOML).
    file: PathBuf,
    /// Override a config value: --set pretrain.train.epochs=3 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// No progress bars or per-epoch lines.
    #[arg(long)]
    quiet: bool,
}

/// The folder of one pretraining cell.
pub fn cell_dir(experiment: &ExperimentConfig, arm: LabelMode, seed: u64) -> PathBuf {
    experiment
        .runs_root()
        .join("pretrain")
        .join(format!("{arm}-seed{seed}"))
}

fn cells(experiment: &ExperimentConfig) -> Vec<(LabelMode, u64)> {
    let mut cells = Vec::new();
    for &seed in &experiment.grid.seeds {
        for &arm in &experiment.grid.arms {
            cells.push((arm, seed));
        }
    }
    cells
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let experiment = ExperimentConfig::load(&args.file, &args.overrides)?;
    lus_train::parse_device(&experiment.pretrain.train.device)?;
    let data = Dataset::load(&experiment.dataset)?;
    let grid = cells(&experiment);
    for (i, &(arm, seed)) in grid.iter().enumerate() {
        if !args.quiet {
            eprintln!("cell {}/{}: {arm} labels, seed {seed}", i + 1, grid.len());
        }
        let cell = cell_config(&experiment, arm, seed);
        run_cell(&cell, &data, &cell_dir(&experiment, arm, seed), args.quiet)?;
    }
    let results = load_complete(&experiment)?;
    let path = write_report(
        &experiment,
        &data,
        &results,
        started.elapsed().as_secs_f64(),
    )?;
    eprintln!(
        "report: {}",
        path.join(crate::report::REPORT_FILE).display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Experiment file (TOML).
    file: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let experiment = ExperimentConfig::load(&args.file, &args.overrides)?;
    let results = load_complete(&experiment)?;
    if results.is_empty() {
        bail!(
            "{}: no complete cell yet under {}",
            args.file.display(),
            experiment.runs_root().display()
        );
    }
    let data = Dataset::load(&experiment.dataset)?;
    let path = write_report(
        &experiment,
        &data,
        &results,
        started.elapsed().as_secs_f64(),
    )?;
    eprintln!(
        "report of {} of {} cells: {}",
        results.len(),
        cells(&experiment).len(),
        path.join(crate::report::REPORT_FILE).display()
    );
    Ok(())
}

fn load_complete(experiment: &ExperimentConfig) -> anyhow::Result<Vec<CellResult>> {
    let mut results = Vec::new();
    for (arm, seed) in cells(experiment) {
        let dir = cell_dir(experiment, arm, seed);
        if is_complete(&dir, &cell_config(experiment, arm, seed))? {
            results.push(CellResult::load(arm, seed, &dir)?);
        }
    }
    Ok(results)
}
