//! Timing of the U-Net on the CPU with lus's kernels and with candle's ops, interleaved round by
//! round in one run so that the ratio holds on a busy machine: eval forward, train forward,
//! train forward + backward of `sum(logits * r)`, and a full training step (forward,
//! cross-entropy, backward, AdamW). Prints the median of the rounds and the GEMM-equivalent
//! GFLOP/s (convolution FLOPs only: `2 * MACs`, backward counted as twice the forward).
//!
//! `cargo run --release -p lus-unet --example unet_timing [batch] [size] [rounds] [kernels]`
//! with `kernels` = `both` (default), `lus` or `candle`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use lus_unet::{Kernels, Mode, UNet, UNetConfig};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| -> Result<usize, std::num::ParseIntError> {
        args.get(i).map_or(Ok(default), |a| a.parse())
    };
    let batch = arg(0, 8)?;
    let size = arg(1, 128)?;
    let rounds = arg(2, 5)?;
    let kernel_sets: Vec<Kernels> = match args.get(3).map(String::as_str) {
        None | Some("both") => vec![Kernels::Lus, Kernels::Candle],
        Some("lus") => vec![Kernels::Lus],
        Some("candle") => vec![Kernels::Candle],
        Some(other) => {
            return Err(format!("kernels must be both, lus or candle, got {other}").into());
        }
    };
    let device = Device::Cpu;
    let classes = 6;
    let base = UNetConfig {
        num_classes: classes,
        ..Default::default()
    };
    let n = batch * size * size;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let pixels: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    let x = Tensor::from_vec(pixels, (batch, 1, size, size), &device)?;
    let labels: Vec<u32> = (0..n)
        .map(|_| rng.random_range(0..classes as u32))
        .collect();
    let labels = Tensor::from_vec(labels, n, &device)?;
    let r = Tensor::randn(0f32, 1.0, (batch, classes, size, size), &device)?;
    let macs = base.forward_macs(batch, size);
    println!(
        "{batch} x 1 x {size} x {size}, depth {}, base {}, {classes} classes, {:?}, {:?}; \
         {:.2} GFLOP per forward, {:.2} per training step; {} rayon threads; median of {rounds}",
        base.depth,
        base.base_channels,
        base.norm,
        base.upsampling,
        2.0 * macs / 1e9,
        6.0 * macs / 1e9,
        rayon::current_num_threads(),
    );

    struct Net {
        kernels: Kernels,
        unet: UNet,
        optimizer: AdamW,
    }
    let mut nets = Vec::new();
    for kernels in kernel_sets {
        let config = UNetConfig {
            kernels,
            ..base.clone()
        };
        let varmap = VarMap::new();
        let unet = UNet::new(
            &config,
            VarBuilder::from_varmap(&varmap, DType::F32, &device),
        )?;
        unet.init_weights(&varmap, &mut ChaCha8Rng::seed_from_u64(1))?;
        let optimizer = AdamW::new(unet.trainable_vars(&varmap)?, ParamsAdamW::default())?;
        nets.push(Net {
            kernels,
            unet,
            optimizer,
        });
    }

    type Task = fn(&mut Net, &Tensor, &Tensor, &Tensor) -> candle_core::Result<()>;
    let tasks: [(&str, f64, Task); 4] = [
        ("forward (eval)", 2.0, |net, x, _, _| {
            net.unet
                .forward_t(x, &mut Mode::Eval)?
                .sum_all()?
                .to_scalar::<f32>()
                .map(|_| ())
        }),
        ("forward (train)", 2.0, |net, x, _, _| {
            let mut rng = ChaCha8Rng::seed_from_u64(2);
            net.unet
                .forward_t(x, &mut Mode::train(&mut rng))?
                .sum_all()?
                .to_scalar::<f32>()
                .map(|_| ())
        }),
        ("train fwd + bwd of sum(logits*r)", 6.0, |net, x, _, r| {
            let mut rng = ChaCha8Rng::seed_from_u64(2);
            let logits = net.unet.forward_t(x, &mut Mode::train(&mut rng))?;
            (logits * r)?.sum_all()?.backward().map(|_| ())
        }),
        (
            "train step (fwd + CE + bwd + AdamW)",
            6.0,
            |net, x, labels, _| {
                let mut rng = ChaCha8Rng::seed_from_u64(2);
                let logits = net.unet.forward_t(x, &mut Mode::train(&mut rng))?;
                let (b, c, h, w) = logits.dims4()?;
                let flat = logits.permute((0, 2, 3, 1))?.reshape((b * h * w, c))?;
                let loss = candle_nn::loss::cross_entropy(&flat, labels)?;
                net.optimizer.backward_step(&loss)
            },
        ),
    ];
    for (label, flops_per_mac, task) in tasks {
        let mut times = vec![Vec::new(); nets.len()];
        for net in nets.iter_mut() {
            task(net, &x, &labels, &r)?; // warm-up (scratch buffers, page faults)
        }
        for _ in 0..rounds {
            for (net, t) in nets.iter_mut().zip(times.iter_mut()) {
                let start = Instant::now();
                task(net, &x, &labels, &r)?;
                t.push(start.elapsed().as_secs_f64());
            }
        }
        let medians: Vec<f64> = times.into_iter().map(median).collect();
        for (net, m) in nets.iter().zip(&medians) {
            println!(
                "{label:<38} {:<7} {:9.1} ms {:7.1} GFLOP/s",
                format!("{:?}", net.kernels).to_lowercase(),
                m * 1e3,
                flops_per_mac * macs / m / 1e9
            );
        }
        if medians.len() == 2 {
            println!("{label:<38} candle / lus = {:.2}x", medians[1] / medians[0]);
        }
    }
    Ok(())
}
