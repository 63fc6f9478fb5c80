//! The CPU custom ops of `lus_unet::cpu_ops` against candle's own ops (forward and backward,
//! f32, random shapes) and against central finite differences (f64, tiny shapes).

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::BatchNorm;
use common::{randn, values};
use lus_unet::cpu_ops::{
    DoubleConvWeights, batch_norm_train, channel_affine, conv_transpose2d_k2s2, conv2d,
    conv2d_concat, double_conv_bn_relu_train, max_pool2x2,
};
use proptest::prelude::*;

/// Largest difference relative to the largest magnitude of the reference (the scale-free
/// measure the tolerances below use).
fn rel_err(got: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(got.dims(), reference.dims());
    let (g, r) = (values(got), values(reference));
    let scale = r.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    g.iter()
        .zip(&r)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
        / scale
}

/// `sum(f(inputs) * r)` and its gradients with respect to every input, for a fixed random `r`.
fn grads_of(
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Tensor,
    seed: u64,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors);
    let r = randn(out.dims(), out.dtype(), seed);
    let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let per_input = tensors
        .iter()
        .map(|t| grads.get(t).expect("gradient of every input").clone())
        .collect();
    (out, per_input)
}

fn assert_close(what: &str, got: &Tensor, reference: &Tensor, tol: f64) {
    let err = rel_err(got, reference);
    assert!(err < tol, "{what}: relative error {err:.3e} >= {tol:.0e}");
}

const F32_TOL: f64 = 1e-4;

#[derive(Debug, Clone)]
struct ConvCase {
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    height: usize,
    width: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    seed: u64,
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        prop::sample::select(vec![1usize, 3]),
        prop::sample::select(vec![1usize, 3, 16]),
        prop::sample::select(vec![1usize, 3, 16]),
        3usize..12,
        3usize..12,
        prop::sample::select(vec![1usize, 2, 3]),
        1usize..=2,
        0usize..=1,
        any::<u64>(),
    )
        .prop_map(
            |(batch, in_channels, out_channels, height, width, kernel, stride, padding, seed)| {
                ConvCase {
                    batch,
                    in_channels,
                    out_channels,
                    height,
                    width,
                    kernel,
                    stride,
                    padding,
                    seed: seed % 1_000_000,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn conv2d_forward_and_backward_match_candle(case in conv_case()) {
        let x = randn(&[case.batch, case.in_channels, case.height, case.width], DType::F32, case.seed);
        let w = randn(
            &[case.out_channels, case.in_channels, case.kernel, case.kernel],
            DType::F32,
            case.seed + 1,
        );
        let (s, p, k) = (case.stride, case.padding, case.kernel);
        prop_assume!(case.height + 2 * p >= k && case.width + 2 * p >= k);
        let (ours, our_grads) =
            grads_of(&[x.clone(), w.clone()], |t| conv2d(&t[0], &t[1], None, s, p).unwrap(), case.seed + 2);
        let theirs = x.conv2d(&w, p, s, 1, 1).unwrap();
        assert_close(&format!("{case:?} forward"), &ours, &theirs, F32_TOL);
        // candle 0.11.1's conv2d backward builds the input gradient with a transposed conv
        // without output padding, which fails when the last stride step leaves input rows or
        // columns unread; those cases are covered by the finite-difference test below.
        let candle_backward_works = (case.height + 2 * p - k) % s == 0 && (case.width + 2 * p - k) % s == 0;
        prop_assume!(candle_backward_works);
        let (_, their_grads) =
            grads_of(&[x, w], |t| t[0].conv2d(&t[1], p, s, 1, 1).unwrap(), case.seed + 2);
        assert_close(&format!("{case:?} grad input"), &our_grads[0], &their_grads[0], F32_TOL);
        assert_close(&format!("{case:?} grad weight"), &our_grads[1], &their_grads[1], F32_TOL);
    }

    #[test]
    fn conv_transpose2d_k2s2_forward_and_backward_match_candle(
        batch in prop::sample::select(vec![1usize, 3]),
        in_channels in prop::sample::select(vec![1usize, 3, 16]),
        out_channels in prop::sample::select(vec![1usize, 3, 16]),
        height in 1usize..9,
        width in 1usize..9,
        seed in 0u64..1_000_000,
    ) {
        let x = randn(&[batch, in_channels, height, width], DType::F32, seed);
        let w = randn(&[in_channels, out_channels, 2, 2], DType::F32, seed + 1);
        let (ours, our_grads) =
            grads_of(&[x.clone(), w.clone()], |t| conv_transpose2d_k2s2(&t[0], &t[1], None).unwrap(), seed + 2);
        let (theirs, their_grads) =
            grads_of(&[x, w], |t| t[0].conv_transpose2d(&t[1], 0, 0, 2, 1).unwrap(), seed + 2);
        let context = format!("{batch} x {in_channels} -> {out_channels} x {height} x {width}");
        assert_close(&format!("{context} forward"), &ours, &theirs, F32_TOL);
        assert_close(&format!("{context} grad input"), &our_grads[0], &their_grads[0], F32_TOL);
        assert_close(&format!("{context} grad weight"), &our_grads[1], &their_grads[1], F32_TOL);
    }

    #[test]
    fn conv2d_with_bias_matches_candle_conv_plus_broadcast_bias(case in conv_case()) {
        let (s, p, k) = (case.stride, case.padding, case.kernel);
        prop_assume!(case.height + 2 * p >= k && case.width + 2 * p >= k);
        prop_assume!((case.height + 2 * p - k) % s == 0 && (case.width + 2 * p - k) % s == 0);
        let x = randn(&[case.batch, case.in_channels, case.height, case.width], DType::F32, case.seed);
        let w = randn(&[case.out_channels, case.in_channels, k, k], DType::F32, case.seed + 1);
        let b = randn(&[case.out_channels], DType::F32, case.seed + 2);
        let inputs = [x, w, b];
        let (ours, our_grads) =
            grads_of(&inputs, |t| conv2d(&t[0], &t[1], Some(&t[2]), s, p).unwrap(), case.seed + 3);
        let (theirs, their_grads) = grads_of(&inputs, |t| {
            let y = t[0].conv2d(&t[1], p, s, 1, 1).unwrap();
            y.broadcast_add(&t[2].reshape((1, (), 1, 1)).unwrap()).unwrap()
        }, case.seed + 3);
        assert_close(&format!("{case:?} forward"), &ours, &theirs, F32_TOL);
        for (name, i) in [("input", 0), ("weight", 1), ("bias", 2)] {
            assert_close(&format!("{case:?} grad {name}"), &our_grads[i], &their_grads[i], F32_TOL);
        }
    }

    #[test]
    fn conv2d_concat_matches_candle_cat_then_conv(
        case in conv_case(),
        second_channels in prop::sample::select(vec![1usize, 4, 16]),
    ) {
        let (s, p, k) = (case.stride, case.padding, case.kernel);
        prop_assume!(case.height + 2 * p >= k && case.width + 2 * p >= k);
        prop_assume!((case.height + 2 * p - k) % s == 0 && (case.width + 2 * p - k) % s == 0);
        let dims = |c| [case.batch, c, case.height, case.width];
        let first = randn(&dims(case.in_channels), DType::F32, case.seed);
        let second = randn(&dims(second_channels), DType::F32, case.seed + 1);
        let w = randn(
            &[case.out_channels, case.in_channels + second_channels, k, k],
            DType::F32,
            case.seed + 2,
        );
        let inputs = [first, second, w];
        let (ours, our_grads) =
            grads_of(&inputs, |t| conv2d_concat(&t[0], &t[1], &t[2], s, p).unwrap(), case.seed + 3);
        let (theirs, their_grads) = grads_of(&inputs, |t| {
            Tensor::cat(&[&t[0], &t[1]], 1).unwrap().conv2d(&t[2], p, s, 1, 1).unwrap()
        }, case.seed + 3);
        let context = format!("{case:?} + {second_channels} channels");
        assert_close(&format!("{context} forward"), &ours, &theirs, F32_TOL);
        for (name, i) in [("first", 0), ("second", 1), ("weight", 2)] {
            assert_close(&format!("{context} grad {name}"), &our_grads[i], &their_grads[i], F32_TOL);
        }
    }

    #[test]
    fn conv_transpose2d_k2s2_with_bias_matches_candle(
        batch in prop::sample::select(vec![1usize, 3]),
        in_channels in prop::sample::select(vec![1usize, 3, 16]),
        out_channels in prop::sample::select(vec![1usize, 3, 16]),
        height in 1usize..9,
        width in 1usize..9,
        seed in 0u64..1_000_000,
    ) {
        let x = randn(&[batch, in_channels, height, width], DType::F32, seed);
        let w = randn(&[in_channels, out_channels, 2, 2], DType::F32, seed + 1);
        let b = randn(&[out_channels], DType::F32, seed + 2);
        let inputs = [x, w, b];
        let (ours, our_grads) = grads_of(
            &inputs,
            |t| conv_transpose2d_k2s2(&t[0], &t[1], Some(&t[2])).unwrap(),
            seed + 3,
        );
        let (theirs, their_grads) = grads_of(&inputs, |t| {
            let y = t[0].conv_transpose2d(&t[1], 0, 0, 2, 1).unwrap();
            y.broadcast_add(&t[2].reshape((1, (), 1, 1)).unwrap()).unwrap()
        }, seed + 3);
        let context = format!("{batch} x {in_channels} -> {out_channels} x {height} x {width}");
        assert_close(&format!("{context} forward"), &ours, &theirs, F32_TOL);
        for (name, i) in [("input", 0), ("weight", 1), ("bias", 2)] {
            assert_close(&format!("{context} grad {name}"), &our_grads[i], &their_grads[i], F32_TOL);
        }
    }

    #[test]
    fn batch_norm_train_matches_candle_with_and_without_relu(
        batch in prop::sample::select(vec![1usize, 3]),
        channels in prop::sample::select(vec![1usize, 3, 16]),
        // At least 4 values per channel: with 2, both normalise to exactly -1 and +1 and the
        // input gradient is pure rounding noise (0 in exact arithmetic).
        height in 2usize..9,
        width in 2usize..9,
        relu in any::<bool>(),
        seed in 0u64..1_000_000,
    ) {
        let dims = [batch, channels, height, width];
        // An offset mean and a non-unit scale, so that centring and scaling both matter.
        let x = (randn(&dims, DType::F32, seed).affine(2.5, 1.5)).unwrap();
        let gamma = randn(&[channels], DType::F32, seed + 1).affine(0.3, 1.0).unwrap();
        let beta = randn(&[channels], DType::F32, seed + 2);
        let eps = 1e-5;
        let (ours, our_grads) = grads_of(&[x.clone(), gamma.clone(), beta.clone()], |t| {
            batch_norm_train(&t[0], &t[1], &t[2], eps, relu).unwrap().0
        }, seed + 3);
        let (theirs, their_grads) = grads_of(&[x.clone(), gamma, beta], |t| {
            let zeros = Tensor::zeros(channels, DType::F32, &Device::Cpu).unwrap();
            let ones = Tensor::ones(channels, DType::F32, &Device::Cpu).unwrap();
            let bn = BatchNorm::new(channels, zeros, ones, t[1].clone(), t[2].clone(), eps).unwrap();
            let y = bn.forward_train(&t[0]).unwrap();
            if relu { y.relu().unwrap() } else { y }
        }, seed + 3);
        let context = format!("{dims:?}, relu {relu}");
        assert_close(&format!("{context} forward"), &ours, &theirs, F32_TOL);
        for (name, i) in [("x", 0), ("gamma", 1), ("beta", 2)] {
            assert_close(&format!("{context} grad {name}"), &our_grads[i], &their_grads[i], F32_TOL);
        }
        // The returned statistics are the batch mean and biased variance per channel.
        let (_, stats) = batch_norm_train(&x, &ones_like(channels), &zeros_like(channels), eps, false).unwrap();
        let per_channel = x.transpose(0, 1).unwrap().flatten_from(1).unwrap();
        let mean = values(&per_channel.mean(1).unwrap());
        let centred = per_channel.broadcast_sub(&per_channel.mean_keepdim(1).unwrap()).unwrap();
        let var = values(&centred.sqr().unwrap().mean(1).unwrap());
        for c in 0..channels {
            prop_assert!((stats.mean[c] - mean[c]).abs() < 1e-4 * (1.0 + mean[c].abs()));
            prop_assert!((stats.var[c] - var[c]).abs() < 1e-4 * var[c].max(1.0));
        }
        prop_assert_eq!(stats.count, batch * height * width);
    }
}

/// `relu(bn(conv(x)))` in training mode with candle's own ops (the reference of the fused
/// double-conv op).
fn candle_conv_bn_relu(x: &Tensor, w: &Tensor, gamma: &Tensor, beta: &Tensor) -> Tensor {
    let channels = w.dim(0).unwrap();
    let padding = w.dim(2).unwrap() / 2;
    let zeros = Tensor::zeros(channels, x.dtype(), &Device::Cpu).unwrap();
    let ones = Tensor::ones(channels, x.dtype(), &Device::Cpu).unwrap();
    let bn = BatchNorm::new(channels, zeros, ones, gamma.clone(), beta.clone(), 1e-5).unwrap();
    bn.forward_train(&x.conv2d(w, padding, 1, 1, 1).unwrap())
        .unwrap()
        .relu()
        .unwrap()
}

/// The inputs of a double-conv case: `[x, (second,) w1, gamma1, beta1, w2, gamma2, beta2]`.
fn double_conv_inputs(
    dims: [usize; 4],
    second_channels: Option<usize>,
    (mid, out, kernel): (usize, usize, usize),
    dtype: DType,
    seed: u64,
) -> Vec<Tensor> {
    let [n, c, h, w] = dims;
    let mut inputs = vec![randn(&dims, dtype, seed).affine(1.5, 0.5).unwrap()];
    if let Some(c2) = second_channels {
        inputs.push(randn(&[n, c2, h, w], dtype, seed + 1));
    }
    let c_in = c + second_channels.unwrap_or(0);
    let scale = |t: Tensor| t.affine(0.3, 1.0).unwrap();
    inputs.extend([
        randn(&[mid, c_in, kernel, kernel], dtype, seed + 2),
        scale(randn(&[mid], dtype, seed + 3)),
        randn(&[mid], dtype, seed + 4),
        randn(&[out, mid, kernel, kernel], dtype, seed + 5),
        scale(randn(&[out], dtype, seed + 6)),
        randn(&[out], dtype, seed + 7),
    ]);
    inputs
}

/// The fused op on `double_conv_inputs`.
fn double_conv_of(t: &[Tensor], concat: bool) -> Tensor {
    let (x, second, p) = if concat {
        (&t[0], Some(&t[1]), &t[2..])
    } else {
        (&t[0], None, &t[1..])
    };
    let weights = DoubleConvWeights {
        conv1: &p[0],
        gamma1: &p[1],
        beta1: &p[2],
        conv2: &p[3],
        gamma2: &p[4],
        beta2: &p[5],
    };
    double_conv_bn_relu_train(x, second, &weights, 1e-5)
        .unwrap()
        .0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn double_conv_bn_relu_train_matches_candle_ops(
        batch in prop::sample::select(vec![1usize, 3]),
        in_channels in prop::sample::select(vec![1usize, 3, 8]),
        second_channels in prop::sample::select(vec![None, Some(1usize), Some(5)]),
        mid in prop::sample::select(vec![1usize, 4, 16]),
        out in prop::sample::select(vec![1usize, 4, 16]),
        kernel in prop::sample::select(vec![1usize, 3]),
        // At least 4 values per channel (see the batch-norm test).
        height in 2usize..10,
        width in 2usize..10,
        seed in 0u64..1_000_000,
    ) {
        // A convolution with a single weight per output channel feeds a batch norm that
        // cancels its scale: its weight gradient is exactly 0 and both sides return rounding
        // noise, which no relative tolerance can compare.
        let k1 = (in_channels + second_channels.unwrap_or(0)) * kernel * kernel;
        prop_assume!(k1 >= 3 && mid * kernel * kernel >= 3);
        let concat = second_channels.is_some();
        let inputs = double_conv_inputs(
            [batch, in_channels, height, width],
            second_channels,
            (mid, out, kernel),
            // In f64: with few channels, gradients such as that of a single gamma are small
            // differences of large sums (batch norm cancels scales), whose f32 rounding on
            // either side no tolerance fits. The U-Net tests below compare the f32 path.
            DType::F64,
            seed,
        );
        let (ours, our_grads) = grads_of(&inputs, |t| double_conv_of(t, concat), seed + 8);
        let (theirs, their_grads) = grads_of(&inputs, |t| {
            let (x, p) = if concat {
                (Tensor::cat(&[&t[0], &t[1]], 1).unwrap(), &t[2..])
            } else {
                (t[0].clone(), &t[1..])
            };
            let a1 = candle_conv_bn_relu(&x, &p[0], &p[1], &p[2]);
            candle_conv_bn_relu(&a1, &p[3], &p[4], &p[5])
        }, seed + 8);
        let context = format!(
            "{batch} x {in_channels} (+ {second_channels:?}) x {height} x {width} -> {mid} -> \
             {out}, kernel {kernel}"
        );
        assert_close(&format!("{context}: forward"), &ours, &theirs, 1e-10);
        for (i, (a, b)) in our_grads.iter().zip(&their_grads).enumerate() {
            assert_close(&format!("{context}: grad of input {i}"), a, b, 1e-8);
        }
        // The returned statistics are the batch norms' batch statistics.
        let weights_at = if concat { 2 } else { 1 };
        let p = &inputs[weights_at..];
        let x = if concat {
            Tensor::cat(&[&inputs[0], &inputs[1]], 1).unwrap()
        } else {
            inputs[0].clone()
        };
        let h1 = x.conv2d(&p[0], kernel / 2, 1, 1, 1).unwrap();
        let weights = DoubleConvWeights {
            conv1: &p[0], gamma1: &p[1], beta1: &p[2], conv2: &p[3], gamma2: &p[4], beta2: &p[5],
        };
        let second = concat.then(|| &inputs[1]);
        let (_, [stats1, _]) =
            double_conv_bn_relu_train(&inputs[0], second, &weights, 1e-5).unwrap();
        let (_, reference) = batch_norm_train(&h1, &p[1], &p[2], 1e-5, true).unwrap();
        for c in 0..mid {
            prop_assert!((stats1.mean[c] - reference.mean[c]).abs() < 1e-10 * (1.0 + reference.mean[c].abs()));
            prop_assert!((stats1.var[c] - reference.var[c]).abs() < 1e-10 * reference.var[c].max(1.0));
        }
        prop_assert_eq!(stats1.count, batch * height * width);
    }
}

#[test]
fn double_conv_bn_relu_train_backward_matches_finite_differences() {
    for second in [None, Some(2)] {
        let inputs = double_conv_inputs([2, 2, 4, 3], second, (3, 2, 3), DType::F64, 40);
        check_finite_differences(&format!("double conv, second {second:?}"), &inputs, |t| {
            double_conv_of(t, second.is_some())
        });
    }
}

fn ones_like(channels: usize) -> Tensor {
    Tensor::ones(channels, DType::F32, &Device::Cpu).unwrap()
}

fn zeros_like(channels: usize) -> Tensor {
    Tensor::zeros(channels, DType::F32, &Device::Cpu).unwrap()
}

/// Central finite differences of `sum(f(inputs) * r)` in f64 for every element of every input,
/// against the op's backward pass.
fn check_finite_differences(what: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) {
    const STEP: f64 = 1e-6;
    let (out, grads) = grads_of(inputs, &f, 17);
    let r = randn(out.dims(), DType::F64, 17);
    let loss = |ts: &[Tensor]| -> f64 {
        (f(ts) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for (i, input) in inputs.iter().enumerate() {
        let base = values(input);
        let analytic = values(&grads[i]);
        for j in 0..base.len() {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                let mut ts = inputs.to_vec();
                ts[i] = Tensor::from_vec(v, input.dims(), &Device::Cpu).unwrap();
                loss(&ts)
            };
            let numeric = (at(STEP) - at(-STEP)) / (2.0 * STEP);
            let err = (analytic[j] - numeric).abs() / numeric.abs().max(1.0);
            assert!(
                err < 1e-6,
                "{what}: input {i}[{j}]: backward {} vs finite difference {numeric}",
                analytic[j]
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Shapes on which f32 3x3 convolutions take the direct AVX-512 kernels (at least 8
    /// channels in and out; forward and input gradient from 16 columns on, the weight gradient
    /// from 32), with and without a bias or a concatenated second input, against candle's ops.
    /// On a CPU without AVX-512 the same shapes take im2col + GEMM.
    #[test]
    fn conv3x3_on_direct_kernel_shapes_matches_candle(
        batch in 1usize..=3,
        in_channels in prop::sample::select(vec![8usize, 13, 16]),
        second_channels in prop::sample::select(vec![0usize, 3, 8]),
        out_channels in prop::sample::select(vec![8usize, 11, 19]),
        height in 1usize..24,
        width in prop::sample::select(vec![16usize, 17, 32, 45, 64]),
        bias in any::<bool>(),
        seed in 0u64..1_000_000,
    ) {
        let concat = second_channels > 0;
        let bias = bias && !concat;
        let dims = |c| [batch, c, height, width];
        let mut inputs = vec![randn(&dims(in_channels), DType::F32, seed)];
        if concat {
            inputs.push(randn(&dims(second_channels), DType::F32, seed + 1));
        }
        inputs.push(randn(
            &[out_channels, in_channels + second_channels, 3, 3],
            DType::F32,
            seed + 2,
        ));
        if bias {
            inputs.push(randn(&[out_channels], DType::F32, seed + 3));
        }
        let (ours, our_grads) = grads_of(&inputs, |t| {
            if concat {
                conv2d_concat(&t[0], &t[1], &t[2], 1, 1).unwrap()
            } else {
                conv2d(&t[0], &t[1], t.get(2), 1, 1).unwrap()
            }
        }, seed + 4);
        let (theirs, their_grads) = grads_of(&inputs, |t| {
            let (x, w) = if concat {
                (Tensor::cat(&[&t[0], &t[1]], 1).unwrap(), &t[2])
            } else {
                (t[0].clone(), &t[1])
            };
            let y = x.conv2d(w, 1, 1, 1, 1).unwrap();
            match t.get(2).filter(|_| !concat) {
                Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap(),
                None => y,
            }
        }, seed + 4);
        let context = format!(
            "{batch} x {in_channels} (+ {second_channels}) x {height} x {width} -> \
             {out_channels}, bias {bias}"
        );
        assert_close(&format!("{context}: forward"), &ours, &theirs, F32_TOL);
        for (i, (a, b)) in our_grads.iter().zip(&their_grads).enumerate() {
            assert_close(&format!("{context}: grad of input {i}"), a, b, F32_TOL);
        }
    }
}

#[test]
fn conv2d_on_images_split_into_several_row_bands_matches_candle() {
    // 16 channels x 3 x 3 taps x 131 columns: a band holds 6 output rows at stride 1 and 13
    // at stride 2, so 37 rows (19 at stride 2) make several bands and a partial last one.
    // Batch 2 spreads the samples over the threads; batch 1 spreads the bands of the image
    // (with more than one rayon thread), and the bias takes the fused path of both.
    for (batch, stride, height) in [(2, 1, 37), (2, 2, 37), (1, 1, 37), (1, 2, 37)] {
        let x = randn(&[batch, 16, height, 131], DType::F32, 30);
        let w = randn(&[8, 16, 3, 3], DType::F32, 31);
        let b = randn(&[8], DType::F32, 33);
        let (ours, our_grads) = grads_of(
            &[x.clone(), w.clone(), b.clone()],
            |t| conv2d(&t[0], &t[1], Some(&t[2]), stride, 1).unwrap(),
            32,
        );
        let (theirs, their_grads) = grads_of(
            &[x, w, b],
            |t| {
                let y = t[0].conv2d(&t[1], 1, stride, 1, 1).unwrap();
                y.broadcast_add(&t[2].reshape((1, (), 1, 1)).unwrap())
                    .unwrap()
            },
            32,
        );
        let context = format!("batch {batch}, stride {stride}");
        assert_close(&format!("{context}: forward"), &ours, &theirs, F32_TOL);
        for (name, i) in [("input", 0), ("weight", 1), ("bias", 2)] {
            assert_close(
                &format!("{context}: grad {name}"),
                &our_grads[i],
                &their_grads[i],
                F32_TOL,
            );
        }
    }
}

#[test]
fn conv2d_backward_matches_finite_differences() {
    for (stride, padding, kernel) in [(1, 1, 3), (2, 1, 3), (2, 0, 2), (1, 0, 1)] {
        let x = randn(&[2, 2, 5, 4], DType::F64, 1);
        let w = randn(&[3, 2, kernel, kernel], DType::F64, 2);
        check_finite_differences(
            &format!("conv2d stride {stride} padding {padding} kernel {kernel}"),
            &[x, w],
            |t| conv2d(&t[0], &t[1], None, stride, padding).unwrap(),
        );
    }
}

#[test]
fn conv_transpose2d_k2s2_backward_matches_finite_differences() {
    let x = randn(&[2, 3, 3, 2], DType::F64, 3);
    let w = randn(&[3, 2, 2, 2], DType::F64, 4);
    let b = randn(&[2], DType::F64, 5);
    check_finite_differences("conv_transpose2d_k2s2", &[x.clone(), w.clone()], |t| {
        conv_transpose2d_k2s2(&t[0], &t[1], None).unwrap()
    });
    check_finite_differences("conv_transpose2d_k2s2 with bias", &[x, w, b], |t| {
        conv_transpose2d_k2s2(&t[0], &t[1], Some(&t[2])).unwrap()
    });
}

#[test]
fn conv2d_with_bias_and_conv2d_concat_backward_match_finite_differences() {
    for (stride, padding, kernel) in [(1, 1, 3), (2, 1, 3), (1, 0, 1)] {
        let x = randn(&[2, 2, 5, 4], DType::F64, 11);
        let second = randn(&[2, 3, 5, 4], DType::F64, 12);
        let w = randn(&[3, 2, kernel, kernel], DType::F64, 13);
        let b = randn(&[3], DType::F64, 14);
        let context = format!("stride {stride} padding {padding} kernel {kernel}");
        check_finite_differences(
            &format!("conv2d with bias, {context}"),
            &[x.clone(), w, b],
            |t| conv2d(&t[0], &t[1], Some(&t[2]), stride, padding).unwrap(),
        );
        let w_concat = randn(&[3, 5, kernel, kernel], DType::F64, 15);
        check_finite_differences(
            &format!("conv2d_concat, {context}"),
            &[x, second, w_concat],
            |t| conv2d_concat(&t[0], &t[1], &t[2], stride, padding).unwrap(),
        );
    }
}

#[test]
fn batch_norm_train_backward_matches_finite_differences() {
    for relu in [false, true] {
        let x = randn(&[2, 3, 3, 2], DType::F64, 5);
        let gamma = randn(&[3], DType::F64, 6).affine(0.3, 1.0).unwrap();
        let beta = randn(&[3], DType::F64, 7).affine(0.5, 0.0).unwrap();
        check_finite_differences(
            &format!("batch norm, relu {relu}"),
            &[x, gamma, beta],
            |t| batch_norm_train(&t[0], &t[1], &t[2], 1e-5, relu).unwrap().0,
        );
    }
}

#[test]
fn channel_affine_matches_broadcast_ops_and_finite_differences() {
    for relu in [false, true] {
        let x = randn(&[2, 3, 3, 2], DType::F64, 8);
        let scale = randn(&[3], DType::F64, 9);
        let shift = randn(&[3], DType::F64, 10).affine(0.5, 0.0).unwrap();
        let ours = channel_affine(&x, &scale, &shift, relu).unwrap();
        let affine = x
            .broadcast_mul(&scale.reshape((1, 3, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&shift.reshape((1, 3, 1, 1)).unwrap())
            .unwrap();
        let reference = if relu { affine.relu().unwrap() } else { affine };
        assert_close(&format!("relu {relu}"), &ours, &reference, 1e-12);
        check_finite_differences(
            &format!("channel affine, relu {relu}"),
            &[x, scale, shift],
            |t| channel_affine(&t[0], &t[1], &t[2], relu).unwrap(),
        );
    }
}

#[test]
fn max_pool2x2_matches_the_candle_composition_and_sends_ties_to_the_first_maximum() {
    for (dims, seed) in [([1, 1, 2, 2], 0), ([3, 16, 6, 10], 1), ([2, 3, 8, 4], 2)] {
        // Continuous random values: no ties, so both backward conventions agree.
        let x = randn(&dims, DType::F32, seed);
        let (ours, our_grad) = grads_of(
            std::slice::from_ref(&x),
            |t| max_pool2x2(&t[0]).unwrap(),
            seed + 1,
        );
        let (theirs, their_grad) =
            grads_of(&[x], |t| lus_unet::max_pool2x2(&t[0]).unwrap(), seed + 1);
        assert_eq!(values(&ours), values(&theirs), "{dims:?} forward");
        assert_eq!(
            values(&our_grad[0]),
            values(&their_grad[0]),
            "{dims:?} backward"
        );
    }
    let x = Tensor::new(&[[[[1.0f32, 3.0], [3.0, 0.0]]]], &Device::Cpu).unwrap();
    let (y, grad) = grads_of(&[x], |t| max_pool2x2(&t[0]).unwrap(), 0);
    assert_eq!(values(&y), vec![3.0]);
    let g = values(&grad[0]);
    assert_ne!(g[1], 0.0);
    assert_eq!([g[0], g[2], g[3]], [0.0, 0.0, 0.0]);
    let odd = randn(&[1, 1, 3, 4], DType::F32, 0);
    assert!(max_pool2x2(&odd).is_err());
}

#[test]
fn shape_errors_are_errors_not_panics() {
    let x = randn(&[1, 3, 4, 4], DType::F32, 0);
    let w = randn(&[2, 3, 3, 3], DType::F32, 1);
    assert!(conv2d(&x, &randn(&[2, 4, 3, 3], DType::F32, 1), None, 1, 1).is_err());
    assert!(conv2d(&x, &randn(&[2, 3, 7, 7], DType::F32, 1), None, 1, 1).is_err());
    assert!(conv2d(&x, &w, None, 0, 1).is_err());
    let bias_of = |n: usize| randn(&[n], DType::F32, 4);
    assert!(conv2d(&x, &w, Some(&bias_of(3)), 1, 1).is_err());
    assert!(
        conv2d(
            &x,
            &w,
            Some(&bias_of(2).to_dtype(DType::F64).unwrap()),
            1,
            1
        )
        .is_err()
    );
    // Concatenation: channels must add up, and batch, height and width must agree.
    let w5 = randn(&[2, 5, 3, 3], DType::F32, 1);
    assert!(conv2d_concat(&x, &randn(&[1, 2, 4, 4], DType::F32, 2), &w5, 1, 1).is_ok());
    assert!(conv2d_concat(&x, &randn(&[1, 3, 4, 4], DType::F32, 2), &w5, 1, 1).is_err());
    assert!(conv2d_concat(&x, &randn(&[1, 2, 4, 5], DType::F32, 2), &w5, 1, 1).is_err());
    assert!(conv2d_concat(&x, &randn(&[2, 2, 4, 4], DType::F32, 2), &w5, 1, 1).is_err());
    assert!(conv_transpose2d_k2s2(&x, &randn(&[3, 2, 3, 3], DType::F32, 1), None).is_err());
    assert!(conv_transpose2d_k2s2(&x, &randn(&[2, 2, 2, 2], DType::F32, 1), None).is_err());
    let up_w = randn(&[3, 2, 2, 2], DType::F32, 1);
    assert!(conv_transpose2d_k2s2(&x, &up_w, Some(&bias_of(3))).is_err());
    let c3 = randn(&[3], DType::F32, 2);
    assert!(batch_norm_train(&x, &randn(&[2], DType::F32, 2), &c3, 1e-5, false).is_err());
    let single = randn(&[1, 3, 1, 1], DType::F32, 3);
    assert!(batch_norm_train(&single, &c3, &c3, 1e-5, false).is_err());
    let ints = Tensor::zeros((1, 3, 4, 4), DType::U32, &Device::Cpu).unwrap();
    assert!(conv2d(&ints, &ints.narrow(0, 0, 1).unwrap(), None, 1, 1).is_err());
}

mod unet {
    use super::*;
    use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
    use common::{build, randomize_non_weights};
    use lus_unet::{Kernels, Mode, Norm, UNet, UNetConfig, Upsampling};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Relative tolerance (to the largest magnitude of each tensor) between the two kernel sets
    /// in f32: the ops sum in different orders, and batch norm divides by small batch standard
    /// deviations, which amplifies the rounding differences a little at every level.
    const UNET_TOL: f64 = 2e-4;

    fn pair(config: &UNetConfig, seed: u64) -> [(VarMap, UNet); 2] {
        [Kernels::Lus, Kernels::Candle].map(|kernels| {
            let config = UNetConfig {
                kernels,
                ..config.clone()
            };
            let (varmap, unet) = build(&config, DType::F32, seed);
            randomize_non_weights(&varmap, &unet, seed + 1);
            (varmap, unet)
        })
    }

    fn compare_logits_and_gradients(config: UNetConfig, train: bool) {
        let models = pair(&config, 3);
        let x = randn(&[3, config.in_channels, 16, 16], DType::F32, 4);
        let r = randn(&[3, config.num_classes, 16, 16], DType::F32, 5);
        let mut results = Vec::new();
        for (varmap, unet) in &models {
            let mut rng = ChaCha8Rng::seed_from_u64(6);
            let mut mode = if train {
                Mode::train(&mut rng)
            } else {
                Mode::Eval
            };
            let logits = unet.forward_t(&x, &mut mode).unwrap();
            let grads = (&logits * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let per_var: Vec<(String, Tensor)> = unet
                .param_specs()
                .iter()
                .map(|spec| {
                    let var = varmap.data().lock().unwrap()[&spec.name].clone();
                    let value = if spec.kind.is_trainable() {
                        grads.get(var.as_tensor()).expect("gradient").clone()
                    } else {
                        // Running statistics: compare their values after the forward pass.
                        var.as_tensor().copy().unwrap()
                    };
                    (spec.name.clone(), value)
                })
                .collect();
            results.push((logits, per_var));
        }
        let context = format!("{config:?}, train {train}");
        assert_close(
            &format!("{context}: logits"),
            &results[0].0,
            &results[1].0,
            UNET_TOL,
        );
        assert_eq!(results[0].1.len(), results[1].1.len());
        for ((name, ours), (_, theirs)) in results[0].1.iter().zip(&results[1].1) {
            assert_close(&format!("{context}: {name}"), ours, theirs, UNET_TOL);
        }
    }

    fn config(norm: Norm, upsampling: Upsampling) -> UNetConfig {
        UNetConfig {
            num_classes: 4,
            depth: 3,
            base_channels: 4,
            norm,
            upsampling,
            dropout: 0.2,
            ..Default::default()
        }
    }

    #[test]
    fn logits_gradients_and_running_statistics_agree_with_candle_kernels() {
        compare_logits_and_gradients(config(Norm::Batch, Upsampling::TransposedConv), true);
        compare_logits_and_gradients(config(Norm::Batch, Upsampling::TransposedConv), false);
        compare_logits_and_gradients(config(Norm::Batch, Upsampling::BilinearConv), true);
        compare_logits_and_gradients(config(Norm::None, Upsampling::TransposedConv), true);
        compare_logits_and_gradients(
            config(Norm::Group { groups: 2 }, Upsampling::BilinearConv),
            true,
        );
    }

    #[test]
    fn a_short_adamw_run_follows_the_candle_kernels_loss_curve() {
        let config = config(Norm::Batch, Upsampling::TransposedConv);
        adamw_run_follows_the_candle_kernels(&config, [4, 1, 16, 16]);
    }

    /// The same on shapes where the f32 3x3 convolutions take the direct AVX-512 kernels
    /// (8 and 16 channels on 32- and 16-px levels: forward, input and weight gradients at
    /// level 0, forward and input gradient at level 1); on a CPU without AVX-512 they take
    /// im2col + GEMM.
    #[test]
    fn a_short_adamw_run_on_direct_kernel_shapes_follows_the_candle_kernels_loss_curve() {
        let config = UNetConfig {
            depth: 2,
            base_channels: 8,
            ..config(Norm::Batch, Upsampling::TransposedConv)
        };
        adamw_run_follows_the_candle_kernels(&config, [2, 1, 32, 32]);
    }

    /// Six AdamW steps of the lus-kernel and candle-kernel U-Nets from the same weights on the
    /// same data: the lus loss falls and follows candle's within 1e-4 at every step.
    fn adamw_run_follows_the_candle_kernels(config: &UNetConfig, [n, c, h, w]: [usize; 4]) {
        let models = pair(config, 11);
        let x = randn(&[n, c, h, w], DType::F32, 12);
        // A fixed smooth target, so that the loss falls steadily.
        let target = randn(&[n, config.num_classes, h, w], DType::F32, 13);
        let curves: Vec<Vec<f64>> = models
            .iter()
            .map(|(varmap, unet)| {
                let params = ParamsAdamW {
                    lr: 1e-2,
                    ..Default::default()
                };
                let mut opt = AdamW::new(unet.trainable_vars(varmap).unwrap(), params).unwrap();
                let mut rng = ChaCha8Rng::seed_from_u64(14);
                (0..6)
                    .map(|_| {
                        let logits = unet.forward_t(&x, &mut Mode::train(&mut rng)).unwrap();
                        let loss = (logits - &target)
                            .unwrap()
                            .sqr()
                            .unwrap()
                            .mean_all()
                            .unwrap();
                        opt.backward_step(&loss).unwrap();
                        f64::from(loss.to_scalar::<f32>().unwrap())
                    })
                    .collect()
            })
            .collect();
        assert!(
            curves[0].last() < curves[0].first(),
            "the loss must fall: {:?}",
            curves[0]
        );
        for (step, (a, b)) in curves[0].iter().zip(&curves[1]).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs(),
                "step {step}: loss {a} (lus) vs {b} (candle); curves {curves:?}"
            );
        }
    }
}

/// Every op's forward output and gradients are bit-identical whatever the number of threads:
/// the same computations inside rayon pools of 1, 3 and 5 threads, at batch 1 (row bands or
/// split GEMMs), 2 and 4 (fewer samples than threads: samples in parallel, GEMMs split over
/// the rest) and 6, on shapes of both convolution paths (direct kernels: >= 8 channels, >= 32
/// columns; im2col + GEMM: narrow or few channels, stride 2, 1x1) and of the fused blocks.
#[test]
fn results_do_not_depend_on_the_number_of_threads() {
    let run = |batch: usize| -> Vec<Vec<f64>> {
        let x = randn(&[batch, 8, 20, 40], DType::F32, 50);
        let second = randn(&[batch, 3, 20, 40], DType::F32, 51);
        let w3 = randn(&[12, 8, 3, 3], DType::F32, 52);
        let w_cat = randn(&[9, 11, 3, 3], DType::F32, 53);
        let b = randn(&[12], DType::F32, 54);
        let w_narrow = randn(&[8, 8, 3, 3], DType::F32, 55);
        let w_up = randn(&[8, 5, 2, 2], DType::F32, 56);
        let w_1x1 = randn(&[4, 8, 1, 1], DType::F32, 57);
        let mut params = double_conv_inputs([batch, 8, 10, 36], None, (8, 8, 3), DType::F32, 58);
        let x_block = params.remove(0);
        let mut inputs = vec![x, second, w3, w_cat, b, w_narrow, w_up, w_1x1, x_block];
        inputs.extend(params);
        let (out, grads) = grads_of(
            &inputs,
            |t| {
                let y_direct = conv2d(&t[0], &t[2], Some(&t[4]), 1, 1).unwrap();
                let y_cat = conv2d_concat(&t[0], &t[1], &t[3], 1, 1).unwrap();
                let narrow = t[0].narrow(3, 0, 12).unwrap().contiguous().unwrap();
                let y_narrow = conv2d(&narrow, &t[5], None, 1, 1).unwrap();
                let y_s2 = conv2d(&t[0], &t[5], None, 2, 1).unwrap();
                let y_up = conv_transpose2d_k2s2(&t[0], &t[6], None).unwrap();
                let y_1x1 = conv2d(&t[0], &t[7], None, 1, 0).unwrap();
                let y_block = double_conv_of(&t[8..], false);
                let flat: Vec<Tensor> = [y_direct, y_cat, y_narrow, y_s2, y_up, y_1x1, y_block]
                    .iter()
                    .map(|y| y.flatten_all().unwrap())
                    .collect();
                Tensor::cat(&flat, 0).unwrap()
            },
            59,
        );
        std::iter::once(values(&out))
            .chain(grads.iter().map(values))
            .collect()
    };
    for batch in [1, 2, 4, 6] {
        let in_pool = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run(batch))
        };
        let one = in_pool(1);
        for threads in [3, 5] {
            let many = in_pool(threads);
            for (i, (a, b)) in one.iter().zip(&many).enumerate() {
                assert!(
                    a == b,
                    "batch {batch}: output {i} differs between 1 and {threads} threads"
                );
            }
        }
    }
}
