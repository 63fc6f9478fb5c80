//! Learning-rate schedules as pure functions of the optimizer step.
//!
//! A schedule gives a factor; the learning rate of step `s` (counted from 0: the rate used by
//! the `s`-th optimizer update) is `base_lr * factor(s)`, and each parameter group multiplies it
//! by its own multiplier. Nothing is stateful, so a resumed run gets the same rates as an
//! uninterrupted one.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// A learning-rate schedule. In TOML: `schedule = { kind = "constant" }`,
/// `schedule = { kind = "step", every_epochs = 10, gamma = 0.5 }`,
/// `schedule = { kind = "cosine", warmup_steps = 100, final_factor = 0.01 }`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Multiply by `gamma` every `every_epochs` epochs: `gamma^floor(epoch / every_epochs)`,
    /// with `epoch = floor(step / steps_per_epoch)` (PyTorch's `StepLR` stepped once per epoch).
    Step { every_epochs: usize, gamma: f64 },
    /// Linear warm-up over the first `warmup_steps` steps, factor `(s + 1) / warmup_steps` (so
    /// the first update already moves and step `warmup_steps - 1` reaches the base rate), then a
    /// half cosine from 1 down to `final_factor` over the remaining steps:
    /// `f + (1 - f) (1 + cos(pi t / T)) / 2` with `t = s - warmup_steps` and
    /// `T = total_steps - warmup_steps`; steps past the end keep `final_factor`.
    /// This is PyTorch's `LinearLR(start_factor=1/w, total_iters=w-1)` followed by
    /// `CosineAnnealingLR(T_max=T, eta_min=f * base_lr)` under `SequentialLR(milestones=[w])`.
    Cosine {
        #[serde(default)]
        warmup_steps: u64,
        #[serde(default)]
        final_factor: f64,
    },
}

impl LrSchedule {
    /// Checks the parameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Constant => Ok(()),
            Self::Step {
                every_epochs,
                gamma,
            } => {
                if every_epochs == 0 {
                    return Err(TrainError::config(
                        "schedule.every_epochs",
                        "must be at least 1",
                    ));
                }
                if !(gamma.is_finite() && gamma > 0.0) {
                    return Err(TrainError::config(
                        "schedule.gamma",
                        format!("must be finite and > 0, is {gamma}"),
                    ));
                }
                Ok(())
            }
            Self::Cosine { final_factor, .. } => {
                if !(final_factor.is_finite() && (0.0..=1.0).contains(&final_factor)) {
                    return Err(TrainError::config(
                        "schedule.final_factor",
                        format!("must be in [0, 1], is {final_factor}"),
                    ));
                }
                Ok(())
            }
        }
    }

    /// The factor of step `step` (from 0) in a run of `total_steps` steps with
    /// `steps_per_epoch` steps per epoch.
    pub fn factor(&self, step: u64, steps_per_epoch: u64, total_steps: u64) -> f64 {
        match *self {
            Self::Constant => 1.0,
            Self::Step {
                every_epochs,
                gamma,
            } => {
                let epoch = step / steps_per_epoch.max(1);
                let drops = epoch / every_epochs.max(1) as u64;
                gamma.powf(drops as f64)
            }
            Self::Cosine {
                warmup_steps,
                final_factor,
            } => {
                if step < warmup_steps {
                    return (step + 1) as f64 / warmup_steps as f64;
                }
                let span = total_steps.saturating_sub(warmup_steps);
                let t = step - warmup_steps;
                if span == 0 || t >= span {
                    return if span == 0 { 1.0 } else { final_factor };
                }
                let cosine = (1.0 + (std::f64::consts::PI * t as f64 / span as f64).cos()) / 2.0;
                final_factor + (1.0 - final_factor) * cosine
            }
        }
    }

    /// The learning rate of step `step`: `base_lr * factor`.
    pub fn lr(&self, base_lr: f64, step: u64, steps_per_epoch: u64, total_steps: u64) -> f64 {
        base_lr * self.factor(step, steps_per_epoch, total_steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_values() {
        assert_eq!(LrSchedule::Constant.lr(0.1, 12345, 10, 100), 0.1);
        let step = LrSchedule::Step {
            every_epochs: 2,
            gamma: 0.5,
        };
        // 3 steps per epoch: steps 0..6 are epochs 0-1 (factor 1), 6..12 epochs 2-3 (0.5), ...
        let factors: Vec<f64> = (0..13).map(|s| step.factor(s, 3, 100)).collect();
        assert_eq!(
            factors,
            vec![
                1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25
            ]
        );
        let cosine = LrSchedule::Cosine {
            warmup_steps: 4,
            final_factor: 0.0,
        };
        let f: Vec<f64> = (0..14).map(|s| cosine.factor(s, 1, 12)).collect();
        assert_eq!(&f[..5], &[0.25, 0.5, 0.75, 1.0, 1.0]);
        // 8 cosine steps: t = 4 is the middle (factor 1/2), t = 8 the end (0).
        assert!((f[8] - 0.5).abs() < 1e-15, "{f:?}");
        assert!((f[6] - (1.0 + (std::f64::consts::PI / 4.0).cos()) / 2.0).abs() < 1e-15);
        assert_eq!(f[12], 0.0);
        assert_eq!(f[13], 0.0);
        let floor = LrSchedule::Cosine {
            warmup_steps: 0,
            final_factor: 0.1,
        };
        assert_eq!(floor.factor(0, 1, 10), 1.0);
        assert!((floor.factor(5, 1, 10) - 0.55).abs() < 1e-15);
        assert_eq!(floor.factor(10, 1, 10), 0.1);
        // A warm-up as long as the run never starts the cosine.
        let all_warmup = LrSchedule::Cosine {
            warmup_steps: 5,
            final_factor: 0.0,
        };
        assert_eq!(all_warmup.factor(4, 1, 5), 1.0);
    }

    #[test]
    fn validation_names_fields() {
        let bad = LrSchedule::Step {
            every_epochs: 0,
            gamma: 0.5,
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("every_epochs")
        );
        let bad = LrSchedule::Cosine {
            warmup_steps: 0,
            final_factor: 1.5,
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("final_factor")
        );
    }
}
