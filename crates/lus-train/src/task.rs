//! What the training loop needs from a learning problem: the [`Task`] trait (loss of a training
//! batch, validation metrics, the model's variables) and the [`BatchSource`] of its batches.
//!
//! The loop in [`crate::Trainer`] is the same for segmentation ([`crate::SegmentationTask`]) and
//! for the reverse-transfer classifier; a task supplies only what differs between them.

use candle_core::Tensor;
use candle_nn::VarMap;
use lus_data::loader::{SegBatch, SegmentationLoader};
use lus_unet::Mode;

use crate::error::Result;
use crate::optim::ParamGroup;

/// A batch as the loop sees it: how many examples it holds and which source examples they are
/// (for images/s and for naming the batch in errors).
pub trait TaskBatch {
    /// Examples in the batch.
    fn num_examples(&self) -> usize;
    /// Source index of each example.
    fn indices(&self) -> &[usize];
}

impl TaskBatch for SegBatch {
    fn num_examples(&self) -> usize {
        self.indices.len()
    }

    fn indices(&self) -> &[usize] {
        &self.indices
    }
}

/// The batches of each epoch. `epoch` counts from 0; a source with random order or
/// augmentation must make them a function of its seed and `epoch` only, so a resumed run sees
/// what an uninterrupted one sees.
pub trait BatchSource {
    type Batch: TaskBatch;
    /// Batches per epoch (used for the schedule's step count and the progress bar).
    fn batches_per_epoch(&self) -> usize;
    /// The batches of epoch `epoch`; an `Err` ends the epoch (and the run).
    fn epoch(&self, epoch: u64) -> Box<dyn Iterator<Item = Result<Self::Batch>> + '_>;
    /// The batches of epoch `epoch` after its first `first` (a run resumed inside an epoch):
    /// the same batches [`BatchSource::epoch`] yields from there on. The default prepares the
    /// skipped batches and drops them; the loaders skip them without preparing them.
    fn epoch_from(
        &self,
        epoch: u64,
        first: usize,
    ) -> Box<dyn Iterator<Item = Result<Self::Batch>> + '_> {
        Box::new(self.epoch(epoch).skip(first))
    }
}

impl BatchSource for SegmentationLoader {
    type Batch = SegBatch;

    fn batches_per_epoch(&self) -> usize {
        self.len()
    }

    fn epoch(&self, epoch: u64) -> Box<dyn Iterator<Item = Result<SegBatch>> + '_> {
        Box::new(SegmentationLoader::epoch(self, epoch).map(|b| b.map_err(Into::into)))
    }

    fn epoch_from(
        &self,
        epoch: u64,
        first: usize,
    ) -> Box<dyn Iterator<Item = Result<SegBatch>> + '_> {
        Box::new(SegmentationLoader::epoch_from(self, epoch, first).map(|b| b.map_err(Into::into)))
    }
}

/// A learning problem the [`crate::Trainer`] can train: the model (its variables and forward
/// pass), the loss, and the validation metrics.
pub trait Task {
    type Batch: TaskBatch;
    /// Running state of one validation pass (a confusion matrix, say).
    type Evaluation;

    /// Every variable of the model, trainable or not (batch-norm running statistics included):
    /// what checkpoints save and load.
    fn varmap(&self) -> &VarMap;

    /// The trainable variables, grouped for the optimizer (e.g. a pretrained encoder with a
    /// smaller learning-rate multiplier than a new head).
    fn param_groups(&self) -> Result<Vec<ParamGroup>>;

    /// The scalar loss of a training batch, computed in training mode (`mode` carries the
    /// step's dropout stream). It stays on the device: the loop reads losses back only every
    /// `log_every` steps.
    fn train_loss(&mut self, batch: &Self::Batch, mode: &mut Mode<'_>) -> Result<Tensor>;

    /// A fresh validation state.
    fn start_evaluation(&self) -> Self::Evaluation;

    /// Evaluation-mode forward pass of a validation batch: updates `evaluation` and returns
    /// the batch's mean loss as a scalar tensor on the device.
    fn evaluate_batch(
        &self,
        batch: &Self::Batch,
        evaluation: &mut Self::Evaluation,
    ) -> Result<Tensor>;

    /// The metrics of a finished validation pass, named as in [`Task::metric_names`] (the loop
    /// adds the `val_` prefix) and in that order.
    fn finish_evaluation(&self, evaluation: Self::Evaluation) -> Result<Vec<(String, f64)>>;

    /// Names of the metrics [`Task::finish_evaluation`] reports, known before training so a
    /// configured best metric can be checked up front.
    fn metric_names(&self) -> Vec<String>;
    /// The column that selects the best checkpoint when the config names none; the validation
    /// loss unless the task knows a better one.
    fn default_best_metric(&self) -> &'static str {
        "val_loss"
    }
}
