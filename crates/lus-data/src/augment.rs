//! Preparing one training example: resize, random geometric and photometric augmentation applied
//! identically to image and mask, and intensity normalisation.
//!
//! Geometry conventions (shared with [`crate::annotation`]): pixel `(i, j)` covers
//! `[i, i+1) x [j, j+1)`, so its centre is at `(i + 0.5, j + 0.5)`. The output grid is mapped
//! back into the source by ONE affine map (stretch-resize composed with flip, rotation, zoom and
//! translation about the image centre), and both image and mask are sampled through that same
//! map: bilinear for the image, nearest for the mask. Resampling once (rather than resize, then
//! rotate, then shift) avoids compounding interpolation blur and keeps the mask aligned with the
//! image to the last pixel.

use image::GrayImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::mask::Mask;

/// Largest rotation accepted by [`AugmentConfig::validate`]: beyond it the fan of a convex probe
/// no longer has its apex at the top, which no real acquisition produces.
pub const MAX_ROTATE_DEG: f32 = 45.0;
/// Largest output side accepted by [`prepare`] (pixels).
pub const MAX_OUTPUT_SIDE: u32 = 4096;
/// Standard-deviation floor of [`Normalize::PerImage`], so a blank image normalises to zeros
/// instead of dividing by zero.
pub const STD_FLOOR: f32 = 1e-6;

/// Ranges of the random augmentation. Every range is symmetric about "no change"; a value of 0
/// turns that augmentation off.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Probability of a left-right mirror. Lung ultrasound has no preferred lateral direction
    /// (probe orientation marker conventions differ between operators), so mirroring is safe.
    pub hflip: f32,
    /// Probability of an up-down mirror. Off by default: an ultrasound image has a top — the probe
    /// face — and depth runs downwards (attenuation, A-line repetition at multiples of the pleural
    /// depth, B-lines running from the pleura to the bottom). A flipped image shows physics that
    /// never occurs, so the network would learn a symmetry the data do not have.
    pub vflip: f32,
    /// Largest additive brightness shift, in [0, 1] intensity units.
    pub brightness: f32,
    /// Largest relative contrast change: the deviation from the image mean is scaled by a factor
    /// drawn from `[1 - contrast, 1 + contrast]`.
    pub contrast: f32,
    /// Largest `|ln gamma|`: intensities `v` in [0, 1] become `v^gamma` with `ln gamma` drawn
    /// from `[-gamma, gamma]`.
    pub gamma: f32,
    /// Largest rotation about the image centre, in degrees.
    pub rotate_deg: f32,
    /// Largest relative zoom: the zoom factor is drawn log-uniformly from
    /// `[1 / (1 + scale), 1 + scale]`, so zooming in and out are equally likely.
    pub scale: f32,
    /// Largest shift along each axis, as a fraction of the output side.
    pub translate: f32,
    /// Mask value written where the augmented view looks outside the source image (after a
    /// rotation, zoom-out or shift). 0 (background) by default; set it to the training ignore id
    /// to keep padded pixels out of the loss.
    pub fill_id: u8,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            hflip: 0.5,
            vflip: 0.0,
            brightness: 0.1,
            contrast: 0.2,
            gamma: 0.2,
            rotate_deg: 5.0,
            scale: 0.1,
            translate: 0.05,
            fill_id: 0,
        }
    }
}

impl AugmentConfig {
    /// Every augmentation off (the sampled transform is the identity).
    pub fn none() -> Self {
        AugmentConfig {
            hflip: 0.0,
            vflip: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            gamma: 0.0,
            rotate_deg: 0.0,
            scale: 0.0,
            translate: 0.0,
            fill_id: 0,
        }
    }

    /// Checks that every range is finite, non-negative and small enough to keep the transform
    /// meaningful (a contrast factor or zoom that can reach zero, a rotation past
    /// [`MAX_ROTATE_DEG`], a shift that can move the whole image out of view).
    pub fn validate(&self) -> Result<()> {
        let checks: [(&str, f32, f32); 8] = [
            ("hflip", self.hflip, 1.0),
            ("vflip", self.vflip, 1.0),
            ("brightness", self.brightness, 1.0),
            // A factor 1 - contrast must stay positive or the image is inverted.
            ("contrast", self.contrast, 0.9),
            // |ln gamma| <= 2 is gamma in [0.14, 7.4], already far beyond any display curve.
            ("gamma", self.gamma, 2.0),
            ("rotate_deg", self.rotate_deg, MAX_ROTATE_DEG),
            // Zoom in [1/3, 3]: more would leave mostly padding or a few source pixels.
            ("scale", self.scale, 2.0),
            ("translate", self.translate, 0.5),
        ];
        for (name, value, max) in checks {
            if !value.is_finite() || !(0.0..=max).contains(&value) {
                return Err(DataError::config(
                    format!("augment.{name}"),
                    format!("{value} is not in [0, {max}]"),
                ));
            }
        }
        Ok(())
    }

    /// Draws the concrete transform of one example. Always consumes the same number of random
    /// words in the same order, so turning one augmentation off does not change the draws of the
    /// others.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> AugmentParams {
        let hflip = unit_f64(rng) < f64::from(self.hflip);
        let vflip = unit_f64(rng) < f64::from(self.vflip);
        let rotate_deg = f64::from(self.rotate_deg) * symmetric_unit(rng);
        // (1 + s)^r with r in [-1, 1): log-uniform, and exactly 1 when s = 0.
        let zoom = (1.0 + f64::from(self.scale)).powf(symmetric_unit(rng));
        let translate_x = f64::from(self.translate) * symmetric_unit(rng);
        let translate_y = f64::from(self.translate) * symmetric_unit(rng);
        let brightness = f64::from(self.brightness) * symmetric_unit(rng);
        let contrast = 1.0 + f64::from(self.contrast) * symmetric_unit(rng);
        let gamma = (f64::from(self.gamma) * symmetric_unit(rng)).exp();
        AugmentParams {
            hflip,
            vflip,
            rotate_deg,
            zoom,
            translate_x,
            translate_y,
            brightness: brightness as f32,
            contrast: contrast as f32,
            gamma: gamma as f32,
            fill_id: self.fill_id,
        }
    }
}

/// The concrete transform applied to one example (what [`AugmentConfig::sample`] draws).
///
/// Forward geometry, in output pixels about the output centre: the stretched source is mirrored
/// (`hflip`, `vflip`), rotated by `rotate_deg` (positive turns content clockwise on screen, since
/// y points down), zoomed by `zoom` (> 1 magnifies) and shifted by `translate_x/y` times the
/// output side (positive moves content right/down).
/// Photometric, on [0, 1] intensities: `v^gamma`, then `mean + contrast * (v - mean)` with the
/// image mean, then `+ brightness`, then clamped to [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentParams {
    pub hflip: bool,
    pub vflip: bool,
    pub rotate_deg: f64,
    pub zoom: f64,
    pub translate_x: f64,
    pub translate_y: f64,
    pub brightness: f32,
    pub contrast: f32,
    pub gamma: f32,
    pub fill_id: u8,
}

impl AugmentParams {
    /// No change: [`prepare_with`] then only resizes and normalises.
    pub fn identity() -> Self {
        AugmentParams {
            hflip: false,
            vflip: false,
            rotate_deg: 0.0,
            zoom: 1.0,
            translate_x: 0.0,
            translate_y: 0.0,
            brightness: 0.0,
            contrast: 1.0,
            gamma: 1.0,
            fill_id: 0,
        }
    }

    fn has_photometric(&self) -> bool {
        self.brightness != 0.0 || self.contrast != 1.0 || self.gamma != 1.0
    }

    fn validate(&self) -> Result<()> {
        let geometry_ok = self.rotate_deg.is_finite()
            && self.translate_x.is_finite()
            && self.translate_y.is_finite()
            && self.zoom.is_finite()
            && self.zoom > 0.0;
        if !geometry_ok {
            return Err(DataError::config(
                "augmentation parameters",
                format!("geometry must be finite with zoom > 0, got {self:?}"),
            ));
        }
        let photometric_ok = self.brightness.is_finite()
            && self.contrast.is_finite()
            && self.contrast >= 0.0
            && self.gamma.is_finite()
            && self.gamma > 0.0;
        if !photometric_ok {
            return Err(DataError::config(
                "augmentation parameters",
                format!("need finite brightness, contrast >= 0 and gamma > 0, got {self:?}"),
            ));
        }
        Ok(())
    }
}

/// Intensity normalisation, the last step of [`prepare`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Normalize {
    /// Zero mean and unit standard deviation per image (std floored at [`STD_FLOOR`]). Removes
    /// the gain/depth-compensation differences between scanners and presets.
    #[default]
    PerImage,
    /// `(v - mean) / std` with fixed values, on [0, 1] intensities.
    Fixed { mean: f32, std: f32 },
    /// Leave [0, 1] intensities as they are.
    None,
}

impl Normalize {
    /// Fixed parameters must be finite with `std > 0`.
    pub fn validate(&self) -> Result<()> {
        if let Normalize::Fixed { mean, std } = *self
            && !(mean.is_finite() && std.is_finite() && std > 0.0)
        {
            return Err(DataError::config(
                "normalize",
                format!(
                    "fixed normalisation needs finite mean and std > 0, got mean {mean}, std {std}"
                ),
            ));
        }
        Ok(())
    }

    fn apply(&self, values: &mut [f32]) {
        let (mean, std) = match *self {
            Normalize::None => return,
            Normalize::Fixed { mean, std } => (mean, std),
            Normalize::PerImage => {
                // f64 sums: an f32 running sum over 65k pixels loses the 1e-4 accuracy we promise.
                let n = values.len().max(1) as f64;
                let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let var = values
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / n;
                (mean as f32, (var.sqrt() as f32).max(STD_FLOOR))
            }
        };
        let inv = 1.0 / std;
        for v in values {
            *v = (*v - mean) * inv;
        }
    }
}

/// One prepared example: `size * size` values, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    pub image: Vec<f32>,
    pub mask: Option<Vec<u8>>,
}

/// One resampling pass: resize to `size x size` (the source may be any size/aspect — it is
/// stretched; an explicit aspect policy comes later) composed with the random affine (flip,
/// rotate, scale, translate), so the image is resampled once: bilinear for the image, nearest
/// for the mask, through the same map. Pixels mapped from outside the source are 0 in the image
/// and `fill_id` in the mask. Downscaling by more than 2x first box-filters the image (area
/// average) to avoid aliasing; the mask is never averaged. Photometric changes
/// (brightness/contrast/gamma) act on the image only, clamped to [0, 1]; normalisation comes last.
///
/// With `augment = None` no random word is drawn.
pub fn prepare(
    image: &GrayImage,
    mask: Option<&Mask>,
    size: u32,
    augment: Option<&AugmentConfig>,
    normalize: Normalize,
    rng: &mut ChaCha8Rng,
) -> Result<Prepared> {
    let params = match augment {
        Some(config) => {
            config.validate()?;
            config.sample(rng)
        }
        None => AugmentParams::identity(),
    };
    prepare_with(image, mask, size, &params, normalize)
}

/// [`prepare`] with an explicit transform instead of a random one.
pub fn prepare_with(
    image: &GrayImage,
    mask: Option<&Mask>,
    size: u32,
    params: &AugmentParams,
    normalize: Normalize,
) -> Result<Prepared> {
    if size == 0 || size > MAX_OUTPUT_SIDE {
        return Err(DataError::config(
            "output size",
            format!("{size} is not in [1, {MAX_OUTPUT_SIDE}]"),
        ));
    }
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return Err(DataError::config("image", "image has zero size"));
    }
    if let Some(mask) = mask
        && (mask.width(), mask.height()) != (width, height)
    {
        return Err(DataError::config(
            "mask",
            format!(
                "mask is {}x{} but its image is {width}x{height}",
                mask.width(),
                mask.height()
            ),
        ));
    }
    params.validate()?;
    normalize.validate()?;

    let map = OutputToSource::new(width, height, size, params);
    let mut values = resample_image(image, size, &map, params.zoom);
    if params.has_photometric() {
        apply_photometric(&mut values, params);
    }
    normalize.apply(&mut values);
    let mask = mask.map(|m| resample_mask(m, size, &map, params.fill_id));
    Ok(Prepared {
        image: values,
        mask,
    })
}

/// The affine map from output pixel coordinates (continuous, centres at +0.5) to source pixel
/// coordinates: `source = m * output + offset`.
#[derive(Clone, Copy, Debug)]
struct OutputToSource {
    m: [[f64; 2]; 2],
    offset: [f64; 2],
}

impl OutputToSource {
    /// Inverts the forward transform `o = c_out + T + zoom * R * F * S * (s - c_src)`, where `S`
    /// stretches the source to the output size, `F` mirrors, `R` rotates, `T` shifts:
    /// `s = c_src + S^-1 F R^T (o - c_out - T) / zoom` (F is its own inverse).
    /// Identity parameters give exactly `s = o * W / size`, so a same-size pass is exact.
    fn new(width: u32, height: u32, size: u32, p: &AugmentParams) -> Self {
        let size_f = f64::from(size);
        let (w, h) = (f64::from(width), f64::from(height));
        let (sin, cos) = p.rotate_deg.to_radians().sin_cos();
        let fx = if p.hflip { -1.0 } else { 1.0 };
        let fy = if p.vflip { -1.0 } else { 1.0 };
        let (sx, sy) = (w / size_f / p.zoom, h / size_f / p.zoom);
        // S^-1 F R^T / zoom, with R = [[cos, -sin], [sin, cos]] and R^T = [[cos, sin], [-sin, cos]].
        let m = [
            [sx * fx * cos, sx * fx * sin],
            [-sy * fy * sin, sy * fy * cos],
        ];
        let centre_out = size_f / 2.0;
        let shifted = [
            centre_out + p.translate_x * size_f,
            centre_out + p.translate_y * size_f,
        ];
        let offset = [
            w / 2.0 - (m[0][0] * shifted[0] + m[0][1] * shifted[1]),
            h / 2.0 - (m[1][0] * shifted[0] + m[1][1] * shifted[1]),
        ];
        OutputToSource { m, offset }
    }

    /// Source coordinates of the centre of output pixel `(u, v)`.
    #[inline]
    fn apply(&self, u: u32, v: u32) -> (f64, f64) {
        let (x, y) = (f64::from(u) + 0.5, f64::from(v) + 0.5);
        (
            self.m[0][0] * x + self.m[0][1] * y + self.offset[0],
            self.m[1][0] * x + self.m[1][1] * y + self.offset[1],
        )
    }

    /// The same map into a copy of the source reduced to `reduced_w x reduced_h` pixels that
    /// covers the same rectangle (so coordinates scale by `reduced / original`).
    fn rescaled(&self, kx: f64, ky: f64) -> Self {
        OutputToSource {
            m: [
                [self.m[0][0] * kx, self.m[0][1] * kx],
                [self.m[1][0] * ky, self.m[1][1] * ky],
            ],
            offset: [self.offset[0] * kx, self.offset[1] * ky],
        }
    }
}

/// A row-major grid of samples (intensities in 0..=255 units).
trait Grid {
    fn width(&self) -> usize;
    fn height(&self) -> usize;
    fn at(&self, x: usize, y: usize) -> f32;
}

impl Grid for GrayImage {
    fn width(&self) -> usize {
        self.width() as usize
    }
    fn height(&self) -> usize {
        self.height() as usize
    }
    #[inline]
    fn at(&self, x: usize, y: usize) -> f32 {
        f32::from(self.as_raw()[y * Grid::width(self) + x])
    }
}

/// An f32 image (the box-filtered source).
struct FloatGrid {
    width: usize,
    height: usize,
    data: Vec<f32>,
}

impl Grid for FloatGrid {
    fn width(&self) -> usize {
        self.width
    }
    fn height(&self) -> usize {
        self.height
    }
    #[inline]
    fn at(&self, x: usize, y: usize) -> f32 {
        self.data[y * self.width + x]
    }
}

/// Bilinear sample at continuous `(x, y)`; 0 outside the source rectangle `[0, W) x [0, H)`.
/// Inside it, taps beyond the outermost pixel centres clamp to the edge, so the border half-pixel
/// keeps the edge value instead of fading towards the fill.
#[inline]
fn bilinear<G: Grid>(grid: &G, x: f64, y: f64) -> f32 {
    let (w, h) = (grid.width(), grid.height());
    if !(x >= 0.0 && y >= 0.0 && x < w as f64 && y < h as f64) {
        return 0.0;
    }
    let (fx, fy) = (x - 0.5, y - 0.5);
    let (x0f, y0f) = (fx.floor(), fy.floor());
    let (tx, ty) = ((fx - x0f) as f32, (fy - y0f) as f32);
    // x0f >= -1 and <= w - 1 here; clamp both taps into the grid.
    let x0 = x0f.max(0.0) as usize;
    let y0 = y0f.max(0.0) as usize;
    let x1 = ((x0f + 1.0) as usize).min(w - 1);
    let y1 = ((y0f + 1.0) as usize).min(h - 1);
    let top = grid.at(x0, y0) * (1.0 - tx) + grid.at(x1, y0) * tx;
    let bottom = grid.at(x0, y1) * (1.0 - tx) + grid.at(x1, y1) * tx;
    top * (1.0 - ty) + bottom * ty
}

/// Resamples the image through `map`, box-filtering first along any axis that shrinks by more
/// than 2x. Returns [0, 1] intensities.
fn resample_image(image: &GrayImage, size: u32, map: &OutputToSource, zoom: f64) -> Vec<f32> {
    let (width, height) = image.dimensions();
    // Source pixels per output pixel along each axis (rotation <= 45 degrees changes this by at
    // most sqrt(2), which the 2x threshold absorbs).
    let shrink_x = f64::from(width) / (f64::from(size) * zoom);
    let shrink_y = f64::from(height) / (f64::from(size) * zoom);
    let n = size as usize;
    let mut out = Vec::with_capacity(n * n);
    if shrink_x > 2.0 || shrink_y > 2.0 {
        // Reduce to about one source pixel per output pixel by exact area averaging; the
        // remaining bilinear pass then interpolates at ~1:1 and cannot alias.
        let target = |side: u32, shrink: f64| {
            if shrink > 2.0 {
                ((f64::from(side) / shrink).ceil() as usize).max(1)
            } else {
                side as usize
            }
        };
        let reduced = area_reduce(image, target(width, shrink_x), target(height, shrink_y));
        let kx = reduced.width as f64 / f64::from(width);
        let ky = reduced.height as f64 / f64::from(height);
        let map = map.rescaled(kx, ky);
        for v in 0..size {
            for u in 0..size {
                let (x, y) = map.apply(u, v);
                out.push(bilinear(&reduced, x, y) / 255.0);
            }
        }
    } else {
        for v in 0..size {
            for u in 0..size {
                let (x, y) = map.apply(u, v);
                // Division, not a multiply by 1/255: an identity pass then returns exactly `v / 255`.
                out.push(bilinear(image, x, y) / 255.0);
            }
        }
    }
    out
}

/// Per output index: the source indices it overlaps and their weights (overlap / box width),
/// for an area average from `from` pixels to `to` pixels over the same extent.
fn area_weights(from: usize, to: usize) -> Vec<Vec<(usize, f32)>> {
    let ratio = from as f64 / to as f64;
    (0..to)
        .map(|i| {
            let (a, b) = (i as f64 * ratio, (i + 1) as f64 * ratio);
            let first = a.floor() as usize;
            let last = (b.ceil() as usize).min(from);
            (first..last)
                .filter_map(|j| {
                    let overlap = b.min(j as f64 + 1.0) - a.max(j as f64);
                    (overlap > 0.0).then_some((j, (overlap / ratio) as f32))
                })
                .collect()
        })
        .collect()
}

/// Separable exact area average of `image` to `to_w x to_h` (no-op along an unchanged axis).
fn area_reduce(image: &GrayImage, to_w: usize, to_h: usize) -> FloatGrid {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let raw = image.as_raw();
    let wx = area_weights(w, to_w);
    let mut rows = vec![0.0f32; to_w * h];
    for y in 0..h {
        let src = &raw[y * w..(y + 1) * w];
        let dst = &mut rows[y * to_w..(y + 1) * to_w];
        for (d, weights) in dst.iter_mut().zip(&wx) {
            *d = weights.iter().map(|&(j, wt)| f32::from(src[j]) * wt).sum();
        }
    }
    if to_h == h {
        return FloatGrid {
            width: to_w,
            height: h,
            data: rows,
        };
    }
    let wy = area_weights(h, to_h);
    let mut data = vec![0.0f32; to_w * to_h];
    for (i, weights) in wy.iter().enumerate() {
        let dst = &mut data[i * to_w..(i + 1) * to_w];
        for &(j, wt) in weights {
            let src = &rows[j * to_w..(j + 1) * to_w];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += s * wt;
            }
        }
    }
    FloatGrid {
        width: to_w,
        height: to_h,
        data,
    }
}

/// Nearest-neighbour resampling of the mask through `map`: every output value is a source value
/// or `fill_id`, never a blend, so no class is ever invented.
fn resample_mask(mask: &Mask, size: u32, map: &OutputToSource, fill_id: u8) -> Vec<u8> {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let data = mask.data();
    let mut out = Vec::with_capacity(size as usize * size as usize);
    for v in 0..size {
        for u in 0..size {
            let (x, y) = map.apply(u, v);
            let value = if x >= 0.0 && y >= 0.0 && x < w as f64 && y < h as f64 {
                // floor: the pixel whose cell [i, i+1) contains x.
                data[y as usize * w + x as usize]
            } else {
                fill_id
            };
            out.push(value);
        }
    }
    out
}

/// Gamma, contrast about the image mean, brightness; clamped to [0, 1].
fn apply_photometric(values: &mut [f32], p: &AugmentParams) {
    if p.gamma != 1.0 {
        for v in values.iter_mut() {
            *v = v.max(0.0).powf(p.gamma);
        }
    }
    let mean = if p.contrast != 1.0 {
        (values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len().max(1) as f64) as f32
    } else {
        0.0
    };
    for v in values.iter_mut() {
        let contrasted = if p.contrast != 1.0 {
            mean + p.contrast * (*v - mean)
        } else {
            *v
        };
        *v = (contrasted + p.brightness).clamp(0.0, 1.0);
    }
}

/// A uniform draw in [0, 1) from the top 53 bits of one word: a fixed, version-independent
/// recipe, so an example's augmentation never changes with a rand upgrade.
#[inline]
pub(crate) fn unit_f64(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform draw in [-1, 1).
#[inline]
fn symmetric_unit(rng: &mut ChaCha8Rng) -> f64 {
    2.0 * unit_f64(rng) - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn identity_map_is_exact() {
        let map = OutputToSource::new(16, 16, 16, &AugmentParams::identity());
        for (u, v) in [(0, 0), (5, 9), (15, 15)] {
            assert_eq!(map.apply(u, v), (f64::from(u) + 0.5, f64::from(v) + 0.5));
        }
    }

    #[test]
    fn area_weights_sum_to_one_and_cover_source() {
        for (from, to) in [(10, 3), (2700, 128), (7, 7), (9, 4)] {
            let weights = area_weights(from, to);
            let mut coverage = vec![0.0f64; from];
            for row in &weights {
                let total: f32 = row.iter().map(|&(_, w)| w).sum();
                assert!(
                    (total - 1.0).abs() < 1e-5,
                    "{from}->{to}: row sums to {total}"
                );
                for &(j, w) in row {
                    coverage[j] += f64::from(w) * from as f64 / to as f64;
                }
            }
            // Every source pixel contributes its full area exactly once in total.
            for (j, c) in coverage.iter().enumerate() {
                assert!(
                    (c - 1.0).abs() < 1e-4,
                    "{from}->{to}: pixel {j} covered {c}"
                );
            }
        }
    }

    #[test]
    fn bilinear_interpolates_between_centres_and_clamps_at_edges() {
        let g = FloatGrid {
            width: 2,
            height: 1,
            data: vec![0.0, 100.0],
        };
        assert_eq!(bilinear(&g, 0.5, 0.5), 0.0);
        assert_eq!(bilinear(&g, 1.0, 0.5), 50.0);
        assert_eq!(bilinear(&g, 1.25, 0.5), 75.0);
        // Border half-pixels keep the edge value; outside the rectangle is 0.
        assert_eq!(bilinear(&g, 1.9, 0.1), 100.0);
        assert_eq!(bilinear(&g, 0.1, 0.9), 0.0);
        assert_eq!(bilinear(&g, 2.0, 0.5), 0.0);
        assert_eq!(bilinear(&g, -0.01, 0.5), 0.0);
    }

    #[test]
    fn sample_respects_ranges_and_zero_means_identity() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let p = AugmentConfig::none().sample(&mut rng);
        assert_eq!(p, AugmentParams::identity());
        let config = AugmentConfig::default();
        let mut flips = 0;
        for _ in 0..2000 {
            let p = config.sample(&mut rng);
            assert!(p.rotate_deg.abs() <= 5.0);
            assert!(p.zoom >= 1.0 / 1.1 - 1e-12 && p.zoom <= 1.1 + 1e-12);
            assert!(p.translate_x.abs() <= 0.05 && p.translate_y.abs() <= 0.05);
            assert!(p.brightness.abs() <= 0.1);
            assert!((p.contrast - 1.0).abs() <= 0.2 + 1e-6);
            assert!(p.gamma.ln().abs() <= 0.2 + 1e-6);
            assert!(!p.vflip, "vflip is off by default");
            flips += usize::from(p.hflip);
        }
        // Binomial(2000, 0.5): 6 sigma is +-134.
        assert!((866..=1134).contains(&flips), "{flips} flips of 2000");
    }

    #[test]
    fn upscale_by_two_replicates_mask_and_interpolates_image() {
        let image = GrayImage::from_raw(2, 1, vec![0, 255]).unwrap();
        let mask = Mask::from_raw(2, 1, vec![1, 2]).unwrap();
        // 2x1 -> 4x4: stretch 2x horizontally, 4x vertically.
        let out = prepare_with(
            &image,
            Some(&mask),
            4,
            &AugmentParams::identity(),
            Normalize::None,
        )
        .unwrap();
        // Output centres 0.5, 1.5, 2.5, 3.5 map to source x 0.25, 0.75, 1.25, 1.75.
        let row = [0.0, 0.25, 0.75, 1.0];
        for v in 0..4 {
            for (got, want) in out.image[v * 4..v * 4 + 4].iter().zip(row) {
                assert!((got - want).abs() < 1e-6, "row {v}: {got} vs {want}");
            }
            assert_eq!(&out.mask.as_ref().unwrap()[v * 4..v * 4 + 4], &[1, 1, 2, 2]);
        }
    }
}
