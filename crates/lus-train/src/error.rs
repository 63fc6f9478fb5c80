//! The error type of lus-train. Errors that come from a file name the file; a training run that
//! stops names the epoch, the step and the examples of the batch that stopped it.

use std::fmt;
use std::path::PathBuf;

use lus_data::DataError;
use lus_unet::UNetError;

/// Errors of lus-train.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is out of range or inconsistent with another one.
    #[error("invalid training config: {field}: {reason}")]
    Config { field: String, reason: String },
    /// A device specification cannot be honoured (unknown, or not compiled in).
    #[error("device {spec:?}: {reason}")]
    Device { spec: String, reason: String },
    /// Reading, parsing or writing a file of a run (checkpoint, optimizer state, table) failed,
    /// or its contents do not fit.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// The training loss of a batch was NaN or infinite: the run stops, and the last checkpoint
    /// written (from the end of an earlier epoch, if any) is left as it was.
    #[error("{0}")]
    NonFiniteLoss(Box<NonFiniteLoss>),
    /// Batches do not fit the task (shape, dtype, labels out of range).
    #[error("batch: {0}")]
    Batch(String),
    /// Loading or preparing data failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Building, initialising or loading the U-Net failed.
    #[error(transparent)]
    UNet(#[from] UNetError),
    /// Building or loading the reverse-transfer classifier failed.
    #[error(transparent)]
    Transfer(#[from] lus_transfer::TransferError),
    /// Computing metrics or writing a results table failed.
    #[error(transparent)]
    Metrics(#[from] lus_metrics::MetricsError),
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Where a non-finite training loss appeared.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFiniteLoss {
    /// Epoch, counted from 1.
    pub epoch: usize,
    /// Global optimizer step, counted from 1 (the step whose loss was not finite).
    pub step: u64,
    /// Source indices of the examples of that batch.
    pub indices: Vec<usize>,
    /// The loss value (NaN, +inf or -inf).
    pub loss: f32,
    /// The checkpoint folder that still holds the last good state, if one was written.
    pub last_good_checkpoint: Option<PathBuf>,
}

impl fmt::Display for NonFiniteLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "non-finite training loss {} at epoch {}, step {}, batch of source examples {:?}; \
             training stopped",
            self.loss, self.epoch, self.step, self.indices
        )?;
        match &self.last_good_checkpoint {
            Some(path) => write!(
                f,
                "; the last good checkpoint is {} (not overwritten)",
                path.display()
            ),
            None => write!(f, "; no checkpoint had been written yet"),
        }
    }
}

impl TrainError {
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn file(path: impl Into<PathBuf>, reason: impl fmt::Display) -> Self {
        Self::File {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// Result alias of lus-train.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
