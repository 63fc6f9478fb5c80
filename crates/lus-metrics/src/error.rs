//! The crate's error type. Every error that comes from a file names the file; every error that
//! comes from a mask names the offending value and where it was found.

use std::path::PathBuf;

/// Errors of `lus-metrics`.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Two buffers that must describe the same pixels have different lengths.
    #[error("{what}: length mismatch ({left_name} has {left} values, {right_name} has {right})")]
    LengthMismatch {
        what: &'static str,
        left_name: &'static str,
        left: usize,
        right_name: &'static str,
        right: usize,
    },
    /// A class id outside `0..num_classes` (and not the ignore id) was found in a mask.
    #[error(
        "{which} mask has class id {value} at pixel {index}, but only {num_classes} classes \
         (ids 0..={max}) exist",
        max = num_classes.saturating_sub(1)
    )]
    ClassOutOfRange {
        which: &'static str,
        value: u8,
        index: usize,
        num_classes: usize,
    },
    /// One input of a batch (e.g. pair `index` of [`crate::ConfusionMatrix::from_pairs`])
    /// failed.
    #[error("pair {index}: {source}")]
    InPair {
        index: usize,
        #[source]
        source: Box<MetricsError>,
    },
    /// An argument is not usable (zero-sized image, empty palette, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// polars failed to build, write or read a table.
    #[error("table{}: {source}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Table {
        path: Option<PathBuf>,
        #[source]
        source: polars::error::PolarsError,
    },
    /// A table does not have the shape the caller asked for (wrong column type, ...).
    #[error("table{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    TableShape {
        path: Option<PathBuf>,
        message: String,
    },
    /// Drawing a figure failed.
    #[error("{}: drawing failed: {message}", path.display())]
    Plot { path: PathBuf, message: String },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, MetricsError>;

impl From<lus_io::IoError> for MetricsError {
    fn from(e: lus_io::IoError) -> Self {
        MetricsError::Io {
            path: e.path,
            source: e.source,
        }
    }
}
