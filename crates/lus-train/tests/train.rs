//! The training loop end to end on a tiny synthetic set (8 images of 32 px, a depth-2 U-Net
//! with 8 base channels): it learns, it is reproducible, it keeps the right best checkpoint,
//! it stops on a NaN, and it resumes bit for bit.

mod common;

use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use common::*;
use lus_data::loader::{SegBatch, epoch_batches_plan};
use lus_train::{
    Direction, LrSchedule, ParamGroup, Resume, SegEvaluation, SegmentationTask, Task, TrainConfig,
    TrainError, Trainer, evaluate,
};
use lus_unet::Mode;

#[test]
fn overfits_eight_images() {
    let examples = synthetic_examples(8, 1);
    let config = train_config(20, 7);
    let (train, val) = loaders(&config, source(&examples), source(&examples));
    let mut task = task(&config);
    let dir = tempfile::tempdir().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&logs);
    let mut trainer = Trainer::new(config, dir.path())
        .unwrap()
        .on_step(move |log| sink.lock().unwrap().push(log.clone()));
    let summary = trainer.fit(&mut task, &train, &val, Resume::Never).unwrap();

    let first = &summary.history[0];
    let last = summary.history.last().unwrap();
    for r in summary.history.iter().step_by(4) {
        eprintln!(
            "epoch {:2} step {:3}: train loss {:.4}, val loss {:.4}, pixel accuracy {:.4}, mIoU {:.4}",
            r.epoch,
            r.step,
            r.train_loss,
            r.val_loss,
            r.get("val_pixel_accuracy").unwrap(),
            r.get("val_miou").unwrap()
        );
    }
    // ln 3 = 1.10 for a uniform guess over 3 classes; the untrained net starts near it.
    assert!(
        first.train_loss > 0.5,
        "first epoch loss {}",
        first.train_loss
    );
    assert!(last.train_loss < 0.3, "last epoch loss {}", last.train_loss);
    let accuracy = last.get("val_pixel_accuracy").unwrap();
    assert!(accuracy > 0.9, "pixel accuracy {accuracy}");
    assert!(last.get("val_miou").unwrap() > 0.5);
    assert_eq!(last.step, 40, "8 images in batches of 4 for 20 epochs");

    // Losses are read back every log_every = 2 steps: one report per epoch of 2 steps.
    let logs = logs.lock().unwrap();
    assert_eq!(logs.len(), 20);
    assert!(logs.iter().all(|l| l.step % 2 == 0 && l.loss.is_finite()));

    // The table on disk has one row per epoch and the announced columns.
    let csv = String::from_utf8(read(&dir.path().join("metrics.csv"))).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(
        &header[..8],
        &[
            "epoch",
            "step",
            "lr",
            "train_loss",
            "val_loss",
            "val_pixel_accuracy",
            "val_miou",
            "val_mdice"
        ]
    );
    for class in class_names() {
        assert!(header.contains(&format!("val_iou_{class}").as_str()));
        assert!(header.contains(&format!("val_dice_{class}").as_str()));
    }
    assert_eq!(header[header.len() - 2..], ["images_per_s", "seconds"]);
    assert_eq!(csv.lines().count(), 21);
    assert!(dir.path().join("metrics.parquet").exists());
    assert!(dir.path().join("last/optimizer.safetensors").exists());
}

/// Runs `epochs` epochs of the tiny problem into `dir`.
fn run(
    config: &TrainConfig,
    dir: &std::path::Path,
    resume: Resume,
) -> lus_train::Result<lus_train::TrainSummary> {
    let examples = synthetic_examples(8, 1);
    let (train, val) = loaders(config, source(&examples[..6]), source(&examples[6..]));
    let mut task = task(config);
    Trainer::new(config.clone(), dir)?.fit(&mut task, &train, &val, resume)
}

#[test]
fn same_seed_gives_identical_tables_and_weights() {
    let config = TrainConfig {
        // Exercise every stream: schedule, clipping and augmentation-free shuffling.
        schedule: LrSchedule::Cosine {
            warmup_steps: 2,
            final_factor: 0.1,
        },
        grad_clip_norm: Some(1.0),
        ..train_config(3, 11)
    };
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let run_a = run(&config, a.path(), Resume::Never).unwrap();
    let run_b = run(&config, b.path(), Resume::Never).unwrap();
    assert_eq!(
        deterministic_columns(&run_a.history),
        deterministic_columns(&run_b.history)
    );
    assert_eq!(
        read(&a.path().join("last/model.safetensors")),
        read(&b.path().join("last/model.safetensors"))
    );
    assert_eq!(
        read(&a.path().join("last/optimizer.safetensors")),
        read(&b.path().join("last/optimizer.safetensors"))
    );
    let other_seed = tempfile::tempdir().unwrap();
    let run_c = run(
        &TrainConfig {
            seed: 12,
            ..config.clone()
        },
        other_seed.path(),
        Resume::Never,
    )
    .unwrap();
    assert_ne!(run_a.history[0].train_loss, run_c.history[0].train_loss);
}

#[test]
fn best_checkpoint_is_the_best_epoch() {
    for (metric, direction) in [("val_loss", Direction::Min), ("val_miou", Direction::Max)] {
        // A learning rate that grows 3x every epoch: the net first learns, then Adam's steps
        // become so large that it unlearns, so the best epoch lies inside the run.
        let config = TrainConfig {
            best_metric: Some(metric.to_string()),
            lr: 5e-3,
            schedule: LrSchedule::Step {
                every_epochs: 1,
                gamma: 3.0,
            },
            ..train_config(8, 5)
        };
        let examples = synthetic_examples(8, 1);
        let (train, val) = loaders(&config, source(&examples[..6]), source(&examples[6..]));
        // Group norm behaves the same in training and evaluation, so the validation metrics
        // follow what the net learns from the first epoch on (batch norm's running statistics
        // would make the first epochs' validation loss huge and hide the turn).
        let unet = lus_unet::UNetConfig {
            norm: lus_unet::Norm::Group { groups: 4 },
            ..unet_config()
        };
        let mut task = task_with(&config, &unet);
        let dir = tempfile::tempdir().unwrap();
        let summary = Trainer::new(config.clone(), dir.path())
            .unwrap()
            .fit(&mut task, &train, &val, Resume::Never)
            .unwrap();
        let values: Vec<f64> = summary
            .history
            .iter()
            .map(|r| r.get(metric).unwrap())
            .collect();
        eprintln!("{metric}: {values:?}");
        // The first epoch with the best value (ties keep the earlier one).
        let mut expected = 0;
        for (i, v) in values.iter().enumerate() {
            if direction.is_better(*v, values[expected]) {
                expected = i;
            }
        }
        // Not the first nor the last epoch, so the selection is really exercised.
        assert!(
            expected > 0 && expected + 1 < values.len(),
            "{metric}: best epoch {} of {values:?}",
            expected + 1
        );
        let best = summary.best.clone().unwrap();
        assert_eq!(best.epoch, expected + 1, "{metric}: {values:?}");
        assert_eq!(best.value.to_bits(), values[expected].to_bits());

        // Re-evaluating best.safetensors reproduces that epoch's row exactly, and differs
        // from the last epoch's.
        let fresh = task_with(&config, &unet);
        lus_unet::load_weights(fresh.varmap(), dir.path().join("best.safetensors")).unwrap();
        let (val_loss, metrics) = evaluate(&fresh, &val).unwrap();
        let row = &summary.history[expected];
        assert_eq!(val_loss.to_bits(), row.val_loss.to_bits(), "{metric}");
        assert_ne!(val_loss, summary.history.last().unwrap().val_loss);
        for (name, value) in metrics {
            assert_eq!(
                value.to_bits(),
                row.get(&format!("val_{name}")).unwrap().to_bits(),
                "{metric}: {name}"
            );
        }
        let info: serde_json::Value =
            serde_json::from_slice(&read(&dir.path().join("best.json"))).unwrap();
        assert_eq!(info["epoch"], serde_json::json!(expected + 1));
        assert_eq!(info["metric"], serde_json::json!(metric));
    }
}

/// A segmentation task whose training loss becomes NaN at one call.
struct PoisonedTask {
    inner: SegmentationTask,
    calls: usize,
    poison_at: usize,
}

impl Task for PoisonedTask {
    type Batch = SegBatch;
    type Evaluation = SegEvaluation;

    fn varmap(&self) -> &VarMap {
        self.inner.varmap()
    }

    fn param_groups(&self) -> lus_train::Result<Vec<ParamGroup>> {
        self.inner.param_groups()
    }

    fn train_loss(&mut self, batch: &SegBatch, mode: &mut Mode<'_>) -> lus_train::Result<Tensor> {
        self.calls += 1;
        let loss = self.inner.train_loss(batch, mode)?;
        if self.calls == self.poison_at {
            Ok(loss.affine(f64::NAN, 0.0)?)
        } else {
            Ok(loss)
        }
    }

    fn start_evaluation(&self) -> SegEvaluation {
        self.inner.start_evaluation()
    }

    fn evaluate_batch(
        &self,
        batch: &SegBatch,
        evaluation: &mut SegEvaluation,
    ) -> lus_train::Result<Tensor> {
        self.inner.evaluate_batch(batch, evaluation)
    }

    fn finish_evaluation(
        &self,
        evaluation: SegEvaluation,
    ) -> lus_train::Result<Vec<(String, f64)>> {
        self.inner.finish_evaluation(evaluation)
    }

    fn metric_names(&self) -> Vec<String> {
        self.inner.metric_names()
    }
}

#[test]
fn nan_loss_stops_the_run_naming_epoch_step_and_examples() {
    let config = TrainConfig {
        log_every: 3,
        ..train_config(5, 3)
    };
    let examples = synthetic_examples(8, 1);
    let (train, val) = loaders(&config, source(&examples), source(&examples));
    let mut task = PoisonedTask {
        inner: task(&config),
        calls: 0,
        poison_at: 5,
    };
    let dir = tempfile::tempdir().unwrap();
    let err = Trainer::new(config.clone(), dir.path())
        .unwrap()
        .fit(&mut task, &train, &val, Resume::Never)
        .unwrap_err();
    // Step 5 is the first step of epoch 3 (2 steps per epoch); it is read back at the end of
    // epoch 3's window, after step 6.
    let expected_indices = epoch_batches_plan(8, 4, true, false, config.seed, 2)[0].clone();
    let message = err.to_string();
    match err {
        TrainError::NonFiniteLoss(info) => {
            assert_eq!(info.epoch, 3);
            assert_eq!(info.step, 5);
            assert_eq!(info.indices, expected_indices);
            assert!(info.loss.is_nan());
            assert_eq!(info.last_good_checkpoint, Some(dir.path().join("last")));
        }
        other => panic!("expected NonFiniteLoss, got {other}"),
    }
    assert!(message.contains("epoch 3, step 5"), "{message}");
    assert!(
        message.contains(&format!("{expected_indices:?}")),
        "{message}"
    );
    // Nothing was written after the NaN: the last checkpoint and the table stop at epoch 2.
    let state: serde_json::Value =
        serde_json::from_slice(&read(&dir.path().join("last/trainer.json"))).unwrap();
    assert_eq!(state["epoch"], serde_json::json!(2));
    let csv = String::from_utf8(read(&dir.path().join("metrics.csv"))).unwrap();
    assert_eq!(csv.lines().count(), 3);
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let config = TrainConfig {
        schedule: LrSchedule::Step {
            every_epochs: 1,
            gamma: 0.7,
        },
        ..train_config(4, 21)
    };
    let whole = tempfile::tempdir().unwrap();
    let uninterrupted = run(&config, whole.path(), Resume::Never).unwrap();

    let split = tempfile::tempdir().unwrap();
    let first_half = TrainConfig {
        epochs: 2,
        ..config.clone()
    };
    run(&first_half, split.path(), Resume::IfPresent).unwrap();
    let resumed = run(&config, split.path(), Resume::IfPresent).unwrap();
    assert_eq!(resumed.resumed_after_epoch, 2);
    assert_eq!(
        deterministic_columns(&resumed.history),
        deterministic_columns(&uninterrupted.history)
    );
    for file in [
        "last/model.safetensors",
        "last/optimizer.safetensors",
        "best.safetensors",
    ] {
        assert_eq!(
            read(&whole.path().join(file)),
            read(&split.path().join(file)),
            "{file}"
        );
    }
    // A finished run is not trained again.
    let again = run(&config, split.path(), Resume::IfPresent).unwrap();
    assert_eq!(again.resumed_after_epoch, 4);
    assert_eq!(again.steps, uninterrupted.steps);

    // Another configuration does not resume this folder, and a fresh start refuses it.
    let changed = TrainConfig {
        lr: 5e-3,
        ..config.clone()
    };
    let err = run(&changed, split.path(), Resume::IfPresent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lr: 0.01 -> 0.005"), "{err}");
    let err = run(&config, split.path(), Resume::Never)
        .unwrap_err()
        .to_string();
    assert!(err.contains("earlier run"), "{err}");
}

#[test]
fn configuration_errors_are_reported_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let cuda = TrainConfig {
        device: lus_train::DeviceSpec::Cuda(0),
        ..train_config(1, 0)
    };
    if !lus_train::device::CUDA_COMPILED {
        let err = Trainer::new(cuda, dir.path()).err().unwrap().to_string();
        assert!(err.contains("`cuda` feature"), "{err}");
    }
    let typo = TrainConfig {
        best_metric: Some("val_mIoU".to_string()),
        ..train_config(1, 0)
    };
    let err = run(&typo, dir.path(), Resume::Never)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("val_mIoU") && err.contains("val_miou"),
        "{err}"
    );
    assert!(!dir.path().join("last").exists());
}

#[test]
fn labels_outside_the_classes_are_an_error_naming_the_example() {
    let mut examples = synthetic_examples(4, 2);
    examples[3].1.set(5, 6, 7);
    let config = train_config(1, 0);
    let (train, val) = loaders(&config, source(&examples[..2]), source(&examples[2..]));
    let mut task = task(&config);
    let dir = tempfile::tempdir().unwrap();
    let err = Trainer::new(config, dir.path())
        .unwrap()
        .fit(&mut task, &train, &val, Resume::Never)
        .unwrap_err()
        .to_string();
    // Validation example 1 of the validation source, pixel (5, 6) = 6 * 32 + 5.
    assert!(
        err.contains("source example 1") && err.contains("label 7") && err.contains("pixel 197"),
        "{err}"
    );
}

#[test]
fn predictions_have_the_input_size() {
    let config = train_config(1, 0);
    let task = task(&config);
    let images = Tensor::zeros(
        (2, 1, SIDE as usize, SIDE as usize),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let pred = task.predict(&images).unwrap();
    assert_eq!(pred.dims(), &[2, SIDE as usize, SIDE as usize]);
}
