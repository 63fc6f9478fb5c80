//! The U-Net itself: construction from a `VarBuilder`, deterministic initialisation, and the
//! forward pass split into encoder, decoder and head so that a classifier can read any of them.

use candle_core::{DType, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::config::{Norm, Precision, UNetConfig, Upsampling};
use crate::cpu_ops;
use crate::error::{Result, UNetError};
use crate::layers::{
    Conv, DoubleConv, ParamKind, ParamSpec, Part, Registry, UpLayer, conv2d, dropout_mask,
    lus_kernels_apply, max_pool2x2,
};

/// Training or evaluation behaviour of a forward pass.
///
/// `Train` makes batch norms normalise with the batch statistics and update their running
/// statistics, and applies the bottleneck dropout with masks drawn from `rng` (host side, so a
/// seeded run is reproducible). `Eval` uses the running statistics and no dropout, and is a
/// pure function of the input and the weights.
#[derive(Debug)]
pub enum Mode<'a> {
    Eval,
    Train { rng: &'a mut ChaCha8Rng },
}

impl<'a> Mode<'a> {
    /// Training mode drawing dropout masks from `rng`.
    pub fn train(rng: &'a mut ChaCha8Rng) -> Self {
        Self::Train { rng }
    }

    pub fn is_train(&self) -> bool {
        matches!(self, Self::Train { .. })
    }
}

/// The encoder's output: what the decoder needs, and what a classifier may read.
#[derive(Debug, Clone)]
pub struct EncoderFeatures {
    /// `skips[l]`: output of encoder level `l` before its max-pool,
    /// `N x base*2^l x H/2^l x W/2^l`.
    pub skips: Vec<Tensor>,
    /// Bottleneck output after its dropout, `N x base*2^depth x H/2^depth x W/2^depth`.
    pub bottleneck: Tensor,
}

/// One decoder level: up-sample, concatenate the skip, double conv.
#[derive(Debug, Clone)]
struct DecoderLevel {
    up: UpLayer,
    conv: DoubleConv,
}

/// A U-Net for per-pixel classification (see the crate documentation for the architecture and
/// the tensor names).
#[derive(Debug, Clone)]
pub struct UNet {
    config: UNetConfig,
    /// Every tensor this model registered, sorted by name.
    params: Vec<ParamSpec>,
    dtype: DType,
    encoder: Vec<DoubleConv>,
    bottleneck: DoubleConv,
    /// Indexed by level: `decoder[l]` produces the features at the resolution of `skips[l]`.
    decoder: Vec<DecoderLevel>,
    head: Conv,
}

impl UNet {
    /// Builds the layers from `vb`. With a `VarBuilder` over a `VarMap` the tensors are created
    /// as variables (filled with placeholders: zero weights, unit scales; call
    /// [`UNet::init_weights`] or [`crate::load_weights`] next); over safetensors they are read.
    pub fn new(config: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let mut reg = Registry {
            specs: Vec::new(),
            part: Part::Encoder,
            kernels: config.kernels,
            autocast: config.precision.autocast_dtype(),
        };
        let mut encoder = Vec::with_capacity(config.depth);
        for level in 0..config.depth {
            let in_ch = if level == 0 {
                config.in_channels
            } else {
                config.channels_at(level - 1)
            };
            let out_ch = config.channels_at(level);
            encoder.push(DoubleConv::new(
                &mut reg,
                &vb.pp("enc").pp(level),
                in_ch,
                out_ch,
                config.norm,
            )?);
        }
        reg.part = Part::Bottleneck;
        let bottleneck = DoubleConv::new(
            &mut reg,
            &vb.pp("bottleneck"),
            config.channels_at(config.depth - 1),
            config.bottleneck_channels(),
            config.norm,
        )?;
        reg.part = Part::Decoder;
        let mut decoder = Vec::with_capacity(config.depth);
        for level in 0..config.depth {
            let vb_level = vb.pp("dec").pp(level);
            let below = config.channels_at(level + 1);
            let here = config.channels_at(level);
            let up = match config.upsampling {
                Upsampling::TransposedConv => {
                    UpLayer::transposed(&mut reg, &vb_level.pp("up"), below, here)?
                }
                Upsampling::BilinearConv => {
                    UpLayer::bilinear_conv(&mut reg, &vb_level.pp("up"), below, here)?
                }
            };
            let conv = DoubleConv::new(&mut reg, &vb_level, 2 * here, here, config.norm)?;
            decoder.push(DecoderLevel { up, conv });
        }
        reg.part = Part::Head;
        let head = conv2d(
            &mut reg,
            &vb.pp("head"),
            config.decoder_channels(),
            config.num_classes,
            1,
            true,
        )?;
        let mut params = reg.specs;
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            config: config.clone(),
            params,
            dtype: vb.dtype(),
            encoder,
            bottleneck,
            decoder,
            head,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Every tensor of this model (full names, with the `VarBuilder` prefix), sorted by name.
    pub fn param_specs(&self) -> &[ParamSpec] {
        &self.params
    }

    /// Number of trainable scalars (running statistics excluded).
    pub fn num_trainable_parameters(&self) -> usize {
        self.params
            .iter()
            .filter(|p| p.kind.is_trainable())
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    /// Deterministic initialisation of this model's tensors in `varmap` from `rng`:
    /// Kaiming-normal weights, `N(0, 2 / fan_in)` (ReLU gain), for every convolution and
    /// transposed convolution (the head included); zero biases; norm scale 1 and shift 0;
    /// running mean 0 and variance 1.
    ///
    /// Tensors are visited in sorted-name order and only convolution weights consume draws, so
    /// the result depends on the seed alone, not on the `VarMap`'s hash order; variables of the
    /// `VarMap` that do not belong to this model (a classifier head, say) are left untouched.
    ///
    /// `fan_in` is the number of inputs reaching one output: `in * k * k` for a convolution,
    /// `in` for the 2x2 stride-2 transposed convolution (each output pixel sees one tap per
    /// input channel; PyTorch's `kaiming_normal_` would use `out * 4` here, which does not
    /// preserve the forward variance).
    pub fn init_weights(&self, varmap: &VarMap, rng: &mut ChaCha8Rng) -> Result<()> {
        let vars = self.lookup_vars(varmap, |_| true)?;
        for (spec, var) in self.params.iter().zip(vars) {
            let count: usize = spec.shape.iter().product();
            let values: Vec<f64> = match spec.kind {
                ParamKind::ConvWeight { fan_in } => {
                    let std = (2.0 / fan_in as f64).sqrt();
                    let normal = Normal::new(0.0, std).map_err(|e| {
                        UNetError::config("init", format!("{}: std {std}: {e}", spec.name))
                    })?;
                    (0..count).map(|_| normal.sample(rng)).collect()
                }
                ParamKind::ConvBias | ParamKind::NormShift | ParamKind::RunningMean => {
                    vec![0.0; count]
                }
                ParamKind::NormScale | ParamKind::RunningVar => vec![1.0; count],
            };
            let value = Tensor::from_vec(values, spec.shape.as_slice(), var.device())?
                .to_dtype(var.dtype())?;
            var.set(&value)?;
        }
        Ok(())
    }

    /// The variables of this model an optimiser should update (running statistics excluded),
    /// sorted by name.
    pub fn trainable_vars(&self, varmap: &VarMap) -> Result<Vec<Var>> {
        self.lookup_vars(varmap, |spec| spec.kind.is_trainable())
    }

    /// The variables of this model for which `select` holds, sorted by name (for freezing
    /// schemes, e.g. `|s| s.part != Part::Encoder && s.kind.is_trainable()`).
    pub fn vars_where(
        &self,
        varmap: &VarMap,
        select: impl Fn(&ParamSpec) -> bool,
    ) -> Result<Vec<Var>> {
        self.lookup_vars(varmap, select)
    }

    fn lookup_vars(
        &self,
        varmap: &VarMap,
        select: impl Fn(&ParamSpec) -> bool,
    ) -> Result<Vec<Var>> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| UNetError::config("varmap", "the VarMap's lock is poisoned"))?;
        let mut vars = Vec::new();
        for spec in self.params.iter().filter(|s| select(s)) {
            let var = data.get(&spec.name).ok_or_else(|| UNetError::MissingVar {
                name: spec.name.clone(),
            })?;
            if var.dims() != spec.shape.as_slice() {
                return Err(UNetError::config(
                    "varmap",
                    format!(
                        "variable {} has shape {:?}, the model expects {:?}",
                        spec.name,
                        var.dims(),
                        spec.shape
                    ),
                ));
            }
            vars.push(var.clone());
        }
        Ok(vars)
    }

    /// Checks that `dims` is an `N x in_channels x H x W` input with H and W positive multiples
    /// of `2^depth`.
    pub fn check_input(&self, dims: &[usize]) -> Result<()> {
        let fail = |reason: String| {
            Err(UNetError::Input {
                shape: dims.to_vec(),
                reason,
            })
        };
        let &[n, c, h, w] = dims else {
            return fail("expected 4 dimensions, N x C x H x W".to_string());
        };
        if n == 0 {
            return fail("the batch is empty".to_string());
        }
        if c != self.config.in_channels {
            return fail(format!(
                "expected {} input channel(s), got {c}",
                self.config.in_channels
            ));
        }
        let multiple = self.config.min_input_multiple();
        if h == 0 || w == 0 || !h.is_multiple_of(multiple) || !w.is_multiple_of(multiple) {
            return fail(format!(
                "height and width must be positive multiples of 2^depth = {multiple} \
                 (depth {}); got {h} x {w}",
                self.config.depth
            ));
        }
        Ok(())
    }

    /// Runs the encoder and the bottleneck (with its dropout in training mode).
    pub fn encode(&self, x: &Tensor, mode: &mut Mode<'_>) -> candle_core::Result<EncoderFeatures> {
        self.check_input(x.dims())
            .map_err(candle_core::Error::wrap)?;
        if x.dtype() != self.dtype {
            candle_core::bail!(
                "U-Net input has dtype {:?}, the weights {:?}",
                x.dtype(),
                self.dtype
            )
        }
        if x.device().is_cuda() {
            // candle's TF32 switch is process-wide: set it at every forward, so each model in a
            // process computes in its own precision (the backward pass follows its forward).
            candle_core::cuda::set_gemm_reduced_precision_f32(
                self.config.precision == Precision::Tf32,
            );
        }
        let train = mode.is_train();
        if train && self.config.norm == Norm::Batch {
            // Batch statistics need two values per channel at the bottleneck; with one, the
            // variance is 0/0 (PyTorch refuses the same input).
            let (n, _, h, w) = x.dims4()?;
            let per_channel = n * (h >> self.config.depth) * (w >> self.config.depth);
            if per_channel < 2 {
                candle_core::bail!(
                    "U-Net input of shape {:?}: batch norm in training mode needs more than one \
                     value per channel at the bottleneck, got {per_channel} (batch {n}, \
                     bottleneck {} x {})",
                    x.dims(),
                    h >> self.config.depth,
                    w >> self.config.depth
                )
            }
        }
        let mut skips = Vec::with_capacity(self.config.depth);
        let mut h = x.clone();
        for level in &self.encoder {
            let features = level.forward(&h, train)?;
            h = if lus_kernels_apply(self.config.kernels, &features) {
                cpu_ops::max_pool2x2(&features)?
            } else {
                max_pool2x2(&features)?
            };
            skips.push(features);
        }
        let mut bottleneck = self.bottleneck.forward(&h, train)?;
        if let Mode::Train { rng } = mode
            && self.config.dropout > 0.0
        {
            let mask = dropout_mask(
                bottleneck.dims(),
                self.config.dropout,
                rng,
                bottleneck.dtype(),
                bottleneck.device(),
            )?;
            bottleneck = bottleneck.mul(&mask)?;
        }
        Ok(EncoderFeatures { skips, bottleneck })
    }

    /// Runs the decoder; returns the last decoder features, `N x base x H x W` (the input of
    /// the 1x1 head).
    pub fn decode(
        &self,
        features: &EncoderFeatures,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        if features.skips.len() != self.config.depth {
            candle_core::bail!(
                "U-Net decode: {} skip tensors for a depth-{} network",
                features.skips.len(),
                self.config.depth
            )
        }
        let train = mode.is_train();
        let mut h = features.bottleneck.clone();
        for (level, skip) in self.decoder.iter().zip(&features.skips).rev() {
            let up = level.up.forward(&h)?;
            h = level.conv.forward_concat(skip, &up, train)?;
        }
        Ok(h)
    }

    /// The 1x1 head: per-pixel class logits from the last decoder features.
    pub fn head(&self, decoder_features: &Tensor) -> candle_core::Result<Tensor> {
        self.head.forward(decoder_features)
    }

    /// Logits `N x num_classes x H x W` (no softmax) for an `N x in_channels x H x W` input.
    pub fn forward_t(&self, x: &Tensor, mode: &mut Mode<'_>) -> candle_core::Result<Tensor> {
        let features = self.encode(x, mode)?;
        let decoded = self.decode(&features, mode)?;
        self.head(&decoded)
    }
}
