//! Direct 3x3 convolution (stride 1, padding 1) in f32 with AVX-512: the forward pass, the
//! input gradient and the weight gradient of the U-Net's 3x3 convolutions without im2col.
//!
//! Why: with im2col + GEMM, the high-resolution levels of the U-Net (16-32 channels at
//! 64-256 px) spend as much time building and packing the 9x larger column matrix as
//! multiplying it (the weight gradient reached 47-54 GFLOP/s of the ~200 the two cores can
//! do), and the input gradient writes a `Ci*9 x pixels` matrix from a reduction over only
//! `Co` terms per element that col2im then sums back. A direct convolution reads the input
//! once per register tile and writes each output once.
//!
//! The input is first copied into planes with one zero row above and below and one zero
//! column left and right (`wp = W + 2` columns). The input of output pixel `(y, x)` under tap
//! `(kh, kw)` of channel `ci` is then at `ci * plane + (y + kh) * wp + x + kw`: a constant
//! offset per tap from `y * wp + x`, so 16 consecutive outputs of a row read 16 consecutive
//! inputs for every tap, with no bounds tests.
//!
//! - forward: register tile of `MR` output channels x `NV` vectors of 16 output columns
//!   (consecutive vectors of a band of rows, across row ends; a row's last vector is stored
//!   under a mask when the width is not a multiple of 16); for every (input channel, tap) the
//!   tile loads `NV` input vectors and broadcasts `MR` weights: 24 FMAs per 11 loads;
//! - input gradient: the same kernel on the padded output gradient, with the weights
//!   transposed (`Co <-> Ci`) and the taps mirrored (a full correlation is a 3x3 convolution
//!   of the 1-padded gradient with the 180-degree rotated kernel);
//! - weight gradient: `dW[co][ci][kh][kw] = sum_{y, x} dy[co][y][x] * x_padded[ci][y + kh][x + kw]`:
//!   register tile of `GW_CO` output channels x `GW_TAPS` taps, 16 pixels per step (24 FMAs
//!   per 10 loads), over a band of rows of one sample, then summed across lanes.
//!
//! Results do not depend on the number of threads: every output of the forward pass and of
//! the input gradient is one sequential sum, and the weight gradient adds per-(sample, row
//! band) partial sums in a fixed order, with bands fixed by the geometry.

#![allow(unsafe_code)]
// The register tiles are index loops over small fixed-size arrays (accumulator `[m][j]`,
// weight `m`, vector `j`): the form the compiler unrolls completely into registers, and the
// one that reads like the arithmetic.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::{
    __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps,
    _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
};
use std::ops::Range;

use rayon::prelude::*;

use super::conv::ConvGeom;
use super::with_scratch;

/// Output channels per register tile of the forward / input-gradient kernel.
const MR: usize = 8;
/// 16-lane vectors of output columns per register tile (MR x NV = 24 accumulators of the 32
/// zmm registers, plus NV input vectors and one broadcast).
const NV: usize = 3;
/// Weight gradient: output channels and taps per register tile (24 accumulators).
const GW_CO: usize = 4;
const GW_TAPS: usize = 6;
/// Register tiles (of `GW_CO` output channels) per work item of the weight gradient.
const GW_GROUP_TILES: usize = 4;
/// Padded-row positions per work item (a band of rows of one sample): small enough to give
/// the threads enough items at batch 1 and for the band's rows to stay in L2 while the weight
/// gradient's register tiles walk them, large enough that per-item costs vanish.
const ITEM_POSITIONS: usize = 4096;
/// Zero elements after the last padded plane, so that the reads of the last vectors stay
/// inside the buffer: a vector reads 16 elements from up to two rows and two columns past its
/// output position, so at most 15 elements past the last plane.
const SLACK: usize = 64;

/// Whether this CPU runs the kernels (AVX-512F and VL, checked at run time; std caches the
/// answer).
pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// The padded-plane geometry of one convolution (input size = output size).
#[derive(Clone, Copy, Debug)]
struct Grid {
    height: usize,
    width: usize,
    /// Padded row length, `width + 2`.
    wp: usize,
    /// Padded plane, `(height + 2) * wp`.
    plane: usize,
}

impl Grid {
    fn of(g: &ConvGeom) -> Self {
        let wp = g.width + 2;
        Self {
            height: g.height,
            width: g.width,
            wp,
            plane: (g.height + 2) * wp,
        }
    }

    /// Row bands of about `ITEM_POSITIONS` padded-row positions (at least one row each).
    /// The band count is rounded up to a power of two, so that the bands of an image divide
    /// evenly among 2, 4, 8 or 16 threads (5 bands of a 128-px image left one of two threads
    /// idle for a fifth of the weight gradient at batch 1); it depends on the geometry alone.
    fn item_rows(&self) -> Vec<Range<usize>> {
        let bands = (self.height * self.wp)
            .div_ceil(ITEM_POSITIONS)
            .clamp(1, self.height.max(1))
            .next_power_of_two()
            .min(self.height.max(1));
        self.bands_of(self.height.div_ceil(bands))
    }

    /// [`Grid::item_rows`], cut further so that a batch of `batch` gives every thread at least
    /// four items (an image of a deep level is one item: eight items at batch 8 would leave
    /// most of a 16-core machine idle). Only for kernels whose results do not depend on the
    /// bands (each output one sum within one item).
    ///
    /// A band holds a whole number of register tiles where it can (its vectors a multiple of
    /// `NV`): a 16-px image cut into bands of 2 rows ran every tile with 2 vectors, not 3.
    fn item_rows_for_threads(&self, batch: usize) -> Vec<Range<usize>> {
        let want = 4 * rayon::current_num_threads();
        let rows_for_threads = (batch * self.height).div_ceil(want).max(1);
        let rows = (ITEM_POSITIONS / self.wp).clamp(1, rows_for_threads);
        let per_row = self.width.div_ceil(16).max(1);
        let step = NV / gcd(NV, per_row);
        self.bands_of(rows.div_ceil(step) * step)
    }

    /// Bands of at most `rows` rows, as even as possible (62 + 2 rows would leave a work item
    /// 31 times smaller than the other).
    fn bands_of(&self, rows: usize) -> Vec<Range<usize>> {
        let bands = self.height.div_ceil(rows.clamp(1, self.height.max(1)));
        let rows = self.height.div_ceil(bands.max(1)).max(1);
        (0..self.height.div_ceil(rows))
            .map(|b| b * rows..((b + 1) * rows).min(self.height))
            .collect()
    }

    /// Offsets of the 9 taps of each of `channels` channels from position `y * wp + x`, in
    /// weight order `(c, kh, kw)`.
    fn tap_offsets(&self, channels: usize) -> Vec<usize> {
        (0..channels)
            .flat_map(|c| (0..9).map(move |t| c * self.plane + (t / 3) * self.wp + t % 3))
            .collect()
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A read-only batch of padded planes, `batch x channels x plane` plus `SLACK`.
struct Padded<'a> {
    data: &'a [f32],
    channels: usize,
    grid: Grid,
}

impl Padded<'_> {
    fn sample(&self, n: usize) -> &[f32] {
        &self.data[n * self.channels * self.grid.plane..]
    }
}

/// Copies planes `plane_of(n, c)` (`H x W` each) into `buf` (`batch * channels * plane +
/// SLACK` elements, any contents) as padded planes with zero borders, and zeroes the slack.
/// Every element is written, so the buffer need not be cleared first (one pass fewer).
fn pad_into<'s>(
    grid: Grid,
    batch: usize,
    channels: usize,
    plane_of: impl Fn(usize, usize) -> &'s [f32] + Sync,
    buf: &mut [f32],
) {
    let body = batch * channels * grid.plane;
    buf[body..].fill(0.0);
    let (h, w, wp) = (grid.height, grid.width, grid.wp);
    buf[..body]
        .par_chunks_mut(grid.plane)
        .with_min_len(4)
        .enumerate()
        .for_each(|(i, dst)| {
            let src = plane_of(i / channels, i % channels);
            // Borders and data; a reused buffer holds old data everywhere.
            dst[..wp + 1].fill(0.0);
            for y in 0..h {
                let row = &mut dst[(y + 1) * wp + 1..][..wp];
                row[..w].copy_from_slice(&src[y * w..][..w]);
                row[w..].fill(0.0);
            }
            dst[(h + 1) * wp + 1..].fill(0.0);
        });
}

/// Weights as `[out block][in channel * 9 + tap][MR]` (output channels past the last zero),
/// with `value(o, i, tap)` giving the weight of output channel `o`, input channel `i`.
fn pack_weights(outs: usize, ins: usize, value: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
    let blocks = outs.div_ceil(MR);
    let mut packed = vec![0.0; blocks * ins * 9 * MR];
    for (b, block) in packed.chunks_mut(ins * 9 * MR).enumerate() {
        for (k, lane) in block.chunks_mut(MR).enumerate() {
            for (m, v) in lane.iter_mut().enumerate() {
                let o = b * MR + m;
                if o < outs {
                    *v = value(o, k / 9, k % 9);
                }
            }
        }
    }
    packed
}

/// Where the output planes of one convolution go: plane `(n, c)` (`H x W`) of a batch, split
/// over two tensors at channel `first` (a concatenated input's gradient) or in one.
#[derive(Clone, Copy)]
struct OutPlanes {
    parts: [*mut f32; 2],
    first: usize,
    second: usize,
    plane: usize,
}

// SAFETY: the pointers are only written through by `conv_planes`, whose work items write
// disjoint row bands of the planes.
unsafe impl Send for OutPlanes {}
// SAFETY: as for `Send`: shared references only hand out plane pointers, and the work items
// that write through them write disjoint row bands.
unsafe impl Sync for OutPlanes {}

impl OutPlanes {
    /// The start of plane `(n, c)`.
    fn plane_ptr(&self, n: usize, c: usize) -> *mut f32 {
        // SAFETY: (of the offsets) `n < batch` and `c < first + second`, and the slices the
        // pointers came from hold `batch * channels * plane` elements (checked by callers).
        unsafe {
            if c < self.first {
                self.parts[0].add((n * self.first + c) * self.plane)
            } else {
                self.parts[1].add((n * self.second + c - self.first) * self.plane)
            }
        }
    }
}

/// `out[n][o] = bias[o] + sum_{i, tap} packed[o][i][tap] * input[n][i][tap-shifted]` for all
/// samples and output channels: the shared driver of the forward pass and the input gradient.
/// Work items are bands of rows of one sample. The band's output rows are cut into vectors of
/// 16 columns (the last of a row masked when the width is not a multiple of 16), and a
/// register tile takes `NV` consecutive vectors, from one row or across rows: every tile is
/// full-size except perhaps a band's last (a tile per row would leave a 1-vector tile on
/// every 64-px row and make every tile of a 16-px image a 1-vector one).
fn conv_planes(
    input: &Padded<'_>,
    outs: usize,
    packed: &[f32],
    bias: Option<&[f32]>,
    batch: usize,
    out: OutPlanes,
) {
    let grid = input.grid;
    let (w, wp) = (grid.width, grid.wp);
    let offsets = grid.tap_offsets(input.channels);
    let k = offsets.len();
    let blocks = outs.div_ceil(MR);
    let mut init = vec![0.0f32; blocks * MR];
    if let Some(bias) = bias {
        init[..outs].copy_from_slice(bias);
    }
    let bands = grid.item_rows_for_threads(batch);
    let per_row = w.div_ceil(16);
    let tail = w - 16 * (per_row - 1);
    let tail_mask: u16 = if tail == 16 {
        u16::MAX
    } else {
        (1u16 << tail) - 1
    };
    (0..batch * bands.len()).into_par_iter().for_each(|item| {
        let (n, rows) = (item / bands.len(), bands[item % bands.len()].clone());
        let x = input.sample(n);
        // (offset in the padded plane, offset in the output plane, store mask) per vector.
        let vectors: Vec<(usize, usize, u16)> = rows
            .flat_map(|y| {
                (0..per_row).map(move |v| {
                    let mask = if v + 1 == per_row {
                        tail_mask
                    } else {
                        u16::MAX
                    };
                    (y * wp + 16 * v, y * w + 16 * v, mask)
                })
            })
            .collect();
        for tile_vectors in vectors.chunks(NV) {
            let mut tile = Tile {
                loads: [0; NV],
                stores: [0; NV],
                masks: [0; NV],
                rows: [std::ptr::null_mut(); MR],
                valid: 0,
            };
            for (j, &(load, store, mask)) in tile_vectors.iter().enumerate() {
                tile.loads[j] = load;
                tile.stores[j] = store;
                tile.masks[j] = mask;
            }
            for b in 0..blocks {
                let weights = &packed[b * k * MR..][..k * MR];
                tile.valid = MR.min(outs - b * MR);
                for (m, row) in tile.rows.iter_mut().enumerate().take(tile.valid) {
                    *row = out.plane_ptr(n, b * MR + m);
                }
                // SAFETY: AVX-512F/VL were detected (callers check `available()`); the reads
                // at `offset + load + 0..16` stay inside `input.data` (at most 15 elements
                // past the last plane: within SLACK); the masked writes are columns < W of
                // rows of this band, which no other work item writes.
                unsafe {
                    let (xp, wp, init) = (x.as_ptr(), weights.as_ptr(), &init[b * MR..]);
                    match tile_vectors.len() {
                        3 => fwd_tile::<3>(xp, &offsets, wp, init, &tile),
                        2 => fwd_tile::<2>(xp, &offsets, wp, init, &tile),
                        _ => fwd_tile::<1>(xp, &offsets, wp, init, &tile),
                    }
                }
            }
        }
    });
}

/// One register tile's vectors: where each is read (offset from the sample's padded planes)
/// and written (offset from its output plane, under its mask), and the output planes of the
/// `valid` channels of the block.
struct Tile {
    loads: [usize; NV],
    stores: [usize; NV],
    masks: [u16; NV],
    rows: [*mut f32; MR],
    valid: usize,
}

/// One register tile: `MR` output channels x `V` vectors of 16 columns, summing over the taps
/// at `offsets` of the padded planes `x` with weights `w` (`offsets.len() x MR`), starting
/// from `init`.
///
/// # Safety
/// - The CPU has AVX-512F and AVX-512VL (the caller checks `is_x86_feature_detected!`).
/// - For every `j < V` and every `off` in `offsets`, the 16 floats at
///   `x + tile.loads[j] + off` are readable (inside the padded input planes).
/// - `w` points at `offsets.len() * MR` readable floats, and `init` has at least `MR`.
/// - For every `m < tile.valid` and `j < V`, the floats of `tile.rows[m] + tile.stores[j]`
///   selected by `tile.masks[j]` are writable and no other thread writes them meanwhile.
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn fwd_tile<const V: usize>(
    x: *const f32,
    offsets: &[usize],
    w: *const f32,
    init: &[f32],
    tile: &Tile,
) {
    let mut acc: [[__m512; V]; MR] = [[_mm512_setzero_ps(); V]; MR];
    for m in 0..MR {
        let v = _mm512_set1_ps(init[m]);
        for j in 0..V {
            acc[m][j] = v;
        }
    }
    let mut src = [x; V];
    for j in 0..V {
        // SAFETY: inside the padded planes (see the caller).
        src[j] = unsafe { x.add(tile.loads[j]) };
    }
    for (k, &off) in offsets.iter().enumerate() {
        // SAFETY: the caller guarantees 16 readable elements at every vector's offset and MR
        // weights per tap.
        unsafe {
            let mut b = [_mm512_setzero_ps(); V];
            for j in 0..V {
                b[j] = _mm512_loadu_ps(src[j].add(off));
            }
            let wk = w.add(k * MR);
            for m in 0..MR {
                let a = _mm512_set1_ps(*wk.add(m));
                for j in 0..V {
                    acc[m][j] = _mm512_fmadd_ps(a, b[j], acc[m][j]);
                }
            }
        }
    }
    for m in 0..tile.valid {
        for j in 0..V {
            // SAFETY: the caller guarantees the masked columns writable in every valid row.
            unsafe {
                _mm512_mask_storeu_ps(tile.rows[m].add(tile.stores[j]), tile.masks[j], acc[m][j])
            };
        }
    }
}

/// Sums of `dy[c][r][col] * x[t][r][col]` over `rows` rows of `width` columns, for a tile of
/// `GW_CO` gradient rows (rows `dy_stride` apart) and `GW_TAPS` shifted input rows (`x_stride`
/// apart), added lane-wise to the 16-lane partial sums `out[c][t]` (summed across lanes by the
/// caller once per work item: a horizontal sum in here made the compiler keep a third of the
/// accumulators on the stack).
///
/// # Safety
/// - The CPU has AVX-512F and AVX-512VL (the caller checks `is_x86_feature_detected!`).
/// - For every `r < rows`, the `width` floats at `dy[c] + r * dy_stride` (each `c`) and at
///   `x[t] + r * x_stride` (each `t`) are readable; the masked loads touch no others.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn grad_weight_tile(
    dy: &[*const f32; GW_CO],
    x: &[*const f32; GW_TAPS],
    rows: usize,
    width: usize,
    dy_stride: usize,
    x_stride: usize,
    out: &mut [[[f32; 16]; GW_TAPS]; GW_CO],
) {
    let mut acc = [[_mm512_setzero_ps(); GW_TAPS]; GW_CO];
    for c in 0..GW_CO {
        for t in 0..GW_TAPS {
            // SAFETY: 16 elements.
            acc[c][t] = unsafe { _mm512_loadu_ps(out[c][t].as_ptr()) };
        }
    }
    for r in 0..rows {
        // One loop for full and partial vectors (a masked load costs the same as a plain
        // one): with a separate tail loop the compiler kept fewer accumulators in registers.
        for col in (0..width).step_by(16) {
            let rest = width - col;
            let mask: u16 = if rest >= 16 {
                u16::MAX
            } else {
                (1u16 << rest) - 1
            };
            let mut d = [_mm512_setzero_ps(); GW_CO];
            let mut xs = [_mm512_setzero_ps(); GW_TAPS];
            // SAFETY: the caller guarantees `rows` rows of `width` readable elements at every
            // pointer; masked loads touch only those.
            unsafe {
                for c in 0..GW_CO {
                    d[c] = _mm512_maskz_loadu_ps(mask, dy[c].add(r * dy_stride + col));
                }
                for t in 0..GW_TAPS {
                    xs[t] = _mm512_maskz_loadu_ps(mask, x[t].add(r * x_stride + col));
                }
            }
            for t in 0..GW_TAPS {
                for c in 0..GW_CO {
                    acc[c][t] = _mm512_fmadd_ps(d[c], xs[t], acc[c][t]);
                }
            }
        }
    }
    for c in 0..GW_CO {
        for t in 0..GW_TAPS {
            // SAFETY: 16 elements.
            unsafe { _mm512_storeu_ps(out[c][t].as_mut_ptr(), acc[c][t]) };
        }
    }
}

/// A vector of `len` elements, all written by `fill` through the pointer it gets (the
/// convolutions write every output element; zeroing them first would be one more pass).
fn written_by(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut v = Vec::<f32>::with_capacity(len);
    fill(v.as_mut_ptr());
    // SAFETY: `fill` initialised all `len` elements (see the callers), within the capacity.
    unsafe { v.set_len(len) };
    v
}

/// Pads the `ins` input planes `plane_of(n, c)` of every sample (into this thread's scratch
/// buffer, reused from call to call: page faults on fresh multi-megabyte allocations cost as
/// much as the copy) and convolves them with `packed` (+ `bias`) into a new vector of
/// `out_len` elements, whose planes `out_planes` locates.
#[allow(clippy::too_many_arguments)]
fn pad_and_convolve<'s>(
    grid: Grid,
    batch: usize,
    ins: usize,
    plane_of: impl Fn(usize, usize) -> &'s [f32] + Sync,
    outs: usize,
    packed: &[f32],
    bias: Option<&[f32]>,
    out_len: usize,
    out_planes: impl FnOnce(*mut f32) -> OutPlanes,
) -> Vec<f32> {
    with_scratch(batch * ins * grid.plane + SLACK, |buf: &mut [f32]| {
        pad_into(grid, batch, ins, plane_of, buf);
        let input = Padded {
            data: buf,
            channels: ins,
            grid,
        };
        // conv_planes writes every (sample, channel, row, column) of the output planes, and
        // the planes cover all `out_len` elements.
        written_by(out_len, |out| {
            conv_planes(&input, outs, packed, bias, batch, out_planes(out));
        })
    })
}

/// Forward: `y (N x Co x H x W) = conv3x3(x) (+ bias)`; `plane_of(n, ci)` gives input planes.
pub(crate) fn forward<'s>(
    g: &ConvGeom,
    plane_of: impl Fn(usize, usize) -> &'s [f32] + Sync,
    w: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert!(is_direct_geometry(g) && available());
    assert_eq!(w.len(), g.weight_len());
    let grid = Grid::of(g);
    let (ci, co) = (g.in_channels, g.out_channels);
    let packed = pack_weights(co, ci, |o, i, t| w[(o * ci + i) * 9 + t]);
    let out_len = g.batch * g.out_plane();
    pad_and_convolve(
        grid,
        g.batch,
        ci,
        plane_of,
        co,
        &packed,
        bias,
        out_len,
        |y| OutPlanes {
            parts: [y, std::ptr::null_mut()],
            first: co,
            second: 0,
            plane: g.plane(),
        },
    )
}

/// Input gradient: `dx = conv3x3 of the 1-padded dy with the transposed, mirrored weights`;
/// for a concatenated input, the first part's gradient (`N x first_channels x H x W`) followed
/// by the second's.
pub(crate) fn grad_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    assert!(is_direct_geometry(g) && available());
    let [c1, c2] = g.part_channels();
    assert_eq!(dy.len(), g.batch * g.out_plane());
    let grid = Grid::of(g);
    let (ci, co) = (g.in_channels, g.out_channels);
    // Output channel of the gradient = input channel i; its "input" channels are the o of dy;
    // tap t of the mirrored kernel is tap 8 - t of the original.
    let packed = pack_weights(ci, co, |i, o, t| w[(o * ci + i) * 9 + (8 - t)]);
    let plane = g.plane();
    let dy_plane = |n, c| &dy[(n * co + c) * plane..][..plane];
    let out_len = g.batch * g.in_plane();
    pad_and_convolve(
        grid,
        g.batch,
        co,
        dy_plane,
        ci,
        &packed,
        None,
        out_len,
        |dx| {
            OutPlanes {
                // SAFETY: the second part starts inside (or at the end of) the allocation.
                parts: [dx, unsafe { dx.add(g.batch * c1 * plane) }],
                first: c1,
                second: c2,
                plane,
            }
        },
    )
}

/// Weight gradient `dW (Co x Ci x 3 x 3)`, summed over the batch:
/// `dW[o][i][kh][kw] = sum over samples, rows y, columns x of dy[o][y][x] * xp[i][y + kh][x + kw]`
/// with `xp` the padded input (`dy` is read as it is).
pub(crate) fn grad_weight<'s>(
    g: &ConvGeom,
    plane_of: impl Fn(usize, usize) -> &'s [f32] + Sync,
    dy: &[f32],
) -> Vec<f32> {
    assert!(is_direct_geometry(g) && available());
    assert_eq!(dy.len(), g.batch * g.out_plane());
    let grid = Grid::of(g);
    let (ci, co, plane, w, wp) = (g.in_channels, g.out_channels, g.plane(), g.width, grid.wp);
    let taps = ci * 9;
    let offsets = grid.tap_offsets(ci);
    let bands = grid.item_rows();
    // Work items: (sample, row band, group of output channels). The groups multiply the items
    // of small batches and deep levels (one band per image) without changing any sum: each
    // weight-gradient entry is still the sum over (sample, band) partials in that order,
    // whatever the threads.
    let group = GW_CO * GW_GROUP_TILES;
    let groups = co.div_ceil(group);
    let items = g.batch * bands.len() * groups;
    with_scratch(g.batch * ci * grid.plane + SLACK, |x_buf: &mut [f32]| {
        pad_into(grid, g.batch, ci, plane_of, x_buf);
        let xp = &x_buf[..];
        let partials: Vec<Vec<f32>> = (0..items)
            .into_par_iter()
            .map(|item| {
                let (sample_band, k) = (item / groups, item % groups);
                let (n, b) = (sample_band / bands.len(), sample_band % bands.len());
                let rows = bands[b].clone();
                let channels = k * group..((k + 1) * group).min(co);
                let x_n = &xp[n * ci * grid.plane..];
                let dy_n = &dy[n * co * plane..][..co * plane];
                // Each register tile walks all rows of the band (about ITEM_POSITIONS pixels:
                // the band's rows of dy and of the padded input stay in L2), then its lanes
                // are summed.
                let mut partial = vec![0.0f32; channels.len() * taps];
                for c0 in channels.clone().step_by(GW_CO) {
                    let dy_rows: [*const f32; GW_CO] = std::array::from_fn(|c| {
                        // Channels past the group's last repeat it; their sums are dropped.
                        let c = (c0 + c).min(channels.end - 1);
                        dy_n[c * plane + rows.start * w..].as_ptr()
                    });
                    for t0 in (0..taps).step_by(GW_TAPS) {
                        let x_rows: [*const f32; GW_TAPS] = std::array::from_fn(|t| {
                            x_n[offsets[(t0 + t).min(taps - 1)] + rows.start * wp..].as_ptr()
                        });
                        let mut lanes = [[[0.0f32; 16]; GW_TAPS]; GW_CO];
                        // SAFETY: AVX-512F/VL detected; `rows.len()` rows of `w` columns:
                        // rows of dy's planes, and of the padded planes two rows and two
                        // columns further at most (inside the plane).
                        unsafe {
                            grad_weight_tile(&dy_rows, &x_rows, rows.len(), w, w, wp, &mut lanes)
                        };
                        let local = c0 - channels.start;
                        for (c, row) in lanes.iter().enumerate().take(channels.end - c0) {
                            for (t, v) in row.iter().enumerate().take(taps - t0) {
                                partial[(local + c) * taps + t0 + t] = v.iter().sum();
                            }
                        }
                    }
                }
                partial
            })
            .collect();
        let mut total = vec![0.0f32; co * taps];
        // Items in (sample, band) order for every group: each entry sums its partials in the
        // same order whatever the threads.
        for (item, partial) in partials.iter().enumerate() {
            let k = item % groups;
            let start = k * group * taps;
            for (t, p) in total[start..start + partial.len()].iter_mut().zip(partial) {
                *t += p;
            }
        }
        total
    })
}

/// The geometry the kernels handle: 3x3, stride 1, padding 1.
pub(crate) fn is_direct_geometry(g: &ConvGeom) -> bool {
    g.kernel_h == 3 && g.kernel_w == 3 && g.stride == 1 && g.padding == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// `y[n][o][y][x] = sum_{i, kh, kw} w[o][i][kh][kw] * x[n][i][y + kh - 1][x + kw - 1]` in
    /// f64, zero outside the image.
    fn reference_forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f64> {
        let (h, wd, ci, co) = (g.height, g.width, g.in_channels, g.out_channels);
        let mut y = vec![0.0; g.batch * co * h * wd];
        for n in 0..g.batch {
            for o in 0..co {
                for r in 0..h {
                    for c in 0..wd {
                        let mut s = 0.0f64;
                        for i in 0..ci {
                            for t in 0..9 {
                                let (yy, xx) = (r + t / 3, c + t % 3);
                                if yy >= 1 && yy <= h && xx >= 1 && xx <= wd {
                                    s += f64::from(w[(o * ci + i) * 9 + t])
                                        * f64::from(x[((n * ci + i) * h + yy - 1) * wd + xx - 1]);
                                }
                            }
                        }
                        y[((n * co + o) * h + r) * wd + c] = s;
                    }
                }
            }
        }
        y
    }

    fn assert_close(what: &str, got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            let err = (f64::from(*a) - b).abs();
            assert!(
                err <= 2e-5 * scale,
                "{what}: element {i}: {a} vs {b} (scale {scale})"
            );
        }
    }

    /// Forward, input gradient and weight gradient against f64 sums, on shapes that exercise
    /// the tails: output channels not a multiple of MR or GW_CO, taps not a multiple of
    /// GW_TAPS, widths below one vector and odd, several row bands, batch > 1, a concatenated
    /// input with a bias.
    #[test]
    fn kernels_match_f64_sums() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let cases: [(usize, usize, usize, usize, usize, usize); 7] = [
            // batch, first channels, second channels, out channels, height, width
            (1, 1, 0, 1, 1, 1),
            (2, 3, 0, 5, 7, 9),
            (1, 16, 0, 16, 5, 37),
            (3, 2, 3, 11, 6, 17),
            (1, 4, 0, 9, 45, 131),
            (2, 13, 0, 8, 16, 16),
            (1, 1, 2, 19, 3, 64),
        ];
        for (batch, c1, c2, co, h, wd) in cases {
            let ci = c1 + c2;
            let second = (c2 > 0).then_some([batch, c2, h, wd]);
            let g = ConvGeom::new(
                &[batch, c1, h, wd],
                second.as_ref().map(|s| &s[..]),
                &[co, ci, 3, 3],
                1,
                1,
            )
            .unwrap();
            let what = format!("batch {batch}, channels {c1}+{c2} -> {co}, {h} x {wd}");
            let x1 = random(batch * c1 * h * wd, &mut rng);
            let x2 = random(batch * c2 * h * wd, &mut rng);
            let w = random(co * ci * 9, &mut rng);
            let bias = random(co, &mut rng);
            let dy = random(batch * co * h * wd, &mut rng);
            let plane = h * wd;
            let plane_of = |n: usize, c: usize| -> &[f32] {
                if c < c1 {
                    &x1[(n * c1 + c) * plane..][..plane]
                } else {
                    &x2[(n * c2 + c - c1) * plane..][..plane]
                }
            };
            // The concatenated input, for the references.
            let x: Vec<f32> = (0..batch)
                .flat_map(|n| (0..ci).flat_map(move |c| plane_of(n, c).to_vec()))
                .collect();

            let y = forward(&g, plane_of, &w, Some(&bias));
            let mut want = reference_forward(&g, &x, &w);
            for (i, v) in want.iter_mut().enumerate() {
                *v += f64::from(bias[(i / plane) % co]);
            }
            assert_close(&format!("{what}: forward"), &y, &want);

            // dx = conv of dy with w transposed and mirrored: reference through the same
            // forward sums on the transposed geometry.
            let gt = ConvGeom::new(&[batch, co, h, wd], None, &[ci, co, 3, 3], 1, 1).unwrap();
            let wt: Vec<f32> = (0..ci * co * 9)
                .map(|idx| {
                    let (i, o, t) = (idx / (co * 9), (idx / 9) % co, idx % 9);
                    w[(o * ci + i) * 9 + 8 - t]
                })
                .collect();
            let want_dx = reference_forward(&gt, &dy, &wt);
            let dx = grad_input(&g, &dy, &w);
            let (dx1, dx2) = dx.split_at(batch * c1 * plane);
            let got_dx: Vec<f32> = (0..batch)
                .flat_map(|n| {
                    let (dx1, dx2) = (&dx1, &dx2);
                    (0..ci).flat_map(move |c| {
                        if c < c1 {
                            dx1[(n * c1 + c) * plane..][..plane].to_vec()
                        } else {
                            dx2[(n * c2 + c - c1) * plane..][..plane].to_vec()
                        }
                    })
                })
                .collect();
            assert_close(&format!("{what}: grad input"), &got_dx, &want_dx);

            let dw = grad_weight(&g, plane_of, &dy);
            let mut want_dw = vec![0.0f64; co * ci * 9];
            for n in 0..batch {
                for o in 0..co {
                    for i in 0..ci {
                        for t in 0..9 {
                            let mut s = 0.0;
                            for r in 0..h {
                                for c in 0..wd {
                                    let (yy, xx) = (r + t / 3, c + t % 3);
                                    if yy >= 1 && yy <= h && xx >= 1 && xx <= wd {
                                        s += f64::from(dy[((n * co + o) * h + r) * wd + c])
                                            * f64::from(
                                                x[((n * ci + i) * h + yy - 1) * wd + xx - 1],
                                            );
                                    }
                                }
                            }
                            want_dw[(o * ci + i) * 9 + t] += s;
                        }
                    }
                }
            }
            assert_close(&format!("{what}: grad weight"), &dw, &want_dw);
        }
    }

    /// A reused padded buffer holding old data gives the same results as a fresh one (the
    /// borders are rewritten every time).
    #[test]
    fn reused_buffers_give_identical_results() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let g = ConvGeom::new(&[2, 5, 9, 20], None, &[6, 5, 3, 3], 1, 1).unwrap();
        let x = random(g.batch * g.in_plane(), &mut rng);
        let w = random(g.weight_len(), &mut rng);
        let plane = g.plane();
        let plane_of = |n: usize, c: usize| &x[(n * 5 + c) * plane..][..plane];
        let first = forward(&g, plane_of, &w, None);
        // Leave this thread's scratch buffer full of large non-zero values, then run again.
        <f32 as crate::cpu_ops::Float>::put_scratch(vec![1e30; 10_000]);
        let second = forward(&g, plane_of, &w, None);
        assert_eq!(first, second);
    }
}
