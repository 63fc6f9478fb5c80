//! The reverse-transfer classifier trained by the shared trainer: it learns a task whose classes
//! are told apart by line shapes (as B-lines vs A-lines), reproducibly, from a fresh or a
//! pretrained backbone; class weighting follows scikit-learn's "balanced" rule.

use std::sync::Arc;

use image::GrayImage;
use lus_data::cls_loader::{ClassificationSource, InMemoryClassSource};
use lus_train::{Backbone, ClassWeighting, ClsRunConfig, Resume, train_classifier};
use lus_unet::UNetConfig;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIDE: u32 = 32;

/// Class 0: speckle only; class 1: a bright horizontal line (A-line-like); class 2: a bright
/// vertical band (B-line-like). Positions vary.
fn examples(count: usize, seed: u64) -> Arc<dyn ClassificationSource> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = (0..count)
        .map(|i| {
            let class = i % 3;
            let at = rng.random_range(6..SIDE - 6);
            let image = GrayImage::from_fn(SIDE, SIDE, |x, y| {
                let noise: u8 = rng.random_range(0..60);
                let on = match class {
                    1 => (at..at + 2).contains(&y),
                    2 => (at..at + 3).contains(&x),
                    _ => false,
                };
                image::Luma([if on { 200 + noise / 2 } else { noise }])
            });
            (image, class)
        })
        .collect();
    Arc::new(InMemoryClassSource(data))
}

fn unet() -> UNetConfig {
    UNetConfig {
        num_classes: 4,
        depth: 2,
        base_channels: 4,
        ..UNetConfig::default()
    }
}

fn config() -> ClsRunConfig {
    let mut config = ClsRunConfig::default();
    config.train.epochs = 12;
    config.train.batch_size = 6;
    config.train.lr = 0.01;
    config.train.device = lus_train::DeviceSpec::Cpu;
    config.train.seed = 3;
    config.classifier.head_channels = 8;
    config.data.size = SIDE;
    config.data.prefetch = 1;
    config
}

fn names() -> Vec<String> {
    ["healthy", "a", "b"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn a_fresh_classifier_learns_line_shapes_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &std::path::Path| {
        train_classifier(
            &config(),
            &unet(),
            Backbone::Fresh,
            examples(30, 1),
            examples(15, 2),
            names(),
            out,
            Resume::Never,
            |t| t.with_progress_bar(false),
        )
        .unwrap()
    };
    let a = run(&dir.path().join("a"));
    let last = a.history.last().unwrap();
    let first = &a.history[0];
    assert!(
        last.train_loss < 0.5 * first.train_loss,
        "training loss {} -> {}",
        first.train_loss,
        last.train_loss
    );
    let best = a.best.clone().unwrap();
    assert_eq!(best.metric, "val_balanced_accuracy");
    assert!(
        best.value >= 0.8,
        "best validation balanced accuracy {}",
        best.value
    );
    for metric in ["val_macro_auc", "val_recall_b", "val_specificity_healthy"] {
        assert!(last.get(metric).is_some(), "{metric} missing");
    }
    let b = run(&dir.path().join("b"));
    for (x, y) in a.history.iter().zip(&b.history) {
        assert_eq!(x.train_loss, y.train_loss);
        let bits = |m: &[(String, f64)]| -> Vec<(String, u64)> {
            m.iter().map(|(n, v)| (n.clone(), v.to_bits())).collect()
        };
        assert_eq!(bits(&x.val_metrics), bits(&y.val_metrics));
    }
}

#[test]
fn a_pretrained_backbone_is_loaded_and_a_wrong_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A segmentation checkpoint of the same architecture.
    let varmap = candle_nn::VarMap::new();
    let seg = lus_unet::UNet::new(
        &unet(),
        candle_nn::VarBuilder::from_varmap(
            &varmap,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        ),
    )
    .unwrap();
    seg.init_weights(&varmap, &mut ChaCha8Rng::seed_from_u64(11))
        .unwrap();
    let checkpoint = dir.path().join("seg.safetensors");
    lus_unet::save_weights(&varmap, &checkpoint).unwrap();
    let mut short = config();
    short.train.epochs = 1;
    let summary = train_classifier(
        &short,
        &unet(),
        Backbone::Pretrained(&checkpoint),
        examples(12, 1),
        examples(6, 2),
        names(),
        &dir.path().join("pre"),
        Resume::Never,
        |t| t.with_progress_bar(false),
    )
    .unwrap();
    assert_eq!(summary.history.len(), 1);

    // Freezing the encoder keeps every encoder and bottleneck tensor (running statistics
    // included) bit-identical to the pretrained ones after training; the decoder moves.
    let mut frozen = short.clone();
    frozen.classifier.freeze = lus_transfer::Freeze::Encoder;
    let summary = train_classifier(
        &frozen,
        &unet(),
        Backbone::Pretrained(&checkpoint),
        examples(12, 1),
        examples(6, 2),
        names(),
        &dir.path().join("frozen"),
        Resume::Never,
        |t| t.with_progress_bar(false),
    )
    .unwrap();
    let trained = candle_core::safetensors::load(
        summary.last_checkpoint_dir().join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let pretrained =
        candle_core::safetensors::load(&checkpoint, &candle_core::Device::Cpu).unwrap();
    let bits = |t: &candle_core::Tensor| -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    let mut frozen_checked = 0;
    let mut moved = 0;
    for (name, tensor) in &pretrained {
        let after = &trained[&format!("unet.{name}")];
        if name.starts_with("enc.") || name.starts_with("bottleneck.") {
            assert_eq!(bits(tensor), bits(after), "{name} changed although frozen");
            frozen_checked += 1;
        } else if bits(tensor) != bits(after) {
            moved += 1;
        }
    }
    assert!(
        frozen_checked > 10 && moved > 0,
        "{frozen_checked} frozen, {moved} moved"
    );

    let wider = UNetConfig {
        base_channels: 8,
        ..unet()
    };
    let err = train_classifier(
        &short,
        &wider,
        Backbone::Pretrained(&checkpoint),
        examples(12, 1),
        examples(6, 2),
        names(),
        &dir.path().join("wrong"),
        Resume::Never,
        |t| t.with_progress_bar(false),
    )
    .err()
    .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("seg.safetensors") && text.contains("enc.0.conv1.weight"),
        "{text}"
    );
}

#[test]
fn balanced_weights_follow_scikit_learn() {
    // sklearn.utils.class_weight.compute_class_weight("balanced", classes=[0,1,2],
    // y=[0,0,0,0,1,1,2]) = n / (k * n_c) = [7/12, 7/6, 7/3].
    let w = ClassWeighting::Balanced
        .weights(&[0, 0, 0, 0, 1, 1, 2], 3)
        .unwrap();
    for (got, want) in w.iter().zip([7.0 / 12.0, 7.0 / 6.0, 7.0 / 3.0]) {
        assert!((got - want).abs() < 1e-6, "{w:?}");
    }
    assert_eq!(
        ClassWeighting::Balanced.weights(&[0, 0], 2).unwrap()[1],
        0.0
    );
    assert!(ClassWeighting::None.weights(&[0], 2).is_none());
    let mut bad = config();
    bad.class_weights = ClassWeighting::Explicit(vec![1.0]);
    assert!(
        bad.validate(&unet())
            .unwrap_err()
            .to_string()
            .contains("class_weights")
    );
    let mut bad = config();
    bad.train.loss.dice_weight = 1.0;
    assert!(
        bad.validate(&unet())
            .unwrap_err()
            .to_string()
            .contains("dice_weight")
    );
}
