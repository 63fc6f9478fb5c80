//! The scene of one sample: every structure and artifact, placed in probe coordinates on the
//! lateral columns of the render grid. The renderer and the annotation both read this one
//! description, so the ground truth is exact by construction: an object is drawn into the
//! image if and only if it is annotated.
//!
//! Lateral positions are column spans `[start, end)` of the render grid (column `i` covers
//! `u` in `[i / nu, (i + 1) / nu)`); depths are pixels below the transducer surface. Every
//! object that sits under the pleura (B-lines, consolidations, effusions) is placed in lung
//! columns between ribs and never overlaps another kind of object laterally, which keeps the
//! physics simple and the dense paint order (schema layers) consistent with the image.

use lus_data::{Annotation, Diagnosis, Geometry, Point, Probe, Shape};

use super::geometry::{ScanGeometry, polygon_area, simplify_chain};
use super::noise::{Noise1, Noise2, SampleRng, chance, uniform, weighted_index};
use super::{Findings, PleuraState};

/// Column span `[start, end)`.
pub(crate) type Span = (usize, usize);

/// How far (pixels) annotation chains may deviate from the exact curves they simplify.
/// How far (pixels) the chest-wall and lung polygons reach past the field of view, which then
/// clips them (see `Scene::tiling_polygon`).
const TILING_OVERSHOOT_PX: f32 = 2.0;
const SIMPLIFY_TOLERANCE_PX: f32 = 0.15;

/// What the diagnosis asks for; the scene then shows what fits (see the table in the crate
/// docs, `lib.rs`).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub pleura: PleuraState,
    pub a_lines: bool,
    pub b_lines: u32,
    pub confluent: bool,
    pub consolidation: Option<ConsolidationKind>,
    pub air_bronchograms: bool,
    pub effusion: bool,
    pub ribs: u32,
    /// The range the pleural depth is drawn from, as shares of the imaging depth (`None`: the
    /// probe's own range; see [`ScannerConfig::pleura_depth`](crate::ScannerConfig)).
    pub pleura_depth: Option<[f32; 2]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConsolidationKind {
    /// A few-millimetre subpleural consolidation (COVID-19).
    Small,
    /// A lobar, tissue-like consolidation (bacterial pneumonia).
    Large,
}

/// One column of the findings table (probabilities given a diagnosis).
struct FindingOdds {
    /// Smooth, irregular, thickened, fragmented.
    pleura: [f32; 4],
    a_lines: f32,
    /// Weights of 0, 1, 2, ... B-lines.
    b_lines: &'static [f32],
    /// Probability that some B-lines merge, given at least 2.
    confluent: f32,
    consolidation: Option<(ConsolidationKind, f32)>,
    /// Given a consolidation.
    air_bronchograms: f32,
    effusion: f32,
}

const HEALTHY: FindingOdds = FindingOdds {
    pleura: [0.85, 0.15, 0.0, 0.0],
    a_lines: 0.90,
    b_lines: &[0.75, 0.17, 0.08],
    confluent: 0.0,
    consolidation: None,
    air_bronchograms: 0.0,
    effusion: 0.03,
};

const COVID: FindingOdds = FindingOdds {
    pleura: [0.20, 0.35, 0.20, 0.25],
    a_lines: 0.35,
    b_lines: &[0.08, 0.12, 0.16, 0.16, 0.16, 0.16, 0.16],
    confluent: 0.50,
    consolidation: Some((ConsolidationKind::Small, 0.30)),
    air_bronchograms: 0.10,
    effusion: 0.05,
};

const PNEUMONIA: FindingOdds = FindingOdds {
    pleura: [0.60, 0.25, 0.10, 0.05],
    a_lines: 0.40,
    b_lines: &[0.50, 0.25, 0.15, 0.10],
    confluent: 0.15,
    consolidation: Some((ConsolidationKind::Large, 0.80)),
    air_bronchograms: 0.75,
    effusion: 0.45,
};

/// Ribs in the field of view: 0, 1, 2.
const RIB_WEIGHTS: [f32; 3] = [0.25, 0.40, 0.35];

impl Plan {
    /// Draws the findings of a patient with `diagnosis`. The probabilities are the table of the
    /// module documentation; keep both in step.
    pub(crate) fn draw(diagnosis: Diagnosis, rng: &mut SampleRng) -> Plan {
        use PleuraState::*;
        let states = [Smooth, Irregular, Thickened, Fragmented];
        let row = match diagnosis {
            Diagnosis::Healthy => &HEALTHY,
            Diagnosis::Covid => &COVID,
            Diagnosis::Pneumonia => &PNEUMONIA,
            // The scanner draws only the paper's classes (`Diagnosis::PAPER`); were it asked
            // for a viral pneumonia, COVID-19's row is the closest (interstitial B-lines,
            // small subpleural consolidations).
            Diagnosis::Viral => &COVID,
        };
        let (pleura_w, p_a, b_w, p_conf) = (row.pleura, row.a_lines, row.b_lines, row.confluent);
        let (cons, p_bronch, p_eff) = (row.consolidation, row.air_bronchograms, row.effusion);
        let pleura = states[weighted_index(rng, &pleura_w)];
        let b_lines = weighted_index(rng, b_w) as u32;
        // Many B-lines leave little aerated pleura to reverberate.
        let a_lines = chance(rng, if b_lines >= 3 { 0.5 * p_a } else { p_a });
        let confluent = b_lines >= 2 && chance(rng, p_conf);
        let consolidation = cons.and_then(|(kind, p)| chance(rng, p).then_some(kind));
        let air_bronchograms = consolidation.is_some() && chance(rng, p_bronch);
        let effusion = chance(rng, p_eff);
        let ribs = weighted_index(rng, &RIB_WEIGHTS) as u32;
        Plan {
            pleura,
            a_lines,
            b_lines,
            confluent,
            consolidation,
            air_bronchograms,
            effusion,
            ribs,
            pleura_depth: None,
        }
    }
}

/// A thin bright line in the chest wall (fascia, muscle striation, fat septum).
#[derive(Debug, Clone)]
pub(crate) struct WallLine {
    pub span: Span,
    /// Depth per column (index `i - span.0`).
    pub z: Vec<f32>,
    pub thickness: f32,
    pub amplitude: f32,
}

#[derive(Debug, Clone)]
pub(crate) struct ChestWall {
    pub skin: f32,
    /// Depth of the fat/muscle boundary per column.
    pub fascia: Vec<f32>,
    pub skin_echo: f32,
    pub fat_echo: f32,
    pub muscle_echo: f32,
    pub lines: Vec<WallLine>,
}

#[derive(Debug, Clone)]
pub(crate) struct Rib {
    pub span: Span,
    /// Depth of the top of the cortex per column of the span.
    pub top: Vec<f32>,
    pub cortex: f32,
}

#[derive(Debug, Clone)]
pub(crate) struct ALine {
    /// Multiple of the pleural depth.
    pub order: u32,
    pub spans: Vec<Span>,
    pub amplitude: f32,
    pub thickness: f32,
    /// Brightness along the line (real reverberations are patchy), sampled at `u`.
    pub patchiness: Noise1,
    /// Columns over which a segment fades in at its ends.
    pub taper: f32,
}

#[derive(Debug, Clone)]
pub(crate) struct BLine {
    pub span: Span,
    /// How many B-lines merged into this band (>= 2: confluent).
    pub members: u32,
    pub intensity: f32,
}

/// A region below the pleura: per column of `span`, depths `top..bottom`.
#[derive(Debug, Clone)]
pub(crate) struct Region {
    pub span: Span,
    pub top: Vec<f32>,
    pub bottom: Vec<f32>,
}

impl Region {
    pub(crate) fn contains(&self, column: usize, z: f32) -> bool {
        column >= self.span.0
            && column < self.span.1
            && z >= self.top[column - self.span.0]
            && z < self.bottom[column - self.span.0]
    }
}

/// A bright segment (air bronchogram) in `(column, depth)` coordinates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    pub a: [f32; 2],
    pub b: [f32; 2],
    pub amplitude: f32,
}

#[derive(Debug, Clone)]
pub(crate) struct Consolidation {
    pub region: Region,
    pub echo: f32,
    pub bronchograms: Vec<Segment>,
}

#[derive(Debug, Clone)]
pub(crate) struct Effusion {
    pub region: Region,
    /// The lung surface under a lens-shaped effusion is a bright line (visceral pleura).
    pub visceral_line: bool,
}

/// Everything in one sample.
#[derive(Debug, Clone)]
pub(crate) struct Scene {
    pub nu: usize,
    pub depth: f32,
    /// Output pixels per pixel of a 128-px image.
    pub scale: f32,
    /// Pixels per column at depth 0 and at the bottom (lateral sampling of the grid).
    pub col_px_near: f32,
    pub col_px_far: f32,
    /// The smooth pleural depth per column (A-lines are its multiples).
    pub pleura_base: Vec<f32>,
    /// The actual pleural centre depth per column (with irregularity): chest wall above, lung
    /// below.
    pub pleura_z: Vec<f32>,
    pub pleura_thickness: f32,
    pub pleura_gain: Vec<f32>,
    pub pleura_amplitude: f32,
    pub pleura_segments: Vec<Span>,
    pub pleura_state: PleuraState,
    pub wall: ChestWall,
    pub ribs: Vec<Rib>,
    pub a_lines: Vec<ALine>,
    pub b_lines: Vec<BLine>,
    pub consolidations: Vec<Consolidation>,
    pub effusions: Vec<Effusion>,
    pub lung_echo: f32,
    /// Slow echo variations of soft tissue, sampled at `(u, z / depth)`.
    pub texture: Noise2,
    /// Horizontal streaks of the reverberation haze under aerated pleura.
    pub lung_texture: Noise2,
    /// B-line look-alikes (opt-in): image only, never labelled.
    pub look_alikes: Vec<LookAlike>,
}

/// A Z-line or comet tail: a narrow vertical artefact from the pleura that fades with depth
/// (a B-line does not fade and reaches the bottom; these are not B-lines and are not labelled).
#[derive(Debug, Clone)]
pub(crate) struct LookAlike {
    pub span: Span,
    /// Scattering power added at the pleura.
    pub amplitude: f32,
    /// Depth over which it fades by `1/e`; it ends at 3 lengths.
    pub length: f32,
}

/// `spans` minus `cuts` (both sorted or not), keeping order.
fn subtract(spans: &[Span], cuts: &[Span]) -> Vec<Span> {
    let mut out = spans.to_vec();
    for &(c0, c1) in cuts {
        let mut next = Vec::with_capacity(out.len() + 1);
        for (s0, s1) in out {
            if c1 <= s0 || c0 >= s1 {
                next.push((s0, s1));
                continue;
            }
            if c0 > s0 {
                next.push((s0, c0));
            }
            if c1 < s1 {
                next.push((c1, s1));
            }
        }
        out = next;
    }
    out.sort_unstable();
    out
}

fn widen(span: Span, pad: usize, nu: usize) -> Span {
    (span.0.saturating_sub(pad), (span.1 + pad).min(nu))
}

/// Picks a span of `width` columns uniformly among all positions inside `free`.
fn place(rng: &mut SampleRng, free: &[Span], width: usize) -> Option<Span> {
    use rand::RngExt;
    let width = width.max(1);
    let positions: usize = free
        .iter()
        .map(|&(a, b)| (b - a + 1).saturating_sub(width))
        .sum();
    if positions == 0 {
        return None;
    }
    // Drawn as u32 so 32- and 64-bit targets consume the stream alike.
    let mut r = rng.random_range(0..positions as u32) as usize;
    for &(a, b) in free {
        let n = (b - a + 1).saturating_sub(width);
        if r < n {
            return Some((a + r, a + r + width));
        }
        r -= n;
    }
    None
}

/// Linear interpolation of a per-column curve at a fractional column position.
pub(crate) fn curve_at(curve: &[f32], column: f32) -> f32 {
    let p = (column - 0.5).clamp(0.0, (curve.len() - 1) as f32);
    let i = (p as usize).min(curve.len().saturating_sub(2));
    if curve.len() < 2 {
        return curve[0];
    }
    let f = p - i as f32;
    curve[i] + (curve[i + 1] - curve[i]) * f
}

impl Scene {
    fn u_of(&self, column: usize) -> f32 {
        (column as f32 + 0.5) / self.nu as f32
    }

    /// Columns per pixel of lateral distance at depth `z`.
    fn cols_per_px(&self, z: f32) -> f32 {
        let t = (z / self.depth).clamp(0.0, 1.0);
        1.0 / (self.col_px_near + (self.col_px_far - self.col_px_near) * t)
    }

    fn px_to_cols(&self, px: f32, z: f32) -> usize {
        libm::roundf(px * self.cols_per_px(z)).max(1.0) as usize
    }

    /// The columns whose centres lie inside the image at depth `z` (with a margin in pixels).
    fn visible_columns(geometry: &ScanGeometry, nu: usize, z: f32, margin: f32) -> Span {
        let (lo, hi) = geometry.visible_u(z, margin);
        let first = libm::ceilf(lo * nu as f32 - 0.5).max(0.0) as usize;
        let end = (libm::floorf(hi * nu as f32 - 0.5) + 1.0).clamp(0.0, nu as f32) as usize;
        (first.min(end), end)
    }

    /// Builds the scene of a sample. `nu` is the number of lateral grid columns.
    ///
    /// The steps run in this order, each drawing from `rng` in a fixed order of its own: a
    /// sample is a pure function of its random stream, so moving a step (or a draw inside one)
    /// changes every data set.
    pub(crate) fn build(
        geometry: &ScanGeometry,
        plan: &Plan,
        nu: usize,
        rng: &mut SampleRng,
    ) -> Scene {
        let mut scene = Scene::blank(geometry, plan, nu, rng);
        let zp0 = scene.draw_pleura(geometry.probe(), plan, rng);
        scene.draw_chest_wall(zp0, rng);
        scene.lung_echo = uniform(rng, 0.14, 0.28);
        let pleura_cols = Self::visible_columns(geometry, nu, zp0 + 4.0 * scene.scale, 1.5);
        let pleura_width = pleura_cols.1 - pleura_cols.0;
        scene.place_ribs(geometry, plan, zp0, pleura_cols, rng);
        let rib_spans: Vec<Span> = scene.ribs.iter().map(|r| r.span).collect();
        let lung_spans = subtract(&[pleura_cols], &rib_spans);
        scene.segment_pleura(plan, &lung_spans, zp0, rng);
        let aerated = scene.pleura_segments.clone();
        // Columns under a consolidation or a lens of fluid, which B-lines and A-lines keep out of.
        let mut occupied: Vec<Span> = Vec::new();
        occupied.extend(scene.place_consolidation(plan, &lung_spans, pleura_width, zp0, rng));
        let lens = scene.place_effusion(plan, &lung_spans, &occupied, pleura_width, zp0, rng);
        occupied.extend(lens);
        scene.place_b_lines(geometry, plan, &aerated, &occupied, zp0, rng);
        scene.place_a_lines(geometry, plan, &aerated, &occupied, rng);
        scene
    }

    /// The scene before any structure is placed: the grid, and the two soft-tissue textures
    /// (the first draws of the sample's scene).
    fn blank(geometry: &ScanGeometry, plan: &Plan, nu: usize, rng: &mut SampleRng) -> Scene {
        let depth = geometry.depth();
        let (w, _) = geometry.image_size();
        let scale = w / 128.0;
        Scene {
            nu,
            depth,
            scale,
            col_px_near: geometry.lateral_scale(0.0) / nu as f32,
            col_px_far: geometry.lateral_scale(depth) / nu as f32,
            pleura_base: Vec::new(),
            pleura_z: Vec::new(),
            pleura_thickness: 0.0,
            pleura_gain: Vec::new(),
            pleura_amplitude: 0.0,
            pleura_segments: Vec::new(),
            pleura_state: plan.pleura,
            wall: ChestWall {
                skin: 0.0,
                fascia: Vec::new(),
                skin_echo: 0.0,
                fat_echo: 0.0,
                muscle_echo: 0.0,
                lines: Vec::new(),
            },
            ribs: Vec::new(),
            a_lines: Vec::new(),
            b_lines: Vec::new(),
            consolidations: Vec::new(),
            effusions: Vec::new(),
            lung_echo: 0.0,
            texture: Noise2::new(rng, 9, 7),
            lung_texture: Noise2::new(rng, 6, 30),
            look_alikes: Vec::new(),
        }
    }

    /// Pleura: depth, shape and look by state. Returns the mean pleural depth `zp0` (pixels),
    /// which the later steps scale by.
    fn draw_pleura(&mut self, probe: Probe, plan: &Plan, rng: &mut SampleRng) -> f32 {
        let (nu, depth, scale) = (self.nu, self.depth, self.scale);
        // One draw either way, so a configured range changes no later draw.
        let frac = match (plan.pleura_depth, probe) {
            (Some([lo, hi]), _) => uniform(rng, lo, hi),
            (None, Probe::Linear) => uniform(rng, 0.22, 0.34),
            (None, Probe::Convex) => uniform(rng, 0.17, 0.27),
        };
        let zp0 = frac * depth;
        let tilt = uniform(rng, -0.06, 0.06) * zp0;
        let bow = Noise1::new(rng, 4);
        let bow_amp = uniform(rng, 0.0, 0.03) * zp0;
        self.pleura_base = (0..nu)
            .map(|i| {
                let u = self.u_of(i);
                zp0 + tilt * (u - 0.5) + bow_amp * bow.at(u)
            })
            .collect();
        let (thickness, jitter_amp, knots) = match plan.pleura {
            PleuraState::Smooth => (uniform(rng, 1.8, 2.6), 0.0, 8),
            PleuraState::Irregular => (uniform(rng, 2.0, 3.0), uniform(rng, 0.9, 2.0), 28),
            PleuraState::Thickened => (uniform(rng, 3.8, 5.6), uniform(rng, 0.5, 1.3), 20),
            PleuraState::Fragmented => (uniform(rng, 2.0, 3.0), uniform(rng, 0.8, 1.8), 28),
        };
        self.pleura_thickness = thickness * scale;
        let jitter = Noise1::new(rng, knots);
        let gain_noise = Noise1::new(rng, knots);
        let abnormal = plan.pleura != PleuraState::Smooth;
        self.pleura_z = (0..nu)
            .map(|i| self.pleura_base[i] + jitter_amp * scale * jitter.at(self.u_of(i)))
            .collect();
        self.pleura_gain = (0..nu)
            .map(|i| {
                let n = gain_noise.at(self.u_of(i));
                if abnormal {
                    0.55 + 0.45 * n.abs()
                } else {
                    0.9 + 0.1 * n
                }
            })
            .collect();
        self.pleura_amplitude = uniform(rng, 6.5, 10.0);
        zp0
    }

    /// Chest wall: skin, fat and muscle above the pleura at mean depth `zp0`.
    fn draw_chest_wall(&mut self, zp0: f32, rng: &mut SampleRng) {
        let (nu, scale) = (self.nu, self.scale);
        let skin = uniform(rng, 1.5, 2.6) * scale;
        let fascia0 = skin + uniform(rng, 0.2, 0.45) * (zp0 - skin);
        let fascia_wave = Noise1::new(rng, 5);
        let fascia_amp = 0.05 * zp0;
        self.wall = ChestWall {
            skin,
            fascia: (0..nu)
                .map(|i| fascia0 + fascia_amp * fascia_wave.at(self.u_of(i)))
                .collect(),
            skin_echo: uniform(rng, 0.6, 1.2),
            fat_echo: uniform(rng, 0.04, 0.09),
            muscle_echo: uniform(rng, 0.14, 0.3),
            lines: Vec::new(),
        };
        // The fascia itself, then muscle striations and fat septa.
        let fascia_line = WallLine {
            span: (0, nu),
            z: self.wall.fascia.clone(),
            thickness: uniform(rng, 1.0, 1.6) * scale,
            amplitude: uniform(rng, 0.7, 1.2),
        };
        self.wall.lines.push(fascia_line);
        let striations = {
            use rand::RngExt;
            rng.random_range(3..=7u32) as usize
        };
        for k in 0..striations + 2 {
            let in_fat = k >= striations;
            let (zlo, zhi) = if in_fat {
                (skin + 1.5 * scale, fascia0 - 1.5 * scale)
            } else {
                (fascia0 + 2.0 * scale, zp0 - 3.0 * scale)
            };
            if zhi <= zlo {
                continue;
            }
            let z0 = uniform(rng, zlo, zhi);
            let u0 = uniform(rng, -0.3, 0.7);
            let len = uniform(rng, 0.3, 1.2);
            let start = (u0.max(0.0) * nu as f32) as usize;
            let end = (((u0 + len).min(1.0)) * nu as f32) as usize;
            if end <= start + 2 {
                continue;
            }
            let slope = uniform(rng, -0.06, 0.06) * zp0;
            let wave = Noise1::new(rng, 4);
            let wave_amp = uniform(rng, 0.3, 1.0) * scale;
            let z = (start..end)
                .map(|i| {
                    let u = self.u_of(i);
                    let fascia_shift = self.wall.fascia[i] - fascia0;
                    z0 + slope * (u - 0.5) + wave_amp * wave.at(u) + 0.5 * fascia_shift
                })
                .collect();
            self.wall.lines.push(WallLine {
                span: (start, end),
                z,
                thickness: uniform(rng, 0.6, 1.1) * scale,
                amplitude: if in_fat {
                    uniform(rng, 0.25, 0.5)
                } else {
                    uniform(rng, 0.35, 0.9)
                },
            });
        }
    }

    /// Ribs: bright cortex above the pleura, shadow to the bottom. `pleura_cols` are the
    /// columns of pleura in the image.
    fn place_ribs(
        &mut self,
        geometry: &ScanGeometry,
        plan: &Plan,
        zp0: f32,
        pleura_cols: Span,
        rng: &mut SampleRng,
    ) {
        let (nu, scale, skin) = (self.nu, self.scale, self.wall.skin);
        let (w, _) = geometry.image_size();
        let probe = geometry.probe();
        let pleura_width = pleura_cols.1 - pleura_cols.0;
        let rib_px = match probe {
            Probe::Linear => uniform(rng, 0.2, 0.3) * w,
            Probe::Convex => uniform(rng, 0.10, 0.15) * w,
        };
        let rib_cols = self.px_to_cols(rib_px, zp0) as f32;
        let mut rib_centres: Vec<f32> = Vec::new();
        let (cl, cr) = (pleura_cols.0 as f32, pleura_cols.1 as f32);
        match plan.ribs {
            0 => {}
            1 => {
                // Off-centre, leaving a wide intercostal space on one side.
                let side = chance(rng, 0.5);
                let offset = uniform(rng, -0.25, 0.3) * rib_cols;
                rib_centres.push(if side { cl + offset } else { cr - offset });
            }
            _ => {
                // The "bat sign": one rib near each edge.
                rib_centres.push(cl + uniform(rng, -0.3, 0.35) * rib_cols);
                rib_centres.push(cr - uniform(rng, -0.3, 0.35) * rib_cols);
            }
        }
        // Keep the intercostal space wide enough to show the lung.
        if rib_centres.len() == 2 {
            let gap = rib_centres[1] - rib_centres[0] - rib_cols;
            let min_gap = 0.4 * pleura_width as f32;
            if gap < min_gap {
                let shift = 0.5 * (min_gap - gap);
                rib_centres[0] -= shift;
                rib_centres[1] += shift;
            }
        }
        let rib_drop = uniform(rng, 0.2, 0.35) * zp0 + 2.0 * scale;
        for &c in &rib_centres {
            let start = (c - 0.5 * rib_cols).max(0.0) as usize;
            let end = ((c + 0.5 * rib_cols).max(0.0) as usize).min(nu);
            if end <= start + 1 {
                continue;
            }
            let curvature = uniform(rng, 0.12, 0.25) * rib_px;
            let cortex = uniform(rng, 1.6, 2.6) * scale;
            let top = (start..end)
                .map(|i| {
                    let t = (i as f32 + 0.5 - c) / (0.5 * rib_cols);
                    let z = self.pleura_base[i] - rib_drop + curvature * t * t;
                    z.min(self.pleura_z[i] - cortex - 1.0 * scale)
                        .max(skin + 1.0)
                })
                .collect();
            self.ribs.push(Rib {
                span: (start, end),
                top,
                cortex,
            });
        }
    }

    /// Pleural gaps (fragmented pleura), and the pleural segments that remain of
    /// `lung_spans`, the pleura between the ribs.
    fn segment_pleura(&mut self, plan: &Plan, lung_spans: &[Span], zp0: f32, rng: &mut SampleRng) {
        let scale = self.scale;
        let seg_min = self.px_to_cols(3.0 * scale, zp0);
        let mut gaps: Vec<Span> = Vec::new();
        if plan.pleura == PleuraState::Fragmented {
            let count = {
                use rand::RngExt;
                rng.random_range(1..=3u32) as usize
            };
            for _ in 0..count {
                let width = self
                    .px_to_cols(uniform(rng, 0.03, 0.07) * self.px_width(zp0), zp0)
                    .max(2);
                if let Some(g) = place(rng, &subtract(lung_spans, &gaps), width + 2 * seg_min) {
                    gaps.push((g.0 + seg_min, g.1 - seg_min));
                }
            }
            if gaps.is_empty() {
                self.pleura_state = PleuraState::Irregular;
            }
        }
        self.pleura_segments = subtract(lung_spans, &gaps)
            .into_iter()
            .filter(|s| s.1 - s.0 >= seg_min)
            .collect();
    }

    /// Consolidation (when the plan has one), in `lung_spans`, the pleura between the ribs.
    /// Returns its columns.
    fn place_consolidation(
        &mut self,
        plan: &Plan,
        lung_spans: &[Span],
        pleura_width: usize,
        zp0: f32,
        rng: &mut SampleRng,
    ) -> Option<Span> {
        let (depth, scale) = (self.depth, self.scale);
        let lung_depth = depth - zp0;
        let kind = plan.consolidation?;
        let (width, reach) = match kind {
            ConsolidationKind::Large => (
                (uniform(rng, 0.3, 0.65) * pleura_width as f32) as usize,
                uniform(rng, 0.3, 0.8) * lung_depth,
            ),
            ConsolidationKind::Small => (
                self.px_to_cols(uniform(rng, 6.0, 14.0) * scale, zp0),
                uniform(rng, 3.5, 9.0) * scale,
            ),
        };
        let largest = lung_spans.iter().map(|s| s.1 - s.0).max().unwrap_or(0);
        let width = width.min(largest.saturating_sub(2));
        if width < 3 {
            return None;
        }
        let span = place(rng, lung_spans, width)?;
        let shred = Noise1::new(rng, 16);
        let shred_fine = Noise1::new(rng, 40);
        let shred_amp = match kind {
            ConsolidationKind::Large => 0.14 * reach,
            ConsolidationKind::Small => 0.25 * reach,
        };
        let n = (span.1 - span.0) as f32;
        let top: Vec<f32> = (span.0..span.1).map(|i| self.pleura_z[i]).collect();
        let bottom: Vec<f32> = (span.0..span.1)
            .map(|i| {
                let t = (i - span.0) as f32 / n + 0.5 / n;
                let profile = libm::sqrtf((4.0 * t * (1.0 - t)).max(0.0));
                let jag =
                    shred_amp * (0.6 * shred.at(t) + 0.4 * shred_fine.at(t).abs() * 2.0 - 0.4);
                let thick = (reach * (0.3 + 0.7 * profile) + jag).max(2.0 * scale);
                (self.pleura_z[i] + thick).min(depth)
            })
            .collect();
        let region = Region { span, top, bottom };
        let bronchograms = if plan.air_bronchograms {
            self.draw_bronchograms(rng, &region, kind)
        } else {
            Vec::new()
        };
        self.consolidations.push(Consolidation {
            region,
            echo: uniform(rng, 0.45, 0.8),
            bronchograms,
        });
        Some(span)
    }

    /// Effusion (when the plan has one): under a large consolidation (lung compressed above
    /// the fluid), or a lens of fluid directly under the pleura, in `lung_spans` (the pleura
    /// between the ribs) outside the `occupied` columns. Returns the columns of a lens.
    fn place_effusion(
        &mut self,
        plan: &Plan,
        lung_spans: &[Span],
        occupied: &[Span],
        pleura_width: usize,
        zp0: f32,
        rng: &mut SampleRng,
    ) -> Option<Span> {
        if !plan.effusion {
            return None;
        }
        let (depth, scale) = (self.depth, self.scale);
        let lung_depth = depth - zp0;
        let under = self
            .consolidations
            .first()
            .filter(|c| {
                let r = &c.region;
                let room = r
                    .bottom
                    .iter()
                    .filter(|&&b| b < depth - 4.0 * scale)
                    .count();
                plan.consolidation == Some(ConsolidationKind::Large)
                    && room * 4 >= 3 * r.bottom.len()
            })
            .map(|c| c.region.clone());
        if let Some(c) = under.filter(|_| chance(rng, 0.65)) {
            let region = Region {
                span: c.span,
                top: c.bottom.clone(),
                bottom: vec![depth; c.bottom.len()],
            };
            self.effusions.push(Effusion {
                region,
                visceral_line: false,
            });
            return None;
        }
        let width = (uniform(rng, 0.25, 0.5) * pleura_width as f32) as usize;
        let free = subtract(lung_spans, occupied);
        let largest = free.iter().map(|s| s.1 - s.0).max().unwrap_or(0);
        let width = width.min(largest.saturating_sub(2));
        if width < 4 {
            return None;
        }
        let span = place(rng, &free, width)?;
        let reach = uniform(rng, 0.25, 0.7) * lung_depth;
        let n = (span.1 - span.0) as f32;
        let top: Vec<f32> = (span.0..span.1).map(|i| self.pleura_z[i]).collect();
        let bottom: Vec<f32> = (span.0..span.1)
            .map(|i| {
                let t = (i - span.0) as f32 / n + 0.5 / n;
                let profile = libm::powf((4.0 * t * (1.0 - t)).max(0.0), 0.4);
                (self.pleura_z[i] + (reach * profile).max(2.0 * scale)).min(depth)
            })
            .collect();
        self.effusions.push(Effusion {
            region: Region { span, top, bottom },
            visceral_line: true,
        });
        Some(span)
    }

    /// B-lines: from the pleura of `aerated` lung to the bottom, within the image, outside the
    /// `occupied` columns.
    fn place_b_lines(
        &mut self,
        geometry: &ScanGeometry,
        plan: &Plan,
        aerated: &[Span],
        occupied: &[Span],
        zp0: f32,
        rng: &mut SampleRng,
    ) {
        let (nu, depth, scale) = (self.nu, self.depth, self.scale);
        let probe = geometry.probe();
        let bottom_cols = Self::visible_columns(geometry, nu, depth, 1.5);
        let b_allowed = subtract(
            &aerated
                .iter()
                .map(|&(a, b)| (a.max(bottom_cols.0), b.min(bottom_cols.1)))
                .filter(|s| s.1 > s.0)
                .collect::<Vec<_>>(),
            occupied,
        );
        let single_px = || match probe {
            Probe::Linear => (4.0, 7.0),
            Probe::Convex => (3.5, 6.0),
        };
        let mut bands: Vec<(usize, u32)> = Vec::new(); // (width in columns, members)
        let mut remaining = plan.b_lines;
        if plan.confluent && remaining >= 2 {
            let merged = {
                use rand::RngExt;
                rng.random_range(2..=remaining.min(4))
            };
            let (lo, hi) = single_px();
            let px = merged as f32 * uniform(rng, lo, hi) * uniform(rng, 0.75, 0.95) * scale;
            bands.push((self.px_to_cols(px, zp0), merged));
            remaining -= merged;
        }
        for _ in 0..remaining {
            let (lo, hi) = single_px();
            bands.push((self.px_to_cols(uniform(rng, lo, hi) * scale, zp0), 1));
        }
        let gap = self.px_to_cols(3.0 * scale, zp0);
        let mut taken: Vec<Span> = Vec::new();
        for (width, members) in bands {
            let padded: Vec<Span> = taken.iter().map(|&s| widen(s, gap, nu)).collect();
            if let Some(span) = place(rng, &subtract(&b_allowed, &padded), width) {
                taken.push(span);
                self.b_lines.push(BLine {
                    span,
                    members,
                    intensity: if members > 1 {
                        uniform(rng, 0.9, 1.2)
                    } else {
                        uniform(rng, 0.7, 1.1)
                    },
                });
            }
        }
        self.b_lines.sort_by_key(|b| b.span);
    }

    /// B-line look-alikes, with probability `probability` (`rng` is a stream of their own, so
    /// the rest of the sample is unchanged): one to three Z-lines (ill-defined, ending within 0.6
    /// of the lung's depth) or comet tails (short and bright), each a few pixels wide,
    /// under visible pleura, away from B-lines, ribs, consolidations and effusions (8 px of a
    /// 128-px image on either side, beyond the point-spread and compounding blur, so none of
    /// their echo falls on a B-line's label). They do not cut A-lines (a B-line does).
    pub(crate) fn place_look_alikes(&mut self, probability: f32, rng: &mut SampleRng) {
        use rand::RngExt;
        if !chance(rng, probability) {
            return;
        }
        let (nu, s) = (self.nu, self.scale);
        let zp0 = self.pleura_base.iter().sum::<f32>() / self.pleura_base.len().max(1) as f32;
        let clearance = self.px_to_cols(8.0 * s, zp0);
        let keep_out: Vec<Span> = self
            .b_lines
            .iter()
            .map(|b| b.span)
            .chain(self.consolidations.iter().map(|c| c.region.span))
            .chain(self.effusions.iter().map(|e| e.region.span))
            .chain(self.ribs.iter().map(|r| r.span))
            .map(|span| widen(span, clearance, nu))
            .collect();
        let free = subtract(&self.pleura_segments, &keep_out);
        let lung_depth = (self.depth - zp0).max(1.0);
        let gap = self.px_to_cols(3.0 * s, zp0);
        let count = rng.random_range(1..=3u32);
        for _ in 0..count {
            let comet = chance(rng, 0.5);
            let width = self.px_to_cols(uniform(rng, 1.0, 2.5) * s, zp0);
            let (amplitude, length) = if comet {
                (
                    uniform(rng, 6.0, 10.0),
                    uniform(rng, 0.03, 0.08) * self.depth,
                )
            } else {
                (uniform(rng, 3.0, 5.5), uniform(rng, 0.08, 0.2) * lung_depth)
            };
            let taken: Vec<Span> = self
                .look_alikes
                .iter()
                .map(|l| widen(l.span, gap, nu))
                .collect();
            if let Some(span) = place(rng, &subtract(&free, &taken), width) {
                self.look_alikes.push(LookAlike {
                    span,
                    amplitude,
                    length,
                });
            }
        }
    }

    /// A-lines (when the plan shows them): reverberations at multiples of the pleural depth
    /// under `aerated` pleura, interrupted by B-lines and the `occupied` columns.
    fn place_a_lines(
        &mut self,
        geometry: &ScanGeometry,
        plan: &Plan,
        aerated: &[Span],
        occupied: &[Span],
        rng: &mut SampleRng,
    ) {
        if !plan.a_lines {
            return;
        }
        let (nu, depth, scale) = (self.nu, self.depth, self.scale);
        let base_max = self.pleura_base.iter().cloned().fold(0.0f32, f32::max);
        let smooth_thickness = self.pleura_thickness.min(2.6 * scale);
        let mut amplitude = self.pleura_amplitude * uniform(rng, 0.2, 0.34);
        let decay = uniform(rng, 0.55, 0.8);
        let cuts: Vec<Span> = self.b_lines.iter().map(|b| b.span).collect();
        for order in 2u32.. {
            let thickness = smooth_thickness * (1.0 + 0.15 * (order - 2) as f32);
            let deepest = order as f32 * base_max;
            if deepest + 0.5 * thickness + 2.0 * scale > depth
                || amplitude < 0.09 * self.pleura_amplitude
            {
                break;
            }
            let visible = Self::visible_columns(geometry, nu, deepest, 1.5);
            let min_len = self.px_to_cols(6.0 * scale, deepest);
            let spans: Vec<Span> = subtract(
                &aerated
                    .iter()
                    .map(|&(a, b)| (a.max(visible.0), b.min(visible.1)))
                    .filter(|s| s.1 > s.0)
                    .collect::<Vec<_>>(),
                &[cuts.as_slice(), occupied].concat(),
            )
            .into_iter()
            .filter(|s| s.1 - s.0 >= min_len)
            .collect();
            let patchiness = Noise1::new(rng, 7);
            if !spans.is_empty() {
                self.a_lines.push(ALine {
                    order,
                    spans,
                    amplitude,
                    thickness,
                    patchiness,
                    taper: self.px_to_cols(4.0 * scale, deepest) as f32,
                });
            }
            amplitude *= decay;
        }
    }

    /// Lateral width (pixels) of the whole fan at depth `z`.
    fn px_width(&self, z: f32) -> f32 {
        self.nu as f32 / self.cols_per_px(z)
    }

    /// Air bronchograms: short bright branching segments inside a consolidation.
    fn draw_bronchograms(
        &self,
        rng: &mut SampleRng,
        region: &Region,
        kind: ConsolidationKind,
    ) -> Vec<Segment> {
        use rand::RngExt;
        let mut out = Vec::new();
        let trees = match kind {
            ConsolidationKind::Large => rng.random_range(2..=4u32) as usize,
            ConsolidationKind::Small => 1,
        };
        let span_w = (region.span.1 - region.span.0) as f32;
        for _ in 0..trees {
            let col = region.span.0 as f32 + uniform(rng, 0.15, 0.85) * span_w;
            let i = (col as usize).clamp(region.span.0, region.span.1 - 1) - region.span.0;
            let (top, bottom) = (region.top[i], region.bottom[i]);
            if bottom - top < 3.0 * self.scale {
                continue;
            }
            let z = top + uniform(rng, 0.2, 0.7) * (bottom - top);
            let mut tips = vec![([col, z], uniform(rng, 0.0, std::f32::consts::TAU))];
            let generations = match kind {
                ConsolidationKind::Large => rng.random_range(2..=3u32) as usize,
                ConsolidationKind::Small => 1,
            };
            for _ in 0..generations {
                let mut next = Vec::new();
                for (start, angle) in tips {
                    let branches = if chance(rng, 0.5) { 2 } else { 1 };
                    for b in 0..branches {
                        let a = angle + if b == 0 { 0.0 } else { uniform(rng, -1.0, 1.0) };
                        let len = uniform(rng, 2.0, 6.0) * self.scale;
                        let cpp = self.cols_per_px(start[1]);
                        let end = [
                            start[0] + len * libm::cosf(a) * cpp,
                            start[1] + len * libm::sinf(a),
                        ];
                        let inside = |p: [f32; 2]| {
                            p[0] >= 0.0
                                && region.contains(p[0] as usize, p[1] - 0.5)
                                && region.contains(p[0] as usize, p[1] + 0.5)
                        };
                        if inside(end) {
                            out.push(Segment {
                                a: start,
                                b: end,
                                amplitude: uniform(rng, 2.0, 3.5),
                            });
                            next.push((end, a + uniform(rng, -0.4, 0.4)));
                        }
                    }
                }
                tips = next;
            }
        }
        // Isolated bright specks.
        let specks = match kind {
            ConsolidationKind::Large => rng.random_range(3..=9u32) as usize,
            ConsolidationKind::Small => rng.random_range(1..=3u32) as usize,
        };
        for _ in 0..specks {
            let col = region.span.0 as f32 + uniform(rng, 0.1, 0.9) * span_w;
            let i = (col as usize).clamp(region.span.0, region.span.1 - 1) - region.span.0;
            let (top, bottom) = (region.top[i], region.bottom[i]);
            if bottom - top < 2.0 * self.scale {
                continue;
            }
            let z = top + uniform(rng, 0.2, 0.8) * (bottom - top);
            let cpp = self.cols_per_px(z);
            out.push(Segment {
                a: [col, z],
                b: [col + uniform(rng, 0.5, 2.0) * self.scale * cpp, z],
                amplitude: uniform(rng, 1.6, 3.0),
            });
        }
        out
    }

    /// The findings the image shows.
    pub(crate) fn findings(&self) -> Findings {
        Findings {
            pleura: self.pleura_state,
            a_lines: self.a_lines.len() as u32,
            b_lines: self.b_lines.len() as u32,
            confluent_b_lines: self.b_lines.iter().any(|b| b.members >= 2),
            consolidation: !self.consolidations.is_empty(),
            air_bronchograms: self
                .consolidations
                .iter()
                .any(|c| !c.bronchograms.is_empty()),
            effusion: !self.effusions.is_empty(),
            ribs: self.ribs.len() as u32,
        }
    }

    // ----- Annotation -------------------------------------------------------------------

    /// Points of a curve `z(column)` over `[start, end)` from the left edge of the span to its
    /// right edge, in pixels, simplified.
    fn chain(&self, geometry: &ScanGeometry, span: Span, z: impl Fn(usize) -> f32) -> Vec<Point> {
        let nu = self.nu as f32;
        let mut points = Vec::with_capacity(span.1 - span.0 + 2);
        points.push(geometry.to_pixel(span.0 as f32 / nu, z(span.0)));
        for i in span.0..span.1 {
            points.push(geometry.to_pixel(self.u_of(i), z(i)));
        }
        points.push(geometry.to_pixel(span.1 as f32 / nu, z(span.1 - 1)));
        simplify_chain(&points, SIMPLIFY_TOLERANCE_PX)
    }

    /// The polygon between two curves over a span, clipped to the image.
    fn region_polygon(
        &self,
        geometry: &ScanGeometry,
        span: Span,
        top: impl Fn(usize) -> f32,
        bottom: impl Fn(usize) -> f32,
    ) -> Vec<Point> {
        let mut poly = self.chain(geometry, span, top);
        let mut lower = self.chain(geometry, span, bottom);
        lower.reverse();
        poly.extend(lower);
        geometry.clip(&poly)
    }

    /// A region that tiles the field of view (the chest wall above the pleura, the lung below
    /// it). It is drawn `TILING_OVERSHOOT_PX` past the fan's sides (and past its top or bottom
    /// where the caller passes a curve out there), so that the field-of-view polygon alone decides
    /// the border pixels: two polygons whose border edges agree only up to float rounding would
    /// otherwise leave a pixel here and there inside the field of view unlabelled in dense masks.
    fn tiling_polygon(
        &self,
        geometry: &ScanGeometry,
        top: impl Fn(usize) -> f32,
        bottom: impl Fn(usize) -> f32,
    ) -> Vec<Point> {
        let all = (0, self.nu);
        let last = self.nu - 1;
        let overshoot = |chain: &mut Vec<Point>, z_first: f32, z_last: f32| {
            let du_first = TILING_OVERSHOOT_PX / geometry.lateral_scale(z_first.max(1.0));
            let du_last = TILING_OVERSHOOT_PX / geometry.lateral_scale(z_last.max(1.0));
            chain.insert(0, geometry.to_pixel(-du_first, z_first));
            chain.push(geometry.to_pixel(1.0 + du_last, z_last));
        };
        let mut polygon = self.chain(geometry, all, &top);
        overshoot(&mut polygon, top(0), top(last));
        let mut lower = self.chain(geometry, all, &bottom);
        overshoot(&mut lower, bottom(0), bottom(last));
        lower.reverse();
        polygon.extend(lower);
        geometry.clip(&polygon)
    }

    /// A band along a curve: centre line plus an outline `thickness` wide.
    fn band(
        &self,
        geometry: &ScanGeometry,
        span: Span,
        z: impl Fn(usize) -> f32 + Copy,
        thickness: f32,
    ) -> Geometry {
        let half = 0.5 * thickness;
        Geometry::Band {
            centerline: self.chain(geometry, span, z),
            outline: self.region_polygon(
                geometry,
                span,
                move |i| z(i) - half,
                move |i| z(i) + half,
            ),
        }
    }

    /// The annotation of the scene: the field of view and every object, labelled with the
    /// default schema's canonical names.
    pub(crate) fn annotation(&self, geometry: &ScanGeometry) -> Annotation {
        let (w, h) = geometry.image_size();
        let mut annotation = Annotation::new(w as u32, h as u32);
        let all = (0, self.nu);
        let depth = self.depth;
        annotation.field_of_view = Some(self.region_polygon(geometry, all, |_| 0.0, |_| depth));
        let mut push = |label: &str, geometry: Geometry| {
            let ok = match &geometry {
                Geometry::Polygon { points } => points.len() >= 3 && polygon_area(points) > 0.25,
                Geometry::Band {
                    centerline,
                    outline,
                } => centerline.len() >= 2 && outline.len() >= 3 && polygon_area(outline) > 0.25,
                Geometry::Polyline { points, .. } => points.len() >= 2,
            };
            debug_assert!(ok, "degenerate {label} shape");
            if ok {
                annotation.shapes.push(Shape {
                    label: label.to_string(),
                    geometry,
                });
            }
        };
        let pleura = |i: usize| self.pleura_z[i];
        push(
            "chest-wall",
            Geometry::Polygon {
                points: self.tiling_polygon(geometry, |_| -TILING_OVERSHOOT_PX, pleura),
            },
        );
        push(
            "lung",
            Geometry::Polygon {
                points: self.tiling_polygon(geometry, pleura, |_| depth + TILING_OVERSHOOT_PX),
            },
        );
        let region = |r: &Region| Geometry::Polygon {
            points: self.region_polygon(
                geometry,
                r.span,
                |i| r.top[i - r.span.0],
                |i| r.bottom[i - r.span.0],
            ),
        };
        for e in &self.effusions {
            push("effusion", region(&e.region));
        }
        for c in &self.consolidations {
            push("consolidation", region(&c.region));
        }
        for a in &self.a_lines {
            let order = a.order as f32;
            for &span in &a.spans {
                push(
                    "a-line",
                    self.band(geometry, span, |i| order * self.pleura_base[i], a.thickness),
                );
            }
        }
        for b in &self.b_lines {
            let centre = 0.5 * (b.span.0 + b.span.1) as f32;
            let top = curve_at(&self.pleura_z, centre);
            let u = centre / self.nu as f32;
            push(
                "b-line",
                Geometry::Band {
                    centerline: vec![geometry.to_pixel(u, top), geometry.to_pixel(u, depth)],
                    outline: self.region_polygon(geometry, b.span, pleura, |_| depth),
                },
            );
        }
        for r in &self.ribs {
            push(
                "rib",
                Geometry::Polygon {
                    points: self.region_polygon(
                        geometry,
                        r.span,
                        |i| r.top[i - r.span.0],
                        |_| depth,
                    ),
                },
            );
        }
        for &span in &self.pleura_segments {
            push(
                "pleural-line",
                self.band(geometry, span, pleura, self.pleura_thickness),
            );
        }
        annotation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_arithmetic() {
        assert_eq!(
            subtract(&[(0, 10)], &[(3, 5), (8, 12)]),
            vec![(0, 3), (5, 8)]
        );
        assert_eq!(subtract(&[(0, 4), (6, 9)], &[(0, 9)]), vec![]);
        assert_eq!(widen((2, 4), 3, 5), (0, 5));
        let mut rng = <SampleRng as rand::SeedableRng>::seed_from_u64(0);
        for _ in 0..100 {
            let s = place(&mut rng, &[(0, 3), (10, 20)], 5).unwrap();
            assert!(s.0 >= 10 && s.1 <= 20 && s.1 - s.0 == 5, "{s:?}");
        }
        assert_eq!(place(&mut rng, &[(0, 3)], 5), None);
    }

    #[test]
    fn curve_interpolation_hits_column_centres() {
        let c = [0.0, 10.0, 20.0];
        assert_eq!(curve_at(&c, 1.5), 10.0);
        assert_eq!(curve_at(&c, 2.0), 15.0);
        assert_eq!(curve_at(&c, 0.0), 0.0);
        assert_eq!(curve_at(&c, 9.0), 20.0);
    }
}
