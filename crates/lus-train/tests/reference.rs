//! lus-train against PyTorch: losses (value and gradient), optimizers (a few steps with two
//! parameter groups) and schedules, from `tests/fixtures/reference.json` (written by
//! `tests/fixtures/make_loss_reference.py`).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use lus_train::{LrSchedule, Optimizer, OptimizerConfig, ParamGroup, cross_entropy, soft_dice};
use lus_unet::test_device;
use serde_json::Value;

fn reference() -> Value {
    let text = include_str!("fixtures/reference.json");
    serde_json::from_str(text).expect("reference.json parses")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn shape(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as usize)
        .collect()
}

/// Largest `|a - b| / max(|b|, floor)` over the elements.
fn max_rel_error(a: &[f64], b: &[f64], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(floor))
        .fold(0.0, f64::max)
}

fn to_f64_vec(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Runs `loss_fn` on the case's logits (as a variable of `dtype`), returns loss and gradient.
fn run_loss_case(
    case: &Value,
    dtype: DType,
    device: &Device,
    loss_fn: &dyn Fn(&Tensor, &Tensor) -> Tensor,
) -> (f64, Vec<f64>) {
    let dims = shape(&case["shape"]);
    let logits = Tensor::from_vec(floats(&case["logits"]), dims.clone(), device)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let target_dims: Vec<usize> = [&dims[..1], &dims[2..]].concat();
    let target: Vec<u32> = case["target"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let target = Tensor::from_vec(target, target_dims, device).unwrap();
    let var = Var::from_tensor(&logits).unwrap();
    let loss = loss_fn(var.as_tensor(), &target);
    let grads = loss.backward().unwrap();
    let grad = to_f64_vec(grads.get(var.as_tensor()).unwrap());
    (
        loss.to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap(),
        grad,
    )
}

fn cross_entropy_matches(device: &Device) {
    let reference = reference();
    for case in reference["cross_entropy"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let weight = case["weight"].as_array().map(|_| floats(&case["weight"]));
        let ignore = case["ignore_index"].as_u64().map(|v| v as u32);
        for (dtype, tolerance) in [(DType::F64, 1e-10), (DType::F32, 1e-5)] {
            let loss_fn = |logits: &Tensor, target: &Tensor| {
                let w = weight.as_ref().map(|w| {
                    Tensor::from_slice(w, w.len(), device)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                });
                cross_entropy(logits, target, w.as_ref(), ignore).unwrap()
            };
            let (loss, grad) = run_loss_case(case, dtype, device, &loss_fn);
            let expected = case["loss"].as_f64().unwrap();
            assert!(
                (loss - expected).abs() <= tolerance * expected.abs().max(1.0),
                "{name} {dtype:?}: loss {loss} vs torch {expected}"
            );
            let expected_grad = floats(&case["grad"]);
            // Gradients are small numbers; compare relative to the largest one.
            let scale = expected_grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
            let err = max_rel_error(&grad, &expected_grad, scale);
            assert!(err <= tolerance, "{name} {dtype:?}: gradient error {err}");
        }
    }
}

fn soft_dice_matches(device: &Device) {
    let reference = reference();
    for case in reference["dice"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ignore = case["ignore_index"].as_u64().map(|v| v as u32);
        let smooth = case["smooth"].as_f64().unwrap();
        for (dtype, tolerance) in [(DType::F64, 1e-10), (DType::F32, 1e-5)] {
            let loss_fn = |logits: &Tensor, target: &Tensor| {
                soft_dice(logits, target, ignore, smooth).unwrap()
            };
            let (loss, grad) = run_loss_case(case, dtype, device, &loss_fn);
            let expected = case["loss"].as_f64().unwrap();
            assert!(
                (loss - expected).abs() <= tolerance,
                "{name} {dtype:?}: loss {loss} vs torch {expected}"
            );
            let expected_grad = floats(&case["grad"]);
            let scale = expected_grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
            let err = max_rel_error(&grad, &expected_grad, scale);
            assert!(err <= tolerance, "{name} {dtype:?}: gradient error {err}");
        }
    }
}

test_device!(
    cross_entropy_matches,
    cross_entropy_matches_torch,
    cross_entropy_matches_torch_cuda
);
test_device!(
    soft_dice_matches,
    soft_dice_matches_an_independent_torch_implementation,
    soft_dice_matches_an_independent_torch_implementation_cuda
);

fn optimizer_config(name: &str) -> (OptimizerConfig, f64) {
    match name {
        "adamw" => (
            OptimizerConfig::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            0.1,
        ),
        "adamw_no_decay" => (
            OptimizerConfig::AdamW {
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-6,
            },
            0.0,
        ),
        "sgd_momentum" => (
            OptimizerConfig::Sgd {
                momentum: 0.9,
                dampening: 0.1,
                nesterov: false,
            },
            0.01,
        ),
        "sgd_nesterov" => (
            OptimizerConfig::Sgd {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: true,
            },
            0.01,
        ),
        "sgd_plain" => (
            OptimizerConfig::Sgd {
                momentum: 0.0,
                dampening: 0.0,
                nesterov: false,
            },
            0.0,
        ),
        other => panic!("unknown optimizer case {other}"),
    }
}

fn optimizers_match(device: &Device) {
    let reference = reference();
    for case in reference["optimizers"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (config, weight_decay) = optimizer_config(name);
        let base_lr = case["base_lr"].as_f64().unwrap();
        // f64 checks the update rule to rounding; f32 is what training uses (1e-6 relative).
        // Each is compared with torch's run in the same precision.
        for (dtype, run, tolerance) in [(DType::F64, "f64", 1e-12), (DType::F32, "f32", 1e-6)] {
            let mut vars = HashMap::new();
            let mut groups = Vec::new();
            for param in ["a", "b"] {
                let init = Tensor::from_vec(
                    floats(&case["init"][param]),
                    shape(&case["shapes"][param]),
                    device,
                )
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
                let var = Var::from_tensor(&init).unwrap();
                let multiplier = case["multipliers"][param].as_f64().unwrap();
                groups.push(
                    ParamGroup::new(
                        format!("group_{param}"),
                        vec![(param.to_string(), var.clone())],
                    )
                    .with_lr_multiplier(multiplier),
                );
                vars.insert(param, var);
            }
            let mut optimizer = Optimizer::new(config.clone(), weight_decay, groups).unwrap();
            let steps = case["runs"][run].as_array().unwrap();
            for (i, step) in steps.iter().enumerate() {
                let mut grads = GradStore::default();
                for param in ["a", "b"] {
                    let var = &vars[param];
                    let g = Tensor::from_vec(floats(&step["grads"][param]), var.dims(), device)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap();
                    grads.insert(var.as_tensor(), g);
                }
                optimizer.step(&grads, base_lr).unwrap();
                for param in ["a", "b"] {
                    let ours = to_f64_vec(vars[param].as_tensor());
                    let theirs = floats(&step["params"][param]);
                    // Relative to the tensor's largest entry: steps of lr 0.05 on this problem
                    // swing parameters through zero, and an entry that lands near zero after a
                    // cancellation keeps the absolute rounding error of its larger neighbours
                    // (torch's float32 `add(alpha=...)` is a fused multiply-add, candle's two
                    // roundings).
                    let scale = theirs.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    let err = max_rel_error(&ours, &theirs, scale);
                    assert!(
                        err <= tolerance,
                        "{name} {dtype:?} step {}: {param} relative error {err}",
                        i + 1
                    );
                }
            }
            assert_eq!(optimizer.steps(), steps.len() as u64);
        }
    }
}

test_device!(
    optimizers_match,
    optimizers_match_torch_with_group_multipliers,
    optimizers_match_torch_with_group_multipliers_cuda
);

#[test]
fn schedules_match_torch() {
    let reference = reference();
    for case in reference["schedules"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let schedule: LrSchedule = serde_json::from_value(case["schedule"].clone()).unwrap();
        let base = case["base_lr"].as_f64().unwrap();
        let per_epoch = case["steps_per_epoch"].as_u64().unwrap();
        let total = case["total_steps"].as_u64().unwrap();
        for (step, expected) in floats(&case["lrs"]).into_iter().enumerate() {
            let ours = schedule.lr(base, step as u64, per_epoch, total);
            assert!(
                (ours - expected).abs() <= 1e-12 * base,
                "{name} step {step}: {ours} vs torch {expected}"
            );
        }
    }
}
