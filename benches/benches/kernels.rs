//! The U-Net's CPU kernels: lus's custom ops (`lus_unet::cpu_ops`) against candle's own ops,
//! per layer shape and for the whole network, in the same run so that the ratios hold even on
//! a busy machine.
//!
//! - `conv3x3_fwd_cpu/{lus,candle}/{ci}x{co}@{px}` and `conv3x3_bwd_cpu/...`: one padded 3x3
//!   convolution of the U-Net (depth 4, base 16) at batch 8, 128 px input (the layer's own
//!   resolution after `@`); backward = gradients of input and weight of `sum(y * r)`.
//! - `conv3x3_{forward,grad_input,grad_weight}_kernel_cpu/{direct,gemm}/{ci}x{co}@{px}`: the
//!   three kernels of the same convolutions alone, on plain slices (no autograd graph, no
//!   loss): lus's direct AVX-512 kernels against its im2col + GEMM path (the process-wide
//!   switch `cpu_ops::set_direct_conv3x3`; `direct` falls back to GEMM where the direct
//!   kernels do not apply: fewer than 8 channels, narrow images, no AVX-512).
//! - `up2x2_{fwd,bwd}_cpu/...`: the decoder's 2x2 stride-2 transposed convolutions, with their
//!   bias (`lus`: added in the op, its gradient from the op's single backward pass;
//!   `lus-unfused`: lus's op without bias, then candle's broadcast add; `candle`).
//! - `concat_conv3x3_{fwd,bwd}_cpu/...`: the decoder's first convolution over the concatenated
//!   skip and up-sampled features (`lus`: `conv2d_concat`, no concatenation built;
//!   `lus-cat`: `Tensor::cat` then lus's `conv2d`; `candle`: cat then candle's conv).
//! - `conv1x1_bias_{fwd,bwd}_cpu/...`: the U-Net's 1x1 head with its bias (as for `up2x2`).
//! - `batch_norm_relu_{fwd,bwd}_cpu/...`: training-mode batch norm + ReLU, 8 x 16 x 128 x 128
//!   (`lus` fused, `lus-unfused` = lus batch norm then candle's ReLU, `candle`).
//! - `loss_overhead_cpu/candle/16@128`: the loss and its backward alone, included in every
//!   `*_bwd_cpu` figure of an output of that size (8 x 16 x 128 x 128).
//! - `unet_forward_cpu/{lus,candle}/b{batch}@{px}`: evaluation forward of the whole U-Net.
//! - `unet_train_step_cpu/...`: training forward + backward of `sum(logits * r)` (no optimiser).

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{BatchNorm, VarBuilder, VarMap};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lus_unet::cpu_ops::{
    batch_norm_train, conv_transpose2d_k2s2, conv2d, conv2d_concat, conv2d_raw, set_direct_conv3x3,
};
use lus_unet::{Kernels, Mode, UNet, UNetConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

const BATCH: usize = 8;

/// `len` standard-normal values from a seeded stream.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| StandardNormal.sample(&mut rng)).collect()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(values(shape.iter().product(), seed), shape, &Device::Cpu)
        .expect("shape matches")
}

/// Gradients of `sum(f(inputs) * r)` with respect to every input (forced to memory).
fn backward(inputs: &[Var], out: &Tensor, r: &Tensor) -> Vec<Tensor> {
    let grads = (out * r)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .expect("backward");
    inputs
        .iter()
        .map(|v| grads.get(v.as_tensor()).expect("gradient").clone())
        .collect()
}

/// (in channels, out channels, resolution) of the 3x3 convolutions of the depth-4 base-16
/// U-Net at 128 px: encoder levels, bottleneck, then the decoder's first convs (2C -> C).
const CONV_SHAPES: [(usize, usize, usize); 14] = [
    (1, 16, 128),
    (16, 16, 128),
    (16, 32, 64),
    (32, 32, 64),
    (32, 64, 32),
    (64, 64, 32),
    (64, 128, 16),
    (128, 128, 16),
    (128, 256, 8),
    (256, 256, 8),
    (256, 128, 16),
    (128, 64, 32),
    (64, 32, 64),
    (32, 16, 128),
];

fn bench_conv(c: &mut Criterion) {
    for (ci, co, px) in CONV_SHAPES {
        let x = Var::from_tensor(&randn(&[BATCH, ci, px, px], 1)).expect("var");
        let w = Var::from_tensor(&randn(&[co, ci, 3, 3], 2)).expect("var");
        let r = randn(&[BATCH, co, px, px], 3);
        let id = format!("{ci}x{co}@{px}");
        type ConvFn = fn(&Tensor, &Tensor) -> Tensor;
        let variants: [(&str, ConvFn); 2] = [
            ("lus", |x, w| conv2d(x, w, None, 1, 1).expect("conv")),
            ("candle", |x, w| x.conv2d(w, 1, 1, 1, 1).expect("conv")),
        ];
        let mut fwd = c.benchmark_group("conv3x3_fwd_cpu");
        for (name, f) in variants {
            fwd.bench_function(BenchmarkId::new(name, &id), |b| {
                b.iter(|| black_box(f(x.as_tensor(), w.as_tensor())))
            });
        }
        fwd.finish();
        let mut bwd = c.benchmark_group("conv3x3_bwd_cpu");
        for (name, f) in variants {
            let y = f(x.as_tensor(), w.as_tensor());
            bwd.bench_function(BenchmarkId::new(name, &id), |b| {
                b.iter(|| black_box(backward(&[x.clone(), w.clone()], &y, &r)))
            });
        }
        bwd.finish();
    }
}

fn bench_conv_kernels(c: &mut Criterion) {
    for (ci, co, px) in CONV_SHAPES {
        let (xs, ws) = ([BATCH, ci, px, px], [co, ci, 3, 3]);
        let x = values(BATCH * ci * px * px, 1);
        let w = values(co * ci * 9, 2);
        let dy = values(BATCH * co * px * px, 3);
        let id = format!("{ci}x{co}@{px}");
        type Kernel = fn([usize; 4], [usize; 4], &[f32], &[f32]) -> Vec<f32>;
        let kernels: [(&str, Kernel, [&[f32]; 2]); 3] = [
            (
                "conv3x3_forward_kernel_cpu",
                |xs, ws, x, w| conv2d_raw::forward(xs, ws, 1, 1, x, w).expect("conv"),
                [&x, &w],
            ),
            (
                "conv3x3_grad_input_kernel_cpu",
                |xs, ws, dy, w| conv2d_raw::grad_input(xs, ws, 1, 1, dy, w).expect("conv"),
                [&dy, &w],
            ),
            (
                "conv3x3_grad_weight_kernel_cpu",
                |xs, ws, x, dy| conv2d_raw::grad_weight(xs, ws, 1, 1, x, dy).expect("conv"),
                [&x, &dy],
            ),
        ];
        for (group_name, kernel, [a, b]) in kernels {
            let mut group = c.benchmark_group(group_name);
            for (name, direct) in [("direct", true), ("gemm", false)] {
                group.bench_function(BenchmarkId::new(name, &id), |bench| {
                    set_direct_conv3x3(direct);
                    bench.iter(|| black_box(kernel(xs, ws, a, b)))
                });
            }
            set_direct_conv3x3(true);
            group.finish();
        }
    }
}

/// `x + bias` with the bias broadcast over the channels (candle's way of adding a conv bias).
fn add_bias(x: Tensor, bias: &Tensor) -> Tensor {
    x.broadcast_add(&bias.reshape((1, (), 1, 1)).expect("reshape"))
        .expect("bias")
}

/// Three-input variants of one op, benchmarked forward and backward under `fwd`/`bwd`.
type Op3 = fn(&Tensor, &Tensor, &Tensor) -> Tensor;

fn bench_variants(
    c: &mut Criterion,
    (fwd_group, bwd_group): (&str, &str),
    id: &str,
    inputs: &[Var; 3],
    r: &Tensor,
    variants: &[(&str, Op3)],
) {
    let [a, b, w] = inputs.each_ref().map(|v| v.as_tensor().clone());
    let mut fwd = c.benchmark_group(fwd_group);
    for (name, f) in variants {
        fwd.bench_function(BenchmarkId::new(*name, id), |bench| {
            bench.iter(|| black_box(f(&a, &b, &w)))
        });
    }
    fwd.finish();
    let mut bwd = c.benchmark_group(bwd_group);
    for (name, f) in variants {
        let y = f(&a, &b, &w);
        bwd.bench_function(BenchmarkId::new(*name, id), |bench| {
            bench.iter(|| black_box(backward(inputs, &y, r)))
        });
    }
    bwd.finish();
}

fn bench_up(c: &mut Criterion) {
    for (ci, co, px) in [(256, 128, 8), (128, 64, 16), (64, 32, 32), (32, 16, 64)] {
        let x = Var::from_tensor(&randn(&[BATCH, ci, px, px], 1)).expect("var");
        let w = Var::from_tensor(&randn(&[ci, co, 2, 2], 2)).expect("var");
        let b = Var::from_tensor(&randn(&[co], 4)).expect("var");
        let r = randn(&[BATCH, co, 2 * px, 2 * px], 3);
        let variants: [(&str, Op3); 3] = [
            ("lus", |x, w, b| {
                conv_transpose2d_k2s2(x, w, Some(b)).expect("up")
            }),
            ("lus-unfused", |x, w, b| {
                add_bias(conv_transpose2d_k2s2(x, w, None).expect("up"), b)
            }),
            ("candle", |x, w, b| {
                add_bias(x.conv_transpose2d(w, 0, 0, 2, 1).expect("up"), b)
            }),
        ];
        bench_variants(
            c,
            ("up2x2_fwd_cpu", "up2x2_bwd_cpu"),
            &format!("{ci}x{co}@{px}"),
            &[x, w, b],
            &r,
            &variants,
        );
    }
}

/// The decoder's first convolutions (skip C + up-sampled C channels -> C) at 128 px, batch 8.
fn bench_concat_conv(c: &mut Criterion) {
    for (ch, px) in [(16, 128), (32, 64), (128, 16)] {
        let skip = Var::from_tensor(&randn(&[BATCH, ch, px, px], 1)).expect("var");
        let up = Var::from_tensor(&randn(&[BATCH, ch, px, px], 2)).expect("var");
        let w = Var::from_tensor(&randn(&[ch, 2 * ch, 3, 3], 3)).expect("var");
        let r = randn(&[BATCH, ch, px, px], 4);
        let variants: [(&str, Op3); 3] = [
            ("lus", |s, u, w| conv2d_concat(s, u, w, 1, 1).expect("conv")),
            ("lus-cat", |s, u, w| {
                conv2d(&Tensor::cat(&[s, u], 1).expect("cat"), w, None, 1, 1).expect("conv")
            }),
            ("candle", |s, u, w| {
                Tensor::cat(&[s, u], 1)
                    .and_then(|x| x.conv2d(w, 1, 1, 1, 1))
                    .expect("conv")
            }),
        ];
        bench_variants(
            c,
            ("concat_conv3x3_fwd_cpu", "concat_conv3x3_bwd_cpu"),
            &format!("{ch}+{ch}x{ch}@{px}"),
            &[skip, up, w],
            &r,
            &variants,
        );
    }
}

/// The U-Net's 1x1 head with its bias, 16 -> 6 channels at 128 px, batch 8.
fn bench_head(c: &mut Criterion) {
    let (ci, co, px) = (16, 6, 128);
    let x = Var::from_tensor(&randn(&[BATCH, ci, px, px], 1)).expect("var");
    let w = Var::from_tensor(&randn(&[co, ci, 1, 1], 2)).expect("var");
    let b = Var::from_tensor(&randn(&[co], 3)).expect("var");
    let r = randn(&[BATCH, co, px, px], 4);
    let variants: [(&str, Op3); 3] = [
        ("lus", |x, w, b| conv2d(x, w, Some(b), 1, 0).expect("conv")),
        ("lus-unfused", |x, w, b| {
            add_bias(conv2d(x, w, None, 1, 0).expect("conv"), b)
        }),
        ("candle", |x, w, b| {
            add_bias(x.conv2d(w, 0, 1, 1, 1).expect("conv"), b)
        }),
    ];
    bench_variants(
        c,
        ("conv1x1_bias_fwd_cpu", "conv1x1_bias_bwd_cpu"),
        &format!("{ci}x{co}@{px}"),
        &[x, w, b],
        &r,
        &variants,
    );
}

fn bench_batch_norm(c: &mut Criterion) {
    let (ch, px) = (16, 128);
    let x = Var::from_tensor(&randn(&[BATCH, ch, px, px], 1)).expect("var");
    let gamma =
        Var::from_tensor(&Tensor::ones(ch, DType::F32, &Device::Cpu).expect("ones")).expect("var");
    let beta = Var::from_tensor(&Tensor::zeros(ch, DType::F32, &Device::Cpu).expect("zeros"))
        .expect("var");
    let r = randn(&[BATCH, ch, px, px], 3);
    let candle_bn = BatchNorm::new(
        ch,
        Tensor::zeros(ch, DType::F32, &Device::Cpu).expect("zeros"),
        Tensor::ones(ch, DType::F32, &Device::Cpu).expect("ones"),
        gamma.as_tensor().clone(),
        beta.as_tensor().clone(),
        1e-5,
    )
    .expect("bn");
    let lus = || {
        batch_norm_train(
            x.as_tensor(),
            gamma.as_tensor(),
            beta.as_tensor(),
            1e-5,
            true,
        )
        .expect("bn")
        .0
    };
    // The same op without the fused ReLU, followed by candle's: what the fusion saves.
    let lus_unfused = || {
        batch_norm_train(
            x.as_tensor(),
            gamma.as_tensor(),
            beta.as_tensor(),
            1e-5,
            false,
        )
        .and_then(|(y, _)| y.relu())
        .expect("bn")
    };
    let candle = || {
        candle_bn
            .forward_train(x.as_tensor())
            .and_then(|y| y.relu())
            .expect("bn")
    };
    let id = format!("{ch}@{px}");
    let mut fwd = c.benchmark_group("batch_norm_relu_fwd_cpu");
    fwd.bench_function(BenchmarkId::new("lus", &id), |b| {
        b.iter(|| black_box(lus()))
    });
    fwd.bench_function(BenchmarkId::new("lus-unfused", &id), |b| {
        b.iter(|| black_box(lus_unfused()))
    });
    fwd.bench_function(BenchmarkId::new("candle", &id), |b| {
        b.iter(|| black_box(candle()))
    });
    fwd.finish();
    let inputs = [x.clone(), gamma.clone(), beta.clone()];
    let mut bwd = c.benchmark_group("batch_norm_relu_bwd_cpu");
    let y = lus();
    bwd.bench_function(BenchmarkId::new("lus", &id), |b| {
        b.iter(|| black_box(backward(&inputs, &y, &r)))
    });
    let y = lus_unfused();
    bwd.bench_function(BenchmarkId::new("lus-unfused", &id), |b| {
        b.iter(|| black_box(backward(&inputs, &y, &r)))
    });
    let y = candle();
    bwd.bench_function(BenchmarkId::new("candle", &id), |b| {
        b.iter(|| black_box(backward(&inputs, &y, &r)))
    });
    bwd.finish();
}

/// The part of every `*_bwd_cpu` figure that is not the op's backward: the loss
/// `sum(y * r)` and its own backward on a tensor of the size of the BN bench (candle ops,
/// the same for both kernel sets). Subtract it to compare backward passes alone.
fn bench_loss_overhead(c: &mut Criterion) {
    let y = Var::from_tensor(&randn(&[BATCH, 16, 128, 128], 1)).expect("var");
    let r = randn(&[BATCH, 16, 128, 128], 3);
    let mut group = c.benchmark_group("loss_overhead_cpu");
    group.bench_function(BenchmarkId::new("candle", "16@128"), |b| {
        b.iter(|| black_box(backward(std::slice::from_ref(&y), y.as_tensor(), &r)))
    });
    group.finish();
}

fn unet(kernels: Kernels) -> (VarMap, UNet) {
    let config = UNetConfig {
        num_classes: 6,
        depth: 4,
        base_channels: 16,
        kernels,
        ..Default::default()
    };
    let varmap = VarMap::new();
    let unet = UNet::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .expect("valid config");
    unet.init_weights(&varmap, &mut ChaCha8Rng::seed_from_u64(0))
        .expect("init");
    (varmap, unet)
}

fn bench_unet(c: &mut Criterion) {
    let sizes: Vec<usize> = match std::env::var("LUS_BENCH_UNET_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        Err(_) => vec![128],
    };
    for px in sizes {
        for batch in [1, BATCH] {
            let x = randn(&[batch, 1, px, px], 1);
            let r = randn(&[batch, 6, px, px], 2);
            let id = format!("b{batch}@{px}");
            let models = [
                ("lus", unet(Kernels::Lus)),
                ("candle", unet(Kernels::Candle)),
            ];
            let mut fwd = c.benchmark_group("unet_forward_cpu");
            fwd.sample_size(10);
            for (name, (_, net)) in &models {
                fwd.bench_function(BenchmarkId::new(*name, &id), |b| {
                    b.iter(|| black_box(net.forward_t(&x, &mut Mode::Eval).expect("forward")))
                });
            }
            fwd.finish();
            let mut step = c.benchmark_group("unet_train_step_cpu");
            step.sample_size(10);
            step.measurement_time(Duration::from_secs(20));
            for (name, (varmap, net)) in &models {
                let vars = net.trainable_vars(varmap).expect("vars");
                step.bench_function(BenchmarkId::new(*name, &id), |b| {
                    b.iter(|| {
                        let mut rng = ChaCha8Rng::seed_from_u64(3);
                        let logits = net
                            .forward_t(&x, &mut Mode::train(&mut rng))
                            .expect("forward");
                        black_box(backward(&vars, &logits, &r))
                    })
                });
            }
            step.finish();
        }
    }
}

criterion_group! {
    name = kernels;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_conv, bench_conv_kernels, bench_up, bench_concat_conv, bench_head, bench_batch_norm,
        bench_loss_overhead, bench_unet
}
criterion_main!(kernels);
