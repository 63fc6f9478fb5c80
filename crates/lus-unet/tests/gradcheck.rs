//! candle's backward pass through the U-Net against central finite differences, in f64, for
//! every trainable tensor (a few entries each) and a few input pixels.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use common::{build, randn, randomize_non_weights};
use lus_unet::{Kernels, Mode, Norm, UNet, UNetConfig, Upsampling};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const STEP: f64 = 1e-6;
const DROPOUT_SEED: u64 = 99;

/// loss = sum(logits * weights). In training mode the dropout rng is re-seeded for every
/// evaluation, so all evaluations see the same mask.
fn loss(unet: &UNet, x: &Tensor, weights: &Tensor, train: bool) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(DROPOUT_SEED);
    let mut mode = if train {
        Mode::train(&mut rng)
    } else {
        Mode::Eval
    };
    let logits = unet.forward_t(x, &mut mode).unwrap();
    (logits * weights).unwrap().sum_all().unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

/// Central difference of the loss with respect to element `index` of `var`.
fn numeric_grad(
    unet: &UNet,
    var: &Var,
    index: usize,
    x: &Tensor,
    weights: &Tensor,
    train: bool,
    input: Option<&Tensor>,
) -> f64 {
    let original = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let eval_at = |delta: f64| {
        let mut v = original.clone();
        v[index] += delta;
        var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
            .unwrap();
        scalar(&loss(unet, input.unwrap_or(x), weights, train))
    };
    let plus = eval_at(STEP);
    let minus = eval_at(-STEP);
    var.set(&Tensor::from_vec(original, var.dims(), &Device::Cpu).unwrap())
        .unwrap();
    (plus - minus) / (2.0 * STEP)
}

#[derive(Default)]
struct Stats {
    worst: f64,
    checked: usize,
}

impl Stats {
    /// Relative error, with an absolute floor of 1 so that near-zero gradients are compared
    /// absolutely.
    fn compare(&mut self, context: &str, what: &str, analytic: f64, numeric: f64) {
        let err = (analytic - numeric).abs() / numeric.abs().max(analytic.abs()).max(1.0);
        assert!(
            err < 1e-5,
            "{what}: backward {analytic:.8e} vs finite difference {numeric:.8e} ({context})"
        );
        self.worst = self.worst.max(err);
        self.checked += 1;
    }
}

fn check(config: UNetConfig, train: bool, seed: u64) {
    let (varmap, unet): (VarMap, UNet) = build(&config, DType::F64, seed);
    randomize_non_weights(&varmap, &unet, seed + 1);
    let x = Var::from_tensor(&randn(&[2, config.in_channels, 8, 8], DType::F64, seed + 2)).unwrap();
    let weights = randn(&[2, config.num_classes, 8, 8], DType::F64, seed + 3);

    let value = loss(&unet, x.as_tensor(), &weights, train);
    let grads = value.backward().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 4);
    let mut stats = Stats::default();
    let context = format!("{config:?}, train {train}");
    let mut sampled = 0;

    let trainable = unet.trainable_vars(&varmap).unwrap();
    let specs: Vec<_> = unet
        .param_specs()
        .iter()
        .filter(|s| s.kind.is_trainable())
        .collect();
    assert_eq!(specs.len(), trainable.len());
    let mut nonzero = 0;
    for (spec, var) in specs.iter().zip(&trainable) {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {}", spec.name))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for _ in 0..2 {
            let index = rng.random_range(0..grad.len());
            let numeric = numeric_grad(&unet, var, index, x.as_tensor(), &weights, train, None);
            if grad[index] != 0.0 {
                nonzero += 1;
            }
            sampled += 1;
            stats.compare(
                &context,
                &format!("{}[{index}]", spec.name),
                grad[index],
                numeric,
            );
        }
    }
    // Most sampled gradients must be non-zero, or the comparison would prove little.
    assert!(
        nonzero * 4 >= sampled * 3,
        "{nonzero} of {sampled} sampled gradients non-zero"
    );

    let input_grad = grads
        .get(x.as_tensor())
        .expect("no gradient for the input")
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    for _ in 0..6 {
        let index = rng.random_range(0..input_grad.len());
        let numeric = numeric_grad(
            &unet,
            &x,
            index,
            x.as_tensor(),
            &weights,
            train,
            Some(x.as_tensor()),
        );
        stats.compare(
            &context,
            &format!("input[{index}]"),
            input_grad[index],
            numeric,
        );
    }
    eprintln!(
        "{context}: {} gradients, worst relative error {:.2e}",
        stats.checked, stats.worst
    );
}

fn tiny(norm: Norm, upsampling: Upsampling, dropout: f32) -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        num_classes: 3,
        depth: 2,
        base_channels: 2,
        norm,
        upsampling,
        dropout,
        kernels: Kernels::default(),
        ..UNetConfig::default()
    }
}

#[test]
fn gradients_batch_norm_transposed_conv_train_with_dropout() {
    check(tiny(Norm::Batch, Upsampling::TransposedConv, 0.3), true, 10);
}

#[test]
fn gradients_batch_norm_transposed_conv_train_with_dropout_candle_kernels() {
    let config = UNetConfig {
        kernels: Kernels::Candle,
        ..tiny(Norm::Batch, Upsampling::TransposedConv, 0.3)
    };
    check(config, true, 10);
}

#[test]
fn gradients_batch_norm_bilinear_conv_eval() {
    check(tiny(Norm::Batch, Upsampling::BilinearConv, 0.0), false, 20);
}

#[test]
fn gradients_group_norm_bilinear_conv_train() {
    check(
        tiny(Norm::Group { groups: 2 }, Upsampling::BilinearConv, 0.0),
        true,
        30,
    );
}

#[test]
fn gradients_no_norm_transposed_conv_depth_1() {
    let config = UNetConfig {
        depth: 1,
        base_channels: 3,
        in_channels: 2,
        ..tiny(Norm::None, Upsampling::TransposedConv, 0.0)
    };
    check(config, false, 40);
}
