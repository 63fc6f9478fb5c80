//! The error type of lus-unet. Errors that come from a file name the file; a weights file
//! that does not fit the model lists every offending tensor at once, so one run shows
//! everything there is to fix.

use std::fmt;
use std::path::PathBuf;

use candle_core::DType;

/// A tensor of a weights file that is present under the expected name but does not fit.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMismatch {
    /// The tensor name (as in the file and in the `VarMap`).
    pub name: String,
    /// Shape and dtype the model expects.
    pub expected_shape: Vec<usize>,
    pub expected_dtype: DType,
    /// Shape and dtype found in the file.
    pub found_shape: Vec<usize>,
    pub found_dtype: DType,
}

impl fmt::Display for TensorMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {:?} {:?}, found {:?} {:?}",
            self.name, self.expected_dtype, self.expected_shape, self.found_dtype, self.found_shape
        )
    }
}

/// Everything that is wrong between a weights file and the model it is loaded into.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WeightsReport {
    /// Tensors the model needs that the file lacks (sorted).
    pub missing: Vec<String>,
    /// Tensors of the file that the model does not have (sorted).
    pub unexpected: Vec<String>,
    /// Tensors present in both with a different shape or dtype (sorted by name).
    pub mismatched: Vec<TensorMismatch>,
}

impl WeightsReport {
    /// True when the file fits the model exactly.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for WeightsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "{} missing: {}",
                self.missing.len(),
                self.missing.join(", ")
            ));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!(
                "{} unexpected: {}",
                self.unexpected.len(),
                self.unexpected.join(", ")
            ));
        }
        if !self.mismatched.is_empty() {
            let items: Vec<String> = self.mismatched.iter().map(|m| m.to_string()).collect();
            parts.push(format!(
                "{} with wrong shape or dtype: {}",
                self.mismatched.len(),
                items.join("; ")
            ));
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// Errors of lus-unet.
#[derive(Debug, thiserror::Error)]
pub enum UNetError {
    /// A configuration value is out of range or inconsistent with another one.
    #[error("invalid U-Net config: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// An input tensor does not fit the network (rank, channels, size).
    #[error("U-Net input of shape {shape:?}: {reason}")]
    Input { shape: Vec<usize>, reason: String },
    /// A variable the U-Net registered is absent from the `VarMap` handed to it (for instance
    /// a `VarMap` other than the one the model was built from).
    #[error("variable {name} is not in the VarMap (was the model built from this VarMap?)")]
    MissingVar { name: String },
    /// Reading, parsing or writing a weights file failed.
    #[error("{}: {reason}", path.display())]
    WeightsFile { path: PathBuf, reason: String },
    /// A weights file was read but does not fit the model.
    #[error("{}: weights do not fit the model: {report}", path.display())]
    WeightsMismatch {
        path: PathBuf,
        report: WeightsReport,
    },
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

impl UNetError {
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Config {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn weights_file(path: impl Into<PathBuf>, reason: impl fmt::Display) -> Self {
        Self::WeightsFile {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// Result alias of lus-unet.
pub type Result<T, E = UNetError> = std::result::Result<T, E>;
