//! Losses as candle autograd expressions: per-pixel (or per-example) cross-entropy with class
//! weights and an ignore id, soft Dice, and their weighted sum ([`LossConfig`], [`SegLoss`]).
//!
//! Layout: logits are `N x C x d1 x ... x dk` (k = 2 for segmentation, k = 0 for
//! classification), targets are class ids `N x d1 x ... x dk` of an integer dtype. Targets are
//! turned into a one-hot tensor by comparison with `0..C` (no gather): a target equal to the
//! ignore id, or any id outside `0..C`, has an all-zero one-hot row and so takes no part in any
//! sum. Ids outside `0..C` are not silently dropped in a training run: the validation of every
//! epoch rejects them with an error (see [`crate::SegmentationTask`]), and the loader's file
//! source checks masks against the label schema as it reads them.

use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// The loss of a segmentation (or classification) run: `ce_weight * CE + dice_weight * Dice`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Weight of the cross-entropy term (0 leaves it out).
    pub ce_weight: f64,
    /// Weight of the soft-Dice term (0 leaves it out).
    pub dice_weight: f64,
    /// Per-class weights of the cross-entropy, one per class, normalised as PyTorch's `weight`
    /// with mean reduction: `sum(w_y * nll) / sum(w_y)`. They do not enter the Dice term.
    pub class_weights: Option<Vec<f32>>,
    /// Label id whose pixels take no part in the loss (nor in the validation metrics).
    pub ignore_id: Option<u8>,
    /// Smoothing added to numerator and denominator of each class's Dice ratio; keeps the ratio
    /// defined for classes with little area and softens its gradient there.
    pub dice_smooth: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            ce_weight: 1.0,
            dice_weight: 0.0,
            class_weights: None,
            ignore_id: None,
            dice_smooth: 1.0,
        }
    }
}

impl LossConfig {
    /// Checks the weights; with `num_classes`, also the length of `class_weights`.
    pub fn validate(&self, num_classes: Option<usize>) -> Result<()> {
        for (name, value) in [
            ("loss.ce_weight", self.ce_weight),
            ("loss.dice_weight", self.dice_weight),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(TrainError::config(
                    name,
                    format!("must be finite and >= 0, is {value}"),
                ));
            }
        }
        if self.ce_weight == 0.0 && self.dice_weight == 0.0 {
            return Err(TrainError::config(
                "loss",
                "ce_weight and dice_weight are both 0: nothing to train",
            ));
        }
        if !(self.dice_smooth.is_finite() && self.dice_smooth >= 0.0) {
            return Err(TrainError::config(
                "loss.dice_smooth",
                format!("must be finite and >= 0, is {}", self.dice_smooth),
            ));
        }
        if let Some(weights) = &self.class_weights {
            if let Some(bad) = weights.iter().position(|w| !(w.is_finite() && *w >= 0.0)) {
                return Err(TrainError::config(
                    "loss.class_weights",
                    format!(
                        "weight {bad} is {}; weights must be finite and >= 0",
                        weights[bad]
                    ),
                ));
            }
            if weights.iter().all(|w| *w == 0.0) {
                return Err(TrainError::config(
                    "loss.class_weights",
                    "all weights are 0",
                ));
            }
            if let Some(c) = num_classes
                && weights.len() != c
            {
                return Err(TrainError::config(
                    "loss.class_weights",
                    format!("{} weights for {c} classes", weights.len()),
                ));
            }
        }
        Ok(())
    }
}

/// A [`LossConfig`] made ready for one device: the class weights live there as a tensor.
#[derive(Debug, Clone)]
pub struct SegLoss {
    config: LossConfig,
    num_classes: usize,
    class_weights: Option<Tensor>,
}

impl SegLoss {
    /// Validates `config` for `num_classes` classes and puts its class weights on `device`.
    pub fn new(
        config: &LossConfig,
        num_classes: usize,
        device: &candle_core::Device,
    ) -> Result<Self> {
        config.validate(Some(num_classes))?;
        let class_weights = match &config.class_weights {
            Some(w) => Some(Tensor::from_slice(w, w.len(), device)?),
            None => None,
        };
        Ok(SegLoss {
            config: config.clone(),
            num_classes,
            class_weights,
        })
    }

    pub fn config(&self) -> &LossConfig {
        &self.config
    }

    /// The scalar loss of a batch (same dtype as `logits`, on its device).
    pub fn compute(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let classes = logits.dim(1)?;
        if classes != self.num_classes {
            return Err(TrainError::Batch(format!(
                "logits have {classes} classes, the loss was built for {}",
                self.num_classes
            )));
        }
        let ignore = self.config.ignore_id.map(u32::from);
        let one_hot = one_hot_targets(logits, targets, ignore)?;
        let mut total: Option<Tensor> = None;
        if self.config.ce_weight > 0.0 {
            let ce = cross_entropy_one_hot(logits, &one_hot, self.class_weights.as_ref())?;
            total = Some(scale(ce, self.config.ce_weight)?);
        }
        if self.config.dice_weight > 0.0 {
            let dice = soft_dice_one_hot(logits, &one_hot, self.config.dice_smooth)?;
            let dice = scale(dice, self.config.dice_weight)?;
            total = Some(match total {
                Some(t) => (t + dice)?,
                None => dice,
            });
        }
        // `validate` refuses both weights at 0.
        total.ok_or_else(|| TrainError::config("loss", "no loss term has a positive weight"))
    }
}

fn scale(t: Tensor, factor: f64) -> candle_core::Result<Tensor> {
    if factor == 1.0 {
        Ok(t)
    } else {
        t.affine(factor, 0.0)
    }
}

/// Mean cross-entropy of `logits` (`N x C x ...`) against class ids `targets` (`N x ...`).
///
/// With `class_weights` (a `C` vector, same dtype as the logits) each element counts with the
/// weight of its target class and the sum is divided by the sum of those weights, as PyTorch's
/// `F.cross_entropy(weight=..., ignore_index=..., reduction="mean")`. Elements whose target is
/// `ignore_id` count in neither sum. A batch with nothing left (all ignored, or all weights of the
/// present classes 0) has loss 0 rather than PyTorch's NaN, so one blank crop does not stop a run.
pub fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    class_weights: Option<&Tensor>,
    ignore_id: Option<u32>,
) -> Result<Tensor> {
    let one_hot = one_hot_targets(logits, targets, ignore_id)?;
    cross_entropy_one_hot(logits, &one_hot, class_weights)
}

/// Soft Dice loss of `logits` (`N x C x ...`, softmax over classes) against class ids
/// `targets` (`N x ...`): for each class c, with p the predicted probability and y the one-hot
/// target, summed over the whole batch and every position whose target is neither ignored nor
/// out of range,
/// `dice_c = (2 sum(p_c y_c) + smooth) / (sum(p_c) + sum(y_c) + smooth)`,
/// and the loss is the mean of `1 - dice_c` over the classes present in the batch's targets
/// (0 when no class is present, i.e. everything is ignored). Averaging over present classes
/// only keeps an absent class from contributing a constant, gradient-free 0 or 1.
pub fn soft_dice(
    logits: &Tensor,
    targets: &Tensor,
    ignore_id: Option<u32>,
    smooth: f64,
) -> Result<Tensor> {
    let one_hot = one_hot_targets(logits, targets, ignore_id)?;
    soft_dice_one_hot(logits, &one_hot, smooth)
}

/// `N x C x ...` one-hot of `targets` in the dtype of `logits`, with all-zero rows for ignored
/// and out-of-range ids. Checks shapes and dtypes.
fn one_hot_targets(logits: &Tensor, targets: &Tensor, ignore_id: Option<u32>) -> Result<Tensor> {
    let dims = logits.dims();
    if dims.len() < 2 {
        return Err(TrainError::Batch(format!(
            "logits of shape {dims:?}: expected N x C x ..."
        )));
    }
    let expected: Vec<usize> = [&dims[..1], &dims[2..]].concat();
    if targets.dims() != expected.as_slice() {
        return Err(TrainError::Batch(format!(
            "targets of shape {:?} do not fit logits of shape {dims:?} (expected {expected:?})",
            targets.dims()
        )));
    }
    if !matches!(
        logits.dtype(),
        DType::F32 | DType::F64 | DType::F16 | DType::BF16
    ) {
        return Err(TrainError::Batch(format!(
            "logits have dtype {:?}; expected a float dtype",
            logits.dtype()
        )));
    }
    let targets = match targets.dtype() {
        DType::U32 => targets.clone(),
        DType::U8 | DType::I64 | DType::I32 | DType::I16 => targets.to_dtype(DType::U32)?,
        other => {
            return Err(TrainError::Batch(format!(
                "targets have dtype {other:?}; expected integer class ids"
            )));
        }
    };
    let classes = dims[1];
    let mut class_shape = vec![1usize; dims.len()];
    class_shape[1] = classes;
    let class_ids = Tensor::arange(0u32, classes as u32, logits.device())?.reshape(class_shape)?;
    let mut one_hot = targets
        .unsqueeze(1)?
        .broadcast_eq(&class_ids)?
        .to_dtype(logits.dtype())?;
    if let Some(ignore) = ignore_id
        && (ignore as usize) < classes
    {
        // An ignore id outside 0..C already has an all-zero row.
        let keep = targets.ne(f64::from(ignore))?.to_dtype(logits.dtype())?;
        one_hot = one_hot.broadcast_mul(&keep.unsqueeze(1)?)?;
    }
    Ok(one_hot)
}

/// Log-softmax over dimension 1. The max is detached: subtracting it only guards `exp` against
/// overflow, and its exact gradient is zero, so nothing is lost by not differentiating through it.
fn log_softmax_classes(logits: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

fn softmax_classes(logits: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(1)?.detach();
    let exp = logits.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(1)?;
    exp.broadcast_div(&sum)
}

/// `num / den` where `den > 0`, else 0 (`num` is 0 whenever `den` is: both sum over the same
/// non-negative one-hot entries).
fn safe_ratio(num: &Tensor, den: &Tensor) -> candle_core::Result<Tensor> {
    let is_zero = den.eq(0.0)?.to_dtype(den.dtype())?;
    num.div(&(den + is_zero)?)
}

fn cross_entropy_one_hot(
    logits: &Tensor,
    one_hot: &Tensor,
    class_weights: Option<&Tensor>,
) -> Result<Tensor> {
    let weighted = match class_weights {
        Some(w) => {
            let classes = logits.dim(1)?;
            if w.dims() != [classes] {
                return Err(TrainError::Batch(format!(
                    "class weights of shape {:?} for {classes} classes",
                    w.dims()
                )));
            }
            let mut shape = vec![1usize; logits.rank()];
            shape[1] = classes;
            one_hot.broadcast_mul(&w.to_dtype(logits.dtype())?.reshape(shape)?)?
        }
        None => one_hot.clone(),
    };
    match weighted_nll_fused_cpu(logits, &weighted)? {
        Some(loss) => Ok(loss),
        None => weighted_nll(logits, &weighted),
    }
}

/// `-sum(weighted * log_softmax(logits)) / sum(weighted)` (0 when the weights sum to 0) with
/// candle's ops, for any device and type.
fn weighted_nll(logits: &Tensor, weighted: &Tensor) -> Result<Tensor> {
    let log_probs = log_softmax_classes(logits)?;
    let nll_sum = (weighted * &log_probs)?.sum_all()?.neg()?;
    let weight_sum = weighted.sum_all()?;
    Ok(safe_ratio(&nll_sum, &weight_sum)?)
}

/// [`cross_entropy_one_hot`]'s `-sum(weighted * log_softmax(logits)) / sum(weighted)` (0 when
/// the weights sum to 0) as one custom op for contiguous f32 logits on the CPU: one pass
/// forward, one pass backward (`dlogits = g * (softmax * sum_c weighted - weighted) / W`),
/// where the candle ops take about ten passes each way over the `N x C x H x W` logits (8 ms
/// of a 300 ms training step at batch 8 x 128 px, as much again in its backward). `None` for
/// other devices, types or layouts.
fn weighted_nll_fused_cpu(logits: &Tensor, weighted: &Tensor) -> Result<Option<Tensor>> {
    if !logits.device().is_cpu()
        || logits.dtype() != DType::F32
        || logits.rank() < 2
        || !logits.is_contiguous()
    {
        return Ok(None);
    }
    let weighted = weighted.detach().contiguous()?;
    Ok(Some(logits.apply_op2_arc(
        &weighted,
        std::sync::Arc::new(Box::new(WeightedNll)),
    )?))
}

/// The loss of [`weighted_nll_fused_cpu`]: `(logits, weighted) -> scalar`.
struct WeightedNll;

/// Pixels per parallel chunk; the f64 sums of the chunks are added in chunk order, so the
/// result does not depend on the threads.
const NLL_CHUNK: usize = 4096;

/// The `N x C x S` view of an `N x C x ...` shape.
fn ncs(shape: &candle_core::Shape) -> (usize, usize, usize) {
    let dims = shape.dims();
    (dims[0], dims[1], dims[2..].iter().product())
}

/// The contiguous f32 data of a CPU storage, or an error naming `op`.
pub(crate) fn contiguous_f32<'a>(
    op: &str,
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: non-contiguous input")
    };
    match storage {
        candle_core::CpuStorage::F32(data) => Ok(&data[start..end]),
        other => {
            use candle_core::backend::BackendStorage;
            candle_core::bail!("{op}: expected f32, got {:?}", other.dtype())
        }
    }
}

/// The largest of a pixel's `c_len` logits `logit(c)` and the sum of `exp(logit - max)`: the
/// shifted softmax denominator, shared by the forward and backward passes.
fn max_and_exp_sum(c_len: usize, logit: impl Fn(usize) -> f32) -> (f32, f32) {
    let max = (0..c_len).map(&logit).fold(f32::NEG_INFINITY, f32::max);
    let sum = (0..c_len).map(|c| (logit(c) - max).exp()).sum::<f32>();
    (max, sum)
}

impl WeightedNll {
    /// `(sum of -weighted * log_softmax, sum of weighted)` in f64, chunk by chunk.
    fn sums(logits: &[f32], weighted: &[f32], dims: (usize, usize, usize)) -> (f64, f64) {
        use rayon::prelude::*;
        let (n_len, c_len, s_len) = dims;
        let chunks = (n_len * s_len).div_ceil(NLL_CHUNK);
        let partial: Vec<(f64, f64)> = (0..chunks)
            .into_par_iter()
            .map(|chunk| {
                let (mut nll, mut total) = (0.0f64, 0.0f64);
                let start = chunk * NLL_CHUNK;
                for pixel in start..(start + NLL_CHUNK).min(n_len * s_len) {
                    let (n, s) = (pixel / s_len, pixel % s_len);
                    let at = |c: usize| (n * c_len + c) * s_len + s;
                    let (max, sum) = max_and_exp_sum(c_len, |c| logits[at(c)]);
                    let log_sum = sum.ln();
                    for c in 0..c_len {
                        let w = weighted[at(c)];
                        if w != 0.0 {
                            let log_prob = (logits[at(c)] - max) - log_sum;
                            nll -= f64::from(w) * f64::from(log_prob);
                            total += f64::from(w);
                        }
                    }
                }
                (nll, total)
            })
            .collect();
        partial
            .iter()
            .fold((0.0, 0.0), |(a, b), (nll, total)| (a + nll, b + total))
    }
}

impl candle_core::CustomOp2 for WeightedNll {
    fn name(&self) -> &'static str {
        "lus-weighted-nll"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "lus-weighted-nll: logits {:?} and weights {:?} differ",
                l1.shape(),
                l2.shape()
            )
        }
        let logits = contiguous_f32(self.name(), s1, l1)?;
        let weighted = contiguous_f32(self.name(), s2, l2)?;
        let (nll, total) = Self::sums(logits, weighted, ncs(l1.shape()));
        let loss = if total > 0.0 { nll / total } else { 0.0 };
        Ok((candle_core::CpuStorage::F32(vec![loss as f32]), ().into()))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        weighted: &Tensor,
        _loss: &Tensor,
        grad_loss: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let g = grad_loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let (_, c_len, s_len) = ncs(logits.shape());
        let (ls, ll) = logits.storage_and_layout();
        let (ws, wl) = weighted.storage_and_layout();
        let (candle_core::Storage::Cpu(ls), candle_core::Storage::Cpu(ws)) = (&*ls, &*ws) else {
            candle_core::bail!("lus-weighted-nll: CPU tensors only")
        };
        let x = contiguous_f32(self.name(), ls, ll)?;
        let yw = contiguous_f32(self.name(), ws, wl)?;
        let total: f64 = yw.iter().map(|&w| f64::from(w)).sum();
        let mut grad = vec![0.0f32; x.len()];
        if total > 0.0 {
            let scale = (f64::from(g) / total) as f32;
            // One sample per task (element-wise: the threads cannot change a value).
            grad.par_chunks_mut((c_len * s_len).max(1))
                .enumerate()
                .for_each(|(n, grad_n)| {
                    let (x_n, yw_n) = (
                        &x[n * c_len * s_len..][..c_len * s_len],
                        &yw[n * c_len * s_len..][..c_len * s_len],
                    );
                    for s in 0..s_len {
                        let at = |c: usize| c * s_len + s;
                        let (max, sum) = max_and_exp_sum(c_len, |c| x_n[at(c)]);
                        let weight: f32 = (0..c_len).map(|c| yw_n[at(c)]).sum();
                        for c in 0..c_len {
                            let p = (x_n[at(c)] - max).exp() / sum;
                            grad_n[at(c)] = scale * (p * weight - yw_n[at(c)]);
                        }
                    }
                });
        }
        let grad = Tensor::from_vec(grad, logits.shape(), logits.device())?;
        Ok((Some(grad), None))
    }
}

/// Sums every dimension but the class dimension 1: `N x C x ...` -> `C`.
fn sum_per_class(t: &Tensor) -> candle_core::Result<Tensor> {
    let summed = t.sum(0)?;
    if summed.rank() == 1 {
        Ok(summed)
    } else {
        summed.flatten_from(1)?.sum(D::Minus1)
    }
}

fn soft_dice_one_hot(logits: &Tensor, one_hot: &Tensor, smooth: f64) -> Result<Tensor> {
    let probs = softmax_classes(logits)?;
    // 1 where the position has a target that counts, 0 where it is ignored.
    let counted = one_hot.sum_keepdim(1)?;
    let intersection = sum_per_class(&(&probs * one_hot)?)?;
    let predicted = sum_per_class(&probs.broadcast_mul(&counted)?)?;
    let present_area = sum_per_class(one_hot)?;
    let dice = ((intersection * 2.0)? + smooth)?.div(&((predicted + &present_area)? + smooth)?)?;
    let present = present_area.gt(0.0)?.to_dtype(logits.dtype())?;
    let loss_sum = ((1.0 - dice)? * &present)?.sum_all()?;
    Ok(safe_ratio(&loss_sum, &present.sum_all()?)?)
}

#[cfg(test)]
mod tests {

    /// The fused CPU loss against the candle-op one on a random batch with class weights and
    /// ignored pixels: loss and logit gradients agree to f32 rounding; with every pixel ignored
    /// both give 0 and a zero gradient.
    #[test]
    fn fused_weighted_nll_matches_the_candle_ops() {
        use candle_core::{Device, Var};
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (n, c, h, w) = (3, 5, 7, 9);
        let logits: Vec<f32> = (0..n * c * h * w)
            .map(|_| rng.random_range(-4.0f32..4.0))
            .collect();
        let logits = Var::from_vec(logits, (n, c, h, w), &Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..n * h * w)
            .map(|_| rng.random_range(0..c as u32 + 1))
            .collect();
        let targets = Tensor::from_vec(ids, (n, h, w), &Device::Cpu).unwrap();
        let weights = Tensor::new(&[0.5f32, 2.0, 1.0, 0.0, 3.0], &Device::Cpu).unwrap();
        for (ignore, all_ignored) in [(Some(c as u32), false), (None, false), (Some(0), true)] {
            let targets = if all_ignored {
                targets.zeros_like().unwrap()
            } else {
                targets.clone()
            };
            let one_hot = one_hot_targets(logits.as_tensor(), &targets, ignore).unwrap();
            let weighted = one_hot
                .broadcast_mul(&weights.reshape((1, c, 1, 1)).unwrap())
                .unwrap();
            let fused = weighted_nll_fused_cpu(logits.as_tensor(), &weighted)
                .unwrap()
                .expect("f32 on the CPU takes the fused op");
            let reference = weighted_nll(logits.as_tensor(), &weighted).unwrap();
            let (a, b) = (
                fused.to_scalar::<f32>().unwrap(),
                reference.to_scalar::<f32>().unwrap(),
            );
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{ignore:?}: loss {a} vs {b}"
            );
            if all_ignored {
                assert_eq!(a, 0.0);
            }
            let grad_of = |loss: &Tensor| {
                let grads = loss.backward().unwrap();
                let g = grads.get(logits.as_tensor()).unwrap();
                g.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            let (ga, gb) = (grad_of(&fused), grad_of(&reference));
            let scale = gb.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
            for (x, y) in ga.iter().zip(&gb) {
                assert!(
                    (x - y).abs() <= 1e-5 * scale,
                    "{ignore:?}: gradient {x} vs {y}"
                );
            }
            if all_ignored {
                assert!(ga.iter().all(|&g| g == 0.0));
            }
        }
    }
    use super::*;
    use candle_core::Device;

    fn t4(values: &[f64], shape: (usize, usize, usize, usize)) -> Tensor {
        Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn cross_entropy_by_hand() {
        // One pixel, two classes, logits (0, ln 3): p = (1/4, 3/4).
        let logits = t4(&[0.0, 3f64.ln()], (1, 2, 1, 1));
        let target = Tensor::new(&[[[1u32]]], &Device::Cpu).unwrap();
        let ce = cross_entropy(&logits, &target, None, None)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((ce - (4.0f64 / 3.0).ln()).abs() < 1e-12, "{ce}");
        // Two pixels with targets 0 and 1, weights (1, 3):
        // (1 * ln 4 + 3 * ln 4/3) / 4.
        let logits = t4(&[0.0, 0.0, 3f64.ln(), 3f64.ln()], (1, 2, 1, 2));
        let target = Tensor::new(&[[[0u32, 1]]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1.0f64, 3.0], &Device::Cpu).unwrap();
        let ce = cross_entropy(&logits, &target, Some(&w), None)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let expected = (4f64.ln() + 3.0 * (4.0f64 / 3.0).ln()) / 4.0;
        assert!((ce - expected).abs() < 1e-12, "{ce} vs {expected}");
        // Ignoring the first pixel leaves ln 4/3.
        let target = Tensor::new(&[[[7u32, 1]]], &Device::Cpu).unwrap();
        let ce = cross_entropy(&logits, &target, Some(&w), Some(7))
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((ce - (4.0f64 / 3.0).ln()).abs() < 1e-12, "{ce}");
    }

    #[test]
    fn all_ignored_gives_zero_loss_and_zero_gradient() {
        let var = candle_core::Var::from_tensor(&t4(&[1.0, -2.0, 0.5, 3.0], (1, 2, 1, 2))).unwrap();
        let target = Tensor::new(&[[[255u32, 255]]], &Device::Cpu).unwrap();
        for config in [
            LossConfig {
                ignore_id: Some(255),
                ..Default::default()
            },
            LossConfig {
                ignore_id: Some(255),
                ce_weight: 0.5,
                dice_weight: 1.0,
                class_weights: Some(vec![1.0, 2.0]),
                ..Default::default()
            },
        ] {
            let loss = SegLoss::new(&config, 2, &Device::Cpu)
                .unwrap()
                .compute(var.as_tensor(), &target)
                .unwrap();
            assert_eq!(loss.to_scalar::<f64>().unwrap(), 0.0);
            let grads = loss.backward().unwrap();
            let g = grads.get(var.as_tensor()).unwrap();
            let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            assert!(g.iter().all(|v| *v == 0.0), "{g:?}");
        }
    }

    #[test]
    fn dice_by_hand() {
        // Two pixels, two classes, targets (0, 1), probabilities p(class 0) = (3/4, 1/4).
        let l = 3f64.ln();
        let logits = t4(&[l, 0.0, 0.0, l], (1, 2, 1, 2));
        let target = Tensor::new(&[[[0u32, 1]]], &Device::Cpu).unwrap();
        // Class 0: intersection 3/4, predicted 1, present 1: dice = (1.5 + s) / (2 + s); same for
        // class 1 by symmetry.
        for smooth in [0.0, 1.0] {
            let d = soft_dice(&logits, &target, None, smooth)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let expected = 1.0 - (1.5 + smooth) / (2.0 + smooth);
            assert!((d - expected).abs() < 1e-12, "{d} vs {expected}");
        }
        // Only class 0 present (pixel 2 ignored): predicted area of class 0 counts pixel 1 only.
        let target = Tensor::new(&[[[0u32, 9]]], &Device::Cpu).unwrap();
        let d = soft_dice(&logits, &target, Some(9), 0.0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let expected = 1.0 - 1.5 / 1.75;
        assert!((d - expected).abs() < 1e-12, "{d} vs {expected}");
    }

    #[test]
    fn config_validation_names_the_field() {
        let bad = LossConfig {
            class_weights: Some(vec![1.0, f32::NAN]),
            ..Default::default()
        };
        assert!(
            bad.validate(None)
                .unwrap_err()
                .to_string()
                .contains("class_weights")
        );
        let short = LossConfig {
            class_weights: Some(vec![1.0, 2.0]),
            ..Default::default()
        };
        assert!(
            short
                .validate(Some(3))
                .unwrap_err()
                .to_string()
                .contains("2 weights for 3")
        );
        let nothing = LossConfig {
            ce_weight: 0.0,
            ..Default::default()
        };
        assert!(nothing.validate(None).is_err());
        let targets = Tensor::new(&[[[0f32]]], &Device::Cpu).unwrap();
        let logits = t4(&[0.0, 0.0], (1, 2, 1, 1));
        assert!(cross_entropy(&logits, &targets, None, None).is_err());
        let wrong_shape = Tensor::new(&[[0u32, 1]], &Device::Cpu).unwrap();
        assert!(cross_entropy(&logits, &wrong_shape, None, None).is_err());
    }
}
