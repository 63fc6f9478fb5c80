//! One classification cell: arm x seed x fold. The arm's U-Net (its pretraining arm's, trained
//! with this seed, or fresh) becomes a classifier, tested on one outer fold and trained and
//! validated on the others (see [`roles`]).
//!
//! # Cell folder (`<runs>/<name>/classify/<arm>-seed<seed>-fold<fold>/`)
//!
//! | file | |
//! |---|---|
//! | `config.resolved.toml` | the experiment reduced to this cell (one arm, its pretraining arm written out, one seed, `grid.fold` set) |
//! | `adapt/` | for an arm with `real_unlabelled`: the U-Net adapted to this cell's training frames (see [`crate::adapt`]) |
//! | `split.csv` | every example of the diagnostic pool with its clip, fold group (patient, else clip), probe, label and role (train / val / test) |
//! | `best.safetensors`, `last/`, `metrics.{csv,parquet}` | the trainer's |
//! | `test/predictions.csv` | per test example: index, id, clip, fold group, probe, truth, predicted, probability of each class |
//! | `test/metrics.{csv,parquet}` | one row: the test metrics (accuracy, balanced accuracy, macro/weighted F1, macro AUC, per-class precision/recall/specificity/F1/AUC) |
//! | `run.json` | the run manifest, written last (its presence marks the cell complete) |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use lus_data::cls_loader::{ClassSubset, ClassificationLoader};
use lus_metrics::classification::Predictions;
use lus_metrics::{MetricsTable, Row};
use lus_train::trainer::{BEST_CHECKPOINT, EpochRecord, Resume};
use lus_train::{Backbone, ClassificationTask, device_name, train_classifier};

use crate::adapt::{ADAPT_DIR, adapt_backbone, adaptation_frames};
use crate::cell::{CellStart, Runner};
use crate::config::{ArmConfig, DatasetConfig, EvaluationConfig, ExperimentConfig};
use crate::dataset::{ClassifyPool, Dataset};
use crate::predictions::{TestPrediction, write_predictions};
use crate::provenance::write_run_manifest;
use lus_data::splits::stratified_group_kfold;
use lus_train::SegRunConfig;

/// Sub-folder of the test outputs.
pub const TEST_DIR: &str = "test";

/// The test predictions inside [`TEST_DIR`] (see [`crate::predictions`]).
pub const PREDICTIONS_FILE: &str = "predictions.csv";

/// `experiment` reduced to one classification cell: the arm, its backbone's pretraining as
/// `backbone` (the config of the pretraining cell of the same arm and seed; `None` for a `none`
/// arm) has it, so a change there is a change here; the seeds set; the segmentation
/// evaluation (no classification number depends on it) and, for a `none` arm, the pretraining's
/// training settings (nothing is pretrained) at their defaults.
pub fn cls_cell_config(
    experiment: &ExperimentConfig,
    arm: &ArmConfig,
    backbone: Option<&ExperimentConfig>,
    seed: u64,
    fold: usize,
) -> ExperimentConfig {
    let mut cell = experiment.clone();
    match backbone {
        Some(backbone) => {
            cell.pretrain = backbone.pretrain.clone();
            cell.grid.pretrain = backbone.grid.pretrain.clone();
        }
        None => {
            cell.pretrain = SegRunConfig {
                unet: experiment.pretrain.unet.clone(),
                ..SegRunConfig::default()
            };
            cell.pretrain.train.seed = seed;
            cell.grid.pretrain = Vec::new();
        }
    }
    cell.recipes.clear();
    cell.dataset.sparse_width = DatasetConfig::default().sparse_width;
    cell.evaluation = EvaluationConfig::default();
    cell.grid.arms = vec![arm.clone()];
    // Which arms the report compares is no business of a cell.
    cell.grid.comparisons.clear();
    cell.grid.seeds = vec![seed];
    cell.grid.fold = Some(fold);
    cell.resolve_defaults();
    if let Some(classify) = cell.classify.as_mut() {
        classify.train.seed = seed;
    }
    cell
}

/// Roles of the pool's examples in cell `fold`: the examples of outer fold `fold` test; the
/// others are split again, the same stratified group way, into `inner_folds` parts (seeded by
/// `seed`, the split seed of the cell's grid seed, and the fold), of which part 0 validates and
/// the rest train.
pub fn roles(
    pool: &ClassifyPool,
    folds: &[usize],
    fold: usize,
    inner_folds: usize,
    seed: u64,
) -> anyhow::Result<(Vec<usize>, Vec<usize>, Vec<usize>)> {
    let (test, rest): (Vec<usize>, Vec<usize>) = (0..folds.len()).partition(|&i| folds[i] == fold);
    let labels: Vec<usize> = rest.iter().map(|&i| pool.labels[i]).collect();
    let groups: Vec<String> = rest.iter().map(|&i| pool.groups[i].clone()).collect();
    let inner = stratified_group_kfold(&labels, &groups, inner_folds, seed ^ (fold as u64 + 1))?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (&i, &part) in rest.iter().zip(&inner) {
        if part == 0 {
            val.push(i);
        } else {
            train.push(i);
        }
    }
    Ok((train, val, test))
}

/// Trains and tests one cell (skipped when complete, resumed when interrupted). A raised
/// `stop` ends the training with its checkpoint saved, as an error.
pub fn run_cls_cell(
    cell: &ExperimentConfig,
    pool: &ClassifyPool,
    folds: &[usize],
    backbone: Option<&Path>,
    data: &Dataset,
    dir: &Path,
    runner: &Runner<'_>,
) -> anyhow::Result<()> {
    let (quiet, stop) = (runner.quiet, runner.stop);
    let ([arm], [seed], Some(fold)) = (
        cell.grid.arms.as_slice(),
        cell.grid.seeds.as_slice(),
        cell.grid.fold,
    ) else {
        bail!("a classification cell has one arm, one seed and one fold");
    };
    let classify = cell
        .classify
        .as_ref()
        .context("a classification cell needs [classify]")?;
    let run = cell.arm_classifier(arm, classify)?;
    let Some(CellStart { clock }) = crate::cell::start(
        dir,
        cell,
        &[TEST_DIR, ADAPT_DIR],
        runner,
        "train-cls",
        *seed,
        run.train.device,
    )?
    else {
        return Ok(());
    };

    let (train, val, test) = roles(
        pool,
        folds,
        fold,
        cell.grid.inner_folds,
        cell.split_seed(*seed),
    )?;
    write_split(
        &dir.join("split.csv"),
        pool,
        [("train", &train), ("val", &val), ("test", &test)],
    )?;
    let subset = |indices: &[usize]| -> Arc<dyn lus_data::cls_loader::ClassificationSource> {
        Arc::new(ClassSubset {
            inner: pool.source.clone(),
            indices: indices.to_vec(),
        })
    };
    let names = pool.class_names.clone();
    let label = format!("{}/seed {seed}/fold {fold}", arm.name);
    // An arm with `real_unlabelled` starts from its pretrained U-Net adapted to this cell's
    // training frames.
    let adapted = match (&arm.real_unlabelled, backbone) {
        (Some(settings), Some(teacher)) => Some(adapt_backbone(
            cell,
            settings,
            pool,
            &adaptation_frames(&train),
            data,
            teacher,
            dir,
            runner,
        )?),
        _ => None,
    };
    let backbone_spec = match adapted.as_deref().or(backbone) {
        Some(path) => Backbone::Pretrained(path),
        None => Backbone::Fresh,
    };
    let summary = train_classifier(
        &run,
        &cell.pretrain.unet,
        backbone_spec,
        subset(&train),
        subset(&val),
        names.clone(),
        dir,
        Resume::IfPresent,
        |trainer| {
            let label = label.clone();
            trainer
                .with_stop_request(stop.clone())
                .with_progress_bar(!quiet)
                .on_epoch(move |r: &EpochRecord| {
                    if !quiet {
                        eprintln!(
                            "[{label}] epoch {:>3}: train_loss {:.4}  val_loss {:.4}  val_bal_acc {:.3}  val_auc {:.3}  {:.1} img/s",
                            r.epoch,
                            r.train_loss,
                            r.val_loss,
                            r.get("val_balanced_accuracy").unwrap_or(f64::NAN),
                            r.get("val_macro_auc").unwrap_or(f64::NAN),
                            r.images_per_s,
                        );
                    }
                })
        },
    )?;

    // The best checkpoint on the test fold.
    let device = run.train.device.open()?;
    let task = ClassificationTask::from_checkpoint(
        &cell.pretrain.unet,
        &run.classifier,
        names.clone(),
        &dir.join(BEST_CHECKPOINT),
        &device,
    )?;
    let loader = ClassificationLoader::new(
        subset(&test),
        run.loader_config(false),
        *seed,
        device.clone(),
        names.len(),
    )?;
    // Every test example: its pool index and probabilities (f32, as the model gave them).
    let mut tested: Vec<(usize, Vec<f32>)> = Vec::with_capacity(test.len());
    let mut truth = Vec::with_capacity(test.len());
    for batch in loader.epoch(0) {
        let batch = batch?;
        let probabilities = task.predict_proba(&batch.images)?;
        let labels = batch.labels.to_vec1::<u32>()?;
        for ((row, label), &local) in probabilities.into_iter().zip(labels).zip(&batch.indices) {
            tested.push((test[local], row));
            truth.push(label as usize);
        }
    }
    let rows: Vec<Vec<f64>> = tested
        .iter()
        .map(|(_, row)| row.iter().map(|&p| f64::from(p)).collect())
        .collect();
    let predictions = Predictions::from_rows(&truth, &rows)?;
    let rows: Vec<TestPrediction> = tested
        .iter()
        .zip(&truth)
        .zip(predictions.predicted())
        .map(|(((i, row), &label), predicted)| TestPrediction {
            index: *i,
            id: pool.ids[*i].clone(),
            clip: pool.clips[*i].clone(),
            group: pool.groups[*i].clone(),
            probe: pool.probes[*i],
            truth: label,
            predicted,
            probabilities: row.clone(),
        })
        .collect();
    let test_dir = dir.join(TEST_DIR);
    std::fs::create_dir_all(&test_dir)
        .with_context(|| format!("creating {}", test_dir.display()))?;
    write_predictions(&test_dir.join(PREDICTIONS_FILE), &names, &rows)?;
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut table = MetricsTable::new();
    let mut row = Row::new()
        .text("arm", arm.name.clone())
        .int("seed", *seed as i64)
        .int("fold", fold as i64)
        .int(
            "best_epoch",
            summary.best.as_ref().map_or(0, |b| b.epoch as i64),
        )
        .int("test_examples", truth.len() as i64);
    for (name, value) in predictions.metrics().named(&name_refs)? {
        row = row.float(&name, value);
    }
    table.push_row(row)?;
    table.write(
        &test_dir.join("metrics.csv"),
        &test_dir.join("metrics.parquet"),
    )?;
    let mut manifest = clock.finish();
    manifest.device = device_name(&device);
    manifest.peak_device_memory_mib = summary.peak_device_memory_mib;
    write_run_manifest(dir, &manifest)?;
    Ok(())
}

/// Writes `split.csv`: every example of the pool in a role, with its clip, fold group, probe
/// and label.
fn write_split(
    path: &Path,
    pool: &ClassifyPool,
    roles: [(&str, &Vec<usize>); 3],
) -> anyhow::Result<()> {
    lus_io::write_atomic_with(path, |file| {
        let mut writer = csv::Writer::from_writer(file);
        let mut write =
            |record: &[&str]| writer.write_record(record).map_err(std::io::Error::other);
        write(&["index", "id", "clip", "group", "probe", "label", "role"])?;
        for (role, indices) in roles {
            for &i in indices {
                write(&[
                    &i.to_string(),
                    &pool.ids[i],
                    &pool.clips[i],
                    &pool.groups[i],
                    pool.probes[i].as_str(),
                    &pool.class_names[pool.labels[i]],
                    role,
                ])?;
            }
        }
        writer.flush()
    })?;
    Ok(())
}

/// The folder of one classification cell.
pub fn cls_cell_dir(experiment: &ExperimentConfig, arm: &str, seed: u64, fold: usize) -> PathBuf {
    experiment
        .runs_root()
        .join("classify")
        .join(format!("{arm}-seed{seed}-fold{fold}"))
}
