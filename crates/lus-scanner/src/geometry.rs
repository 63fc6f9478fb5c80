//! Probe geometry: the map between probe coordinates and image pixels, and the polygon helpers
//! (clipping, filling, simplification) that turn probe-space objects into annotations.
//!
//! Probe coordinates are `(u, z)`: `u` in `[0, 1]` runs across the aperture from the left edge
//! of the field of view to the right one (for a convex probe: the beam angle, linearly), `z` is
//! the depth below the transducer surface in pixels, `0..=depth`. A beam is a line of constant
//! `u`: vertical for a linear probe, radial for a convex one. A line of constant depth is a
//! horizontal line (linear) or an arc around the apex (convex).

use serde::{Deserialize, Serialize};

use lus_data::{Point, Probe};

/// Where the scanned field of view lies in the image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "probe", rename_all = "lowercase", deny_unknown_fields)]
pub enum ScanGeometry {
    /// A rectangle filling the whole image; depth runs down the rows.
    Linear { width: f32, height: f32 },
    /// An annular sector around `apex` (which lies above the image), from `inner_radius` (the
    /// transducer surface) to `outer_radius`, spanning `-half_angle..=half_angle` radians from
    /// the downward vertical; clipped by the image borders.
    Convex {
        width: f32,
        height: f32,
        apex: Point,
        inner_radius: f32,
        outer_radius: f32,
        half_angle: f32,
    },
}

impl ScanGeometry {
    /// The probe kind.
    pub fn probe(&self) -> Probe {
        match self {
            ScanGeometry::Linear { .. } => Probe::Linear,
            ScanGeometry::Convex { .. } => Probe::Convex,
        }
    }

    /// The same geometry on an image `factor` times the size (every length scaled).
    pub fn scaled(&self, factor: f32) -> ScanGeometry {
        match *self {
            ScanGeometry::Linear { width, height } => ScanGeometry::Linear {
                width: width * factor,
                height: height * factor,
            },
            ScanGeometry::Convex {
                width,
                height,
                apex,
                inner_radius,
                outer_radius,
                half_angle,
            } => ScanGeometry::Convex {
                width: width * factor,
                height: height * factor,
                apex: [apex[0] * factor, apex[1] * factor],
                inner_radius: inner_radius * factor,
                outer_radius: outer_radius * factor,
                half_angle,
            },
        }
    }

    /// Image width and height in pixels.
    pub fn image_size(&self) -> (f32, f32) {
        match *self {
            ScanGeometry::Linear { width, height } | ScanGeometry::Convex { width, height, .. } => {
                (width, height)
            }
        }
    }

    /// The imaging depth in pixels (along the central beam).
    pub fn depth(&self) -> f32 {
        match *self {
            ScanGeometry::Linear { height, .. } => height,
            ScanGeometry::Convex {
                inner_radius,
                outer_radius,
                ..
            } => outer_radius - inner_radius,
        }
    }

    /// The image position of probe coordinates `(u, z)`.
    pub fn to_pixel(&self, u: f32, z: f32) -> Point {
        match *self {
            ScanGeometry::Linear { width, .. } => [u * width, z],
            ScanGeometry::Convex {
                apex,
                inner_radius,
                half_angle,
                ..
            } => {
                let theta = (2.0 * u - 1.0) * half_angle;
                let r = inner_radius + z;
                [
                    apex[0] + r * libm::sinf(theta),
                    apex[1] + r * libm::cosf(theta),
                ]
            }
        }
    }

    /// The probe coordinates `(u, z)` of an image position (the inverse of [`to_pixel`]); values
    /// outside `[0, 1] x [0, depth]` mean the position is outside the fan.
    ///
    /// [`to_pixel`]: ScanGeometry::to_pixel
    pub fn to_probe(&self, p: Point) -> (f32, f32) {
        match *self {
            ScanGeometry::Linear { width, .. } => (p[0] / width, p[1]),
            ScanGeometry::Convex {
                apex,
                inner_radius,
                half_angle,
                ..
            } => {
                let dx = p[0] - apex[0];
                let dy = p[1] - apex[1];
                let r = libm::sqrtf(dx * dx + dy * dy);
                let theta = libm::atan2f(dx, dy);
                ((theta / half_angle + 1.0) * 0.5, r - inner_radius)
            }
        }
    }

    /// Pixels per unit of `u` along a line of constant depth `z`.
    pub fn lateral_scale(&self, z: f32) -> f32 {
        match *self {
            ScanGeometry::Linear { width, .. } => width,
            ScanGeometry::Convex {
                inner_radius,
                half_angle,
                ..
            } => 2.0 * half_angle * (inner_radius + z),
        }
    }

    /// The range of `u` whose points at depth `z` lie inside the image, at least `margin` pixels
    /// from its left and right borders. A convex fan is wider than the image at depth.
    pub fn visible_u(&self, z: f32, margin: f32) -> (f32, f32) {
        match *self {
            ScanGeometry::Linear { width, .. } => {
                let m = (margin / width).clamp(0.0, 0.5);
                (m, 1.0 - m)
            }
            ScanGeometry::Convex {
                width,
                apex,
                inner_radius,
                half_angle,
                ..
            } => {
                let r = inner_radius + z;
                let half_width = (apex[0].min(width - apex[0]) - margin).max(0.0);
                let limit = if half_width >= r {
                    half_angle
                } else {
                    libm::asinf(half_width / r).min(half_angle)
                };
                let du = limit / half_angle * 0.5;
                (0.5 - du, 0.5 + du)
            }
        }
    }

    /// The field of view as a polygon in pixels (a convex fan is sampled densely along its arcs
    /// and clipped by the image).
    pub fn field_of_view(&self, samples_per_arc: usize) -> Vec<Point> {
        match *self {
            ScanGeometry::Linear { width, height } => {
                vec![[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]]
            }
            ScanGeometry::Convex { .. } => {
                let depth = self.depth();
                let n = samples_per_arc.max(2);
                let mut poly = Vec::with_capacity(2 * n + 2);
                for k in 0..n {
                    poly.push(self.to_pixel(k as f32 / (n - 1) as f32, 0.0));
                }
                for k in (0..n).rev() {
                    poly.push(self.to_pixel(k as f32 / (n - 1) as f32, depth));
                }
                self.clip(&poly)
            }
        }
    }

    /// Clips a polygon to the image rectangle.
    pub(crate) fn clip(&self, polygon: &[Point]) -> Vec<Point> {
        let (w, h) = self.image_size();
        clip_polygon_to_rect(polygon, w, h)
    }
}

/// Sutherland-Hodgman clipping of a polygon (any simple polygon) to `[0, w] x [0, h]`.
pub(crate) fn clip_polygon_to_rect(polygon: &[Point], w: f32, h: f32) -> Vec<Point> {
    // Each clip edge: (axis, bound, keep_if_less).
    let edges: [(usize, f32, bool); 4] =
        [(0, 0.0, false), (0, w, true), (1, 0.0, false), (1, h, true)];
    let mut out: Vec<Point> = polygon.to_vec();
    for (axis, bound, keep_less) in edges {
        if out.is_empty() {
            break;
        }
        let inside = |p: &Point| {
            if keep_less {
                p[axis] <= bound
            } else {
                p[axis] >= bound
            }
        };
        let input = std::mem::take(&mut out);
        let n = input.len();
        for k in 0..n {
            let cur = input[k];
            let prev = input[(k + n - 1) % n];
            let (ci, pi) = (inside(&cur), inside(&prev));
            if ci != pi {
                let t = (bound - prev[axis]) / (cur[axis] - prev[axis]);
                let mut q = [
                    prev[0] + t * (cur[0] - prev[0]),
                    prev[1] + t * (cur[1] - prev[1]),
                ];
                q[axis] = bound;
                out.push(q);
            }
            if ci {
                out.push(cur);
            }
        }
    }
    dedup_points(out)
}

/// Removes consecutive duplicate points (also between the last and the first).
fn dedup_points(mut points: Vec<Point>) -> Vec<Point> {
    points.dedup_by(|a, b| (a[0] - b[0]).abs() < 1e-4 && (a[1] - b[1]).abs() < 1e-4);
    while points.len() > 1 {
        let (first, last) = (points[0], points[points.len() - 1]);
        if (first[0] - last[0]).abs() < 1e-4 && (first[1] - last[1]).abs() < 1e-4 {
            points.pop();
        } else {
            break;
        }
    }
    points
}

/// The area of a polygon (shoelace formula).
pub(crate) fn polygon_area(points: &[Point]) -> f32 {
    let n = points.len();
    let mut twice = 0.0f32;
    for i in 0..n {
        let [x0, y0] = points[i];
        let [x1, y1] = points[(i + 1) % n];
        twice += x0 * y1 - x1 * y0;
    }
    twice.abs() * 0.5
}

/// The pixels of a `width x height` image whose centres lie inside the polygon (even-odd rule,
/// half-open crossing test), as a row-major mask.
pub(crate) fn fill_polygon(polygon: &[Point], width: usize, height: usize) -> Vec<bool> {
    let mut mask = vec![false; width * height];
    let n = polygon.len();
    let mut crossings: Vec<f32> = Vec::with_capacity(16);
    for row in 0..height {
        let yc = row as f32 + 0.5;
        crossings.clear();
        for k in 0..n {
            let a = polygon[k];
            let b = polygon[(k + 1) % n];
            if (a[1] <= yc) != (b[1] <= yc) {
                crossings.push(a[0] + (yc - a[1]) * (b[0] - a[0]) / (b[1] - a[1]));
            }
        }
        crossings.sort_by(f32::total_cmp);
        for pair in crossings.chunks_exact(2) {
            // Pixel i is inside when pair[0] <= i + 0.5 < pair[1].
            let first = (libm::ceilf(pair[0] - 0.5).max(0.0) as usize).min(width);
            let end = (libm::ceilf(pair[1] - 0.5).max(0.0) as usize).min(width);
            if end > first {
                mask[row * width + first..row * width + end].fill(true);
            }
        }
    }
    mask
}

/// Ramer-Douglas-Peucker simplification of an open chain: drops points that lie within
/// `tolerance` pixels of the simplified chain. The end points are kept.
pub(crate) fn simplify_chain(points: &[Point], tolerance: f32) -> Vec<Point> {
    if points.len() <= 2 {
        return points.to_vec();
    }
    let mut keep = vec![false; points.len()];
    keep[0] = true;
    keep[points.len() - 1] = true;
    let mut stack = vec![(0usize, points.len() - 1)];
    while let Some((a, b)) = stack.pop() {
        if b <= a + 1 {
            continue;
        }
        let (pa, pb) = (points[a], points[b]);
        let (dx, dy) = (pb[0] - pa[0], pb[1] - pa[1]);
        let len2 = dx * dx + dy * dy;
        let mut worst = (0.0f32, a);
        for (k, p) in points.iter().enumerate().take(b).skip(a + 1) {
            let d2 = if len2 <= 1e-12 {
                (p[0] - pa[0]) * (p[0] - pa[0]) + (p[1] - pa[1]) * (p[1] - pa[1])
            } else {
                let cross = dx * (p[1] - pa[1]) - dy * (p[0] - pa[0]);
                cross * cross / len2
            };
            if d2 > worst.0 {
                worst = (d2, k);
            }
        }
        if worst.0 > tolerance * tolerance {
            keep[worst.1] = true;
            stack.push((a, worst.1));
            stack.push((worst.1, b));
        }
    }
    points
        .iter()
        .zip(keep)
        .filter_map(|(p, k)| k.then_some(*p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convex() -> ScanGeometry {
        ScanGeometry::Convex {
            width: 128.0,
            height: 128.0,
            apex: [64.0, -40.0],
            inner_radius: 48.0,
            outer_radius: 166.0,
            half_angle: 0.6,
        }
    }

    #[test]
    fn probe_coordinates_round_trip() {
        for g in [
            ScanGeometry::Linear {
                width: 128.0,
                height: 96.0,
            },
            convex(),
        ] {
            for (u, z) in [(0.1f32, 3.0f32), (0.5, 50.0), (0.93, 110.0)] {
                let p = g.to_pixel(u, z);
                let (u2, z2) = g.to_probe(p);
                assert!(
                    (u - u2).abs() < 1e-4 && (z - z2).abs() < 1e-3,
                    "{u} {z} -> {u2} {z2}"
                );
            }
        }
    }

    #[test]
    fn convex_visible_range_narrows_with_depth_and_stays_inside() {
        let g = convex();
        let (l0, r0) = g.visible_u(5.0, 0.0);
        let (l1, r1) = g.visible_u(110.0, 0.0);
        assert_eq!((l0, r0), (0.0, 1.0));
        assert!(l1 > 0.05 && r1 < 0.95, "{l1} {r1}");
        let p = g.to_pixel(r1, 110.0);
        assert!((p[0] - 128.0).abs() < 0.01, "{p:?}");
    }

    #[test]
    fn clipping_and_filling_a_square() {
        let square = [[-10.0, -10.0], [10.0, -10.0], [10.0, 10.0], [-10.0, 10.0]];
        let clipped = clip_polygon_to_rect(&square, 8.0, 8.0);
        assert!((polygon_area(&clipped) - 64.0).abs() < 1e-3, "{clipped:?}");
        let tri = [[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]];
        let mask = fill_polygon(&tri, 4, 4);
        // centres (i+0.5, j+0.5) with x + y < 4: 0+0,1+0,2+0,0+1,1+1,0+2 (and not on the edge)
        let count = mask.iter().filter(|m| **m).count();
        assert_eq!(count, 6, "{mask:?}");
        assert!(mask[0] && !mask[3] && !mask[15]);
    }

    #[test]
    fn simplification_keeps_corners_and_drops_collinear_points() {
        let chain: Vec<Point> = (0..=10)
            .map(|k| [k as f32, 0.0])
            .chain((1..=10).map(|k| [10.0, k as f32]))
            .collect();
        let s = simplify_chain(&chain, 0.1);
        assert_eq!(s, vec![[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]]);
    }
}
