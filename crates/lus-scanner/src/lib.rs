//! The seeded synthetic lung-ultrasound scanner: B-mode images with exact ground truth, so the
//! whole study runs on a fresh machine with no download.
//!
//! Sample `i` of seed `s` is a pure function of `(config, s, i)`: its generator is
//! `ChaCha8Rng::seed_from_u64(s)` on stream `i`, and every transcendental function goes
//! through `libm` (pure Rust), so the bytes are the same on every machine and for any number
//! of rayon threads.
//!
//! # What a sample contains
//! - **Geometry** ([`ScanGeometry`]): a linear probe fills the image with a rectangle; a convex
//!   probe gives an annular sector (apex above the image, 60-75 degree opening) clipped by the
//!   image, black outside. Depth, fan angle and pleural depth vary per sample.
//! - **Chest wall**: bright skin, dark subcutaneous fat, muscle with fascia and striations.
//! - **Ribs** (0-2): a bright curved cortex above the pleura and an acoustic shadow to the
//!   bottom; the pleural line shows only between ribs.
//! - **Pleural line** at depth `dp`: thin and smooth, or irregular, thickened or fragmented.
//! - **A-lines**: reverberations at `k * dp` (`k = 2, 3, ...`) with decaying brightness, only
//!   under aerated pleura, cut by B-lines, consolidations, effusions, ribs and pleural gaps.
//! - **B-lines**: bright beam-aligned bands from the pleura to the bottom that do not fade;
//!   under a convex probe they widen with depth. A confluent B-line is one wide band.
//! - **Consolidation**: tissue-like echotexture under the pleura with a ragged, bright deep
//!   border (shred sign) and, when present, air bronchograms (bright branching specks).
//! - **Effusion**: anechoic fluid, either deep under a consolidation (compressed lung above
//!   it) or a lens directly under the pleura over a bright visceral pleural line.
//! - **Image formation** (the private `render` submodule): echoes on a beam grid, speckle from
//!   a complex Gaussian field, an anisotropic point-spread function whose lateral width is
//!   constant in pixels, incoherent compounding, net attenuation, log compression, then scan
//!   conversion; outside the field of view every pixel is exactly 0.
//!
//! # Opt-in realism (all off by default; `experiments/scanner/realistic.toml` turns all on)
//! Measured against real frames by `lus domain-gap`, each keeping the labels exact and, left
//! off, the output bit-identical: `render_scale` (render larger, shrink like a real frame),
//! `pleura_depth` and `convex_opening_deg` (wider ranges of the scan's geometry, one draw
//! either way), and, on random streams of their own so that nothing else of a sample changes,
//! `overlays` (burned-in text and marks), `near_field_haze`, `z_lines` (Z-lines and comet tails:
//! B-line look-alikes that fade, beside the B-lines, never labelled), `focal_zone` (lateral
//! resolution varying with depth), `display_variety` (per-frame dynamic range and gamma),
//! `letterbox` (the frame and its labels shrunk into a black square) and `compression` (8 x 8
//! block DCT quantisation, last, as the exported clip's codec).
//!
//! The annotation uses the default schema's canonical names: `chest-wall` and `lung` tile the
//! field of view, `rib` (cortex and shadow), `pleural-line`, `a-line` and `b-line` bands (one
//! per visible segment), `consolidation` and `effusion` polygons. [`Findings`] agree with it:
//! `b_lines` is the number of `b-line` shapes, `a_lines` the number of distinct A-line depths,
//! `ribs` the number of `rib` shapes.
//!
//! # Findings by diagnosis
//! The diagnosis is drawn from `diagnosis_weights`; it then draws findings with these
//! probabilities, which overlap between classes as in real patients (a finding that does not
//! fit, e.g. a B-line with no room between ribs, is left out, and [`Findings`] report what is
//! shown):
//!
//! | finding                               | healthy          | covid                      | pneumonia              |
//! |---------------------------------------|------------------|----------------------------|------------------------|
//! | pleura smooth/irregular/thick/fragm.  | .85/.15/0/0      | .20/.35/.20/.25            | .60/.25/.10/.05        |
//! | A-lines shown (halved if >= 3 B-lines)| .90              | .35                        | .40                    |
//! | B-lines 0/1/2/3/4/5/6                 | .75/.17/.08/0... | .08/.12/.16/.16/.16/.16/.16 | .50/.25/.15/.10/0...  |
//! | confluent (when >= 2 B-lines)         | 0                | .50                        | .15                    |
//! | consolidation                         | 0                | .30 small subpleural       | .80 large              |
//! | air bronchograms (if consolidation)   | -                | .10                        | .75                    |
//! | effusion                              | .03              | .05                        | .45                    |
//! | ribs 0/1/2                            | .25/.40/.35      | .25/.40/.35                | .25/.40/.35            |
//!
//! A confluent band merges 2-4 of the drawn B-lines into one band, so it counts as one
//! `b-line` shape. An effusion in pneumonia lies under the consolidation in 65% of cases when
//! there is one, otherwise it is a lens beside it.

mod display;
pub mod error;
mod geometry;
mod noise;
mod overlay;
mod render;
mod scene;

use std::ops::Range;

use image::GrayImage;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use lus_data::{Annotation, Diagnosis, Probe};

pub use error::{Result, ScannerError};
pub use geometry::ScanGeometry;

use noise::{SampleRng, chance, uniform, weighted_index};
use render::RenderParams;
use scene::{Plan, Scene};

/// Smallest and largest supported image side.
pub const MIN_SIZE: u32 = 64;
pub const MAX_SIZE: u32 = 512;
/// Mixed into the scanner seed for the stream of the letter-boxing.
const LETTERBOX_STREAM_SALT: u64 = 0x0fe7_1a75_c0de_0007;
/// Mixed into the scanner seed for the stream of the focal depth.
const FOCUS_STREAM_SALT: u64 = 0x0fe7_1a75_c0de_0006;
/// Mixed into the scanner seed for the stream of the B-line look-alikes.
const LOOK_ALIKE_STREAM_SALT: u64 = 0x0fe7_1a75_c0de_0003;
/// A convex probe's sector opening (degrees) unless `convex_opening_deg` says otherwise.
const DEFAULT_CONVEX_OPENING_DEG: [f32; 2] = [60.0, 75.0];
/// Largest [`ScannerConfig::render_scale`].
pub const MAX_RENDER_SCALE: u32 = 4;

/// How the scanner draws and renders samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScannerConfig {
    /// Side of the square output image in pixels (64..=512).
    pub size: u32,
    /// Share of convex (fan) probe samples; the rest are linear.
    pub convex_fraction: f32,
    /// Prevalence weights of healthy, covid, pneumonia (non-negative, not all zero).
    pub diagnosis_weights: [f32; 3],
    /// Speckle strength in `[0, 1]`: 1 is fully developed (Rayleigh) speckle, 0 none.
    pub speckle: f32,
    /// Lateral standard deviation of the point-spread function in pixels of a 128-px image
    /// (scaled with `size`, so an image looks the same at every size).
    pub blur_px: f32,
    /// Axial over lateral point-spread width, in `(0, 1]` (ultrasound resolves depth better).
    pub axial_blur_ratio: f32,
    /// Incoherent averaging (compounding) of the echo power: Gaussian standard deviation in
    /// pixels of a 128-px image; 0 turns it off. Lowers the speckle contrast.
    pub compounding_px: f32,
    /// Net echo loss (dB) from the top to the bottom of the image after time-gain
    /// compensation.
    pub attenuation: f32,
    /// Display dynamic range (dB) of the log compression.
    pub dynamic_range_db: f32,
    /// Per-sample overall gain is drawn uniformly from `+-gain_jitter_db`.
    pub gain_jitter_db: f32,
    /// Render at this many times `size`, then shrink to `size` (triangle filter, the resize
    /// real frames go through on their way to the network) with the annotation scaled to
    /// match: a real frame is recorded at several hundred pixels and shrunk, so its speckle and
    /// point-spread are band-limited at the network's size, while a frame rendered at 64 px
    /// has speckle at the pixel scale. 1 (the default) renders at `size` directly, as before;
    /// at most 4.
    #[serde(skip_serializing_if = "is_one")]
    pub render_scale: u32,
    /// Share of frames that carry screen overlays (text, depth-scale ticks, focal-zone and
    /// orientation marks), drawn after rendering and never labelled (an overlay is not tissue,
    /// a column of ticks not a B-line). From a random stream of its own: turning it on changes
    /// nothing else of a sample. 0 (the default): none.
    #[serde(skip_serializing_if = "is_zero")]
    pub overlays: f32,
    /// The range the pleural line's depth is drawn from, as shares of the imaging depth, for
    /// both probes (e.g. `[0.1, 0.5]`: anywhere in the top half, as on real frames, where the
    /// chest wall's thickness and the depth setting vary). Left out: the probe's own range
    /// (linear 0.22-0.34, convex 0.17-0.27).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pleura_depth: Option<[f32; 2]>,
    /// Strength in `[0, 1]` of the near-field haze (ring-down and skin reverberation that
    /// brighten the first millimetres of a real frame; image only, never labelled, from a
    /// random stream of its own). 0 (the default): none.
    #[serde(skip_serializing_if = "is_zero")]
    pub near_field_haze: f32,
    /// Share of frames with B-line look-alikes: one to three Z-lines or comet tails, narrow
    /// vertical artefacts from the pleura that fade with depth, drawn beside (never on) the
    /// B-lines and never labelled: a look-alike is not a B-line, and a segmenter should learn
    /// the difference. From a random stream of their own. 0 (the default): none.
    #[serde(skip_serializing_if = "is_zero")]
    pub z_lines: f32,
    /// Variety in `[0, 1]` of the display mapping: per frame, another dynamic range and gamma
    /// (each a factor up to `exp(±0.35 variety)`) inside the field of view, as presets and
    /// users set them (image only, own random stream). 0 (the default): the one mapping.
    #[serde(skip_serializing_if = "is_zero")]
    pub display_variety: f32,
    /// Share of frames compressed like an exported clip (8 x 8 block DCT quantised with the
    /// JPEG luminance table at a quality drawn from 15..70: blocking, ringing, lost speckle;
    /// image only, own random stream; the ringing leaves faint noise outside the field of
    /// view, which is then no longer exactly black). 0 (the default): none.
    #[serde(skip_serializing_if = "is_zero")]
    pub compression: f32,
    /// The range of a convex probe's sector opening in degrees, `[low, high]` within 40..=110
    /// (real curvilinear probes open 60-100 degrees; the sector is clipped by the image where
    /// it is wider). Left out: 60-75, drawn the same way (one draw either way).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convex_opening_deg: Option<[f32; 2]>,
    /// Strength in `[0, 1]` of a transmit focus: the lateral point-spread is narrowest at a
    /// focal depth drawn per frame from 20-60 % of the imaging depth (0.7 x at full strength)
    /// and widens away from it (about 1.3 x half an image away), as a real probe's beam does;
    /// image only, own random stream. 0 (the default): the same width at every depth.
    #[serde(skip_serializing_if = "is_zero")]
    pub focal_zone: f32,
    /// Share of frames letter-boxed: the frame (labels with it) shrunk to 60-90 % of the side
    /// and placed in a black square, centred across and anywhere along the depth, as a
    /// non-square export padded to a square is (`lus ingest-pocus` pads real clips the same
    /// way); screen overlays stay in the corners of the whole image. Own random stream. 0 (the
    /// default): every frame fills the image.
    #[serde(skip_serializing_if = "is_zero")]
    pub letterbox: f32,
}

// The realism options are written out only when set, so the resolved configs (and reports)
// of runs that do not use them read as before the options existed.
fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

fn is_one(v: &u32) -> bool {
    *v == 1
}

impl Default for ScannerConfig {
    fn default() -> Self {
        ScannerConfig {
            size: 128,
            convex_fraction: 0.5,
            diagnosis_weights: [1.0, 1.0, 1.0],
            speckle: 1.0,
            blur_px: 1.4,
            axial_blur_ratio: 0.4,
            compounding_px: 0.6,
            attenuation: 6.0,
            dynamic_range_db: 45.0,
            gain_jitter_db: 3.0,
            render_scale: 1,
            overlays: 0.0,
            pleura_depth: None,
            near_field_haze: 0.0,
            z_lines: 0.0,
            display_variety: 0.0,
            compression: 0.0,
            convex_opening_deg: None,
            focal_zone: 0.0,
            letterbox: 0.0,
        }
    }
}

impl ScannerConfig {
    /// Checks every value; errors name the offending key.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |key: &str, reason: String| Err(ScannerError::config(format!("scanner.{key}"), reason));
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return bad(
                "size",
                format!(
                    "must be between {MIN_SIZE} and {MAX_SIZE} px, got {}",
                    self.size
                ),
            );
        }
        let ranged = |key: &str, v: f32, lo: f32, hi: f32, lo_open: bool| -> Result<()> {
            let ok = v.is_finite() && v <= hi && if lo_open { v > lo } else { v >= lo };
            if ok {
                Ok(())
            } else {
                let open = if lo_open { "(" } else { "[" };
                bad(
                    key,
                    format!("must be a number in {open}{lo}, {hi}], got {v}"),
                )
            }
        };
        ranged("convex_fraction", self.convex_fraction, 0.0, 1.0, false)?;
        ranged("speckle", self.speckle, 0.0, 1.0, false)?;
        ranged("blur_px", self.blur_px, 0.0, 8.0, true)?;
        ranged("axial_blur_ratio", self.axial_blur_ratio, 0.0, 1.0, true)?;
        ranged("compounding_px", self.compounding_px, 0.0, 8.0, false)?;
        ranged("attenuation", self.attenuation, 0.0, 60.0, false)?;
        ranged(
            "dynamic_range_db",
            self.dynamic_range_db,
            10.0,
            120.0,
            false,
        )?;
        ranged("gain_jitter_db", self.gain_jitter_db, 0.0, 20.0, false)?;
        ranged("overlays", self.overlays, 0.0, 1.0, false)?;
        ranged("near_field_haze", self.near_field_haze, 0.0, 1.0, false)?;
        ranged("z_lines", self.z_lines, 0.0, 1.0, false)?;
        ranged("display_variety", self.display_variety, 0.0, 1.0, false)?;
        ranged("compression", self.compression, 0.0, 1.0, false)?;
        ranged("focal_zone", self.focal_zone, 0.0, 1.0, false)?;
        ranged("letterbox", self.letterbox, 0.0, 1.0, false)?;
        if let Some([lo, hi]) = self.convex_opening_deg
            && !(lo.is_finite() && hi.is_finite() && 40.0 <= lo && lo <= hi && hi <= 110.0)
        {
            return bad(
                "convex_opening_deg",
                format!("must be [low, high] with 40 <= low <= high <= 110, got [{lo}, {hi}]"),
            );
        }
        if let Some([lo, hi]) = self.pleura_depth
            && !(lo.is_finite() && hi.is_finite() && 0.05 <= lo && lo <= hi && hi <= 0.6)
        {
            return bad(
                "pleura_depth",
                format!("must be [low, high] with 0.05 <= low <= high <= 0.6, got [{lo}, {hi}]"),
            );
        }
        if !(1..=MAX_RENDER_SCALE).contains(&self.render_scale) {
            return bad(
                "render_scale",
                format!(
                    "must be an integer from 1 to {MAX_RENDER_SCALE}, got {}",
                    self.render_scale
                ),
            );
        }
        for (name, &w) in ["healthy", "covid", "pneumonia"]
            .iter()
            .zip(&self.diagnosis_weights)
        {
            if !(w.is_finite() && w >= 0.0) {
                return bad(
                    "diagnosis_weights",
                    format!("the {name} weight must be a finite number >= 0, got {w}"),
                );
            }
        }
        if self.diagnosis_weights.iter().sum::<f32>() <= 0.0 {
            return bad(
                "diagnosis_weights",
                "at least one weight must be positive (all are 0)".into(),
            );
        }
        Ok(())
    }
}

/// The state of the pleural line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PleuraState {
    /// Thin, smooth, continuous (healthy).
    Smooth,
    /// Irregular depth and brightness.
    Irregular,
    /// Thickened and mildly irregular.
    Thickened,
    /// Irregular with gaps.
    Fragmented,
}

impl PleuraState {
    /// The lower-case name used in files (manifests, reports).
    pub fn as_str(self) -> &'static str {
        match self {
            PleuraState::Smooth => "smooth",
            PleuraState::Irregular => "irregular",
            PleuraState::Thickened => "thickened",
            PleuraState::Fragmented => "fragmented",
        }
    }
}

impl std::fmt::Display for PleuraState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a sample shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Findings {
    pub pleura: PleuraState,
    /// Number of distinct A-line depths shown.
    pub a_lines: u32,
    /// Number of B-line bands (a confluent band counts once).
    pub b_lines: u32,
    /// Some band is several merged B-lines.
    pub confluent_b_lines: bool,
    pub consolidation: bool,
    pub air_bronchograms: bool,
    pub effusion: bool,
    /// Number of ribs in the field of view.
    pub ribs: u32,
}

/// One synthetic frame with its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub index: u64,
    pub image: GrayImage,
    pub annotation: Annotation,
    pub diagnosis: Diagnosis,
    pub probe: Probe,
    pub findings: Findings,
    /// Where the field of view lies (maps probe coordinates to pixels) in the frame as drawn,
    /// before any letter-boxing (see `placement`).
    pub geometry: ScanGeometry,
    /// For a letter-boxed frame (`ScannerConfig::letterbox`): how the drawn frame was shrunk
    /// and placed in the image; `None` when it fills the image.
    pub placement: Option<Placement>,
}

/// A frame shrunk by `scale` with its top-left corner at `offset`: pixel `p` of the drawn frame
/// (of `geometry`) is at `p * scale + offset` in the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub scale: f32,
    pub offset: [f32; 2],
}

/// The scanner: a validated configuration and a seed.
#[derive(Debug, Clone)]
pub struct Scanner {
    config: ScannerConfig,
    seed: u64,
}

impl Scanner {
    /// A scanner; fails if the configuration is invalid.
    pub fn new(config: ScannerConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        Ok(Scanner { config, seed })
    }

    pub fn config(&self) -> &ScannerConfig {
        &self.config
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Sample `index`: a pure function of (config, seed, index).
    pub fn sample(&self, index: u64) -> Sample {
        let mut rng = SampleRng::seed_from_u64(self.seed);
        rng.set_stream(index);
        let cfg = &self.config;
        let diagnosis = Diagnosis::PAPER[weighted_index(&mut rng, &cfg.diagnosis_weights)];
        let probe = if chance(&mut rng, cfg.convex_fraction) {
            Probe::Convex
        } else {
            Probe::Linear
        };
        // Drawn at the rendering side; shrunk to `size` below when `render_scale > 1`.
        let opening = cfg.convex_opening_deg.unwrap_or(DEFAULT_CONVEX_OPENING_DEG);
        let geometry = draw_geometry(
            probe,
            (cfg.size * cfg.render_scale) as f32,
            opening,
            &mut rng,
        );
        let plan = Plan {
            pleura_depth: cfg.pleura_depth,
            ..Plan::draw(diagnosis, &mut rng)
        };
        let nu = lateral_columns(&geometry);
        let mut scene = Scene::build(&geometry, &plan, nu, &mut rng);
        if cfg.z_lines > 0.0 {
            let mut stream = noise::option_stream(self.seed, LOOK_ALIKE_STREAM_SALT, index);
            scene.place_look_alikes(cfg.z_lines, &mut stream);
        }
        let annotation = scene.annotation(&geometry);
        let params = RenderParams {
            speckle: cfg.speckle,
            blur_px: cfg.blur_px,
            axial_ratio: cfg.axial_blur_ratio,
            compounding_px: cfg.compounding_px,
            attenuation_db: cfg.attenuation,
            dynamic_range_db: cfg.dynamic_range_db,
            gain_db: uniform(&mut rng, -cfg.gain_jitter_db, cfg.gain_jitter_db),
            focus: (cfg.focal_zone > 0.0).then(|| {
                let mut stream = noise::option_stream(self.seed, FOCUS_STREAM_SALT, index);
                (uniform(&mut stream, 0.2, 0.6), cfg.focal_zone)
            }),
        };
        let fov = annotation
            .field_of_view
            .as_deref()
            .expect("the scanner always sets the field of view");
        let mut image = render::render(&scene, &geometry, fov, &params, &mut rng);
        if cfg.near_field_haze > 0.0 {
            overlay::add_near_field_haze(
                &mut image,
                &field_of_view_mask(&annotation),
                &geometry,
                self.seed,
                index,
                cfg.near_field_haze,
            );
        }
        // Overlays are drawn at the rendering side and shrunk like the frame (a real frame's
        // overlays are shrunk with it), on a layer of their own: the shrink restores black
        // outside the field of view, where most overlays sit.
        let (w, h) = image.dimensions();
        let layer = overlay::overlay_layer(w, h, self.seed, index, cfg.overlays);
        let (mut image, annotation, geometry) = if cfg.render_scale > 1 {
            shrink(image, &annotation, &geometry, cfg.size)
        } else {
            (image, annotation, geometry)
        };
        if cfg.display_variety > 0.0 {
            let inside = field_of_view_mask(&annotation);
            display::vary_display(&mut image, &inside, self.seed, index, cfg.display_variety);
        }
        let (mut image, annotation, placement) = if cfg.letterbox > 0.0 {
            letterbox(image, annotation, self.seed, index, cfg.letterbox)
        } else {
            (image, annotation, None)
        };
        if let Some(layer) = layer {
            let layer = if layer.width() == cfg.size {
                layer
            } else {
                image::imageops::resize(
                    &layer,
                    cfg.size,
                    cfg.size,
                    image::imageops::FilterType::Triangle,
                )
            };
            for (pixel, mark) in image.pixels_mut().zip(layer.pixels()) {
                pixel.0[0] = pixel.0[0].max(mark.0[0]);
            }
        }
        // Last: the codec sees the frame as exported, overlays included.
        display::compress(&mut image, self.seed, index, cfg.compression);
        Sample {
            index,
            image,
            annotation,
            diagnosis,
            probe,
            findings: scene.findings(),
            geometry,
            placement,
        }
    }

    /// Samples `indices`, in parallel; the result equals the sequential one.
    pub fn generate(&self, indices: Range<u64>) -> Vec<Sample> {
        indices.into_par_iter().map(|i| self.sample(i)).collect()
    }
}

/// A rendered sample shrunk to `size`: the image by the triangle filter (then exactly 0
/// outside the shrunk field of view again, which the filter's support blurs by a pixel), the
/// annotation and the geometry scaled by the same factor, so the labels stay exact.
fn shrink(
    image: GrayImage,
    annotation: &Annotation,
    geometry: &ScanGeometry,
    size: u32,
) -> (GrayImage, Annotation, ScanGeometry) {
    let factor = size as f32 / image.width() as f32;
    let mut small =
        image::imageops::resize(&image, size, size, image::imageops::FilterType::Triangle);
    let annotation = annotation.scaled(factor, size, size);
    black_outside_field_of_view(&mut small, &annotation);
    (small, annotation, geometry.scaled(factor))
}

/// The pixels (row-major) inside the annotation's field of view, at the annotation's size.
fn field_of_view_mask(annotation: &Annotation) -> Vec<bool> {
    let fov = annotation
        .field_of_view
        .as_deref()
        .expect("the scanner always sets the field of view");
    geometry::fill_polygon(fov, annotation.width as usize, annotation.height as usize)
}

/// Sets every pixel outside the annotation's field of view to 0: a resampled frame is black
/// there again, as every scanner frame is (the filter's support blurs the edge by a pixel).
fn black_outside_field_of_view(image: &mut GrayImage, annotation: &Annotation) {
    for (pixel, inside) in image.pixels_mut().zip(field_of_view_mask(annotation)) {
        if !inside {
            pixel.0[0] = 0;
        }
    }
}

/// Letter-boxes the frame with probability `share` (from its own random stream): shrunk by
/// the triangle filter to a side of 60-90 % of the image, placed centred across and anywhere
/// along the depth in a black image of the same size, 0 outside the placed field of view; the
/// annotation placed with it, the factor being exactly the ratio of the sides, so the labels
/// stay exact.
fn letterbox(
    image: GrayImage,
    annotation: Annotation,
    seed: u64,
    index: u64,
    share: f32,
) -> (GrayImage, Annotation, Option<Placement>) {
    let mut rng = noise::option_stream(seed, LETTERBOX_STREAM_SALT, index);
    if !chance(&mut rng, share) {
        return (image, annotation, None);
    }
    let size = image.width();
    let side = (libm::roundf(uniform(&mut rng, 0.6, 0.9) * size as f32) as u32).clamp(1, size);
    let free = size - side;
    let offset = [
        free / 2,
        libm::roundf(uniform(&mut rng, 0.0, 1.0) * free as f32) as u32,
    ];
    let small = image::imageops::resize(&image, side, side, image::imageops::FilterType::Triangle);
    let mut boxed = GrayImage::new(size, size);
    image::imageops::replace(
        &mut boxed,
        &small,
        i64::from(offset[0]),
        i64::from(offset[1]),
    );
    let placement = Placement {
        scale: side as f32 / size as f32,
        offset: [offset[0] as f32, offset[1] as f32],
    };
    let annotation = annotation.placed(placement.scale, placement.offset, size, size);
    black_outside_field_of_view(&mut boxed, &annotation);
    (boxed, annotation, Some(placement))
}

/// Draws the probe geometry of one sample.
fn draw_geometry(
    probe: Probe,
    size: f32,
    opening_deg: [f32; 2],
    rng: &mut SampleRng,
) -> ScanGeometry {
    match probe {
        Probe::Linear => ScanGeometry::Linear {
            width: size,
            height: size,
        },
        Probe::Convex => {
            let half_angle = uniform(rng, 0.5 * opening_deg[0], 0.5 * opening_deg[1]).to_radians();
            // Transducer footprint: the top arc spans about a third of the image.
            let footprint_half = uniform(rng, 0.14, 0.2) * size;
            let inner_radius = footprint_half / libm::sinf(half_angle);
            // The ends of the top arc sit lower than its middle; keep them inside the image.
            let sag = inner_radius * (1.0 - libm::cosf(half_angle));
            let top = sag + uniform(rng, 0.01, 0.035) * size;
            let bottom = uniform(rng, 0.965, 0.995) * size;
            ScanGeometry::Convex {
                width: size,
                height: size,
                apex: [0.5 * size, top - inner_radius],
                inner_radius,
                outer_radius: inner_radius + (bottom - top),
                half_angle,
            }
        }
    }
}

/// Number of lateral beams of the render grid: about one per pixel at mid-depth.
fn lateral_columns(geometry: &ScanGeometry) -> usize {
    let (w, _) = geometry.image_size();
    let mid = geometry.lateral_scale(0.5 * geometry.depth());
    libm::roundf(mid.clamp(0.5 * w, 2.0 * w)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_round_trips_through_toml() {
        let c = ScannerConfig::default();
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        let back: ScannerConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        let partial: ScannerConfig = toml::from_str("size = 256").unwrap();
        assert_eq!(partial.size, 256);
        assert_eq!(partial.speckle, c.speckle);
        assert!(toml::from_str::<ScannerConfig>("sise = 256").is_err());
    }

    #[test]
    fn convex_geometry_fits_the_image() {
        let mut rng = SampleRng::seed_from_u64(5);
        for _ in 0..200 {
            let g = draw_geometry(Probe::Convex, 128.0, DEFAULT_CONVEX_OPENING_DEG, &mut rng);
            let ScanGeometry::Convex {
                apex,
                inner_radius,
                outer_radius,
                half_angle,
                ..
            } = g
            else {
                unreachable!()
            };
            let opening = 2.0 * half_angle.to_degrees();
            assert!((60.0..=75.0).contains(&opening), "{opening}");
            assert!(apex[1] < 0.0, "apex inside the image: {apex:?}");
            // Top arc ends inside, bottom of the central beam inside.
            let corner = g.to_pixel(0.0, 0.0);
            assert!(corner[1] >= 0.0 && corner[0] > 0.0, "{corner:?}");
            assert!(apex[1] + outer_radius <= 128.0);
            assert!(inner_radius > 20.0);
        }
    }
}
