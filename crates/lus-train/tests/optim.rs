//! Optimizer state: save -> load -> continue is bit-identical to an uninterrupted run, and a
//! state file that does not fit is refused without changing anything.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use lus_train::{Optimizer, OptimizerConfig, ParamGroup};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A small two-layer regression problem: `y = relu(x W1^T + b1) W2^T`, squared error.
struct Problem {
    x: Tensor,
    y: Tensor,
}

fn randn(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0f32)).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn problem() -> Problem {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    Problem {
        x: randn(&mut rng, &[16, 5]),
        y: randn(&mut rng, &[16, 2]),
    }
}

/// Fresh parameters (always the same values), by name.
fn params() -> Vec<(String, Var)> {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    [
        ("w1", vec![8, 5]),
        ("b1", vec![8]),
        ("w2", vec![2, 8]),
        ("unused", vec![3]),
    ]
    .into_iter()
    .map(|(name, shape)| {
        (
            name.to_string(),
            Var::from_tensor(&randn(&mut rng, &shape)).unwrap(),
        )
    })
    .collect()
}

fn groups(params: &[(String, Var)]) -> Vec<ParamGroup> {
    vec![
        ParamGroup::new("hidden", params[..2].to_vec()),
        // The head learns at a tenth of the rate, without weight decay; `unused` never gets a
        // gradient, so it must keep empty state.
        ParamGroup::new("head", params[2..].to_vec())
            .with_lr_multiplier(0.1)
            .with_weight_decay(0.0),
    ]
}

fn step(problem: &Problem, params: &[(String, Var)], optimizer: &mut Optimizer, lr: f64) {
    let p: HashMap<&str, &Tensor> = params
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_tensor()))
        .collect();
    let hidden = problem
        .x
        .matmul(&p["w1"].t().unwrap())
        .unwrap()
        .broadcast_add(p["b1"])
        .unwrap()
        .relu()
        .unwrap();
    let out = hidden.matmul(&p["w2"].t().unwrap()).unwrap();
    let loss = (out - &problem.y)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let mut grads = loss.backward().unwrap();
    optimizer.clip_grad_norm(&mut grads, 5.0).unwrap();
    optimizer.step(&grads, lr).unwrap();
}

fn bits(params: &[(String, Var)]) -> Vec<(String, Vec<u32>)> {
    params
        .iter()
        .map(|(n, v)| {
            let values = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (n.clone(), values.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

fn lr_of(step: usize) -> f64 {
    // A changing rate, as under a schedule.
    0.05 / (1.0 + step as f64)
}

#[test]
fn save_load_continue_is_bit_identical() {
    let configs = [
        OptimizerConfig::default(),
        OptimizerConfig::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: true,
        },
        OptimizerConfig::Sgd {
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
        },
    ];
    let problem = problem();
    for config in configs {
        let (total, split) = (12, 5);
        let straight = params();
        let mut optimizer = Optimizer::new(config.clone(), 0.01, groups(&straight)).unwrap();
        for s in 0..total {
            step(&problem, &straight, &mut optimizer, lr_of(s));
        }

        let first = params();
        let mut optimizer = Optimizer::new(config.clone(), 0.01, groups(&first)).unwrap();
        for s in 0..split {
            step(&problem, &first, &mut optimizer, lr_of(s));
        }
        let dir = tempfile::tempdir().unwrap();
        optimizer.save(dir.path()).unwrap();
        let saved_weights: HashMap<String, Tensor> = first
            .iter()
            .map(|(n, v)| (n.clone(), v.as_detached_tensor()))
            .collect();
        candle_core::safetensors::save(&saved_weights, dir.path().join("w.safetensors")).unwrap();
        drop(optimizer);

        // A new process, in effect: fresh variables and optimizer, everything from the files.
        let second = params();
        let loaded =
            candle_core::safetensors::load(dir.path().join("w.safetensors"), &Device::Cpu).unwrap();
        for (name, var) in &second {
            var.set(&loaded[name]).unwrap();
        }
        let mut optimizer = Optimizer::new(config.clone(), 0.01, groups(&second)).unwrap();
        optimizer.load(dir.path()).unwrap();
        assert_eq!(optimizer.steps(), split as u64);
        for s in split..total {
            step(&problem, &second, &mut optimizer, lr_of(s));
        }
        assert_eq!(bits(&second), bits(&straight), "{config:?}");
        // The training actually moved the trained parameters, and never the unused one.
        assert_ne!(bits(&straight)[0], bits(&params())[0]);
        assert_eq!(bits(&straight)[3], bits(&params())[3]);

        // Without the state, continuing diverges (the check above can fail).
        if config
            != (OptimizerConfig::Sgd {
                momentum: 0.0,
                dampening: 0.0,
                nesterov: false,
            })
        {
            let third = params();
            for (name, var) in &third {
                var.set(&loaded[name]).unwrap();
            }
            let mut fresh = Optimizer::new(config.clone(), 0.01, groups(&third)).unwrap();
            for s in split..total {
                step(&problem, &third, &mut fresh, lr_of(s));
            }
            assert_ne!(bits(&third), bits(&straight), "{config:?}");
        }
    }
}

#[test]
fn mismatched_state_is_refused_and_changes_nothing() {
    let problem = problem();
    let vars = params();
    let mut optimizer = Optimizer::new(OptimizerConfig::default(), 0.0, groups(&vars)).unwrap();
    step(&problem, &vars, &mut optimizer, 0.01);
    let dir = tempfile::tempdir().unwrap();
    optimizer.save(dir.path()).unwrap();

    // Another kind.
    let mut sgd = Optimizer::new(
        OptimizerConfig::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
        },
        0.0,
        groups(&vars),
    )
    .unwrap();
    let err = sgd.load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("optimizer.json") && err.contains("adamw"),
        "{err}"
    );
    assert_eq!(sgd.steps(), 0);

    // Other parameter names.
    let renamed: Vec<(String, Var)> = vars
        .iter()
        .map(|(n, v)| (format!("{n}_x"), v.clone()))
        .collect();
    let mut other = Optimizer::new(OptimizerConfig::default(), 0.0, groups(&renamed)).unwrap();
    let err = other.load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("w1_x") && err.contains("missing"), "{err}");

    // A buffer of the wrong shape.
    let mut tensors =
        candle_core::safetensors::load(dir.path().join("optimizer.safetensors"), &Device::Cpu)
            .unwrap();
    tensors.insert(
        "w1.exp_avg".to_string(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, dir.path().join("optimizer.safetensors")).unwrap();
    let mut same = Optimizer::new(OptimizerConfig::default(), 0.0, groups(&vars)).unwrap();
    let err = same.load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("optimizer.safetensors") && err.contains("w1.exp_avg"),
        "{err}"
    );
    assert_eq!(same.steps(), 0);

    // A truncated file.
    std::fs::write(dir.path().join("optimizer.safetensors"), b"\x10\x00").unwrap();
    let err = same.load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("optimizer.safetensors"), "{err}");
}

#[test]
fn groups_are_checked() {
    let vars = params();
    let twice = vec![
        ParamGroup::new("a", vars[..2].to_vec()),
        ParamGroup::new("b", vars[1..3].to_vec()),
    ];
    let err = Optimizer::new(OptimizerConfig::default(), 0.0, twice)
        .unwrap_err()
        .to_string();
    assert!(err.contains("b1") && err.contains("twice"), "{err}");
    let aliased = vec![ParamGroup::new(
        "a",
        vec![
            ("x".to_string(), vars[0].1.clone()),
            ("y".to_string(), vars[0].1.clone()),
        ],
    )];
    assert!(Optimizer::new(OptimizerConfig::default(), 0.0, aliased).is_err());
    let negative = vec![ParamGroup::new("a", vars.clone()).with_lr_multiplier(-1.0)];
    assert!(Optimizer::new(OptimizerConfig::default(), 0.0, negative).is_err());
}

#[test]
fn clipping_bounds_the_gradient_norm() {
    let var = Var::from_tensor(&Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()).unwrap();
    let optimizer = Optimizer::new(
        OptimizerConfig::Sgd {
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
        },
        0.0,
        vec![ParamGroup::new("p", vec![("p".to_string(), var.clone())])],
    )
    .unwrap();
    // loss = sum(p^2) / 2: gradient p = (3, 4), norm 5.
    let loss = (var.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
    let mut grads = loss.backward().unwrap();
    let norm = optimizer.clip_grad_norm(&mut grads, 1.0).unwrap().unwrap();
    assert!((norm.to_scalar::<f32>().unwrap() - 5.0).abs() < 1e-6);
    let g = grads
        .get(var.as_tensor())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(
        (g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6,
        "{g:?}"
    );
    // Below the bound nothing changes (the coefficient is clamped at 1).
    let mut grads = loss.backward().unwrap();
    optimizer.clip_grad_norm(&mut grads, 10.0).unwrap();
    let g = grads
        .get(var.as_tensor())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(
        (g[0] - 3.0).abs() < 1e-5 && (g[1] - 4.0).abs() < 1e-5,
        "{g:?}"
    );
}
