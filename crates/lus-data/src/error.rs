//! The error type of lus-data. Every variant that comes from a file names that file, so a
//! message read in a log points at what to fix.

use std::path::PathBuf;

/// Errors of lus-data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON document could not be parsed (syntax or types).
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A TOML document could not be parsed (syntax, types or unknown keys).
    #[error("{}: invalid TOML: {message}", path.display())]
    Toml { path: PathBuf, message: String },
    /// A label schema is inconsistent.
    #[error("{}: invalid label schema: {reason}", path.display())]
    Schema { path: PathBuf, reason: String },
    /// One shape of an annotation is invalid.
    #[error("{}: shape {index} (label {label:?}): {reason}", path.display())]
    Shape {
        path: PathBuf,
        index: usize,
        label: String,
        reason: String,
    },
    /// An annotation is invalid as a whole (size, field of view, format).
    #[error("{}: {reason}", path.display())]
    Annotation { path: PathBuf, reason: String },
    /// An image or mask could not be decoded, or its contents are not acceptable.
    #[error("{}: {reason}", path.display())]
    Image { path: PathBuf, reason: String },
    /// A configuration value is out of range.
    #[error("{program}: {reason}")]
    Tool { program: String, reason: String },

    #[error("invalid {what}: {reason}")]
    Config { what: String, reason: String },
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias of lus-data.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub fn config(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

impl From<lus_io::IoError> for DataError {
    fn from(e: lus_io::IoError) -> Self {
        DataError::Io {
            path: e.path,
            source: e.source,
        }
    }
}
