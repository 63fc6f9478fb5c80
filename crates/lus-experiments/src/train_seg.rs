//! `lus train-seg`: one segmentation U-Net, trained on one pretraining arm's labels.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lus_train::StopRequest;

use crate::cell::{OnChange, Runner};
use crate::config::{ExperimentConfig, PretrainArm, RecipeRef};
use crate::dataset::Dataset;
use crate::seg_cell::{cell_config, recipes_of, run_cell};

#[derive(Args, Debug)]
pub struct TrainSegArgs {
    /// Experiment file (TOML): its [dataset], [pretrain] and [evaluation] sections are used.
    #[arg(long)]
    config: PathBuf,
    /// What to train on: a pretraining arm of the config's `[[grid.pretrain]]`, or a label
    /// recipe (`dense`, `sparse`, or a `[recipes.<name>]` of the config).
    #[arg(long)]
    labels: String,
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

/// Trains the cell; a raised `stop` ends training early with its checkpoint saved (see
/// [`lus_train::StopRequest`]).
pub fn run(args: TrainSegArgs, stop: &StopRequest) -> anyhow::Result<()> {
    let mut overrides = args.overrides.clone();
    if let Some(device) = &args.device {
        overrides.push(format!("pretrain.train.device={device:?}"));
    }
    let experiment = ExperimentConfig::load(&args.config, &overrides)?;
    let seed = args.seed.unwrap_or(experiment.pretrain.train.seed);
    let arm = match experiment.grid.pretrain_arm(&args.labels) {
        Some(arm) => arm.clone(),
        None => PretrainArm {
            name: args.labels.clone(),
            recipe: RecipeRef::Name(args.labels.clone()),
            overrides: toml::Table::new(),
        },
    };
    let cell = cell_config(&experiment, &arm, seed).with_context(|| {
        format!(
            "--labels {}: neither a pretraining arm of {} ({}) nor a label recipe",
            args.labels,
            args.config.display(),
            experiment
                .grid
                .pretrain
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    cell.validate()?;
    // Fail on the device before drawing any data.
    cell.pretrain.train.device.open()?;
    if args.force && args.out.exists() {
        std::fs::remove_dir_all(&args.out)
            .with_context(|| format!("removing {}", args.out.display()))?;
    }
    let data = Dataset::load(
        &cell.dataset,
        &recipes_of([&cell])?,
        cell.pretrain.train.loss.ignore_id,
    )?;
    let runner = Runner {
        on_change: OnChange::Error,
        quiet: args.quiet,
        stop,
    };
    run_cell(&cell, &data, &args.out, &runner)?;
    if !args.quiet {
        eprintln!("{}: done", args.out.display());
    }
    Ok(())
}
