//! 2x2 stride-2 max-pooling as one pass forward and one pass backward (the gradient goes to
//! the first maximum of each window, in row-major order, as in PyTorch).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::check_dims;
use super::{Float, Kernel2};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PoolGeom {
    planes: usize,
    height: usize,
    width: usize,
    shape: [usize; 4],
}

impl PoolGeom {
    fn input_shape(&self) -> Shape {
        Shape::from(self.shape.to_vec())
    }
    fn output_shape(&self) -> Shape {
        let [n, c, h, w] = self.shape;
        (n, c, h / 2, w / 2).into()
    }
    /// Offsets (within an input plane) of the window of output `(i, j)`, in row-major order.
    fn window(&self, i: usize, j: usize) -> [usize; 4] {
        let top = 2 * i * self.width + 2 * j;
        [top, top + 1, top + self.width, top + self.width + 1]
    }
    /// Index (0..4) of the first maximum of the window.
    fn argmax<T: Float>(&self, plane: &[T], window: [usize; 4]) -> usize {
        let mut best = 0;
        for k in 1..4 {
            if plane[window[k]] > plane[window[best]] {
                best = k;
            }
        }
        best
    }
    fn min_planes_per_task(&self) -> usize {
        (16_384 / (self.height * self.width).max(1)).max(1)
    }
}

#[derive(Clone, Copy, Debug)]
struct PoolFwd(PoolGeom);

impl PoolFwd {
    fn run<T: Float>(&self, x: &[T]) -> Vec<T> {
        let g = self.0;
        let (ho, wo) = (g.height / 2, g.width / 2);
        let mut y = vec![T::from_f64(0.0); g.planes * ho * wo];
        y.par_chunks_mut((ho * wo).max(1))
            .with_min_len(g.min_planes_per_task())
            .enumerate()
            .for_each(|(p, out)| {
                let plane = &x[p * g.height * g.width..][..g.height * g.width];
                for i in 0..ho {
                    for j in 0..wo {
                        let window = g.window(i, j);
                        out[i * wo + j] = plane[window[g.argmax(plane, window)]];
                    }
                }
            });
        y
    }
}

impl CustomOp1 for PoolFwd {
    fn name(&self) -> &'static str {
        "lus-max-pool2x2"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        check_dims(self.name(), l, &self.0.input_shape())?;
        let out = match s {
            CpuStorage::F32(_) => {
                CpuStorage::F32(self.run(super::contiguous::<f32>(self.name(), s, l)?))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(self.run(super::contiguous::<f64>(self.name(), s, l)?))
            }
            _ => candle_core::bail!("{}: f32 or f64 only", self.name()),
        };
        Ok((out, self.0.output_shape()))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = x
            .contiguous()?
            .apply_op2_no_bwd(&dy.contiguous()?, &PoolGradInput(self.0))?;
        Ok(Some(dx))
    }
}

/// `(x, dy) -> dx`: each output gradient to the first maximum of its window.
#[derive(Clone, Copy, Debug)]
struct PoolGradInput(PoolGeom);

impl Kernel2 for PoolGradInput {
    const NAME: &'static str = "lus-max-pool2x2-grad-input";
    fn input_shapes(&self) -> [Shape; 2] {
        [self.0.input_shape(), self.0.output_shape()]
    }
    fn run<T: Float>(&self, x: &[T], dy: &[T]) -> Result<(Vec<T>, Shape)> {
        let g = self.0;
        let (ho, wo, plane_len) = (g.height / 2, g.width / 2, g.height * g.width);
        let mut dx = vec![T::from_f64(0.0); g.planes * plane_len];
        dx.par_chunks_mut(plane_len.max(1))
            .with_min_len(g.min_planes_per_task())
            .enumerate()
            .for_each(|(p, out)| {
                let plane = &x[p * plane_len..][..plane_len];
                let grad = &dy[p * ho * wo..][..ho * wo];
                for i in 0..ho {
                    for j in 0..wo {
                        let window = g.window(i, j);
                        out[window[g.argmax(plane, window)]] = grad[i * wo + j];
                    }
                }
            });
        Ok((dx, g.input_shape()))
    }
}

impl CustomOp2 for PoolGradInput {
    kernel2_forward!();
}

/// 2x2 max-pooling with stride 2 of an `N x C x H x W` tensor (H and W even) as a custom op
/// (CPU, f32 or f64); its backward routes each gradient to the first maximum of its window.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
        candle_core::bail!("2x2 max-pool needs even height and width, got {h} x {w}")
    }
    let geom = PoolGeom {
        planes: n * c,
        height: h,
        width: w,
        shape: [n, c, h, w],
    };
    x.contiguous()?.apply_op1(PoolFwd(geom))
}
