//! lus-transfer: reverse transfer. A segmentation U-Net (pretrained on dense or sparse labels,
//! or freshly initialised for the `none` arm) becomes a diagnostic classifier
//! (COVID-19 / pneumonia / healthy) that still returns its segmentation map.
//!
//! - [`ClassifierConfig`]: where the head reads ([`HeadPlacement`]), what is frozen
//!   ([`Freeze`]), learning-rate multipliers of backbone and head.
//! - [`UNetClassifier`]: the U-Net under the prefix `unet.` and the head under `classifier.`
//!   of one `VarMap`; [`UNetClassifier::load_backbone`] reads a segmentation checkpoint into
//!   the U-Net part (strict: missing or mis-shaped tensors are one error listing them).

pub mod classifier;
pub mod config;
pub mod error;

pub use classifier::{BACKBONE_PREFIX, ClassifierOutput, HEAD_PREFIX, ParamSet, UNetClassifier};
pub use config::{ClassifierConfig, Freeze, HeadPlacement};
pub use error::{Result, TransferError};
