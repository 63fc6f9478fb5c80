//! Screen overlays: what a scanner burns into the frame besides the echo — text (preset,
//! depth, gain, frame rate), a depth scale of tick marks along one edge, a focal-zone marker
//! and an orientation mark. They are drawn after rendering and never enter the annotation: an
//! overlay is not tissue, and a bright vertical column of ticks is not a B-line.
//!
//! Drawn from a random stream of their own (seeded by the scanner seed and the sample index),
//! so turning them on or off changes no other draw of the sample: the same patient, the same
//! labels, the image differing only under the overlays.

use image::GrayImage;
use rand::RngExt;

use crate::noise::{SampleRng, chance, option_stream, uniform};

/// Mixed into the scanner seed for the overlay stream.
const OVERLAY_STREAM_SALT: u64 = 0x0fe7_1a75_c0de_0001;
/// Mixed into the scanner seed for the near-field haze stream.
const HAZE_STREAM_SALT: u64 = 0x0fe7_1a75_c0de_0002;

/// Near-field haze: the transducer's ring-down and the reverberations between skin and probe
/// that brighten the first millimetres of a real frame and blur its near-field layers. Added
/// to the rendered image (grey levels), strongest at the transducer surface and fading with
/// depth along the beam, modulated laterally by a smooth random profile; black outside the
/// field of view (`inside`, row-major) stays black. Image only: the labels under the haze are the tissue's. `level`
/// in `[0, 1]` scales its strength (0: none, and nothing is drawn). From a random stream of its
/// own, so it changes no other draw of the sample.
pub(crate) fn add_near_field_haze(
    image: &mut GrayImage,
    inside: &[bool],
    geometry: &crate::ScanGeometry,
    seed: u64,
    index: u64,
    level: f32,
) {
    if level <= 0.0 {
        return;
    }
    let mut rng = option_stream(seed, HAZE_STREAM_SALT, index);
    let depth = geometry.depth();
    let amplitude = level * uniform(&mut rng, 40.0, 90.0);
    let length = uniform(&mut rng, 0.04, 0.12) * depth;
    // A smooth lateral modulation: a few random cosines.
    let waves: Vec<(f32, f32, f32)> = (0..3)
        .map(|k| {
            (
                (k + 1) as f32 * uniform(&mut rng, 0.8, 1.6),
                uniform(&mut rng, 0.0, std::f32::consts::TAU),
                uniform(&mut rng, 0.05, 0.2),
            )
        })
        .collect();
    let (w, h) = image.dimensions();
    for y in 0..h {
        for x in 0..w {
            if !inside[(y * w + x) as usize] {
                continue;
            }
            let value = image.get_pixel(x, y).0[0];
            let (u, z) = geometry.to_probe([x as f32 + 0.5, y as f32 + 0.5]);
            if !(0.0..=1.0).contains(&u) || !(0.0..=depth).contains(&z) {
                continue;
            }
            let lateral: f32 = 1.0
                + waves
                    .iter()
                    .map(|&(f, phase, a)| a * (std::f32::consts::TAU * f * u + phase).cos())
                    .sum::<f32>();
            // exp(-z / L), shifted to reach 0 at 3 L and clipped there: no discontinuity, and
            // the far field is untouched.
            let tail = libm::expf(-3.0);
            let decay = ((libm::expf(-z / length) - tail) / (1.0 - tail)).max(0.0);
            let add = amplitude * lateral * decay;
            image.put_pixel(
                x,
                y,
                image::Luma([(f32::from(value) + add).min(255.0) as u8]),
            );
        }
    }
}

/// The overlays of sample `index` on a black `width x height` layer (composited over the frame
/// by the brighter of the two), or `None` for a frame without (probability `1 - probability`).
pub(crate) fn overlay_layer(
    width: u32,
    height: u32,
    seed: u64,
    index: u64,
    probability: f32,
) -> Option<GrayImage> {
    if probability <= 0.0 {
        return None;
    }
    let mut rng = option_stream(seed, OVERLAY_STREAM_SALT, index);
    if !chance(&mut rng, probability) {
        return None;
    }
    let mut layer = GrayImage::new(width, height);
    draw(&mut layer, &mut rng);
    Some(layer)
}

fn draw(image: &mut GrayImage, rng: &mut SampleRng) {
    let (w, h) = image.dimensions();
    let unit = (w.min(h) as f32 / 128.0).max(0.5);
    let brightness = rng.random_range(170..=255u8);

    // Text: one to three lines of glyph-like 3x5 bit patterns in the top corners.
    let glyph = (unit * 1.0).round().max(1.0) as u32;
    for line in 0..rng.random_range(1..=3u32) {
        let chars = rng.random_range(3..=9u32);
        let right = chance(rng, 0.5);
        let y0 = glyph * (2 + 7 * line);
        let width = chars * 4 * glyph;
        let x0 = if right {
            w.saturating_sub(width + 2 * glyph)
        } else {
            2 * glyph
        };
        for c in 0..chars {
            let bits: u16 = rng.random_range(0..(1u16 << 15));
            for (k, bit) in (0..15).map(|k| (k, bits >> k & 1)) {
                if bit == 1 {
                    let (gx, gy) = (k % 3, k / 3);
                    fill(
                        image,
                        x0 + (4 * c + gx) * glyph,
                        y0 + gy * glyph,
                        glyph,
                        glyph,
                        brightness,
                    );
                }
            }
        }
    }

    // Depth scale: short ticks at even depths along the left or right edge.
    let right_scale = chance(rng, 0.5);
    let spacing = uniform(rng, 8.0, 16.0) * unit;
    let tick = (3.0 * unit).round().max(2.0) as u32;
    let thick = unit.round().max(1.0) as u32;
    let x = if right_scale {
        w.saturating_sub(tick + thick)
    } else {
        thick
    };
    let mut y = spacing;
    while (y as u32) + thick < h {
        fill(image, x, y as u32, tick, thick, brightness);
        y += spacing;
    }

    // Focal-zone marker: a small triangle beside the scale, at a depth in the middle half.
    let depth = uniform(rng, 0.25, 0.75) * h as f32;
    let size = (3.0 * unit).round().max(2.0) as i64;
    for dy in -size..=size {
        let span = (size - dy.abs()) as u32;
        let row = depth as i64 + dy;
        if row >= 0 && span > 0 {
            let x0 = if right_scale {
                x.saturating_sub(span + 2 * thick)
            } else {
                x + tick + 2 * thick
            };
            fill(image, x0, row as u32, span, 1, brightness);
        }
    }

    // Orientation mark: a small filled square in a top corner.
    if chance(rng, 0.6) {
        let s = (4.0 * unit).round().max(2.0) as u32;
        let x0 = if chance(rng, 0.5) {
            2 * thick
        } else {
            w.saturating_sub(s + 2 * thick)
        };
        fill(image, x0, h / 12 + s, s, s, brightness);
    }
}

/// Fills the rectangle (clipped to the image) with `value`.
fn fill(image: &mut GrayImage, x0: u32, y0: u32, w: u32, h: u32, value: u8) {
    let (iw, ih) = image.dimensions();
    for y in y0..(y0 + h).min(ih) {
        for x in x0..(x0 + w).min(iw) {
            image.put_pixel(x, y, image::Luma([value]));
        }
    }
}
