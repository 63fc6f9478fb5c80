//! 2-D convolution (groups 1, dilation 1) as im2col + GEMM, with its input and weight
//! gradients as further custom ops.
//!
//! Per sample, with `K = Ci * kh * kw` and `P = Ho * Wo`: `col (K x P) = im2col(x)`,
//! `y (Co x P) = W (Co x K) * col`; `dcol = W^T * dy`, `dx = col2im(dcol)`;
//! `dW = sum over samples of dy * col^T`. A 1x1 stride-1 unpadded convolution skips im2col.

use std::ops::Range;

use super::{Float, Kernel2, Mat, Plan, cpu_fwd2, matmul, matmul_into, sum_blocks, with_scratch};

/// Elements of one im2col tile: the convolutions work on bands of output rows whose column
/// matrix (`K x band pixels`) stays in the cache between im2col and the GEMM; a whole-image
/// column matrix at 128 px is tens of MiB and made every pass a trip to memory.
const TILE_ELEMENTS: usize = 128 * 1024;
const MIN_BAND_PIXELS: usize = 512;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// The shapes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvGeom {
    pub batch: usize,
    pub in_channels: usize,
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
    fn new(x: &[usize], w: &[usize], stride: usize, padding: usize) -> Result<Self> {
        let (&[batch, in_channels, height, width], &[out_channels, w_in, kernel_h, kernel_w]) =
            (x, w)
        else {
            candle_core::bail!("conv2d: input {x:?} and weight {w:?} must both be 4-D")
        };
        if w_in != in_channels {
            candle_core::bail!(
                "conv2d: input {x:?} has {in_channels} channels, weight {w:?} expects {w_in}"
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

    fn k(&self) -> usize {
        self.in_channels * self.kernel_h * self.kernel_w
    }
    fn in_plane(&self) -> usize {
        self.in_channels * self.height * self.width
    }
    fn out_pixels(&self) -> usize {
        self.out_height * self.out_width
    }
    fn out_plane(&self) -> usize {
        self.out_channels * self.out_pixels()
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
        self.kernel_h == 1 && self.kernel_w == 1 && self.stride == 1 && self.padding == 0
    }
    fn input_shape(&self) -> Shape {
        (self.batch, self.in_channels, self.height, self.width).into()
    }
    fn weight_shape(&self) -> Shape {
        (
            self.out_channels,
            self.in_channels,
            self.kernel_h,
            self.kernel_w,
        )
            .into()
    }
    fn output_shape(&self) -> Shape {
        (
            self.batch,
            self.out_channels,
            self.out_height,
            self.out_width,
        )
            .into()
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

/// Visits every (row of col, output row in `rows`) pair with the source input row, the valid
/// output column range and the input column of the first valid output: the shared loop
/// structure of im2col and col2im. The output row is passed relative to `rows.start`.
fn for_each_tap_row(
    g: &ConvGeom,
    rows: Range<usize>,
    mut f: impl FnMut(usize, usize, Option<usize>, (usize, usize), usize),
) {
    let (kh, kw, s, p) = (g.kernel_h, g.kernel_w, g.stride, g.padding);
    for ci in 0..g.in_channels {
        for ky in 0..kh {
            let (oy_lo, oy_hi) = valid_range(ky, p, s, g.height, g.out_height);
            for kx in 0..kw {
                let row = (ci * kh + ky) * kw + kx;
                let (ox_lo, ox_hi) = valid_range(kx, p, s, g.width, g.out_width);
                for oy in rows.clone() {
                    let src = (oy_lo..oy_hi)
                        .contains(&oy)
                        .then(|| (ci * g.height + oy * s + ky - p) * g.width);
                    // First valid input column: ox_lo * s + kx - p (>= 0 by construction).
                    let ix0 = (ox_lo * s + kx).saturating_sub(p);
                    f(row, oy - rows.start, src, (ox_lo, ox_hi), ix0);
                }
            }
        }
    }
}

/// `col (K x band pixels) = im2col(x)` for the output rows `rows` of one sample.
fn im2col<T: Float>(g: &ConvGeom, x: &[T], rows: Range<usize>, col: &mut [T]) {
    let zero = T::from_f64(0.0);
    let (wo, s) = (g.out_width, g.stride);
    let p_len = rows.len() * wo;
    for_each_tap_row(g, rows, |row, oy, src, (lo, hi), ix0| {
        let out = &mut col[row * p_len + oy * wo..][..wo];
        let Some(src) = src else {
            out.fill(zero);
            return;
        };
        out[..lo].fill(zero);
        out[hi..].fill(zero);
        if hi == lo {
            return;
        }
        let src = &x[src..src + g.width];
        if s == 1 {
            out[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
        } else {
            for (o, v) in out[lo..hi].iter_mut().zip(src[ix0..].iter().step_by(s)) {
                *o = *v;
            }
        }
    });
}

/// `dx += col2im(dcol)` for the output rows `rows` of one sample.
fn col2im<T: Float>(g: &ConvGeom, dcol: &[T], rows: Range<usize>, dx: &mut [T]) {
    let (wo, s) = (g.out_width, g.stride);
    let p_len = rows.len() * wo;
    for_each_tap_row(g, rows, |row, oy, src, (lo, hi), ix0| {
        let Some(dst) = src.filter(|_| hi > lo) else {
            return;
        };
        let grad = &dcol[row * p_len + oy * wo..][lo..hi];
        let dst = &mut dx[dst..dst + g.width];
        if s == 1 {
            for (d, v) in dst[ix0..ix0 + (hi - lo)].iter_mut().zip(grad) {
                *d += *v;
            }
        } else {
            for (d, v) in dst[ix0..].iter_mut().step_by(s).zip(grad) {
                *d += *v;
            }
        }
    });
}

/// Forward: `(x, weight) -> y`.
#[derive(Clone, Copy, Debug)]
struct Conv2dFwd(ConvGeom);

impl Kernel2 for Conv2dFwd {
    const NAME: &'static str = "lus-conv2d";
    fn input_shapes(&self) -> [Shape; 2] {
        [self.0.input_shape(), self.0.weight_shape()]
    }
    fn run<T: Float>(&self, x: &[T], w: &[T]) -> Result<(Vec<T>, Shape)> {
        let g = self.0;
        let (k, p_len) = (g.k(), g.out_pixels());
        let mut y = vec![T::from_f64(0.0); g.batch * g.out_plane()];
        let gemm_shape = (g.out_channels, p_len, k);
        Plan::for_batch(g.batch).for_each_sample(&mut y, g.out_plane(), |n, y_n, par| {
            let x_n = &x[n * g.in_plane()..][..g.in_plane()];
            if g.is_pointwise() {
                matmul(gemm_shape, y_n, Mat::rows(w, k), Mat::rows(x_n, p_len), par);
            } else {
                with_scratch(g.band_elements(), |col: &mut [T]| {
                    for rows in g.row_bands() {
                        let band = rows.len() * g.out_width;
                        let start = rows.start * g.out_width;
                        im2col(&g, x_n, rows, col);
                        matmul_into(
                            (g.out_channels, band, k),
                            &mut y_n[start..],
                            p_len,
                            false,
                            Mat::rows(w, k),
                            Mat::rows(col, band),
                            par,
                        );
                    }
                });
            }
        });
        Ok((y, g.output_shape()))
    }
}

impl CustomOp2 for Conv2dFwd {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_fwd2(self, s1, l1, s2, l2)
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        // No input gradient for an input outside the graph (the U-Net's image): candle would
        // drop it anyway.
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(&w.contiguous()?, &Conv2dGradInput(self.0))?)
        } else {
            None
        };
        let dw = x
            .contiguous()?
            .apply_op2_no_bwd(&dy, &Conv2dGradWeight(self.0))?;
        Ok((dx, Some(dw)))
    }
}

/// Input gradient: `(dy, weight) -> dx`.
#[derive(Clone, Copy, Debug)]
struct Conv2dGradInput(ConvGeom);

impl Kernel2 for Conv2dGradInput {
    const NAME: &'static str = "lus-conv2d-grad-input";
    fn input_shapes(&self) -> [Shape; 2] {
        [self.0.output_shape(), self.0.weight_shape()]
    }
    fn run<T: Float>(&self, dy: &[T], w: &[T]) -> Result<(Vec<T>, Shape)> {
        let g = self.0;
        let (k, p_len) = (g.k(), g.out_pixels());
        let mut dx = vec![T::from_f64(0.0); g.batch * g.in_plane()];
        let gemm_shape = (k, p_len, g.out_channels);
        Plan::for_batch(g.batch).for_each_sample(&mut dx, g.in_plane(), |n, dx_n, par| {
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
                        col2im(&g, dcol, rows, dx_n);
                    }
                });
            }
        });
        Ok((dx, g.input_shape()))
    }
}

impl CustomOp2 for Conv2dGradInput {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_fwd2(self, s1, l1, s2, l2)
    }
}

/// Weight gradient: `(x, dy) -> dW`.
#[derive(Clone, Copy, Debug)]
struct Conv2dGradWeight(ConvGeom);

impl Kernel2 for Conv2dGradWeight {
    const NAME: &'static str = "lus-conv2d-grad-weight";
    fn input_shapes(&self) -> [Shape; 2] {
        [self.0.input_shape(), self.0.output_shape()]
    }
    fn run<T: Float>(&self, x: &[T], dy: &[T]) -> Result<(Vec<T>, Shape)> {
        let g = self.0;
        let (k, p_len) = (g.k(), g.out_pixels());
        let block = g.out_channels * k;
        // One partial gradient per sample, summed in sample order below: the result is the same
        // whichever way the samples are spread over threads.
        let mut partial = vec![T::from_f64(0.0); g.batch * block];
        let gemm_shape = (g.out_channels, k, p_len);
        Plan::for_batch(g.batch).for_each_sample(&mut partial, block, |n, dw_n, par| {
            let x_n = &x[n * g.in_plane()..][..g.in_plane()];
            let dy_n = Mat::rows(&dy[n * g.out_plane()..][..g.out_plane()], p_len);
            if g.is_pointwise() {
                matmul(gemm_shape, dw_n, dy_n, Mat::transposed(x_n, p_len), par);
            } else {
                with_scratch(g.band_elements(), |col: &mut [T]| {
                    for (b, rows) in g.row_bands().enumerate() {
                        let band = rows.len() * g.out_width;
                        let start = rows.start * g.out_width;
                        im2col(&g, x_n, rows, col);
                        let dy_band = Mat {
                            data: &dy_n.data[start..],
                            ..dy_n
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
        });
        let dw = if g.batch == 1 {
            partial
        } else {
            sum_blocks(&partial, block)
        };
        Ok((dw, g.weight_shape()))
    }
}

impl CustomOp2 for Conv2dGradWeight {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_fwd2(self, s1, l1, s2, l2)
    }
}

/// 2-D convolution of `x` (`N x Ci x H x W`) with `weight` (`Co x Ci x kh x kw`), equal stride
/// and padding on both axes, no bias, as a custom op (CPU, f32 or f64). Its backward pass gives
/// the gradients of `x` and `weight` through further custom ops.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let geom = ConvGeom::new(x.dims(), weight.dims(), stride, padding)?;
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, Conv2dFwd(geom))
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
        let g = ConvGeom::new(&[1, 2, 5, 4], &[3, 2, 3, 2], 2, 1).unwrap();
        let x: Vec<f64> = (0..g.in_plane()).map(|i| (i as f64 * 0.37).sin()).collect();
        let c: Vec<f64> = (0..g.k() * g.out_pixels())
            .map(|i| (i as f64 * 0.91).cos())
            .collect();
        let mut col = vec![0.0; c.len()];
        im2col(&g, &x, 0..g.out_height, &mut col);
        let mut back = vec![0.0; x.len()];
        col2im(&g, &c, 0..g.out_height, &mut back);
        let lhs: f64 = col.iter().zip(&c).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert!(
            (lhs - rhs).abs() < 1e-12 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }

    #[test]
    fn pointwise_gemm_path_equals_plain_sums() {
        let g = ConvGeom::new(&[1, 3, 2, 2], &[2, 3, 1, 1], 1, 0).unwrap();
        let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let w = [1.0f32, 2.0, 3.0, -1.0, 0.5, 0.0];
        let (y, _) = Conv2dFwd(g).run(&x, &w).unwrap();
        let expected: Vec<f32> = (0..2)
            .flat_map(|co| {
                let x = &x;
                (0..4).map(move |p| (0..3).map(|ci| w[co * 3 + ci] * x[ci * 4 + p]).sum())
            })
            .collect();
        assert_eq!(y, expected);
    }
}
