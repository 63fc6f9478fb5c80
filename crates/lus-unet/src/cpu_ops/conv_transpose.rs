//! The decoder's 2x2 stride-2 transposed convolution (no padding, no overlap): every output
//! pixel receives exactly one kernel tap, so per sample it is one GEMM
//! `Y (4 Co x P) = W^T (4 Co x Ci) * x (Ci x P)` (with `W` seen as `Ci x 4 Co`) followed by a
//! scatter of the four taps into the doubled grid, which also adds the bias. Backward is one
//! op: it gathers `dy` back into `G (4 Co x P)` once and computes `dx = W * G`,
//! `dW = sum over samples of x * G^T` and `dbias` (row sums of `G`) from it.

use candle_core::{CustomOp2, CustomOp3, Result, Shape, Tensor};

use super::{Float, Kernel2, Kernel3, Mat, Plan, matmul, split_flat, sum_blocks, with_scratch};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UpGeom {
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    height: usize,
    width: usize,
}

impl UpGeom {
    fn new(x: &[usize], w: &[usize]) -> Result<Self> {
        let (&[batch, in_channels, height, width], &[w_in, out_channels, 2, 2]) = (x, w) else {
            candle_core::bail!(
                "conv_transpose2d_k2s2: input {x:?} must be 4-D and weight {w:?} Ci x Co x 2 x 2"
            )
        };
        if w_in != in_channels {
            candle_core::bail!(
                "conv_transpose2d_k2s2: input {x:?} has {in_channels} channels, weight {w:?} \
                 expects {w_in}"
            )
        }
        Ok(Self {
            batch,
            in_channels,
            out_channels,
            height,
            width,
        })
    }
    fn pixels(&self) -> usize {
        self.height * self.width
    }
    fn taps(&self) -> usize {
        4 * self.out_channels
    }
    fn in_plane(&self) -> usize {
        self.in_channels * self.pixels()
    }
    fn out_plane(&self) -> usize {
        self.taps() * self.pixels()
    }
    fn input_shape(&self) -> Shape {
        (self.batch, self.in_channels, self.height, self.width).into()
    }
    fn weight_shape(&self) -> Shape {
        (self.in_channels, self.out_channels, 2, 2).into()
    }
    fn weight_len(&self) -> usize {
        self.in_channels * self.taps()
    }
    fn output_shape(&self) -> Shape {
        (
            self.batch,
            self.out_channels,
            2 * self.height,
            2 * self.width,
        )
            .into()
    }

    /// Visits, for every output channel, input row and tap row `a`, the output channel, the
    /// output row (`2 W` long, offset in the output plane) and the two tap rows of `Y` it
    /// interleaves (offsets of taps `(a, 0)` and `(a, 1)`, `W` long).
    fn for_each_row(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let (p, w) = (self.pixels(), self.width);
        for co in 0..self.out_channels {
            for i in 0..self.height {
                for a in 0..2 {
                    let out = co * 4 * p + (2 * i + a) * 2 * w;
                    let tap0 = (co * 4 + a * 2) * p + i * w;
                    f(co, out, tap0, tap0 + p);
                }
            }
        }
    }

    /// `out[co, 2i + a, 2j + b] = taps[(4 co + 2 a + b), i W + j] + bias[co]` (no bias when
    /// `bias` is empty).
    fn scatter<T: Float>(&self, taps: &[T], bias: &[T], out: &mut [T]) {
        let w = self.width;
        self.for_each_row(|co, o, t0, t1| {
            let b = bias.get(co).copied().unwrap_or(T::from_f64(0.0));
            let row = &mut out[o..o + 2 * w];
            for ((pair, v0), v1) in row
                .chunks_exact_mut(2)
                .zip(&taps[t0..t0 + w])
                .zip(&taps[t1..t1 + w])
            {
                pair[0] = *v0 + b;
                pair[1] = *v1 + b;
            }
        });
    }

    /// The inverse of [`UpGeom::scatter`] without a bias.
    fn gather<T: Float>(&self, out: &[T], taps: &mut [T]) {
        let w = self.width;
        self.for_each_row(|_, o, t0, t1| {
            let row = &out[o..o + 2 * w];
            let (first, second) = taps.split_at_mut(t1);
            for ((pair, v0), v1) in row
                .chunks_exact(2)
                .zip(&mut first[t0..t0 + w])
                .zip(&mut second[..w])
            {
                *v0 = pair[0];
                *v1 = pair[1];
            }
        });
    }
}

/// Forward: `(x, weight) -> y` or `(x, weight, bias) -> y`.
#[derive(Clone, Copy, Debug)]
struct UpFwd {
    geom: UpGeom,
    bias: bool,
}

impl UpFwd {
    fn forward<T: Float>(&self, x: &[T], w: &[T], bias: &[T]) -> Vec<T> {
        let g = self.geom;
        let (p, taps) = (g.pixels(), g.taps());
        let mut y = vec![T::from_f64(0.0); g.batch * g.out_plane()];
        Plan::for_batch(g.batch).for_each_sample(&mut y, g.out_plane(), |n, y_n, par| {
            let x_n = Mat::rows(&x[n * g.in_plane()..][..g.in_plane()], p);
            with_scratch(taps * p, |scratch: &mut [T]| {
                matmul(
                    (taps, p, g.in_channels),
                    scratch,
                    Mat::transposed(w, taps),
                    x_n,
                    par,
                );
                g.scatter(scratch, bias, y_n);
            });
        });
        y
    }

    /// The gradients of `x`, `weight` and (with a bias) `bias` given `dy`.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let op = UpGrad(*self);
        let packed = dy
            .contiguous()?
            .apply_op3_no_bwd(&x.contiguous()?, &w.contiguous()?, &op)?;
        let g = self.geom;
        let mut shapes = vec![g.input_shape(), g.weight_shape()];
        if self.bias {
            shapes.push(g.out_channels.into());
        }
        let mut parts = split_flat(&packed, &shapes)?.into_iter();
        let (Some(dx), Some(dw)) = (parts.next(), parts.next()) else {
            candle_core::bail!("{}: missing gradients", UpGrad::NAME)
        };
        Ok((dx, dw, parts.next()))
    }
}

impl Kernel2 for UpFwd {
    const NAME: &'static str = "lus-conv-transpose2d-k2s2";
    fn input_shapes(&self) -> [Shape; 2] {
        [self.geom.input_shape(), self.geom.weight_shape()]
    }
    fn run<T: Float>(&self, x: &[T], w: &[T]) -> Result<(Vec<T>, Shape)> {
        Ok((self.forward(x, w, &[]), self.geom.output_shape()))
    }
}

impl Kernel3 for UpFwd {
    const NAME: &'static str = "lus-conv-transpose2d-k2s2";
    fn input_shapes(&self) -> [Shape; 3] {
        let g = &self.geom;
        [g.input_shape(), g.weight_shape(), g.out_channels.into()]
    }
    fn run<T: Float>(&self, x: &[T], w: &[T], bias: &[T]) -> Result<(Vec<T>, Shape)> {
        Ok((self.forward(x, w, bias), self.geom.output_shape()))
    }
}

impl CustomOp2 for UpFwd {
    kernel2_forward!();
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, dy)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for UpFwd {
    kernel3_forward!();
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, dy)?;
        Ok((Some(dx), Some(dw), db))
    }
}

/// All gradients in one pass: `(dy, x, weight) -> [dx | dW | dbias]` (flat; no `dbias`
/// without a bias).
#[derive(Clone, Copy, Debug)]
struct UpGrad(UpFwd);

impl Kernel3 for UpGrad {
    const NAME: &'static str = "lus-conv-transpose2d-k2s2-grad";
    fn input_shapes(&self) -> [Shape; 3] {
        let g = &self.0.geom;
        [g.output_shape(), g.input_shape(), g.weight_shape()]
    }
    fn run<T: Float>(&self, dy: &[T], x: &[T], w: &[T]) -> Result<(Vec<T>, Shape)> {
        let g = self.0.geom;
        let (p, taps) = (g.pixels(), g.taps());
        let dx_len = g.batch * g.in_plane();
        let block = g.weight_len() + if self.0.bias { g.out_channels } else { 0 };
        let mut out = vec![T::from_f64(0.0); dx_len + block];
        // Per-sample partial weight and bias gradients, summed in sample order: independent of
        // the thread count.
        let mut partial = vec![T::from_f64(0.0); g.batch * block];
        let (dx, sums) = out.split_at_mut(dx_len);
        Plan::for_batch(g.batch).for_each_sample2(
            g.batch,
            dx,
            &mut partial,
            |n, dx_n, block_n, par| {
                let x_n = Mat::rows(&x[n * g.in_plane()..][..g.in_plane()], p);
                let dy_n = &dy[n * g.out_plane()..][..g.out_plane()];
                with_scratch(taps * p, |gathered: &mut [T]| {
                    g.gather(dy_n, gathered);
                    matmul(
                        (g.in_channels, p, taps),
                        dx_n,
                        Mat::rows(w, taps),
                        Mat::rows(gathered, p),
                        par,
                    );
                    let (dw_n, db_n) = block_n.split_at_mut(g.weight_len());
                    matmul(
                        (g.in_channels, taps, p),
                        dw_n,
                        x_n,
                        Mat::transposed(gathered, p),
                        par,
                    );
                    for (d, tap_rows) in db_n.iter_mut().zip(gathered.chunks(4 * p.max(1))) {
                        *d = tap_rows.iter().fold(T::from_f64(0.0), |s, v| s + *v);
                    }
                });
            },
        );
        if g.batch == 1 {
            sums.copy_from_slice(&partial);
        } else {
            sums.copy_from_slice(&sum_blocks(&partial, block));
        }
        let len = out.len();
        Ok((out, len.into()))
    }
}

impl CustomOp3 for UpGrad {
    kernel3_forward!();
}

/// Transposed convolution with a 2x2 kernel and stride 2 (no padding, no output padding) of
/// `x` (`N x Ci x H x W`) with `weight` in PyTorch's layout (`Ci x Co x 2 x 2`) and an
/// optional `bias` (`Co`), added in the same pass: the output is `N x Co x 2H x 2W`. A custom
/// op (CPU, f32 or f64) whose backward computes the gradients of `x`, `weight` and `bias` in
/// one op.
pub fn conv_transpose2d_k2s2(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let geom = UpGeom::new(x.dims(), weight.dims())?;
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        None => x.apply_op2(&weight, UpFwd { geom, bias: false }),
        Some(bias) => {
            if bias.dims() != [geom.out_channels] {
                candle_core::bail!(
                    "conv_transpose2d_k2s2: bias of shape {:?} for {} output channels",
                    bias.dims(),
                    geom.out_channels
                )
            }
            x.apply_op3(&weight, &bias.contiguous()?, UpFwd { geom, bias: true })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_inverts_scatter() {
        let g = UpGeom::new(&[1, 1, 3, 2], &[1, 2, 2, 2]).unwrap();
        let taps: Vec<f32> = (0..g.out_plane()).map(|i| i as f32).collect();
        let mut out = vec![0.0; g.out_plane()];
        g.scatter(&taps, &[], &mut out);
        // Channel 0, output row 0 interleaves taps (0,0) and (0,1) of input row 0.
        assert_eq!(&out[..4], &[0.0, 6.0, 1.0, 7.0]);
        let mut back = vec![0.0; g.out_plane()];
        g.gather(&out, &mut back);
        assert_eq!(back, taps);
    }
}
