//! Image formation, as a scanner does it: echoes are formed on a beam grid (lateral columns x
//! depth rows, "pre-scan-conversion"), then scan-converted to image pixels.
//!
//! 1. Per grid cell, a diffuse scattering power `p` (tissue echogenicity) and a specular
//!    amplitude `s` (coherent reflectors: pleura, A-lines, fascia, rib cortex).
//! 2. Echo field `sqrt(p) * n + s`, with `n` circular complex Gaussian noise (random scatterer
//!    phases), blurred with a separable Gaussian point-spread function that is longer laterally
//!    than axially. Its magnitude is Rayleigh-distributed speckle where `p` dominates.
//! 3. Depth attenuation net of partial time-gain compensation, log compression to the display
//!    dynamic range.
//! 4. Scan conversion by bilinear interpolation; every pixel outside the field-of-view polygon
//!    is exactly 0.

use image::GrayImage;

use lus_data::Point;

use super::geometry::{ScanGeometry, fill_polygon};
use super::noise::{SampleRng, normal_pair};
use super::scene::{Scene, Segment};

/// The display level (dB relative to unit scattering power) drawn white.
const WHITE_DB: f32 = 26.0;
/// A floor added to the echo power so that the logarithm stays finite (electronic noise).
const NOISE_FLOOR: f32 = 1e-6;
/// Scattering power of anechoic fluid and of acoustic shadows.
const FLUID_POWER: f32 = 0.004;
const SHADOW_POWER: f32 = 0.02;

/// The physics knobs of one rendering.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RenderParams {
    pub speckle: f32,
    pub blur_px: f32,
    pub axial_ratio: f32,
    pub compounding_px: f32,
    pub attenuation_db: f32,
    pub dynamic_range_db: f32,
    pub gain_db: f32,
    /// A transmit focus: `(depth as a share of the imaging depth, strength in [0, 1])`. The
    /// lateral point-spread is narrowest there and widens away from it; `None`: the same width
    /// at every depth.
    pub focus: Option<(f32, f32)>,
}

/// The lateral point-spread width at relative depth `rel` as a factor of the nominal one, for
/// a focus at `focal_depth` of strength `strength`: `1 - 0.3 s + 2.5 s (rel - focal_depth)^2`
/// (0.7 at the focus at full strength, about 1.3 half an image away), at least 0.3.
fn focus_factor(rel: f32, (focal_depth, strength): (f32, f32)) -> f32 {
    let d = rel - focal_depth;
    (1.0 - 0.3 * strength + 2.5 * strength * d * d).max(0.3)
}

/// A soft box of full width `thickness` (pixels) with 1-pixel ramps, so thin lines are sampled
/// without aliasing and a band of the annotated thickness is bright.
fn band_profile(d: f32, thickness: f32) -> f32 {
    let a = d.abs();
    let half = 0.5 * thickness;
    if a <= half - 0.5 {
        1.0
    } else if a >= half + 0.5 {
        0.0
    } else {
        half + 0.5 - a
    }
}

/// Across a vertical band of columns `span`: 0 at its edges rising smoothly to 1 over the
/// outer 45 % of each half (column `i`, taken at its centre).
fn band_taper(i: usize, span: (usize, usize)) -> f32 {
    let t = (i as f32 + 0.5 - span.0 as f32) / (span.1 - span.0) as f32;
    smoothstep(t.min(1.0 - t) / 0.45)
}

fn smoothstep(t: f32) -> f32 {
    let t = t.clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Distance (pixels) from `p` to a segment, with lateral column offsets converted to pixels.
fn segment_distance(p: [f32; 2], seg: &Segment, px_per_col: f32) -> f32 {
    let to_px = |q: [f32; 2]| [q[0] * px_per_col, q[1]];
    let (p, a, b) = (to_px(p), to_px(seg.a), to_px(seg.b));
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (ex, ey) = (p[0] - (a[0] + t * dx), p[1] - (a[1] + t * dy));
    libm::sqrtf(ex * ex + ey * ey)
}

fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let sigma = sigma.max(0.05);
    let radius = libm::ceilf(3.0 * sigma) as usize;
    let mut k: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let x = i as f32 - radius as f32;
            libm::expf(-0.5 * x * x / (sigma * sigma))
        })
        .collect();
    let sum: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    k
}

/// Convolves every row `j` of a row-major `cols x rows` field with `kernels[j]` (so the
/// lateral blur can follow the pixel size of the beam grid at each depth), zero outside and
/// renormalised at the borders.
fn convolve_rows(field: &[f32], cols: usize, kernels: &[Vec<f32>]) -> Vec<f32> {
    let mut out = vec![0.0f32; field.len()];
    for ((row_in, row_out), kernel) in field
        .chunks_exact(cols)
        .zip(out.chunks_exact_mut(cols))
        .zip(kernels)
    {
        let r = kernel.len() / 2;
        for (i, o) in row_out.iter_mut().enumerate() {
            if i >= r && i + r < cols {
                *o = kernel
                    .iter()
                    .zip(&row_in[i - r..=i + r])
                    .map(|(k, v)| k * v)
                    .sum();
            } else {
                let (mut acc, mut weight) = (0.0f32, 0.0f32);
                for (t, &k) in kernel.iter().enumerate() {
                    let q = i as isize + t as isize - r as isize;
                    if q >= 0 && (q as usize) < cols {
                        acc += k * row_in[q as usize];
                        weight += k;
                    }
                }
                *o = acc / weight;
            }
        }
    }
    out
}

/// Convolves the columns of a row-major `cols x rows` field with one kernel, zero outside and
/// renormalised at the borders.
fn convolve_columns(field: &[f32], cols: usize, kernel: &[f32]) -> Vec<f32> {
    let rows = field.len() / cols;
    let r = kernel.len() / 2;
    let mut out = vec![0.0f32; field.len()];
    for (j, row_out) in out.chunks_exact_mut(cols).enumerate() {
        let mut weight = 0.0f32;
        for (t, &k) in kernel.iter().enumerate() {
            let q = j as isize + t as isize - r as isize;
            if q < 0 || q as usize >= rows {
                continue;
            }
            weight += k;
            let row_in = &field[q as usize * cols..(q as usize + 1) * cols];
            for (o, v) in row_out.iter_mut().zip(row_in) {
                *o += k * v;
            }
        }
        let inv = 1.0 / weight;
        row_out.iter_mut().for_each(|o| *o *= inv);
    }
    out
}

/// Scattering power and specular amplitude of every grid cell.
fn echogenicity(scene: &Scene, nz: usize, compensation: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let nu = scene.nu;
    let depth = scene.depth;
    let dz = depth / nz as f32;
    let mut power = vec![0.0f32; nu * nz];
    let mut spec = vec![0.0f32; nu * nz];
    let lung_depth = depth - scene.pleura_base.iter().cloned().fold(0.0f32, f32::max);
    let wall = &scene.wall;
    let s = scene.scale;
    for i in 0..nu {
        let u = (i as f32 + 0.5) / nu as f32;
        let zp = scene.pleura_z[i];
        let rib = scene.ribs.iter().find(|r| i >= r.span.0 && i < r.span.1);
        let pleura_here = scene.pleura_segments.iter().any(|&(a, b)| i >= a && i < b);
        let bline = scene
            .b_lines
            .iter()
            .find(|b| i >= b.span.0 && i < b.span.1)
            .map(|b| b.intensity * (0.3 + 0.7 * band_taper(i, b.span)));
        let look_alike = scene
            .look_alikes
            .iter()
            .find(|l| i >= l.span.0 && i < l.span.1)
            .map(|l| (l.amplitude * (0.4 + 0.6 * band_taper(i, l.span)), l.length));
        let consolidation = scene
            .consolidations
            .iter()
            .find(|c| i >= c.region.span.0 && i < c.region.span.1);
        let effusion = scene
            .effusions
            .iter()
            .find(|e| i >= e.region.span.0 && i < e.region.span.1);
        let a_here: Vec<(f32, f32, f32)> = scene
            .a_lines
            .iter()
            .filter_map(|a| {
                let &(p, q) = a.spans.iter().find(|&&(p, q)| i >= p && i < q)?;
                // Patchy along the line, fading in over a few pixels at segment ends.
                let from_end = (i - p).min(q - 1 - i) as f32 + 0.5;
                let taper = 0.45 + 0.55 * smoothstep(from_end / a.taper);
                let patch = 0.7 + 0.3 * a.patchiness.at(u);
                let amplitude = a.amplitude * taper * patch;
                Some((
                    a.order as f32 * scene.pleura_base[i],
                    amplitude,
                    a.thickness,
                ))
            })
            .collect();
        let lines: Vec<(f32, f32, f32)> = wall
            .lines
            .iter()
            .filter(|l| i >= l.span.0 && i < l.span.1)
            .map(|l| (l.z[i - l.span.0], l.thickness, l.amplitude))
            .collect();
        let bronchi: Vec<&Segment> = consolidation
            .map(|c| {
                c.bronchograms
                    .iter()
                    .filter(|g| {
                        let (lo, hi) = (g.a[0].min(g.b[0]), g.a[0].max(g.b[0]));
                        (i as f32 + 0.5) >= lo - 3.0 * s && (i as f32 + 0.5) <= hi + 3.0 * s
                    })
                    .collect()
            })
            .unwrap_or_default();
        for j in 0..nz {
            let z = (j as f32 + 0.5) * dz;
            let tex = scene.texture.at(u, z / depth);
            let mut p;
            let mut a = 0.0f32;
            if let Some(r) = rib.filter(|r| z >= r.top[i - r.span.0]) {
                let top = r.top[i - r.span.0];
                let cortex = band_profile(z - top - 0.5 * r.cortex, r.cortex);
                p = SHADOW_POWER + 2.0 * cortex;
                a += 7.0 * cortex;
            } else if z < zp {
                p = if z < wall.skin {
                    wall.skin_echo
                } else if z < wall.fascia[i] {
                    wall.fat_echo
                } else {
                    wall.muscle_echo
                } * (0.55 + 0.9 * tex);
                for &(lz, th, amp) in &lines {
                    a += amp * band_profile(z - lz, th);
                }
            } else {
                let below = z - zp;
                p = scene.lung_echo * (0.35 + 0.65 * libm::expf(-below / (0.35 * lung_depth))) * {
                    let streak = scene.lung_texture.at(u, z / depth);
                    0.35 + 0.4 * tex + 1.2 * streak * streak
                };
                if let Some(e) = effusion {
                    let r = &e.region;
                    let k = i - r.span.0;
                    if r.contains(i, z) {
                        p = FLUID_POWER;
                    } else if e.visceral_line && r.bottom[k] < depth - 1.0 && z >= r.bottom[k] {
                        a += 1.8 * band_profile(z - r.bottom[k] - 1.0 * s, 2.0 * s);
                    }
                }
                if let Some(c) = consolidation {
                    let r = &c.region;
                    let k = i - r.span.0;
                    if r.contains(i, z) {
                        let local = (z - r.top[k]) / (r.bottom[k] - r.top[k]).max(1.0);
                        let v = scene.texture.at(1.0 - u, 0.5 * local + 0.5 * tex);
                        p = c.echo * (0.45 + 1.1 * v * v + 0.3 * tex);
                        for g in &bronchi {
                            let px_per_col = 1.0 / cols_per_px(scene, z);
                            let d = segment_distance([i as f32 + 0.5, z], g, px_per_col);
                            a += g.amplitude * (1.0 - d / (1.1 * s)).max(0.0);
                        }
                    } else if r.bottom[k] < depth - 1.0
                        && z >= r.bottom[k]
                        && !scene.effusions.iter().any(|e| e.region.contains(i, z))
                    {
                        // The ragged deep border of the consolidation against aerated lung
                        // (the "shred sign") is bright.
                        a += 1.4 * band_profile(z - r.bottom[k] - 0.75 * s, 1.5 * s);
                    }
                }
                if let Some(w) = bline {
                    p += 4.5 * w * compensation[j];
                    a += 0.6 * w * libm::sqrtf(compensation[j]);
                }
                // A Z-line or comet tail fades with depth (no compensation: it is not a
                // B-line's undamped reverberation).
                if let Some((amplitude, length)) = look_alike {
                    // exp(-d / L) shifted to reach 0 at 3 L and clipped there: it ends
                    // well above the bottom, where a B-line still shows.
                    let tail = libm::expf(-3.0);
                    let fade = ((libm::expf(-below / length) - tail) / (1.0 - tail)).max(0.0);
                    p += amplitude * fade;
                    a += 0.4 * amplitude * fade;
                }
                // A-lines: part coherent, part diffuse (a blurred replica of the pleura).
                for &(az, amp, th) in &a_here {
                    let c = amp * band_profile(z - az, th);
                    a += 0.4 * c;
                    p += 0.8 * c * c;
                }
            }
            if pleura_here {
                let d = z - zp;
                let prof = band_profile(d, scene.pleura_thickness);
                if prof > 0.0 {
                    let g = scene.pleura_gain[i];
                    let c = scene.pleura_amplitude * g * prof;
                    a += 0.75 * c;
                    p = p.max(0.45 * c * c);
                }
            }
            power[j * nu + i] = p;
            spec[j * nu + i] = a;
        }
    }
    (power, spec)
}

fn cols_per_px(scene: &Scene, z: f32) -> f32 {
    let t = (z / scene.depth).clamp(0.0, 1.0);
    1.0 / (scene.col_px_near + (scene.col_px_far - scene.col_px_near) * t)
}

/// Renders the scene into a `width x height` image. Pixels outside `fov` are 0.
pub(crate) fn render(
    scene: &Scene,
    geometry: &ScanGeometry,
    fov: &[Point],
    params: &RenderParams,
    rng: &mut SampleRng,
) -> GrayImage {
    let nu = scene.nu;
    let depth = scene.depth;
    let nz = libm::ceilf(depth).max(2.0) as usize;
    let dz = depth / nz as f32;
    let rel = |j: usize| ((j as f32 + 0.5) * dz / depth).clamp(0.0, 1.0);
    // Net attenuation after TGC (power), and the part B-lines do not show: they are
    // reverberations that do not fade with depth.
    let attenuation: Vec<f32> = (0..nz)
        .map(|j| libm::exp10f(-params.attenuation_db * rel(j) / 10.0))
        .collect();
    let compensation: Vec<f32> = attenuation.iter().map(|a| libm::powf(*a, -0.9)).collect();
    let (power, spec) = echogenicity(scene, nz, &compensation);

    // Point-spread function in grid units. The lateral width is constant in pixels, so in
    // beam columns it depends on depth (columns widen with depth under a convex probe).
    let sigma_px = params.blur_px * scene.scale;
    let lateral_kernels = |sigma_of_row: &dyn Fn(usize) -> f32| -> Vec<Vec<f32>> {
        let mut cache: Vec<(usize, Vec<f32>)> = Vec::new();
        (0..nz)
            .map(|j| {
                let sigma_px = sigma_of_row(j);
                let col_px = scene.col_px_near + (scene.col_px_far - scene.col_px_near) * rel(j);
                // Quantise the width so rows share kernels (a few distinct sizes per image).
                let key = libm::roundf(sigma_px / col_px * 8.0) as usize;
                if let Some((_, k)) = cache.iter().find(|(q, _)| *q == key) {
                    return k.clone();
                }
                let k = gaussian_kernel(key as f32 / 8.0);
                cache.push((key, k.clone()));
                k
            })
            .collect()
    };
    let k_lat = match params.focus {
        None => lateral_kernels(&|_| sigma_px),
        Some(focus) => lateral_kernels(&|j| sigma_px * focus_factor(rel(j), focus)),
    };
    let k_ax = gaussian_kernel(params.axial_ratio * sigma_px / dz);
    // Blurring sums independent noise: rescale so diffuse power survives the blur.
    let energy = |k: &[f32]| k.iter().map(|v| v * v).sum::<f32>();
    let axial_energy = energy(&k_ax);
    let row_noise_gain: Vec<f32> = k_lat
        .iter()
        .map(|k| 1.0 / libm::sqrtf(energy(k) * axial_energy))
        .collect();

    let speckle = params.speckle;
    let mut re = vec![0.0f32; nu * nz];
    let mut im = vec![0.0f32; nu * nz];
    for idx in 0..nu * nz {
        let (n0, n1) = normal_pair(rng);
        let amp = libm::sqrtf(power[idx]);
        let diffuse = row_noise_gain[idx / nu] * std::f32::consts::FRAC_1_SQRT_2 * speckle;
        re[idx] = amp * (diffuse * n0 + (1.0 - speckle)) + spec[idx];
        im[idx] = amp * diffuse * n1;
    }
    let re = convolve_columns(&convolve_rows(&re, nu, &k_lat), nu, &k_ax);
    let im = convolve_columns(&convolve_rows(&im, nu, &k_lat), nu, &k_ax);

    // Echo power, then incoherent averaging (spatial/frequency compounding): it lowers the
    // speckle contrast as real scanners and downsampled frames do, without changing the grain.
    let mut power: Vec<f32> = re.iter().zip(&im).map(|(r, i)| r * r + i * i).collect();
    if params.compounding_px > 0.0 {
        let sigma = params.compounding_px * scene.scale;
        power = convolve_columns(
            &convolve_rows(&power, nu, &lateral_kernels(&|_| sigma)),
            nu,
            &gaussian_kernel(sigma / dz),
        );
    }
    // A convex array loses sensitivity towards the edges of its fan (element directivity).
    let edge_loss: Vec<f32> = (0..nu)
        .map(|i| match geometry {
            ScanGeometry::Convex { .. } => {
                let off = ((i as f32 + 0.5) / nu as f32 - 0.5).abs();
                1.0 - 0.55 * smoothstep((off - 0.28) / 0.22)
            }
            ScanGeometry::Linear { .. } => 1.0,
        })
        .collect();
    let low_db = WHITE_DB - params.gain_db - params.dynamic_range_db;
    let mut display = vec![0.0f32; nu * nz];
    for ((out_row, power_row), &loss) in display
        .chunks_exact_mut(nu)
        .zip(power.chunks_exact(nu))
        .zip(&attenuation)
    {
        for ((out, &e2), &edge) in out_row.iter_mut().zip(power_row).zip(&edge_loss) {
            let db = 10.0 * libm::log10f(e2 * loss * edge + NOISE_FLOOR);
            *out = ((db - low_db) / params.dynamic_range_db).clamp(0.0, 1.0) * 255.0;
        }
    }

    // Scan conversion.
    let (w, h) = geometry.image_size();
    let (width, height) = (w as usize, h as usize);
    let inside = fill_polygon(fov, width, height);
    let mut image = GrayImage::new(width as u32, height as u32);
    let buf: &mut [u8] = &mut image;
    for y in 0..height {
        for x in 0..width {
            if !inside[y * width + x] {
                continue;
            }
            let (u, z) = geometry.to_probe([x as f32 + 0.5, y as f32 + 0.5]);
            let gi = (u * nu as f32 - 0.5).clamp(0.0, (nu - 1) as f32);
            let gj = (z / dz - 0.5).clamp(0.0, (nz - 1) as f32);
            let (i0, j0) = ((gi as usize).min(nu - 2), (gj as usize).min(nz - 2));
            let (fi, fj) = (gi - i0 as f32, gj - j0 as f32);
            let v = |i: usize, j: usize| display[j * nu + i];
            let top = v(i0, j0) + (v(i0 + 1, j0) - v(i0, j0)) * fi;
            let bottom = v(i0, j0 + 1) + (v(i0 + 1, j0 + 1) - v(i0, j0 + 1)) * fi;
            buf[y * width + x] = libm::roundf(top + (bottom - top) * fj).clamp(0.0, 255.0) as u8;
        }
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_profile_is_bright_over_the_thickness() {
        assert_eq!(band_profile(0.0, 3.0), 1.0);
        assert_eq!(band_profile(1.0, 3.0), 1.0);
        assert_eq!(band_profile(1.5, 3.0), 0.5);
        assert_eq!(band_profile(2.0, 3.0), 0.0);
        // A sub-pixel line still shows at its centre.
        assert!(band_profile(0.0, 0.6) > 0.7);
    }

    #[test]
    fn convolution_preserves_constants_and_kernels_sum_to_one() {
        let k = gaussian_kernel(1.3);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let field = vec![2.0f32; 7 * 5];
        let kernels = vec![k.clone(); 5];
        for out in [
            convolve_rows(&field, 7, &kernels),
            convolve_columns(&field, 7, &k),
        ] {
            assert!(out.iter().all(|v| (v - 2.0).abs() < 1e-5), "{out:?}");
        }
        // An impulse spreads along the chosen axis only, symmetrically.
        let mut impulse = vec![0.0f32; 9 * 9];
        impulse[4 * 9 + 4] = 1.0;
        let rows = convolve_rows(&impulse, 9, &vec![k.clone(); 9]);
        assert!(rows[4 * 9 + 3] > 0.1 && rows[3 * 9 + 4] == 0.0);
        assert_eq!(rows[4 * 9 + 3], rows[4 * 9 + 5]);
        let cols = convolve_columns(&impulse, 9, &k);
        assert!(cols[3 * 9 + 4] > 0.1 && cols[4 * 9 + 3] == 0.0);
        assert_eq!(cols[3 * 9 + 4], cols[5 * 9 + 4]);
    }
}
