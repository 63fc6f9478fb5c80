//! The U-Net against PyTorch: fixtures written by `tests/fixtures/make_reference.py` (weights
//! loaded through `load_weights`, so the tensor names are checked too), and the bilinear
//! up-sampling against hand-computed values.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::{max_abs_diff, values};
use lus_unet::{
    Kernels, Mode, Norm, UNet, UNetConfig, Upsampling, load_weights, upsample_bilinear2x,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The configurations of `CASES` in make_reference.py.
fn case_config(name: &str) -> UNetConfig {
    let small = |norm, upsampling| UNetConfig {
        in_channels: 1,
        num_classes: 3,
        depth: 2,
        base_channels: 4,
        norm,
        upsampling,
        dropout: 0.0,
        kernels: Kernels::default(),
    };
    match name {
        "batch_transposed" => small(Norm::Batch, Upsampling::TransposedConv),
        "batch_bilinear" => small(Norm::Batch, Upsampling::BilinearConv),
        "group_transposed" => small(Norm::Group { groups: 2 }, Upsampling::TransposedConv),
        "group_bilinear" => small(Norm::Group { groups: 2 }, Upsampling::BilinearConv),
        "none_transposed_d3" => UNetConfig {
            in_channels: 2,
            num_classes: 4,
            depth: 3,
            base_channels: 2,
            norm: Norm::None,
            upsampling: Upsampling::TransposedConv,
            dropout: 0.0,
            kernels: Kernels::default(),
        },
        other => panic!("unknown case {other}"),
    }
}

fn check_case(name: &str) {
    let config = case_config(name);
    let varmap = VarMap::new();
    let unet = UNet::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    load_weights(&varmap, fixture(&format!("{name}.weights.safetensors"))).unwrap();
    let reference = candle_core::safetensors::load(
        fixture(&format!("{name}.reference.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    let x = reference["input"].to_dtype(DType::F32).unwrap();

    let eval = unet.forward_t(&x, &mut Mode::Eval).unwrap();
    let eval_err = max_abs_diff(&eval, &reference["eval_logits"]);
    // The logits must not be trivially small, or the tolerance would be meaningless.
    let scale = values(&reference["eval_logits"])
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.1, "{name}: reference logits too small ({scale})");
    assert!(
        eval_err < TOLERANCE,
        "{name}: eval logits differ by {eval_err}"
    );

    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let train = unet.forward_t(&x, &mut Mode::train(&mut rng)).unwrap();
    let train_err = max_abs_diff(&train, &reference["train_logits"]);
    assert!(
        train_err < TOLERANCE,
        "{name}: train logits differ by {train_err}"
    );

    // Running statistics after the one train-mode forward (batch norm cases only).
    let data = varmap.data().lock().unwrap();
    let mut checked = 0;
    for (key, expected) in &reference {
        if let Some(var_name) = key.strip_prefix("after_train.") {
            let err = max_abs_diff(data[var_name].as_tensor(), expected);
            assert!(
                err < 1e-5,
                "{name}: {var_name} after train differs by {err}"
            );
            checked += 1;
        }
    }
    let expected_stats = if config.norm == Norm::Batch {
        4 * (2 * config.depth + 1)
    } else {
        0
    };
    assert_eq!(
        checked, expected_stats,
        "{name}: running statistics checked"
    );
    eprintln!("{name}: max |eval diff| {eval_err:.2e}, max |train diff| {train_err:.2e}");
}

#[test]
fn batch_norm_transposed_conv_matches_pytorch() {
    check_case("batch_transposed");
}

#[test]
fn batch_norm_bilinear_conv_matches_pytorch() {
    check_case("batch_bilinear");
}

#[test]
fn group_norm_transposed_conv_matches_pytorch() {
    check_case("group_transposed");
}

#[test]
fn group_norm_bilinear_conv_matches_pytorch() {
    check_case("group_bilinear");
}

#[test]
fn no_norm_depth_3_non_square_matches_pytorch() {
    check_case("none_transposed_d3");
}

#[test]
fn bilinear_upsampling_matches_hand_computed_values() {
    // Along an axis of n samples: out[2i] = x[max(i-1,0)]/4 + 3x[i]/4,
    // out[2i+1] = 3x[i]/4 + x[min(i+1,n-1)]/4 (PyTorch, align_corners=False).
    let x = Tensor::new(&[[[[0.0f64, 1.0, 2.0], [3.0, 4.0, 5.0]]]], &Device::Cpu).unwrap();
    let y = upsample_bilinear2x(&x).unwrap();
    #[rustfmt::skip]
    let expected = [
        0.00, 0.25, 0.75, 1.25, 1.75, 2.00,
        0.75, 1.00, 1.50, 2.00, 2.50, 2.75,
        2.25, 2.50, 3.00, 3.50, 4.00, 4.25,
        3.00, 3.25, 3.75, 4.25, 4.75, 5.00,
    ];
    assert_eq!(y.dims(), &[1, 1, 4, 6]);
    assert_eq!(values(&y), expected);

    // A non-linear pattern, where the clamping at the edges and the 1/4-3/4 weights matter in
    // both directions: a single bright pixel in a 3x3 image.
    let mut impulse = vec![0.0f64; 9];
    impulse[4] = 16.0;
    let x = Tensor::from_vec(impulse, (1, 1, 3, 3), &Device::Cpu).unwrap();
    let y = upsample_bilinear2x(&x).unwrap();
    // 1-D response to the centre sample x[1] along one axis: out[1] = 3x[0]/4 + x[1]/4,
    // out[2] = x[0]/4 + 3x[1]/4, out[3] = 3x[1]/4 + x[2]/4, out[4] = x[1]/4 + 3x[2]/4, so
    // [0, 1/4, 3/4, 3/4, 1/4, 0]; the 2-D response is the outer product, times 16.
    let profile = [0.0, 0.25, 0.75, 0.75, 0.25, 0.0];
    let expected: Vec<f64> = profile
        .iter()
        .flat_map(|a| profile.iter().map(move |b| 16.0 * a * b))
        .collect();
    assert_eq!(values(&y), expected);

    // A 1x1 image stays constant.
    let x = Tensor::new(&[[[[2.5f64]]]], &Device::Cpu).unwrap();
    assert_eq!(values(&upsample_bilinear2x(&x).unwrap()), vec![2.5; 4]);
}

#[test]
fn bilinear_upsampling_matches_pytorch_and_candle_forward() {
    let data =
        candle_core::safetensors::load(fixture("bilinear.safetensors"), &Device::Cpu).unwrap();
    let y = upsample_bilinear2x(&data["input"]).unwrap();
    let err = max_abs_diff(&y, &data["output"]);
    assert!(err < 1e-12, "differs from F.interpolate by {err}");
    // candle's own bilinear kernel (forward only, no backward) agrees as well.
    let candle = data["input"].upsample_bilinear2d(10, 6, false).unwrap();
    let err = max_abs_diff(&y, &candle);
    assert!(
        err < 1e-12,
        "differs from candle's upsample_bilinear2d by {err}"
    );
}
