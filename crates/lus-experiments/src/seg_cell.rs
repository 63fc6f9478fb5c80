//! One segmentation cell: a U-Net trained on one label mode with one seed, then evaluated on
//! the test split against both label modes. Used by `lus train-seg` (one cell) and `lus run`
//! (every cell of the grid).
//!
//! # Cell folder
//!
//! | file | |
//! |---|---|
//! | `config.resolved.toml` | the experiment config reduced to this cell (one arm, one seed): itself a valid experiment file |
//! | `best.safetensors`, `best.json`, `last/`, `metrics.{csv,parquet}` | the trainer's (see lus-train) |
//! | `curves-loss.png`, `curves-val.png` | training and validation loss; validation mIoU and mDice per epoch |
//! | `eval/test-dense.{csv,parquet}`, `eval/test-sparse.{csv,parquet}` | the best checkpoint on the test split, against dense and against sparse truth: one row per class |
//! | `run.json` | the run manifest; written last, so its presence marks the cell complete |

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use lus_data::{LabelMode, LabelSchema};
use lus_metrics::{MetricsTable, plot_curves, read_table_parquet};
use lus_train::trainer::{BEST_CHECKPOINT, EpochRecord, Resume};
use lus_train::{
    SegEvalOptions, SegEvalReport, SegModel, StopRequest, device_name, evaluate_segmentation,
    train_segmentation_with,
};

use crate::config::{
    ArmConfig, DatasetConfig, ExperimentConfig, GridConfig, Pretrain, RESOLVED_CONFIG_FILE,
};
use crate::dataset::Dataset;
use crate::provenance::{RUN_MANIFEST_FILE, RunClock, write_run_manifest};

/// Sub-folder of the test evaluations.
pub const EVAL_DIR: &str = "eval";

/// The per-class evaluation table of a cell against `truth` labels.
pub fn eval_table_path(cell_dir: &Path, truth: LabelMode) -> PathBuf {
    cell_dir
        .join(EVAL_DIR)
        .join(format!("test-{truth}.parquet"))
}

/// `experiment` reduced to one segmentation cell: the arm of `labels`, one seed, the
/// pretraining seed set to it, and what does not concern the pretraining (the classification
/// section, folds, the size of the diagnostic pool) at its defaults, so changing those keeps
/// finished pretraining runs valid.
pub fn cell_config(
    experiment: &ExperimentConfig,
    labels: LabelMode,
    seed: u64,
) -> ExperimentConfig {
    let mut cell = experiment.clone();
    let pretrain = match labels {
        LabelMode::Dense => Pretrain::Dense,
        LabelMode::Sparse => Pretrain::Sparse,
    };
    cell.classify = None;
    cell.dataset.classify_samples = DatasetConfig::default().classify_samples;
    cell.grid = GridConfig {
        arms: vec![ArmConfig::plain(pretrain)],
        seeds: vec![seed],
        ..GridConfig::default()
    };
    cell.pretrain.train.seed = seed;
    cell
}

/// Whether `dir` holds a complete cell of exactly `cell` (same resolved configuration).
pub fn is_complete(dir: &Path, cell: &ExperimentConfig) -> anyhow::Result<bool> {
    if !dir.join(RUN_MANIFEST_FILE).is_file() {
        return Ok(false);
    }
    check_same_config(dir, cell)?;
    Ok(true)
}

/// Errors if `dir` holds a resolved configuration other than `cell`'s.
pub fn check_same_config(dir: &Path, cell: &ExperimentConfig) -> anyhow::Result<()> {
    let path = dir.join(RESOLVED_CONFIG_FILE);
    if !path.is_file() {
        return Ok(());
    }
    let mut existing = ExperimentConfig::load(&path, &[])?;
    // Where runs and reports are kept and what the experiment is called do not change what a
    // cell computes: a moved or renamed experiment keeps its finished cells.
    existing.name.clone_from(&cell.name);
    existing.runs_dir.clone_from(&cell.runs_dir);
    existing.reports_dir.clone_from(&cell.reports_dir);
    if &existing != cell {
        bail!(
            "{} belongs to a run with another configuration (compare it with the requested one); \
             choose another output folder, or remove it (--force) to start over",
            path.display()
        );
    }
    Ok(())
}

/// The single label mode and seed of a segmentation cell config.
pub fn cell_arm(cell: &ExperimentConfig) -> anyhow::Result<(LabelMode, u64)> {
    match (cell.grid.arms.as_slice(), cell.grid.seeds.as_slice()) {
        ([arm], [seed]) => match arm.pretrain.label_mode() {
            Some(mode) => Ok((mode, *seed)),
            None => bail!("a segmentation cell pretrains on dense or sparse labels, not none"),
        },
        _ => bail!("a cell config has exactly one arm and one seed"),
    }
}

/// Trains (or resumes, or skips when complete) the cell `cell` into `dir`, then evaluates it.
/// A raised `stop` ends the training with its checkpoint saved, as an error.
pub fn run_cell(
    cell: &ExperimentConfig,
    data: &Dataset,
    dir: &Path,
    quiet: bool,
    stop: &StopRequest,
) -> anyhow::Result<()> {
    let (labels, seed) = cell_arm(cell)?;
    if is_complete(dir, cell)? {
        if !quiet {
            eprintln!("{}: complete, skipped", dir.display());
        }
        return Ok(());
    }
    check_same_config(dir, cell)?;
    // Temporary files of a killed earlier attempt (the trainer cleans its own).
    lus_data::io::remove_stale_temp_files(dir)?;
    lus_data::io::remove_stale_temp_files(&dir.join(EVAL_DIR))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    lus_data::io::write_atomic(
        &dir.join(RESOLVED_CONFIG_FILE),
        cell.to_toml_string()?.as_bytes(),
    )?;

    let run_config = &cell.pretrain;
    let clock = RunClock::start("train-seg", seed, &run_config.train.device);
    let class_names = class_names(&data.schema);
    let label = format!("{labels}/seed {seed}");
    let summary = train_segmentation_with(
        run_config,
        data.train.labels(labels),
        data.val.labels(labels),
        class_names.clone(),
        dir,
        Resume::IfPresent,
        |trainer| {
            let label = label.clone();
            let trainer = trainer.with_stop_request(stop.clone());
            trainer.with_progress_bar(!quiet).on_epoch(move |r: &EpochRecord| {
                if !quiet {
                    eprintln!(
                        "[{label}] epoch {:>3}: train_loss {:.4}  val_loss {:.4}  val_miou {:.4}  {:.1} img/s  {:.1} s",
                        r.epoch,
                        r.train_loss,
                        r.val_loss,
                        r.get("val_miou").unwrap_or(f64::NAN),
                        r.images_per_s,
                        r.seconds
                    );
                }
            })
        },
    )?;
    plot_history(dir, &label, &summary.history)?;

    let device = lus_train::parse_device(&run_config.train.device)?;
    let model = SegModel::load(&run_config.unet, &summary.best_checkpoint(), &device)?;
    let eval_dir = dir.join(EVAL_DIR);
    std::fs::create_dir_all(&eval_dir)
        .with_context(|| format!("creating {}", eval_dir.display()))?;
    let options = eval_options(cell, &data.schema);
    for truth in [LabelMode::Dense, LabelMode::Sparse] {
        let report = evaluate_segmentation(
            &model,
            data.test.labels(truth),
            run_config,
            &options,
            &device,
        )?;
        write_eval(dir, truth, &report)?;
    }
    let mut manifest = clock.finish();
    manifest.device = device_name(&device);
    manifest.peak_device_memory_mib = summary.peak_device_memory_mib;
    write_run_manifest(dir, &manifest)?;
    Ok(())
}

/// Class names in id order.
pub fn class_names(schema: &LabelSchema) -> Vec<String> {
    schema.classes().iter().map(|c| c.name.clone()).collect()
}

/// How `experiment` evaluates segmentation under `schema`: every class at pixel level, the
/// line classes object by object.
pub fn eval_options(experiment: &ExperimentConfig, schema: &LabelSchema) -> SegEvalOptions {
    SegEvalOptions {
        class_names: class_names(schema),
        object_classes: schema.line_classes().map(|c| c.id).collect(),
        objects: experiment.evaluation.object_config(),
        ignore_id: experiment.pretrain.train.loss.ignore_id,
    }
}

pub fn write_eval(dir: &Path, truth: LabelMode, report: &SegEvalReport) -> anyhow::Result<()> {
    let parquet = eval_table_path(dir, truth);
    let csv = parquet.with_extension("csv");
    report.per_class_table()?.write(&csv, &parquet)?;
    Ok(())
}

/// Reads a cell's evaluation table against `truth`.
pub fn read_eval(dir: &Path, truth: LabelMode) -> anyhow::Result<MetricsTable> {
    let path = eval_table_path(dir, truth);
    let df = read_table_parquet(&path)?;
    MetricsTable::from_dataframe(&df).with_context(|| path.display().to_string())
}

fn plot_history(dir: &Path, label: &str, history: &[EpochRecord]) -> anyhow::Result<()> {
    let series = |name: &str| -> Vec<(f64, f64)> {
        history
            .iter()
            .map(|r| (r.epoch as f64, r.get(name).unwrap_or(f64::NAN)))
            .collect()
    };
    let (train, val) = (series("train_loss"), series("val_loss"));
    plot_curves(
        &dir.join("curves-loss.png"),
        &format!("loss ({label})"),
        "epoch",
        "loss",
        &[("train", &train), ("validation", &val)],
    )?;
    let (miou, mdice) = (series("val_miou"), series("val_mdice"));
    plot_curves(
        &dir.join("curves-val.png"),
        &format!("validation ({label})"),
        "epoch",
        "score",
        &[("mIoU", &miou), ("mDice", &mdice)],
    )?;
    Ok(())
}

/// The best checkpoint of a cell folder.
pub fn best_checkpoint(dir: &Path) -> PathBuf {
    dir.join(BEST_CHECKPOINT)
}
