//! What the failure policy and mid-epoch checkpoints cost per step, printed, never asserted
//! (timings depend on the machine): `cargo test -p lus-train --test overhead -- --ignored
//! --nocapture`. Two sizes: the tiny test problem (32 px, depth 2, 8 base channels, batch 4)
//! and the quick study's pretraining (64 px, depth 3, 8 base channels, batch 8, 9 classes).

mod common;

use std::time::Instant;

use candle_core::{Device, Tensor};
use common::*;
use lus_data::Mask;
use lus_train::{
    LossConfig, Optimizer, OptimizerConfig, SegmentationTask, Task, TrainConfig, Trainer,
};
use lus_unet::{Mode, Norm, UNetConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// Median milliseconds of a training step without and with the gradient check (the
/// per-parameter sums and their read-back), and of one `last/`-style checkpoint save.
fn measure(name: &str, unet: &UNetConfig, side: usize, batch: usize) {
    let task_config = LossConfig::default();
    let classes: Vec<String> = (0..unet.num_classes).map(|i| format!("c{i}")).collect();
    let mut task = SegmentationTask::new(unet, &task_config, classes, &Device::Cpu, 1).unwrap();
    let images = Tensor::randn(0f32, 1.0, (batch, 1, side, side), &Device::Cpu).unwrap();
    let masks = Tensor::zeros((batch, side, side), candle_core::DType::U32, &Device::Cpu).unwrap();
    let batch = lus_data::loader::SegBatch {
        images,
        masks,
        indices: (0..batch).collect(),
    };
    let mut optimizer = Optimizer::new(
        OptimizerConfig::default(),
        1e-4,
        task.param_groups().unwrap(),
    )
    .unwrap();
    let (mut steps, mut checks) = (Vec::new(), Vec::new());
    for round in 0..40 {
        let mut rng = ChaCha8Rng::seed_from_u64(round);
        let start = Instant::now();
        let loss = task.train_loss(&batch, &mut Mode::train(&mut rng)).unwrap();
        let grads = loss.backward().unwrap();
        optimizer.step(&grads, 1e-3).unwrap();
        let _ = loss.to_scalar::<f32>().unwrap();
        let step = ms(start);
        let start = Instant::now();
        let (sums, _) = optimizer.gradient_sums(&grads).unwrap().unwrap();
        let values = sums
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!(values.iter().all(|v| v.is_finite()));
        let check = ms(start);
        if round >= 5 {
            steps.push(step);
            checks.push(check);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut saves = Vec::new();
    for _ in 0..15 {
        let start = Instant::now();
        let stage = lus_data::io::StagedDir::open_fresh(&dir.path().join("last")).unwrap();
        lus_unet::save_weights(task.varmap(), stage.path().join("model.safetensors")).unwrap();
        optimizer.save(stage.path()).unwrap();
        lus_data::io::write_atomic(&stage.path().join("trainer.json"), b"{}").unwrap();
        stage.commit(true).unwrap();
        saves.push(ms(start));
    }
    let bytes: u64 = std::fs::read_dir(dir.path().join("last"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let (step, check, save) = (median(steps), median(checks), median(saves));
    println!(
        "{name}: {} parameters in {} tensors; step {step:.2} ms, gradient check {check:.3} ms \
         ({:.1}% of a step); checkpoint save {save:.1} ms ({:.0} KiB; {:.1} steps' worth)",
        optimizer
            .params()
            .map(|(_, v)| v.elem_count())
            .sum::<usize>(),
        optimizer.params().count(),
        100.0 * check / step,
        bytes as f64 / 1024.0,
        save / step
    );
}

#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn gradient_check_and_checkpoint_costs() {
    measure(
        "tiny (32 px, depth 2, 8 ch, batch 4)",
        &unet_config(),
        32,
        4,
    );
    let quick = UNetConfig {
        num_classes: 9,
        depth: 3,
        base_channels: 8,
        norm: Norm::Batch,
        ..UNetConfig::default()
    };
    measure("quick (64 px, depth 3, 8 ch, batch 8)", &quick, 64, 8);
}

/// The end-to-end cost: the same run with a checkpoint at every step and at epoch ends only.
#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn checkpoint_every_step_end_to_end() {
    let examples: Vec<(Mask, Mask)> = synthetic_examples(16, 1);
    let mut walls = [Vec::new(), Vec::new()];
    for round in 0..5 {
        for (i, every) in [0u64, 1].into_iter().enumerate() {
            let config = TrainConfig {
                checkpoint_every_steps: every,
                ..train_config(3, 2)
            };
            let (train, val) = loaders(&config, source(&examples[..12]), source(&examples[12..]));
            let mut task = task(&config);
            let dir = tempfile::tempdir().unwrap();
            let start = Instant::now();
            Trainer::new(config, dir.path())
                .unwrap()
                .fit(&mut task, &train, &val, lus_train::Resume::Never)
                .unwrap();
            if round > 0 {
                walls[i].push(ms(start));
            }
        }
    }
    // 3 epochs of 3 steps: every step adds 2 checkpoints per epoch to the epoch-end one.
    let (plain, every) = (median(walls[0].clone()), median(walls[1].clone()));
    println!(
        "9 steps: {plain:.0} ms with epoch-end checkpoints, {every:.0} ms with one every step: \
         {:.1} ms per extra checkpoint",
        (every - plain) / 6.0
    );
}
