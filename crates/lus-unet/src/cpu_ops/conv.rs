//! 2-D convolution (groups 1, dilation 1) as im2col + GEMM, with its input and weight
//! gradients as further custom ops.
//!
//! Per sample, with `K = Ci * kh * kw` and `P = Ho * Wo`: `col (K x P) = im2col(x)`,
//! `y (Co x P) = W (Co x K) * col (+ bias)`; `dcol = W^T * dy`, `dx = col2im(dcol)`;
//! `dW = sum over samples of dy * col^T`, `dbias = sum of dy over samples and pixels`. A 1x1
//! stride-1 unpadded convolution skips im2col.
//!
//! Two fusions save whole passes over the largest tensors of the U-Net:
//! - a bias is added inside the GEMM (the output band is prefilled with it and the product
//!   accumulated), and its gradient comes out of the weight-gradient op, from the `dy` that op
//!   reads anyway; candle would add it with a broadcast op and reduce its gradient with another;
//! - the input may be two tensors concatenated along channels (the decoder's skip connection
//!   and its up-sampled features): im2col reads every channel from the tensor that holds it and
//!   col2im writes the input gradient straight into the two parts, so the concatenation, its
//!   backward split and a gradient accumulation over the concatenated tensor never happen.

use std::ops::Range;

use candle_core::{CustomOp2, CustomOp3, Result, Shape, Tensor};
use gemm::Parallelism;

use super::{
    Float, Kernel2, Kernel3, Mat, Plan, matmul, matmul_into, split_flat, sum_blocks, with_scratch,
};

/// Elements of one im2col tile: the convolutions work on bands of output rows whose column
/// matrix (`K x band pixels`) stays in the cache between im2col and the GEMM; a whole-image
/// column matrix at 128 px is tens of MiB and made every pass a trip to memory. 1 MiB of f32,
/// half the 2 MiB L2 of the development machine: 128 Ki elements made the batch-8 step 5-9%
/// slower, 512 Ki was no faster.
const TILE_ELEMENTS: usize = 256 * 1024;
const MIN_BAND_PIXELS: usize = 512;
/// The narrowest image and the fewest channels (in and out) for which the direct 3x3 kernels
/// beat im2col + GEMM on the development machine (`examples/conv3x3_paths.rs`, table in
/// `benches/README.md`): the forward and input-gradient kernels from 16 columns on, the
/// weight gradient from 32 (on narrower images each register tile sums too few pixels
/// before its lanes are reduced).
const DIRECT_MIN_WIDTH: usize = 16;
const DIRECT_GRAD_WEIGHT_MIN_WIDTH: usize = 32;
const DIRECT_MIN_CHANNELS: usize = 8;

/// The three kernels of a convolution.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forward,
    GradInput,
    GradWeight,
}

/// Whether `pass` of convolution `g` takes the direct 3x3 kernels (for f32 data; f64 keeps
/// GEMM).
fn takes_direct(g: &ConvGeom, pass: Pass) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let min_width = if pass == Pass::GradWeight {
            DIRECT_GRAD_WEIGHT_MIN_WIDTH
        } else {
            DIRECT_MIN_WIDTH
        };
        super::direct3x3::is_direct_geometry(g)
            && g.width >= min_width
            && g.in_channels.min(g.out_channels) >= DIRECT_MIN_CHANNELS
            && super::direct_conv3x3_active()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (g, pass);
        false
    }
}

/// The shapes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvGeom {
    pub batch: usize,
    /// All input channels (of both parts when the input is a concatenation).
    pub in_channels: usize,
    /// Channels of the first input; less than `in_channels` when the input is the
    /// concatenation of two tensors, equal otherwise.
    pub first_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride: usize,
    pub padding: usize,
    pub out_height: usize,
    pub out_width: usize,
}

impl ConvGeom {
    /// The geometry of a convolution of `x` (or of `cat([x, second], 1)`) with `w`.
    pub(crate) fn new(
        x: &[usize],
        second: Option<&[usize]>,
        w: &[usize],
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let (&[batch, first_channels, height, width], &[out_channels, w_in, kernel_h, kernel_w]) =
            (x, w)
        else {
            candle_core::bail!("conv2d: input {x:?} and weight {w:?} must both be 4-D")
        };
        let in_channels = match second {
            None => first_channels,
            Some(&[n2, c2, h2, w2]) if n2 == batch && h2 == height && w2 == width => {
                if first_channels == 0 || c2 == 0 {
                    candle_core::bail!(
                        "conv2d_concat: inputs {x:?} and {second:?} must both have channels"
                    )
                }
                first_channels + c2
            }
            Some(other) => candle_core::bail!(
                "conv2d_concat: inputs {x:?} and {other:?} differ in batch, height or width"
            ),
        };
        if w_in != in_channels {
            candle_core::bail!(
                "conv2d: input {x:?} (with {second:?}) has {in_channels} channels, weight {w:?} \
                 expects {w_in}"
            )
        }
        if stride == 0 || kernel_h == 0 || kernel_w == 0 {
            candle_core::bail!("conv2d: stride and kernel size must be positive")
        }
        if height + 2 * padding < kernel_h || width + 2 * padding < kernel_w {
            candle_core::bail!(
                "conv2d: kernel {kernel_h} x {kernel_w} larger than the padded input {x:?} \
                 (padding {padding})"
            )
        }
        Ok(Self {
            batch,
            in_channels,
            first_channels,
            height,
            width,
            out_channels,
            kernel_h,
            kernel_w,
            stride,
            padding,
            out_height: (height + 2 * padding - kernel_h) / stride + 1,
            out_width: (width + 2 * padding - kernel_w) / stride + 1,
        })
    }

    pub(crate) fn k(&self) -> usize {
        self.in_channels * self.kernel_h * self.kernel_w
    }
    pub(crate) fn plane(&self) -> usize {
        self.height * self.width
    }
    pub(crate) fn in_plane(&self) -> usize {
        self.in_channels * self.plane()
    }
    pub(crate) fn out_pixels(&self) -> usize {
        self.out_height * self.out_width
    }
    pub(crate) fn out_plane(&self) -> usize {
        self.out_channels * self.out_pixels()
    }
    pub(crate) fn is_concat(&self) -> bool {
        self.first_channels < self.in_channels
    }
    /// Channels of the two input parts (the second is 0 without a concatenation).
    pub(crate) fn part_channels(&self) -> [usize; 2] {
        [self.first_channels, self.in_channels - self.first_channels]
    }
    /// Bands of output rows, each with about `TILE_ELEMENTS` column-matrix elements.
    fn row_bands(&self) -> impl Iterator<Item = Range<usize>> {
        // At least MIN_BAND_PIXELS per band: narrower GEMMs lose more than the cache saves
        // (the deep levels, with K in the thousands and 8 x 8 images, stay whole).
        let rows = (TILE_ELEMENTS / (self.k() * self.out_width).max(1))
            .max(MIN_BAND_PIXELS / self.out_width.max(1))
            .clamp(1, self.out_height);
        let h = self.out_height;
        (0..h.div_ceil(rows)).map(move |b| b * rows..((b + 1) * rows).min(h))
    }
    /// Scratch elements for the largest band.
    fn band_elements(&self) -> usize {
        self.row_bands().map(|r| r.len()).max().unwrap_or(0) * self.out_width * self.k()
    }
    fn is_pointwise(&self) -> bool {
        self.kernel_h == 1
            && self.kernel_w == 1
            && self.stride == 1
            && self.padding == 0
            && !self.is_concat()
    }
    /// The shapes of the input parts (one, or two for a concatenation).
    pub(crate) fn input_shapes(&self) -> Vec<Shape> {
        let [c1, c2] = self.part_channels();
        let shape = |c| Shape::from((self.batch, c, self.height, self.width));
        if self.is_concat() {
            vec![shape(c1), shape(c2)]
        } else {
            vec![shape(c1)]
        }
    }
    pub(crate) fn weight_shape(&self) -> Shape {
        (
            self.out_channels,
            self.in_channels,
            self.kernel_h,
            self.kernel_w,
        )
            .into()
    }
    pub(crate) fn weight_len(&self) -> usize {
        self.out_channels * self.k()
    }
    pub(crate) fn output_shape(&self) -> Shape {
        (
            self.batch,
            self.out_channels,
            self.out_height,
            self.out_width,
        )
            .into()
    }
}

/// The input planes of one sample, from one tensor or from the two parts of a concatenation.
#[derive(Clone, Copy)]
struct SampleInput<'a, T> {
    parts: [&'a [T]; 2],
    first_channels: usize,
    plane: usize,
}

impl<'a, T> SampleInput<'a, T> {
    /// Sample `n` of the batch tensors `parts` (the second empty without a concatenation).
    fn of(g: &ConvGeom, parts: [&'a [T]; 2], n: usize) -> Self {
        let plane = g.plane();
        let [c1, c2] = g.part_channels();
        Self {
            parts: [
                &parts[0][n * c1 * plane..][..c1 * plane],
                &parts[1][n * c2 * plane..][..c2 * plane],
            ],
            first_channels: c1,
            plane,
        }
    }
    /// The plane of input channel `ci` (counted over both parts).
    fn channel(&self, ci: usize) -> &'a [T] {
        let (part, c) = if ci < self.first_channels {
            (0, ci)
        } else {
            (1, ci - self.first_channels)
        };
        &self.parts[part][c * self.plane..][..self.plane]
    }
}

/// The output positions `o` in `lo..hi` for which `o * stride + offset - padding` lies in
/// `0..in_len` (along one axis, for kernel tap `offset`).
fn valid_range(
    offset: usize,
    padding: usize,
    stride: usize,
    in_len: usize,
    out_len: usize,
) -> (usize, usize) {
    let lo = if offset >= padding {
        0
    } else {
        (padding - offset).div_ceil(stride)
    };
    let hi = if in_len + padding > offset {
        (in_len + padding - offset).div_ceil(stride).min(out_len)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// One (row of col, output row) pair of im2col / col2im.
struct TapRow {
    /// Row of the column matrix, `(ci * kh + ky) * kw + kx`.
    row: usize,
    /// Input channel.
    channel: usize,
    /// Output row, relative to the start of the band.
    out_row: usize,
    /// Offset of the source input row within its channel plane, `None` when the tap falls in
    /// the padding.
    src: Option<usize>,
    /// The valid output column range.
    valid: (usize, usize),
    /// Input column of the first valid output.
    first_col: usize,
}

/// Visits every (row of col, output row in `rows`) pair: the shared loop structure of im2col
/// and col2im.
fn for_each_tap_row(g: &ConvGeom, rows: Range<usize>, mut f: impl FnMut(TapRow)) {
    let (kh, kw, s, p) = (g.kernel_h, g.kernel_w, g.stride, g.padding);
    for ci in 0..g.in_channels {
        for ky in 0..kh {
            let (oy_lo, oy_hi) = valid_range(ky, p, s, g.height, g.out_height);
            for kx in 0..kw {
                let row = (ci * kh + ky) * kw + kx;
                let valid = valid_range(kx, p, s, g.width, g.out_width);
                // First valid input column: ox_lo * s + kx - p (>= 0 by construction).
                let first_col = (valid.0 * s + kx).saturating_sub(p);
                for oy in rows.clone() {
                    let src = (oy_lo..oy_hi)
                        .contains(&oy)
                        .then(|| (oy * s + ky - p) * g.width);
                    f(TapRow {
                        row,
                        channel: ci,
                        out_row: oy - rows.start,
                        src,
                        valid,
                        first_col,
                    });
                }
            }
        }
    }
}

/// `col (K x band pixels) = im2col(x)` for the output rows `rows` of one sample.
fn im2col<T: Float>(g: &ConvGeom, x: &SampleInput<'_, T>, rows: Range<usize>, col: &mut [T]) {
    let zero = T::from_f64(0.0);
    let (wo, s) = (g.out_width, g.stride);
    let p_len = rows.len() * wo;
    for_each_tap_row(g, rows, |t| {
        let (lo, hi) = t.valid;
        let out = &mut col[t.row * p_len + t.out_row * wo..][..wo];
        let Some(src) = t.src else {
            out.fill(zero);
            return;
        };
        out[..lo].fill(zero);
        out[hi..].fill(zero);
        if hi == lo {
            return;
        }
        let src = &x.channel(t.channel)[src..src + g.width];
        if s == 1 {
            out[lo..hi].copy_from_slice(&src[t.first_col..t.first_col + (hi - lo)]);
        } else {
            for (o, v) in out[lo..hi]
                .iter_mut()
                .zip(src[t.first_col..].iter().step_by(s))
            {
                *o = *v;
            }
        }
    });
}

/// `dx += col2im(dcol)` for the output rows `rows` of one sample, whose input gradient is
/// `dx` (the planes of the first `first_channels` channels) and `dx_second` (the rest).
fn col2im<T: Float>(
    g: &ConvGeom,
    dcol: &[T],
    rows: Range<usize>,
    dx: &mut [T],
    dx_second: &mut [T],
) {
    let (wo, s, plane) = (g.out_width, g.stride, g.plane());
    let p_len = rows.len() * wo;
    for_each_tap_row(g, rows, |t| {
        let (lo, hi) = t.valid;
        let Some(src) = t.src.filter(|_| hi > lo) else {
            return;
        };
        let grad = &dcol[t.row * p_len + t.out_row * wo..][lo..hi];
        let (part, c) = if t.channel < g.first_channels {
            (&mut *dx, t.channel)
        } else {
            (&mut *dx_second, t.channel - g.first_channels)
        };
        let dst = &mut part[c * plane + src..][..g.width];
        if s == 1 {
            for (d, v) in dst[t.first_col..t.first_col + (hi - lo)]
                .iter_mut()
                .zip(grad)
            {
                *d += *v;
            }
        } else {
            for (d, v) in dst[t.first_col..].iter_mut().step_by(s).zip(grad) {
                *d += *v;
            }
        }
    });
}

/// What the forward op adds to the plain convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Extra {
    /// Nothing: `(x, weight)`.
    None,
    /// A bias: `(x, weight, bias)`.
    Bias,
    /// A second input concatenated after the first along channels: `(x, second, weight)`.
    Concat,
}

/// Forward: `(x, weight) -> y`, `(x, weight, bias) -> y` or `(x, second, weight) -> y`.
#[derive(Clone, Copy, Debug)]
struct Conv2dFwd {
    geom: ConvGeom,
    extra: Extra,
}

impl Conv2dFwd {
    fn forward<T: Float>(&self, parts: [&[T]; 2], w: &[T], bias: Option<&[T]>) -> Vec<T> {
        let g = self.geom;
        #[cfg(target_arch = "x86_64")]
        if takes_direct(&g, Pass::Forward)
            && let (Some(x1), Some(x2), Some(w32)) =
                (T::as_f32(parts[0]), T::as_f32(parts[1]), T::as_f32(w))
        {
            let bias = bias.and_then(T::as_f32);
            let plane_of = |n, c| SampleInput::of(&g, [x1, x2], n).channel(c);
            let y = super::direct3x3::forward(&g, plane_of, w32, bias);
            return T::from_f32_vec(y).expect("f32 data");
        }
        let (k, p_len, co) = (g.k(), g.out_pixels(), g.out_channels);
        let mut y = vec![T::from_f64(0.0); g.batch * g.out_plane()];
        // With a bias, every output band is first filled with it and the product added.
        let fill_bias = |y_n: &mut [T], pixels: Range<usize>| {
            if let Some(bias) = bias {
                for (c, b) in bias.iter().enumerate() {
                    y_n[c * p_len + pixels.start..c * p_len + pixels.end].fill(*b);
                }
            }
        };
        let accumulate = bias.is_some();
        let plan = Plan::for_batch(g.batch);
        let bands: Vec<Range<usize>> = g.row_bands().collect();
        if !g.is_pointwise() && plan.splits_bands(bands.len()) {
            self.forward_over_bands(parts, w, bias, &bands, &mut y);
            return y;
        }
        plan.for_each_sample(&mut y, g.out_plane(), |n, y_n, par| {
            let x_n = SampleInput::of(&g, parts, n);
            if g.is_pointwise() {
                fill_bias(y_n, 0..p_len);
                matmul_into(
                    (co, p_len, k),
                    y_n,
                    p_len,
                    accumulate,
                    Mat::rows(w, k),
                    Mat::rows(x_n.parts[0], p_len),
                    par,
                );
            } else {
                with_scratch(g.band_elements(), |col: &mut [T]| {
                    for rows in g.row_bands() {
                        let band = rows.len() * g.out_width;
                        let start = rows.start * g.out_width;
                        im2col(&g, &x_n, rows, col);
                        fill_bias(y_n, start..start + band);
                        matmul_into(
                            (co, band, k),
                            &mut y_n[start..],
                            p_len,
                            accumulate,
                            Mat::rows(w, k),
                            Mat::rows(col, band),
                            par,
                        );
                    }
                });
            }
        });
        y
    }
}

impl Conv2dFwd {
    /// [`Conv2dFwd::forward`] for a batch too small to spread over the threads: the row bands
    /// of each image go to the threads instead (single-threaded GEMMs, one parallel region per
    /// image rather than one per band). Each band's `Co x band` product lands in its own tile,
    /// copied into the output rows afterwards.
    fn forward_over_bands<T: Float>(
        &self,
        parts: [&[T]; 2],
        w: &[T],
        bias: Option<&[T]>,
        bands: &[Range<usize>],
        y: &mut [T],
    ) {
        use rayon::prelude::*;
        let g = self.geom;
        let (k, p_len, co, wo) = (g.k(), g.out_pixels(), g.out_channels, g.out_width);
        let mut tiles = vec![T::from_f64(0.0); g.out_plane()];
        for (n, y_n) in y.chunks_mut(g.out_plane().max(1)).enumerate() {
            let x_n = SampleInput::of(&g, parts, n);
            let mut chunks = Vec::with_capacity(bands.len());
            let mut rest = &mut tiles[..];
            for rows in bands {
                let (tile, tail) = rest.split_at_mut(co * rows.len() * wo);
                chunks.push((tile, rows.clone()));
                rest = tail;
            }
            chunks.into_par_iter().for_each(|(tile, rows)| {
                let band = rows.len() * wo;
                if let Some(bias) = bias {
                    for (row, b) in tile.chunks_mut(band).zip(bias) {
                        row.fill(*b);
                    }
                }
                with_scratch(g.band_elements(), |col: &mut [T]| {
                    im2col(&g, &x_n, rows, col);
                    matmul_into(
                        (co, band, k),
                        tile,
                        band,
                        bias.is_some(),
                        Mat::rows(w, k),
                        Mat::rows(col, band),
                        Parallelism::None,
                    );
                });
            });
            let mut offset = 0;
            for rows in bands {
                let (band, start) = (rows.len() * wo, rows.start * wo);
                for c in 0..co {
                    y_n[c * p_len + start..][..band]
                        .copy_from_slice(&tiles[offset + c * band..][..band]);
                }
                offset += co * band;
            }
        }
    }
}

impl Kernel2 for Conv2dFwd {
    const NAME: &'static str = "lus-conv2d";
    fn input_shapes(&self) -> [Shape; 2] {
        [self.geom.input_shapes().remove(0), self.geom.weight_shape()]
    }
    fn run<T: Float>(&self, x: &[T], w: &[T]) -> Result<(Vec<T>, Shape)> {
        Ok((self.forward([x, &[]], w, None), self.geom.output_shape()))
    }
}

impl Kernel3 for Conv2dFwd {
    const NAME: &'static str = "lus-conv2d";
    fn input_shapes(&self) -> [Shape; 3] {
        let g = &self.geom;
        let mut inputs = g.input_shapes();
        match self.extra {
            Extra::Concat => {
                let second = inputs.pop().expect("two parts");
                [inputs.remove(0), second, g.weight_shape()]
            }
            Extra::Bias | Extra::None => {
                [inputs.remove(0), g.weight_shape(), g.out_channels.into()]
            }
        }
    }
    fn run<T: Float>(&self, a: &[T], b: &[T], c: &[T]) -> Result<(Vec<T>, Shape)> {
        let y = match self.extra {
            Extra::Concat => self.forward([a, b], c, None),
            Extra::Bias | Extra::None => self.forward([a, &[]], b, Some(c)),
        };
        Ok((y, self.geom.output_shape()))
    }
}

impl CustomOp2 for Conv2dFwd {
    kernel2_forward!();
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (mut dx, dw, _) = conv_backward(self.geom, &[x], w, dy, false)?;
        Ok((dx.remove(0), Some(dw)))
    }
}

impl CustomOp3 for Conv2dFwd {
    kernel3_forward!();
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        match self.extra {
            Extra::Concat => {
                let (mut dx, dw, _) = conv_backward(self.geom, &[a, b], c, dy, false)?;
                let second = dx.pop().flatten();
                Ok((dx.pop().flatten(), second, Some(dw)))
            }
            Extra::Bias | Extra::None => {
                let (mut dx, dw, db) = conv_backward(self.geom, &[a], b, dy, true)?;
                Ok((dx.remove(0), Some(dw), db))
            }
        }
    }
}

/// The gradients of a convolution of the input parts `xs` with `w` given `dy`: one input
/// gradient per part (`None` for a part outside the graph, such as the U-Net's image), the
/// weight gradient and, with `bias`, the bias gradient.
#[allow(clippy::type_complexity)]
fn conv_backward(
    g: ConvGeom,
    xs: &[&Tensor],
    w: &Tensor,
    dy: &Tensor,
    bias: bool,
) -> Result<(Vec<Option<Tensor>>, Tensor, Option<Tensor>)> {
    let dy = dy.contiguous()?;
    let dx = if xs.iter().any(|x| x.track_op()) {
        let packed = dy.apply_op2_no_bwd(&w.contiguous()?, &Conv2dGradInput(g))?;
        let shapes = g.input_shapes();
        let parts = split_flat(&packed, &shapes)?;
        xs.iter()
            .zip(parts)
            .map(|(x, d)| x.track_op().then_some(d))
            .collect()
    } else {
        vec![None; xs.len()]
    };
    let grad_weight = Conv2dGradWeight { geom: g, bias };
    let packed = match xs {
        [x] => x.contiguous()?.apply_op2_no_bwd(&dy, &grad_weight)?,
        [x, second] => {
            x.contiguous()?
                .apply_op3_no_bwd(&second.contiguous()?, &dy, &grad_weight)?
        }
        _ => candle_core::bail!("conv2d backward: one or two inputs, got {}", xs.len()),
    };
    let mut shapes = vec![g.weight_shape()];
    if bias {
        shapes.push(g.out_channels.into());
    }
    let mut weight_and_bias = split_flat(&packed, &shapes)?;
    let db = bias.then(|| weight_and_bias.pop()).flatten();
    Ok((dx, weight_and_bias.remove(0), db))
}

/// Input gradient: `(dy, weight) -> dx`; for a concatenated input, both parts' gradients one
/// after the other in a flat tensor.
#[derive(Clone, Copy, Debug)]
struct Conv2dGradInput(ConvGeom);

impl Kernel2 for Conv2dGradInput {
    const NAME: &'static str = "lus-conv2d-grad-input";
    fn input_shapes(&self) -> [Shape; 2] {
        [self.0.output_shape(), self.0.weight_shape()]
    }
    fn run<T: Float>(&self, dy: &[T], w: &[T]) -> Result<(Vec<T>, Shape)> {
        let g = self.0;
        let shape = if g.is_concat() {
            (g.batch * g.in_plane()).into()
        } else {
            g.input_shapes().remove(0)
        };
        Ok((self.grad_input(dy, w), shape))
    }
}

impl Conv2dGradInput {
    fn grad_input<T: Float>(&self, dy: &[T], w: &[T]) -> Vec<T> {
        let g = self.0;
        let (k, p_len, plane) = (g.k(), g.out_pixels(), g.plane());
        let [c1, _] = g.part_channels();
        #[cfg(target_arch = "x86_64")]
        if takes_direct(&g, Pass::GradInput)
            && let (Some(dy), Some(w)) = (T::as_f32(dy), T::as_f32(w))
        {
            let dx = super::direct3x3::grad_input(&g, dy, w);
            return T::from_f32_vec(dx).expect("f32 data");
        }
        let mut dx = vec![T::from_f64(0.0); g.batch * g.in_plane()];
        let (dx_first, dx_second) = dx.split_at_mut(g.batch * c1 * plane);
        let gemm_shape = (k, p_len, g.out_channels);
        Plan::for_batch(g.batch).for_each_sample2(
            g.batch,
            dx_first,
            dx_second,
            |n, dx_n, dx2_n, par| {
                let dy_n = &dy[n * g.out_plane()..][..g.out_plane()];
                let w_t = Mat::transposed(w, k);
                if g.is_pointwise() {
                    matmul(gemm_shape, dx_n, w_t, Mat::rows(dy_n, p_len), par);
                } else {
                    with_scratch(g.band_elements(), |dcol: &mut [T]| {
                        for rows in g.row_bands() {
                            let band = rows.len() * g.out_width;
                            let start = rows.start * g.out_width;
                            let dy_band = Mat {
                                data: &dy_n[start..],
                                row_stride: p_len,
                                col_stride: 1,
                            };
                            matmul((k, band, g.out_channels), dcol, w_t, dy_band, par);
                            col2im(&g, dcol, rows, dx_n, dx2_n);
                        }
                    });
                }
            },
        );
        dx
    }
}

impl CustomOp2 for Conv2dGradInput {
    kernel2_forward!();
}

/// Weight gradient: `(x, dy) -> dW` or `(x, second, dy) -> dW` for a concatenated input; with
/// `bias`, the bias gradient follows the weight gradient in a flat tensor.
#[derive(Clone, Copy, Debug)]
struct Conv2dGradWeight {
    geom: ConvGeom,
    bias: bool,
}

impl Conv2dGradWeight {
    fn output_len(&self) -> usize {
        self.geom.weight_len() + if self.bias { self.geom.out_channels } else { 0 }
    }

    fn output_shape(&self) -> Shape {
        if self.bias {
            self.output_len().into()
        } else {
            self.geom.weight_shape()
        }
    }

    fn run_parts<T: Float>(&self, parts: [&[T]; 2], dy: &[T]) -> Vec<T> {
        let g = self.geom;
        let (k, p_len) = (g.k(), g.out_pixels());
        let block = self.output_len();
        #[cfg(target_arch = "x86_64")]
        if takes_direct(&g, Pass::GradWeight)
            && let (Some(x1), Some(x2), Some(dy32)) =
                (T::as_f32(parts[0]), T::as_f32(parts[1]), T::as_f32(dy))
        {
            let plane_of = |n, c| SampleInput::of(&g, [x1, x2], n).channel(c);
            let mut out = T::from_f32_vec(super::direct3x3::grad_weight(&g, plane_of, dy32))
                .expect("f32 data");
            if self.bias {
                out.extend(bias_gradient(&g, dy));
            }
            return out;
        }
        let plan = Plan::for_batch(g.batch);
        let bands: Vec<Range<usize>> = g.row_bands().collect();
        if !g.is_pointwise() && plan.splits_bands(bands.len()) {
            return self.run_over_bands(parts, dy, &bands);
        }
        // One partial gradient per sample, summed in sample order below: the result is the same
        // whichever way the samples are spread over threads.
        let mut partial = vec![T::from_f64(0.0); g.batch * block];
        let gemm_shape = (g.out_channels, k, p_len);
        plan.for_each_sample(&mut partial, block, |n, block_n, par| {
            let x_n = SampleInput::of(&g, parts, n);
            let dy_n = &dy[n * g.out_plane()..][..g.out_plane()];
            let (dw_n, db_n) = block_n.split_at_mut(g.weight_len());
            let dy_rows = Mat::rows(dy_n, p_len);
            if g.is_pointwise() {
                matmul(
                    gemm_shape,
                    dw_n,
                    dy_rows,
                    Mat::transposed(x_n.parts[0], p_len),
                    par,
                );
            } else {
                with_scratch(g.band_elements(), |col: &mut [T]| {
                    for (b, rows) in g.row_bands().enumerate() {
                        let band = rows.len() * g.out_width;
                        let start = rows.start * g.out_width;
                        im2col(&g, &x_n, rows, col);
                        let dy_band = Mat {
                            data: &dy_n[start..],
                            ..dy_rows
                        };
                        matmul_into(
                            (g.out_channels, k, band),
                            dw_n,
                            k,
                            b > 0,
                            dy_band,
                            Mat::transposed(col, band),
                            par,
                        );
                    }
                });
            }
            for (d, row) in db_n.iter_mut().zip(dy_n.chunks(p_len.max(1))) {
                *d = row.iter().fold(T::from_f64(0.0), |s, v| s + *v);
            }
        });
        if g.batch == 1 {
            partial
        } else {
            sum_blocks(&partial, block)
        }
    }
}

impl Conv2dGradWeight {
    /// [`Conv2dGradWeight::run_parts`] for a batch too small to spread over the threads: one
    /// partial weight gradient per (sample, row band), computed on the threads and summed in
    /// that order (independent of the thread count).
    fn run_over_bands<T: Float>(
        &self,
        parts: [&[T]; 2],
        dy: &[T],
        bands: &[Range<usize>],
    ) -> Vec<T> {
        use rayon::prelude::*;
        let g = self.geom;
        let (k, p_len, wlen) = (g.k(), g.out_pixels(), g.weight_len());
        let mut partial = vec![T::from_f64(0.0); g.batch * bands.len() * wlen];
        partial
            .par_chunks_mut(wlen.max(1))
            .enumerate()
            .for_each(|(item, dw)| {
                let (n, rows) = (item / bands.len(), bands[item % bands.len()].clone());
                let x_n = SampleInput::of(&g, parts, n);
                let (band, start) = (rows.len() * g.out_width, rows.start * g.out_width);
                let dy_band = Mat {
                    data: &dy[n * g.out_plane() + start..],
                    row_stride: p_len,
                    col_stride: 1,
                };
                with_scratch(g.band_elements(), |col: &mut [T]| {
                    im2col(&g, &x_n, rows, col);
                    matmul_into(
                        (g.out_channels, k, band),
                        dw,
                        k,
                        false,
                        dy_band,
                        Mat::transposed(col, band),
                        Parallelism::None,
                    );
                });
            });
        let mut out = sum_blocks(&partial, wlen);
        if self.bias {
            out.extend(bias_gradient(&g, dy));
        }
        out
    }
}

/// `dbias[c] = sum of dy[n][c] over samples and pixels`, per sample in order.
fn bias_gradient<T: Float>(g: &ConvGeom, dy: &[T]) -> Vec<T> {
    let p_len = g.out_pixels();
    let mut db = vec![T::from_f64(0.0); g.out_channels];
    for dy_n in dy.chunks(g.out_plane().max(1)) {
        for (d, row) in db.iter_mut().zip(dy_n.chunks(p_len.max(1))) {
            *d += row.iter().fold(T::from_f64(0.0), |s, v| s + *v);
        }
    }
    db
}

impl Kernel2 for Conv2dGradWeight {
    const NAME: &'static str = "lus-conv2d-grad-weight";
    fn input_shapes(&self) -> [Shape; 2] {
        [self.geom.input_shapes().remove(0), self.geom.output_shape()]
    }
    fn run<T: Float>(&self, x: &[T], dy: &[T]) -> Result<(Vec<T>, Shape)> {
        Ok((self.run_parts([x, &[]], dy), self.output_shape()))
    }
}

impl Kernel3 for Conv2dGradWeight {
    const NAME: &'static str = "lus-conv2d-grad-weight";
    fn input_shapes(&self) -> [Shape; 3] {
        let mut inputs = self.geom.input_shapes();
        let second = inputs.pop().expect("a concatenation has two parts");
        [
            inputs.pop().expect("two parts"),
            second,
            self.geom.output_shape(),
        ]
    }
    fn run<T: Float>(&self, x: &[T], second: &[T], dy: &[T]) -> Result<(Vec<T>, Shape)> {
        Ok((self.run_parts([x, second], dy), self.output_shape()))
    }
}

impl CustomOp2 for Conv2dGradWeight {
    kernel2_forward!();
}

impl CustomOp3 for Conv2dGradWeight {
    kernel3_forward!();
}

/// The convolution of `g` (no bias) of the input parts on plain slices, for ops that fuse it
/// with other layers.
pub(crate) fn conv_forward<T: Float>(g: &ConvGeom, parts: [&[T]; 2], w: &[T]) -> Vec<T> {
    let extra = if g.is_concat() {
        Extra::Concat
    } else {
        Extra::None
    };
    Conv2dFwd { geom: *g, extra }.forward(parts, w, None)
}

/// The input gradient of the convolution `g` (both parts one after the other for a
/// concatenation) on plain slices.
pub(crate) fn conv_grad_input<T: Float>(g: &ConvGeom, dy: &[T], w: &[T]) -> Vec<T> {
    Conv2dGradInput(*g).grad_input(dy, w)
}

/// The weight gradient of the convolution `g` (no bias) on plain slices.
pub(crate) fn conv_grad_weight<T: Float>(g: &ConvGeom, parts: [&[T]; 2], dy: &[T]) -> Vec<T> {
    Conv2dGradWeight {
        geom: *g,
        bias: false,
    }
    .run_parts(parts, dy)
}

/// 2-D convolution of `x` (`N x Ci x H x W`) with `weight` (`Co x Ci x kh x kw`), equal stride
/// and padding on both axes, plus an optional `bias` (`Co`) added inside the GEMM, as a custom
/// op (CPU, f32 or f64). Its backward pass gives the gradients of `x`, `weight` and `bias`
/// through further custom ops (the bias gradient from the weight-gradient op).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let geom = ConvGeom::new(x.dims(), None, weight.dims(), stride, padding)?;
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        None => x.apply_op2(
            &weight,
            Conv2dFwd {
                geom,
                extra: Extra::None,
            },
        ),
        Some(bias) => {
            if bias.dims() != [geom.out_channels] {
                candle_core::bail!(
                    "conv2d: bias of shape {:?} for {} output channels",
                    bias.dims(),
                    geom.out_channels
                )
            }
            x.apply_op3(
                &weight,
                &bias.contiguous()?,
                Conv2dFwd {
                    geom,
                    extra: Extra::Bias,
                },
            )
        }
    }
}

/// The convolution of `cat([first, second], 1)` (`N x (C1 + C2) x H x W`) with `weight`
/// (`Co x (C1 + C2) x kh x kw`), without building the concatenation: the U-Net's decoder
/// convolution over its skip connection and up-sampled features. No bias. A custom op (CPU,
/// f32 or f64) whose backward pass gives the gradients of both inputs (as separate tensors)
/// and of the weight.
pub fn conv2d_concat(
    first: &Tensor,
    second: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let geom = ConvGeom::new(
        first.dims(),
        Some(second.dims()),
        weight.dims(),
        stride,
        padding,
    )?;
    first.contiguous()?.apply_op3(
        &second.contiguous()?,
        &weight.contiguous()?,
        Conv2dFwd {
            geom,
            extra: Extra::Concat,
        },
    )
}

/// The three kernels of a convolution on plain f32 slices (input `x_shape`, weight `w_shape`,
/// equal stride and padding), for kernel-level benchmarks; not part of the stable API.
#[doc(hidden)]
pub mod raw {
    use super::{Conv2dFwd, Conv2dGradInput, Conv2dGradWeight, ConvGeom, Extra};
    use candle_core::Result;

    fn geom(x: &[usize; 4], w: &[usize; 4], stride: usize, padding: usize) -> Result<ConvGeom> {
        ConvGeom::new(x, None, w, stride, padding)
    }

    /// `y = conv2d(x, w)`.
    pub fn forward(
        x_shape: [usize; 4],
        w_shape: [usize; 4],
        stride: usize,
        padding: usize,
        x: &[f32],
        w: &[f32],
    ) -> Result<Vec<f32>> {
        let geom = geom(&x_shape, &w_shape, stride, padding)?;
        let op = Conv2dFwd {
            geom,
            extra: Extra::None,
        };
        Ok(op.forward([x, &[]], w, None))
    }

    /// `dx` given `dy`.
    pub fn grad_input(
        x_shape: [usize; 4],
        w_shape: [usize; 4],
        stride: usize,
        padding: usize,
        dy: &[f32],
        w: &[f32],
    ) -> Result<Vec<f32>> {
        let geom = geom(&x_shape, &w_shape, stride, padding)?;
        Ok(Conv2dGradInput(geom).grad_input(dy, w))
    }

    /// `dW` given `x` and `dy`.
    pub fn grad_weight(
        x_shape: [usize; 4],
        w_shape: [usize; 4],
        stride: usize,
        padding: usize,
        x: &[f32],
        dy: &[f32],
    ) -> Result<Vec<f32>> {
        let geom = geom(&x_shape, &w_shape, stride, padding)?;
        let op = Conv2dGradWeight { geom, bias: false };
        Ok(op.run_parts([x, &[]], dy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_range_matches_a_direct_scan() {
        for in_len in 1..7 {
            for padding in 0..3 {
                for stride in 1..4 {
                    for offset in 0..4 {
                        if in_len + 2 * padding < offset + 1 {
                            continue;
                        }
                        let out_len = (in_len + 2 * padding - offset - 1) / stride + 1;
                        let valid: Vec<usize> = (0..out_len)
                            .filter(|o| {
                                let i = (o * stride + offset) as isize - padding as isize;
                                (0..in_len as isize).contains(&i)
                            })
                            .collect();
                        let (lo, hi) = valid_range(offset, padding, stride, in_len, out_len);
                        assert_eq!(
                            (lo..hi).collect::<Vec<_>>(),
                            valid,
                            "in {in_len} pad {padding} stride {stride} offset {offset}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), c> == <x, col2im(c)> for arbitrary x and c.
        let g = ConvGeom::new(&[1, 2, 5, 4], None, &[3, 2, 3, 2], 2, 1).unwrap();
        let x: Vec<f64> = (0..g.in_plane()).map(|i| (i as f64 * 0.37).sin()).collect();
        let c: Vec<f64> = (0..g.k() * g.out_pixels())
            .map(|i| (i as f64 * 0.91).cos())
            .collect();
        let mut col = vec![0.0; c.len()];
        im2col(
            &g,
            &SampleInput::of(&g, [&x, &[]], 0),
            0..g.out_height,
            &mut col,
        );
        let mut back = vec![0.0; x.len()];
        col2im(&g, &c, 0..g.out_height, &mut back, &mut []);
        let lhs: f64 = col.iter().zip(&c).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert!(
            (lhs - rhs).abs() < 1e-12 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }

    #[test]
    fn pointwise_gemm_path_equals_plain_sums() {
        let g = ConvGeom::new(&[1, 3, 2, 2], None, &[2, 3, 1, 1], 1, 0).unwrap();
        let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let w = [1.0f32, 2.0, 3.0, -1.0, 0.5, 0.0];
        let op = Conv2dFwd {
            geom: g,
            extra: Extra::None,
        };
        let (y, _) = Kernel2::run(&op, &x, &w).unwrap();
        let expected: Vec<f32> = (0..2)
            .flat_map(|co| {
                let x = &x;
                (0..4).map(move |p| (0..3).map(|ci| w[co * 3 + ci] * x[ci * 4 + p]).sum())
            })
            .collect();
        assert_eq!(y, expected);
    }
}
