//! Random draws and smooth noise that give the same numbers on every platform: only the
//! ChaCha stream, IEEE arithmetic and `libm` (pure Rust) are used, never the platform's libm.

use rand::RngExt;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The generator of one sample.
pub(crate) type SampleRng = ChaCha8Rng;

/// The random stream of sample `index` for an image-only option (overlays, haze, look-alikes,
/// display, compression): the scanner seed mixed with the option's own `salt`, on stream
/// `index`, so the option draws nothing from the sample's main stream and turning it on changes
/// no other draw.
pub(crate) fn option_stream(seed: u64, salt: u64, index: u64) -> SampleRng {
    let mut rng = SampleRng::seed_from_u64(seed ^ salt);
    rng.set_stream(index);
    rng
}

/// A uniform draw from `[lo, hi)`.
pub(crate) fn uniform(rng: &mut SampleRng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

/// `true` with probability `p`.
pub(crate) fn chance(rng: &mut SampleRng, p: f32) -> bool {
    rng.random::<f32>() < p
}

/// An index drawn with the given (non-negative, not all zero) weights.
pub(crate) fn weighted_index(rng: &mut SampleRng, weights: &[f32]) -> usize {
    let total: f32 = weights.iter().sum();
    let mut r = rng.random::<f32>() * total;
    for (k, &w) in weights.iter().enumerate() {
        if r < w {
            return k;
        }
        r -= w;
    }
    // Rounding can leave r just above the last weight: take the last non-zero class.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

/// A pair of independent standard normal draws (Marsaglia's polar method: no trigonometry).
pub(crate) fn normal_pair(rng: &mut SampleRng) -> (f32, f32) {
    loop {
        let a = 2.0 * rng.random::<f32>() - 1.0;
        let b = 2.0 * rng.random::<f32>() - 1.0;
        let s = a * a + b * b;
        if s > 1e-12 && s < 1.0 {
            let f = libm::sqrtf(-2.0 * libm::logf(s) / s);
            return (a * f, b * f);
        }
    }
}

/// Smoothstep weight for interpolation between lattice values.
fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

/// Smooth 1-D value noise on `[0, 1]`: `knots` random values in `[-1, 1]`, interpolated.
#[derive(Debug, Clone)]
pub(crate) struct Noise1 {
    values: Vec<f32>,
}

impl Noise1 {
    pub(crate) fn new(rng: &mut SampleRng, knots: usize) -> Self {
        let knots = knots.max(2);
        Noise1 {
            values: (0..knots).map(|_| uniform(rng, -1.0, 1.0)).collect(),
        }
    }

    /// The noise at `t` (clamped to `[0, 1]`), in `[-1, 1]`.
    pub(crate) fn at(&self, t: f32) -> f32 {
        let n = self.values.len();
        let p = t.clamp(0.0, 1.0) * (n - 1) as f32;
        let i = (p as usize).min(n - 2);
        let f = smooth(p - i as f32);
        self.values[i] + (self.values[i + 1] - self.values[i]) * f
    }
}

/// Smooth 2-D value noise on `[0, 1]^2`, values in `[0, 1]`.
#[derive(Debug, Clone)]
pub(crate) struct Noise2 {
    nx: usize,
    ny: usize,
    values: Vec<f32>,
}

impl Noise2 {
    pub(crate) fn new(rng: &mut SampleRng, nx: usize, ny: usize) -> Self {
        let (nx, ny) = (nx.max(2), ny.max(2));
        Noise2 {
            nx,
            ny,
            values: (0..nx * ny).map(|_| rng.random::<f32>()).collect(),
        }
    }

    pub(crate) fn at(&self, x: f32, y: f32) -> f32 {
        let px = x.clamp(0.0, 1.0) * (self.nx - 1) as f32;
        let py = y.clamp(0.0, 1.0) * (self.ny - 1) as f32;
        let i = (px as usize).min(self.nx - 2);
        let j = (py as usize).min(self.ny - 2);
        let fx = smooth(px - i as f32);
        let fy = smooth(py - j as f32);
        let v = |a: usize, b: usize| self.values[b * self.nx + a];
        let top = v(i, j) + (v(i + 1, j) - v(i, j)) * fx;
        let bottom = v(i, j + 1) + (v(i + 1, j + 1) - v(i, j + 1)) * fx;
        top + (bottom - top) * fy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn normal_pairs_have_unit_variance() {
        let mut rng = SampleRng::seed_from_u64(3);
        let n = 20_000;
        let (mut sum, mut sum2) = (0.0f64, 0.0f64);
        for _ in 0..n {
            let (a, b) = normal_pair(&mut rng);
            sum += (a + b) as f64;
            sum2 += (a * a + b * b) as f64;
        }
        let mean = sum / (2 * n) as f64;
        let var = sum2 / (2 * n) as f64 - mean * mean;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "variance {var}");
    }

    #[test]
    fn weighted_index_follows_weights_and_skips_zero_weights() {
        let mut rng = SampleRng::seed_from_u64(9);
        let mut counts = [0usize; 3];
        for _ in 0..10_000 {
            counts[weighted_index(&mut rng, &[1.0, 0.0, 3.0])] += 1;
        }
        assert_eq!(counts[1], 0);
        let share = counts[2] as f32 / 10_000.0;
        assert!((share - 0.75).abs() < 0.02, "{counts:?}");
    }

    #[test]
    fn noise_stays_in_range_and_is_continuous() {
        let mut rng = SampleRng::seed_from_u64(1);
        let n1 = Noise1::new(&mut rng, 7);
        let n2 = Noise2::new(&mut rng, 5, 4);
        let mut prev = n1.at(0.0);
        for k in 1..=1000 {
            let t = k as f32 / 1000.0;
            let v = n1.at(t);
            assert!((-1.0..=1.0).contains(&v));
            assert!((v - prev).abs() < 0.02, "jump at {t}");
            prev = v;
            let w = n2.at(t, 1.0 - t);
            assert!((0.0..=1.0).contains(&w));
        }
    }
}
