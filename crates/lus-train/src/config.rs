//! The training configuration (serde, so experiment TOML files carry it).

use serde::{Deserialize, Serialize};

use crate::device::DeviceSpec;
use crate::error::{Result, TrainError};
use crate::loss::LossConfig;
use crate::optim::OptimizerConfig;
use crate::schedule::LrSchedule;

/// Whether a larger or a smaller value of the best metric is better.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Min,
    Max,
}

impl Direction {
    /// The direction a metric name implies: losses are minimised, everything else (IoU, Dice,
    /// accuracy, AUC) maximised.
    pub fn infer(metric: &str) -> Self {
        if metric.ends_with("loss") {
            Self::Min
        } else {
            Self::Max
        }
    }

    /// Whether `candidate` is strictly better than `incumbent` (ties keep the earlier epoch; a
    /// NaN is never better).
    pub fn is_better(self, candidate: f64, incumbent: f64) -> bool {
        match self {
            Self::Min => candidate < incumbent,
            Self::Max => candidate > incumbent,
        }
    }
}

/// Everything about a training run that is not the model or the data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per training and validation batch (what [`crate::train_segmentation`] builds
    /// its loaders with; a caller of [`crate::Trainer::fit`] with loaders of its own sets their
    /// batch size there).
    pub batch_size: usize,
    /// Optimizer and its own hyper-parameters.
    pub optimizer: OptimizerConfig,
    /// Base learning rate (what the schedule scales).
    pub lr: f64,
    /// Weight decay (decoupled for AdamW, L2 in the gradient for SGD), for every parameter
    /// group that does not set its own.
    pub weight_decay: f64,
    /// Learning-rate schedule, per optimizer step.
    pub schedule: LrSchedule,
    /// The loss.
    pub loss: LossConfig,
    /// Clip the global gradient norm to this value before each update (PyTorch's
    /// `clip_grad_norm_`); `None` does not clip.
    pub grad_clip_norm: Option<f64>,
    /// Seed of every random draw of the run: initialisation, order, augmentation, dropout.
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (see [`DeviceSpec`]); parsed when the config is read,
    /// so a typo fails there.
    pub device: DeviceSpec,
    /// Column of the metrics table that selects `best.safetensors`: `val_loss`, `train_loss`
    /// or `val_<metric>` of the task (e.g. `val_miou`). Unset: the task's own default
    /// ([`crate::Task::default_best_metric`]: `val_miou` for segmentation,
    /// `val_balanced_accuracy` for classification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_metric: Option<String>,
    /// Whether larger or smaller values of `best_metric` are better; by default inferred from
    /// the name (`...loss` is minimised, anything else maximised).
    pub best_direction: Option<Direction>,
    /// Read the training loss back from the device (and update the progress bar) every this
    /// many steps; the loss stays on the device in between.
    pub log_every: usize,
    /// Also write the `last/` checkpoint inside an epoch, after every this many optimizer
    /// steps (counted over the run), so a killed run loses at most that many steps; 0 writes
    /// it at the end of each epoch only. A mid-epoch checkpoint holds the position in the
    /// epoch and its partial loss, so resuming from it ends bit-identical to a run that was
    /// never interrupted; it costs one save of model and optimizer state (see `Trainer`).
    pub checkpoint_every_steps: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 50,
            batch_size: 8,
            optimizer: OptimizerConfig::default(),
            lr: 1e-3,
            weight_decay: 1e-4,
            schedule: LrSchedule::default(),
            loss: LossConfig::default(),
            grad_clip_norm: None,
            seed: 0,
            device: DeviceSpec::Auto,
            best_metric: None,
            best_direction: None,
            log_every: 10,
            checkpoint_every_steps: 0,
        }
    }
}

impl TrainConfig {
    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(TrainError::config("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(TrainError::config("batch_size", "must be at least 1"));
        }
        if self.log_every == 0 {
            return Err(TrainError::config("log_every", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::config(
                "lr",
                format!("must be finite and > 0, is {}", self.lr),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(TrainError::config(
                "weight_decay",
                format!("must be finite and >= 0, is {}", self.weight_decay),
            ));
        }
        if let Some(max) = self.grad_clip_norm
            && !(max.is_finite() && max > 0.0)
        {
            return Err(TrainError::config(
                "grad_clip_norm",
                format!("must be finite and > 0, is {max}"),
            ));
        }
        if self
            .best_metric
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            return Err(TrainError::config("best_metric", "is empty"));
        }
        self.optimizer.validate()?;
        self.schedule.validate()?;
        self.loss.validate(None)?;
        Ok(())
    }

    /// The best metric: the configured one, else `task_default`.
    pub fn best_metric_or<'a>(&'a self, task_default: &'a str) -> &'a str {
        self.best_metric.as_deref().unwrap_or(task_default)
    }

    /// The direction of `best_metric` (configured or inferred), `task_default` standing in for
    /// an unset metric.
    pub fn best_direction(&self, task_default: &str) -> Direction {
        self.best_direction
            .unwrap_or_else(|| Direction::infer(self.best_metric_or(task_default)))
    }

    /// Parses a TOML document (unknown keys are errors), then validates it.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let config: TrainConfig =
            toml::from_str(text).map_err(|e| TrainError::config("toml", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_defaults_and_unknown_keys() {
        let config = TrainConfig::from_toml_str(
            r#"
            epochs = 3
            lr = 0.01
            device = "cpu"
            best_metric = "val_loss"
            optimizer = { kind = "sgd", nesterov = true }
            schedule = { kind = "cosine", warmup_steps = 5 }
            [loss]
            dice_weight = 0.5
            ignore_id = 255
            "#,
        )
        .unwrap();
        assert_eq!(config.epochs, 3);
        assert_eq!(
            config.optimizer,
            OptimizerConfig::Sgd {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: true
            }
        );
        assert_eq!(
            config.schedule,
            LrSchedule::Cosine {
                warmup_steps: 5,
                final_factor: 0.0
            }
        );
        assert_eq!(config.loss.ce_weight, 1.0);
        assert_eq!(config.loss.ignore_id, Some(255));
        assert_eq!(config.best_direction("val_miou"), Direction::Min);
        assert_eq!(config.device, DeviceSpec::Cpu);
        let unset = TrainConfig::from_toml_str("epochs = 1").unwrap();
        assert_eq!(unset.best_metric_or("val_miou"), "val_miou");
        assert_eq!(unset.best_direction("val_loss"), Direction::Min);
        // A device typo fails when the config is read, naming the value.
        let err = TrainConfig::from_toml_str("device = \"tpu\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tpu"), "{err}");
        let text = toml::to_string(&TrainConfig {
            device: DeviceSpec::Cuda(2),
            ..TrainConfig::default()
        })
        .unwrap();
        assert!(text.contains("device = \"cuda:2\""), "{text}");
        assert!(!text.contains("best_metric"), "{text}");
        assert_eq!(config.batch_size, TrainConfig::default().batch_size);

        for typo in [
            "epoch = 3",
            "optimizer = { kind = \"adamw\", beta3 = 0.1 }",
            "optimizer = { kind = \"adam\" }",
            "[loss]\nce_wieght = 1.0",
        ] {
            let err = TrainConfig::from_toml_str(typo).unwrap_err().to_string();
            assert!(err.contains("toml"), "{typo}: {err}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(TrainConfig, &str)> = vec![
            (
                TrainConfig {
                    epochs: 0,
                    ..Default::default()
                },
                "epochs",
            ),
            (
                TrainConfig {
                    lr: f64::NAN,
                    ..Default::default()
                },
                "lr",
            ),
            (
                TrainConfig {
                    log_every: 0,
                    ..Default::default()
                },
                "log_every",
            ),
            (
                TrainConfig {
                    grad_clip_norm: Some(0.0),
                    ..Default::default()
                },
                "grad_clip_norm",
            ),
            (
                TrainConfig {
                    optimizer: OptimizerConfig::AdamW {
                        beta1: 1.0,
                        beta2: 0.999,
                        eps: 1e-8,
                    },
                    ..Default::default()
                },
                "beta1",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        assert!(TrainConfig::default().validate().is_ok());
    }

    #[test]
    fn checkpoint_interval_defaults_to_epoch_ends_and_must_be_a_count() {
        // Files written before the setting existed still load, with epoch-end checkpoints.
        let old = TrainConfig::from_toml_str("epochs = 2\ndevice = \"cpu\"").unwrap();
        assert_eq!(old.checkpoint_every_steps, 0);
        let every = TrainConfig::from_toml_str("checkpoint_every_steps = 25").unwrap();
        assert_eq!(every.checkpoint_every_steps, 25);
        for bad in [
            "checkpoint_every_steps = -1",
            "checkpoint_every_steps = 2.5",
        ] {
            let err = TrainConfig::from_toml_str(bad).unwrap_err().to_string();
            assert!(err.contains("checkpoint_every_steps"), "{bad}: {err}");
        }
    }

    #[test]
    fn directions() {
        assert_eq!(Direction::infer("val_loss"), Direction::Min);
        assert_eq!(Direction::infer("val_miou"), Direction::Max);
        assert!(Direction::Max.is_better(0.5, 0.4));
        assert!(!Direction::Max.is_better(0.4, 0.4));
        assert!(!Direction::Max.is_better(f64::NAN, 0.4));
        assert!(Direction::Min.is_better(0.3, 0.4));
    }
}
