//! CPU kernels for the U-Net's heavy layers, as candle custom ops with their own backward
//! passes, so that a model using them still trains through candle's autograd.
//!
//! candle 0.11.1 computes the input gradient of every conv2d with a naive transposed-convolution
//! loop, and batch norm through a dozen generic ops; on the CPU a U-Net training step spends
//! most of its time there. The ops here are:
//!
//! - [`conv2d`]: im2col + GEMM forward; the input gradient is GEMM + col2im, the weight gradient
//!   GEMM over im2col (each a further custom op). For f32 3x3 stride-1 padding-1 convolutions
//!   with at least 8 channels on images at least 16 px wide (32 for the weight gradient), the
//!   three kernels are instead direct AVX-512 kernels (`direct3x3`, chosen at run time; the
//!   switch [`set_direct_conv3x3`] turns them off for comparisons);
//! - [`conv_transpose2d_k2s2`]: the 2x2 stride-2 transposed convolution of the decoder, one GEMM
//!   plus a scatter (backward: a gather plus GEMMs);
//! - [`batch_norm_train`]: batch norm in training mode (optionally followed by a ReLU) as one
//!   forward op; its backward computes the per-channel sums in one pass and the input gradient
//!   in a second one; [`channel_affine`] is the evaluation-mode batch norm (+ ReLU) in one pass;
//! - [`double_conv_bn_relu_train`]: the U-Net's `[conv3x3 -> batch norm -> ReLU] x 2` block in
//!   training mode as one op, so that its three intermediate tensors are not nodes of candle's
//!   graph (each node costs a zero fill and an add over the tensor in candle's backward);
//! - [`max_pool2x2`]: one pass forward, one pass backward (candle's `max` backward needs a
//!   comparison, a cast and a product over the full-resolution tensor).
//!
//! All ops accept f32 and f64 tensors on the CPU (f64 so that gradient checks can use them);
//! they make their inputs contiguous first. GEMMs use the `gemm` crate (the one candle uses).
//! Work is split over the batch with rayon when the batch has at least as many samples as
//! there are threads, otherwise each GEMM is parallel on its own. Sums over the batch (weight
//! gradients) add per-sample partial results in sample order, so results do not depend on the
//! number of threads.

/// The `name` and `cpu_fwd` items of a `CustomOp2` impl whose type is a [`Kernel2`]: every op
/// here computes its forward pass through [`cpu_fwd2`]; only `bwd` differs.
macro_rules! kernel2_forward {
    () => {
        fn name(&self) -> &'static str {
            <Self as $crate::cpu_ops::Kernel2>::NAME
        }
        fn cpu_fwd(
            &self,
            s1: &candle_core::CpuStorage,
            l1: &candle_core::Layout,
            s2: &candle_core::CpuStorage,
            l2: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            $crate::cpu_ops::cpu_fwd2(self, s1, l1, s2, l2)
        }
    };
}

/// The `name` and `cpu_fwd` items of a `CustomOp3` impl whose type is a [`Kernel3`] (see
/// `kernel2_forward`).
macro_rules! kernel3_forward {
    () => {
        fn name(&self) -> &'static str {
            <Self as $crate::cpu_ops::Kernel3>::NAME
        }
        #[allow(clippy::too_many_arguments)]
        fn cpu_fwd(
            &self,
            s1: &candle_core::CpuStorage,
            l1: &candle_core::Layout,
            s2: &candle_core::CpuStorage,
            l2: &candle_core::Layout,
            s3: &candle_core::CpuStorage,
            l3: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            $crate::cpu_ops::cpu_fwd3(self, s1, l1, s2, l2, s3, l3)
        }
    };
}

mod batch_norm;
mod conv;
mod conv_transpose;
#[cfg(target_arch = "x86_64")]
mod direct3x3;
mod double_conv;
mod pool;

use std::cell::RefCell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor, WithDType};
use gemm::Parallelism;

pub use batch_norm::{BatchStats, batch_norm_train, channel_affine};
#[doc(hidden)]
pub use conv::raw as conv2d_raw;
pub use conv::{conv2d, conv2d_concat};
pub use conv_transpose::conv_transpose2d_k2s2;
pub use double_conv::{DoubleConvWeights, double_conv_bn_relu_train};
pub use pool::max_pool2x2;

/// The element types the kernels support (f32 and f64), with a per-thread scratch buffer each.
pub(crate) trait Float: WithDType + AsF32 {
    /// Takes this thread's scratch buffer, grown to at least `len` elements (contents are
    /// arbitrary). Give it back with [`Float::put_scratch`]; a nested call in between (rayon
    /// work stealing) simply gets a fresh buffer.
    fn take_scratch(len: usize) -> Vec<Self>;
    fn put_scratch(buffer: Vec<Self>);
}

macro_rules! impl_float {
    ($t:ty, $cell:ident) => {
        thread_local! {
            static $cell: RefCell<Vec<$t>> = const { RefCell::new(Vec::new()) };
        }
        impl Float for $t {
            fn take_scratch(len: usize) -> Vec<Self> {
                let mut buffer = $cell.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
                if buffer.len() < len {
                    buffer.resize(len, 0.0);
                }
                buffer
            }
            fn put_scratch(buffer: Vec<Self>) {
                $cell.with(|cell| {
                    let mut slot = cell.borrow_mut();
                    if slot.capacity() < buffer.capacity() {
                        *slot = buffer;
                    }
                });
            }
        }
    };
}

impl_float!(f32, SCRATCH_F32);
impl_float!(f64, SCRATCH_F64);

/// Views of f32 data as f32 (for the kernels written for f32 only); `None` for other types.
pub(crate) trait AsF32: Sized {
    fn as_f32(_data: &[Self]) -> Option<&[f32]> {
        None
    }
    fn from_f32_vec(_data: Vec<f32>) -> Option<Vec<Self>> {
        None
    }
}

impl AsF32 for f32 {
    fn as_f32(data: &[Self]) -> Option<&[f32]> {
        Some(data)
    }
    fn from_f32_vec(data: Vec<f32>) -> Option<Vec<Self>> {
        Some(data)
    }
}

impl AsF32 for f64 {}

static DIRECT_CONV3X3: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Switches the direct 3x3 convolution kernels (f32, AVX-512) on or off for the whole
/// process; off, every convolution takes the im2col + GEMM path. On by default; the switch is
/// for benchmarks that compare the two paths (see `benches/README.md`).
pub fn set_direct_conv3x3(enabled: bool) {
    DIRECT_CONV3X3.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the direct 3x3 kernels are switched on and this CPU can run them.
pub fn direct_conv3x3_active() -> bool {
    DIRECT_CONV3X3.load(std::sync::atomic::Ordering::Relaxed) && direct_kernels_available()
}

#[cfg(target_arch = "x86_64")]
fn direct_kernels_available() -> bool {
    direct3x3::available()
}

#[cfg(not(target_arch = "x86_64"))]
fn direct_kernels_available() -> bool {
    false
}

/// Runs `f` with this thread's scratch buffer of `len` elements.
pub(crate) fn with_scratch<T: Float, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    let mut buffer = T::take_scratch(len);
    let result = f(&mut buffer[..len]);
    T::put_scratch(buffer);
    result
}

/// A kernel over two contiguous inputs of one element type.
pub(crate) trait Kernel2 {
    const NAME: &'static str;
    /// The shapes the two inputs must have ([`cpu_fwd2`] checks them before [`Kernel2::run`]).
    fn input_shapes(&self) -> [Shape; 2];
    fn run<T: Float>(&self, a: &[T], b: &[T]) -> Result<(Vec<T>, Shape)>;
}

/// A kernel over three contiguous inputs of one element type.
pub(crate) trait Kernel3 {
    const NAME: &'static str;
    /// The shapes the three inputs must have ([`cpu_fwd3`] checks them before [`Kernel3::run`]).
    fn input_shapes(&self) -> [Shape; 3];
    fn run<T: Float>(&self, a: &[T], b: &[T], c: &[T]) -> Result<(Vec<T>, Shape)>;
}

/// An error naming `op` unless `layout` has the `expected` shape.
pub(crate) fn check_dims(op: &str, layout: &Layout, expected: &Shape) -> Result<()> {
    if layout.shape() != expected {
        candle_core::bail!(
            "{op}: got a tensor of shape {:?}, expected {expected:?}",
            layout.shape()
        )
    }
    Ok(())
}

/// The contiguous elements of a storage, or an error naming the op.
pub(crate) fn contiguous<'a, T: Float>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!(
            "{op}: needs contiguous inputs, got strides {:?}",
            l.stride()
        ),
    }
}

pub(crate) fn cpu_fwd2<K: Kernel2>(
    kernel: &K,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(CpuStorage, Shape)> {
    fn go<K: Kernel2, T: Float>(
        k: &K,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, shape) = k.run(
            contiguous::<T>(K::NAME, s1, l1)?,
            contiguous::<T>(K::NAME, s2, l2)?,
        )?;
        Ok((T::to_cpu_storage_owned(out), shape))
    }
    for (layout, expected) in [l1, l2].into_iter().zip(kernel.input_shapes()) {
        check_dims(K::NAME, layout, &expected)?;
    }
    match (s1, s2) {
        (CpuStorage::F32(_), CpuStorage::F32(_)) => go::<K, f32>(kernel, s1, l1, s2, l2),
        (CpuStorage::F64(_), CpuStorage::F64(_)) => go::<K, f64>(kernel, s1, l1, s2, l2),
        _ => candle_core::bail!(
            "{}: f32 or f64 tensors of one dtype only, got {:?} and {:?}",
            K::NAME,
            s1.dtype(),
            s2.dtype()
        ),
    }
}

pub(crate) fn cpu_fwd3<K: Kernel3>(
    kernel: &K,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    s3: &CpuStorage,
    l3: &Layout,
) -> Result<(CpuStorage, Shape)> {
    fn go<K: Kernel3, T: Float>(
        k: &K,
        inputs: [(&CpuStorage, &Layout); 3],
    ) -> Result<(CpuStorage, Shape)> {
        let [(s1, l1), (s2, l2), (s3, l3)] = inputs;
        let (out, shape) = k.run(
            contiguous::<T>(K::NAME, s1, l1)?,
            contiguous::<T>(K::NAME, s2, l2)?,
            contiguous::<T>(K::NAME, s3, l3)?,
        )?;
        Ok((T::to_cpu_storage_owned(out), shape))
    }
    for (layout, expected) in [l1, l2, l3].into_iter().zip(kernel.input_shapes()) {
        check_dims(K::NAME, layout, &expected)?;
    }
    let inputs = [(s1, l1), (s2, l2), (s3, l3)];
    match (s1, s2, s3) {
        (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
            go::<K, f32>(kernel, inputs)
        }
        (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
            go::<K, f64>(kernel, inputs)
        }
        _ => candle_core::bail!(
            "{}: f32 or f64 tensors of one dtype only, got {:?}, {:?}, {:?}",
            K::NAME,
            s1.dtype(),
            s2.dtype(),
            s3.dtype()
        ),
    }
}

/// A strided read-only matrix view for [`matmul`].
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// `dst (m x n, row-major) = lhs (m x k) * rhs (k x n)`.
pub(crate) fn matmul<T: Float>(
    shape: (usize, usize, usize),
    dst: &mut [T],
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    parallelism: Parallelism,
) {
    matmul_into(shape, dst, shape.1, false, lhs, rhs, parallelism)
}

/// `dst (m x n, rows `dst_row_stride` apart) = lhs * rhs`, or `dst += lhs * rhs` with
/// `accumulate`.
// Unsafe: `gemm::gemm` takes raw pointers and strides (the bounds are asserted first).
#[allow(unsafe_code)]
pub(crate) fn matmul_into<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_row_stride: usize,
    accumulate: bool,
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    parallelism: Parallelism,
) {
    // Bounds are checked here once, so that the unsafe call below reads and writes only inside
    // the slices.
    let dst_fits = m == 0 || n == 0 || (m - 1) * dst_row_stride + n <= dst.len();
    assert!(
        dst_fits && (m <= 1 || n <= dst_row_stride) && lhs.fits(m, k) && rhs.fits(k, n),
        "matmul: operand sizes do not fit {m} x {k} x {n}"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_row_stride.max(1)).take(m) {
                row[..n].fill(T::from_f64(0.0));
            }
        }
        return;
    }
    // SAFETY: the assert above keeps every accessed element inside its slice; dst does not
    // alias the inputs (it is a unique borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            T::from_f64(if accumulate { 1.0 } else { 0.0 }),
            T::from_f64(1.0),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// How a batched kernel spreads over the threads: over the samples when there are at least two
/// of them (each sample's GEMMs then get the threads left over, if the samples are fewer than
/// the threads), else inside each GEMM.
#[derive(Clone, Copy)]
pub(crate) struct Plan {
    pub over_batch: bool,
    pub gemm: Parallelism,
}

impl Plan {
    pub fn for_batch(batch: usize) -> Self {
        let threads = rayon::current_num_threads();
        if threads <= 1 {
            Self {
                over_batch: false,
                gemm: Parallelism::None,
            }
        } else if batch >= threads {
            Self {
                over_batch: true,
                gemm: Parallelism::None,
            }
        } else if batch >= 2 {
            // Fewer samples than threads (batch 8 on 16 cores): one sample per task, each
            // GEMM split over its share of the threads, rather than the samples one after the
            // other with every (small) GEMM split over all the threads.
            Self {
                over_batch: true,
                gemm: Parallelism::Rayon(threads.div_ceil(batch)),
            }
        } else {
            Self {
                over_batch: false,
                gemm: Parallelism::Rayon(threads),
            }
        }
    }

    /// Whether a convolution of `bands` row bands per image should spread the bands over the
    /// threads: when the samples do not fill the threads and there is a band per thread.
    pub fn splits_bands(&self, bands: usize) -> bool {
        let threads = rayon::current_num_threads();
        !self.over_batch && threads > 1 && bands >= threads
    }

    /// Calls `f(sample, chunk, gemm_parallelism)` for each `chunk` of `out` (one per sample).
    pub fn for_each_sample<T: Float>(
        &self,
        out: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T], Parallelism) + Sync,
    ) {
        use rayon::prelude::*;
        if chunk == 0 {
            return;
        }
        if self.over_batch {
            out.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i, c, self.gemm));
        } else {
            out.chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i, c, self.gemm));
        }
    }

    /// Calls `f(sample, a_chunk, b_chunk, gemm_parallelism)` for each sample of a batch of
    /// `batch` with two outputs `a` and `b` (each split into `batch` equal chunks; an empty
    /// output gives empty chunks).
    pub fn for_each_sample2<T: Float>(
        &self,
        batch: usize,
        a: &mut [T],
        b: &mut [T],
        f: impl Fn(usize, &mut [T], &mut [T], Parallelism) + Sync,
    ) {
        use rayon::prelude::*;
        fn chunks<T>(buffer: &mut [T], batch: usize) -> Vec<&mut [T]> {
            let len = buffer.len() / batch.max(1);
            if len == 0 {
                (0..batch).map(|_| <&mut [T]>::default()).collect()
            } else {
                buffer.chunks_mut(len).collect()
            }
        }
        let samples = chunks(a, batch)
            .into_iter()
            .zip(chunks(b, batch))
            .enumerate();
        if self.over_batch {
            samples
                .collect::<Vec<_>>()
                .into_par_iter()
                .for_each(|(i, (a, b))| f(i, a, b, self.gemm));
        } else {
            samples.for_each(|(i, (a, b))| f(i, a, b, self.gemm));
        }
    }
}

/// Splits `packed` (the flat output of an op that computes several tensors in one pass) into
/// tensors of `shapes`, in order. The pieces are views of `packed` (contiguous, at offsets),
/// not copies; a single piece of `packed`'s own shape is `packed` itself.
pub(crate) fn split_flat(packed: &Tensor, shapes: &[Shape]) -> Result<Vec<Tensor>> {
    if let [shape] = shapes
        && packed.shape() == shape
    {
        return Ok(vec![packed.clone()]);
    }
    let total: usize = shapes.iter().map(Shape::elem_count).sum();
    if packed.elem_count() != total {
        candle_core::bail!(
            "split_flat: {} elements for pieces of shapes {shapes:?}",
            packed.elem_count()
        )
    }
    let flat = packed.flatten_all()?;
    let mut offset = 0;
    shapes
        .iter()
        .map(|shape| {
            let len = shape.elem_count();
            let piece = flat.narrow(0, offset, len)?.reshape(shape)?;
            offset += len;
            Ok(piece)
        })
        .collect()
}

/// Sums `parts` (consecutive blocks of `len` elements) into one block, in block order.
pub(crate) fn sum_blocks<T: Float>(parts: &[T], len: usize) -> Vec<T> {
    let mut total = vec![T::from_f64(0.0); len];
    for block in parts.chunks(len.max(1)) {
        for (t, v) in total.iter_mut().zip(block) {
            *t += *v;
        }
    }
    total
}
