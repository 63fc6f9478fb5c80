//! The error type of lus-scanner.

/// Errors of lus-scanner.
#[derive(Debug, thiserror::Error)]
pub enum ScannerError {
    /// A configuration value is out of range; `what` names the key (`scanner.size`, ...).
    #[error("invalid {what}: {reason}")]
    Config { what: String, reason: String },
}

/// Result alias of lus-scanner.
pub type Result<T, E = ScannerError> = std::result::Result<T, E>;

impl ScannerError {
    pub fn config(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
