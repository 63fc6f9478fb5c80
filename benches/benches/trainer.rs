//! What the trainer's failure policy and mid-epoch checkpoints cost, on the CPU.
//!
//! Two problem sizes: `tiny` (32 px, depth 2, 8 base channels, batch 4, 3 classes: the training
//! tests' problem) and `quick` (64 px, depth 3, 8 base channels, batch 8, 9 classes: the quick
//! study's pretraining).
//!
//! - `trainer_overhead_cpu/step/{tiny,quick}`: one training step (loss, backward, optimiser
//!   step, loss read back): what the two below are compared with. Throughput: steps (checks)
//!   per second.
//! - `trainer_overhead_cpu/gradient_check/{tiny,quick}`: the per-step gradient check
//!   (`Optimizer::gradient_sums`: one sum per parameter tensor, stacked, read back).
//! - `trainer_overhead_cpu/checkpoint_save/{tiny,quick}`: one `last/`-style checkpoint (staged
//!   folder: model weights, optimiser state, `trainer.json`; committed in place of the previous
//!   one). Throughput is the checkpoint's size in bytes.
//! - `trainer_fit_cpu/{epoch-end,every-step}/9steps`: `Trainer::fit` end to end on the tiny
//!   problem, 3 epochs of 3 steps (12 training, 4 validation examples), with a checkpoint at
//!   epoch ends only and with one after every step: 6 checkpoints more; the difference / 6 is
//!   what one mid-epoch checkpoint costs.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lus_data::augment::Normalize;
use lus_data::loader::{LoaderConfig, SegBatch, SegmentationLoader, SegmentationSource};
use lus_io::{StagedDir, write_atomic};
use lus_train::{
    DeviceSpec, LossConfig, LrSchedule, Optimizer, OptimizerConfig, Resume, SegmentationTask, Task,
    TrainConfig, Trainer,
};
use lus_unet::{Mode, Norm, UNetConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

// The training tests' data set and loader source, shared rather than copied.
#[path = "../../crates/lus-train/tests/common/mod.rs"]
mod training_fixtures;
use training_fixtures::{source, synthetic_examples};

/// The tiny problem's image side and classes (the training tests' problem).
const TINY_SIDE: u32 = training_fixtures::SIDE;
const TINY_CLASSES: usize = training_fixtures::CLASSES;

fn tiny_unet() -> UNetConfig {
    UNetConfig {
        num_classes: TINY_CLASSES,
        depth: 2,
        base_channels: 8,
        norm: Norm::Batch,
        ..UNetConfig::default()
    }
}

fn quick_unet() -> UNetConfig {
    UNetConfig {
        num_classes: 9,
        depth: 3,
        base_channels: 8,
        norm: Norm::Batch,
        ..UNetConfig::default()
    }
}

fn class_names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("c{i}")).collect()
}

/// Writes a `last/`-style checkpoint of `task` and `optimizer` into `dir/last`.
fn save_checkpoint(task: &SegmentationTask, optimizer: &Optimizer, dir: &Path) {
    let stage = StagedDir::open_fresh(&dir.join("last")).expect("stage");
    lus_unet::save_weights(task.varmap(), stage.path().join("model.safetensors")).expect("weights");
    optimizer.save(stage.path()).expect("optimizer state");
    write_atomic(&stage.path().join("trainer.json"), b"{}").expect("trainer.json");
    stage.commit(true).expect("commit");
}

fn bench_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("trainer_overhead_cpu");
    for (name, unet, side, batch) in [
        ("tiny", tiny_unet(), TINY_SIDE as usize, 4),
        ("quick", quick_unet(), 64, 8),
    ] {
        let mut task = SegmentationTask::new(
            &unet,
            &LossConfig::default(),
            class_names(unet.num_classes),
            &Device::Cpu,
            1,
        )
        .expect("task");
        let images = Tensor::randn(0f32, 1.0, (batch, 1, side, side), &Device::Cpu).expect("randn");
        let masks = Tensor::zeros((batch, side, side), DType::U32, &Device::Cpu).expect("zeros");
        let batch = SegBatch {
            images,
            masks,
            indices: (0..batch).collect(),
        };
        let mut optimizer = Optimizer::new(
            OptimizerConfig::default(),
            1e-4,
            task.param_groups().expect("param groups"),
        )
        .expect("optimizer");

        group.throughput(Throughput::Elements(1));
        let mut round = 0u64;
        group.bench_function(BenchmarkId::new("step", name), |b| {
            b.iter(|| {
                round += 1;
                let mut rng = ChaCha8Rng::seed_from_u64(round);
                let loss = task
                    .train_loss(&batch, &mut Mode::train(&mut rng))
                    .expect("loss");
                let grads = loss.backward().expect("backward");
                optimizer.step(&grads, 1e-3).expect("step");
                black_box(loss.to_scalar::<f32>().expect("scalar"))
            })
        });

        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let grads = task
            .train_loss(&batch, &mut Mode::train(&mut rng))
            .expect("loss")
            .backward()
            .expect("backward");
        group.bench_function(BenchmarkId::new("gradient_check", name), |b| {
            b.iter(|| {
                let (sums, _) = optimizer
                    .gradient_sums(&grads)
                    .expect("gradient sums")
                    .expect("every parameter has a gradient");
                black_box(
                    sums.to_dtype(DType::F64)
                        .and_then(|s| s.to_vec1::<f64>())
                        .expect("read back"),
                )
            })
        });

        let dir = tempfile::tempdir().expect("temporary folder");
        save_checkpoint(&task, &optimizer, dir.path());
        let bytes: u64 = std::fs::read_dir(dir.path().join("last"))
            .expect("checkpoint folder")
            .map(|e| e.and_then(|e| e.metadata()).expect("metadata").len())
            .sum();
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(BenchmarkId::new("checkpoint_save", name), |b| {
            b.iter(|| save_checkpoint(&task, &optimizer, dir.path()))
        });
    }
    group.finish();
}

fn loader(
    config: &TrainConfig,
    source: Arc<dyn SegmentationSource>,
    shuffle: bool,
) -> SegmentationLoader {
    SegmentationLoader::new(
        source,
        LoaderConfig {
            batch_size: config.batch_size,
            size: TINY_SIDE,
            shuffle,
            drop_last: false,
            prefetch: 2,
            augment: None,
            normalize: Normalize::PerImage,
        },
        config.seed,
        Device::Cpu,
    )
    .expect("loader")
}

fn train_config(checkpoint_every_steps: u64) -> TrainConfig {
    TrainConfig {
        epochs: 3,
        batch_size: 4,
        optimizer: OptimizerConfig::default(),
        lr: 1e-2,
        weight_decay: 1e-4,
        schedule: LrSchedule::Constant,
        loss: LossConfig::default(),
        grad_clip_norm: None,
        seed: 2,
        device: DeviceSpec::Cpu,
        best_metric: Some("val_miou".to_string()),
        best_direction: None,
        log_every: 2,
        checkpoint_every_steps,
    }
}

fn bench_fit(c: &mut Criterion) {
    let examples = synthetic_examples(16, 1);
    let mut group = c.benchmark_group("trainer_fit_cpu");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for (name, every) in [("epoch-end", 0u64), ("every-step", 1)] {
        let config = train_config(every);
        let train = loader(&config, source(&examples[..12]), true);
        let val = loader(&config, source(&examples[12..]), false);
        group.bench_function(BenchmarkId::new(name, "9steps"), |b| {
            b.iter_batched(
                || {
                    let task = SegmentationTask::new(
                        &tiny_unet(),
                        &config.loss,
                        class_names(TINY_CLASSES),
                        &Device::Cpu,
                        config.seed,
                    )
                    .expect("task");
                    (task, tempfile::tempdir().expect("temporary folder"))
                },
                |(mut task, dir)| {
                    let summary = Trainer::new(config.clone(), dir.path())
                        .expect("trainer")
                        .with_progress_bar(false)
                        .fit(&mut task, &train, &val, Resume::Never)
                        .expect("fit");
                    // Returned, so the folder is removed outside the timing.
                    (summary, dir)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = trainer;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_overhead, bench_fit
}
criterion_main!(trainer);
