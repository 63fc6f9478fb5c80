//! The U-Net classifier: outputs per head placement, the pretrained backbone reproducing the
//! segmentation U-Net exactly, strict checkpoint loading, freezing, and seeded initialisation.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use lus_transfer::{ClassifierConfig, Freeze, HeadPlacement, TransferError, UNetClassifier};
use lus_unet::{Mode, UNet, UNetConfig, test_device};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn unet_config() -> UNetConfig {
    UNetConfig {
        num_classes: 5,
        depth: 2,
        base_channels: 4,
        ..UNetConfig::default()
    }
}

fn input(n: usize) -> Tensor {
    input_on(n, &Device::Cpu)
}

fn input_on(n: usize, device: &Device) -> Tensor {
    let values: Vec<f32> = (0..n * 16 * 16)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    Tensor::from_vec(values, (n, 1, 16, 16), device).unwrap()
}

fn classifier(config: &ClassifierConfig, seed: u64) -> (UNetClassifier, VarMap) {
    classifier_on(config, seed, &Device::Cpu)
}

fn classifier_on(
    config: &ClassifierConfig,
    seed: u64,
    device: &Device,
) -> (UNetClassifier, VarMap) {
    let varmap = VarMap::new();
    let model = UNetClassifier::new(
        &unet_config(),
        config,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )
    .unwrap();
    model
        .init_weights(&varmap, &mut ChaCha8Rng::seed_from_u64(seed))
        .unwrap();
    (model, varmap)
}

/// A segmentation checkpoint of a bare U-Net with seed-`seed` weights.
fn segmentation_checkpoint(
    config: &UNetConfig,
    seed: u64,
    path: &std::path::Path,
) -> (UNet, VarMap) {
    segmentation_checkpoint_on(config, seed, path, &Device::Cpu)
}

fn segmentation_checkpoint_on(
    config: &UNetConfig,
    seed: u64,
    path: &std::path::Path,
    device: &Device,
) -> (UNet, VarMap) {
    let varmap = VarMap::new();
    let unet = UNet::new(config, VarBuilder::from_varmap(&varmap, DType::F32, device)).unwrap();
    unet.init_weights(&varmap, &mut ChaCha8Rng::seed_from_u64(seed))
        .unwrap();
    lus_unet::save_weights(&varmap, path).unwrap();
    (unet, varmap)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Every head placement on `device`; the logits and map equal the CPU's to float rounding.
fn every_placement(device: &Device) {
    for head in [
        HeadPlacement::SegLogits,
        HeadPlacement::Decoder,
        HeadPlacement::Bottleneck,
    ] {
        let config = ClassifierConfig {
            head,
            ..ClassifierConfig::default()
        };
        let (model, _varmap) = classifier_on(&config, 1, device);
        let out = model
            .forward_t(&input_on(2, device), &mut Mode::Eval, true)
            .unwrap();
        assert_eq!(out.logits.dims(), &[2, 3], "{head:?}");
        let segmentation = out.segmentation.unwrap();
        assert_eq!(segmentation.dims(), &[2, 5, 16, 16], "{head:?}");
        let (cpu_model, _cpu_varmap) = classifier(&config, 1);
        let cpu = cpu_model
            .forward_t(&input(2), &mut Mode::Eval, true)
            .unwrap();
        let cpu_host = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
        let logits_diff = max_abs_diff(&cpu_host(&out.logits), &cpu.logits);
        let map_diff = max_abs_diff(&cpu_host(&segmentation), cpu.segmentation.as_ref().unwrap());
        assert!(
            logits_diff < 1e-4 && map_diff < 1e-4,
            "{head:?} on {device:?}: logits differ from the CPU's by {logits_diff}, maps by \
             {map_diff}"
        );
        let out = model
            .forward_t(&input_on(2, device), &mut Mode::Eval, false)
            .unwrap();
        assert_eq!(
            out.segmentation.is_some(),
            head == HeadPlacement::SegLogits,
            "{head:?}"
        );
        let probs = UNetClassifier::probabilities(&out.logits).unwrap();
        let sums: Vec<f32> = probs.sum(1).unwrap().to_vec1().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
    }
}
test_device!(
    every_placement,
    every_placement_gives_logits_and_the_segmentation_map,
    every_placement_gives_logits_and_the_segmentation_map_cuda
);

fn loaded_backbone(device: &Device) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg.safetensors");
    let (unet, _seg_vars) = segmentation_checkpoint_on(&unet_config(), 7, &path, device);
    let (model, varmap) = classifier_on(&ClassifierConfig::default(), 3, device);
    let x = input_on(2, device);
    let before = model.forward_t(&x, &mut Mode::Eval, true).unwrap();
    model.load_backbone(&varmap, &path).unwrap();
    let out = model.forward_t(&x, &mut Mode::Eval, true).unwrap();
    let reference = unet.forward_t(&x, &mut Mode::Eval).unwrap();
    // Tensor by tensor: every pretrained tensor is copied bit for bit under `unet.`.
    let file = candle_core::safetensors::load(&path, device).unwrap();
    let data = varmap.data().lock().unwrap();
    assert_eq!(
        data.keys().filter(|k| k.starts_with("unet.")).count(),
        file.len()
    );
    for (name, tensor) in &file {
        let var = &data[&format!("unet.{name}")];
        assert_eq!(max_abs_diff(var.as_tensor(), tensor), 0.0, "{name}");
    }
    drop(data);
    assert_eq!(
        max_abs_diff(out.segmentation.as_ref().unwrap(), &reference),
        0.0
    );
    assert!(
        max_abs_diff(&before.logits, &out.logits) > 0.0,
        "loading changed nothing"
    );
}
test_device!(
    loaded_backbone,
    a_loaded_backbone_segments_exactly_like_the_segmentation_unet,
    a_loaded_backbone_segments_exactly_like_the_segmentation_unet_cuda
);

#[test]
fn a_checkpoint_of_another_architecture_is_one_error_listing_the_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.safetensors");
    let wide = UNetConfig {
        base_channels: 8,
        ..unet_config()
    };
    segmentation_checkpoint(&wide, 1, &path);
    let (model, varmap) = classifier(&ClassifierConfig::default(), 3);
    let before = varmap
        .all_vars()
        .iter()
        .map(|v| v.as_tensor().sum_all().unwrap().to_scalar::<f32>().unwrap())
        .sum::<f32>();
    let err = model.load_backbone(&varmap, &path).unwrap_err();
    assert!(matches!(err, TransferError::UNet(_)));
    let text = err.to_string();
    assert!(text.contains("wide.safetensors"), "{text}");
    assert!(text.contains("enc.0.conv1.weight"), "{text}");
    let after = varmap
        .all_vars()
        .iter()
        .map(|v| v.as_tensor().sum_all().unwrap().to_scalar::<f32>().unwrap())
        .sum::<f32>();
    assert_eq!(before, after, "a failed load must not change any variable");

    let fewer = UNetConfig {
        depth: 1,
        ..unet_config()
    };
    let path = dir.path().join("shallow.safetensors");
    segmentation_checkpoint(&fewer, 1, &path);
    let text = model.load_backbone(&varmap, &path).unwrap_err().to_string();
    assert!(text.contains("missing"), "{text}");
}

#[test]
fn freezing_decides_which_tensors_train_and_receive_gradients() {
    let names = |config: &ClassifierConfig| -> Vec<(String, Vec<String>, f64)> {
        let (model, varmap) = classifier(config, 1);
        model
            .param_sets(&varmap)
            .unwrap()
            .into_iter()
            .map(|s| {
                (
                    s.name,
                    s.params.into_iter().map(|(n, _)| n).collect(),
                    s.lr_multiplier,
                )
            })
            .collect()
    };
    let all = names(&ClassifierConfig {
        backbone_lr_multiplier: 0.1,
        ..ClassifierConfig::default()
    });
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].2, 0.1);
    assert!(all[0].1.iter().any(|n| n.starts_with("unet.enc.")));
    assert!(all[0].1.iter().all(|n| !n.contains("running")));
    assert_eq!(all[1].1.len(), 6);
    assert!(all[1].1.iter().all(|n| n.starts_with("classifier.")));

    let encoder_frozen = names(&ClassifierConfig {
        freeze: Freeze::Encoder,
        ..ClassifierConfig::default()
    });
    assert!(
        encoder_frozen[0]
            .1
            .iter()
            .all(|n| !n.starts_with("unet.enc.") && !n.starts_with("unet.bottleneck."))
    );
    assert!(
        encoder_frozen[0]
            .1
            .iter()
            .any(|n| n.starts_with("unet.dec."))
    );

    let head_only = names(&ClassifierConfig {
        freeze: Freeze::AllButHead,
        ..ClassifierConfig::default()
    });
    assert_eq!(head_only.len(), 1);
    assert_eq!(head_only[0].0, "head");

    let bottleneck = names(&ClassifierConfig {
        head: HeadPlacement::Bottleneck,
        ..ClassifierConfig::default()
    });
    assert!(
        bottleneck[0]
            .1
            .iter()
            .all(|n| !n.starts_with("unet.dec.") && !n.starts_with("unet.head."))
    );

    // With the encoder frozen, a backward pass leaves it without gradients.
    let config = ClassifierConfig {
        freeze: Freeze::Encoder,
        ..ClassifierConfig::default()
    };
    let (model, varmap) = classifier(&config, 1);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let out = model
        .forward_t(&input(2), &mut Mode::train(&mut rng), false)
        .unwrap();
    let grads = out.logits.sum_all().unwrap().backward().unwrap();
    let data = varmap.data().lock().unwrap();
    assert!(
        grads
            .get(data["unet.enc.0.conv1.weight"].as_tensor())
            .is_none()
    );
    assert!(
        grads
            .get(data["unet.dec.0.conv1.weight"].as_tensor())
            .is_some()
    );
    assert!(
        grads
            .get(data["classifier.linear.weight"].as_tensor())
            .is_some()
    );
}

#[test]
fn one_seed_gives_one_head_whatever_the_backbone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg.safetensors");
    segmentation_checkpoint(&unet_config(), 9, &path);
    let (_, none_arm) = classifier(&ClassifierConfig::default(), 5);
    let (pretrained, pretrained_arm) = classifier(&ClassifierConfig::default(), 5);
    pretrained.load_backbone(&pretrained_arm, &path).unwrap();
    let a = none_arm.data().lock().unwrap();
    let b = pretrained_arm.data().lock().unwrap();
    for name in ["classifier.conv1.weight", "classifier.linear.weight"] {
        assert_eq!(
            max_abs_diff(a[name].as_tensor(), b[name].as_tensor()),
            0.0,
            "{name}"
        );
    }
    assert!(
        max_abs_diff(
            a["unet.head.weight"].as_tensor(),
            b["unet.head.weight"].as_tensor()
        ) > 0.0
    );
    let (_, other_seed) = classifier(&ClassifierConfig::default(), 6);
    let c = other_seed.data().lock().unwrap();
    assert!(
        max_abs_diff(
            a["classifier.linear.weight"].as_tensor(),
            c["classifier.linear.weight"].as_tensor()
        ) > 0.0
    );
}

#[test]
fn config_is_validated_and_reads_kebab_case() {
    let config: ClassifierConfig =
        toml::from_str("head = \"bottleneck\"\nfreeze = \"all-but-head\"\nhead_channels = 8\n")
            .unwrap();
    assert_eq!(config.head, HeadPlacement::Bottleneck);
    assert_eq!(config.freeze, Freeze::AllButHead);
    config.validate().unwrap();
    assert!(toml::from_str::<ClassifierConfig>("head = \"logits\"\n").is_err());
    assert!(toml::from_str::<ClassifierConfig>("heads = \"decoder\"\n").is_err());
    for bad in [
        ClassifierConfig {
            num_diagnoses: 1,
            ..ClassifierConfig::default()
        },
        ClassifierConfig {
            head_channels: 0,
            ..ClassifierConfig::default()
        },
        ClassifierConfig {
            head_dropout: 1.0,
            ..ClassifierConfig::default()
        },
        ClassifierConfig {
            head_lr_multiplier: f64::NAN,
            ..ClassifierConfig::default()
        },
    ] {
        assert!(
            matches!(bad.validate(), Err(TransferError::Config { .. })),
            "{bad:?}"
        );
    }
}
