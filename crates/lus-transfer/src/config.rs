//! The classifier's settings (serde, so experiment files carry them).

use serde::{Deserialize, Serialize};

use crate::error::{Result, TransferError};

/// Which U-Net output the classification head reads. In TOML: `head = "seg-logits"`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HeadPlacement {
    /// The per-pixel class scores (`num_classes` channels at full resolution): the diagnosis
    /// is made from what the network segments (the paper's reverse transfer).
    #[default]
    SegLogits,
    /// The last decoder features (`base_channels` at full resolution), before the 1x1 head.
    Decoder,
    /// The encoder output (`base_channels * 2^depth` channels at `1 / 2^depth` resolution);
    /// the decoder is not run for the diagnosis.
    Bottleneck,
}

/// Which parameters are not trained. In TOML: `freeze = "encoder"`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Freeze {
    /// Everything is trained.
    #[default]
    None,
    /// The encoder and the bottleneck are frozen (their batch-norm statistics too: they run in
    /// evaluation mode); decoder, segmentation head and classification head are trained.
    Encoder,
    /// Only the classification head is trained; the whole U-Net runs in evaluation mode.
    AllButHead,
}

/// The classification head and how it is trained.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Diagnostic classes (3: healthy, covid, pneumonia).
    pub num_diagnoses: usize,
    /// Where the head reads from.
    pub head: HeadPlacement,
    /// Channels of the head's two 3x3 convolutions.
    pub head_channels: usize,
    /// Drop probability before the final linear layer, in [0, 1).
    pub head_dropout: f32,
    pub freeze: Freeze,
    /// Learning-rate multiplier of the (unfrozen) U-Net parameters.
    pub backbone_lr_multiplier: f64,
    /// Learning-rate multiplier of the classification head.
    pub head_lr_multiplier: f64,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            num_diagnoses: 3,
            head: HeadPlacement::SegLogits,
            head_channels: 16,
            head_dropout: 0.0,
            freeze: Freeze::None,
            backbone_lr_multiplier: 1.0,
            head_lr_multiplier: 1.0,
        }
    }
}

impl ClassifierConfig {
    /// Checks every field; the error names it.
    pub fn validate(&self) -> Result<()> {
        if self.num_diagnoses < 2 {
            return Err(TransferError::config(
                "num_diagnoses",
                format!("needs at least 2 classes, is {}", self.num_diagnoses),
            ));
        }
        if self.head_channels == 0 || self.head_channels > 1024 {
            return Err(TransferError::config(
                "head_channels",
                format!("must be in 1..=1024, is {}", self.head_channels),
            ));
        }
        if !(self.head_dropout.is_finite() && (0.0..1.0).contains(&self.head_dropout)) {
            return Err(TransferError::config(
                "head_dropout",
                format!("must be in [0, 1), is {}", self.head_dropout),
            ));
        }
        for (field, value) in [
            ("backbone_lr_multiplier", self.backbone_lr_multiplier),
            ("head_lr_multiplier", self.head_lr_multiplier),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(TransferError::config(
                    field,
                    format!("must be finite and > 0, is {value}"),
                ));
            }
        }
        Ok(())
    }
}
