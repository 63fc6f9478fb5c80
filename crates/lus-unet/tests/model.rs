//! Weights IO, initialisation, dropout, configuration checks and the encoder/decoder split.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use common::{build, randn, randomize_non_weights, small_config, values, values_f32};
use lus_unet::{
    Mode, Norm, ParamKind, Part, UNet, UNetConfig, UNetError, Upsampling, load_weights,
    load_weights_prefixed, save_weights, save_weights_prefixed,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn eval_logits(unet: &UNet, x: &Tensor) -> Vec<f32> {
    values_f32(&unet.forward_t(x, &mut Mode::Eval).unwrap())
}

fn snapshot(varmap: &VarMap) -> HashMap<String, Vec<f32>> {
    varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), values_f32(v.as_tensor())))
        .collect()
}

fn tensors_of(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Weights IO

#[test]
fn save_then_load_gives_bit_identical_logits_including_running_statistics() {
    let config = small_config();
    let (varmap_a, unet_a) = build(&config, DType::F32, 1);
    randomize_non_weights(&varmap_a, &unet_a, 2);
    let x = randn(&[2, 1, 16, 16], DType::F32, 3);
    // One train-mode forward moves the running statistics away from their init.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    unet_a.forward_t(&x, &mut Mode::train(&mut rng)).unwrap();
    let expected = eval_logits(&unet_a, &x);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unet.safetensors");
    save_weights(&varmap_a, &path).unwrap();
    // No temporary file is left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let (varmap_b, unet_b) = build(&config, DType::F32, 99);
    assert_ne!(eval_logits(&unet_b, &x), expected);
    load_weights(&varmap_b, &path).unwrap();
    assert_eq!(eval_logits(&unet_b, &x), expected);
    assert_eq!(snapshot(&varmap_a), snapshot(&varmap_b));
}

#[test]
fn prefixed_save_and_load_move_a_unet_in_and_out_of_a_larger_varmap() {
    let config = small_config();
    let (bare_map, bare) = build(&config, DType::F32, 5);
    randomize_non_weights(&bare_map, &bare, 6);
    let x = randn(&[1, 1, 16, 16], DType::F32, 7);
    let dir = tempfile::tempdir().unwrap();
    let bare_path = dir.path().join("bare.safetensors");
    save_weights(&bare_map, &bare_path).unwrap();

    // A wrapper VarMap: the U-Net under "unet." beside a foreign tensor.
    let wrapper_map = VarMap::new();
    let vb = VarBuilder::from_varmap(&wrapper_map, DType::F32, &Device::Cpu);
    let wrapped = UNet::new(&config, vb.pp("unet")).unwrap();
    vb.pp("cls")
        .get_with_hints(3, "weight", Init::Const(0.5))
        .unwrap();
    assert!(
        wrapped
            .param_specs()
            .iter()
            .all(|s| s.name.starts_with("unet."))
    );
    wrapped
        .init_weights(&wrapper_map, &mut ChaCha8Rng::seed_from_u64(8))
        .unwrap();
    load_weights_prefixed(&wrapper_map, &bare_path, "unet").unwrap();
    assert_eq!(eval_logits(&wrapped, &x), eval_logits(&bare, &x));
    // The foreign tensor was neither initialised nor loaded.
    assert_eq!(
        values_f32(&tensors_of(&wrapper_map)["cls.weight"]),
        vec![0.5; 3]
    );
    // A plain load into the wrapper fails: every name differs by the prefix.
    assert!(load_weights(&wrapper_map, &bare_path).is_err());

    // And back out.
    let out_path = dir.path().join("out.safetensors");
    save_weights_prefixed(&wrapper_map, &out_path, "unet").unwrap();
    let (again_map, again) = build(&config, DType::F32, 9);
    load_weights(&again_map, &out_path).unwrap();
    assert_eq!(eval_logits(&again, &x), eval_logits(&bare, &x));
    let err = save_weights_prefixed(&wrapper_map, dir.path().join("x.safetensors"), "nothing")
        .unwrap_err();
    assert!(err.to_string().contains("nothing to save"), "{err}");
}

/// Loads `tensors` (written to a file) into a fresh model, expects a mismatch error, checks the
/// model was left untouched, and returns the message.
fn load_error(config: &UNetConfig, tensors: &HashMap<String, Tensor>, dir: &Path) -> String {
    let path = dir.join("broken.safetensors");
    candle_core::safetensors::save(tensors, &path).unwrap();
    let (varmap, _) = build(config, DType::F32, 20);
    let before = snapshot(&varmap);
    let err = load_weights(&varmap, &path).unwrap_err();
    assert!(matches!(err, UNetError::WeightsMismatch { .. }), "{err:?}");
    assert_eq!(snapshot(&varmap), before, "a failed load changed the model");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    message
}

#[test]
fn load_lists_every_missing_unexpected_and_misfitting_tensor() {
    let config = small_config();
    let (varmap, _) = build(&config, DType::F32, 10);
    let good = tensors_of(&varmap);
    let dir = tempfile::tempdir().unwrap();

    let mut missing = good.clone();
    missing.remove("enc.0.conv1.weight");
    missing.remove("dec.1.norm2.running_var");
    let message = load_error(&config, &missing, dir.path());
    assert!(
        message.contains("2 missing: dec.1.norm2.running_var, enc.0.conv1.weight"),
        "{message}"
    );

    let mut wrong_shape = good.clone();
    wrong_shape.insert(
        "head.bias".into(),
        Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(),
    );
    let message = load_error(&config, &wrong_shape, dir.path());
    assert!(
        message.contains("head.bias: expected F32 [3], found F32 [5]"),
        "{message}"
    );

    let mut wrong_dtype = good.clone();
    let head = wrong_dtype["head.weight"].to_dtype(DType::F64).unwrap();
    wrong_dtype.insert("head.weight".into(), head);
    let message = load_error(&config, &wrong_dtype, dir.path());
    assert!(
        message.contains("head.weight: expected F32 [3, 4, 1, 1], found F64 [3, 4, 1, 1]"),
        "{message}"
    );

    // Everything at once, in one message.
    let mut all = missing.clone();
    all.insert(
        "head.bias".into(),
        Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(),
    );
    all.insert(
        "enc.0.norm1.num_batches_tracked".into(),
        Tensor::new(&[0i64], &Device::Cpu).unwrap(),
    );
    let message = load_error(&config, &all, dir.path());
    for needle in [
        "2 missing",
        "enc.0.conv1.weight",
        "dec.1.norm2.running_var",
        "1 unexpected: enc.0.norm1.num_batches_tracked",
        "1 with wrong shape or dtype: head.bias",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
}

#[test]
fn load_of_a_truncated_or_absent_file_names_the_file_and_the_tensors() {
    let config = small_config();
    let (varmap, _) = build(&config, DType::F32, 11);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.safetensors");
    save_weights(&varmap, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();

    let before = snapshot(&varmap);
    let err = load_weights(&varmap, &truncated).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&truncated.display().to_string()),
        "{message}"
    );
    assert!(message.contains("truncated or corrupt"), "{message}");
    assert!(
        message.contains("enc.0.conv1.weight") && message.contains("head.bias"),
        "{message}"
    );
    assert_eq!(snapshot(&varmap), before);

    let absent = dir.path().join("absent.safetensors");
    let message = load_weights(&varmap, &absent).unwrap_err().to_string();
    assert!(message.contains(&absent.display().to_string()), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Initialisation

#[test]
fn init_is_a_function_of_the_seed_alone() {
    let config = small_config();
    let (a, _) = build(&config, DType::F32, 42);
    let (b, _) = build(&config, DType::F32, 42);
    let (c, _) = build(&config, DType::F32, 43);
    // Separate VarMaps have separate HashMap orders; the values must still agree.
    assert_eq!(snapshot(&a), snapshot(&b));
    let (sa, sc) = (snapshot(&a), snapshot(&c));
    for (name, values) in &sa {
        if name.ends_with("conv1.weight") || name == "head.weight" {
            assert_ne!(values, &sc[name], "{name} did not change with the seed");
        }
    }
    // Re-initialising a used model with the same seed restores the same weights.
    let (d, unet_d) = build(&config, DType::F32, 7);
    randomize_non_weights(&d, &unet_d, 1);
    unet_d
        .init_weights(&d, &mut ChaCha8Rng::seed_from_u64(42))
        .unwrap();
    assert_eq!(snapshot(&d), sa);
}

#[test]
fn init_statistics_follow_kaiming_and_non_weights_are_constants() {
    let config = UNetConfig {
        num_classes: 6,
        ..Default::default()
    };
    let (varmap, unet) = build(&config, DType::F32, 3);
    let tensors = tensors_of(&varmap);
    let stats = |name: &str| {
        let v = values(&tensors[name]);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        (mean, std)
    };
    // bottleneck.conv2: 256 x 256 x 3 x 3 (589,824 draws), fan_in 2304.
    let (mean, std) = stats("bottleneck.conv2.weight");
    let target = (2.0f64 / 2304.0).sqrt();
    assert!((std / target - 1.0).abs() < 0.1, "std {std} vs {target}");
    assert!(mean.abs() < 0.1 * target, "mean {mean}");
    // The deepest transposed conv: 256 -> 128, fan_in 256 (one tap per input channel).
    let (_, std) = stats("dec.3.up.weight");
    let target = (2.0f64 / 256.0).sqrt();
    assert!((std / target - 1.0).abs() < 0.1, "std {std} vs {target}");

    let mut kinds = 0;
    for spec in unet.param_specs() {
        let v = values(&tensors[&spec.name]);
        let constant = match spec.kind {
            ParamKind::ConvWeight { .. } => continue,
            ParamKind::ConvBias | ParamKind::NormShift | ParamKind::RunningMean => 0.0,
            ParamKind::NormScale | ParamKind::RunningVar => 1.0,
        };
        assert!(
            v.iter().all(|x| *x == constant),
            "{} not all {constant}",
            spec.name
        );
        kinds += 1;
    }
    assert!(kinds > 0);
}

#[test]
fn param_specs_trainable_vars_and_parts_are_consistent() {
    let config = small_config();
    let (varmap, unet) = build(&config, DType::F32, 1);
    let specs = unet.param_specs();
    let mut names: Vec<_> = specs.iter().map(|s| s.name.clone()).collect();
    let mut in_map: Vec<_> = tensors_of(&varmap).into_keys().collect();
    in_map.sort();
    assert!(names.is_sorted());
    assert_eq!(names, in_map);
    names.dedup();
    assert_eq!(names.len(), specs.len());

    let trainable = unet.trainable_vars(&varmap).unwrap();
    let count: usize = trainable.iter().map(|v| v.elem_count()).sum();
    assert_eq!(count, unet.num_trainable_parameters());
    // depth 2, base 4, 1 -> 3 classes, batch norm, transposed conv, counted by hand:
    // enc.0 36+144, enc.1 288+576, bottleneck 1152+2304, dec.1 up 512+8 convs 1152+576,
    // dec.0 up 128+4 convs 288+144, head 12+3, norms 2*(4+8+16+8+4)*2 = 160.
    assert_eq!(
        count,
        36 + 144 + 288 + 576 + 1152 + 2304 + 520 + 1728 + 132 + 432 + 15 + 160
    );
    assert!(
        trainable.len() < specs.len(),
        "running statistics must not be trainable"
    );

    let decoder = unet
        .vars_where(&varmap, |s| {
            s.part == Part::Decoder && s.kind.is_trainable()
        })
        .unwrap();
    assert_eq!(
        decoder.len(),
        specs
            .iter()
            .filter(|s| s.name.starts_with("dec.") && s.kind.is_trainable())
            .count()
    );
    // A model handed the wrong VarMap says so.
    let err = unet.trainable_vars(&VarMap::new()).unwrap_err();
    assert!(matches!(err, UNetError::MissingVar { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Modes and dropout

#[test]
fn train_mode_dropout_is_reproducible_and_eval_ignores_it() {
    let config = UNetConfig {
        dropout: 0.5,
        norm: Norm::Group { groups: 2 },
        ..small_config()
    };
    let (varmap, unet) = build(&config, DType::F32, 1);
    randomize_non_weights(&varmap, &unet, 2);
    let x = randn(&[2, 1, 16, 16], DType::F32, 3);
    let train = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        values_f32(&unet.forward_t(&x, &mut Mode::train(&mut rng)).unwrap())
    };
    assert_eq!(train(5), train(5));
    assert_ne!(train(5), train(6));

    let eval = eval_logits(&unet, &x);
    assert_eq!(eval, eval_logits(&unet, &x));
    // The same weights without dropout: eval is unchanged, and with group norm (no batch
    // statistics) train mode equals eval mode exactly.
    let no_dropout = UNet::new(
        &UNetConfig {
            dropout: 0.0,
            ..config.clone()
        },
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    assert_eq!(eval_logits(&no_dropout, &x), eval);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    assert_eq!(
        values_f32(
            &no_dropout
                .forward_t(&x, &mut Mode::train(&mut rng))
                .unwrap()
        ),
        eval
    );
    assert_ne!(train(5), eval);

    // The mask acts on the bottleneck: about half of its values are zeroed in training.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let features = unet.encode(&x, &mut Mode::train(&mut rng)).unwrap();
    let reference = no_dropout.encode(&x, &mut Mode::Eval).unwrap();
    let (dropped, kept): (Vec<_>, Vec<_>) = values(&features.bottleneck)
        .into_iter()
        .zip(values(&reference.bottleneck))
        .filter(|(_, r)| *r > 0.0)
        .partition(|(v, _)| *v == 0.0);
    let fraction = dropped.len() as f64 / (dropped.len() + kept.len()) as f64;
    assert!((fraction - 0.5).abs() < 0.15, "dropped fraction {fraction}");
    assert!(
        kept.iter()
            .all(|(v, r)| (v - 2.0 * r).abs() < 1e-5 * r.abs().max(1.0))
    );
}

#[test]
fn batch_norm_train_mode_uses_batch_statistics_and_updates_running_ones() {
    let config = small_config();
    let (varmap, unet) = build(&config, DType::F32, 1);
    let x = (randn(&[4, 1, 16, 16], DType::F32, 3) * 3.0)
        .unwrap()
        .affine(1.0, 2.0)
        .unwrap();
    let before = snapshot(&varmap);
    let eval = eval_logits(&unet, &x);
    assert_eq!(snapshot(&varmap), before, "eval must not change the model");
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let train = values_f32(&unet.forward_t(&x, &mut Mode::train(&mut rng)).unwrap());
    assert_ne!(train, eval);
    let after = snapshot(&varmap);
    // The first norm's running mean moved 10% of the way (momentum 0.1) from 0 to the batch
    // mean of conv1's output.
    let x_mean = values(&x).iter().sum::<f64>() / x.elem_count() as f64;
    let w = values(&tensors_of(&varmap)["enc.0.conv1.weight"]);
    // Away from the zero padding, channel c of conv1 averages to x_mean * sum(w_c); the border
    // makes the exact value differ slightly, so check the direction and rough size only.
    let running = &after["enc.0.norm1.running_mean"];
    for (c, r) in running.iter().enumerate() {
        let approx = 0.1 * x_mean * w[c * 9..(c + 1) * 9].iter().sum::<f64>();
        assert!(
            (f64::from(*r) - approx).abs() < 0.2 * approx.abs() + 0.02,
            "channel {c}: running mean {r} vs about {approx}"
        );
    }
    for (name, values) in &after {
        if name.ends_with("running_var") {
            assert_ne!(values, &before[name], "{name} not updated");
        }
        if !name.contains("running_") {
            assert_eq!(values, &before[name], "{name} changed in a forward pass");
        }
    }
}

#[test]
fn encode_decode_head_compose_to_forward() {
    for upsampling in [Upsampling::TransposedConv, Upsampling::BilinearConv] {
        let config = UNetConfig {
            depth: 3,
            base_channels: 3,
            num_classes: 5,
            in_channels: 2,
            upsampling,
            ..Default::default()
        };
        let (varmap, unet) = build(&config, DType::F32, 1);
        randomize_non_weights(&varmap, &unet, 2);
        let x = randn(&[2, 2, 16, 24], DType::F32, 3);
        let features = unet.encode(&x, &mut Mode::Eval).unwrap();
        let shapes: Vec<_> = features.skips.iter().map(|s| s.dims().to_vec()).collect();
        assert_eq!(
            shapes,
            vec![vec![2, 3, 16, 24], vec![2, 6, 8, 12], vec![2, 12, 4, 6]]
        );
        assert_eq!(features.bottleneck.dims(), &[2, 24, 2, 3]);
        let decoded = unet.decode(&features, &mut Mode::Eval).unwrap();
        assert_eq!(decoded.dims(), &[2, 3, 16, 24]);
        let logits = unet.head(&decoded).unwrap();
        assert_eq!(values_f32(&logits), eval_logits(&unet, &x));
        let mut short = features.clone();
        short.skips.pop();
        assert!(unet.decode(&short, &mut Mode::Eval).is_err());
    }
}

#[test]
fn untouched_placeholders_give_constant_logits() {
    // Without init_weights every weight is zero: the output is the head bias everywhere (a
    // forgotten init is visible, never a silent draw from candle's RNG).
    let config = small_config();
    let varmap = VarMap::new();
    let unet = UNet::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let logits = eval_logits(&unet, &randn(&[1, 1, 16, 16], DType::F32, 1));
    assert!(logits.iter().all(|v| *v == 0.0));
}

// ---------------------------------------------------------------------------------------------
// Configuration and input checks

#[test]
fn invalid_configs_are_rejected_with_the_field_named() {
    let base = UNetConfig::default();
    assert!(base.validate().is_ok());
    assert_eq!(base.min_input_multiple(), 16);
    let cases: Vec<(UNetConfig, &str)> = vec![
        (
            UNetConfig {
                depth: 0,
                ..base.clone()
            },
            "depth",
        ),
        (
            UNetConfig {
                depth: 7,
                ..base.clone()
            },
            "depth",
        ),
        (
            UNetConfig {
                base_channels: 0,
                ..base.clone()
            },
            "base_channels",
        ),
        (
            UNetConfig {
                base_channels: 1 << 14,
                ..base.clone()
            },
            "base_channels",
        ),
        (
            UNetConfig {
                in_channels: 0,
                ..base.clone()
            },
            "in_channels",
        ),
        (
            UNetConfig {
                num_classes: 0,
                ..base.clone()
            },
            "num_classes",
        ),
        (
            UNetConfig {
                dropout: 1.0,
                ..base.clone()
            },
            "dropout",
        ),
        (
            UNetConfig {
                dropout: -0.1,
                ..base.clone()
            },
            "dropout",
        ),
        (
            UNetConfig {
                dropout: f32::NAN,
                ..base.clone()
            },
            "dropout",
        ),
        (
            UNetConfig {
                norm: Norm::Group { groups: 0 },
                ..base.clone()
            },
            "groups",
        ),
        (
            UNetConfig {
                norm: Norm::Group { groups: 3 },
                ..base.clone()
            },
            "groups",
        ),
    ];
    for (config, field) in cases {
        let err = config.validate().unwrap_err();
        assert!(matches!(err, UNetError::Config { .. }), "{err:?}");
        assert!(err.to_string().contains(field), "{field}: {err}");
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        assert!(UNet::new(&config, vb).is_err());
        assert!(
            varmap.all_vars().is_empty(),
            "{field}: variables created for a bad config"
        );
    }
    assert!(
        UNetConfig {
            norm: Norm::Group { groups: 8 },
            ..base.clone()
        }
        .validate()
        .is_ok()
    );
    assert!(
        UNetConfig {
            depth: 6,
            dropout: 0.99,
            ..base
        }
        .validate()
        .is_ok()
    );
}

#[test]
fn inputs_that_do_not_fit_are_errors_not_panics() {
    let config = small_config(); // depth 2: multiples of 4
    let (_, unet) = build(&config, DType::F32, 1);
    let err = |dims: &[usize], dtype| {
        let x = Tensor::zeros(dims, dtype, &Device::Cpu).unwrap();
        unet.forward_t(&x, &mut Mode::Eval).unwrap_err().to_string()
    };
    let message = err(&[1, 1, 18, 16], DType::F32);
    assert!(
        message.contains("multiples of 2^depth = 4") && message.contains("18 x 16"),
        "{message}"
    );
    assert!(err(&[1, 1, 16, 6], DType::F32).contains("multiples"));
    assert!(err(&[1, 2, 16, 16], DType::F32).contains("input channel"));
    assert!(err(&[1, 16, 16], DType::F32).contains("4 dimensions"));
    assert!(err(&[0, 1, 16, 16], DType::F32).contains("empty"));
    assert!(err(&[1, 1, 16, 16], DType::F64).contains("dtype"));
    // Batch norm in training mode needs two values per channel at the bottleneck.
    let one_pixel = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let message = unet
        .forward_t(&one_pixel, &mut Mode::train(&mut rng))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("more than one value per channel"),
        "{message}"
    );
    assert!(unet.forward_t(&one_pixel, &mut Mode::Eval).is_ok());
    let two = Tensor::zeros((2, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(unet.forward_t(&two, &mut Mode::train(&mut rng)).is_ok());
    let check = unet.check_input(&[1, 1, 18, 16]).unwrap_err();
    assert!(matches!(check, UNetError::Input { .. }));
    assert!(unet.check_input(&[3, 1, 4, 8]).is_ok());
}
