//! Shared pieces of the training tests: a tiny synthetic "scanner-like" data set and small
//! run configurations.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use lus_data::Mask;
use lus_data::augment::Normalize;
use lus_data::loader::{InMemorySource, LoaderConfig, SegmentationLoader, SegmentationSource};
use lus_train::{LossConfig, LrSchedule, OptimizerConfig, SegmentationTask, TrainConfig};
use lus_unet::{Norm, UNetConfig};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const SIDE: u32 = 32;
pub const CLASSES: usize = 3;

pub fn class_names() -> Vec<String> {
    ["background", "pleural-line", "b-line"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `count` images of `SIDE x SIDE`: a dark speckled background (class 0), a bright horizontal
/// "pleural line" two pixels thick at a random depth (class 1) and, below it, a vertical
/// medium-bright "B-line" three pixels wide at a random column running to the bottom (class 2).
/// The classes are told apart by brightness and shape, as in a B-mode frame.
pub fn synthetic_examples(count: usize, seed: u64) -> Vec<(Mask, Mask)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let line_y = rng.random_range(6..14u32);
            let b_x = rng.random_range(4..SIDE - 7);
            let mut labels = Mask::filled(SIDE, SIDE, 0);
            let mut pixels = Mask::filled(SIDE, SIDE, 0);
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let class = if (line_y..line_y + 2).contains(&y) {
                        1
                    } else if y >= line_y + 2 && (b_x..b_x + 3).contains(&x) {
                        2
                    } else {
                        0
                    };
                    let base: i32 = match class {
                        1 => 220,
                        2 => 140,
                        _ => 40,
                    };
                    let noise = rng.random_range(-25..=25i32);
                    labels.set(x, y, class);
                    pixels.set(x, y, (base + noise).clamp(0, 255) as u8);
                }
            }
            (pixels, labels)
        })
        .collect()
}

/// The examples as a loader source. `Mask` doubles as an 8-bit raster here: its
/// `to_gray_image` is the grey image the source hands out (lus-train does not depend on the
/// `image` crate itself).
pub fn source(examples: &[(Mask, Mask)]) -> Arc<dyn SegmentationSource> {
    Arc::new(InMemorySource(
        examples
            .iter()
            .map(|(pixels, labels)| (pixels.to_gray_image(), labels.clone()))
            .collect(),
    ))
}

pub fn unet_config() -> UNetConfig {
    UNetConfig {
        num_classes: CLASSES,
        depth: 2,
        base_channels: 8,
        norm: Norm::Batch,
        ..Default::default()
    }
}

pub fn train_config(epochs: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 4,
        optimizer: OptimizerConfig::default(),
        lr: 1e-2,
        weight_decay: 1e-4,
        schedule: LrSchedule::Constant,
        loss: LossConfig::default(),
        grad_clip_norm: None,
        seed,
        device: lus_train::DeviceSpec::Cpu,
        best_metric: Some("val_miou".to_string()),
        best_direction: None,
        log_every: 2,
        checkpoint_every_steps: 0,
    }
}

pub fn loaders(
    config: &TrainConfig,
    train: Arc<dyn SegmentationSource>,
    val: Arc<dyn SegmentationSource>,
) -> (SegmentationLoader, SegmentationLoader) {
    loaders_on(config, train, val, &Device::Cpu)
}

/// Shuffled train and ordered validation loaders whose batches land on `device`.
pub fn loaders_on(
    config: &TrainConfig,
    train: Arc<dyn SegmentationSource>,
    val: Arc<dyn SegmentationSource>,
    device: &Device,
) -> (SegmentationLoader, SegmentationLoader) {
    let make = |source, shuffle| {
        SegmentationLoader::new(
            source,
            LoaderConfig {
                batch_size: config.batch_size,
                size: SIDE,
                shuffle,
                drop_last: false,
                prefetch: 2,
                augment: None,
                normalize: Normalize::PerImage,
            },
            config.seed,
            device.clone(),
        )
        .unwrap()
    };
    (make(train, true), make(val, false))
}

pub fn task(config: &TrainConfig) -> SegmentationTask {
    task_with(config, &unet_config())
}

pub fn task_with(config: &TrainConfig, unet: &UNetConfig) -> SegmentationTask {
    SegmentationTask::new(unet, &config.loss, class_names(), &Device::Cpu, config.seed).unwrap()
}

/// The columns that do not depend on the machine's speed, as bits, one row per epoch.
pub fn deterministic_columns(history: &[lus_train::EpochRecord]) -> Vec<Vec<(String, u64)>> {
    history
        .iter()
        .map(|r| {
            let mut row = vec![
                ("epoch".to_string(), r.epoch as u64),
                ("step".to_string(), r.step),
            ];
            row.extend(
                r.float_columns()
                    .into_iter()
                    .filter(|(n, _)| n != "images_per_s" && n != "seconds")
                    .map(|(n, v)| (n, v.to_bits())),
            );
            row
        })
        .collect()
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
