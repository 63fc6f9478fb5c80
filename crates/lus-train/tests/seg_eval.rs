//! `evaluate_segmentation` on a model whose prediction is known in closed form: a U-Net with
//! zero weights and a head bias that makes one class win everywhere. The pixel scores and the
//! object counts then follow from the truth masks alone, and are checked against numbers
//! computed here by hand.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use lus_data::Mask;
use lus_data::loader::InMemorySource;
use lus_metrics::ObjectConfig;
use lus_train::{SegEvalOptions, SegModel, SegRunConfig, evaluate_segmentation};
use lus_unet::{UNet, UNetConfig};

const SIDE: u32 = 32;

/// Truth: background, a horizontal band of class 1 (rows 4..6) and two separate vertical bands
/// of class 2 (columns 3..5 and 20..23, rows 8..32).
fn truth() -> Mask {
    let mut mask = Mask::filled(SIDE, SIDE, 0);
    for y in 0..SIDE {
        for x in 0..SIDE {
            let v = if (4..6).contains(&y) {
                1
            } else if y >= 8 && ((3..5).contains(&x) || (20..23).contains(&x)) {
                2
            } else {
                0
            };
            mask.set(x, y, v);
        }
    }
    mask
}

/// A model that predicts `class` at every pixel: every weight is zero (the VarBuilder's
/// placeholder) except the head's bias.
fn constant_model(config: &UNetConfig, class: usize, dir: &std::path::Path) -> SegModel {
    let varmap = VarMap::new();
    let _unet = UNet::new(
        config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let mut bias = vec![0f32; config.num_classes];
    bias[class] = 1.0;
    let data = varmap.data().lock().unwrap();
    let head_bias = data.get("head.bias").expect("the head has a bias");
    head_bias
        .set(&Tensor::new(bias.as_slice(), &Device::Cpu).unwrap())
        .unwrap();
    drop(data);
    let path = dir.join("constant.safetensors");
    lus_unet::save_weights(&varmap, &path).unwrap();
    SegModel::load(config, &path, &Device::Cpu).unwrap()
}

fn tiny_config() -> SegRunConfig {
    let mut config = SegRunConfig {
        unet: UNetConfig {
            num_classes: 3,
            depth: 2,
            base_channels: 4,
            ..UNetConfig::default()
        },
        ..SegRunConfig::default()
    };
    config.data.size = SIDE;
    config
}

#[test]
fn constant_prediction_gives_hand_computed_scores() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config();
    config.train.batch_size = 2;
    let truth = truth();
    let image = image::GrayImage::from_pixel(SIDE, SIDE, image::Luma([100]));
    let source = Arc::new(InMemorySource(vec![(image.clone(), truth.clone()); 3]));
    let options = SegEvalOptions {
        class_names: vec!["bg".into(), "pleura".into(), "b-line".into()],
        object_classes: vec![1, 2],
        objects: ObjectConfig::default(),
        ignore_id: None,
    };
    let total = (SIDE * SIDE) as f64;
    let pleura = 2.0 * SIDE as f64; // rows 4..6
    let blines = 24.0 * 5.0; // rows 8..32, 2 + 3 columns
    let background = total - pleura - blines;

    // Everything predicted as B-line: IoU(b-line) = its share of the image; one predicted
    // object per image, too large to match either true band (IoU 48/1024 and 72/1024 < 0.1).
    let model = constant_model(&config.unet, 2, dir.path());
    let report =
        evaluate_segmentation(&model, source.clone(), &config, &options, &Device::Cpu).unwrap();
    assert_eq!(report.images, 3);
    let scores = report.confusion.per_class();
    assert!((scores[2].iou - blines / total).abs() < 1e-12);
    assert!((scores[2].dice - 2.0 * blines / (blines + total)).abs() < 1e-12);
    assert_eq!(scores[2].recall, 1.0);
    assert_eq!(scores[0].iou, 0.0);
    assert!(
        scores[0].precision.is_nan(),
        "never predicted: precision undefined"
    );
    assert_eq!(scores[0].support as f64, 3.0 * background);
    let (_, bline_objects) = report.objects.iter().find(|(c, _)| *c == 2).unwrap();
    assert_eq!(
        (bline_objects.tp, bline_objects.fp, bline_objects.fn_),
        (0, 3, 6)
    );
    assert_eq!(report.fp_per_image(2), 1.0);
    let (_, pleura_objects) = report.objects.iter().find(|(c, _)| *c == 1).unwrap();
    assert_eq!(
        (pleura_objects.tp, pleura_objects.fp, pleura_objects.fn_),
        (0, 0, 3)
    );
    assert_eq!(report.fp_per_image(1), 0.0);
    assert!(
        report.fp_per_image(0).is_nan(),
        "background is not an object class"
    );

    // The table carries the same numbers.
    let table = report.per_class_table().unwrap();
    assert_eq!(table.len(), 3);
    assert_eq!(table.get(2, "obj_fp"), Some(lus_metrics::Value::Int(3)));
    assert_eq!(
        table.get(2, "fp_per_image"),
        Some(lus_metrics::Value::Float(1.0))
    );

    // Everything background: no predicted objects, every true object missed.
    let model = constant_model(&config.unet, 0, dir.path());
    let report = evaluate_segmentation(&model, source, &config, &options, &Device::Cpu).unwrap();
    let scores = report.confusion.per_class();
    assert!((scores[0].iou - background / total).abs() < 1e-12);
    assert_eq!(report.fp_per_image(2), 0.0);
    let (_, b) = report.objects.iter().find(|(c, _)| *c == 2).unwrap();
    assert_eq!((b.tp, b.fp, b.fn_, b.truth_objects), (0, 0, 6, 6));
}

#[test]
fn mismatched_options_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config();
    let model = constant_model(&config.unet, 1, dir.path());
    let source = Arc::new(InMemorySource(vec![(
        image::GrayImage::new(SIDE, SIDE),
        truth(),
    )]));
    let mut options = SegEvalOptions {
        class_names: vec!["a".into(), "b".into()],
        object_classes: vec![1],
        objects: ObjectConfig::default(),
        ignore_id: None,
    };
    let err = evaluate_segmentation(&model, source.clone(), &config, &options, &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("class_names"), "{err}");
    options.class_names.push("c".into());
    options.object_classes = vec![7];
    let err = evaluate_segmentation(&model, source, &config, &options, &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("class 7"), "{err}");
}
