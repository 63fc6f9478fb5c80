//! The U-Net's `[conv3x3 -> batch norm -> ReLU] x 2` block in training mode as one custom op.
//!
//! Why one op: candle's backward pass adds every incoming gradient into a fresh zero tensor
//! (`zeros_like`, then `add`) at each node of the graph, and at full resolution each of those is
//! two passes over megabytes. As four ops the block has four such nodes (two convolution
//! outputs, two batch-norm outputs); as one op only its output is a node, and the three
//! intermediates stay inside the op (saved by the forward pass for the backward pass, as
//! candle's graph would have kept them). The arithmetic is that of [`super::conv2d`] (or
//! [`super::conv2d_concat`]) and [`super::batch_norm_train`] with its ReLU, kernel for kernel.
//!
//! The parameters travel as one flat tensor (`conv1 | gamma1 | beta1 | conv2 | gamma2 |
//! beta2`), built by a concatenation of the six small tensors whose backward hands each its
//! slice of the packed gradient.

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor,
};

use super::batch_norm::{BatchStats, BnGeom, BnState, bn_relu_backward, bn_train_forward};
use super::conv::{ConvGeom, conv_forward, conv_grad_input, conv_grad_weight};
use super::{Float, Kernel2, Kernel3, contiguous, split_flat};

/// What the forward pass keeps for the backward pass.
struct Saved {
    /// First convolution's output, its batch norm + ReLU, second convolution's output.
    h1: CpuStorage,
    a1: CpuStorage,
    h2: CpuStorage,
    bn: [Arc<BnState>; 2],
    stats: [BatchStats; 2],
}

struct DoubleConvOp {
    conv1: ConvGeom,
    conv2: ConvGeom,
    eps: f64,
    saved: Arc<Mutex<Option<Saved>>>,
}

impl DoubleConvOp {
    const NAME: &'static str = "lus-double-conv-bn-relu";

    fn mid_channels(&self) -> usize {
        self.conv1.out_channels
    }
    fn out_channels(&self) -> usize {
        self.conv2.out_channels
    }
    /// Lengths of the six parameters in the packed vector.
    fn param_lens(&self) -> [usize; 6] {
        let (mid, out) = (self.mid_channels(), self.out_channels());
        [
            self.conv1.weight_len(),
            mid,
            mid,
            self.conv2.weight_len(),
            out,
            out,
        ]
    }
    fn params_len(&self) -> usize {
        self.param_lens().iter().sum()
    }
    fn split_params<'a, T>(&self, params: &'a [T]) -> [&'a [T]; 6] {
        let mut rest = params;
        self.param_lens().map(|len| {
            let (head, tail) = rest.split_at(len);
            rest = tail;
            head
        })
    }
    fn bn_geom(conv: &ConvGeom) -> BnGeom {
        BnGeom {
            batch: conv.batch,
            channels: conv.out_channels,
            pixels: conv.out_pixels(),
        }
    }

    fn forward<T: Float>(&self, parts: [&[T]; 2], params: &[T]) -> Result<Vec<T>> {
        let [w1, g1, b1, w2, g2, b2] = self.split_params(params);
        let h1 = conv_forward(&self.conv1, parts, w1);
        let (a1, bn1, stats1) = bn_train_forward(Self::bn_geom(&self.conv1), &h1, g1, b1, self.eps);
        let h2 = conv_forward(&self.conv2, [&a1, &[]], w2);
        let (y, bn2, stats2) = bn_train_forward(Self::bn_geom(&self.conv2), &h2, g2, b2, self.eps);
        let saved = Saved {
            h1: T::to_cpu_storage_owned(h1),
            a1: T::to_cpu_storage_owned(a1),
            h2: T::to_cpu_storage_owned(h2),
            bn: [bn1, bn2],
            stats: [stats1, stats2],
        };
        *self.saved.lock().unwrap_or_else(PoisonError::into_inner) = Some(saved);
        Ok(y)
    }

    /// The gradients of the inputs (`None` unless `need_dx`; both parts one after the other
    /// for a concatenation) and of the packed parameters.
    fn backward<T: Float>(
        &self,
        saved: &Saved,
        parts: [&[T]; 2],
        params: &[T],
        y: &[T],
        dy: &[T],
        need_dx: bool,
    ) -> Result<(Option<Vec<T>>, Vec<T>)> {
        let [w1, g1, _, w2, g2, _] = self.split_params(params);
        let h1 = T::cpu_storage_as_slice(&saved.h1)?;
        let a1 = T::cpu_storage_as_slice(&saved.a1)?;
        let h2 = T::cpu_storage_as_slice(&saved.h2)?;
        let (dh2, dgamma2, dbeta2) = bn_relu_backward(&saved.bn[1], dy, h2, y, g2);
        let da1 = conv_grad_input(&self.conv2, &dh2, w2);
        let dw2 = conv_grad_weight(&self.conv2, [a1, &[]], &dh2);
        drop(dh2);
        let (dh1, dgamma1, dbeta1) = bn_relu_backward(&saved.bn[0], &da1, h1, a1, g1);
        drop(da1);
        let dx = need_dx.then(|| conv_grad_input(&self.conv1, &dh1, w1));
        let dw1 = conv_grad_weight(&self.conv1, parts, &dh1);
        let mut dparams = Vec::with_capacity(self.params_len());
        for part in [dw1, dgamma1, dbeta1, dw2, dgamma2, dbeta2] {
            dparams.extend_from_slice(&part);
        }
        Ok((dx, dparams))
    }

    fn input_shapes(&self) -> Vec<Shape> {
        self.conv1.input_shapes()
    }

    /// The backward pass, reading the tensors' storage directly: it has more inputs and
    /// outputs than a candle custom op allows.
    fn bwd_tensors(
        &self,
        xs: &[&Tensor],
        params: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Vec<Option<Tensor>>, Tensor)> {
        let guard = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(saved) = guard.as_ref() else {
            candle_core::bail!("{}: backward without a forward pass", Self::NAME)
        };
        let need_dx = xs.iter().any(|x| x.track_op());
        let mut tensors: Vec<Tensor> = xs.iter().map(|x| x.contiguous()).collect::<Result<_>>()?;
        for t in [params, y, dy] {
            tensors.push(t.contiguous()?);
        }
        let locked: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
        fn go<T: Float>(
            op: &DoubleConvOp,
            saved: &Saved,
            inputs: &[(&Storage, &Layout)],
            need_dx: bool,
        ) -> Result<(Option<Vec<T>>, Vec<T>)> {
            let slices = inputs
                .iter()
                .map(|(storage, layout)| match storage {
                    Storage::Cpu(cpu) => contiguous::<T>(DoubleConvOp::NAME, cpu, layout),
                    _ => candle_core::bail!("{}: CPU tensors only", DoubleConvOp::NAME),
                })
                .collect::<Result<Vec<&[T]>>>()?;
            let (parts, rest) = slices.split_at(slices.len() - 3);
            let parts = [parts[0], parts.get(1).copied().unwrap_or(&[])];
            op.backward(saved, parts, rest[0], rest[1], rest[2], need_dx)
        }
        let inputs: Vec<(&Storage, &Layout)> = locked.iter().map(|(s, l)| (&**s, *l)).collect();
        let (dx, dparams) = match dy.dtype() {
            DType::F32 => {
                let (dx, dp) = go::<f32>(self, saved, &inputs, need_dx)?;
                (
                    dx.map(|d| Tensor::from_vec(d, tensors_len(xs), &Device::Cpu))
                        .transpose()?,
                    Tensor::from_vec(dp, self.params_len(), &Device::Cpu)?,
                )
            }
            DType::F64 => {
                let (dx, dp) = go::<f64>(self, saved, &inputs, need_dx)?;
                (
                    dx.map(|d| Tensor::from_vec(d, tensors_len(xs), &Device::Cpu))
                        .transpose()?,
                    Tensor::from_vec(dp, self.params_len(), &Device::Cpu)?,
                )
            }
            other => candle_core::bail!("{}: f32 or f64 only, got {other:?}", Self::NAME),
        };
        let dxs = match dx {
            Some(packed) => split_flat(&packed, &self.input_shapes())?
                .into_iter()
                .zip(xs)
                .map(|(d, x)| x.track_op().then_some(d))
                .collect(),
            None => vec![None; xs.len()],
        };
        Ok((dxs, dparams))
    }
}

fn tensors_len(xs: &[&Tensor]) -> usize {
    xs.iter().map(|x| x.elem_count()).sum()
}

impl Kernel2 for DoubleConvOp {
    const NAME: &'static str = DoubleConvOp::NAME;
    fn input_shapes(&self) -> [Shape; 2] {
        [
            self.conv1.input_shapes().remove(0),
            self.params_len().into(),
        ]
    }
    fn run<T: Float>(&self, x: &[T], params: &[T]) -> Result<(Vec<T>, Shape)> {
        Ok((self.forward([x, &[]], params)?, self.conv2.output_shape()))
    }
}

impl Kernel3 for DoubleConvOp {
    const NAME: &'static str = DoubleConvOp::NAME;
    fn input_shapes(&self) -> [Shape; 3] {
        let mut parts = self.conv1.input_shapes();
        let second = parts.pop().expect("a concatenation has two parts");
        [
            parts.pop().expect("two parts"),
            second,
            self.params_len().into(),
        ]
    }
    fn run<T: Float>(&self, x: &[T], second: &[T], params: &[T]) -> Result<(Vec<T>, Shape)> {
        Ok((
            self.forward([x, second], params)?,
            self.conv2.output_shape(),
        ))
    }
}

impl CustomOp2 for DoubleConvOp {
    kernel2_forward!();
    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (mut dx, dparams) = self.bwd_tensors(&[x], params, y, dy)?;
        Ok((dx.remove(0), Some(dparams)))
    }
}

impl CustomOp3 for DoubleConvOp {
    kernel3_forward!();
    fn bwd(
        &self,
        x: &Tensor,
        second: &Tensor,
        params: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (mut dx, dparams) = self.bwd_tensors(&[x, second], params, y, dy)?;
        let second = dx.pop().flatten();
        Ok((dx.pop().flatten(), second, Some(dparams)))
    }
}

/// The parameters of one `[conv3x3 (no bias) -> batch norm -> ReLU] x 2` block.
#[derive(Clone, Copy, Debug)]
pub struct DoubleConvWeights<'a> {
    /// `Cmid x Cin x 3 x 3`.
    pub conv1: &'a Tensor,
    /// Scale and shift of the first batch norm, `Cmid` each.
    pub gamma1: &'a Tensor,
    pub beta1: &'a Tensor,
    /// `Cout x Cmid x 3 x 3`.
    pub conv2: &'a Tensor,
    pub gamma2: &'a Tensor,
    pub beta2: &'a Tensor,
}

/// `relu(bn2(conv2(relu(bn1(conv1(x))))))` in training mode (batch statistics) as one custom
/// op (CPU, f32 or f64), for `x` (`N x Cin x H x W`) or, with `second`, for the concatenation
/// `cat([x, second], 1)` (not built; see [`super::conv2d_concat`]). The convolutions have
/// padding `kernel / 2`, stride 1 and no bias; both batch norms use `eps`. Returns the output
/// and the two batch norms' statistics (for the running statistics, which the op does not
/// update). The backward pass gives the gradients of the input(s) and of all six parameters.
pub fn double_conv_bn_relu_train(
    x: &Tensor,
    second: Option<&Tensor>,
    weights: &DoubleConvWeights<'_>,
    eps: f64,
) -> Result<(Tensor, [BatchStats; 2])> {
    let w = weights;
    let padding = |t: &Tensor| -> Result<usize> {
        let (_, _, kh, kw) = t.dims4()?;
        if kh != kw || kh % 2 == 0 {
            candle_core::bail!(
                "{}: kernels must be square and odd, got {:?}",
                DoubleConvOp::NAME,
                t.dims()
            )
        }
        Ok(kh / 2)
    };
    let conv1 = ConvGeom::new(
        x.dims(),
        second.map(Tensor::dims),
        w.conv1.dims(),
        1,
        padding(w.conv1)?,
    )?;
    let conv2 = ConvGeom::new(
        conv1.output_shape().dims(),
        None,
        w.conv2.dims(),
        1,
        padding(w.conv2)?,
    )?;
    let channels = [conv1.out_channels, conv2.out_channels];
    for (norm, (gamma, beta)) in [(w.gamma1, w.beta1), (w.gamma2, w.beta2)]
        .into_iter()
        .enumerate()
    {
        if gamma.dims() != [channels[norm]] || beta.dims() != [channels[norm]] {
            candle_core::bail!(
                "{}: batch norm {} needs scale and shift of shape [{}], got {:?} and {:?}",
                DoubleConvOp::NAME,
                norm + 1,
                channels[norm],
                gamma.dims(),
                beta.dims()
            )
        }
    }
    if conv1.batch * conv1.out_pixels() < 2 {
        candle_core::bail!(
            "{}: input {:?} has {} value(s) per channel, training needs more than 1",
            DoubleConvOp::NAME,
            x.dims(),
            conv1.batch * conv1.out_pixels()
        )
    }
    let params = Tensor::cat(
        &[
            &w.conv1.flatten_all()?,
            w.gamma1,
            w.beta1,
            &w.conv2.flatten_all()?,
            w.gamma2,
            w.beta2,
        ],
        0,
    )?;
    let op = DoubleConvOp {
        conv1,
        conv2,
        eps,
        saved: Arc::new(Mutex::new(None)),
    };
    let saved = op.saved.clone();
    let x = x.contiguous()?;
    let y = match second {
        None => x.apply_op2(&params, op)?,
        Some(second) => x.apply_op3(&second.contiguous()?, &params, op)?,
    };
    let guard = saved.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(saved) = guard.as_ref() else {
        candle_core::bail!("{}: the forward pass saved nothing", DoubleConvOp::NAME)
    };
    Ok((y, saved.stats.clone()))
}
