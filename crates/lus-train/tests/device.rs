//! The trainer on every device this build has (candle's `test_device!` pattern): a short
//! segmentation run on the device against a reference run on the CPU with candle's own ops,
//! and bf16 autocast against f32 on the same device. On the CPU the first compares the `lus`
//! kernels with candle's; in a `cuda` build the `_cuda` variants compare CUDA with the CPU.

mod common;

use candle_core::Device;
use common::{class_names, loaders_on, source, synthetic_examples, train_config};
use lus_train::{
    EpochRecord, LrSchedule, Resume, SegmentationTask, TrainConfig, TrainSummary, Trainer,
    device_name,
};
use lus_unet::{Kernels, Precision, test_device};

/// `spec` as the trainer's device setting (`cpu`, `cuda:0`).
fn device_spec(device: &Device) -> lus_train::DeviceSpec {
    lus_train::DeviceSpec::parse(&device_name(device)).expect("a device name is a device spec")
}

/// Four epochs of the tiny problem (cosine schedule, clipping) on `device` with the given
/// kernels and precision.
fn short_run(device: &Device, kernels: Kernels, precision: Precision) -> TrainSummary {
    let config = TrainConfig {
        device: device_spec(device),
        schedule: LrSchedule::Cosine {
            warmup_steps: 2,
            final_factor: 0.1,
        },
        grad_clip_norm: Some(1.0),
        ..train_config(4, 5)
    };
    let unet = lus_unet::UNetConfig {
        kernels,
        precision,
        ..common::unet_config()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(config.clone(), dir.path()).unwrap();
    let device = trainer.device().clone();
    let mut task =
        SegmentationTask::new(&unet, &config.loss, class_names(), &device, config.seed).unwrap();
    let examples = synthetic_examples(12, 3);
    let (train, val) = loaders_on(
        &config,
        source(&examples[..8]),
        source(&examples[8..]),
        &device,
    );
    trainer.fit(&mut task, &train, &val, Resume::Never).unwrap()
}

/// How far two runs are apart, epoch by epoch: the largest relative difference of the train
/// losses (and of the validation losses with `with_val_loss`), and the largest absolute
/// difference of the validation metrics (IoU, Dice and the like, in [0, 1]: a class with a
/// near-empty prediction has a tiny IoU whose relative change means nothing).
fn differences(a: &[EpochRecord], b: &[EpochRecord], with_val_loss: bool) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "epochs");
    let (mut losses, mut metrics) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let mut pairs = vec![(x.train_loss, y.train_loss)];
        if with_val_loss {
            pairs.push((x.val_loss, y.val_loss));
        }
        for (p, q) in pairs {
            assert!(p.is_finite() && q.is_finite(), "non-finite loss {p} / {q}");
            losses = losses.max((p - q).abs() / p.abs().max(q.abs()));
        }
        assert_eq!(x.val_metrics.len(), y.val_metrics.len());
        for ((name_x, p), (name_y, q)) in x.val_metrics.iter().zip(&y.val_metrics) {
            assert_eq!(name_x, name_y);
            assert!(p.is_finite() && q.is_finite(), "{name_x}: {p} / {q}");
            metrics = metrics.max((p - q).abs());
        }
    }
    (losses, metrics)
}

/// Train and validation loss of each epoch.
fn losses(history: &[EpochRecord]) -> Vec<(f64, f64)> {
    history.iter().map(|r| (r.train_loss, r.val_loss)).collect()
}

/// The default kernels on `device` follow candle's ops on the CPU: same losses and metrics
/// within float tolerance after 12 updates (summation order differs between the kernels, and
/// on CUDA between the devices; batch norm and cosine schedule amplify nothing at this size).
fn short_run_matches_the_cpu_reference(device: &Device) {
    let reference = short_run(&Device::Cpu, Kernels::Candle, Precision::F32);
    let run = short_run(device, Kernels::Lus, Precision::F32);
    let (loss_diff, metric_diff) = differences(&run.history, &reference.history, true);
    eprintln!(
        "{}: losses {:?}, CPU candle ops {:?}; loss difference {loss_diff:.2e} (relative), \
         metrics {metric_diff:.2e} (absolute)",
        device_name(device),
        losses(&run.history),
        losses(&reference.history)
    );
    assert!(
        loss_diff < 1e-4 && metric_diff < 1e-3,
        "{}: the run departs from the CPU reference: losses by {loss_diff}, metrics by \
         {metric_diff}",
        device_name(device)
    );
    // The run learned something (the comparison is not between two flat lines).
    let first = run.history.first().unwrap().train_loss;
    let last = run.history.last().unwrap().train_loss;
    assert!(last < 0.8 * first, "train loss {first} -> {last}");
    if device.is_cuda() {
        let peak = run.peak_device_memory_mib.expect("CUDA memory is sampled");
        assert!(peak > 0.0, "peak device memory {peak}");
    } else {
        assert_eq!(run.peak_device_memory_mib, None);
    }
}
test_device!(
    short_run_matches_the_cpu_reference,
    short_run_matches_the_cpu_reference_cpu,
    short_run_matches_the_cpu_reference_cuda
);

/// bf16 autocast trains like f32 (train losses within 1 % over 12 updates, validation metrics
/// within 0.05), yet is not f32. The validation loss is left out: after 2-8 updates the running
/// statistics of batch norm are far from the batch statistics (validation losses of 3-14
/// against train losses of 1-2), a regime that turns bf16 rounding into 10-15 % of loss.
fn bf16_run_tracks_f32(device: &Device) {
    let f32_run = short_run(device, Kernels::Lus, Precision::F32);
    let bf16_run = short_run(device, Kernels::Lus, Precision::Bf16);
    let (loss_diff, metric_diff) = differences(&bf16_run.history, &f32_run.history, false);
    eprintln!(
        "{}: bf16 losses {:?}, f32 {:?}; loss difference {loss_diff:.2e} (relative), metrics \
         {metric_diff:.2e} (absolute)",
        device_name(device),
        losses(&bf16_run.history),
        losses(&f32_run.history)
    );
    assert!(
        loss_diff < 0.01 && metric_diff < 0.05,
        "{}: bf16 departs from f32: losses by {loss_diff}, metrics by {metric_diff}",
        device_name(device)
    );
    assert_ne!(losses(&bf16_run.history), losses(&f32_run.history));
}
test_device!(
    bf16_run_tracks_f32,
    bf16_run_tracks_f32_cpu,
    bf16_run_tracks_f32_cuda
);
