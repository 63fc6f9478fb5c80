//! Adapting a pretrained U-Net to real frames before it becomes a classifier: the
//! `real_unlabelled` setting of a classifier arm ([`RealUnlabelled`]).
//!
//! In a classification cell of such an arm, the arm's pretrained U-Net is the teacher: it
//! pseudo-labels the cell's **training** frames (class-balanced self-training, see
//! [`lus_train::self_training`]); a student starting from the same weights trains on those
//! frames mixed with labelled scanner frames; the student after its last epoch is the
//! classifier's backbone. The adaptation set is chosen per cell because every real frame is in
//! some cell's test fold: it is never the cell's test fold, nor its validation part
//! ([`adaptation_frames`]; `frames.csv` lists it, so a reader can check it against
//! `split.csv`).
//!
//! The student's last epoch is kept, not its best: nothing labels the real frames, so no
//! validation can say which epoch adapted best, and the scanner validation set (which the
//! trainer still scores every epoch, in `metrics.csv`, to show what the student kept of the
//! scanner) would favour the epoch that moved least.
//!
//! # Folder `<cell>/adapt/`
//!
//! | file | |
//! |---|---|
//! | `frames.csv` | the adaptation set: pool index, id, clip, fold group of every real frame |
//! | `pseudo_labels.csv` | per class: pixels the teacher assigned to it, its confidence threshold, pixels kept |
//! | `best.safetensors`, `last/`, `metrics.{csv,parquet}` | the student's trainer (validated on the scanner's validation set) |
//! | `config.resolved.toml` | the teacher's pretraining cell config (network and preprocessing: `lus segment --weights <cell>/adapt/adapted.safetensors` reads it) |
//! | `adapted.safetensors` | the student after its last epoch, the backbone; written last, so its presence marks the adaptation done |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use image::GrayImage;
use lus_data::loader::{ConcatSource, InMemorySource, SegmentationSource, SubsetSource};
use lus_train::self_training::{PseudoClass, pseudo_label};
use lus_train::trainer::{EpochRecord, LAST_CHECKPOINT_DIR, MODEL_FILE, Resume};
use lus_train::{LrSchedule, SegModel, train_segmentation_from};
use rayon::prelude::*;

use crate::cell::Runner;
use crate::config::{ExperimentConfig, RealUnlabelled};
use crate::dataset::{ClassifyPool, Dataset};

/// Sub-folder of a classification cell that holds its adaptation.
pub const ADAPT_DIR: &str = "adapt";
/// The adapted U-Net inside [`ADAPT_DIR`].
pub const ADAPTED_WEIGHTS: &str = "adapted.safetensors";
/// The ignore id of pseudo-labels when the pretraining's loss has none.
pub const DEFAULT_PSEUDO_IGNORE_ID: u8 = 255;

/// The pool examples a cell adapts to: its training frames (`train` of
/// [`crate::cls_cell::roles`]), so neither a test clip nor a validation clip is ever in it.
pub fn adaptation_frames(train: &[usize]) -> Vec<usize> {
    train.to_vec()
}

/// Adapts `teacher` (a pretraining cell's best checkpoint) to the pool examples `frames` by
/// self-training into `<cell_dir>/adapt/` (resumed when interrupted, skipped when done) and
/// returns the adapted weights. `cell` is the classification cell's config: its `pretrain`
/// and `grid.pretrain` are the teacher's.
#[allow(clippy::too_many_arguments)]
pub fn adapt_backbone(
    cell: &ExperimentConfig,
    settings: &RealUnlabelled,
    pool: &ClassifyPool,
    frames: &[usize],
    data: &Dataset,
    teacher: &Path,
    cell_dir: &Path,
    runner: &Runner<'_>,
) -> anyhow::Result<PathBuf> {
    let dir = cell_dir.join(ADAPT_DIR);
    let adapted = dir.join(ADAPTED_WEIGHTS);
    if adapted.is_file() {
        return Ok(adapted);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    lus_io::remove_stale_temp_files(&dir)?;
    write_frames(&dir.join("frames.csv"), pool, frames)?;
    let [arm] = cell.grid.pretrain.as_slice() else {
        anyhow::bail!("an adapted arm's cell names exactly one pretraining arm");
    };
    let recipe = cell.recipe(&arm.recipe)?;

    let mut run = cell.pretrain.clone();
    run.train.epochs = settings.epochs;
    run.train.lr *= settings.lr_factor;
    run.train.schedule = LrSchedule::Constant;
    let ignore_id = *run
        .train
        .loss
        .ignore_id
        .get_or_insert(DEFAULT_PSEUDO_IGNORE_ID);
    let device = run.train.device.open()?;

    let images: Vec<GrayImage> = frames
        .par_iter()
        .map(|&i| pool.source.load(i).map(|(image, _)| image))
        .collect::<Result<_, _>>()?;
    let model = SegModel::load(&run.unet, teacher, &device)
        .with_context(|| format!("the teacher {}", teacher.display()))?;
    let pseudo = pseudo_label(
        &model,
        &images,
        &run.data,
        run.train.batch_size,
        ignore_id,
        &settings.pseudo_label_config(),
        &device,
    )?;
    drop(model);
    let names = crate::seg_cell::class_names(&data.schema);
    write_pseudo_classes(&dir.join("pseudo_labels.csv"), &names, &pseudo.classes)?;

    let scanner = data.train.labels(&recipe)?;
    let mixed = ((settings.scanner_per_real * pseudo.examples.len() as f32).round() as usize)
        .min(scanner.len());
    // The first scanner samples: they are independent draws, so any `mixed` of them are a
    // random sample of the scanner's training set.
    let train: Arc<dyn SegmentationSource> = Arc::new(ConcatSource(vec![
        Arc::new(InMemorySource(pseudo.examples)),
        Arc::new(SubsetSource {
            inner: scanner,
            indices: (0..mixed).collect(),
        }),
    ]));
    let label = format!(
        "{} adapting {}",
        cell.grid.arms.first().map_or("arm", |a| a.name.as_str()),
        arm.name
    );
    let (quiet, stop) = (runner.quiet, runner.stop.clone());
    train_segmentation_from(
        &run,
        Some(teacher),
        train,
        data.val.labels(&recipe)?,
        names,
        &dir,
        Resume::IfPresent,
        |trainer| {
            trainer
                .with_stop_request(stop)
                .with_progress_bar(!quiet)
                .on_epoch(move |r: &EpochRecord| {
                    if !quiet {
                        eprintln!(
                            "[{label}] epoch {:>3}: train_loss {:.4}  scanner val_miou {:.4}",
                            r.epoch,
                            r.train_loss,
                            r.get("val_miou").unwrap_or(f64::NAN),
                        );
                    }
                })
        },
    )?;
    let teacher_config = teacher
        .parent()
        .map(|d| d.join(crate::config::RESOLVED_CONFIG_FILE))
        .context("the teacher's weights have no folder")?;
    let text = lus_io::read_text(&teacher_config)?;
    lus_io::write_atomic(
        &dir.join(crate::config::RESOLVED_CONFIG_FILE),
        text.as_bytes(),
    )?;
    let last = dir.join(LAST_CHECKPOINT_DIR).join(MODEL_FILE);
    let bytes = lus_io::read_file(&last)?;
    lus_io::write_atomic(&adapted, &bytes)?;
    Ok(adapted)
}

/// `frames.csv`: the adaptation set.
fn write_frames(path: &Path, pool: &ClassifyPool, frames: &[usize]) -> anyhow::Result<()> {
    lus_io::write_atomic_with(path, |file| {
        let mut writer = csv::Writer::from_writer(file);
        let mut write =
            |record: &[&str]| writer.write_record(record).map_err(std::io::Error::other);
        write(&["index", "id", "clip", "group"])?;
        for &i in frames {
            write(&[
                &i.to_string(),
                &pool.ids[i],
                &pool.clips[i],
                &pool.groups[i],
            ])?;
        }
        writer.flush()
    })?;
    Ok(())
}

/// `pseudo_labels.csv`: what the teacher said, class by class.
fn write_pseudo_classes(
    path: &Path,
    names: &[String],
    classes: &[PseudoClass],
) -> anyhow::Result<()> {
    lus_io::write_atomic_with(path, |file| {
        let mut writer = csv::Writer::from_writer(file);
        let mut write =
            |record: &[String]| writer.write_record(record).map_err(std::io::Error::other);
        write(&[
            "class".into(),
            "predicted_pixels".into(),
            "threshold".into(),
            "kept_pixels".into(),
            "kept_share".into(),
        ])?;
        for c in classes {
            let share = if c.predicted > 0 {
                format!("{:.4}", c.kept as f64 / c.predicted as f64)
            } else {
                String::new()
            };
            write(&[
                names
                    .get(c.class)
                    .cloned()
                    .unwrap_or_else(|| c.class.to_string()),
                c.predicted.to_string(),
                c.threshold.map_or(String::new(), |t| format!("{t:.4}")),
                c.kept.to_string(),
                share,
            ])?;
        }
        writer.flush()
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cls_cell::roles;
    use proptest::prelude::*;

    /// A pool of clips given as (label, frames); clips `2k` and `2k + 1` are one patient's, as
    /// in POCUS, where a patient's clips share a fold group.
    fn pool_of_clips(clips: &[(usize, usize)]) -> ClassifyPool {
        let mut pool = ClassifyPool::empty(0, "test".into());
        for (k, &(label, frames)) in clips.iter().enumerate() {
            for f in 0..frames {
                pool.ids.push(format!("c{k}-{f}"));
                pool.clips.push(format!("c{k}"));
                pool.groups.push(format!("patient{}", k / 2));
                pool.labels.push(label);
                pool.probes.push(lus_data::Probe::Convex);
            }
        }
        pool
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

        /// Whatever the pool, folds and seed: no clip and no fold group of a cell's adaptation
        /// set is in its test fold or its validation part.
        #[test]
        fn no_test_or_validation_clip_is_ever_adapted_to(
            clips in proptest::collection::vec((0usize..3, 1usize..5), 12..30),
            folds in 2usize..5,
            seed in 0u64..1000,
        ) {
            let pool = pool_of_clips(&clips);
            let outer = lus_data::splits::stratified_group_kfold(
                &pool.labels, &pool.groups, folds, seed,
            ).unwrap();
            for fold in 0..folds {
                let (train, val, test) = roles(&pool, &outer, fold, 2, seed).unwrap();
                let adapted = adaptation_frames(&train);
                let held_out: std::collections::HashSet<&String> =
                    test.iter().chain(&val).map(|&i| &pool.clips[i]).collect();
                let held_out_groups: std::collections::HashSet<&String> =
                    test.iter().chain(&val).map(|&i| &pool.groups[i]).collect();
                for &i in &adapted {
                    prop_assert!(!held_out.contains(&pool.clips[i]), "clip {}", pool.clips[i]);
                    prop_assert!(!held_out_groups.contains(&pool.groups[i]));
                }
                prop_assert_eq!(adapted.len() + val.len() + test.len(), pool.labels.len());
            }
        }
    }
}
