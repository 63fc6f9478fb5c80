//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use lus_unet::{ParamKind, UNet, UNetConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};

/// A U-Net over a fresh `VarMap`, initialised from `seed`.
pub fn build(config: &UNetConfig, dtype: DType, seed: u64) -> (VarMap, UNet) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let unet = UNet::new(config, vb).expect("valid config");
    unet.init_weights(&varmap, &mut ChaCha8Rng::seed_from_u64(seed))
        .expect("init");
    (varmap, unet)
}

/// Gives norm scales/shifts, conv biases and running statistics non-trivial values, so that a
/// test exercises every term (after `init_weights` they are 1, 0, 0, 0 and 1).
pub fn randomize_non_weights(varmap: &VarMap, unet: &UNet, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = varmap.data().lock().unwrap();
    for spec in unet.param_specs() {
        let var = &data[&spec.name];
        let n: usize = spec.shape.iter().product();
        let mut normal = || -> f64 { StandardNormal.sample(&mut rng) };
        let values: Vec<f64> = match spec.kind {
            ParamKind::ConvWeight { .. } => continue,
            ParamKind::NormScale => (0..n).map(|_| 1.0 + 0.2 * normal()).collect(),
            ParamKind::NormShift | ParamKind::ConvBias | ParamKind::RunningMean => {
                (0..n).map(|_| 0.1 * normal()).collect()
            }
            ParamKind::RunningVar => {
                let uniform = Uniform::new(0.5, 1.5).unwrap();
                (0..n).map(|_| uniform.sample(&mut rng)).collect()
            }
        };
        let t = Tensor::from_vec(values, spec.shape.as_slice(), &Device::Cpu)
            .unwrap()
            .to_dtype(var.dtype())
            .unwrap();
        var.set(&t).unwrap();
    }
}

/// A standard-normal tensor from `seed`.
pub fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// All values of a tensor as f64, row-major.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Raw f32 values (for bit-exact comparisons).
pub fn values_f32(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// A small config most tests use.
pub fn small_config() -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        num_classes: 3,
        depth: 2,
        base_channels: 4,
        ..Default::default()
    }
}
