//! The error type of lus-transfer.

/// Errors of lus-transfer.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A configuration value is out of range or inconsistent with another one.
    #[error("invalid classifier config: {field}: {reason}")]
    Config { field: String, reason: String },
    /// Building, initialising or loading the U-Net failed (a checkpoint error lists every
    /// missing, unexpected and mis-shaped tensor).
    #[error(transparent)]
    UNet(#[from] lus_unet::UNetError),
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

impl TransferError {
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias of lus-transfer.
pub type Result<T, E = TransferError> = std::result::Result<T, E>;
