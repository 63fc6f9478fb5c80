//! The U-Net of lus, in candle-nn's style: layers are built from a `VarBuilder`, so `VarMap`
//! training, safetensors loading and frozen parameters work as elsewhere in candle-nn.
//!
//! # Architecture
//!
//! With `C_l = base_channels * 2^l` and `D = depth`:
//!
//! - encoder level `l` (0..D): `[conv3x3 (pad 1) -> norm -> ReLU] x 2` to `C_l` channels; its
//!   output is the skip connection of level `l`, then a 2x2 max-pool halves the resolution
//!   ([`max_pool2x2`]; candle's `max_pool2d` has a wrong backward pass);
//! - bottleneck: the same double conv to `C_D` channels at `1/2^D` resolution, then element-wise
//!   (inverted) dropout with probability `dropout` in training mode;
//! - decoder level `l` (run from `D-1` down to 0): `up` doubles the resolution and maps
//!   `C_{l+1} -> C_l` channels (2x2 stride-2 transposed conv, or bilinear x2 followed by a 3x3
//!   conv), the result is concatenated after the skip (`cat([skip, up], dim=1)`), and a double
//!   conv maps `2 C_l -> C_l`;
//! - head: a 1x1 convolution `C_0 -> num_classes`, giving logits (no softmax).
//!
//! Norms are batch norm (eps 1e-5, momentum 0.1), group norm (eps 1e-5) or none. The 3x3
//! convolutions of the double convs carry **no bias when a norm follows them** (the norm's shift
//! makes it redundant); with `Norm::None` they have one. `up` and `head` always have a bias.
//! Input height and width must be multiples of `2^depth` ([`UNetConfig::min_input_multiple`]);
//! [`UNet::forward_t`] returns an error otherwise.
//!
//! # Kernels
//!
//! On the CPU, with [`UNetConfig::kernels`] = [`Kernels::Lus`] (the default), the 3x3 and 1x1
//! convolutions, the transposed convolutions, training-mode batch norm (fused with its ReLU)
//! and the max-pools run on the custom ops of [`cpu_ops`] (f32 and f64); [`Kernels::Candle`]
//! runs candle's own ops everywhere, as on a GPU. Both give the same function and gradients up
//! to float rounding (see `tests/cpu_ops.rs`).
//!
//! # Tensor names
//!
//! The names map one to one onto the `state_dict` keys of the PyTorch module in
//! `tests/fixtures/make_reference.py` (`ModuleList`s `enc` and `dec` indexed by level). A
//! PyTorch `BatchNorm2d` also has a `num_batches_tracked` buffer, which only matters for
//! `momentum=None`: drop it when exporting from PyTorch, and load into PyTorch with
//! `strict=False` (or add it back).
//!
//! | name | shape | present |
//! |---|---|---|
//! | `enc.{l}.conv1.weight` | `[C_l, C_in, 3, 3]`, `C_in` = `in_channels` at level 0, else `C_{l-1}` | always |
//! | `enc.{l}.conv2.weight` | `[C_l, C_l, 3, 3]` | always |
//! | `enc.{l}.conv{1,2}.bias` | `[C_l]` | norm = none |
//! | `enc.{l}.norm{1,2}.weight`, `.bias` | `[C_l]` | norm = batch or group |
//! | `enc.{l}.norm{1,2}.running_mean`, `.running_var` | `[C_l]` | norm = batch |
//! | `bottleneck.conv1.weight` | `[C_D, C_{D-1}, 3, 3]` | always |
//! | `bottleneck.conv2.weight` | `[C_D, C_D, 3, 3]` | always |
//! | `bottleneck.conv{1,2}.bias`, `bottleneck.norm{1,2}.*` | `[C_D]` | as for `enc` |
//! | `dec.{l}.up.weight` | `[C_{l+1}, C_l, 2, 2]` (transposed conv: in, out, kh, kw) | upsampling = transposed-conv |
//! | `dec.{l}.up.weight` | `[C_l, C_{l+1}, 3, 3]` | upsampling = bilinear-conv |
//! | `dec.{l}.up.bias` | `[C_l]` | always |
//! | `dec.{l}.conv1.weight` | `[C_l, 2 C_l, 3, 3]` | always |
//! | `dec.{l}.conv2.weight` | `[C_l, C_l, 3, 3]` | always |
//! | `dec.{l}.conv{1,2}.bias`, `dec.{l}.norm{1,2}.*` | `[C_l]` | as for `enc` |
//! | `head.weight` | `[num_classes, C_0, 1, 1]` | always |
//! | `head.bias` | `[num_classes]` | always |
//!
//! A model built under a `VarBuilder` prefix (`vb.pp("unet")`) has these names behind that
//! prefix; [`save_weights_prefixed`] and [`load_weights_prefixed`] strip and add it.
//!
//! # Randomness
//!
//! No tensor is ever drawn from candle's RNG (it cannot be seeded on the CPU): the `VarBuilder`
//! creates placeholders, [`UNet::init_weights`] draws the weights from a seeded
//! `ChaCha8Rng`, and the dropout masks of [`Mode::Train`] come from the `ChaCha8Rng` it holds.
//!
//! # Example
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use lus_unet::{Mode, UNet, UNetConfig};
//! use rand::SeedableRng;
//! use rand_chacha::ChaCha8Rng;
//!
//! let config = UNetConfig { depth: 2, base_channels: 4, num_classes: 3, ..Default::default() };
//! let varmap = VarMap::new();
//! let unet = UNet::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
//! unet.init_weights(&varmap, &mut ChaCha8Rng::seed_from_u64(7))?;
//! let x = Tensor::zeros((1, 1, 16, 16), DType::F32, &Device::Cpu)?;
//! let logits = unet.forward_t(&x, &mut Mode::Eval)?;
//! assert_eq!(logits.dims(), &[1, 3, 16, 16]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
pub mod cpu_ops;
mod error;
mod io;
mod layers;
mod model;

pub use config::{Kernels, MAX_DEPTH, Norm, Precision, UNetConfig, Upsampling};
pub use error::{Result, TensorMismatch, UNetError, WeightsReport};
pub use io::{load_weights, load_weights_prefixed, save_weights, save_weights_prefixed};
pub use layers::{
    BATCH_NORM_MOMENTUM, NORM_EPS, ParamKind, ParamSpec, Part, dropout_mask, max_pool2x2,
    upsample_bilinear2x,
};
pub use model::{EncoderFeatures, Mode, UNet};

/// One test body run once per device, candle's `test_device!` pattern:
/// `test_device!(body, body_cpu, body_cuda)` defines the test `body_cpu`, which calls
/// `body(&Device::Cpu)`, and, in a build with the calling crate's `cuda` feature, `body_cuda`,
/// which calls it with CUDA device 0 (such a binary needs the NVIDIA driver to start at all).
/// `body` takes `&candle_core::Device` and returns `()`.
#[doc(hidden)]
#[macro_export]
macro_rules! test_device {
    ($body:ident, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() {
            $body(&::candle_core::Device::Cpu)
        }

        #[cfg(feature = "cuda")]
        #[test]
        fn $cuda() {
            let device = ::candle_core::Device::new_cuda(0)
                .expect("this test binary has the `cuda` feature, so it needs CUDA device 0");
            $body(&device)
        }
    };
}
