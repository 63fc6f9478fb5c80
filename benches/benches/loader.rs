//! Benches of lus-data's segmentation loader: preparing one example, a whole epoch, and the
//! collation of prepared examples into a batch.
//!
//! The source is 256 in-memory 256x256 grey images with their masks; examples are prepared at
//! 128 px, normalised per image.
//!
//! - `prepare/{augment-off,augment-on}/128`: one example, 256x256 -> 128 px (`augment::prepare`
//!   with no augmentation, then with the default `AugmentConfig`), on one core.
//! - `loader_epoch/{prefetch0,prefetch2}/b8@128`: one epoch of 32 batches of 8 (shuffled,
//!   default augmentation), on the global rayon pool; `prefetch0` prepares each batch when it is
//!   asked for, `prefetch2` keeps two batches ready on a producer thread. Throughput counts
//!   examples (batches per second = examples per second / 8).
//! - `collate/{contiguous,batcher}/b8@128`: 8 prepared 128 px examples (image and mask) into
//!   one batch: `contiguous` is the loader's way (one buffer per tensor, one
//!   `Tensor::from_vec`), `batcher` is candle-datasets' `Batcher::new2` (a tensor per example,
//!   then `Tensor::stack`).

use std::hint::black_box;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use image::{GrayImage, Luma};
use lus_data::Mask;
use lus_data::augment::{AugmentConfig, Normalize, prepare};
use lus_data::loader::{
    InMemorySource, LoaderConfig, SegmentationLoader, SegmentationSource, example_rng,
};

const EXAMPLES: usize = 256;
const SOURCE_SIDE: u32 = 256;
const SIZE: u32 = 128;
const BATCH: usize = 8;

/// `count` textured `side x side` images, each with a mask of class `i % 9` in its left half.
fn synthetic_source(count: usize, side: u32) -> Arc<dyn SegmentationSource> {
    Arc::new(InMemorySource(
        (0..count)
            .map(|i| {
                let image = GrayImage::from_fn(side, side, |x, y| {
                    Luma([((x * 31 + y * 17 + i as u32 * 53) % 256) as u8])
                });
                let mask = Mask::from_raw(
                    side,
                    side,
                    (0..side * side)
                        .map(|p| {
                            if p % side < side / 2 {
                                (i % 9) as u8
                            } else {
                                0
                            }
                        })
                        .collect(),
                )
                .expect("mask of the image's size");
                (image, mask)
            })
            .collect(),
    ))
}

fn bench_prepare(c: &mut Criterion) {
    let source = synthetic_source(1, SOURCE_SIDE);
    let (image, mask) = source.load(0).expect("in memory");
    let augment = AugmentConfig::default();
    let mut group = c.benchmark_group("prepare");
    group.throughput(Throughput::Elements(1));
    for (name, augment) in [("augment-off", None), ("augment-on", Some(&augment))] {
        let mut index = 0usize;
        group.bench_function(BenchmarkId::new(name, SIZE), |b| {
            b.iter(|| {
                index += 1;
                let mut rng = example_rng(1, 0, index);
                black_box(
                    prepare(
                        &image,
                        Some(&mask),
                        SIZE,
                        augment,
                        Normalize::PerImage,
                        &mut rng,
                    )
                    .expect("valid example"),
                )
            })
        });
    }
    group.finish();
}

fn bench_loader_epoch(c: &mut Criterion) {
    let source = synthetic_source(EXAMPLES, SOURCE_SIDE);
    let mut group = c.benchmark_group("loader_epoch");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EXAMPLES as u64));
    for prefetch in [0, 2] {
        let config = LoaderConfig {
            batch_size: BATCH,
            size: SIZE,
            shuffle: true,
            drop_last: false,
            prefetch,
            augment: Some(AugmentConfig::default()),
            normalize: Normalize::PerImage,
        };
        let loader = SegmentationLoader::new(Arc::clone(&source), config, 1, Device::Cpu)
            .expect("valid loader config");
        let mut epoch = 0u64;
        group.bench_function(
            BenchmarkId::new(format!("prefetch{prefetch}"), format!("b{BATCH}@{SIZE}")),
            |b| {
                b.iter(|| {
                    epoch += 1;
                    for batch in loader.epoch(epoch) {
                        black_box(batch.expect("in-memory examples prepare"));
                    }
                })
            },
        );
    }
    group.finish();
}

fn bench_collate(c: &mut Criterion) {
    let side = SIZE as usize;
    let images: Vec<Vec<f32>> = (0..BATCH).map(|i| vec![i as f32; side * side]).collect();
    let masks: Vec<Vec<u8>> = (0..BATCH).map(|i| vec![i as u8; side * side]).collect();
    let id = format!("b{BATCH}@{SIZE}");
    let mut group = c.benchmark_group("collate");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::new("contiguous", &id), |b| {
        b.iter(|| {
            let mut flat = Vec::with_capacity(BATCH * side * side);
            let mut flat_masks = Vec::with_capacity(BATCH * side * side);
            for (image, mask) in images.iter().zip(&masks) {
                flat.extend_from_slice(image);
                flat_masks.extend(mask.iter().map(|&v| u32::from(v)));
            }
            let x = Tensor::from_vec(flat, (BATCH, 1, side, side), &Device::Cpu).expect("shape");
            let y = Tensor::from_vec(flat_masks, (BATCH, side, side), &Device::Cpu).expect("shape");
            black_box((x, y))
        })
    });
    group.bench_function(BenchmarkId::new("batcher", &id), |b| {
        b.iter(|| {
            let pairs = images.iter().zip(&masks).map(|(image, mask)| {
                let x =
                    Tensor::from_vec(image.clone(), (1, side, side), &Device::Cpu).expect("shape");
                let y = Tensor::from_vec(
                    mask.iter().map(|&v| u32::from(v)).collect::<Vec<_>>(),
                    (side, side),
                    &Device::Cpu,
                )
                .expect("shape");
                (x, y)
            });
            let batch = candle_datasets::Batcher::new2(pairs)
                .batch_size(BATCH)
                .next()
                .expect("one full batch")
                .expect("stack");
            black_box(batch)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_prepare, bench_loader_epoch, bench_collate);
criterion_main!(benches);
