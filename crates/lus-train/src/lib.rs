//! lus-train: the trainers of lus.
//!
//! - [`device`]: `cpu | cuda | cuda:N | auto`, never a silent CPU fall-back.
//! - [`loss`]: cross-entropy (class weights, ignore id) and soft Dice as candle autograd ops.
//! - [`optim`]: AdamW and SGD with state we own (saved and loaded bit for bit), parameter
//!   groups with learning-rate multipliers, gradient clipping.
//! - [`schedule`]: constant, step and warm-up + cosine learning rates, pure functions of the step.
//! - [`task`] and [`trainer`]: the training loop, generic over a [`Task`] (segmentation here, the
//!   reverse-transfer classifier elsewhere): validation every epoch, best and last checkpoints,
//!   resume, the per-epoch metrics table, NaN detection, a progress bar.
//! - [`cls`]: the reverse-transfer classifier as a task, and [`train_classifier`].
//! - [`seg`]: the U-Net segmentation task and [`train_segmentation`].
//! - [`seg_eval`]: a trained U-Net on a labelled set: pixel scores and object-level counts.
//! - [`rng`]: every random stream of a run, derived from its seed.

pub mod cls;
pub mod config;
pub mod device;
pub mod error;
pub mod loss;
pub mod optim;
pub mod rng;
pub mod schedule;
pub mod seg;
pub mod seg_eval;
pub mod self_training;
pub mod table;
pub mod task;
pub mod trainer;

pub use cls::{
    Backbone, CLASSIFICATION_BEST_METRIC, ClassWeighting, ClassificationTask, ClsEvaluation,
    ClsRunConfig, classification_metric_names, train_classifier,
};
pub use config::{Direction, TrainConfig};
pub use device::{DeviceSpec, device_memory_used_mib, device_name, parse_device};
pub use error::{Interrupted, NonFiniteGradient, NonFiniteLoss, Result, TrainError};
pub use loss::{LossConfig, SegLoss, cross_entropy, soft_dice};
pub use optim::{Optimizer, OptimizerConfig, ParamGroup};
pub use schedule::LrSchedule;
pub use seg::{
    ImageDataConfig, SEGMENTATION_BEST_METRIC, SegEvaluation, SegRunConfig, SegmentationTask,
    segmentation_metric_names, train_segmentation, train_segmentation_from,
    train_segmentation_with,
};
pub use seg_eval::{SegEvalOptions, SegEvalReport, SegModel, evaluate_segmentation};
pub use task::{BatchSource, Task, TaskBatch};
pub use trainer::{
    BestEpoch, EpochRecord, Resume, StepLog, StopRequest, TrainSummary, Trainer, evaluate,
};
