//! Scratch timing of one segmentation training step as the trainer runs it: forward in training
//! mode, cross-entropy (+ Dice), backward, lus-train's AdamW, on random data.
//!
//! `cargo run --release -p lus-train --example train_step_timing [device] [repeats]`
//!
//! Two nets: the paper-sized default (depth 4, base 16, 9 classes) at batch 8 x 128 px, and a
//! quick-study net (depth 3, base 8) at batch 8 x 64 px.

use std::time::Instant;

use candle_core::{DType, Tensor};
use lus_data::loader::SegBatch;
use lus_train::{
    LossConfig, Optimizer, OptimizerConfig, SegmentationTask, Task, parse_device,
    rng::{Stream, stream_rng},
};
use lus_unet::{Mode, UNetConfig};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let device = parse_device(args.first().map(String::as_str).unwrap_or("auto"))?;
    let repeats: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let cases = [
        ("paper: depth 4, base 16", 4, 16, 128),
        ("quick: depth 3, base 8", 3, 8, 64),
    ];
    let classes = 9;
    let names: Vec<String> = (0..classes).map(|i| format!("c{i}")).collect();
    for (label, depth, base, size) in cases {
        for loss in [
            LossConfig::default(),
            LossConfig {
                dice_weight: 1.0,
                ..Default::default()
            },
        ] {
            let config = UNetConfig {
                depth,
                base_channels: base,
                num_classes: classes,
                ..Default::default()
            };
            let mut task = SegmentationTask::new(&config, &loss, names.clone(), &device, 0)?;
            let mut optimizer =
                Optimizer::new(OptimizerConfig::default(), 1e-4, task.param_groups()?)?;
            let batch = 8;
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let n = batch * size * size;
            let pixels: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0f32)).collect();
            let labels: Vec<u32> = (0..n)
                .map(|_| rng.random_range(0..classes as u32))
                .collect();
            let seg = SegBatch {
                images: Tensor::from_vec(pixels, (batch, 1, size, size), &device)?,
                masks: Tensor::from_vec(labels, (batch, size, size), &device)?,
                indices: (0..batch).collect(),
            };
            train_step(&mut task, &mut optimizer, &seg, 0)?; // warm-up
            // Synchronise before and after: read one weight back.
            sync(&task)?;
            let start = Instant::now();
            for s in 1..=repeats as u64 {
                train_step(&mut task, &mut optimizer, &seg, s)?;
            }
            sync(&task)?;
            let ms = start.elapsed().as_secs_f64() * 1e3 / repeats as f64;
            println!(
                "{label}, batch {batch} x {size} px, {} trainable params, loss {}: {ms:8.1} ms/step, {:7.1} images/s ({})",
                task.unet().num_trainable_parameters(),
                if loss.dice_weight > 0.0 {
                    "CE + Dice"
                } else {
                    "CE"
                },
                batch as f64 * 1e3 / ms,
                lus_train::device_name(&device),
            );
        }
    }
    Ok(())
}

fn train_step(
    task: &mut SegmentationTask,
    optimizer: &mut Optimizer,
    batch: &SegBatch,
    step: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut dropout = stream_rng(0, Stream::Dropout, 0, step);
    let loss = task.train_loss(batch, &mut Mode::train(&mut dropout))?;
    let grads = loss.backward()?;
    optimizer.step(&grads, 1e-3)?;
    Ok(())
}

/// Waits for the device: reads one weight back.
fn sync(task: &SegmentationTask) -> Result<(), Box<dyn std::error::Error>> {
    let var = task.unet().trainable_vars(task.varmap())?[0].clone();
    var.as_tensor()
        .sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    Ok(())
}
