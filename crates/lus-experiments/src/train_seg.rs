//! `lus train-seg`: one segmentation U-Net, trained on dense or sparse labels.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lus_data::LabelMode;
use lus_train::StopRequest;

use crate::config::ExperimentConfig;
use crate::dataset::Dataset;
use crate::seg_cell::{cell_config, run_cell};

#[derive(Args, Debug)]
pub struct TrainSegArgs {
    /// Experiment file (TOML): its [dataset], [pretrain] and [evaluation] sections are used.
    #[arg(long)]
    config: PathBuf,
    /// Labels to train on.
    #[arg(long, value_parser = parse_labels)]
    labels: LabelMode,
    /// Run folder: best.safetensors, metrics.csv, config.resolved.toml, run.json, curves,
    /// test evaluation. A folder of an interrupted run with the same configuration is resumed.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the run (default: pretrain.train.seed of the config).
    #[arg(long)]
    seed: Option<u64>,
    /// Device: cpu, cuda, cuda:N or auto (overrides pretrain.train.device).
    #[arg(long)]
    device: Option<String>,
    /// Override a config value: --set pretrain.train.epochs=3 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Remove an existing output folder first.
    #[arg(long)]
    force: bool,
    /// No progress bar or per-epoch lines.
    #[arg(long)]
    quiet: bool,
}

pub fn parse_labels(text: &str) -> Result<LabelMode, String> {
    match text {
        "dense" => Ok(LabelMode::Dense),
        "sparse" => Ok(LabelMode::Sparse),
        other => Err(format!("{other:?} is not a label mode (dense or sparse)")),
    }
}

/// Trains the cell; a raised `stop` ends training early with its checkpoint saved (see
/// [`lus_train::StopRequest`]).
pub fn run(args: TrainSegArgs, stop: &StopRequest) -> anyhow::Result<()> {
    let mut overrides = args.overrides.clone();
    if let Some(device) = &args.device {
        overrides.push(format!("pretrain.train.device={device:?}"));
    }
    let experiment = ExperimentConfig::load(&args.config, &overrides)?;
    let seed = args.seed.unwrap_or(experiment.pretrain.train.seed);
    let cell = cell_config(&experiment, args.labels, seed);
    cell.validate()?;
    // Fail on the device before drawing any data.
    lus_train::parse_device(&cell.pretrain.train.device)?;
    if args.force && args.out.exists() {
        std::fs::remove_dir_all(&args.out)
            .with_context(|| format!("removing {}", args.out.display()))?;
    }
    let data = Dataset::load(&cell.dataset)?;
    run_cell(&cell, &data, &args.out, args.quiet, stop)?;
    if !args.quiet {
        eprintln!("{}: done", args.out.display());
    }
    Ok(())
}
