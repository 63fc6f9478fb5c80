//! Batch norm in training mode (optionally fused with the ReLU that follows it in the U-Net)
//! as one forward op, and a backward of two passes: per-channel sums, then the input gradient.
//!
//! With `xhat = (x - mean) * invstd` and `g = dy` (times `y > 0` when fused with a ReLU):
//! `dbeta = sum g`, `dgamma = sum g * xhat`,
//! `dx = gamma * invstd * (g - dbeta / M - xhat * dgamma / M)` over the `M = N * H * W` values
//! of a channel. Statistics are accumulated in f64.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{Float, Kernel3, check_dims};

/// Batch statistics of one batch-norm call, per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    /// Mean over batch and pixels.
    pub mean: Vec<f64>,
    /// Biased variance (divided by `count`), the one the normalisation uses.
    pub var: Vec<f64>,
    /// Values per channel, `N * H * W`.
    pub count: usize,
}

impl BatchStats {
    /// The unbiased variance (divided by `count - 1`), the one running statistics track.
    pub fn unbiased_var(&self) -> Vec<f64> {
        let factor = self.count as f64 / (self.count as f64 - 1.0);
        self.var.iter().map(|v| v * factor).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BnGeom {
    pub batch: usize,
    pub channels: usize,
    /// Pixels per plane, `H * W`.
    pub pixels: usize,
}

impl BnGeom {
    fn count(&self) -> usize {
        self.batch * self.pixels
    }
    /// The `(sample, channel)` planes of channel `c`.
    fn planes<'a, T>(&self, data: &'a [T], c: usize) -> impl Iterator<Item = &'a [T]> {
        let (pixels, channels) = (self.pixels, self.channels);
        (0..self.batch).map(move |n| &data[(n * channels + c) * pixels..][..pixels])
    }
    /// Minimum planes per rayon task, so that tiny planes are not one task each.
    fn min_planes_per_task(&self) -> usize {
        (16_384 / self.pixels.max(1)).max(1)
    }
}

/// Per-channel mean and biased variance, `[2, C]` in f64 (two passes, for accuracy).
#[derive(Clone, Copy, Debug)]
struct BnStatsOp(BnGeom);

impl BnStatsOp {
    fn run<T: Float>(&self, x: &[T]) -> Vec<f64> {
        let g = self.0;
        let m = g.count() as f64;
        let per_channel: Vec<(f64, f64)> = (0..g.channels)
            .into_par_iter()
            .map(|c| {
                let sum: f64 = g.planes(x, c).map(|p| lane_sum(p, |v| v)).sum();
                let mean = sum / m;
                let sq: f64 = g
                    .planes(x, c)
                    .map(|p| {
                        let mut lanes = [0.0f64; LANES];
                        let chunks = p.chunks_exact(LANES);
                        let tail: f64 = chunks
                            .remainder()
                            .iter()
                            .map(|v| (v.to_f64() - mean).powi(2))
                            .sum();
                        for chunk in chunks {
                            for (lane, v) in lanes.iter_mut().zip(chunk) {
                                let d = v.to_f64() - mean;
                                *lane += d * d;
                            }
                        }
                        lanes.iter().sum::<f64>() + tail
                    })
                    .sum();
                (mean, sq / m)
            })
            .collect();
        let (mean, var): (Vec<f64>, Vec<f64>) = per_channel.into_iter().unzip();
        [mean, var].concat()
    }
}

impl CustomOp1 for BnStatsOp {
    fn name(&self) -> &'static str {
        "lus-batch-norm-stats"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => self.run(super::contiguous::<f32>(self.name(), s, l)?),
            CpuStorage::F64(_) => self.run(super::contiguous::<f64>(self.name(), s, l)?),
            _ => candle_core::bail!("{}: f32 or f64 only, got {:?}", self.name(), s.dtype()),
        };
        Ok((CpuStorage::F64(out), (2, self.0.channels).into()))
    }
}

/// What forward and backward share: the shapes, the statistics and the fused ReLU.
#[derive(Debug)]
pub(crate) struct BnState {
    geom: BnGeom,
    mean: Vec<f64>,
    invstd: Vec<f64>,
    relu: bool,
    /// Whether `mean` and `invstd` are this batch's statistics (training-mode batch norm,
    /// whose gradient flows through them) or constants (a per-channel affine map: mean 0,
    /// invstd 1).
    batch_statistics: bool,
}

impl BnState {
    fn data_shape(&self) -> Shape {
        (self.geom.batch, self.geom.channels, self.geom.pixels).into()
    }

    /// `out[n, c, :] = f(c, x[n, c, :], extra[n, c, :], out)` over all planes, in parallel.
    fn map_planes<T: Float>(
        &self,
        inputs: [&[T]; 3],
        f: impl Fn(usize, [&[T]; 3], &mut [T]) + Sync,
    ) -> Vec<T> {
        let g = self.geom;
        let mut out = vec![T::from_f64(0.0); g.batch * g.channels * g.pixels];
        out.par_chunks_mut(g.pixels.max(1))
            .with_min_len(g.min_planes_per_task())
            .enumerate()
            .for_each(|(plane, o)| {
                // An empty input stands for an unused one.
                fn at<T>(s: &[T], plane: usize, pixels: usize) -> &[T] {
                    if s.is_empty() {
                        s
                    } else {
                        &s[plane * pixels..][..pixels]
                    }
                }
                let at = |s| at(s, plane, g.pixels);
                f(
                    plane % g.channels,
                    [at(inputs[0]), at(inputs[1]), at(inputs[2])],
                    o,
                );
            });
        out
    }
}

/// Forward: `(x, gamma, beta) -> y`.
#[derive(Clone, Debug)]
struct BnFwd(Arc<BnState>);

impl Kernel3 for BnFwd {
    const NAME: &'static str = "lus-batch-norm";
    fn input_shapes(&self) -> [Shape; 3] {
        let channels: Shape = self.0.geom.channels.into();
        [self.0.data_shape(), channels.clone(), channels]
    }
    fn run<T: Float>(&self, x: &[T], gamma: &[T], beta: &[T]) -> Result<(Vec<T>, Shape)> {
        Ok((self.forward(x, gamma, beta), self.0.data_shape()))
    }
}

impl BnFwd {
    fn forward<T: Float>(&self, x: &[T], gamma: &[T], beta: &[T]) -> Vec<T> {
        let s = &self.0;
        let (scale, shift): (Vec<T>, Vec<T>) = (0..s.geom.channels)
            .map(|c| {
                let scale = gamma[c].to_f64() * s.invstd[c];
                let shift = beta[c].to_f64() - s.mean[c] * scale;
                (T::from_f64(scale), T::from_f64(shift))
            })
            .unzip();
        let zero = T::from_f64(0.0);
        s.map_planes([x, &[], &[]], |c, [x, _, _], y| {
            let (a, b) = (scale[c], shift[c]);
            if s.relu {
                for (o, v) in y.iter_mut().zip(x) {
                    let t = *v * a + b;
                    *o = if t > zero { t } else { zero };
                }
            } else {
                for (o, v) in y.iter_mut().zip(x) {
                    *o = *v * a + b;
                }
            }
        })
    }
}

impl CustomOp3 for BnFwd {
    kernel3_forward!();
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let x = x.contiguous()?;
        let sums_t = dy.apply_op3_no_bwd(&x, y, &BnGradSums(self.0.clone()))?;
        let sums = sums_t.to_vec2::<f64>()?;
        let gamma_values = gamma.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        // With constant statistics the input gradient is just `gamma * g`.
        let (sum_g, sum_gx) = if self.0.batch_statistics {
            (sums[0].clone(), sums[1].clone())
        } else {
            let zeros = vec![0.0; self.0.geom.channels];
            (zeros.clone(), zeros)
        };
        let dx = dy.apply_op3_no_bwd(
            &x,
            y,
            &BnGradInput {
                state: self.0.clone(),
                gamma: gamma_values,
                sum_g,
                sum_gx,
            },
        )?;
        let dtype = gamma.dtype();
        let dbeta = sums_t.get(0)?.to_dtype(dtype)?;
        let dgamma = sums_t.get(1)?.to_dtype(dtype)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The incoming gradient with the fused ReLU's mask applied.
#[inline(always)]
fn masked<T: Float>(relu: bool, dy: T, y: T) -> T {
    if relu && y <= T::from_f64(0.0) {
        T::from_f64(0.0)
    } else {
        dy
    }
}

/// Lanes of [`lane_sum`] and of the variance pass.
const LANES: usize = 8;

/// `sum f(v)` over `values` in f64, accumulated in [`LANES`] independent lanes, which the
/// compiler vectorises (one running sum is a serial chain of dependent additions).
#[inline(always)]
fn lane_sum<T: Float>(values: &[T], f: impl Fn(T) -> T) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += f(*v).to_f64();
        }
    }
    let tail: f64 = tail.iter().map(|v| f(*v).to_f64()).sum();
    lanes.iter().sum::<f64>() + tail
}

/// `(dy, x, y) -> [2, C]` in f64: `sum g` and `sum g * xhat` per channel.
#[derive(Clone, Debug)]
struct BnGradSums(Arc<BnState>);

impl BnGradSums {
    const NAME: &'static str = "lus-batch-norm-grad-sums";

    fn sums<T: Float>(&self, dy: &[T], x: &[T], y: &[T]) -> Vec<f64> {
        let s = &self.0;
        let g = s.geom;
        let per_channel: Vec<(f64, f64)> = (0..g.channels)
            .into_par_iter()
            .map(|c| {
                let mean = T::from_f64(s.mean[c]);
                let (mut sum_g, mut sum_gxc) = (0.0f64, 0.0f64);
                for ((dy, x), y) in g.planes(dy, c).zip(g.planes(x, c)).zip(g.planes(y, c)) {
                    // Plane sums in T (vectorisable), accumulated over planes in f64.
                    let (mut pg, mut pgx) = (T::from_f64(0.0), T::from_f64(0.0));
                    for ((d, v), o) in dy.iter().zip(x).zip(y) {
                        let gr = masked(s.relu, *d, *o);
                        pg += gr;
                        pgx += gr * (*v - mean);
                    }
                    sum_g += pg.to_f64();
                    sum_gxc += pgx.to_f64();
                }
                (sum_g, sum_gxc * s.invstd[c])
            })
            .collect();
        let (sum_g, sum_gx): (Vec<f64>, Vec<f64>) = per_channel.into_iter().unzip();
        [sum_g, sum_gx].concat()
    }
}

impl CustomOp3 for BnGradSums {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = self.0.data_shape();
        for l in [l1, l2, l3] {
            check_dims(Self::NAME, l, &shape)?;
        }
        let name = Self::NAME;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => self.sums(
                super::contiguous::<f32>(name, s1, l1)?,
                super::contiguous::<f32>(name, s2, l2)?,
                super::contiguous::<f32>(name, s3, l3)?,
            ),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => self.sums(
                super::contiguous::<f64>(name, s1, l1)?,
                super::contiguous::<f64>(name, s2, l2)?,
                super::contiguous::<f64>(name, s3, l3)?,
            ),
            _ => candle_core::bail!("{name}: f32 or f64 tensors of one dtype only"),
        };
        Ok((CpuStorage::F64(out), (2, self.0.geom.channels).into()))
    }
}

/// `(dy, x, y) -> dx`.
#[derive(Clone, Debug)]
struct BnGradInput {
    state: Arc<BnState>,
    gamma: Vec<f64>,
    sum_g: Vec<f64>,
    sum_gx: Vec<f64>,
}

impl Kernel3 for BnGradInput {
    const NAME: &'static str = "lus-batch-norm-grad-input";
    fn input_shapes(&self) -> [Shape; 3] {
        let shape = self.state.data_shape();
        [shape.clone(), shape.clone(), shape]
    }
    fn run<T: Float>(&self, dy: &[T], x: &[T], y: &[T]) -> Result<(Vec<T>, Shape)> {
        Ok((self.grad_input(dy, x, y), self.state.data_shape()))
    }
}

impl BnGradInput {
    fn grad_input<T: Float>(&self, dy: &[T], x: &[T], y: &[T]) -> Vec<T> {
        let s = &self.state;
        let m = s.geom.count() as f64;
        // dx = k (g - sum_g / M - xhat sum_gx / M) = a g + b x + c per channel.
        let coef: Vec<[T; 3]> = (0..s.geom.channels)
            .map(|c| {
                let k = self.gamma[c] * s.invstd[c];
                let b = -k * self.sum_gx[c] / m * s.invstd[c];
                let c0 = -k * self.sum_g[c] / m - b * s.mean[c];
                [T::from_f64(k), T::from_f64(b), T::from_f64(c0)]
            })
            .collect();
        let zero = T::from_f64(0.0);
        s.map_planes([dy, x, y], |c, [dy, x, y], dx| {
            let [a, b, c0] = coef[c];
            // Two loops rather than a test of `relu` per element, so that each vectorises.
            if s.relu {
                for (((o, d), v), r) in dx.iter_mut().zip(dy).zip(x).zip(y) {
                    let g = if *r <= zero { zero } else { *d };
                    *o = a * g + b * *v + c0;
                }
            } else {
                for ((o, d), v) in dx.iter_mut().zip(dy).zip(x) {
                    *o = a * *d + b * *v + c0;
                }
            }
        })
    }
}

impl CustomOp3 for BnGradInput {
    kernel3_forward!();
}

/// Training-mode batch norm + ReLU of the contiguous `x` on plain slices (for ops that fuse
/// it with other layers): the output, the state its backward needs and the batch statistics.
pub(crate) fn bn_train_forward<T: Float>(
    geom: BnGeom,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    eps: f64,
) -> (Vec<T>, Arc<BnState>, BatchStats) {
    let stats = BnStatsOp(geom).run(x);
    let (mean, var) = stats.split_at(geom.channels);
    let state = Arc::new(BnState {
        geom,
        mean: mean.to_vec(),
        invstd: var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
        relu: true,
        batch_statistics: true,
    });
    let y = BnFwd(state.clone()).forward(x, gamma, beta);
    let stats = BatchStats {
        mean: mean.to_vec(),
        var: var.to_vec(),
        count: geom.count(),
    };
    (y, state, stats)
}

/// The backward pass of [`bn_train_forward`] on plain slices: the gradients of `x`, `gamma`
/// and `beta` given `dy`, the input `x` and the output `y`.
pub(crate) fn bn_relu_backward<T: Float>(
    state: &Arc<BnState>,
    dy: &[T],
    x: &[T],
    y: &[T],
    gamma: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let sums = BnGradSums(state.clone()).sums(dy, x, y);
    let (sum_g, sum_gx) = sums.split_at(state.geom.channels);
    let dx = BnGradInput {
        state: state.clone(),
        gamma: gamma.iter().map(|g| g.to_f64()).collect(),
        sum_g: sum_g.to_vec(),
        sum_gx: sum_gx.to_vec(),
    }
    .grad_input(dy, x, y);
    let to_t = |v: &[f64]| v.iter().map(|v| T::from_f64(*v)).collect();
    (dx, to_t(sum_gx), to_t(sum_g))
}

/// Batch norm in training mode of `x` (`N x C x H x W`) with scale `gamma` and shift `beta`
/// (`C` each): normalises every channel with the batch mean and biased variance (eps added
/// to the variance), then scales and shifts; with `relu`, a ReLU follows in the same pass.
/// Returns the output and the batch statistics (for the running statistics; the op does not
/// update any). A custom op (CPU, f32 or f64) whose backward gives the gradients of `x`,
/// `gamma` and `beta`.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchStats)> {
    let (batch, channels, h, w) = x.dims4()?;
    if gamma.dims() != [channels] || beta.dims() != [channels] {
        candle_core::bail!(
            "batch_norm_train: input {:?} needs gamma and beta of shape [{channels}], got {:?} \
             and {:?}",
            x.dims(),
            gamma.dims(),
            beta.dims()
        )
    }
    let geom = BnGeom {
        batch,
        channels,
        pixels: h * w,
    };
    if geom.count() < 2 {
        candle_core::bail!(
            "batch_norm_train: input {:?} has {} value(s) per channel, training needs more than 1",
            x.dims(),
            geom.count()
        )
    }
    let x3 = x.contiguous()?.reshape((batch, channels, h * w))?;
    let stats = x3.apply_op1_no_bwd(&BnStatsOp(geom))?.to_vec2::<f64>()?;
    let (mean, var) = (stats[0].clone(), stats[1].clone());
    let invstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let state = Arc::new(BnState {
        geom,
        mean: mean.clone(),
        invstd,
        relu,
        batch_statistics: true,
    });
    let y = x3
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, BnFwd(state))?
        .reshape((batch, channels, h, w))?;
    Ok((
        y,
        BatchStats {
            mean,
            var,
            count: geom.count(),
        },
    ))
}

/// `y[n, c] = x[n, c] * scale[c] + shift[c]` for `x` of shape `N x C x H x W`, followed by a
/// ReLU when `relu`: batch norm in evaluation mode (with `scale = gamma / sqrt(running_var +
/// eps)` and `shift = beta - running_mean * scale`) in one pass instead of candle's five
/// broadcast ops. A custom op (CPU, f32 or f64) differentiable in `x`, `scale` and `shift`.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor, relu: bool) -> Result<Tensor> {
    let (batch, channels, h, w) = x.dims4()?;
    if scale.dims() != [channels] || shift.dims() != [channels] {
        candle_core::bail!(
            "channel_affine: input {:?} needs scale and shift of shape [{channels}], got {:?} \
             and {:?}",
            x.dims(),
            scale.dims(),
            shift.dims()
        )
    }
    let state = Arc::new(BnState {
        geom: BnGeom {
            batch,
            channels,
            pixels: h * w,
        },
        mean: vec![0.0; channels],
        invstd: vec![1.0; channels],
        relu,
        batch_statistics: false,
    });
    x.contiguous()?
        .reshape((batch, channels, h * w))?
        .apply_op3(&scale.contiguous()?, &shift.contiguous()?, BnFwd(state))?
        .reshape((batch, channels, h, w))
}
