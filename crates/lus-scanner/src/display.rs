//! What happens to a frame between the beamformer and the file a clinician exports: the
//! scanner's display mapping (dynamic range and gamma, set per preset and by the user) and the
//! video codec's lossy compression (8 x 8 block transform coding, as JPEG and the intra frames
//! of MPEG codecs do). Both act on the image only, never on the labels, and draw from random
//! streams of their own, so turning them on changes no other draw of the sample.

use image::GrayImage;

use crate::noise::{chance, option_stream, uniform};

/// Mixed into the scanner seed for the display-mapping stream.
const DISPLAY_STREAM_SALT: u64 = 0x0fe7_1a75_c0de_0004;
/// Mixed into the scanner seed for the compression stream.
const COMPRESSION_STREAM_SALT: u64 = 0x0fe7_1a75_c0de_0005;

/// The JPEG standard's luminance quantisation table (ITU-T T.81, Annex K), row-major.
const LUMINANCE_QUANTISATION: [f32; 64] = [
    16., 11., 10., 16., 24., 40., 51., 61., //
    12., 12., 14., 19., 26., 58., 60., 55., //
    14., 13., 16., 24., 40., 57., 69., 56., //
    14., 17., 22., 29., 51., 87., 80., 62., //
    18., 22., 37., 56., 68., 109., 103., 77., //
    24., 35., 55., 64., 81., 104., 113., 92., //
    49., 64., 78., 87., 103., 121., 120., 101., //
    72., 92., 95., 98., 112., 100., 103., 99.,
];

/// Another display mapping for the pixels inside the field of view (`inside`, row-major): the
/// log-compressed grey level `g` is remapped as if the dynamic range were `DR / r` instead of
/// `DR` (`g -> 255 - (255 - g) r`, clipped at 0: `r < 1` washes the frame out, `r > 1` deepens
/// its blacks), then through a gamma `γ` (`g -> 255 (g / 255)^γ`). `r` and `γ` are drawn per
/// frame as `exp(±0.35 variety)`: at `variety = 1` from about 0.7 to 1.42. Monotone, so the
/// order of grey levels inside the field of view is kept; outside it stays black.
pub(crate) fn vary_display(
    image: &mut GrayImage,
    inside: &[bool],
    seed: u64,
    index: u64,
    variety: f32,
) {
    if variety <= 0.0 {
        return;
    }
    let mut rng = option_stream(seed, DISPLAY_STREAM_SALT, index);
    let range = libm::expf(uniform(&mut rng, -0.35, 0.35) * variety);
    let gamma = libm::expf(uniform(&mut rng, -0.35, 0.35) * variety);
    let table: Vec<u8> = (0..=255u32)
        .map(|g| {
            let remapped = (255.0 - (255.0 - g as f32) * range).max(0.0) / 255.0;
            libm::roundf(255.0 * libm::powf(remapped, gamma)).clamp(0.0, 255.0) as u8
        })
        .collect();
    for (pixel, &inside) in image.pixels_mut().zip(inside) {
        if inside {
            pixel.0[0] = table[usize::from(pixel.0[0])];
        }
    }
}

/// Lossy block-transform compression of the whole frame with probability `probability`: 8 x 8
/// blocks (the last ones padded by repeating the edge), an orthonormal 2-D DCT, quantisation by
/// the JPEG luminance table scaled to a quality drawn from 15..70 (the IJG scaling), rounding,
/// and the inverse transform: the blocking, ringing and loss of fine speckle an exported clip
/// shows. Outside the field of view the ringing leaves faint noise, as on real exports.
pub(crate) fn compress(image: &mut GrayImage, seed: u64, index: u64, probability: f32) {
    if probability <= 0.0 {
        return;
    }
    let mut rng = option_stream(seed, COMPRESSION_STREAM_SALT, index);
    if !chance(&mut rng, probability) {
        return;
    }
    let quality = uniform(&mut rng, 15.0, 70.0);
    let scale = if quality < 50.0 {
        5000.0 / quality
    } else {
        200.0 - 2.0 * quality
    };
    let steps: Vec<f32> = LUMINANCE_QUANTISATION
        .iter()
        .map(|&t| libm::floorf((t * scale + 50.0) / 100.0).clamp(1.0, 255.0))
        .collect();
    let basis = dct_basis();
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut block = [[0.0f32; 8]; 8];
    for by in (0..h).step_by(8) {
        for bx in (0..w).step_by(8) {
            for (y, row) in block.iter_mut().enumerate() {
                for (x, v) in row.iter_mut().enumerate() {
                    let (sx, sy) = ((bx + x).min(w - 1), (by + y).min(h - 1));
                    *v = f32::from(image.as_raw()[sy * w + sx]) - 128.0;
                }
            }
            let coefficients = transform(&block, &basis, false);
            let mut quantised = [[0.0f32; 8]; 8];
            for (v, (row, c_row)) in quantised.iter_mut().zip(coefficients.iter()).enumerate() {
                for (u, (q, &c)) in row.iter_mut().zip(c_row).enumerate() {
                    let step = steps[v * 8 + u];
                    *q = libm::roundf(c / step) * step;
                }
            }
            let restored = transform(&quantised, &basis, true);
            for (y, row) in restored.iter().enumerate() {
                for (x, &v) in row.iter().enumerate() {
                    if by + y < h && bx + x < w {
                        image.as_mut()[(by + y) * w + bx + x] =
                            libm::roundf(v + 128.0).clamp(0.0, 255.0) as u8;
                    }
                }
            }
        }
    }
}

/// The 8-point DCT-II basis: `basis[k][n] = c(k) cos((2n + 1) k pi / 16)`, orthonormal.
fn dct_basis() -> Vec<[f32; 8]> {
    (0..8)
        .map(|k| {
            let c = if k == 0 {
                libm::sqrtf(1.0 / 8.0)
            } else {
                libm::sqrtf(2.0 / 8.0)
            };
            let mut row = [0.0f32; 8];
            for (n, v) in row.iter_mut().enumerate() {
                *v = c * libm::cosf((2 * n + 1) as f32 * k as f32 * std::f32::consts::PI / 16.0);
            }
            row
        })
        .collect()
}

/// The separable 2-D DCT of an 8 x 8 block (`inverse`: its transpose, the inverse of the
/// orthonormal transform).
fn transform(block: &[[f32; 8]; 8], basis: &[[f32; 8]], inverse: bool) -> [[f32; 8]; 8] {
    let b = |k: usize, n: usize| if inverse { basis[n][k] } else { basis[k][n] };
    let mut rows = [[0.0f32; 8]; 8];
    for (row_out, row) in rows.iter_mut().zip(block) {
        for (u, out) in row_out.iter_mut().enumerate() {
            *out = row.iter().enumerate().map(|(x, &v)| b(u, x) * v).sum();
        }
    }
    let mut out = [[0.0f32; 8]; 8];
    for (v, out_row) in out.iter_mut().enumerate() {
        for (u, value) in out_row.iter_mut().enumerate() {
            *value = rows.iter().enumerate().map(|(y, r)| b(v, y) * r[u]).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transform_is_orthonormal() {
        let basis = dct_basis();
        let mut block = [[0.0f32; 8]; 8];
        for (y, row) in block.iter_mut().enumerate() {
            for (x, v) in row.iter_mut().enumerate() {
                *v = ((x * 13 + y * 7) % 17) as f32 - 8.0;
            }
        }
        let there = transform(&block, &basis, false);
        // A constant block has only a DC coefficient: 8 x its value.
        let flat = transform(&[[2.0; 8]; 8], &basis, false);
        assert!((flat[0][0] - 16.0).abs() < 1e-4);
        assert!(flat.iter().flatten().skip(1).all(|v| v.abs() < 1e-4));
        let back = transform(&there, &basis, true);
        for (a, b) in back.iter().flatten().zip(block.iter().flatten()) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // Parseval: an orthonormal transform keeps the energy.
        let energy = |m: &[[f32; 8]; 8]| m.iter().flatten().map(|v| v * v).sum::<f32>();
        assert!((energy(&there) - energy(&block)).abs() < 1e-2);
    }
}
