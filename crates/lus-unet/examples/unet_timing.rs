//! Scratch timing of the U-Net on the CPU: eval forward, train forward, and a training step
//! (forward, cross-entropy, backward, AdamW) for the default-sized network.
//!
//! `cargo run --release -p lus-unet --example unet_timing [batch] [size] [repeats]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use lus_unet::{Mode, UNet, UNetConfig};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let batch = args.first().copied().unwrap_or(8);
    let size = args.get(1).copied().unwrap_or(128);
    let repeats = args.get(2).copied().unwrap_or(3);
    let device = if cfg!(feature = "cuda") {
        Device::new_cuda(0)?
    } else {
        Device::Cpu
    };
    let config = UNetConfig {
        num_classes: 6,
        ..Default::default()
    };
    let varmap = VarMap::new();
    let unet = UNet::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    unet.init_weights(&varmap, &mut rng)?;
    let n = batch * size * size;
    let pixels: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    let x = Tensor::from_vec(pixels, (batch, 1, size, size), &device)?;
    let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..6u32)).collect();
    let labels = Tensor::from_vec(labels, n, &device)?;
    let mut optimizer = AdamW::new(unet.trainable_vars(&varmap)?, ParamsAdamW::default())?;
    println!(
        "{batch} x 1 x {size} x {size}, depth {}, base {}, {} classes, {:?}, {:?}; {} trainable parameters; {device:?}",
        config.depth,
        config.base_channels,
        config.num_classes,
        config.norm,
        config.upsampling,
        unet.num_trainable_parameters()
    );

    let time =
        |label: &str, f: &mut dyn FnMut() -> candle_core::Result<()>| -> candle_core::Result<()> {
            f()?; // warm-up
            let start = Instant::now();
            for _ in 0..repeats {
                f()?;
            }
            let ms = start.elapsed().as_secs_f64() * 1e3 / repeats as f64;
            println!("{label:<40} {ms:9.1} ms");
            Ok(())
        };
    time("forward (eval)", &mut || {
        unet.forward_t(&x, &mut Mode::Eval)?
            .sum_all()?
            .to_scalar::<f32>()
            .map(|_| ())
    })?;
    time("forward (train)", &mut || {
        let mut r = ChaCha8Rng::seed_from_u64(1);
        unet.forward_t(&x, &mut Mode::train(&mut r))?
            .sum_all()?
            .to_scalar::<f32>()
            .map(|_| ())
    })?;
    time("train step (fwd + CE + bwd + AdamW)", &mut || {
        let mut r = ChaCha8Rng::seed_from_u64(1);
        let logits = unet.forward_t(&x, &mut Mode::train(&mut r))?;
        let flat = logits.permute((0, 2, 3, 1))?.reshape((n, 6))?;
        let loss = candle_nn::loss::cross_entropy(&flat, &labels)?;
        optimizer.backward_step(&loss)
    })?;
    time("  of which encode (eval)", &mut || {
        unet.encode(&x, &mut Mode::Eval)?
            .bottleneck
            .sum_all()?
            .to_scalar::<f32>()
            .map(|_| ())
    })?;
    let encoded = unet.encode(&x, &mut Mode::Eval)?;
    time("  of which decode (eval)", &mut || {
        unet.decode(&encoded, &mut Mode::Eval)?
            .sum_all()?
            .to_scalar::<f32>()
            .map(|_| ())
    })?;
    let features = encoded.skips[0].clone();
    time("max_pool2x2 of level-0 features", &mut || {
        lus_unet::max_pool2x2(&features)?
            .sum_all()?
            .to_scalar::<f32>()
            .map(|_| ())
    })?;
    time("candle max_pool2d of level-0 features", &mut || {
        features
            .max_pool2d(2)?
            .sum_all()?
            .to_scalar::<f32>()
            .map(|_| ())
    })?;
    Ok(())
}
