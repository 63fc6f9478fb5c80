//! The U-Net against PyTorch: fixtures written by `tests/fixtures/make_reference.py` (weights
//! loaded through `load_weights`, so the tensor names are checked too), and the bilinear
//! up-sampling against hand-computed values.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::{max_abs_diff, values};
use lus_unet::{
    Kernels, Mode, Norm, Precision, UNet, UNetConfig, Upsampling, load_weights, test_device,
    upsample_bilinear2x,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const TOLERANCE: f64 = 1e-4;
/// Error allowed for bf16 and TF32 products, relative to the largest logit, in evaluation mode.
const BF16_RELATIVE_TOLERANCE: f64 = 0.02;
/// The same in training mode: batch statistics of small batches amplify the rounding of the
/// convolution outputs (a channel whose spread is small next to its mean loses most digits in
/// `x - mean`), as they do in PyTorch's autocast.
const BF16_TRAIN_RELATIVE_TOLERANCE: f64 = 0.1;

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
        precision: Precision::F32,
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
            precision: Precision::F32,
        },
        other => panic!("unknown case {other}"),
    }
}

const CASES: [&str; 5] = [
    "batch_transposed",
    "batch_bilinear",
    "group_transposed",
    "group_bilinear",
    "none_transposed_d3",
];

/// The largest difference of each output from PyTorch's (f64) values.
struct CaseErrors {
    eval: f64,
    train: f64,
    running_stats: f64,
    /// Largest absolute reference logit (the scale the errors are measured against).
    logit_scale: f64,
    /// The eval logits lus computed, for comparisons between precisions.
    eval_logits: Tensor,
}

/// Runs one case of make_reference.py on `device` in `precision` and measures how far it lands
/// from PyTorch.
fn run_case(name: &str, device: &Device, precision: Precision) -> CaseErrors {
    let config = UNetConfig {
        precision,
        ..case_config(name)
    };
    let varmap = VarMap::new();
    let unet = UNet::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )
    .unwrap();
    load_weights(&varmap, fixture(&format!("{name}.weights.safetensors"))).unwrap();
    let reference = candle_core::safetensors::load(
        fixture(&format!("{name}.reference.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    let x = reference["input"]
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(device)
        .unwrap();

    let eval = unet.forward_t(&x, &mut Mode::Eval).unwrap();
    assert_eq!(
        eval.dtype(),
        DType::F32,
        "{name}: logits are f32 in every precision"
    );
    let eval_err = max_abs_diff(&eval, &reference["eval_logits"]);
    let logit_scale = values(&reference["eval_logits"])
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()));

    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let train = unet.forward_t(&x, &mut Mode::train(&mut rng)).unwrap();
    let train_err = max_abs_diff(&train, &reference["train_logits"]);

    // Running statistics after the one train-mode forward (batch norm cases only).
    let data = varmap.data().lock().unwrap();
    let mut checked = 0;
    let mut stats_err = 0.0f64;
    for (key, expected) in &reference {
        if let Some(var_name) = key.strip_prefix("after_train.") {
            assert_eq!(
                data[var_name].dtype(),
                DType::F32,
                "{name}: {var_name} stays f32"
            );
            stats_err = stats_err.max(max_abs_diff(data[var_name].as_tensor(), expected));
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
    eprintln!(
        "{name} on {device:?} in {precision:?}: max |eval diff| {eval_err:.2e}, max |train diff| \
         {train_err:.2e}, running statistics {stats_err:.2e} (logit scale {logit_scale:.2})"
    );
    CaseErrors {
        eval: eval_err,
        train: train_err,
        running_stats: stats_err,
        logit_scale,
        eval_logits: eval,
    }
}

/// f32 on `device` matches PyTorch to float32 rounding.
fn check_case(name: &str, device: &Device) {
    let errors = run_case(name, device, Precision::F32);
    // The logits must not be trivially small, or the tolerance would be meaningless.
    assert!(
        errors.logit_scale > 0.1,
        "{name}: reference logits too small ({})",
        errors.logit_scale
    );
    assert!(
        errors.eval < TOLERANCE,
        "{name}: eval logits differ by {}",
        errors.eval
    );
    assert!(
        errors.train < TOLERANCE,
        "{name}: train logits differ by {}",
        errors.train
    );
    assert!(
        errors.running_stats < 1e-5,
        "{name}: running statistics after train differ by {}",
        errors.running_stats
    );
}

fn batch_norm_transposed_conv(device: &Device) {
    check_case("batch_transposed", device);
}
test_device!(
    batch_norm_transposed_conv,
    batch_norm_transposed_conv_matches_pytorch,
    batch_norm_transposed_conv_matches_pytorch_cuda
);

fn batch_norm_bilinear_conv(device: &Device) {
    check_case("batch_bilinear", device);
}
test_device!(
    batch_norm_bilinear_conv,
    batch_norm_bilinear_conv_matches_pytorch,
    batch_norm_bilinear_conv_matches_pytorch_cuda
);

fn group_norm_transposed_conv(device: &Device) {
    check_case("group_transposed", device);
}
test_device!(
    group_norm_transposed_conv,
    group_norm_transposed_conv_matches_pytorch,
    group_norm_transposed_conv_matches_pytorch_cuda
);

fn group_norm_bilinear_conv(device: &Device) {
    check_case("group_bilinear", device);
}
test_device!(
    group_norm_bilinear_conv,
    group_norm_bilinear_conv_matches_pytorch,
    group_norm_bilinear_conv_matches_pytorch_cuda
);

fn no_norm_depth_3_non_square(device: &Device) {
    check_case("none_transposed_d3", device);
}
test_device!(
    no_norm_depth_3_non_square,
    no_norm_depth_3_non_square_matches_pytorch,
    no_norm_depth_3_non_square_matches_pytorch_cuda
);

/// bf16 autocast lands within bf16 rounding of PyTorch's f64 values (8-bit mantissa: a relative
/// error of 2^-9 per rounding, a few per layer), and measurably away from the f32 result, which
/// shows the convolutions did run in bf16.
fn bf16_autocast(device: &Device) {
    for name in CASES {
        let f32_errors = run_case(name, device, Precision::F32);
        let bf16 = run_case(name, device, Precision::Bf16);
        let bound = BF16_RELATIVE_TOLERANCE * bf16.logit_scale;
        assert!(
            bf16.eval < bound,
            "{name}: bf16 eval logits differ by {} > {bound}",
            bf16.eval
        );
        let train_bound = BF16_TRAIN_RELATIVE_TOLERANCE * bf16.logit_scale;
        assert!(
            bf16.train < train_bound,
            "{name}: bf16 train logits differ by {} > {train_bound}",
            bf16.train
        );
        assert!(
            bf16.running_stats < BF16_RELATIVE_TOLERANCE,
            "{name}: bf16 running statistics differ by {}",
            bf16.running_stats
        );
        let moved = max_abs_diff(&bf16.eval_logits, &f32_errors.eval_logits);
        assert!(
            moved > 100.0 * f32_errors.eval.max(1e-7),
            "{name}: bf16 logits within {moved} of f32: the convolutions did not run in bf16"
        );
    }
}
test_device!(
    bf16_autocast,
    bf16_autocast_matches_pytorch_to_bf16_rounding,
    bf16_autocast_matches_pytorch_to_bf16_rounding_cuda
);

/// TF32 is CUDA's alone: on the CPU it is f32, bit for bit; on CUDA it stays within TF32's
/// rounding (10-bit mantissa) of PyTorch.
fn tf32(device: &Device) {
    for name in CASES {
        let f32_errors = run_case(name, device, Precision::F32);
        let tf32 = run_case(name, device, Precision::Tf32);
        if device.is_cpu() {
            assert_eq!(
                values(&tf32.eval_logits),
                values(&f32_errors.eval_logits),
                "{name}: tf32 on the CPU is f32"
            );
        }
        let bound = BF16_RELATIVE_TOLERANCE * tf32.logit_scale;
        assert!(
            tf32.eval < bound,
            "{name}: tf32 eval logits differ by {} > {bound}",
            tf32.eval
        );
    }
    // The switch is process-wide in candle: an f32 model after a tf32 one is f32 again.
    let after = run_case(CASES[0], device, Precision::F32);
    assert!(
        after.eval < TOLERANCE,
        "f32 after tf32 differs by {}",
        after.eval
    );
}
test_device!(
    tf32,
    tf32_matches_pytorch_and_is_f32_on_the_cpu,
    tf32_matches_pytorch_and_is_f32_on_the_cpu_cuda
);

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
