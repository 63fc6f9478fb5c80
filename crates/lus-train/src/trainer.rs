//! The training loop, generic over a [`Task`]: epochs of optimizer steps, a validation pass
//! after each, the best and last checkpoints, the per-epoch metrics table, resume.
//!
//! # Run folder
//!
//! | file | written |
//! |---|---|
//! | `best.safetensors` | every variable of the task's `VarMap`, when the best metric improves |
//! | `best.json` | epoch, metric name and value of `best.safetensors` |
//! | `last/model.safetensors`, `last/optimizer.{safetensors,json}`, `last/trainer.json` | after every epoch, every `checkpoint_every_steps` steps inside an epoch, and when a stop is requested; the folder is staged and renamed into place, so it is always whole |
//! | `metrics.csv`, `metrics.parquet` | after every epoch, one row per epoch |
//!
//! Epochs are counted from 1 in the table, in errors and in `trainer.json`; `step` is the number
//! of optimizer updates done. The table's columns are `epoch, step, lr, train_loss, val_loss`,
//! then `val_<metric>` for each metric of the task, then `images_per_s` (training examples per
//! second of the training part of the epoch) and `seconds` (wall time of the epoch, validation
//! included). Only the last two depend on the machine: two runs with the same seed and
//! configuration on the same device produce the same values, bit for bit, in every other column.
//!
//! # Device traffic
//!
//! The loss of each step stays on the device; every `log_every` steps (and at the end of an
//! epoch) the losses of the window are read back in one transfer, checked for NaN/inf, and
//! summed on the host. With each loss the window keeps the sum of every gradient of the step
//! (one f32 per parameter, stacked on the device: [`Optimizer::gradient_sums`]), read back in
//! the same transfer. A non-finite loss stops the run with [`crate::TrainError::NonFiniteLoss`],
//! a non-finite gradient with [`crate::TrainError::NonFiniteGradient`] (naming the parameters),
//! both naming the epoch, step and examples; at most `log_every - 1` further updates have then
//! been applied to the in-memory weights, but no file is written after it: every checkpoint is
//! written right after a read-back that found the window finite, so `last/` and
//! `best.safetensors` keep the last good state.
//!
//! # Resume
//!
//! Every random draw is a function of (seed, epoch, step) or (seed, epoch, example), so the loop
//! state is all a resumed run needs besides model and optimizer: `trainer.json` holds the epochs
//! done, the step, the best epoch, the table so far and, for a checkpoint inside an epoch, the
//! batches of the epoch done, the epoch's loss accumulator (sum and weight, as IEEE bits) and
//! the learning rate of its last update. The loop continues with the epoch's next batch
//! ([`BatchSource::epoch_from`]), and the run ends bit-identical to one never interrupted (on
//! CPU; every column of the table but `images_per_s` and `seconds`).
//!
//! # Stopping
//!
//! A [`StopRequest`] given to [`Trainer::with_stop_request`] is polled after every step: once
//! raised (by a signal handler, say), the step under way finishes, the window is checked, `last/`
//! is written and [`Trainer::fit`] returns [`crate::TrainError::Interrupted`]. A request raised
//! during validation takes effect after the epoch's checkpoint.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lus_unet::Mode;
use serde::{Deserialize, Serialize};

use crate::config::{Direction, TrainConfig};
use crate::device::device_name;
use crate::error::{Interrupted, NonFiniteGradient, NonFiniteLoss, Result, TrainError};
use crate::optim::Optimizer;
use crate::rng::{Stream, stream_rng};
use crate::table::write_metrics_tables;
use crate::task::{BatchSource, Task, TaskBatch};

/// Checkpoint file of the best epoch's variables.
pub const BEST_CHECKPOINT: &str = "best.safetensors";
/// Description of the best checkpoint (epoch, metric, value).
pub const BEST_INFO: &str = "best.json";
/// Folder of the last epoch's full state.
pub const LAST_CHECKPOINT_DIR: &str = "last";
/// The model's variables inside the last-checkpoint folder.
pub const MODEL_FILE: &str = "model.safetensors";
/// Loop state inside the last-checkpoint folder.
pub const TRAINER_STATE_FILE: &str = "trainer.json";
/// The per-epoch metrics table.
pub const METRICS_CSV: &str = "metrics.csv";
pub const METRICS_PARQUET: &str = "metrics.parquet";

/// `trainer.json` as written now: v1 plus the state of a partly done epoch.
const TRAINER_FORMAT: &str = "lus-trainer-v2";
/// Checkpoints of earlier builds (epoch ends only) still resume.
const TRAINER_FORMAT_V1: &str = "lus-trainer-v1";
/// Fields of the config that may change when a run is resumed: they do not change what is
/// computed in the epochs already done (a longer run, another log or checkpoint interval,
/// another device).
const RESUMABLE_CHANGES: [&str; 4] = ["epochs", "log_every", "checkpoint_every_steps", "device"];

/// What to do with a run folder that already holds a `last/` checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Continue from it (after checking that the configuration is the same, but for `epochs`,
    /// `log_every` and `device`); start fresh when there is none. A finished run returns its
    /// summary without training.
    IfPresent,
    /// Refuse to start: the folder belongs to another run.
    Never,
}

/// One row of the metrics table.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    /// Epoch, counted from 1.
    pub epoch: usize,
    /// Optimizer updates done by the end of this epoch.
    pub step: u64,
    /// Learning rate (multiplier 1) of the epoch's last update.
    pub lr: f64,
    /// Example-weighted mean of the epoch's training-batch losses.
    pub train_loss: f64,
    /// Example-weighted mean of the validation-batch losses.
    pub val_loss: f64,
    /// The task's validation metrics, named `val_<metric>`, in the task's order.
    pub val_metrics: Vec<(String, f64)>,
    /// Training examples per second (data waiting included, validation excluded).
    pub images_per_s: f64,
    /// Wall time of the epoch in seconds, validation included.
    pub seconds: f64,
}

impl EpochRecord {
    /// The value of column `name` (`epoch` and `step` included, as f64).
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "epoch" => Some(self.epoch as f64),
            "step" => Some(self.step as f64),
            "lr" => Some(self.lr),
            "train_loss" => Some(self.train_loss),
            "val_loss" => Some(self.val_loss),
            "images_per_s" => Some(self.images_per_s),
            "seconds" => Some(self.seconds),
            other => self
                .val_metrics
                .iter()
                .find(|(n, _)| n == other)
                .map(|(_, v)| *v),
        }
    }

    /// The floating-point columns after `epoch` and `step`, in table order.
    pub fn float_columns(&self) -> Vec<(String, f64)> {
        let mut columns = vec![
            ("lr".to_string(), self.lr),
            ("train_loss".to_string(), self.train_loss),
            ("val_loss".to_string(), self.val_loss),
        ];
        columns.extend(self.val_metrics.iter().cloned());
        columns.push(("images_per_s".to_string(), self.images_per_s));
        columns.push(("seconds".to_string(), self.seconds));
        columns
    }
}

/// The best epoch so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    /// Epoch, counted from 1.
    pub epoch: usize,
    /// The metric (a column of the table).
    pub metric: String,
    pub value: f64,
}

/// A progress report, every `log_every` steps.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLog {
    /// Epoch, counted from 1.
    pub epoch: usize,
    /// Optimizer updates done.
    pub step: u64,
    /// Learning rate of the last update (multiplier 1).
    pub lr: f64,
    /// Example-weighted mean training loss of the steps since the previous report.
    pub loss: f64,
    /// Training examples per second since the start of the epoch.
    pub images_per_s: f64,
}

/// What a finished (or already finished) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Every epoch's row, the resumed ones included.
    pub history: Vec<EpochRecord>,
    /// The best epoch (`None` if the best metric was never finite).
    pub best: Option<BestEpoch>,
    /// Optimizer updates done.
    pub steps: u64,
    /// The epoch a resumed run continued after (0 for a fresh run).
    pub resumed_after_epoch: usize,
    /// The step a resumed run continued from (0 for a fresh run); larger than the step of
    /// `resumed_after_epoch`'s end when it resumed inside an epoch.
    pub resumed_at_step: u64,
    /// The run folder.
    pub out_dir: PathBuf,
    /// Largest memory in use on the CUDA device seen at the loss read-backs, in MiB (`None` on
    /// the CPU; see [`crate::device::device_memory_used_mib`]).
    pub peak_device_memory_mib: Option<f64>,
}

impl TrainSummary {
    pub fn best_checkpoint(&self) -> PathBuf {
        self.out_dir.join(BEST_CHECKPOINT)
    }

    pub fn last_checkpoint_dir(&self) -> PathBuf {
        self.out_dir.join(LAST_CHECKPOINT_DIR)
    }
}

/// A request to stop training at the next step boundary, shared between the trainer and
/// whoever raises it (a signal handler, a test). Cloning shares the request.
#[derive(Debug, Clone, Default)]
pub struct StopRequest(Arc<AtomicI32>);

impl StopRequest {
    /// A request that is not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the request; `signal` (> 0: 2 for SIGINT, 15 for SIGTERM) is reported back in
    /// [`crate::TrainError::Interrupted`]. Only an atomic store: safe in a signal handler.
    pub fn raise(&self, signal: i32) {
        self.0.store(signal.max(1), Ordering::SeqCst);
    }

    /// The signal of a raised request.
    pub fn raised(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }
}

type Observer = Box<dyn FnMut(&StepLog) + Send>;
type EpochObserver = Box<dyn FnMut(&EpochRecord) + Send>;

/// Trains a [`Task`] as its [`TrainConfig`] says, writing into one run folder.
pub struct Trainer {
    config: TrainConfig,
    device: Device,
    out_dir: PathBuf,
    on_step: Option<Observer>,
    on_epoch: Option<EpochObserver>,
    progress: bool,
    stop: Option<StopRequest>,
    /// Largest device memory in use seen at a loss read-back (CUDA only).
    peak_device_mib: Option<f64>,
}

impl Trainer {
    /// Validates `config` and opens its device (an error if it names CUDA in a build without
    /// the `cuda` feature). Nothing is written until [`Trainer::fit`].
    pub fn new(config: TrainConfig, out_dir: impl Into<PathBuf>) -> Result<Self> {
        config.validate()?;
        let device = config.device.open()?;
        Ok(Trainer {
            config,
            device,
            out_dir: out_dir.into(),
            on_step: None,
            on_epoch: None,
            progress: std::io::stderr().is_terminal(),
            stop: None,
            peak_device_mib: None,
        })
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The device of the run: build the task's model and the loaders on it.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// Calls `f` with every progress report (every `log_every` steps and at the end of each
    /// epoch), e.g. to print log lines where no progress bar is drawn.
    pub fn on_step(mut self, f: impl FnMut(&StepLog) + Send + 'static) -> Self {
        self.on_step = Some(Box::new(f));
        self
    }

    /// Calls `f` with each epoch's row once it is complete.
    pub fn on_epoch(mut self, f: impl FnMut(&EpochRecord) + Send + 'static) -> Self {
        self.on_epoch = Some(Box::new(f));
        self
    }

    /// Polls `stop` after every step: once raised, the run saves `last/` and returns
    /// [`crate::TrainError::Interrupted`] (see the module documentation).
    pub fn with_stop_request(mut self, stop: StopRequest) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Draws a progress bar on stderr (the default when stderr is a terminal).
    pub fn with_progress_bar(mut self, show: bool) -> Self {
        self.progress = show && std::io::stderr().is_terminal();
        self
    }

    /// Trains `task` on `train`, validating on `val` after every epoch (validation batches are
    /// always those of the source's epoch 0: a fixed set, in a fixed order).
    pub fn fit<T, S>(
        &mut self,
        task: &mut T,
        train: &S,
        val: &S,
        resume: Resume,
    ) -> Result<TrainSummary>
    where
        T: Task,
        S: BatchSource<Batch = T::Batch> + ?Sized,
    {
        let run = self.fit_settings(task, train, val)?;
        std::fs::create_dir_all(&self.out_dir).map_err(|e| TrainError::file(&self.out_dir, e))?;

        let mut optimizer = Optimizer::new(
            run.config.optimizer.clone(),
            run.config.weight_decay,
            task.param_groups()?,
        )?;
        let (mut state, mut partial) = self.resume_or_start(&run, task, &mut optimizer, resume)?;
        let resumed_after_epoch = state.epoch;
        let resumed_at_step = state.step;
        if let Some(signal) = self.stop_raised() {
            let in_epoch = partial.as_ref().map_or(0, |p| p.batches_done);
            return Err(self.interrupted(signal, &state, in_epoch));
        }

        for epoch_index in state.epoch..run.config.epochs {
            let mut current = CurrentEpoch {
                index: epoch_index,
                progress: partial
                    .take()
                    .unwrap_or_else(|| EpochProgress::new(run.config.lr)),
                start: Instant::now(),
            };
            let train_seconds =
                self.train_epoch(&run, task, train, &mut optimizer, &mut state, &mut current)?;
            let record = validate_epoch(task, val, &current, state.step, train_seconds)?;
            self.save_if_best(&run, task, &mut state, &record)?;
            self.checkpoint_epoch(&run, task, &optimizer, &mut state, record)?;
            if epoch_index + 1 < run.config.epochs
                && let Some(signal) = self.stop_raised()
            {
                return Err(self.interrupted(signal, &state, 0));
            }
        }
        Ok(TrainSummary {
            history: state.history,
            best: state.best,
            steps: state.step,
            resumed_after_epoch,
            resumed_at_step,
            out_dir: self.out_dir.clone(),
            peak_device_memory_mib: self.peak_device_mib,
        })
    }

    /// Checks the best metric and the data's batch counts, and works out what every phase of
    /// [`Trainer::fit`] reads.
    fn fit_settings<T, S>(&self, task: &T, train: &S, val: &S) -> Result<FitSettings>
    where
        T: Task,
        S: BatchSource<Batch = T::Batch> + ?Sized,
    {
        let config = self.config.clone();
        self.check_best_metric(task)?;
        let best_metric = config
            .best_metric_or(task.default_best_metric())
            .to_string();
        let direction = config.best_direction(task.default_best_metric());
        let steps_per_epoch = train.batches_per_epoch() as u64;
        if steps_per_epoch == 0 {
            return Err(TrainError::config(
                "training data",
                "the training set yields no batch (empty, or fewer examples than one batch \
                 with drop_last)",
            ));
        }
        if val.batches_per_epoch() == 0 {
            return Err(TrainError::config(
                "validation data",
                "the validation set yields no batch",
            ));
        }
        let total_steps = steps_per_epoch * config.epochs as u64;
        Ok(FitSettings {
            config,
            best_metric,
            direction,
            steps_per_epoch,
            total_steps,
        })
    }

    /// Repairs what a killed save left in the run folder, then loads the `last/` checkpoint
    /// into `task` and `optimizer` (as `resume` allows) and returns its loop state and the
    /// progress of the epoch it was written inside, or a fresh state when there is none.
    fn resume_or_start<T: Task>(
        &self,
        run: &FitSettings,
        task: &mut T,
        optimizer: &mut Optimizer,
        resume: Resume,
    ) -> Result<(LoopState, Option<EpochProgress>)> {
        let last_dir = self.out_dir.join(LAST_CHECKPOINT_DIR);
        // A save killed between its two renames leaves the previous checkpoint aside, and a
        // write killed before its rename a temporary file.
        lus_io::StagedDir::recover_replaced(&last_dir)?;
        lus_io::remove_stale_temp_files(&self.out_dir)?;
        if last_dir.exists() && !last_dir.is_dir() {
            return Err(TrainError::file(
                &last_dir,
                "is not a folder: the run's checkpoint folder cannot be written there; move \
                 the file away (nothing was written)",
            ));
        }
        if !last_dir.join(TRAINER_STATE_FILE).exists() {
            return Ok((LoopState::fresh(), None));
        }
        match resume {
            Resume::Never => Err(TrainError::file(
                &self.out_dir,
                "holds the checkpoint of an earlier run (last/); resume it or choose \
                 another folder",
            )),
            Resume::IfPresent => {
                let (state, partial) =
                    LoopState::load(&last_dir, &run.config, run.steps_per_epoch)?;
                lus_unet::load_weights(task.varmap(), last_dir.join(MODEL_FILE))?;
                optimizer.load(&last_dir)?;
                if optimizer.steps() != state.step {
                    return Err(TrainError::file(
                        last_dir.join(TRAINER_STATE_FILE),
                        format!(
                            "the trainer state says {} steps, the optimizer state {}",
                            state.step,
                            optimizer.steps()
                        ),
                    ));
                }
                // The tables are written after `last/`: a run killed in between has
                // tables one epoch short, which a finished run would never rewrite.
                if !state.history.is_empty() {
                    write_metrics_tables(
                        &state.history,
                        &self.out_dir.join(METRICS_CSV),
                        &self.out_dir.join(METRICS_PARQUET),
                    )?;
                }
                Ok((state, partial))
            }
        }
    }

    /// Trains `current` from its next batch to its end: an optimizer step per batch, the loss
    /// window read back every `log_every` steps, `last/` written every
    /// `checkpoint_every_steps` steps and when a stop is requested (which then returns
    /// [`crate::TrainError::Interrupted`]). Returns the epoch's training seconds.
    fn train_epoch<T, S>(
        &mut self,
        run: &FitSettings,
        task: &mut T,
        train: &S,
        optimizer: &mut Optimizer,
        state: &mut LoopState,
        current: &mut CurrentEpoch,
    ) -> Result<f64>
    where
        T: Task,
        S: BatchSource<Batch = T::Batch> + ?Sized,
    {
        let config = &run.config;
        let (steps_per_epoch, total_steps) = (run.steps_per_epoch, run.total_steps);
        let (epoch_index, epoch_start) = (current.index, current.start);
        let epoch = epoch_index + 1;
        let progress = &mut current.progress;
        let bar = self.progress_bar(epoch, steps_per_epoch);
        bar.set_position(progress.batches_done);
        let mut window = LossWindow::default();
        for batch in train.epoch_from(epoch_index as u64, progress.batches_done as usize) {
            let batch = batch?;
            progress.lr = config
                .schedule
                .lr(config.lr, state.step, steps_per_epoch, total_steps);
            let mut dropout_rng =
                stream_rng(config.seed, Stream::Dropout, epoch_index as u64, state.step);
            let loss = task.train_loss(&batch, &mut Mode::train(&mut dropout_rng))?;
            if loss.rank() != 0 {
                return Err(TrainError::Batch(format!(
                    "the task's training loss has shape {:?}; expected a scalar",
                    loss.dims()
                )));
            }
            let mut grads = loss.backward()?;
            // Summed before clipping: a clipped NaN gradient turns every gradient NaN.
            let grad_sums = optimizer.gradient_sums(&grads)?;
            if let Some(max_norm) = config.grad_clip_norm {
                optimizer.clip_grad_norm(&mut grads, max_norm)?;
            }
            optimizer.step(&grads, progress.lr)?;
            state.step += 1;
            progress.batches_done += 1;
            progress.train_examples += batch.num_examples();
            window.push(
                loss.detach(),
                grad_sums,
                batch.num_examples(),
                batch.indices(),
                state.step,
            );
            bar.inc(1);
            let stop = self.stop_raised();
            // The epoch's own checkpoint follows its last batch shortly.
            let periodic = config.checkpoint_every_steps > 0
                && state.step.is_multiple_of(config.checkpoint_every_steps)
                && progress.batches_done < steps_per_epoch;
            if window.len() >= config.log_every || periodic || stop.is_some() {
                self.flush(&mut window, progress, epoch, epoch_start, optimizer, &bar)?;
            }
            if periodic || stop.is_some() {
                let snapshot = EpochProgress {
                    seconds_before: progress.seconds_before + epoch_start.elapsed().as_secs_f64(),
                    ..progress.clone()
                };
                state.save(
                    &self.out_dir,
                    task,
                    optimizer,
                    config,
                    &self.device,
                    Some(&snapshot),
                )?;
            }
            if let Some(signal) = stop {
                bar.finish_and_clear();
                return Err(self.interrupted(signal, state, progress.batches_done));
            }
        }
        if !window.is_empty() {
            self.flush(&mut window, progress, epoch, epoch_start, optimizer, &bar)?;
        }
        let train_seconds = progress.seconds_before + epoch_start.elapsed().as_secs_f64();
        bar.finish_and_clear();
        Ok(train_seconds)
    }

    /// Writes `best.safetensors` and `best.json` when the epoch of `record` is the best so far
    /// by the best metric, and notes it in `state`.
    fn save_if_best<T: Task>(
        &self,
        run: &FitSettings,
        task: &T,
        state: &mut LoopState,
        record: &EpochRecord,
    ) -> Result<()> {
        let (best_metric, epoch) = (&run.best_metric, record.epoch);
        let value = record.get(best_metric).ok_or_else(|| {
            TrainError::config(
                "best_metric",
                format!(
                    "{best_metric:?} is not a column of epoch {epoch}'s row (the task \
                     reported other metrics than it announced)"
                ),
            )
        })?;
        let improved = value.is_finite()
            && state
                .best
                .as_ref()
                .is_none_or(|best| run.direction.is_better(value, best.value));
        if improved {
            let best = BestEpoch {
                epoch,
                metric: best_metric.clone(),
                value,
            };
            lus_unet::save_weights(task.varmap(), self.out_dir.join(BEST_CHECKPOINT))?;
            let json = serde_json::to_vec_pretty(&best)
                .map_err(|e| TrainError::file(self.out_dir.join(BEST_INFO), e))?;
            lus_io::write_atomic(&self.out_dir.join(BEST_INFO), &json)?;
            state.best = Some(best);
        }
        Ok(())
    }

    /// Closes the epoch of `record`: adds it to `state`, writes `last/` and the tables, and
    /// tells the epoch observer.
    fn checkpoint_epoch<T: Task>(
        &mut self,
        run: &FitSettings,
        task: &T,
        optimizer: &Optimizer,
        state: &mut LoopState,
        record: EpochRecord,
    ) -> Result<()> {
        state.epoch = record.epoch;
        state.history.push(record.clone());
        state.save(
            &self.out_dir,
            task,
            optimizer,
            &run.config,
            &self.device,
            None,
        )?;
        write_metrics_tables(
            &state.history,
            &self.out_dir.join(METRICS_CSV),
            &self.out_dir.join(METRICS_PARQUET),
        )?;
        if let Some(f) = self.on_epoch.as_mut() {
            f(&record);
        }
        Ok(())
    }

    fn stop_raised(&self) -> Option<i32> {
        self.stop.as_ref().and_then(StopRequest::raised)
    }

    /// The error of a requested stop, after `state` (and `in_epoch` batches of the next
    /// epoch) was saved.
    fn interrupted(&self, signal: i32, state: &LoopState, in_epoch: u64) -> TrainError {
        let last = self.out_dir.join(LAST_CHECKPOINT_DIR);
        TrainError::Interrupted(Box::new(Interrupted {
            signal,
            epochs_done: state.epoch,
            in_epoch,
            step: state.step,
            checkpoint: last.join(TRAINER_STATE_FILE).exists().then_some(last),
        }))
    }

    /// Errors if the best metric is not a column this task's table will have.
    fn check_best_metric<T: Task>(&self, task: &T) -> Result<()> {
        let mut columns: Vec<String> = ["lr", "train_loss", "val_loss"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        columns.extend(task.metric_names().iter().map(|n| format!("val_{n}")));
        columns.extend(["images_per_s".to_string(), "seconds".to_string()]);
        let selectable: Vec<&String> = columns
            .iter()
            .filter(|c| c.as_str() == "train_loss" || c.starts_with("val_"))
            .collect();
        let best_metric = self.config.best_metric_or(task.default_best_metric());
        if !selectable.iter().any(|c| *c == best_metric) {
            return Err(TrainError::config(
                "best_metric",
                format!(
                    "{best_metric:?} is not a metric of this task; choose one of {}",
                    selectable
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn progress_bar(&self, epoch: usize, steps: u64) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
        let style =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("epoch {epoch}/{}", self.config.epochs));
        bar
    }

    /// Reads the window's losses and gradient sums back (one transfer), stops on a non-finite
    /// one, adds the losses to the epoch's, and reports.
    fn flush(
        &mut self,
        window: &mut LossWindow,
        progress: &mut EpochProgress,
        epoch: usize,
        epoch_start: Instant,
        optimizer: &Optimizer,
        bar: &ProgressBar,
    ) -> Result<()> {
        let steps = window.len();
        if let Some(used) = crate::device::device_memory_used_mib(&self.device) {
            self.peak_device_mib = Some(self.peak_device_mib.map_or(used, |p| p.max(used)));
        }
        let mut parts = vec![Tensor::stack(&window.losses, 0)?.to_dtype(DType::F64)?];
        for (sums, _) in window.grad_sums.iter().flatten() {
            parts.push(sums.to_dtype(DType::F64)?);
        }
        let values = Tensor::cat(&parts, 0)?.to_vec1::<f64>()?;
        let (losses, mut sums) = values.split_at(steps);
        let last_good = || {
            let last = self.out_dir.join(LAST_CHECKPOINT_DIR);
            last.join(TRAINER_STATE_FILE).exists().then_some(last)
        };
        let mut window_mean = WeightedMean::default();
        for (i, &loss) in losses.iter().enumerate() {
            if !loss.is_finite() {
                return Err(TrainError::NonFiniteLoss(Box::new(NonFiniteLoss {
                    epoch,
                    step: window.steps[i],
                    indices: window.indices[i].clone(),
                    loss: loss as f32,
                    last_good_checkpoint: last_good(),
                })));
            }
            if let Some((_, positions)) = &window.grad_sums[i] {
                let (step_sums, rest) = sums.split_at(positions.len());
                sums = rest;
                let variables: Vec<String> = positions
                    .iter()
                    .zip(step_sums)
                    .filter(|(_, sum)| !sum.is_finite())
                    .map(|(&p, _)| {
                        optimizer
                            .param_name(p)
                            .map_or_else(|| format!("parameter #{p}"), str::to_string)
                    })
                    .collect();
                if !variables.is_empty() {
                    return Err(TrainError::NonFiniteGradient(Box::new(NonFiniteGradient {
                        epoch,
                        step: window.steps[i],
                        indices: window.indices[i].clone(),
                        variables,
                        last_good_checkpoint: last_good(),
                    })));
                }
            }
            progress.loss.add(loss, window.examples[i]);
            window_mean.add(loss, window.examples[i]);
        }
        let seconds = progress.seconds_before + epoch_start.elapsed().as_secs_f64();
        let log = StepLog {
            epoch,
            step: *window.steps.last().unwrap_or(&0),
            lr: progress.lr,
            loss: window_mean.value(),
            images_per_s: progress.train_examples as f64 / seconds.max(1e-9),
        };
        bar.set_message(format!(
            "loss {:.4} | {:.1} img/s | lr {:.2e}",
            log.loss, log.images_per_s, log.lr
        ));
        if let Some(f) = self.on_step.as_mut() {
            f(&log);
        }
        window.clear();
        Ok(())
    }
}

/// One validation pass of `task` over epoch 0 of `val`: the example-weighted mean loss (the
/// per-batch losses are summed on the device and read back once) and the task's metrics
/// (without the `val_` prefix). This is what every epoch of [`Trainer::fit`] records.
pub fn evaluate<T, S>(task: &T, val: &S) -> Result<(f64, Vec<(String, f64)>)>
where
    T: Task,
    S: BatchSource<Batch = T::Batch> + ?Sized,
{
    let mut evaluation = task.start_evaluation();
    let mut loss_sum: Option<Tensor> = None;
    let mut examples = 0usize;
    for batch in val.epoch(0) {
        let batch = batch?;
        let loss = task.evaluate_batch(&batch, &mut evaluation)?;
        let n = batch.num_examples();
        let weighted = loss.detach().to_dtype(DType::F64)?.affine(n as f64, 0.0)?;
        loss_sum = Some(match loss_sum {
            Some(sum) => (sum + weighted)?,
            None => weighted,
        });
        examples += n;
    }
    let val_loss = match loss_sum {
        Some(sum) if examples > 0 => sum.to_scalar::<f64>()? / examples as f64,
        _ => f64::NAN,
    };
    let metrics = task.finish_evaluation(evaluation)?;
    Ok((val_loss, metrics))
}

/// Validates `task` on `val` after the training part of `current` and returns the epoch's row
/// of the table; `step` is the number of optimizer updates done by then.
fn validate_epoch<T, S>(
    task: &T,
    val: &S,
    current: &CurrentEpoch,
    step: u64,
    train_seconds: f64,
) -> Result<EpochRecord>
where
    T: Task,
    S: BatchSource<Batch = T::Batch> + ?Sized,
{
    let progress = &current.progress;
    let (val_loss, metrics) = evaluate(task, val)?;
    Ok(EpochRecord {
        epoch: current.index + 1,
        step,
        lr: progress.lr,
        train_loss: progress.loss.value(),
        val_loss,
        val_metrics: metrics
            .into_iter()
            .map(|(name, value)| (format!("val_{name}"), value))
            .collect(),
        images_per_s: progress.train_examples as f64 / train_seconds.max(1e-9),
        seconds: progress.seconds_before + current.start.elapsed().as_secs_f64(),
    })
}

/// Losses and gradient sums of the steps since the last read-back, still on the device.
#[derive(Default)]
struct LossWindow {
    losses: Vec<Tensor>,
    /// Per step: [`Optimizer::gradient_sums`] (`None` when no parameter had a gradient).
    grad_sums: Vec<Option<(Tensor, Vec<usize>)>>,
    examples: Vec<usize>,
    indices: Vec<Vec<usize>>,
    steps: Vec<u64>,
}

impl LossWindow {
    fn push(
        &mut self,
        loss: Tensor,
        grad_sums: Option<(Tensor, Vec<usize>)>,
        examples: usize,
        indices: &[usize],
        step: u64,
    ) {
        self.losses.push(loss);
        self.grad_sums.push(grad_sums);
        self.examples.push(examples);
        self.indices.push(indices.to_vec());
        self.steps.push(step);
    }

    fn len(&self) -> usize {
        self.losses.len()
    }

    fn is_empty(&self) -> bool {
        self.losses.is_empty()
    }

    fn clear(&mut self) {
        *self = LossWindow::default();
    }
}

/// An example-weighted mean accumulated in f64, in a fixed order.
#[derive(Debug, Clone, Default)]
struct WeightedMean {
    sum: f64,
    weight: usize,
}

impl WeightedMean {
    fn add(&mut self, value: f64, weight: usize) {
        self.sum += value * weight as f64;
        self.weight += weight;
    }

    fn value(&self) -> f64 {
        if self.weight == 0 {
            f64::NAN
        } else {
            self.sum / self.weight as f64
        }
    }
}

/// How far the current epoch has come: what a checkpoint inside an epoch saves besides the
/// [`LoopState`].
#[derive(Debug, Clone)]
struct EpochProgress {
    /// Batches of the epoch done (the next one to train is this, counted from 0).
    batches_done: u64,
    /// The epoch's training loss so far (of the batches read back).
    loss: WeightedMean,
    /// Learning rate (multiplier 1) of the epoch's last update (the base rate before the
    /// first).
    lr: f64,
    /// Training examples of the epoch so far.
    train_examples: usize,
    /// Training seconds of the epoch spent before this process continued it (for the
    /// machine-dependent columns only).
    seconds_before: f64,
}

impl EpochProgress {
    fn new(base_lr: f64) -> Self {
        EpochProgress {
            batches_done: 0,
            loss: WeightedMean::default(),
            lr: base_lr,
            train_examples: 0,
            seconds_before: 0.0,
        }
    }
}

/// The epoch this process trains: its [`EpochProgress`] (what a checkpoint inside it saves)
/// and what only this process knows.
struct CurrentEpoch {
    /// Counted from 0, as the data and the random streams count epochs.
    index: usize,
    progress: EpochProgress,
    /// When this process started (or continued) the epoch.
    start: Instant,
}

/// What every phase of one [`Trainer::fit`] reads: a copy of the configuration (so that the
/// phases can borrow the trainer mutably) and what follows from it, the task and the data.
struct FitSettings {
    config: TrainConfig,
    /// The column of the table that picks the best epoch, and which way is better.
    best_metric: String,
    direction: Direction,
    steps_per_epoch: u64,
    /// Optimizer updates of the whole run (the learning-rate schedule spans them).
    total_steps: u64,
}

/// The loop's own state, saved in `last/trainer.json`.
struct LoopState {
    /// Epochs done.
    epoch: usize,
    /// Optimizer updates done.
    step: u64,
    best: Option<BestEpoch>,
    history: Vec<EpochRecord>,
}

/// `trainer.json`. Floats are stored as their IEEE-754 bits so that a resumed run's table is
/// bit-identical to an uninterrupted one's (and NaN survives, which JSON numbers cannot carry).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedLoopState {
    format: String,
    epoch: usize,
    step: u64,
    device: String,
    config: serde_json::Value,
    best: Option<SavedBest>,
    history: Vec<SavedRecord>,
    /// The epoch under way when the checkpoint was written inside it (absent at epoch ends,
    /// and in v1 files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partial: Option<SavedProgress>,
}

/// [`EpochProgress`] in `trainer.json`, floats as IEEE-754 bits.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedProgress {
    /// The epoch under way, counted from 1 (always `epoch + 1` of the file).
    epoch: usize,
    batches_done: u64,
    loss_sum_bits: u64,
    loss_weight: usize,
    lr_bits: u64,
    train_examples: usize,
    seconds_bits: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedBest {
    epoch: usize,
    metric: String,
    value_bits: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedRecord {
    epoch: usize,
    step: u64,
    /// `(column, f64 bits)` for every float column, in table order.
    columns: Vec<(String, u64)>,
}

impl LoopState {
    fn fresh() -> Self {
        LoopState {
            epoch: 0,
            step: 0,
            best: None,
            history: Vec::new(),
        }
    }

    /// Writes `last/` as a whole: model, optimizer and loop state go into a staging folder
    /// that replaces the previous `last/` by renames. `partial` is the epoch under way (epoch
    /// `self.epoch + 1`) for a checkpoint inside it.
    fn save<T: Task>(
        &self,
        out_dir: &Path,
        task: &T,
        optimizer: &Optimizer,
        config: &TrainConfig,
        device: &Device,
        partial: Option<&EpochProgress>,
    ) -> Result<()> {
        let final_dir = out_dir.join(LAST_CHECKPOINT_DIR);
        // Fresh: a save killed earlier may have left files (or temporary files) in the stage.
        let stage = lus_io::StagedDir::open_fresh(&final_dir)?;
        lus_unet::save_weights(task.varmap(), stage.path().join(MODEL_FILE))?;
        optimizer.save(stage.path())?;
        let saved = SavedLoopState {
            format: TRAINER_FORMAT.to_string(),
            epoch: self.epoch,
            step: self.step,
            device: device_name(device),
            config: serde_json::to_value(config).map_err(|e| TrainError::file(&final_dir, e))?,
            best: self.best.as_ref().map(|b| SavedBest {
                epoch: b.epoch,
                metric: b.metric.clone(),
                value_bits: b.value.to_bits(),
            }),
            history: self
                .history
                .iter()
                .map(|r| SavedRecord {
                    epoch: r.epoch,
                    step: r.step,
                    columns: r
                        .float_columns()
                        .into_iter()
                        .map(|(n, v)| (n, v.to_bits()))
                        .collect(),
                })
                .collect(),
            partial: partial.map(|p| SavedProgress {
                epoch: self.epoch + 1,
                batches_done: p.batches_done,
                loss_sum_bits: p.loss.sum.to_bits(),
                loss_weight: p.loss.weight,
                lr_bits: p.lr.to_bits(),
                train_examples: p.train_examples,
                seconds_bits: p.seconds_before.to_bits(),
            }),
        };
        let path = stage.path().join(TRAINER_STATE_FILE);
        let json = serde_json::to_vec_pretty(&saved).map_err(|e| TrainError::file(&path, e))?;
        lus_io::write_atomic(&path, &json)?;
        stage.commit(true)?;
        Ok(())
    }

    /// Reads `last/trainer.json`, checks that it belongs to a run of `config` whose epochs
    /// have `steps_per_epoch` batches, and returns the state with the progress of the epoch
    /// under way, if the checkpoint was written inside one.
    fn load(
        last_dir: &Path,
        config: &TrainConfig,
        steps_per_epoch: u64,
    ) -> Result<(Self, Option<EpochProgress>)> {
        let path = last_dir.join(TRAINER_STATE_FILE);
        let text = lus_io::read_text(&path)?;
        let saved: SavedLoopState =
            serde_json::from_str(&text).map_err(|e| TrainError::file(&path, e))?;
        if saved.format != TRAINER_FORMAT && saved.format != TRAINER_FORMAT_V1 {
            return Err(TrainError::file(
                &path,
                format!(
                    "unknown format {:?} (expected {TRAINER_FORMAT:?} or {TRAINER_FORMAT_V1:?})",
                    saved.format
                ),
            ));
        }
        let differences =
            config_differences(&saved.config, config).map_err(|e| TrainError::file(&path, e))?;
        if !differences.is_empty() {
            return Err(TrainError::file(
                &path,
                format!(
                    "the checkpoint belongs to a run with another configuration ({}); only {} \
                     may change on resume",
                    differences.join("; "),
                    RESUMABLE_CHANGES.join(", ")
                ),
            ));
        }
        let history = saved
            .history
            .into_iter()
            .map(|r| record_from_saved(r).map_err(|e| TrainError::file(&path, e)))
            .collect::<Result<Vec<_>>>()?;
        let partial = saved.partial.map(|p| {
            (
                p.epoch,
                EpochProgress {
                    batches_done: p.batches_done,
                    loss: WeightedMean {
                        sum: f64::from_bits(p.loss_sum_bits),
                        weight: p.loss_weight,
                    },
                    lr: f64::from_bits(p.lr_bits),
                    train_examples: p.train_examples,
                    seconds_before: f64::from_bits(p.seconds_bits),
                },
            )
        });
        // The position must fit the data as it is now: another number of batches per epoch
        // (a changed data set or batch size) would resume at the wrong example.
        let in_epoch = partial.as_ref().map_or(0, |(_, p)| p.batches_done);
        let expected_step = (saved.epoch as u64)
            .checked_mul(steps_per_epoch)
            .and_then(|s| s.checked_add(in_epoch));
        let fault = match &partial {
            Some((epoch, _)) if *epoch != saved.epoch + 1 => Some(format!(
                "the epoch under way is {epoch}, but {} epochs are done",
                saved.epoch
            )),
            Some((_, p)) if p.batches_done > steps_per_epoch => Some(format!(
                "{} batches of the epoch are done, but an epoch has {steps_per_epoch}",
                p.batches_done
            )),
            _ if expected_step != Some(saved.step) => Some(format!(
                "{} epochs and {in_epoch} batches are done at step {}, which does not fit \
                 {steps_per_epoch} batches per epoch (has the training data or the batch size \
                 changed?)",
                saved.epoch, saved.step
            )),
            _ => None,
        };
        if let Some(fault) = fault {
            return Err(TrainError::file(&path, fault));
        }
        Ok((
            LoopState {
                epoch: saved.epoch,
                step: saved.step,
                best: saved.best.map(|b| BestEpoch {
                    epoch: b.epoch,
                    metric: b.metric,
                    value: f64::from_bits(b.value_bits),
                }),
                history,
            },
            partial.map(|(_, p)| p),
        ))
    }
}

fn record_from_saved(saved: SavedRecord) -> std::result::Result<EpochRecord, String> {
    let mut columns: Vec<(String, f64)> = saved
        .columns
        .into_iter()
        .map(|(n, bits)| (n, f64::from_bits(bits)))
        .collect();
    let take = |columns: &mut Vec<(String, f64)>, name: &str| {
        let at = columns
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| format!("epoch {}: no column {name}", saved.epoch))?;
        Ok::<f64, String>(columns.remove(at).1)
    };
    let lr = take(&mut columns, "lr")?;
    let train_loss = take(&mut columns, "train_loss")?;
    let val_loss = take(&mut columns, "val_loss")?;
    let images_per_s = take(&mut columns, "images_per_s")?;
    let seconds = take(&mut columns, "seconds")?;
    Ok(EpochRecord {
        epoch: saved.epoch,
        step: saved.step,
        lr,
        train_loss,
        val_loss,
        val_metrics: columns,
        images_per_s,
        seconds,
    })
}

/// The fields (other than [`RESUMABLE_CHANGES`]) whose values differ, as `field: saved -> now`.
fn config_differences(
    saved: &serde_json::Value,
    config: &TrainConfig,
) -> std::result::Result<Vec<String>, String> {
    let now = serde_json::to_value(config).map_err(|e| e.to_string())?;
    let (Some(saved), Some(now)) = (saved.as_object(), now.as_object()) else {
        return Err("the saved configuration is not a JSON object".to_string());
    };
    let mut keys: Vec<&String> = saved.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    Ok(keys
        .into_iter()
        .filter(|k| !RESUMABLE_CHANGES.contains(&k.as_str()))
        .filter(|k| saved.get(*k) != now.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| {
                v.map_or_else(|| "(absent)".to_string(), |v| v.to_string())
            };
            format!("{k}: {} -> {}", show(saved.get(k)), show(now.get(k)))
        })
        .collect())
}
