//! The U-Net classifier.
//!
//! # Architecture
//!
//! The U-Net (names under `unet.`, exactly the tensors of a segmentation checkpoint) produces,
//! depending on [`HeadPlacement`], its per-pixel class logits, its last decoder features or its
//! bottleneck. The head (names under `classifier.`) is
//! `conv3x3(in -> h) -> ReLU -> conv3x3 stride 2 (h -> h) -> ReLU -> [global average pool,
//! global max pool] (2h) -> dropout -> linear (2h -> num_diagnoses)`, all with biases. The two
//! poolings let the head see both how much of the frame shows a finding (average) and whether
//! it appears anywhere (max), which for B-lines or a consolidation matters more than their
//! area. The head reads the raw logits, not their softmax, so its gradient reaches the U-Net
//! undamped by saturated probabilities.
//!
//! # Initialisation
//!
//! [`UNetClassifier::init_weights`] draws the U-Net first (its own rule, see
//! [`lus_unet::UNet::init_weights`]) and the head after it from the same stream, so with one
//! seed every arm starts from the same head; the pretrained arms then overwrite the U-Net with
//! [`UNetClassifier::load_backbone`].

use std::path::Path;

use candle_core::{D, DType, Module, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, Init, Linear, VarBuilder, VarMap};
use lus_unet::{Mode, Part, UNet, UNetConfig};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::config::{ClassifierConfig, Freeze, HeadPlacement};
use crate::error::{Result, TransferError};

/// Prefix of the U-Net's tensors in the classifier's `VarMap`.
pub const BACKBONE_PREFIX: &str = "unet";
/// Prefix of the classification head's tensors.
pub const HEAD_PREFIX: &str = "classifier";

/// A named set of parameters trained with one learning-rate multiplier.
#[derive(Debug, Clone)]
pub struct ParamSet {
    pub name: String,
    pub params: Vec<(String, Var)>,
    pub lr_multiplier: f64,
}

/// What the classifier returns.
#[derive(Debug, Clone)]
pub struct ClassifierOutput {
    /// Diagnosis logits, `N x num_diagnoses` (no softmax).
    pub logits: Tensor,
    /// Per-pixel class logits of the U-Net, `N x num_classes x H x W`, when asked for (or when
    /// the head reads them anyway).
    pub segmentation: Option<Tensor>,
}

#[derive(Debug, Clone)]
struct HeadWeights {
    name: &'static str,
    shape: Vec<usize>,
    /// Inputs reaching one output (for the initialisation's scale).
    fan_in: usize,
    /// Kaiming (ReLU follows) or LeCun (the final linear layer) scaling; biases are zero.
    kind: HeadTensor,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum HeadTensor {
    ReluWeight,
    LinearWeight,
    Bias,
}

/// A U-Net with a classification head.
#[derive(Debug, Clone)]
pub struct UNetClassifier {
    config: ClassifierConfig,
    unet: UNet,
    conv1: Conv2d,
    conv2: Conv2d,
    linear: Linear,
    head_tensors: Vec<HeadWeights>,
}

impl UNetClassifier {
    /// Builds the U-Net under `unet.` and the head under `classifier.` of `vb` (variables are
    /// placeholders until [`UNetClassifier::init_weights`] or a load).
    pub fn new(
        unet_config: &UNetConfig,
        config: &ClassifierConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        config.validate()?;
        let unet = UNet::new(unet_config, vb.pp(BACKBONE_PREFIX))?;
        let in_channels = match config.head {
            HeadPlacement::SegLogits => unet_config.num_classes,
            HeadPlacement::Decoder => unet_config.base_channels,
            HeadPlacement::Bottleneck => unet_config.base_channels << unet_config.depth,
        };
        let h = config.head_channels;
        let k = config.num_diagnoses;
        let head = vb.pp(HEAD_PREFIX);
        let zeros = Init::Const(0.0);
        let conv = |name: &str, cin: usize, stride: usize| -> Result<Conv2d> {
            let p = head.pp(name);
            let weight = p.get_with_hints((h, cin, 3, 3), "weight", zeros)?;
            let bias = p.get_with_hints(h, "bias", zeros)?;
            Ok(Conv2d::new(
                weight,
                Some(bias),
                Conv2dConfig {
                    padding: 1,
                    stride,
                    ..Default::default()
                },
            ))
        };
        let conv1 = conv("conv1", in_channels, 1)?;
        let conv2 = conv("conv2", h, 2)?;
        let lp = head.pp("linear");
        let linear = Linear::new(
            lp.get_with_hints((k, 2 * h), "weight", zeros)?,
            Some(lp.get_with_hints(k, "bias", zeros)?),
        );
        let head_tensors = vec![
            HeadWeights {
                name: "conv1.weight",
                shape: vec![h, in_channels, 3, 3],
                fan_in: in_channels * 9,
                kind: HeadTensor::ReluWeight,
            },
            HeadWeights {
                name: "conv1.bias",
                shape: vec![h],
                fan_in: 0,
                kind: HeadTensor::Bias,
            },
            HeadWeights {
                name: "conv2.weight",
                shape: vec![h, h, 3, 3],
                fan_in: h * 9,
                kind: HeadTensor::ReluWeight,
            },
            HeadWeights {
                name: "conv2.bias",
                shape: vec![h],
                fan_in: 0,
                kind: HeadTensor::Bias,
            },
            HeadWeights {
                name: "linear.weight",
                shape: vec![k, 2 * h],
                fan_in: 2 * h,
                kind: HeadTensor::LinearWeight,
            },
            HeadWeights {
                name: "linear.bias",
                shape: vec![k],
                fan_in: 0,
                kind: HeadTensor::Bias,
            },
        ];
        Ok(UNetClassifier {
            config: config.clone(),
            unet,
            conv1,
            conv2,
            linear,
            head_tensors,
        })
    }

    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    /// Seeded initialisation of every tensor (see the module documentation).
    pub fn init_weights(&self, varmap: &VarMap, rng: &mut ChaCha8Rng) -> Result<()> {
        self.unet.init_weights(varmap, rng)?;
        let data = varmap
            .data()
            .lock()
            .map_err(|_| TransferError::config("varmap", "the VarMap's lock is poisoned"))?;
        for t in &self.head_tensors {
            let name = format!("{HEAD_PREFIX}.{}", t.name);
            let var = data
                .get(&name)
                .ok_or_else(|| TransferError::config("varmap", format!("{name} is missing")))?;
            let count: usize = t.shape.iter().product();
            let values: Vec<f32> = match t.kind {
                HeadTensor::Bias => vec![0.0; count],
                HeadTensor::ReluWeight | HeadTensor::LinearWeight => {
                    let gain = if t.kind == HeadTensor::ReluWeight {
                        2.0
                    } else {
                        1.0
                    };
                    let normal = Normal::new(0.0, (gain / t.fan_in as f64).sqrt())
                        .map_err(|e| TransferError::config("init", format!("{name}: {e}")))?;
                    (0..count).map(|_| normal.sample(rng) as f32).collect()
                }
            };
            var.set(
                &Tensor::from_vec(values, t.shape.as_slice(), var.device())?
                    .to_dtype(var.dtype())?,
            )?;
        }
        Ok(())
    }

    /// Overwrites the U-Net's tensors with a segmentation checkpoint (every tensor must be in
    /// the file with its shape and dtype, and the file must hold nothing else; otherwise one
    /// error lists the missing, unexpected and mis-shaped tensors and nothing is changed).
    pub fn load_backbone(&self, varmap: &VarMap, checkpoint: &Path) -> Result<()> {
        lus_unet::load_weights_prefixed(varmap, checkpoint, BACKBONE_PREFIX)?;
        Ok(())
    }

    /// Whether a U-Net part is trained under the freezing policy and on the head's path.
    fn trains(&self, part: Part) -> bool {
        let on_path = match self.config.head {
            HeadPlacement::SegLogits => true,
            HeadPlacement::Decoder => part != Part::Head,
            HeadPlacement::Bottleneck => matches!(part, Part::Encoder | Part::Bottleneck),
        };
        let unfrozen = match self.config.freeze {
            Freeze::None => true,
            Freeze::Encoder => !matches!(part, Part::Encoder | Part::Bottleneck),
            Freeze::AllButHead => false,
        };
        on_path && unfrozen
    }

    /// The trained parameters: `backbone` (the U-Net tensors the policy trains, with the
    /// backbone multiplier; absent when none is) and `head` (with the head multiplier).
    pub fn param_sets(&self, varmap: &VarMap) -> Result<Vec<ParamSet>> {
        let specs: Vec<_> = self
            .unet
            .param_specs()
            .iter()
            .filter(|s| s.kind.is_trainable() && self.trains(s.part))
            .cloned()
            .collect();
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let vars = self
            .unet
            .vars_where(varmap, |s| s.kind.is_trainable() && self.trains(s.part))?;
        let mut sets = Vec::new();
        if !vars.is_empty() {
            sets.push(ParamSet {
                name: "backbone".into(),
                params: names.into_iter().zip(vars).collect(),
                lr_multiplier: self.config.backbone_lr_multiplier,
            });
        }
        let data = varmap
            .data()
            .lock()
            .map_err(|_| TransferError::config("varmap", "the VarMap's lock is poisoned"))?;
        let mut head = Vec::new();
        for t in &self.head_tensors {
            let name = format!("{HEAD_PREFIX}.{}", t.name);
            let var = data
                .get(&name)
                .ok_or_else(|| TransferError::config("varmap", format!("{name} is missing")))?;
            head.push((name, var.clone()));
        }
        sets.push(ParamSet {
            name: "head".into(),
            params: head,
            lr_multiplier: self.config.head_lr_multiplier,
        });
        Ok(sets)
    }

    /// Diagnosis logits for `N x in_channels x H x W` images, and the segmentation logits when
    /// `with_segmentation` is set or the head reads them. Frozen parts run in evaluation mode
    /// (running batch-norm statistics, no dropout) and are detached from the graph.
    pub fn forward_t(
        &self,
        x: &Tensor,
        mode: &mut Mode<'_>,
        with_segmentation: bool,
    ) -> Result<ClassifierOutput> {
        let train = mode.is_train();
        let encoder_trained = train && self.trains(Part::Encoder);
        let decoder_trained = train && self.trains(Part::Decoder);
        let mut features = if encoder_trained {
            self.unet.encode(x, mode)?
        } else {
            let f = self.unet.encode(x, &mut Mode::Eval)?;
            lus_unet::EncoderFeatures {
                skips: f.skips.iter().map(Tensor::detach).collect(),
                bottleneck: f.bottleneck.detach(),
            }
        };
        let decode =
            |features: &lus_unet::EncoderFeatures, mode: &mut Mode<'_>| -> Result<Tensor> {
                Ok(if decoder_trained {
                    self.unet.decode(features, mode)?
                } else {
                    self.unet.decode(features, &mut Mode::Eval)?.detach()
                })
            };
        let (head_input, segmentation) = match self.config.head {
            HeadPlacement::SegLogits => {
                let seg = self.unet.head(&decode(&features, mode)?)?;
                (seg.clone(), Some(seg))
            }
            HeadPlacement::Decoder => {
                let decoded = decode(&features, mode)?;
                let seg = if with_segmentation {
                    Some(self.unet.head(&decoded.detach())?)
                } else {
                    None
                };
                (decoded, seg)
            }
            HeadPlacement::Bottleneck => {
                let bottleneck = features.bottleneck.clone();
                let seg = if with_segmentation {
                    features.bottleneck = features.bottleneck.detach();
                    let decoded = self.unet.decode(&features, &mut Mode::Eval)?;
                    Some(self.unet.head(&decoded)?.detach())
                } else {
                    None
                };
                (bottleneck, seg)
            }
        };
        let logits = self.head_forward(&head_input, mode)?;
        Ok(ClassifierOutput {
            logits,
            segmentation: if with_segmentation || self.config.head == HeadPlacement::SegLogits {
                segmentation
            } else {
                None
            },
        })
    }

    fn head_forward(&self, x: &Tensor, mode: &mut Mode<'_>) -> Result<Tensor> {
        let h = self.conv1.forward(x)?.relu()?;
        let h = self.conv2.forward(&h)?.relu()?;
        let flat = h.flatten_from(2)?;
        let pooled = Tensor::cat(&[flat.mean(D::Minus1)?, flat.max(D::Minus1)?], 1)?;
        let pooled = match mode {
            Mode::Train { rng } if self.config.head_dropout > 0.0 => {
                let mask = lus_unet::dropout_mask(
                    pooled.dims(),
                    self.config.head_dropout,
                    rng,
                    pooled.dtype(),
                    pooled.device(),
                )?;
                pooled.mul(&mask)?
            }
            _ => pooled,
        };
        Ok(self.linear.forward(&pooled)?)
    }

    /// Diagnosis probabilities (softmax of the logits), `N x num_diagnoses`, f32.
    pub fn probabilities(logits: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax(
            &logits.to_dtype(DType::F32)?,
            D::Minus1,
        )?)
    }
}
