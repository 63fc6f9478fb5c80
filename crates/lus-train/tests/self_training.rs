//! Class-balanced pseudo-labels (`lus_train::self_training::pseudo_label`) against the teacher's
//! own softmax, recomputed here: with every pixel kept they are the teacher's argmax; with a
//! portion, each class keeps at least that share of its pixels, and every kept pixel is at least
//! as confident as every pixel of its class that was dropped; a cap lowers every threshold.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use image::GrayImage;
use lus_data::augment::{AugmentParams, Normalize, prepare_with};
use lus_train::self_training::{PseudoLabelConfig, pseudo_label, resize_like_loader};
use lus_train::{ImageDataConfig, SegModel};
use lus_unet::{Mode, UNet, UNetConfig};

const SIZE: u32 = 24;
const IGNORE: u8 = 255;

/// The teacher's preprocessing: `SIZE` px, per-image normalisation.
fn data() -> ImageDataConfig {
    ImageDataConfig {
        size: SIZE,
        normalize: Normalize::PerImage,
        ..ImageDataConfig::default()
    }
}

fn teacher(dir: &std::path::Path) -> (SegModel, UNetConfig) {
    let config = UNetConfig {
        num_classes: 4,
        depth: 2,
        base_channels: 4,
        ..UNetConfig::default()
    };
    let varmap = VarMap::new();
    let unet = UNet::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    unet.init_weights(&varmap, &mut lus_train::rng::init_rng(7))
        .unwrap();
    let path = dir.join("teacher.safetensors");
    lus_unet::save_weights(&varmap, &path).unwrap();
    (
        SegModel::load(&config, &path, &Device::Cpu).unwrap(),
        config,
    )
}

/// Frames of other sizes than the training size (so they are resized), with structure.
fn frames() -> Vec<GrayImage> {
    (0..5u32)
        .map(|k| {
            GrayImage::from_fn(30 + 3 * k, 36, |x, y| {
                image::Luma([((x * 7 + y * (3 + k) + 11 * k) % 256) as u8 ^ (y * 16) as u8])
            })
        })
        .collect()
}

/// The teacher's (class, confidence) at every pixel of every frame, computed here.
fn softmax_of(model: &SegModel, frames: &[GrayImage]) -> Vec<Vec<(u8, f32)>> {
    frames
        .iter()
        .map(|frame| {
            let small = resize_like_loader(frame, SIZE).unwrap();
            let input = prepare_with(
                &small,
                None,
                SIZE,
                &AugmentParams::identity(),
                Normalize::PerImage,
            )
            .unwrap()
            .image;
            let input = Tensor::from_vec(input, (1, 1, SIZE as usize, SIZE as usize), &Device::Cpu)
                .unwrap();
            let logits = model.unet().forward_t(&input, &mut Mode::Eval).unwrap();
            let p = candle_nn::ops::softmax(&logits, 1).unwrap();
            let p = p.squeeze(0).unwrap().to_vec3::<f32>().unwrap();
            let mut out = Vec::new();
            for y in 0..SIZE as usize {
                for x in 0..SIZE as usize {
                    let (c, v) = (0..p.len())
                        .map(|c| (c, p[c][y][x]))
                        .fold((0, f32::MIN), |a, b| if b.1 > a.1 { b } else { a });
                    out.push((c as u8, v));
                }
            }
            out
        })
        .collect()
}

#[test]
fn pseudo_labels_are_the_teachers_confident_argmax() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = teacher(dir.path());
    let frames = frames();
    let truth = softmax_of(&model, &frames);
    let run = |portion: f32, max_threshold: f32| {
        pseudo_label(
            &model,
            &frames,
            &data(),
            2,
            IGNORE,
            &PseudoLabelConfig {
                portion,
                max_threshold,
            },
            &Device::Cpu,
        )
        .unwrap()
    };

    // Everything kept: the argmax, and the images resized to the training size.
    let all = run(1.0, 1.0);
    assert_eq!(all.examples.len(), frames.len());
    for ((image, mask), (frame, expected)) in all.examples.iter().zip(frames.iter().zip(&truth)) {
        assert_eq!(image, &resize_like_loader(frame, SIZE).unwrap());
        let ids: Vec<u8> = expected.iter().map(|&(c, _)| c).collect();
        assert_eq!(mask.data(), ids.as_slice());
    }
    let predicted: u64 = all.classes.iter().map(|c| c.predicted).sum();
    assert_eq!(predicted, frames.len() as u64 * u64::from(SIZE * SIZE));
    assert!(all.classes.iter().all(|c| c.kept == c.predicted));

    // A portion: at least that share of each class, the most confident ones.
    let half = run(0.4, 1.0);
    let mut classes_seen = 0;
    for class in &half.classes {
        if class.predicted == 0 {
            assert_eq!((class.kept, class.threshold), (0, None));
            continue;
        }
        classes_seen += 1;
        assert!(
            class.kept as f64 >= 0.4 * class.predicted as f64 && class.kept <= class.predicted,
            "{class:?}"
        );
        let (mut kept_min, mut dropped_max) = (f32::MAX, f32::MIN);
        for ((_, mask), expected) in half.examples.iter().zip(&truth) {
            for (&id, &(c, p)) in mask.data().iter().zip(expected) {
                if usize::from(c) != class.class {
                    continue;
                }
                if id == IGNORE {
                    dropped_max = dropped_max.max(p);
                } else {
                    assert_eq!(id, c);
                    kept_min = kept_min.min(p);
                }
            }
        }
        // Confidences are compared at the histogram's step (1 / 65535).
        assert!(
            kept_min + 2e-5 >= dropped_max,
            "class {}: kept down to {kept_min}, dropped up to {dropped_max}",
            class.class
        );
    }
    assert!(classes_seen >= 2, "the teacher predicts one class only");

    // A cap below every confidence keeps every pixel.
    let capped = run(0.01, 1e-6);
    assert!(capped.classes.iter().all(|c| c.kept == c.predicted));

    // The ignore id cannot be a class.
    assert!(
        pseudo_label(
            &model,
            &frames,
            &data(),
            2,
            2,
            &PseudoLabelConfig::default(),
            &Device::Cpu,
        )
        .is_err()
    );
}
