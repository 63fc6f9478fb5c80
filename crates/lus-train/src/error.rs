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
    /// written (before that batch) is left as it was.
    #[error("{0}")]
    NonFiniteLoss(Box<NonFiniteLoss>),
    /// A gradient of a training batch held a NaN or an infinity (while the loss was finite):
    /// the run stops as for [`TrainError::NonFiniteLoss`].
    #[error("{0}")]
    NonFiniteGradient(Box<NonFiniteGradient>),
    /// A stop was requested (Ctrl-C, SIGTERM): the step under way finished, the state was
    /// saved to `last/`, and running the same training again resumes from there.
    #[error("{0}")]
    Interrupted(Box<Interrupted>),
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
        write_last_good(f, self.last_good_checkpoint.as_deref())
    }
}

/// Where a non-finite gradient appeared.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFiniteGradient {
    /// Epoch, counted from 1.
    pub epoch: usize,
    /// Global optimizer step, counted from 1 (the step whose gradient was not finite).
    pub step: u64,
    /// Source indices of the examples of that batch.
    pub indices: Vec<usize>,
    /// Names of the parameters whose gradient held a NaN or an infinity, in optimizer order.
    pub variables: Vec<String>,
    /// The checkpoint folder that still holds the last good state, if one was written.
    pub last_good_checkpoint: Option<PathBuf>,
}

impl fmt::Display for NonFiniteGradient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 3;
        let mut names = self
            .variables
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if self.variables.len() > SHOWN {
            names.push_str(&format!(" and {} more", self.variables.len() - SHOWN));
        }
        write!(
            f,
            "non-finite gradient (NaN or inf) of {names} at epoch {}, step {}, batch of source \
             examples {:?}; training stopped",
            self.epoch, self.step, self.indices
        )?;
        write_last_good(f, self.last_good_checkpoint.as_deref())
    }
}

fn write_last_good(f: &mut fmt::Formatter<'_>, last: Option<&std::path::Path>) -> fmt::Result {
    match last {
        Some(path) => write!(
            f,
            "; the last good checkpoint is {} (not overwritten)",
            path.display()
        ),
        None => write!(f, "; no checkpoint had been written yet"),
    }
}

/// Where a requested stop left the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted {
    /// What asked for the stop: the signal number (2 for SIGINT, 15 for SIGTERM), or any
    /// other positive code of the caller's.
    pub signal: i32,
    /// Epochs done; the saved state is inside epoch `epochs_done + 1` unless `in_epoch` is 0.
    pub epochs_done: usize,
    /// Batches of the next epoch done (0: the state is at an epoch's end).
    pub in_epoch: u64,
    /// Optimizer updates done (and saved).
    pub step: u64,
    /// The checkpoint folder a rerun resumes from (`None` if the stop came before any step).
    pub checkpoint: Option<PathBuf>,
}

impl Interrupted {
    /// The conventional name of the signal (`SIGINT`, `SIGTERM`), or `signal N`.
    pub fn signal_name(&self) -> String {
        signal_name(self.signal)
    }
}

/// The conventional name of a stop signal: `SIGHUP`, `SIGINT`, `SIGTERM`, else `signal N`.
pub fn signal_name(signal: i32) -> String {
    match signal {
        1 => "SIGHUP".to_string(),
        2 => "SIGINT".to_string(),
        15 => "SIGTERM".to_string(),
        n => format!("signal {n}"),
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interrupted by {} at step {} (",
            self.signal_name(),
            self.step
        )?;
        if self.in_epoch == 0 {
            write!(f, "end of epoch {}", self.epochs_done)?;
        } else {
            write!(f, "epoch {}, batch {}", self.epochs_done + 1, self.in_epoch)?;
        }
        match &self.checkpoint {
            Some(path) => write!(
                f,
                "); the state is saved in {}: run the same command again to resume",
                path.display()
            ),
            None => write!(f, "); nothing was trained yet"),
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

impl From<lus_io::IoError> for TrainError {
    fn from(e: lus_io::IoError) -> Self {
        TrainError::Data(DataError::from(e))
    }
}
