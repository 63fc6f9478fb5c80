//! The building blocks of the U-Net, built from a `VarBuilder` in candle-nn's style, and the two
//! operations candle lacks in a usable form: a differentiable bilinear x2 up-sampling (candle's
//! `upsample_bilinear2d` has no backward pass) and a dropout whose mask comes from our seeded
//! host RNG (candle-nn's `Dropout` draws from candle's RNG, which cannot be seeded on the CPU).

use candle_core::{D, DType, Device, Module, ModuleT, Result, Tensor, Var};
use candle_nn::{
    BatchNorm, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, GroupNorm, Init,
    VarBuilder,
};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::config::{Kernels, Norm};
use crate::cpu_ops;

/// Epsilon of both normalisations (PyTorch's default for `BatchNorm2d` and `GroupNorm`).
pub const NORM_EPS: f64 = 1e-5;
/// Weight of the current batch in the running statistics (PyTorch's default).
pub const BATCH_NORM_MOMENTUM: f64 = 0.1;

/// What a parameter tensor is, which decides its initialisation and whether it is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Weight of a convolution or transposed convolution; `fan_in` is the number of input
    /// values that reach one output value (see [`crate::UNet::init_weights`]).
    ConvWeight { fan_in: usize },
    /// Bias of a convolution.
    ConvBias,
    /// Scale (gamma) of a batch or group norm.
    NormScale,
    /// Shift (beta) of a batch or group norm.
    NormShift,
    /// Running mean of a batch norm: updated in training mode, never by the optimiser.
    RunningMean,
    /// Running (unbiased) variance of a batch norm: updated in training mode, never by the
    /// optimiser.
    RunningVar,
}

impl ParamKind {
    /// Whether an optimiser should update this tensor (running statistics are state, not
    /// parameters).
    pub fn is_trainable(self) -> bool {
        !matches!(self, Self::RunningMean | Self::RunningVar)
    }

    /// The value the `VarBuilder` fills a new variable with. Weights start at zero rather than
    /// from candle's unseeded RNG: a fresh model is meant to go through `init_weights` (or a
    /// weights file), and a forgotten init then shows up as constant logits, not as a silently
    /// irreproducible run.
    fn placeholder(self) -> f64 {
        match self {
            Self::NormScale | Self::RunningVar => 1.0,
            Self::ConvWeight { .. } | Self::ConvBias | Self::NormShift | Self::RunningMean => 0.0,
        }
    }
}

/// The part of the U-Net a parameter belongs to (what freezing settings select).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    Encoder,
    Bottleneck,
    Decoder,
    Head,
}

/// One tensor the U-Net registered in its `VarBuilder`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Full name, including the `VarBuilder` prefix the model was built under.
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    pub part: Part,
}

/// Records every tensor requested from the `VarBuilder`, so that initialisation, freezing and
/// weight IO work from the exact list of this model's tensors.
pub(crate) struct Registry {
    pub(crate) specs: Vec<ParamSpec>,
    pub(crate) part: Part,
    /// The kernels the layers built through this registry run with.
    pub(crate) kernels: Kernels,
    /// The element type the convolutions compute in when it is not the model's (bf16
    /// autocast).
    pub(crate) autocast: Option<DType>,
}

impl Registry {
    pub(crate) fn get(
        &mut self,
        vb: &VarBuilder,
        shape: &[usize],
        name: &str,
        kind: ParamKind,
    ) -> Result<Tensor> {
        let tensor = vb.get_with_hints(shape, name, Init::Const(kind.placeholder()))?;
        let prefix = vb.prefix();
        let full = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        self.specs.push(ParamSpec {
            name: full,
            shape: shape.to_vec(),
            kind,
            part: self.part,
        });
        Ok(tensor)
    }
}

/// Whether `x` can go through the custom ops of [`cpu_ops`] (CPU, f32 or f64).
pub(crate) fn lus_kernels_apply(kernels: Kernels, x: &Tensor) -> bool {
    kernels == Kernels::Lus && x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// `x + bias` with the bias broadcast over the channels of `N x C x H x W`.
fn add_channel_bias(x: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(bias) => x.broadcast_add(&bias.reshape((1, (), 1, 1))?),
        None => Ok(x),
    }
}

/// The element type a convolution with autocast setting `autocast` computes `x` in, when it is
/// not `x`'s own (`None`: no cast, the plain kernels run).
fn active_autocast(autocast: Option<DType>, x: &Tensor) -> Option<DType> {
    autocast.filter(|dtype| *dtype != x.dtype())
}

/// `conv(x, weight) + bias` with the product in `dtype` (autocast): input and weight are cast
/// to `dtype`, the product is cast back to the input's type, and the bias is added in that
/// type. The casts are differentiable, so the gradients reach the f32 weights in f32.
///
/// candle's CPU backend has no bf16 matrix product, so on the CPU the same arithmetic is
/// emulated: operands and product are rounded to `dtype` and the product runs in the input's
/// type (f32 accumulation, as in a bf16 GEMM on tensor cores), on the `lus` kernels when they
/// apply. The results then show what bf16 does to a run, without its speed.
fn autocast_conv(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    dtype: DType,
    conv: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let y = if x.device().is_cpu() {
        let round = |t: &Tensor| t.to_dtype(dtype)?.to_dtype(t.dtype());
        round(&conv(&round(x)?, &round(weight)?)?)?
    } else {
        conv(&x.to_dtype(dtype)?, &weight.to_dtype(dtype)?)?.to_dtype(x.dtype())?
    };
    add_channel_bias(y, bias)
}

/// A stride-1 convolution that runs on [`cpu_ops::conv2d`] or on candle's op.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    inner: Conv2d,
    kernels: Kernels,
    autocast: Option<DType>,
}

impl Conv {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match active_autocast(self.autocast, x) {
            Some(dtype) => {
                autocast_conv(x, self.inner.weight(), self.inner.bias(), dtype, |x, w| {
                    self.convolve(x, w)
                })
            }
            // The lus kernel adds the bias inside its GEMM.
            _ if lus_kernels_apply(self.kernels, x) => cpu_ops::conv2d(
                x,
                self.inner.weight(),
                self.inner.bias(),
                1,
                self.inner.config().padding,
            ),
            _ => add_channel_bias(self.convolve(x, self.inner.weight())?, self.inner.bias()),
        }
    }

    /// The convolution of `cat([first, second], channels)`. On the lus kernels (outside
    /// autocast) the concatenation is never built: the op reads both tensors in place and
    /// returns their gradients separately.
    pub(crate) fn forward_concat(&self, first: &Tensor, second: &Tensor) -> Result<Tensor> {
        if active_autocast(self.autocast, first).is_none() && lus_kernels_apply(self.kernels, first)
        {
            let y = cpu_ops::conv2d_concat(
                first,
                second,
                self.inner.weight(),
                1,
                self.inner.config().padding,
            )?;
            add_channel_bias(y, self.inner.bias())
        } else {
            self.forward(&concat_skip(first, second)?)
        }
    }

    /// Whether this convolution can run inside [`cpu_ops::double_conv_bn_relu_train`]: lus
    /// kernels, no bias, no autocast.
    fn fusable(&self, x: &Tensor) -> bool {
        lus_kernels_apply(self.kernels, x)
            && self.inner.bias().is_none()
            && active_autocast(self.autocast, x).is_none()
    }

    /// The convolution of `x` with `weight`, without the bias.
    fn convolve(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let padding = self.inner.config().padding;
        if lus_kernels_apply(self.kernels, x) {
            cpu_ops::conv2d(x, weight, None, 1, padding)
        } else {
            x.conv2d(weight, padding, 1, 1, 1)
        }
    }
}

/// A 3x3 (padding 1) or 1x1 convolution; `bias` is false before a norm layer, whose shift
/// makes a bias redundant.
pub(crate) fn conv2d(
    reg: &mut Registry,
    vb: &VarBuilder,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    bias: bool,
) -> Result<Conv> {
    let weight = reg.get(
        vb,
        &[out_channels, in_channels, kernel, kernel],
        "weight",
        ParamKind::ConvWeight {
            fan_in: in_channels * kernel * kernel,
        },
    )?;
    let bias = if bias {
        Some(reg.get(vb, &[out_channels], "bias", ParamKind::ConvBias)?)
    } else {
        None
    };
    let config = Conv2dConfig {
        padding: kernel / 2,
        ..Default::default()
    };
    Ok(Conv {
        inner: Conv2d::new(weight, bias, config),
        kernels: reg.kernels,
        autocast: reg.autocast,
    })
}

/// The normalisation of one conv-norm-ReLU unit.
#[derive(Debug, Clone)]
pub(crate) enum NormLayer {
    Batch(BatchNorm, Kernels),
    Group(GroupNorm),
    Identity,
}

impl NormLayer {
    fn new(reg: &mut Registry, vb: &VarBuilder, norm: Norm, channels: usize) -> Result<Self> {
        match norm {
            Norm::Batch => {
                let running_mean =
                    reg.get(vb, &[channels], "running_mean", ParamKind::RunningMean)?;
                let running_var = reg.get(vb, &[channels], "running_var", ParamKind::RunningVar)?;
                let weight = reg.get(vb, &[channels], "weight", ParamKind::NormScale)?;
                let bias = reg.get(vb, &[channels], "bias", ParamKind::NormShift)?;
                // The running statistics come from the VarMap as variables, and
                // `Var::from_tensor` shares a variable's storage: the updates made in training
                // mode land in the VarMap, so they are saved with the weights.
                let bn = BatchNorm::new_with_momentum(
                    channels,
                    running_mean,
                    running_var,
                    weight,
                    bias,
                    NORM_EPS,
                    BATCH_NORM_MOMENTUM,
                )?;
                Ok(Self::Batch(bn, reg.kernels))
            }
            Norm::Group { groups } => {
                let weight = reg.get(vb, &[channels], "weight", ParamKind::NormScale)?;
                let bias = reg.get(vb, &[channels], "bias", ParamKind::NormShift)?;
                Ok(Self::Group(GroupNorm::new(
                    weight, bias, channels, groups, NORM_EPS,
                )?))
            }
            Norm::None => Ok(Self::Identity),
        }
    }

    /// `relu(norm(x))`; batch norm in training mode on the lus kernels runs as one fused op.
    fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::Batch(bn, kernels) if train && lus_kernels_apply(*kernels, x) => {
                batch_norm_relu_train(bn, x)
            }
            Self::Batch(bn, kernels) if lus_kernels_apply(*kernels, x) => {
                batch_norm_relu_eval(bn, x)
            }
            Self::Batch(bn, _) => bn.forward_t(x, train)?.relu(),
            Self::Group(gn) => gn.forward(x)?.relu(),
            Self::Identity => x.relu(),
        }
    }
}

/// Evaluation-mode batch norm + ReLU on [`cpu_ops::channel_affine`]: the running statistics
/// fold into a per-channel scale and shift (computed with candle ops on `C`-vectors, so the
/// gradients of gamma and beta flow through them; the statistics are detached, as in
/// candle-nn).
fn batch_norm_relu_eval(bn: &BatchNorm, x: &Tensor) -> Result<Tensor> {
    let Some((weight, bias)) = bn.weight_and_bias() else {
        candle_core::bail!("the U-Net's batch norms always have a scale and a shift")
    };
    let invstd = (bn.running_var().detach() + bn.eps())?.sqrt()?.recip()?;
    let scale = (weight * invstd)?;
    let shift = (bias - (bn.running_mean().detach() * &scale)?)?;
    cpu_ops::channel_affine(x, &scale, &shift, true)
}

/// Training-mode batch norm + ReLU on [`cpu_ops::batch_norm_train`], with the running
/// statistics updated (see [`update_running_stats`]).
fn batch_norm_relu_train(bn: &BatchNorm, x: &Tensor) -> Result<Tensor> {
    let Some((weight, bias)) = bn.weight_and_bias() else {
        candle_core::bail!("the U-Net's batch norms always have a scale and a shift")
    };
    let (y, stats) = cpu_ops::batch_norm_train(x, weight, bias, bn.eps(), true)?;
    update_running_stats(bn, &stats)?;
    Ok(y)
}

/// Updates the running statistics of `bn` with a batch's, as candle-nn's `BatchNorm` (and
/// PyTorch) do: `running = (1 - momentum) running + momentum batch`, with the unbiased batch
/// variance.
fn update_running_stats(bn: &BatchNorm, stats: &cpu_ops::BatchStats) -> Result<()> {
    let momentum = bn.momentum();
    let update = |running: &Tensor, batch: &[f64]| -> Result<()> {
        let old = running.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let new: Vec<f64> = old
            .iter()
            .zip(batch)
            .map(|(r, b)| (1.0 - momentum) * r + momentum * b)
            .collect();
        // The running statistics are variables of the VarMap: `Var::from_tensor` shares their
        // storage, so the update lands there (as candle-nn's own update does).
        let value =
            Tensor::from_vec(new, old.len(), running.device())?.to_dtype(running.dtype())?;
        Var::from_tensor(running)?.set(&value)
    };
    update(bn.running_mean(), &stats.mean)?;
    update(bn.running_var(), &stats.unbiased_var())
}

/// `[conv3x3 -> norm -> ReLU] x 2`, tensors `conv1`, `norm1`, `conv2`, `norm2` under its prefix.
#[derive(Debug, Clone)]
pub(crate) struct DoubleConv {
    conv1: Conv,
    norm1: NormLayer,
    conv2: Conv,
    norm2: NormLayer,
}

impl DoubleConv {
    pub(crate) fn new(
        reg: &mut Registry,
        vb: &VarBuilder,
        in_channels: usize,
        out_channels: usize,
        norm: Norm,
    ) -> Result<Self> {
        let bias = norm == Norm::None;
        let conv1 = conv2d(reg, &vb.pp("conv1"), in_channels, out_channels, 3, bias)?;
        let norm1 = NormLayer::new(reg, &vb.pp("norm1"), norm, out_channels)?;
        let conv2 = conv2d(reg, &vb.pp("conv2"), out_channels, out_channels, 3, bias)?;
        let norm2 = NormLayer::new(reg, &vb.pp("norm2"), norm, out_channels)?;
        Ok(Self {
            conv1,
            norm1,
            conv2,
            norm2,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self.fused_train(x, None, train)? {
            Some(y) => Ok(y),
            None => self.forward_rest(self.conv1.forward(x)?, train),
        }
    }

    /// The forward pass of `cat([skip, up], channels)` (see [`concat_skip`]), without building
    /// the concatenation on the lus kernels.
    pub(crate) fn forward_concat(&self, skip: &Tensor, up: &Tensor, train: bool) -> Result<Tensor> {
        match self.fused_train(skip, Some(up), train)? {
            Some(y) => Ok(y),
            None => self.forward_rest(self.conv1.forward_concat(skip, up)?, train),
        }
    }

    /// The training-mode forward pass as one op ([`cpu_ops::double_conv_bn_relu_train`]) where
    /// it applies (lus kernels, batch norm, no convolution bias, no autocast); `None`
    /// elsewhere. One op instead of four leaves three full-resolution tensors out of candle's
    /// graph, and with them three gradient accumulations.
    fn fused_train(
        &self,
        x: &Tensor,
        second: Option<&Tensor>,
        train: bool,
    ) -> Result<Option<Tensor>> {
        let (NormLayer::Batch(bn1, _), NormLayer::Batch(bn2, _)) = (&self.norm1, &self.norm2)
        else {
            return Ok(None);
        };
        if !train || !self.conv1.fusable(x) || !self.conv2.fusable(x) || bn1.eps() != bn2.eps() {
            return Ok(None);
        }
        let (Some((gamma1, beta1)), Some((gamma2, beta2))) =
            (bn1.weight_and_bias(), bn2.weight_and_bias())
        else {
            candle_core::bail!("the U-Net's batch norms always have a scale and a shift")
        };
        let weights = cpu_ops::DoubleConvWeights {
            conv1: self.conv1.inner.weight(),
            gamma1,
            beta1,
            conv2: self.conv2.inner.weight(),
            gamma2,
            beta2,
        };
        let (y, [stats1, stats2]) =
            cpu_ops::double_conv_bn_relu_train(x, second, &weights, bn1.eps())?;
        update_running_stats(bn1, &stats1)?;
        update_running_stats(bn2, &stats2)?;
        Ok(Some(y))
    }

    /// Everything after the first convolution.
    fn forward_rest(&self, conv1: Tensor, train: bool) -> Result<Tensor> {
        let x = self.norm1.forward_relu(&conv1, train)?;
        self.norm2.forward_relu(&self.conv2.forward(&x)?, train)
    }
}

/// The decoder's up-sampling step (tensor `up`): doubles height and width and halves the
/// channels. Both variants are linear with a bias, so they differ only in the interpolation.
#[derive(Debug, Clone)]
pub(crate) enum UpLayer {
    Transposed(ConvTranspose2d, Kernels, Option<DType>),
    BilinearConv(Conv),
}

impl UpLayer {
    pub(crate) fn transposed(
        reg: &mut Registry,
        vb: &VarBuilder,
        in_channels: usize,
        out_channels: usize,
    ) -> Result<Self> {
        // PyTorch's layout for transposed convolutions: (in, out, kh, kw). With kernel 2 and
        // stride 2 every output pixel receives exactly one kernel tap from each input channel,
        // so its fan-in is `in_channels` (not in * 2 * 2): that is what keeps the forward
        // variance with Kaiming's rule.
        let weight = reg.get(
            vb,
            &[in_channels, out_channels, 2, 2],
            "weight",
            ParamKind::ConvWeight {
                fan_in: in_channels,
            },
        )?;
        let bias = reg.get(vb, &[out_channels], "bias", ParamKind::ConvBias)?;
        let config = ConvTranspose2dConfig {
            stride: 2,
            ..Default::default()
        };
        Ok(Self::Transposed(
            ConvTranspose2d::new(weight, Some(bias), config),
            reg.kernels,
            reg.autocast,
        ))
    }

    pub(crate) fn bilinear_conv(
        reg: &mut Registry,
        vb: &VarBuilder,
        in_channels: usize,
        out_channels: usize,
    ) -> Result<Self> {
        Ok(Self::BilinearConv(conv2d(
            reg,
            vb,
            in_channels,
            out_channels,
            3,
            true,
        )?))
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Transposed(conv, kernels, autocast) => {
                let convolve = |x: &Tensor, w: &Tensor| {
                    if lus_kernels_apply(*kernels, x) {
                        cpu_ops::conv_transpose2d_k2s2(x, w, None)
                    } else {
                        x.conv_transpose2d(w, 0, 0, 2, 1)
                    }
                };
                match active_autocast(*autocast, x) {
                    Some(dtype) => autocast_conv(x, conv.weight(), conv.bias(), dtype, convolve),
                    // The lus kernel adds the bias in its output pass.
                    _ if lus_kernels_apply(*kernels, x) => {
                        cpu_ops::conv_transpose2d_k2s2(x, conv.weight(), conv.bias())
                    }
                    _ => add_channel_bias(convolve(x, conv.weight())?, conv.bias()),
                }
            }
            Self::BilinearConv(conv) => conv.forward(&upsample_bilinear2x(x)?),
        }
    }
}

/// 2x2 max-pooling with stride 2 of an `N x C x H x W` tensor (H and W even).
///
/// Not candle's `max_pool2d`: its backward pass (candle-core 0.11.1) multiplies the incoming
/// gradient by the *fraction* of maxima in the window (1/4 for a unique maximum) instead of
/// dividing by their count, so every gradient that crosses it is 4x too small. Here the window
/// is split into its own axes and reduced with `max`, whose backward routes the gradient to
/// the maximum (to every maximum on exact ties, which after a ReLU only happen among zeros,
/// where the ReLU stops the gradient anyway).
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
        candle_core::bail!("2x2 max-pool needs even height and width, got {h} x {w}")
    }
    x.reshape((n, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)
}

/// Bilinear x2 up-sampling of an `N x C x H x W` tensor with PyTorch's `align_corners=False`
/// semantics (`F.interpolate(x, scale_factor=2, mode="bilinear")`), built from differentiable
/// tensor ops.
///
/// Along one axis of length n, output 2i samples source coordinate i - 1/4 and output 2i+1
/// samples i + 1/4, with coordinates clamped to the edge pixels:
/// `out[2i] = x[max(i-1, 0)]/4 + 3 x[i]/4` and `out[2i+1] = 3 x[i]/4 + x[min(i+1, n-1)]/4`.
/// The 2-D operation is this along H, then along W (bilinear interpolation is separable).
pub fn upsample_bilinear2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, _, _) = x.dims4()?;
    let x = upsample_axis_linear2x(x, 2)?;
    upsample_axis_linear2x(&x, 3)
}

fn upsample_axis_linear2x(x: &Tensor, axis: usize) -> Result<Tensor> {
    let n = x.dim(axis)?;
    // Neighbours with the edge pixel repeated (clamping of the source coordinate).
    let (prev, next) = if n > 1 {
        let prev = Tensor::cat(&[x.narrow(axis, 0, 1)?, x.narrow(axis, 0, n - 1)?], axis)?;
        let next = Tensor::cat(
            &[x.narrow(axis, 1, n - 1)?, x.narrow(axis, n - 1, 1)?],
            axis,
        )?;
        (prev, next)
    } else {
        (x.clone(), x.clone())
    };
    let even = (prev.affine(0.25, 0.0)? + x.affine(0.75, 0.0)?)?;
    let odd = (x.affine(0.75, 0.0)? + next.affine(0.25, 0.0)?)?;
    // Stacking on the axis after `axis` and merging the two interleaves even and odd outputs.
    let mut dims = x.dims().to_vec();
    dims[axis] *= 2;
    Tensor::stack(&[even, odd], axis + 1)?.reshape(dims)
}

/// An inverted-dropout mask of `shape`: each element is 0 with probability `p` and `1/(1-p)`
/// otherwise, so the expected value of `x * mask` is `x`. Drawn element by element, in
/// row-major order, from `rng` on the host.
pub fn dropout_mask(
    shape: &[usize],
    p: f32,
    rng: &mut ChaCha8Rng,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    if !(p.is_finite() && (0.0..1.0).contains(&p)) {
        candle_core::bail!("dropout probability must be in [0, 1), is {p}")
    }
    let count: usize = shape.iter().product();
    let keep_scale = 1.0 / (1.0 - f64::from(p));
    let values: Vec<f64> = (0..count)
        .map(|_| {
            if rng.random::<f64>() < f64::from(p) {
                0.0
            } else {
                keep_scale
            }
        })
        .collect();
    Tensor::from_vec(values, shape, device)?.to_dtype(dtype)
}

/// Concatenation of the skip connection and the up-sampled features along channels, skip
/// first (the order of the reference implementation and of most U-Net code).
pub(crate) fn concat_skip(skip: &Tensor, up: &Tensor) -> Result<Tensor> {
    Tensor::cat(&[skip, up], D::Minus(3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use rand::SeedableRng;

    #[test]
    fn dropout_mask_zero_fraction_is_near_p_and_kept_values_are_rescaled() {
        for p in [0.1f32, 0.3, 0.5, 0.9] {
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let n = 200_000;
            let mask = dropout_mask(&[n], p, &mut rng, DType::F32, &Device::Cpu).unwrap();
            let values = mask.to_vec1::<f32>().unwrap();
            let zeros = values.iter().filter(|v| **v == 0.0).count();
            let fraction = zeros as f64 / n as f64;
            // Binomial standard deviation is at most sqrt(0.25 / n) = 0.0011; allow 5 of them.
            assert!(
                (fraction - f64::from(p)).abs() < 0.0056,
                "p {p}: zero fraction {fraction}"
            );
            let scale = (1.0 / (1.0 - f64::from(p))) as f32;
            assert!(values.iter().all(|v| *v == 0.0 || *v == scale));
            let mean = values.iter().map(|v| f64::from(*v)).sum::<f64>() / n as f64;
            assert!((mean - 1.0).abs() < 0.05, "p {p}: mean {mean}");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let ones = dropout_mask(&[1000], 0.0, &mut rng, DType::F64, &Device::Cpu).unwrap();
        assert!(ones.to_vec1::<f64>().unwrap().iter().all(|v| *v == 1.0));
        assert!(dropout_mask(&[4], 1.0, &mut rng, DType::F32, &Device::Cpu).is_err());
        assert!(dropout_mask(&[4], f32::NAN, &mut rng, DType::F32, &Device::Cpu).is_err());
    }

    #[test]
    fn dropout_mask_depends_only_on_the_rng_state() {
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            dropout_mask(&[2, 3, 4, 4], 0.5, &mut rng, DType::F32, &Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn max_pool2x2_forward_matches_candle_and_routes_the_whole_gradient_to_the_maximum() {
        #[rustfmt::skip]
        let x = Tensor::new(&[[[
            [1.0f64, 5.0, -2.0, 0.5],
            [3.0, 4.0, -1.0, -3.0],
            [0.0, 0.0, 7.0, 6.0],
            [-4.0, 2.0, 8.0, 9.5],
        ]]], &Device::Cpu).unwrap();
        let pooled = max_pool2x2(&x).unwrap();
        assert_eq!(
            pooled.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            vec![5.0, 0.5, 2.0, 9.5]
        );
        assert_eq!(
            pooled.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            x.max_pool2d(2)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        );
        let var = Var::from_tensor(&x).unwrap();
        let weights = Tensor::new(&[[[[1.0f64, 2.0], [3.0, 4.0]]]], &Device::Cpu).unwrap();
        let loss = (max_pool2x2(var.as_tensor()).unwrap() * weights)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        #[rustfmt::skip]
        let expected = vec![
            0.0, 1.0, 0.0, 2.0,
            0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 0.0, 0.0,
            0.0, 3.0, 0.0, 4.0,
        ];
        assert_eq!(
            grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
            expected
        );
        let odd = Tensor::zeros((1, 1, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(max_pool2x2(&odd).is_err());
    }
}
