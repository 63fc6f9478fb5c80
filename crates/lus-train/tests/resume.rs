//! Exact resume, stop requests and the failure policy of the training loop: a run stopped or
//! crashed at several points, inside epochs and at their ends, and resumed each time ends
//! bit-identical to an uninterrupted one (segmentation and classification, with augmentation,
//! dropout and a step-dependent learning rate); a non-finite gradient stops the run naming the
//! variable and keeps the last good checkpoint; an unwritable checkpoint folder is a clear error.

mod common;

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use common::*;
use image::GrayImage;
use lus_data::augment::{AugmentConfig, Normalize};
use lus_data::cls_loader::{ClassificationLoader, InMemoryClassSource};
use lus_data::loader::{LoaderConfig, SegmentationLoader, epoch_batches_plan};
use lus_train::{
    Backbone, BatchSource, ClassificationTask, LrSchedule, ParamGroup, Resume, StopRequest, Task,
    TrainConfig, TrainError, TrainSummary, Trainer,
};
use lus_transfer::ClassifierConfig;
use lus_unet::{Mode, UNetConfig};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A task that can raise a stop request, fail (as a crash would end the process), or poison
/// one variable's gradient at given calls of `train_loss` (counted from 1 in this process).
struct Hooked<T> {
    inner: T,
    calls: usize,
    stop: StopRequest,
    stop_at: Option<usize>,
    fail_at: Option<usize>,
    poison: Option<(usize, String)>,
}

impl<T> Hooked<T> {
    fn new(inner: T) -> Self {
        Hooked {
            inner,
            calls: 0,
            stop: StopRequest::new(),
            stop_at: None,
            fail_at: None,
            poison: None,
        }
    }
}

impl<T: Task> Task for Hooked<T> {
    type Batch = T::Batch;
    type Evaluation = T::Evaluation;

    fn varmap(&self) -> &VarMap {
        self.inner.varmap()
    }

    fn param_groups(&self) -> lus_train::Result<Vec<ParamGroup>> {
        self.inner.param_groups()
    }

    fn train_loss(&mut self, batch: &T::Batch, mode: &mut Mode<'_>) -> lus_train::Result<Tensor> {
        self.calls += 1;
        if self.fail_at == Some(self.calls) {
            return Err(TrainError::Batch("simulated crash".into()));
        }
        if self.stop_at == Some(self.calls) {
            // Raised while the step runs, as a signal would be: the step still finishes.
            self.stop.raise(15);
        }
        let loss = self.inner.train_loss(batch, mode)?;
        match &self.poison {
            Some((at, name)) if *at == self.calls => {
                // sqrt(v - v) is 0 going forward, so the loss stays finite, but its gradient
                // is inf - inf = NaN for v.
                let var = self.varmap().data().lock().unwrap()[name]
                    .as_tensor()
                    .clone();
                let zero = var.sub(&var)?.sqrt()?.sum_all()?;
                Ok(loss.add(&zero)?)
            }
            _ => Ok(loss),
        }
    }

    fn start_evaluation(&self) -> T::Evaluation {
        self.inner.start_evaluation()
    }

    fn evaluate_batch(
        &self,
        batch: &T::Batch,
        evaluation: &mut T::Evaluation,
    ) -> lus_train::Result<Tensor> {
        self.inner.evaluate_batch(batch, evaluation)
    }

    fn finish_evaluation(
        &self,
        evaluation: T::Evaluation,
    ) -> lus_train::Result<Vec<(String, f64)>> {
        self.inner.finish_evaluation(evaluation)
    }

    fn metric_names(&self) -> Vec<String> {
        self.inner.metric_names()
    }
}

/// What one process of a run does before it ends.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// Trains to the end.
    Complete,
    /// A stop request raised during its `n`-th step.
    StopDuring(usize),
    /// Its `n`-th step fails before any update (the process dies there).
    CrashAt(usize),
}

impl<T> Hooked<T> {
    fn ending(mut self, ending: Ending) -> Self {
        match ending {
            Ending::Complete => {}
            Ending::StopDuring(n) => self.stop_at = Some(n),
            Ending::CrashAt(n) => self.fail_at = Some(n),
        }
        self
    }
}

/// Checks how one process of an interrupted run ended; returns the summary of a completed one.
fn check_ending(
    result: lus_train::Result<TrainSummary>,
    ending: Ending,
    dir: &Path,
) -> Option<TrainSummary> {
    match (ending, result) {
        (Ending::Complete, Ok(summary)) => Some(summary),
        (Ending::StopDuring(_), Err(TrainError::Interrupted(info))) => {
            assert_eq!(info.signal, 15);
            assert_eq!(info.checkpoint.as_deref(), Some(dir.join("last").as_path()));
            let message = info.to_string();
            assert!(
                message.contains("SIGTERM") && message.contains("run the same command again"),
                "{message}"
            );
            None
        }
        (Ending::CrashAt(_), Err(TrainError::Batch(reason))) => {
            assert_eq!(reason, "simulated crash");
            None
        }
        (ending, Ok(_)) => panic!("{ending:?}: the run completed"),
        (ending, Err(e)) => panic!("{ending:?}: {e}"),
    }
}

fn trainer_state(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(&dir.join("last/trainer.json"))).unwrap()
}

/// The files of two run folders that must be byte-identical (everything but the trainer state,
/// which holds the machine-dependent timing columns).
fn assert_same_outputs(a: &Path, b: &Path) {
    for file in [
        "best.safetensors",
        "best.json",
        "last/model.safetensors",
        "last/optimizer.safetensors",
        "last/optimizer.json",
    ] {
        assert!(read(&a.join(file)) == read(&b.join(file)), "{file} differs");
    }
    let table = |dir: &Path| -> Vec<Vec<String>> {
        let text = String::from_utf8(read(&dir.join("metrics.csv"))).unwrap();
        let rows: Vec<Vec<String>> = text
            .lines()
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect();
        let keep: Vec<usize> = (0..rows[0].len())
            .filter(|&i| !matches!(rows[0][i].as_str(), "images_per_s" | "seconds"))
            .collect();
        rows.iter()
            .map(|r| keep.iter().map(|&i| r[i].clone()).collect())
            .collect()
    };
    assert_eq!(table(a), table(b), "metrics.csv");
}

// --- segmentation ------------------------------------------------------------------------

/// 10 training images in batches of 4 (3 batches per epoch, the last one of 2), 3 epochs, a
/// warm-up + cosine schedule (the rate depends on the step), dropout and augmentation (random
/// draws keyed by epoch and step or example).
fn seg_config() -> TrainConfig {
    TrainConfig {
        schedule: LrSchedule::Cosine {
            warmup_steps: 2,
            final_factor: 0.1,
        },
        log_every: 4,
        ..train_config(3, 13)
    }
}

fn seg_unet() -> UNetConfig {
    UNetConfig {
        dropout: 0.2,
        ..unet_config()
    }
}

fn seg_loaders(config: &TrainConfig) -> (SegmentationLoader, SegmentationLoader) {
    let examples = synthetic_examples(14, 4);
    let make = |examples: &[(lus_data::Mask, lus_data::Mask)], training: bool| {
        SegmentationLoader::new(
            source(examples),
            LoaderConfig {
                batch_size: config.batch_size,
                size: SIDE,
                shuffle: training,
                drop_last: false,
                prefetch: 2,
                augment: training.then(AugmentConfig::default),
                normalize: Normalize::PerImage,
            },
            config.seed,
            Device::Cpu,
        )
        .unwrap()
    };
    (make(&examples[..10], true), make(&examples[10..], false))
}

/// One process of a segmentation run in `dir`.
fn seg_process(config: &TrainConfig, dir: &Path, ending: Ending) -> Option<TrainSummary> {
    let (train, val) = seg_loaders(config);
    let mut task = Hooked::new(task_with(config, &seg_unet())).ending(ending);
    let result = Trainer::new(config.clone(), dir)
        .unwrap()
        .with_stop_request(task.stop.clone())
        .fit(&mut task, &train, &val, Resume::IfPresent);
    check_ending(result, ending, dir)
}

#[test]
fn a_segmentation_run_stopped_and_crashed_inside_epochs_resumes_bit_identical() {
    let config = seg_config();
    let whole = tempfile::tempdir().unwrap();
    let uninterrupted = seg_process(&config, whole.path(), Ending::Complete).unwrap();
    assert_eq!(uninterrupted.steps, 9);

    // The same run in five processes, with mid-epoch checkpoints every 2 steps and another
    // log interval (neither changes what is computed).
    let split = tempfile::tempdir().unwrap();
    let dir = split.path();
    let interrupted = TrainConfig {
        checkpoint_every_steps: 2,
        log_every: 1,
        ..config.clone()
    };
    // Stopped during step 2: saved inside epoch 1, after its second batch.
    seg_process(&interrupted, dir, Ending::StopDuring(2));
    let state = trainer_state(dir);
    assert_eq!(state["format"], "lus-trainer-v2");
    assert_eq!(state["epoch"], 0);
    assert_eq!(state["step"], 2);
    assert_eq!(state["partial"]["epoch"], 1);
    assert_eq!(state["partial"]["batches_done"], 2);
    assert_eq!(
        state["partial"]["loss_weight"], 8,
        "two batches of 4 examples"
    );
    // Stopped during step 3, the last batch of epoch 1: saved before its validation.
    seg_process(&interrupted, dir, Ending::StopDuring(1));
    let state = trainer_state(dir);
    assert_eq!(
        (state["epoch"].as_u64(), state["step"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(state["partial"]["batches_done"], 3);
    // Crashed in step 7 (epoch 3, batch 1): the last checkpoint is epoch 2's end (step 6).
    seg_process(&interrupted, dir, Ending::CrashAt(4));
    let state = trainer_state(dir);
    assert_eq!(
        (state["epoch"].as_u64(), state["step"].as_u64()),
        (Some(2), Some(6))
    );
    assert!(state.get("partial").is_none(), "an epoch-end checkpoint");
    // Crashed in step 9: the periodic checkpoint of step 8, inside epoch 3, is the last.
    seg_process(&interrupted, dir, Ending::CrashAt(3));
    let state = trainer_state(dir);
    assert_eq!(
        (state["epoch"].as_u64(), state["step"].as_u64()),
        (Some(2), Some(8))
    );
    assert_eq!(state["partial"]["batches_done"], 2);
    let resumed = seg_process(&interrupted, dir, Ending::Complete).unwrap();
    assert_eq!(
        (resumed.resumed_after_epoch, resumed.resumed_at_step),
        (2, 8)
    );

    assert_eq!(
        deterministic_columns(&resumed.history),
        deterministic_columns(&uninterrupted.history)
    );
    assert_eq!(resumed.best, uninterrupted.best);
    assert_same_outputs(whole.path(), dir);
    assert!(trainer_state(dir).get("partial").is_none());
}

#[test]
fn a_stop_requested_before_training_writes_nothing() {
    let config = seg_config();
    let (train, val) = seg_loaders(&config);
    let mut task = task_with(&config, &seg_unet());
    let dir = tempfile::tempdir().unwrap();
    let stop = StopRequest::new();
    stop.raise(2);
    let err = Trainer::new(config, dir.path())
        .unwrap()
        .with_stop_request(stop)
        .fit(&mut task, &train, &val, Resume::IfPresent)
        .unwrap_err();
    match err {
        TrainError::Interrupted(info) => {
            assert_eq!(
                (info.signal, info.step, info.checkpoint.clone()),
                (2, 0, None)
            );
            assert_eq!(info.signal_name(), "SIGINT");
        }
        other => panic!("expected Interrupted, got {other}"),
    }
    assert!(!dir.path().join("last").exists());
}

// --- classification ----------------------------------------------------------------------

/// Speckle (class 0), a bright horizontal line (1) or a bright vertical band (2).
fn cls_examples(count: usize, seed: u64) -> Arc<InMemoryClassSource> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = (0..count)
        .map(|i| {
            let class = i % 3;
            let at = rng.random_range(6..SIDE - 6);
            let image = GrayImage::from_fn(SIDE, SIDE, |x, y| {
                let noise: u8 = rng.random_range(0..60);
                let on = match class {
                    1 => (at..at + 2).contains(&y),
                    2 => (at..at + 3).contains(&x),
                    _ => false,
                };
                image::Luma([if on { 200 + noise / 2 } else { noise }])
            });
            (image, class)
        })
        .collect();
    Arc::new(InMemoryClassSource(data))
}

fn cls_loader(source: Arc<InMemoryClassSource>, seed: u64, training: bool) -> ClassificationLoader {
    ClassificationLoader::new(
        source,
        LoaderConfig {
            batch_size: 4,
            size: SIDE,
            shuffle: training,
            drop_last: false,
            prefetch: 1,
            augment: training.then(AugmentConfig::default),
            normalize: Normalize::PerImage,
        },
        seed,
        Device::Cpu,
        3,
    )
    .unwrap()
}

fn cls_process(config: &TrainConfig, dir: &Path, ending: Ending) -> Option<TrainSummary> {
    let unet = UNetConfig {
        num_classes: 4,
        depth: 2,
        base_channels: 4,
        ..UNetConfig::default()
    };
    let classifier = ClassifierConfig {
        head_channels: 8,
        head_dropout: 0.3,
        ..ClassifierConfig::default()
    };
    let names = ["healthy", "a", "b"].map(String::from).to_vec();
    let inner = ClassificationTask::new(
        &unet,
        &classifier,
        Backbone::Fresh,
        names,
        None,
        &Device::Cpu,
        config.seed,
    )
    .unwrap();
    let mut task = Hooked::new(inner).ending(ending);
    let train = cls_loader(cls_examples(11, 1), config.seed, true);
    let val = cls_loader(cls_examples(6, 2), config.seed, false);
    let result = Trainer::new(config.clone(), dir)
        .unwrap()
        .with_stop_request(task.stop.clone())
        .fit(&mut task, &train, &val, Resume::IfPresent);
    check_ending(result, ending, dir)
}

#[test]
fn a_classification_run_stopped_inside_epochs_resumes_bit_identical() {
    let config = TrainConfig {
        epochs: 3,
        batch_size: 4,
        lr: 0.01,
        schedule: LrSchedule::Cosine {
            warmup_steps: 1,
            final_factor: 0.0,
        },
        grad_clip_norm: Some(1.0),
        device: lus_train::DeviceSpec::Cpu,
        seed: 5,
        best_metric: Some("val_balanced_accuracy".into()),
        log_every: 2,
        ..TrainConfig::default()
    };
    let whole = tempfile::tempdir().unwrap();
    let uninterrupted = cls_process(&config, whole.path(), Ending::Complete).unwrap();
    assert_eq!(
        uninterrupted.steps, 9,
        "11 examples in batches of 4, 3 epochs"
    );

    let split = tempfile::tempdir().unwrap();
    let dir = split.path();
    // Stopped in epoch 1 (step 2), then in epoch 2 (step 4), then run to the end.
    cls_process(&config, dir, Ending::StopDuring(2));
    assert_eq!(trainer_state(dir)["partial"]["batches_done"], 2);
    cls_process(&config, dir, Ending::StopDuring(2));
    assert_eq!(trainer_state(dir)["partial"]["batches_done"], 1);
    let resumed = cls_process(&config, dir, Ending::Complete).unwrap();
    assert_eq!(resumed.resumed_at_step, 4);
    assert_eq!(
        deterministic_columns(&resumed.history),
        deterministic_columns(&uninterrupted.history)
    );
    assert_same_outputs(whole.path(), dir);
}

#[test]
fn loaders_resume_inside_an_epoch_with_the_same_batches() {
    let config = seg_config();
    let (seg, _) = seg_loaders(&config);
    let cls = cls_loader(cls_examples(11, 1), 5, true);
    fn batches<S: BatchSource + ?Sized>(
        source: &S,
        epoch: u64,
        first: usize,
        tensors: impl Fn(&S::Batch) -> Vec<Tensor>,
    ) -> Vec<(Vec<usize>, Vec<Vec<u32>>)> {
        source
            .epoch_from(epoch, first)
            .map(|b| {
                let b = b.unwrap();
                let bits = tensors(&b)
                    .iter()
                    .map(|t| {
                        let t = t.flatten_all().unwrap();
                        match t.dtype() {
                            candle_core::DType::F32 => t
                                .to_vec1::<f32>()
                                .unwrap()
                                .iter()
                                .map(|v| v.to_bits())
                                .collect(),
                            _ => t.to_vec1::<u32>().unwrap(),
                        }
                    })
                    .collect();
                (lus_train::TaskBatch::indices(&b).to_vec(), bits)
            })
            .collect()
    }
    for epoch in [0, 2] {
        let all = batches(&seg, epoch, 0, |b| vec![b.images.clone(), b.masks.clone()]);
        assert_eq!(all.len(), 3);
        assert_eq!(
            all.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(),
            epoch_batches_plan(10, 4, true, false, config.seed, epoch)
        );
        for first in 1..=3 {
            let from = batches(&seg, epoch, first, |b| {
                vec![b.images.clone(), b.masks.clone()]
            });
            assert_eq!(from, all[first..], "epoch {epoch}, from batch {first}");
        }
        let all = batches(&cls, epoch, 0, |b| vec![b.images.clone(), b.labels.clone()]);
        let from = batches(&cls, epoch, 2, |b| vec![b.images.clone(), b.labels.clone()]);
        assert_eq!(from, all[2..]);
    }
}

// --- failure policy ----------------------------------------------------------------------

#[test]
fn a_non_finite_gradient_stops_the_run_naming_the_variable_and_keeps_the_last_checkpoint() {
    let config = TrainConfig {
        checkpoint_every_steps: 2,
        log_every: 4,
        ..seg_config()
    };
    let (train, val) = seg_loaders(&config);
    let mut task = Hooked::new(task_with(&config, &seg_unet()));
    let mut names: Vec<String> = task
        .varmap()
        .data()
        .lock()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    names.sort();
    let poisoned = names.iter().find(|n| n.contains("weight")).unwrap().clone();
    // Step 5: epoch 2, its second batch; the checkpoint of step 4 is the last good one.
    task.poison = Some((5, poisoned.clone()));
    let dir = tempfile::tempdir().unwrap();
    let err = Trainer::new(config.clone(), dir.path())
        .unwrap()
        .fit(&mut task, &train, &val, Resume::Never)
        .unwrap_err();
    let message = err.to_string();
    let expected_indices = epoch_batches_plan(10, 4, true, false, config.seed, 1)[1].clone();
    match err {
        TrainError::NonFiniteGradient(info) => {
            assert_eq!((info.epoch, info.step), (2, 5));
            assert_eq!(info.indices, expected_indices);
            assert_eq!(info.variables, vec![poisoned.clone()]);
            assert_eq!(info.last_good_checkpoint, Some(dir.path().join("last")));
        }
        other => panic!("expected NonFiniteGradient, got {other}"),
    }
    assert!(
        message.contains(&poisoned)
            && message.contains("epoch 2, step 5")
            && message.contains(&format!("{expected_indices:?}")),
        "{message}"
    );
    let state = trainer_state(dir.path());
    assert_eq!(
        (state["epoch"].as_u64(), state["step"].as_u64()),
        (Some(1), Some(4))
    );
    let saved =
        candle_core::safetensors::load(dir.path().join("last/model.safetensors"), &Device::Cpu)
            .unwrap();
    for (name, tensor) in saved {
        let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{name} in last/");
    }
    // The run resumes from there (the poison was one batch's).
    let mut clean = task_with(&config, &seg_unet());
    let summary = Trainer::new(config.clone(), dir.path())
        .unwrap()
        .fit(&mut clean, &train, &val, Resume::IfPresent)
        .unwrap();
    assert_eq!((summary.resumed_at_step, summary.steps), (4, 9));
}

#[test]
fn an_unwritable_checkpoint_folder_is_a_clear_error_and_nothing_is_replaced() {
    let config = TrainConfig {
        epochs: 1,
        ..seg_config()
    };
    let (train, val) = seg_loaders(&config);
    let dir = tempfile::tempdir().unwrap();

    // The run folder's parent is a file.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"keep").unwrap();
    let mut task = task_with(&config, &seg_unet());
    let err = Trainer::new(config.clone(), file.join("run"))
        .unwrap()
        .fit(&mut task, &train, &val, Resume::IfPresent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&file.join("run").display().to_string()),
        "{err}"
    );
    assert_eq!(read(&file), b"keep");

    // `last` is a file: refused before training, the file untouched.
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("last"), b"not a checkpoint").unwrap();
    let err = Trainer::new(config.clone(), &run)
        .unwrap()
        .fit(&mut task, &train, &val, Resume::IfPresent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&run.join("last").display().to_string()) && err.contains("not a folder"),
        "{err}"
    );
    assert_eq!(read(&run.join("last")), b"not a checkpoint");
    let names: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["last"], "nothing else was written");
}

#[test]
fn checkpoints_of_another_data_size_or_an_older_format_are_handled() {
    let config = TrainConfig {
        epochs: 1,
        ..seg_config()
    };
    let dir = tempfile::tempdir().unwrap();
    seg_process(&config, dir.path(), Ending::Complete);
    // An epoch-end checkpoint of an earlier build (format v1, no partial epoch) resumes.
    let path = dir.path().join("last/trainer.json");
    let text = String::from_utf8(read(&path)).unwrap();
    std::fs::write(&path, text.replace("lus-trainer-v2", "lus-trainer-v1")).unwrap();
    let two = TrainConfig {
        epochs: 2,
        ..config.clone()
    };
    let summary = seg_process(&two, dir.path(), Ending::Complete).unwrap();
    assert_eq!((summary.resumed_after_epoch, summary.steps), (1, 6));

    // Another number of batches per epoch (here: a larger batch) cannot resume this state.
    let other = TrainConfig {
        epochs: 3,
        ..two.clone()
    };
    let examples = synthetic_examples(14, 4);
    let (train, val) = loaders(&other, source(&examples[..5]), source(&examples[10..]));
    let mut task = task_with(&other, &seg_unet());
    let err = Trainer::new(other, dir.path())
        .unwrap()
        .fit(&mut task, &train, &val, Resume::IfPresent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("trainer.json") && err.contains("2 batches per epoch"),
        "{err}"
    );
}
