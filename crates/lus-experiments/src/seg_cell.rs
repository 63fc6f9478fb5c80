//! One segmentation (pretraining) cell: a U-Net trained on one pretraining arm's labels with
//! one seed, then evaluated on the test split against every truth of `evaluation.truths`. Used
//! by `lus train-seg` (one cell) and `lus run` (every cell of the plan).
//!
//! # Cell folder (`<runs>/<name>/pretrain/<arm>-seed<seed>/`)
//!
//! | file | |
//! |---|---|
//! | `config.resolved.toml` | the experiment reduced to this cell (one pretraining arm with its recipe written out, one seed, no classification): itself a valid experiment file |
//! | `best.safetensors`, `best.json`, `last/`, `metrics.{csv,parquet}` | the trainer's (see lus-train) |
//! | `curves-loss.png`, `curves-val.png` | training and validation loss; validation mIoU and mDice per epoch |
//! | `eval/test-<truth>.{csv,parquet}` | the best checkpoint on the test split against each truth recipe: one row per class |
//! | `run.json` | the run manifest; written last, so its presence marks the cell complete |

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use lus_data::{LabelRecipe, LabelSchema};
use lus_metrics::{MetricsTable, plot_curves, read_table_parquet};
use lus_train::trainer::{BEST_CHECKPOINT, EpochRecord, Resume};
use lus_train::{
    SegEvalOptions, SegEvalReport, SegModel, device_name, evaluate_segmentation,
    train_segmentation_with,
};

use crate::cell::{CellStart, Runner};
use crate::config::{DatasetConfig, ExperimentConfig, GridConfig, PretrainArm, RecipeRef};
use crate::dataset::Dataset;
use crate::provenance::write_run_manifest;

/// Sub-folder of the test evaluations.
pub const EVAL_DIR: &str = "eval";

/// The per-class evaluation table of a cell against the truth recipe `truth`.
pub fn eval_table_path(cell_dir: &Path, truth: &str) -> PathBuf {
    cell_dir
        .join(EVAL_DIR)
        .join(format!("test-{truth}.parquet"))
}

/// `experiment` reduced to the pretraining cell of `arm` and `seed`: the arm's overrides
/// applied, its recipe and the evaluation truths written out as complete recipes, the
/// pretraining seed set, and what does not concern the pretraining (the classification, the
/// classifier arms, folds, the diagnostic pool) at its defaults, so changing those keeps
/// finished pretraining cells valid.
pub fn cell_config(
    experiment: &ExperimentConfig,
    arm: &PretrainArm,
    seed: u64,
) -> anyhow::Result<ExperimentConfig> {
    let mut cell = experiment.with_arm_overrides(arm)?;
    let recipe = cell
        .recipe(&arm.recipe)
        .with_context(|| format!("pretraining arm {}", arm.name))?;
    // The truths are the experiment's, not the arm's (an arm's `dataset.sparse_width` changes
    // what it learns from, not what every arm is measured against).
    let truths = experiment
        .evaluation
        .truths
        .iter()
        .map(|t| Ok(RecipeRef::resolved(&experiment.recipe(t)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let defaults = DatasetConfig::default();
    cell.classify = None;
    cell.dataset.classify_samples = defaults.classify_samples;
    cell.dataset.classify_from = defaults.classify_from;
    cell.dataset.pocus = defaults.pocus;
    // Every recipe is written out below, so the default width no longer matters.
    cell.dataset.sparse_width = defaults.sparse_width;
    cell.recipes.clear();
    cell.evaluation.truths = truths;
    cell.grid = GridConfig {
        pretrain: vec![PretrainArm {
            name: arm.name.clone(),
            recipe: RecipeRef::resolved(&recipe),
            overrides: toml::Table::new(),
        }],
        arms: Vec::new(),
        seeds: vec![seed],
        ..GridConfig::default()
    };
    cell.pretrain.train.seed = seed;
    Ok(cell)
}

/// The pretraining arm, its recipe and the seed of a pretraining cell config.
pub fn cell_arm(cell: &ExperimentConfig) -> anyhow::Result<(&PretrainArm, LabelRecipe, u64)> {
    match (cell.grid.pretrain.as_slice(), cell.grid.seeds.as_slice()) {
        ([arm], [seed]) => Ok((arm, cell.recipe(&arm.recipe)?, *seed)),
        _ => bail!("a pretraining cell config has exactly one pretraining arm and one seed"),
    }
}

/// The truth recipes of a cell config, in order.
pub fn truths(cell: &ExperimentConfig) -> anyhow::Result<Vec<LabelRecipe>> {
    cell.evaluation
        .truths
        .iter()
        .map(|t| cell.recipe(t))
        .collect()
}

/// Every recipe `data` must draw for `cells` (pretraining cell configs): their training
/// recipes and truths, each once.
pub fn recipes_of<'a>(
    cells: impl IntoIterator<Item = &'a ExperimentConfig>,
) -> anyhow::Result<Vec<LabelRecipe>> {
    let mut out: Vec<LabelRecipe> = Vec::new();
    for cell in cells {
        let (_, recipe, _) = cell_arm(cell)?;
        for r in std::iter::once(recipe).chain(truths(cell)?) {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Trains (or resumes, or skips when complete) the cell `cell` into `dir`, then evaluates it.
/// A raised `stop` ends the training with its checkpoint saved, as an error.
pub fn run_cell(
    cell: &ExperimentConfig,
    data: &Dataset,
    dir: &Path,
    runner: &Runner<'_>,
) -> anyhow::Result<()> {
    let (arm, recipe, seed) = cell_arm(cell)?;
    let (quiet, stop) = (runner.quiet, runner.stop);
    let Some(CellStart { clock }) = crate::cell::start(
        dir,
        cell,
        &[EVAL_DIR],
        runner,
        "train-seg",
        seed,
        cell.pretrain.train.device,
    )?
    else {
        return Ok(());
    };
    let run_config = &cell.pretrain;
    let class_names = class_names(&data.schema);
    let label = format!("{}/seed {seed}", arm.name);
    let summary = train_segmentation_with(
        run_config,
        data.train.labels(&recipe)?,
        data.val.labels(&recipe)?,
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

    let device = run_config.train.device.open()?;
    let model = SegModel::load(&run_config.unet, &summary.best_checkpoint(), &device)?;
    let eval_dir = dir.join(EVAL_DIR);
    std::fs::create_dir_all(&eval_dir)
        .with_context(|| format!("creating {}", eval_dir.display()))?;
    let options = eval_options(cell, &data.schema);
    for truth in truths(cell)? {
        let report = evaluate_segmentation(
            &model,
            data.test.labels(&truth)?,
            run_config,
            &options,
            &device,
        )?;
        write_eval(dir, &truth.name, &report)?;
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

pub fn write_eval(dir: &Path, truth: &str, report: &SegEvalReport) -> anyhow::Result<()> {
    let parquet = eval_table_path(dir, truth);
    let csv = parquet.with_extension("csv");
    report.per_class_table()?.write(&csv, &parquet)?;
    Ok(())
}

/// Reads a cell's evaluation table against the truth recipe `truth`.
pub fn read_eval(dir: &Path, truth: &str) -> anyhow::Result<MetricsTable> {
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
