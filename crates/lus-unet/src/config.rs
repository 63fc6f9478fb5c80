//! The U-Net's configuration (serde, so experiment TOML files can carry it).

use serde::{Deserialize, Serialize};

use crate::error::{Result, UNetError};

/// Deepest U-Net accepted: 6 down-sampling steps already need inputs that are multiples of 64
/// and give a bottleneck with `base * 64` channels; deeper nets do not fit LUS frame sizes.
pub const MAX_DEPTH: usize = 6;

/// Normalisation after each 3x3 convolution of the double-conv blocks. In TOML:
/// `norm = "batch"`, `norm = "none"`, `norm = { group = { groups = 8 } }`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Norm {
    /// Batch normalisation (eps 1e-5, momentum 0.1 as PyTorch's `BatchNorm2d`): batch
    /// statistics in training, running statistics in evaluation.
    #[default]
    Batch,
    /// Group normalisation (eps 1e-5) with `groups` groups; the same in training and
    /// evaluation, so it behaves well with the small batches of high-resolution frames.
    /// `groups` must divide `base_channels` (every level has a multiple of it).
    Group { groups: usize },
    /// No normalisation: the convolutions carry a bias instead.
    None,
}

/// How the decoder doubles the resolution before concatenating the skip connection. In TOML:
/// `upsampling = "transposed-conv"` or `"bilinear-conv"`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Upsampling {
    /// 2x2 transposed convolution with stride 2 (halves the channels), with bias.
    #[default]
    TransposedConv,
    /// Bilinear x2 (PyTorch's `align_corners=False`) followed by a 3x3 convolution with bias
    /// that halves the channels; free of the checkerboard artifacts of transposed convs.
    BilinearConv,
}

/// Which implementation runs the convolutions, transposed convolutions and batch norms of a
/// U-Net on the CPU. In TOML: `kernels = "lus"` or `"candle"`. On a GPU candle's ops always
/// run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Kernels {
    /// The custom ops of [`crate::cpu_ops`] (im2col + GEMM convolutions, one-pass batch norm
    /// fused with its ReLU) for f32 and f64 tensors on the CPU: several times faster to train.
    #[default]
    Lus,
    /// candle's own ops everywhere (the reference the custom ops are tested against).
    Candle,
}

/// The arithmetic of the convolutions (3x3, transposed and the 1x1 head). In TOML:
/// `precision = "f32"`, `"tf32"` or `"bf16"`. The weights (master copies, what the optimizer
/// updates and the checkpoints hold), norms, pooling, losses and optimizer state stay f32 in
/// every mode; only the convolutions' products change, as with PyTorch's autocast.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Full single precision everywhere.
    #[default]
    F32,
    /// f32 tensors, but CUDA's f32 matrix products may use TF32 tensor cores (10-bit
    /// mantissa inputs, f32 accumulation; PyTorch's `allow_tf32`). Only CUDA has TF32: on the
    /// CPU this is the same arithmetic as `f32`.
    Tf32,
    /// bf16 autocast: each convolution casts its input and weight to bf16, runs in bf16 (f32
    /// accumulation inside the GEMMs) and casts its output back to f32, where the bias is
    /// added. Gradients reach the f32 weights through the casts. Meant for CUDA (tensor
    /// cores); on the CPU candle's bf16 convolutions run, much slower than the f32 `lus`
    /// kernels.
    Bf16,
}

impl Precision {
    /// The element type the convolutions compute in, when it is not the model's.
    pub fn autocast_dtype(self) -> Option<candle_core::DType> {
        match self {
            Self::Bf16 => Some(candle_core::DType::BF16),
            Self::F32 | Self::Tf32 => None,
        }
    }
}

/// The architecture of a [`crate::UNet`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UNetConfig {
    /// Channels of the input image (1 for grey-scale B-mode).
    pub in_channels: usize,
    /// Output classes (9 for the default label schema).
    pub num_classes: usize,
    /// Number of 2x down-sampling steps (1..=6). Input height and width must be multiples of
    /// `2^depth`.
    pub depth: usize,
    /// Channels of the first level; level `l` has `base_channels * 2^l`, the bottleneck
    /// `base_channels * 2^depth`.
    pub base_channels: usize,
    /// Normalisation inside the double-conv blocks.
    pub norm: Norm,
    /// Decoder up-sampling.
    pub upsampling: Upsampling,
    /// Drop probability of the element-wise dropout on the bottleneck output, in [0, 1).
    pub dropout: f32,
    /// Which kernels run the layers on the CPU (no effect on the weights or their names).
    pub kernels: Kernels,
    /// Arithmetic of the convolutions (no effect on the weights' dtype or names).
    pub precision: Precision,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            num_classes: 9,
            depth: 4,
            base_channels: 16,
            norm: Norm::Batch,
            upsampling: Upsampling::TransposedConv,
            dropout: 0.0,
            kernels: Kernels::Lus,
            precision: Precision::F32,
        }
    }
}

impl UNetConfig {
    /// Checks every field; the error names the field and the accepted range.
    pub fn validate(&self) -> Result<()> {
        if self.in_channels == 0 {
            return Err(UNetError::config("in_channels", "must be at least 1"));
        }
        if self.num_classes == 0 {
            return Err(UNetError::config("num_classes", "must be at least 1"));
        }
        if !(1..=MAX_DEPTH).contains(&self.depth) {
            return Err(UNetError::config(
                "depth",
                format!("must be in 1..={MAX_DEPTH}, is {}", self.depth),
            ));
        }
        if self.base_channels == 0 {
            return Err(UNetError::config("base_channels", "must be at least 1"));
        }
        // The bottleneck has base << depth channels; refuse sizes whose weights could not even
        // be counted in usize (a typo such as base_channels = 1e9 should fail here, not in an
        // allocation).
        let widest = self
            .base_channels
            .checked_shl(self.depth as u32)
            .filter(|w| w >> self.depth == self.base_channels && *w <= 1 << 16);
        if widest.is_none() {
            return Err(UNetError::config(
                "base_channels",
                format!(
                    "base_channels * 2^depth = {} * 2^{} exceeds 65536 channels",
                    self.base_channels, self.depth
                ),
            ));
        }
        if let Norm::Group { groups } = self.norm {
            if groups == 0 {
                return Err(UNetError::config("norm.group.groups", "must be at least 1"));
            }
            if !self.base_channels.is_multiple_of(groups) {
                return Err(UNetError::config(
                    "norm.group.groups",
                    format!(
                        "{groups} groups do not divide base_channels = {}",
                        self.base_channels
                    ),
                ));
            }
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(UNetError::config(
                "dropout",
                format!("must be in [0, 1), is {}", self.dropout),
            ));
        }
        Ok(())
    }

    /// Input height and width must be multiples of this (`2^depth`).
    pub fn min_input_multiple(&self) -> usize {
        1usize << self.depth.min(MAX_DEPTH)
    }

    /// Channels of encoder/decoder level `level` (0 = full resolution); `level == depth` is the
    /// bottleneck.
    pub fn channels_at(&self, level: usize) -> usize {
        self.base_channels << level
    }

    /// Multiply-adds of one forward pass of the convolutions (3x3, the up-sampling's transposed
    /// 2x2 or 3x3, the 1x1 head) for a `batch x in_channels x size x size` input; norms,
    /// activations and pooling are not counted. A training step is about three times this
    /// (forward, input gradient, weight gradient), and FLOPs are twice the multiply-adds.
    pub fn forward_macs(&self, batch: usize, size: usize) -> f64 {
        let px = |level: usize| ((size >> level) * (size >> level) * batch) as f64;
        let mut macs = 0.0;
        let mut c_in = self.in_channels;
        for level in 0..=self.depth {
            let c = self.channels_at(level) as f64;
            macs += px(level) * 9.0 * (c_in as f64 * c + c * c);
            c_in = self.channels_at(level);
        }
        for level in 0..self.depth {
            let (c, below) = (
                self.channels_at(level) as f64,
                self.channels_at(level + 1) as f64,
            );
            macs += match self.upsampling {
                Upsampling::TransposedConv => px(level + 1) * below * c * 4.0,
                Upsampling::BilinearConv => px(level) * 9.0 * below * c,
            };
            macs += px(level) * 9.0 * (2.0 * c * c + c * c);
        }
        macs + px(0) * (self.base_channels * self.num_classes) as f64
    }

    /// Channels of the bottleneck output (`base_channels * 2^depth`).
    pub fn bottleneck_channels(&self) -> usize {
        self.channels_at(self.depth)
    }

    /// Channels of the last decoder features, those the 1x1 head reads (`base_channels`).
    pub fn decoder_channels(&self) -> usize {
        self.base_channels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IntoDeserializer;
    use serde::de::value::{Error as ValueError, MapDeserializer};

    #[test]
    fn missing_fields_take_defaults_and_unknown_fields_are_rejected() {
        let entries = vec![("depth", 3u64), ("num_classes", 4)];
        let config =
            UNetConfig::deserialize(MapDeserializer::<_, ValueError>::new(entries.into_iter()))
                .unwrap();
        assert_eq!(
            config,
            UNetConfig {
                depth: 3,
                num_classes: 4,
                ..Default::default()
            }
        );
        let typo = vec![("dept", 3u64)];
        let err = UNetConfig::deserialize(MapDeserializer::<_, ValueError>::new(typo.into_iter()))
            .unwrap_err();
        assert!(err.to_string().contains("dept"), "{err}");
    }

    #[test]
    fn variant_names_are_kebab_case() {
        let norm =
            |s: &str| Norm::deserialize(IntoDeserializer::<ValueError>::into_deserializer(s));
        assert_eq!(norm("batch").unwrap(), Norm::Batch);
        assert_eq!(norm("none").unwrap(), Norm::None);
        assert!(norm("Batch").is_err());
        let up =
            |s: &str| Upsampling::deserialize(IntoDeserializer::<ValueError>::into_deserializer(s));
        assert_eq!(up("bilinear-conv").unwrap(), Upsampling::BilinearConv);
        assert_eq!(up("transposed-conv").unwrap(), Upsampling::TransposedConv);
        let kernels =
            |s: &str| Kernels::deserialize(IntoDeserializer::<ValueError>::into_deserializer(s));
        assert_eq!(kernels("lus").unwrap(), Kernels::Lus);
        // The reference network: 36.2 GFLOP per training step at batch 8, 128 px.
        let reference = UNetConfig {
            num_classes: 6,
            ..UNetConfig::default()
        };
        let step_gflop = 6.0 * reference.forward_macs(8, 128) / 1e9;
        assert!((step_gflop - 36.2).abs() < 0.05, "{step_gflop}");
        assert_eq!(kernels("candle").unwrap(), Kernels::Candle);
        assert!(kernels("Lus").is_err());
    }
}
