//! `train_segmentation` from a TOML run configuration: the wiring of device, model, loaders (with
//! augmentation) and trainer, and the checks that tie the parts of the configuration together.

mod common;

use common::*;
use lus_train::{Resume, SegRunConfig, train_segmentation};

const RUN: &str = r#"
[train]
epochs = 2
batch_size = 3
lr = 0.01
seed = 4
device = "cpu"
best_metric = "val_mdice"
log_every = 1
schedule = { kind = "cosine", warmup_steps = 1, final_factor = 0.1 }
[train.loss]
ce_weight = 1.0
dice_weight = 0.5
class_weights = [0.5, 2.0, 2.0]
ignore_id = 255

[unet]
num_classes = 3
depth = 2
base_channels = 8
norm = { group = { groups = 4 } }
dropout = 0.2

[data]
size = 32
prefetch = 1
[data.augment]
"#;

#[test]
fn toml_run_trains_with_augmentation_and_dropout() {
    let config = SegRunConfig::from_toml_str(RUN).unwrap();
    assert!(
        config.data.augment.is_some(),
        "an empty table means default ranges"
    );
    let examples = synthetic_examples(8, 9);
    let dir = tempfile::tempdir().unwrap();
    let run = |dir: &std::path::Path| {
        train_segmentation(
            &config,
            source(&examples[..6]),
            source(&examples[6..]),
            class_names(),
            dir,
            Resume::Never,
        )
        .unwrap()
    };
    let summary = run(dir.path());
    assert_eq!(summary.history.len(), 2);
    assert_eq!(summary.steps, 4, "6 examples in batches of 3, 2 epochs");
    let best = summary.best.as_ref().unwrap();
    assert_eq!(best.metric, "val_mdice");
    assert!(summary.history.iter().all(|r| r.train_loss.is_finite()));
    // The cosine schedule's last step (step 3 of 4) in epoch 2: 0.1 + 0.9 (1 + cos(2 pi / 3)) / 2.
    let expected_lr = 0.01 * (0.1 + 0.9 * (1.0 + (2.0 * std::f64::consts::PI / 3.0).cos()) / 2.0);
    assert!((summary.history[1].lr - expected_lr).abs() < 1e-15);

    // Augmentation and dropout draw from the run seed only: a second run is identical.
    let again = tempfile::tempdir().unwrap();
    let second = run(again.path());
    assert_eq!(
        deterministic_columns(&summary.history),
        deterministic_columns(&second.history)
    );
}

#[test]
fn run_config_parts_must_agree() {
    let cases = [
        (RUN.replace("size = 32", "size = 30"), "data.size"),
        (
            RUN.replace(
                "class_weights = [0.5, 2.0, 2.0]",
                "class_weights = [0.5, 2.0]",
            ),
            "class_weights",
        ),
        (RUN.replace("depth = 2", "depth = 0"), "depth"),
        (RUN.replace("[data]", "[data]\nsizee = 3"), "sizee"),
    ];
    for (text, needle) in cases {
        let err = SegRunConfig::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    // Class names must match the U-Net's classes.
    let config = SegRunConfig::from_toml_str(RUN).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let examples = synthetic_examples(2, 1);
    let err = train_segmentation(
        &config,
        source(&examples),
        source(&examples),
        vec!["background".into(), "line".into()],
        dir.path(),
        Resume::Never,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("2 names for a U-Net with 3 classes"), "{err}");
}

/// `class_weights = "sqrt-balanced"` weighs the cross-entropy by the training masks' pixel
/// counts: the same run as one given those weights by hand, bit for bit.
#[test]
fn weights_from_the_training_masks_are_the_hand_computed_ones() {
    let examples = synthetic_examples(8, 9);
    let train = source(&examples[..6]);
    let counts = lus_train::seg::pixel_counts(train.as_ref(), 3).unwrap();
    let total: u64 = counts.iter().sum();
    // Every pixel of every training mask is counted once (these masks have no ignore id).
    let side = u64::from(examples[0].1.width());
    assert_eq!(total, 6 * side * side);
    let by_hand: Vec<f32> = counts
        .iter()
        .map(|&c| ((total as f64 / (3.0 * c as f64)).sqrt()) as f32)
        .collect();
    assert!(
        by_hand[0] < by_hand[1],
        "{counts:?}: the rare class weighs more"
    );

    let mut auto = SegRunConfig::from_toml_str(RUN).unwrap();
    auto.train.loss.class_weights = None;
    auto.class_weights = lus_train::ClassWeighting::SqrtBalanced;
    let mut given = auto.clone();
    given.class_weights = lus_train::ClassWeighting::None;
    given.train.loss.class_weights = Some(by_hand);
    let run = |config: &SegRunConfig| {
        let dir = tempfile::tempdir().unwrap();
        train_segmentation(
            config,
            source(&examples[..6]),
            source(&examples[6..]),
            class_names(),
            dir.path(),
            Resume::Never,
        )
        .unwrap()
    };
    assert_eq!(
        deterministic_columns(&run(&auto).history),
        deterministic_columns(&run(&given).history)
    );
    // Both at once is a configuration error.
    let mut both = auto.clone();
    both.train.loss.class_weights = Some(vec![1.0; 3]);
    let err = both.validate().unwrap_err().to_string();
    assert!(err.contains("not both"), "{err}");
}
