//! Augmentation geometry and photometry, and the segmentation loader: ordering, determinism,
//! prefetch, shutdown and error reporting. Timings of preparation, epochs and collation are
//! benches: `cargo bench -p lus-benches --bench loader`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use image::{GrayImage, Luma};
use lus_data::augment::{AugmentConfig, AugmentParams, Normalize, Prepared, prepare, prepare_with};
use lus_data::image_io::save_gray_png;
use lus_data::loader::{
    AnnotatedFileSource, FileSource, InMemorySource, LoaderConfig, SegBatch, SegmentationLoader,
    SegmentationSource, example_rng,
};
use lus_data::{DataError, LabelSchema, Mask};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A non-periodic image (so a wrong mapping cannot hide behind symmetry).
fn textured(w: u32, h: u32) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        Luma([((x * 37 + y * 101 + x * y * 7) % 251) as u8])
    })
}

/// A mask of vertical bands of classes {0, 3, 5, 7} plus a block of 2.
fn banded_mask(w: u32, h: u32) -> Mask {
    let mut m = Mask::filled(w, h, 0);
    for y in 0..h {
        for x in 0..w {
            let band = [0u8, 3, 5, 7][(x * 4 / w) as usize];
            let v = if x > w / 3 && x < w / 2 && y > h / 3 && y < h / 2 {
                2
            } else {
                band
            };
            m.set(x, y, v);
        }
    }
    m
}

fn labels(values: &[u8]) -> BTreeSet<u8> {
    values.iter().copied().collect()
}

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(17)
}

fn at(values: &[f32], size: u32, x: u32, y: u32) -> f32 {
    values[(y * size + x) as usize]
}

fn mean_std(values: &[f32]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

fn only(config: impl FnOnce(&mut AugmentConfig)) -> AugmentConfig {
    let mut c = AugmentConfig::none();
    config(&mut c);
    c
}

// ---------------------------------------------------------------------------------------------
// prepare: geometry

#[test]
fn same_size_without_augmentation_is_the_identity() {
    let image = textured(32, 32);
    let mask = banded_mask(32, 32);
    let expected: Vec<f32> = image
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    let out = prepare(&image, Some(&mask), 32, None, Normalize::None, &mut rng()).unwrap();
    assert_eq!(out.image, expected);
    assert_eq!(out.mask.as_deref(), Some(mask.data()));
    // Augmentation present but all ranges zero: still the identity.
    let none = AugmentConfig::none();
    let out = prepare(
        &image,
        Some(&mask),
        32,
        Some(&none),
        Normalize::None,
        &mut rng(),
    )
    .unwrap();
    assert_eq!(out.image, expected);
    assert_eq!(out.mask.as_deref(), Some(mask.data()));
}

#[test]
fn horizontal_flip_alone_is_an_exact_mirror() {
    let (w, h) = (24, 24);
    let image = textured(w, h);
    let mask = banded_mask(w, h);
    let flip = only(|c| c.hflip = 1.0);
    let out = prepare(
        &image,
        Some(&mask),
        w,
        Some(&flip),
        Normalize::None,
        &mut rng(),
    )
    .unwrap();
    let out_mask = out.mask.unwrap();
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) as usize;
            assert_eq!(
                out.image[i],
                f32::from(image.get_pixel(w - 1 - x, y)[0]) / 255.0
            );
            assert_eq!(out_mask[i], mask.get(w - 1 - x, y), "mask at ({x}, {y})");
        }
    }
    // A vertical flip is the same along the other axis.
    let params = AugmentParams {
        vflip: true,
        ..AugmentParams::identity()
    };
    let out = prepare_with(&image, Some(&mask), w, &params, Normalize::None).unwrap();
    assert_eq!(out.mask.unwrap()[0], mask.get(0, h - 1));
    assert_eq!(
        out.image[1],
        f32::from(image.get_pixel(1, h - 1)[0]) / 255.0
    );
}

#[test]
fn translation_by_two_pixels_moves_a_known_pattern() {
    let size = 16;
    let mut image = GrayImage::new(size, size);
    image.put_pixel(5, 7, Luma([200]));
    image.put_pixel(6, 7, Luma([100]));
    let mut mask = Mask::filled(size, size, 1);
    mask.set(5, 7, 3);
    // +2 px right (0.125 * 16) and -1 px up (-0.0625 * 16); fill 9 marks padding.
    let params = AugmentParams {
        translate_x: 0.125,
        translate_y: -0.0625,
        fill_id: 9,
        ..AugmentParams::identity()
    };
    let out = prepare_with(&image, Some(&mask), size, &params, Normalize::None).unwrap();
    let out_mask = out.mask.unwrap();
    for y in 0..size {
        for x in 0..size {
            let i = (y * size + x) as usize;
            let expected_image = match (x, y) {
                (7, 6) => 200.0 / 255.0,
                (8, 6) => 100.0 / 255.0,
                _ => 0.0,
            };
            assert_eq!(out.image[i], expected_image, "image at ({x}, {y})");
            // Columns 0-1 and the bottom row come from outside the source.
            let expected_mask = if x < 2 || y == size - 1 {
                9
            } else if (x, y) == (7, 6) {
                3
            } else {
                1
            };
            assert_eq!(out_mask[i], expected_mask, "mask at ({x}, {y})");
        }
    }
}

#[test]
fn rotation_by_180_degrees_equals_both_flips() {
    let image = textured(20, 20);
    let mask = banded_mask(20, 20);
    let rotated = AugmentParams {
        rotate_deg: 180.0,
        ..AugmentParams::identity()
    };
    let flipped = AugmentParams {
        hflip: true,
        vflip: true,
        ..AugmentParams::identity()
    };
    let a = prepare_with(&image, Some(&mask), 20, &rotated, Normalize::None).unwrap();
    let b = prepare_with(&image, Some(&mask), 20, &flipped, Normalize::None).unwrap();
    assert_eq!(a.mask, b.mask);
    for (x, y) in a.image.iter().zip(&b.image) {
        assert!((x - y).abs() < 1e-5);
    }
    // And the flip pair is the point reflection.
    let m = b.mask.unwrap();
    assert_eq!(m[0], mask.get(19, 19));
    assert_eq!(m[20 * 3 + 11], mask.get(19 - 11, 19 - 3));
}

#[test]
fn zoom_two_magnifies_about_the_centre() {
    let mask = Mask::from_raw(8, 1, (0..8).collect()).unwrap();
    let image = GrayImage::from_raw(8, 1, (0..8).map(|v| v * 30).collect()).unwrap();
    // Keep rows: a 1-row source stretched to 8 rows; zoom 2 maps output x to 4 + (x + 0.5 - 4) / 2.
    let params = AugmentParams {
        zoom: 2.0,
        ..AugmentParams::identity()
    };
    let out = prepare_with(&image, Some(&mask), 8, &params, Normalize::None).unwrap();
    let row = &out.mask.unwrap()[8 * 4..8 * 5];
    assert_eq!(row, &[2, 2, 3, 3, 4, 4, 5, 5]);
    // Image: source x = 2.25 + 0.5 * u, bilinear between centres (value 30 per pixel).
    for u in 0..8u32 {
        let x = 2.25 + 0.5 * f64::from(u);
        let expected = ((x - 0.5) * 30.0 / 255.0) as f32;
        assert!((at(&out.image, 8, u, 4) - expected).abs() < 1e-5, "u = {u}");
    }
}

#[test]
fn nearest_neighbour_mask_never_invents_classes_and_stays_aligned() {
    let (w, h) = (48, 40);
    let mask = banded_mask(w, h);
    // Image = class id * 30: where image and mask agree, they were sampled through one map.
    let image = GrayImage::from_fn(w, h, |x, y| Luma([mask.get(x, y) * 30]));
    let input_labels = labels(mask.data());
    let config = AugmentConfig {
        rotate_deg: 10.0,
        scale: 0.2,
        translate: 0.1,
        brightness: 0.0,
        contrast: 0.0,
        gamma: 0.0,
        fill_id: 255,
        ..AugmentConfig::default()
    };
    let mut rotated = 0;
    for seed in 0..40 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let params = config.sample(&mut rng);
        rotated += usize::from(params.rotate_deg.abs() > 1.0);
        let out = prepare_with(&image, Some(&mask), 32, &params, Normalize::None).unwrap();
        let out_mask = out.mask.unwrap();
        let mut allowed = input_labels.clone();
        allowed.insert(255);
        assert!(
            labels(&out_mask).is_subset(&allowed),
            "seed {seed}: {:?}",
            labels(&out_mask)
        );
        // Where all four bilinear taps share a class the image value is exactly class * 30, and
        // the nearest tap (one of the four) must carry that class in the mask.
        let exact: Vec<(usize, u8)> = (0..out_mask.len())
            .filter(|&i| out_mask[i] != 255)
            .filter_map(|i| {
                let class = out.image[i] * 255.0 / 30.0;
                let rounded = class.round();
                ((class - rounded).abs() < 1e-3 && input_labels.contains(&(rounded as u8)))
                    .then_some((i, rounded as u8))
            })
            .collect();
        let agree = exact
            .iter()
            .filter(|&&(i, class)| out_mask[i] == class)
            .count();
        assert!(
            exact.len() > out_mask.len() / 2,
            "seed {seed}: only {} exact pixels",
            exact.len()
        );
        assert!(
            agree as f64 >= 0.99 * exact.len() as f64,
            "seed {seed}: image and mask agree on {agree} of {} pixels",
            exact.len()
        );
    }
    assert!(rotated > 20, "the test must exercise rotations");
}

#[test]
fn downscaling_more_than_twice_averages_the_image_but_not_the_mask() {
    // A 1-pixel checkerboard: point sampling would give pure 0 or 1 (aliasing); the area
    // average is exactly 0.5 everywhere.
    let image = GrayImage::from_fn(64, 64, |x, y| {
        Luma([if (x + y) % 2 == 0 { 255 } else { 0 }])
    });
    // The mask is point-sampled at each output pixel's centre, never averaged: a checkerboard
    // of classes 1 and 3 must not produce the in-between id 2.
    let mask = Mask::from_raw(
        64,
        64,
        (0..64 * 64)
            .map(|i| 1 + 2 * ((i % 64 + i / 64) % 2) as u8)
            .collect(),
    )
    .unwrap();
    let out = prepare(&image, Some(&mask), 8, None, Normalize::None, &mut rng()).unwrap();
    for v in &out.image {
        assert!((v - 0.5).abs() < 1e-6, "{v}");
    }
    let out_mask = out.mask.unwrap();
    for v in 0..8 {
        for u in 0..8 {
            // Output centre (u + 0.5) maps to source x = 8u + 4.
            assert_eq!(
                out_mask[(v * 8 + u) as usize],
                mask.get(8 * u + 4, 8 * v + 4)
            );
        }
    }
    assert!(labels(&out_mask).is_subset(&BTreeSet::from([1, 3])));
    // A smooth horizontal ramp keeps its average through the reduction: each 8-pixel box of
    // values 8k..8k+7 averages to 8k + 3.5.
    let ramp = GrayImage::from_fn(64, 64, |x, _| Luma([x as u8]));
    let out = prepare(&ramp, None, 8, None, Normalize::None, &mut rng()).unwrap();
    for u in 0..8 {
        let expected = (8.0 * u as f32 + 3.5) / 255.0;
        assert!((at(&out.image, 8, u, 3) - expected).abs() < 1e-6);
    }
}

#[test]
fn mask_of_another_size_is_an_error() {
    let err = prepare(
        &textured(10, 10),
        Some(&Mask::filled(10, 11, 0)),
        8,
        None,
        Normalize::None,
        &mut rng(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("10x11"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// prepare: photometry and normalisation

fn constant(value: u8) -> GrayImage {
    GrayImage::from_pixel(16, 16, Luma([value]))
}

fn photometric(image: &GrayImage, params: AugmentParams) -> Vec<f32> {
    prepare_with(image, None, 16, &params, Normalize::None)
        .unwrap()
        .image
}

#[test]
fn brightness_contrast_and_gamma_move_intensities_by_the_expected_amounts() {
    let v = 64.0f64 / 255.0;
    let image = constant(64);
    let id = AugmentParams::identity;

    for shift in [0.1f32, -0.1] {
        let (mean, std) = mean_std(&photometric(
            &image,
            AugmentParams {
                brightness: shift,
                ..id()
            },
        ));
        assert!(
            (mean - (v + f64::from(shift))).abs() < 1e-6,
            "brightness {shift}: mean {mean}"
        );
        assert!(std < 1e-7);
    }
    // Clamped at 1.
    let (mean, _) = mean_std(&photometric(
        &constant(250),
        AugmentParams {
            brightness: 0.5,
            ..id()
        },
    ));
    assert_eq!(mean, 1.0);

    for gamma in [0.5f32, 2.0] {
        let (mean, _) = mean_std(&photometric(&image, AugmentParams { gamma, ..id() }));
        assert!(
            (mean - v.powf(f64::from(gamma))).abs() < 1e-6,
            "gamma {gamma}: {mean}"
        );
    }
    // Gamma < 1 brightens, > 1 darkens.
    assert!(v.powf(0.5) > v && v.powf(2.0) < v);

    // Contrast acts about the image mean: a constant image does not change...
    let (mean, _) = mean_std(&photometric(
        &image,
        AugmentParams {
            contrast: 1.5,
            ..id()
        },
    ));
    assert!((mean - v).abs() < 1e-6);
    // ...and a two-level image keeps its mean while its std scales by the factor.
    let two_level = GrayImage::from_fn(16, 16, |x, _| Luma([if x < 8 { 64 } else { 192 }]));
    let (mean0, std0) = mean_std(&photometric(&two_level, id()));
    for factor in [0.8f32, 1.2] {
        let (mean, std) = mean_std(&photometric(
            &two_level,
            AugmentParams {
                contrast: factor,
                ..id()
            },
        ));
        assert!((mean - mean0).abs() < 1e-6);
        assert!(
            (std - std0 * f64::from(factor)).abs() < 1e-6,
            "contrast {factor}: {std} vs {std0}"
        );
    }
}

#[test]
fn sampled_brightness_stays_in_range_and_is_centred() {
    let image = constant(128);
    let v = 128.0f64 / 255.0;
    let config = only(|c| c.brightness = 0.1);
    let mut shifts = Vec::new();
    for seed in 0..400 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let out = prepare(&image, None, 16, Some(&config), Normalize::None, &mut rng).unwrap();
        shifts.push(mean_std(&out.image).0 - v);
    }
    assert!(shifts.iter().all(|s| s.abs() <= 0.1 + 1e-6));
    let average = shifts.iter().sum::<f64>() / shifts.len() as f64;
    // Uniform on [-0.1, 0.1]: sd of the mean of 400 is 0.0029.
    assert!(average.abs() < 0.012, "average shift {average}");
    let largest = shifts.iter().fold(0.0f64, |a, s| a.max(s.abs()));
    assert!(largest > 0.09, "the range is used: {largest}");
}

#[test]
fn per_image_normalisation_gives_zero_mean_unit_std() {
    let out = prepare(
        &textured(40, 30),
        None,
        32,
        None,
        Normalize::PerImage,
        &mut rng(),
    )
    .unwrap();
    let (mean, std) = mean_std(&out.image);
    assert!(
        mean.abs() < 1e-4 && (std - 1.0).abs() < 1e-4,
        "mean {mean}, std {std}"
    );
    // A blank image is fine: all zeros, nothing infinite.
    let out = prepare(
        &constant(90),
        None,
        16,
        None,
        Normalize::PerImage,
        &mut rng(),
    )
    .unwrap();
    assert!(out.image.iter().all(|&v| v == 0.0));
    // Fixed normalisation is (v - mean) / std.
    let fixed = Normalize::Fixed {
        mean: 0.5,
        std: 0.25,
    };
    let out = prepare(&constant(255), None, 16, None, fixed, &mut rng()).unwrap();
    assert!(out.image.iter().all(|&v| (v - 2.0).abs() < 1e-6));
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn config_validation_rejects_bad_values() {
    assert!(AugmentConfig::default().validate().is_ok());
    assert!(AugmentConfig::none().validate().is_ok());
    let bad: [AugmentConfig; 8] = [
        only(|c| c.hflip = 1.5),
        only(|c| c.vflip = -0.1),
        only(|c| c.brightness = f32::NAN),
        only(|c| c.contrast = 1.0),
        only(|c| c.gamma = f32::INFINITY),
        only(|c| c.rotate_deg = 50.0),
        only(|c| c.scale = -0.1),
        only(|c| c.translate = 0.75),
    ];
    for config in bad {
        let err = config.validate().unwrap_err();
        assert!(matches!(err, DataError::Config { .. }), "{config:?}: {err}");
        // prepare refuses it too.
        assert!(
            prepare(
                &constant(1),
                None,
                8,
                Some(&config),
                Normalize::None,
                &mut rng()
            )
            .is_err()
        );
    }
    assert!(LoaderConfig::default().validate().is_ok());
    let loader_bad = [
        LoaderConfig {
            batch_size: 0,
            ..Default::default()
        },
        LoaderConfig {
            size: 0,
            ..Default::default()
        },
        LoaderConfig {
            prefetch: 1000,
            ..Default::default()
        },
        LoaderConfig {
            augment: Some(only(|c| c.rotate_deg = 90.0)),
            ..Default::default()
        },
        LoaderConfig {
            normalize: Normalize::Fixed {
                mean: 0.0,
                std: 0.0,
            },
            ..Default::default()
        },
    ];
    let source: Arc<dyn SegmentationSource> = Arc::new(InMemorySource(vec![]));
    for config in loader_bad {
        assert!(config.validate().is_err(), "{config:?}");
        assert!(SegmentationLoader::new(Arc::clone(&source), config, 0, Device::Cpu).is_err());
    }
    assert!(prepare(&constant(1), None, 0, None, Normalize::None, &mut rng()).is_err());
}

#[test]
fn config_reads_from_toml_and_rejects_unknown_keys() {
    let config: LoaderConfig = toml::from_str(
        "batch_size = 4\nsize = 128\nnormalize = { fixed = { mean = 0.2, std = 0.3 } }\n[augment]\nrotate_deg = 3.0\n",
    )
    .unwrap();
    assert_eq!(config.batch_size, 4);
    assert_eq!(
        config.normalize,
        Normalize::Fixed {
            mean: 0.2,
            std: 0.3
        }
    );
    let augment = config.augment.unwrap();
    assert_eq!(augment.rotate_deg, 3.0);
    assert_eq!(augment.hflip, 0.5, "unspecified ranges take their defaults");
    let plain: LoaderConfig = toml::from_str("normalize = \"per-image\"").unwrap();
    assert_eq!(
        plain.augment, None,
        "no [augment] table means no augmentation"
    );
    assert!(toml::from_str::<LoaderConfig>("batchsize = 4").is_err());
    assert!(toml::from_str::<LoaderConfig>("[augment]\nrotate = 3.0").is_err());
}

// ---------------------------------------------------------------------------------------------
// Loader

fn synthetic_source(count: usize, w: u32, h: u32) -> Arc<dyn SegmentationSource> {
    Arc::new(InMemorySource(
        (0..count)
            .map(|i| {
                let image = GrayImage::from_fn(w, h, |x, y| {
                    Luma([((x * 31 + y * 17 + i as u32 * 53) % 256) as u8])
                });
                // Class i % 9 in the left half, so a batch row can be traced to its example.
                let mask = Mask::from_raw(
                    w,
                    h,
                    (0..w * h)
                        .map(|p| if p % w < w / 2 { (i % 9) as u8 } else { 0 })
                        .collect(),
                )
                .unwrap();
                (image, mask)
            })
            .collect(),
    ))
}

fn config(batch_size: usize, size: u32, augment: bool) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        size,
        shuffle: true,
        drop_last: false,
        prefetch: 2,
        augment: augment.then(AugmentConfig::default),
        normalize: Normalize::PerImage,
    }
}

fn collect_epoch(loader: &SegmentationLoader, epoch: u64) -> Vec<SegBatch> {
    loader.epoch(epoch).collect::<Result<Vec<_>, _>>().unwrap()
}

fn flat_f32(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn flat_u32(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<u32>().unwrap()
}

/// Every number of an epoch, for equality checks.
fn fingerprint(batches: &[SegBatch]) -> Vec<(Vec<usize>, Vec<f32>, Vec<u32>)> {
    batches
        .iter()
        .map(|b| (b.indices.clone(), flat_f32(&b.images), flat_u32(&b.masks)))
        .collect()
}

#[test]
fn batches_have_the_right_shapes_dtypes_and_contents() {
    let source = synthetic_source(10, 40, 30);
    let loader =
        SegmentationLoader::new(Arc::clone(&source), config(4, 16, false), 5, Device::Cpu).unwrap();
    assert_eq!(loader.len(), 3);
    let batches = collect_epoch(&loader, 0);
    assert_eq!(
        batches.iter().map(|b| b.indices.len()).collect::<Vec<_>>(),
        [4, 4, 2]
    );
    for batch in &batches {
        let n = batch.indices.len();
        assert_eq!(batch.images.dims(), &[n, 1, 16, 16]);
        assert_eq!(batch.images.dtype(), DType::F32);
        assert_eq!(batch.masks.dims(), &[n, 16, 16]);
        assert_eq!(batch.masks.dtype(), DType::U32);
        // Row k is exactly example indices[k] prepared alone.
        for (k, &index) in batch.indices.iter().enumerate() {
            let (image, mask) = source.load(index).unwrap();
            let Prepared {
                image: want_image,
                mask: want_mask,
            } = prepare(
                &image,
                Some(&mask),
                16,
                None,
                Normalize::PerImage,
                &mut rng(),
            )
            .unwrap();
            assert_eq!(flat_f32(&batch.images.get(k).unwrap()), want_image);
            let want_mask: Vec<u32> = want_mask.unwrap().iter().map(|&v| u32::from(v)).collect();
            assert_eq!(flat_u32(&batch.masks.get(k).unwrap()), want_mask);
            assert_eq!(want_mask[0], (index % 9) as u32);
        }
    }
}

#[test]
fn every_index_appears_once_per_epoch() {
    let source = synthetic_source(11, 8, 8);
    let loader =
        SegmentationLoader::new(Arc::clone(&source), config(4, 8, true), 1, Device::Cpu).unwrap();
    for epoch in 0..3 {
        let batches = collect_epoch(&loader, epoch);
        assert_eq!(
            batches.iter().map(|b| b.indices.len()).collect::<Vec<_>>(),
            [4, 4, 3]
        );
        let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..11).collect::<Vec<_>>());
    }
    let dropping = LoaderConfig {
        drop_last: true,
        ..config(4, 8, true)
    };
    let loader = SegmentationLoader::new(source, dropping, 1, Device::Cpu).unwrap();
    assert_eq!(loader.len(), 2);
    let batches = collect_epoch(&loader, 0);
    let seen: BTreeSet<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!((batches.len(), seen.len()), (2, 8));
    // Without shuffling the order is 0..n.
    let ordered = LoaderConfig {
        shuffle: false,
        ..config(4, 8, false)
    };
    let loader =
        SegmentationLoader::new(synthetic_source(6, 8, 8), ordered, 1, Device::Cpu).unwrap();
    let indices: Vec<usize> = collect_epoch(&loader, 3)
        .iter()
        .flat_map(|b| b.indices.clone())
        .collect();
    assert_eq!(indices, [0, 1, 2, 3, 4, 5]);
}

#[test]
fn epochs_differ_and_an_epoch_repeats_exactly() {
    let source = synthetic_source(24, 20, 20);
    let loader =
        SegmentationLoader::new(Arc::clone(&source), config(6, 16, true), 9, Device::Cpu).unwrap();
    let first = fingerprint(&collect_epoch(&loader, 0));
    let again = fingerprint(&collect_epoch(&loader, 0));
    let second = fingerprint(&collect_epoch(&loader, 1));
    assert_eq!(first, again);
    let order = |f: &[(Vec<usize>, Vec<f32>, Vec<u32>)]| {
        f.iter().flat_map(|b| b.0.clone()).collect::<Vec<_>>()
    };
    assert_ne!(order(&first), order(&second));
    // The same example is augmented differently in another epoch.
    let row_of = |f: &[(Vec<usize>, Vec<f32>, Vec<u32>)], index: usize| {
        let (b, k) = f
            .iter()
            .enumerate()
            .find_map(|(b, batch)| batch.0.iter().position(|&i| i == index).map(|k| (b, k)))
            .unwrap();
        f[b].1[k * 256..(k + 1) * 256].to_vec()
    };
    assert_ne!(row_of(&first, 0), row_of(&second, 0));
    // Another seed gives another order.
    let other = SegmentationLoader::new(source, config(6, 16, true), 10, Device::Cpu).unwrap();
    assert_ne!(
        order(&first),
        order(&fingerprint(&collect_epoch(&other, 0)))
    );
    // Per-example streams are distinct across index and epoch.
    use rand::Rng;
    let word = |e, i| example_rng(9, e, i).next_u64();
    assert_ne!(word(0, 0), word(0, 1));
    assert_ne!(word(0, 0), word(1, 0));
}

#[test]
fn results_do_not_depend_on_prefetch_depth_or_thread_count() {
    let source = synthetic_source(13, 24, 20);
    let run = |prefetch: usize, threads: Option<usize>| {
        let config = LoaderConfig {
            prefetch,
            ..config(4, 16, true)
        };
        let mut loader =
            SegmentationLoader::new(Arc::clone(&source), config, 42, Device::Cpu).unwrap();
        if let Some(threads) = threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            loader = loader.with_thread_pool(Arc::new(pool));
        }
        fingerprint(&collect_epoch(&loader, 2))
    };
    let reference = run(0, Some(1));
    for (prefetch, threads) in [
        (1, Some(1)),
        (4, Some(1)),
        (0, Some(2)),
        (1, Some(2)),
        (4, Some(2)),
        (2, None),
    ] {
        assert_eq!(
            run(prefetch, threads),
            reference,
            "prefetch {prefetch}, threads {threads:?}"
        );
    }
}

/// Counts loads and takes a while per example, to watch the producer.
struct SlowCountingSource {
    inner: Arc<dyn SegmentationSource>,
    loads: Arc<AtomicUsize>,
}

impl SegmentationSource for SlowCountingSource {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn load(&self, index: usize) -> lus_data::Result<(GrayImage, Mask)> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(5));
        self.inner.load(index)
    }
}

#[test]
fn dropping_an_epoch_early_stops_the_producer() {
    let loads = Arc::new(AtomicUsize::new(0));
    let source = Arc::new(SlowCountingSource {
        inner: synthetic_source(400, 8, 8),
        loads: Arc::clone(&loads),
    });
    let config = LoaderConfig {
        prefetch: 2,
        ..config(2, 8, false)
    };
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap(),
    );
    let loader = SegmentationLoader::new(
        Arc::clone(&source) as Arc<dyn SegmentationSource>,
        config,
        0,
        Device::Cpu,
    )
    .unwrap()
    .with_thread_pool(pool);
    let mut epoch = loader.epoch(0);
    epoch.next().unwrap().unwrap();
    let started = Instant::now();
    drop(epoch);
    let drop_time = started.elapsed();
    // The producer owned a reference to the source; only the loader's and ours remain once the
    // thread has really ended (not merely been detached).
    assert_eq!(
        Arc::strong_count(&source),
        2,
        "the producer thread outlived the drop"
    );
    let after_drop = loads.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(150));
    let later = loads.load(Ordering::SeqCst);
    assert_eq!(
        after_drop, later,
        "the producer kept loading after the drop"
    );
    // 1 batch consumed + 2 queued + 1 in preparation, 2 examples each.
    assert!(after_drop <= 8, "{after_drop} of 400 examples loaded");
    assert!(
        drop_time < Duration::from_secs(2),
        "drop took {drop_time:?}"
    );
}

#[test]
fn a_corrupt_png_ends_the_epoch_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut pairs = Vec::new();
    for i in 0..5 {
        let image_path = dir.path().join(format!("image{i}.png"));
        let mask_path = dir.path().join(format!("mask{i}.png"));
        save_gray_png(&textured(12, 10), &image_path).unwrap();
        banded_mask(12, 10).save_png(&mask_path).unwrap();
        pairs.push((image_path, mask_path));
    }
    let schema = LabelSchema::default();
    let ordered = LoaderConfig {
        shuffle: false,
        ..config(2, 8, true)
    };

    // Intact files load.
    let good = SegmentationLoader::new(
        Arc::new(FileSource::new(pairs.clone(), schema.clone(), None)),
        ordered.clone(),
        0,
        Device::Cpu,
    )
    .unwrap();
    let batches = collect_epoch(&good, 0);
    assert_eq!(batches.len(), 3);
    assert_eq!(flat_u32(&batches[0].masks).iter().copied().max(), Some(7));

    let corrupt: PathBuf = pairs[3].0.clone();
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\n this is not a PNG body").unwrap();
    for prefetch in [0, 2] {
        let config = LoaderConfig {
            prefetch,
            ..ordered.clone()
        };
        let loader = SegmentationLoader::new(
            Arc::new(FileSource::new(pairs.clone(), schema.clone(), None)),
            config,
            0,
            Device::Cpu,
        )
        .unwrap();
        let mut epoch = loader.epoch(0);
        assert!(epoch.next().unwrap().is_ok(), "batch [0, 1] is intact");
        let err = epoch
            .next()
            .unwrap()
            .expect_err("batch [2, 3] holds the corrupt file");
        assert!(
            err.to_string().contains("image3.png"),
            "prefetch {prefetch}: {err}"
        );
        assert!(epoch.next().is_none(), "the epoch ends after the error");
    }

    // A mask of the wrong size names the mask and its image.
    let mut mismatched = pairs.clone();
    banded_mask(12, 11).save_png(&mismatched[1].1).unwrap();
    mismatched.truncate(2);
    let source = FileSource::new(mismatched, schema.clone(), None);
    let err = source.load(1).unwrap_err().to_string();
    assert!(
        err.contains("mask1.png") && err.contains("image1.png"),
        "{err}"
    );

    // check_all reads every example and names the first bad one in index order (mask 1, then
    // image 3), whichever thread finds which first.
    let all = FileSource::new(pairs.clone(), schema.clone(), None);
    let err = all.check_all().unwrap_err().to_string();
    assert!(err.contains("mask1.png") && err.contains("12x11"), "{err}");
    let rest = FileSource::new(pairs[2..].to_vec(), schema.clone(), None);
    let err = rest.check_all().unwrap_err().to_string();
    assert!(err.contains("image3.png"), "{err}");
    assert!(
        FileSource::new(pairs[..1].to_vec(), schema, None)
            .check_all()
            .is_ok()
    );
}

// ---------------------------------------------------------------------------------------------
// AnnotatedFileSource: masks drawn from annotation files by a recipe

/// `count` hand-made examples of `size` px written as `image{i}.png` + `ann{i}.json` (lus JSON);
/// returns the (image, annotation) paths and the annotations. Each annotation has a fan-shaped
/// field of view and a shape of every class of the default schema (polygons, polylines and a
/// band), moved a little from one example to the next; each image is a textured pattern.
fn write_annotated(
    dir: &std::path::Path,
    count: u64,
    size: u32,
) -> (Vec<(PathBuf, PathBuf)>, Vec<lus_data::Annotation>) {
    use lus_data::{Annotation, Geometry, Point, Shape};
    let polygon = |label: &str, points: &[Point]| Shape {
        label: label.into(),
        geometry: Geometry::Polygon {
            points: points.to_vec(),
        },
    };
    let polyline = |label: &str, points: &[Point], width: f32| Shape {
        label: label.into(),
        geometry: Geometry::Polyline {
            points: points.to_vec(),
            width,
        },
    };
    let s = size as f32;
    let mut pairs = Vec::new();
    let mut annotations = Vec::new();
    for i in 0..count {
        // Every example moves its objects by a few pixels.
        let d = i as f32 * s / 32.0;
        let mut annotation = Annotation::new(size, size);
        annotation.field_of_view = Some(vec![
            [0.3 * s, 0.0],
            [0.7 * s, 0.0],
            [s, 0.9 * s],
            [0.5 * s, s],
            [0.0, 0.9 * s],
        ]);
        annotation.shapes = vec![
            polygon(
                "chest-wall",
                &[[0.0, 0.0], [s, 0.0], [s, 0.3 * s + d], [0.0, 0.3 * s]],
            ),
            polygon(
                "lung",
                &[[0.0, 0.3 * s], [s, 0.3 * s + d], [s, s], [0.0, s]],
            ),
            polygon(
                "rib",
                &[
                    [0.05 * s, 0.2 * s],
                    [0.2 * s, 0.2 * s],
                    [0.2 * s, s],
                    [0.05 * s, s],
                ],
            ),
            polyline("pleural-line", &[[0.2 * s, 0.3 * s], [s, 0.3 * s + d]], 2.0),
            polyline(
                "a-line",
                &[
                    [0.2 * s, 0.6 * s],
                    [0.5 * s, 0.6 * s + d],
                    [0.9 * s, 0.6 * s],
                ],
                2.5,
            ),
            Shape {
                label: "b-line".into(),
                geometry: Geometry::Band {
                    centerline: vec![[0.62 * s + d, 0.32 * s], [0.66 * s + d, s]],
                    outline: vec![
                        [0.59 * s + d, 0.32 * s],
                        [0.65 * s + d, 0.32 * s],
                        [0.71 * s + d, s],
                        [0.61 * s + d, s],
                    ],
                },
            },
            polygon(
                "consolidation",
                &[
                    [0.25 * s, 0.35 * s],
                    [0.45 * s + d, 0.36 * s],
                    [0.5 * s, 0.55 * s],
                    [0.3 * s, 0.6 * s],
                ],
            ),
            polygon(
                "effusion",
                &[
                    [0.75 * s, 0.7 * s],
                    [0.95 * s, 0.7 * s],
                    [0.9 * s, 0.9 * s - d],
                    [0.78 * s, 0.9 * s],
                ],
            ),
        ];
        let image = GrayImage::from_fn(size, size, |x, y| {
            Luma([((x * 37 + y * 101 + x * y * 7 + i as u32 * 59) % 251) as u8])
        });
        let image_path = dir.join(format!("image{i}.png"));
        let annotation_path = dir.join(format!("ann{i}.json"));
        save_gray_png(&image, &image_path).unwrap();
        annotation.save(&annotation_path).unwrap();
        pairs.push((image_path, annotation_path));
        annotations.push(annotation);
    }
    (pairs, annotations)
}

#[test]
fn annotated_files_give_the_masks_their_annotations_rasterize_to() {
    use lus_data::raster::{RasterOptions, rasterize};
    use lus_data::recipe::LabelRecipe;
    let dir = tempfile::tempdir().unwrap();
    let (pairs, annotations) = write_annotated(dir.path(), 3, 64);
    let schema = LabelSchema::default();
    let recipes = [
        RasterOptions {
            ignore_id: Some(255),
            ..RasterOptions::dense()
        },
        RasterOptions::sparse(3.0),
        RasterOptions::recipe(LabelRecipe::builtin("sparse").unwrap()),
        RasterOptions {
            ignore_id: Some(255),
            ..RasterOptions::recipe(
                LabelRecipe::from_toml_str(
                    "lines = \"stroke\"\noff = \"ignore\"\n[classes]\nconsolidation = \"full\"\n",
                    "sparse-pathology-ignore",
                    &schema,
                    std::path::Path::new("recipe.toml"),
                )
                .unwrap(),
            )
        },
    ];
    for options in recipes {
        let source =
            AnnotatedFileSource::new(pairs.clone(), schema.clone(), options.clone()).unwrap();
        assert_eq!(source.len(), 3);
        source.check_all().unwrap();
        for (i, annotation) in annotations.iter().enumerate() {
            let (image, mask) = source.load(i).unwrap();
            assert_eq!(image, lus_data::image_io::load_gray(&pairs[i].0).unwrap());
            let want = rasterize(annotation, &schema, &options).unwrap();
            assert!(
                mask == want,
                "{}: example {i} differs from rasterize",
                options.recipe.name
            );
        }
        assert!(source.load(3).is_err(), "index out of range");
    }
    // The same masks through a loader: the batches hold them (no augmentation, in order).
    let source = AnnotatedFileSource::new(pairs, schema.clone(), RasterOptions::dense()).unwrap();
    let loader = SegmentationLoader::new(
        Arc::new(source),
        LoaderConfig {
            shuffle: false,
            ..config(3, 64, false)
        },
        0,
        Device::Cpu,
    )
    .unwrap();
    let batches = collect_epoch(&loader, 0);
    let want: Vec<u32> = annotations
        .iter()
        .flat_map(|a| {
            rasterize(a, &schema, &RasterOptions::dense())
                .unwrap()
                .data()
                .iter()
                .map(|&v| u32::from(v))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(flat_u32(&batches[0].masks), want);
}

#[test]
fn annotated_files_name_a_broken_annotation_and_a_size_mismatch() {
    use lus_data::raster::RasterOptions;
    use lus_data::recipe::{ClassRender, LabelRecipe, OffAs};
    let dir = tempfile::tempdir().unwrap();
    let (pairs, _) = write_annotated(dir.path(), 3, 64);
    let schema = LabelSchema::default();
    let source = |pairs: &[(PathBuf, PathBuf)]| {
        AnnotatedFileSource::new(pairs.to_vec(), schema.clone(), RasterOptions::dense()).unwrap()
    };

    // Broken JSON: the error names the annotation file.
    let mut broken = pairs.clone();
    let bad_json = dir.path().join("broken.json");
    std::fs::write(
        &bad_json,
        "{ \"format\": \"lus-annotation/1\", \"width\": 64,",
    )
    .unwrap();
    broken[1].1 = bad_json;
    let err = source(&broken).load(1).unwrap_err().to_string();
    assert!(err.contains("broken.json"), "{err}");
    let err = source(&broken).check_all().unwrap_err().to_string();
    assert!(err.contains("broken.json"), "{err}");
    assert!(source(&broken).load(0).is_ok());

    // An unknown label: the error names the file and the shape.
    let text = std::fs::read_to_string(&pairs[2].1).unwrap();
    let first_label = text
        .split("\"label\": \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let bad_label = dir.path().join("bad_label.json");
    std::fs::write(
        &bad_label,
        text.replacen(
            &format!("\"label\": \"{first_label}\""),
            "\"label\": \"lugn-nodule\"",
            1,
        ),
    )
    .unwrap();
    let mut labelled = pairs.clone();
    labelled[2].1 = bad_label;
    let err = source(&labelled).load(2).unwrap_err().to_string();
    assert!(
        err.contains("bad_label.json") && err.contains("lugn-nodule"),
        "{err}"
    );

    // A missing annotation file is named too.
    let mut missing = pairs.clone();
    missing[0].1 = dir.path().join("nowhere.json");
    let err = source(&missing).load(0).unwrap_err().to_string();
    assert!(err.contains("nowhere.json"), "{err}");

    // The image is 48 x 48, the annotation 64 x 64: the error names both files.
    let small = dir.path().join("small.png");
    save_gray_png(&textured(48, 48), &small).unwrap();
    let mut mismatched = pairs.clone();
    mismatched[0].0 = small;
    let err = source(&mismatched).load(0).unwrap_err().to_string();
    assert!(
        err.contains("ann0.json")
            && err.contains("small.png")
            && err.contains("64x64")
            && err.contains("48x48"),
        "{err}"
    );

    // Options the recipe cannot be drawn with fail up front.
    let ignore_off = RasterOptions::recipe(LabelRecipe {
        name: "x".into(),
        lines: Some(ClassRender::Stroke),
        off: OffAs::Ignore,
        ..LabelRecipe::default()
    });
    let err = AnnotatedFileSource::new(pairs, schema.clone(), ignore_off)
        .err()
        .expect("off = ignore without an ignore id")
        .to_string();
    assert!(err.contains("no ignore id"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// candle-datasets interop

/// An epoch equals what candle-datasets' `Batcher` stacks from the same examples, prepared one
/// by one with their keyed generators (the loader collates into one buffer per tensor instead:
/// `cargo bench -p lus-benches --bench loader -- collate` times both).
#[test]
fn batches_equal_candle_datasets_batcher_of_the_same_examples() {
    let (seed, epoch, size) = (3, 1, 16u32);
    let side = size as usize;
    let source = synthetic_source(10, 40, 30);
    let loader = SegmentationLoader::new(
        Arc::clone(&source),
        config(4, size, true),
        seed,
        Device::Cpu,
    )
    .unwrap();
    let batches = collect_epoch(&loader, epoch);
    let augment = AugmentConfig::default();
    let order: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    let pairs = order.iter().map(|&index| {
        let (image, mask) = source.load(index).unwrap();
        let mut rng = example_rng(seed, epoch, index);
        let Prepared { image, mask } = prepare(
            &image,
            Some(&mask),
            size,
            Some(&augment),
            Normalize::PerImage,
            &mut rng,
        )
        .unwrap();
        let mask: Vec<u32> = mask.unwrap().into_iter().map(u32::from).collect();
        (
            Tensor::from_vec(image, (1, side, side), &Device::Cpu).unwrap(),
            Tensor::from_vec(mask, (side, side), &Device::Cpu).unwrap(),
        )
    });
    let stacked: Vec<(Tensor, Tensor)> = candle_datasets::Batcher::new2(pairs)
        .batch_size(4)
        .return_last_incomplete_batch(true)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stacked.len(), batches.len());
    for (batch, (images, masks)) in batches.iter().zip(&stacked) {
        assert_eq!(batch.images.dims(), images.dims());
        assert_eq!(batch.masks.dims(), masks.dims());
        assert_eq!(batch.masks.dtype(), masks.dtype());
        assert_eq!(flat_f32(&batch.images), flat_f32(images));
        assert_eq!(flat_u32(&batch.masks), flat_u32(masks));
    }
}
