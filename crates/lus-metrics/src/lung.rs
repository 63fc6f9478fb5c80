//! Lung findings read off a segmentation map: what a sonographer counts on a frame (B-lines,
//! A-lines, the pleural line, consolidation, effusion) and what the LUS protocols summarise
//! over a clip (B-pattern, A-pattern).
//!
//! # The B-line rule
//! A B-line is a laser-like vertical artefact that arises from the pleural line and reaches the
//! bottom of the screen without fading (BLUE protocol; Volpicelli et al. 2012, the
//! international consensus). On a map, a B-line is a connected component (8-neighbour) of the
//! `b-line` class that
//! 1. is not noise: at least [`FindingRules::min_area`] of the image's pixels (and 3 pixels);
//! 2. **starts at the pleura**: a `pleural-line` pixel lies within [`FindingRules::pleura_gap`]
//!    of the image height of the component's top row, in the component's columns widened by
//!    the same distance on each side (the pleura paints over a B-line's root, and a B-line
//!    under a fragmented pleura starts beside a pleural segment, not under one);
//! 3. **reaches down**: its lowest row is at least [`FindingRules::min_reach`] of the way from
//!    its top to the bottom of the field of view in its columns (the lowest non-background
//!    pixel there). A comet tail or Z-line that fades after a few millimetres is not one.
//!
//! A band of several merged B-lines (confluent) counts once, as in the scanner's findings;
//! [`FrameFindings::b_line_coverage`] (the share of the field of view's columns under counted
//! B-lines) carries its width, the measure the LUS scores use for confluent B-lines.
//!
//! # The other findings
//! - A-lines: components of `a-line` at least [`FindingRules::min_a_line_width`] of the image
//!   width wide (and `min_area`); present when there is one.
//! - Pleural line: the columns holding `pleural-line` pixels (length, as a share of the field
//!   of view's columns); its thickness (mean pixels per column); its irregularity, the RMS
//!   distance in pixels of each column's centre row from a least-squares quadratic through them
//!   (a convex probe bends a smooth pleura into a parabola-like arc, which is not irregular);
//!   and its gaps, runs of at least two columns without pleura between its ends that no rib
//!   shadows.
//! - Consolidation and effusion: their areas as shares of the field of view.
//!
//! Per clip ([`ClipFindings`]): B-lines per frame (maximum and mean), the share of frames with
//! a **B-pattern** (at least [`FindingRules::b_pattern`] B-lines) and of frames with an
//! **A-pattern** (A-lines present and fewer than `b_pattern` B-lines).

use serde::{Deserialize, Serialize};

use crate::components::{Connectivity, label_class};
use crate::error::{MetricsError, Result};

/// The class ids of the classes the findings are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingClasses {
    /// Outside the field of view.
    pub background: u8,
    pub pleural_line: u8,
    pub a_line: u8,
    pub b_line: u8,
    /// Optional classes: `None` when the schema lacks them.
    pub rib: Option<u8>,
    pub consolidation: Option<u8>,
    pub effusion: Option<u8>,
}

impl FindingClasses {
    /// The ids of the classes named `background`, `pleural-line`, `a-line`, `b-line`, `rib`,
    /// `consolidation` and `effusion` in `class_names` (id = position). The first four are
    /// required.
    pub fn from_names(class_names: &[String]) -> Result<Self> {
        let find = |name: &str| {
            class_names
                .iter()
                .position(|n| n == name)
                .and_then(|i| u8::try_from(i).ok())
        };
        let required = |name: &str| {
            find(name).ok_or_else(|| {
                MetricsError::InvalidInput(format!(
                    "lung findings need a class named {name:?}; the classes are {}",
                    class_names.join(", ")
                ))
            })
        };
        Ok(FindingClasses {
            background: required("background")?,
            pleural_line: required("pleural-line")?,
            a_line: required("a-line")?,
            b_line: required("b-line")?,
            rib: find("rib"),
            consolidation: find("consolidation"),
            effusion: find("effusion"),
        })
    }
}

/// The thresholds of the rules of the module documentation, as fractions of the image so that
/// one rule serves every input size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FindingRules {
    /// Smallest component that counts, as a share of the image's pixels (at least 3 pixels).
    pub min_area: f64,
    /// How far (share of the image height) a B-line's top may lie from the pleural line.
    pub pleura_gap: f64,
    /// How far down a B-line reaches, as a share of the way from its top to the bottom of the
    /// field of view.
    pub min_reach: f64,
    /// Narrowest A-line component that counts, as a share of the image width.
    pub min_a_line_width: f64,
    /// B-lines that make a frame a B-pattern frame.
    pub b_pattern: u32,
}

impl Default for FindingRules {
    fn default() -> Self {
        FindingRules {
            min_area: 2e-4,
            pleura_gap: 0.05,
            min_reach: 0.6,
            min_a_line_width: 0.04,
            b_pattern: 3,
        }
    }
}

impl FindingRules {
    /// Every share in `[0, 1]` (`min_reach` and `pleura_gap` above 0), `b_pattern` at least 1.
    pub fn validate(&self) -> Result<()> {
        let share = |name: &str, v: f64, open_zero: bool| {
            let ok = v.is_finite() && v <= 1.0 && if open_zero { v > 0.0 } else { v >= 0.0 };
            if ok {
                Ok(())
            } else {
                Err(MetricsError::InvalidInput(format!(
                    "finding rules: {name} must be in {}0, 1], is {v}",
                    if open_zero { "(" } else { "[" }
                )))
            }
        };
        share("min_area", self.min_area, false)?;
        share("pleura_gap", self.pleura_gap, true)?;
        share("min_reach", self.min_reach, true)?;
        share("min_a_line_width", self.min_a_line_width, false)?;
        if self.b_pattern == 0 {
            return Err(MetricsError::InvalidInput(
                "finding rules: b_pattern must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What one frame's map shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameFindings {
    /// B-lines by the rule of the module documentation.
    pub b_lines: u32,
    /// Components of the `b-line` class that the rule did not count (too small, not at the
    /// pleura, or fading).
    pub b_line_rejects: u32,
    /// Share of the field of view's columns under counted B-lines.
    pub b_line_coverage: f64,
    /// A-line components wide enough to count.
    pub a_lines: u32,
    /// Share of the field of view's columns that hold pleural-line pixels.
    pub pleura_length: f64,
    /// Mean pleural-line pixels per pleural column (NaN without pleura).
    pub pleura_thickness_px: f64,
    /// RMS distance of the pleura's column centres from their least-squares quadratic, in
    /// pixels (NaN with fewer than 4 pleural columns).
    pub pleura_irregularity_px: f64,
    /// Runs of two or more columns without pleura between its ends, not under a rib.
    pub pleura_gaps: u32,
    /// Consolidation area, share of the field of view (0 when the schema has no such class).
    pub consolidation_area: f64,
    /// Effusion area, share of the field of view.
    pub effusion_area: f64,
    /// Pixels of the field of view (not background).
    pub field_of_view_px: usize,
}

impl FrameFindings {
    /// At least `rules.b_pattern` B-lines.
    pub fn b_pattern(&self, rules: &FindingRules) -> bool {
        self.b_lines >= rules.b_pattern
    }

    /// A-lines present and fewer than `rules.b_pattern` B-lines.
    pub fn a_pattern(&self, rules: &FindingRules) -> bool {
        self.a_lines > 0 && !self.b_pattern(rules)
    }
}

/// Reads the findings of one `width x height` map (class ids, row-major).
///
/// The field of view (where the B-lines' reach is measured to, and what the shares are of) is
/// the map's non-background pixels, joined with `field_of_view` when given: a map of sparse
/// labels is background everywhere but on its lines, so the frame's own field of view (its
/// non-black pixels) must say how deep the image goes.
pub fn frame_findings(
    mask: &[u8],
    field_of_view: Option<&[bool]>,
    width: usize,
    height: usize,
    classes: &FindingClasses,
    rules: &FindingRules,
) -> Result<FrameFindings> {
    read_frame(mask, field_of_view, width, height, classes, rules).map(|r| r.findings)
}

/// A map's findings and the B-line rule's verdict on each of its `b-line` components (the
/// overlays draw counted and rejected ones apart).
#[derive(Debug, Clone)]
pub struct FrameReading {
    pub findings: FrameFindings,
    pub b_lines: BLineVerdicts,
}

/// [`frame_findings`] with the B-line verdicts it reached them by.
pub fn read_frame(
    mask: &[u8],
    field_of_view: Option<&[bool]>,
    width: usize,
    height: usize,
    classes: &FindingClasses,
    rules: &FindingRules,
) -> Result<FrameReading> {
    rules.validate()?;
    check_map(mask, field_of_view, width, height)?;
    let at = |x: usize, y: usize| mask[y * width + x];
    let min_area = min_area_px(rules, width, height);

    let view = ColumnView::of(mask, field_of_view, width, height, classes);
    let fov_columns = view.fov_bottom.iter().filter(|b| b.is_some()).count();
    let field_of_view_px = view.field_of_view_px;
    let pleura_rows = &view.pleura_rows;
    let verdicts = b_line_verdicts(mask, width, height, classes, rules, &view)?;
    let b_lines = verdicts.counted.iter().filter(|&&c| c).count() as u32;
    let b_line_rejects = verdicts.counted.len() as u32 - b_lines;
    let mut under_b_lines = vec![false; width];
    for (&(x0, _, x1, _), _) in verdicts
        .boxes
        .iter()
        .zip(&verdicts.counted)
        .filter(|(_, c)| **c)
    {
        under_b_lines[x0..=x1].iter_mut().for_each(|c| *c = true);
    }
    let share_of_columns = |n: usize| {
        if fov_columns == 0 {
            0.0
        } else {
            n as f64 / fov_columns as f64
        }
    };
    let b_line_coverage = share_of_columns(under_b_lines.iter().filter(|&&c| c).count());

    // A-lines.
    let a = label_class(mask, width, height, classes.a_line, Connectivity::Eight)?;
    let mut spans = vec![(usize::MAX, 0usize); a.count];
    for y in 0..height {
        for x in 0..width {
            let label = a.labels[y * width + x] as usize;
            if label > 0 {
                spans[label - 1].0 = spans[label - 1].0.min(x);
                spans[label - 1].1 = spans[label - 1].1.max(x);
            }
        }
    }
    let min_a_width = rules.min_a_line_width * width as f64;
    let a_lines = spans
        .iter()
        .zip(&a.areas)
        .filter(|&(&(x0, x1), &area)| area >= min_area && (x1 - x0 + 1) as f64 >= min_a_width)
        .count() as u32;

    // The pleural line.
    let columns: Vec<(f64, f64, usize)> = pleura_rows
        .iter()
        .enumerate()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(x, rows)| {
            let centre = rows.iter().sum::<usize>() as f64 / rows.len() as f64;
            (x as f64, centre, rows.len())
        })
        .collect();
    let pleura_length = share_of_columns(columns.len());
    let pleura_thickness_px = if columns.is_empty() {
        f64::NAN
    } else {
        columns.iter().map(|c| c.2 as f64).sum::<f64>() / columns.len() as f64
    };
    let pleura_irregularity_px = quadratic_rms_residual(&columns);
    let pleura_gaps = match (columns.first(), columns.last()) {
        (Some(first), Some(last)) => {
            let has_rib = |x: usize| {
                classes
                    .rib
                    .is_some_and(|r| (0..height).any(|y| at(x, y) == r))
            };
            let mut gaps = 0u32;
            let mut run = 0usize;
            let (first, last) = (first.0 as usize, last.0 as usize);
            for (x, rows) in pleura_rows.iter().enumerate().take(last + 1).skip(first) {
                if rows.is_empty() && !has_rib(x) {
                    run += 1;
                } else {
                    if run >= 2 {
                        gaps += 1;
                    }
                    run = 0;
                }
            }
            gaps
        }
        _ => 0,
    };

    let area_share = |class: Option<u8>| match class {
        Some(c) if field_of_view_px > 0 => {
            mask.iter().filter(|&&v| v == c).count() as f64 / field_of_view_px as f64
        }
        _ => 0.0,
    };
    let findings = FrameFindings {
        b_lines,
        b_line_rejects,
        b_line_coverage,
        a_lines,
        pleura_length,
        pleura_thickness_px,
        pleura_irregularity_px,
        pleura_gaps,
        consolidation_area: area_share(classes.consolidation),
        effusion_area: area_share(classes.effusion),
        field_of_view_px,
    };
    Ok(FrameReading {
        findings,
        b_lines: verdicts,
    })
}

/// Per column of a map: the lowest field-of-view row, the pleural rows.
struct ColumnView {
    fov_bottom: Vec<Option<usize>>,
    field_of_view_px: usize,
    pleura_rows: Vec<Vec<usize>>,
}

impl ColumnView {
    fn of(
        mask: &[u8],
        field_of_view: Option<&[bool]>,
        width: usize,
        height: usize,
        classes: &FindingClasses,
    ) -> Self {
        let mut fov_bottom: Vec<Option<usize>> = vec![None; width];
        let mut field_of_view_px = 0usize;
        let mut pleura_rows: Vec<Vec<usize>> = vec![Vec::new(); width];
        for y in 0..height {
            for x in 0..width {
                let class = mask[y * width + x];
                let inside = field_of_view.is_some_and(|f| f[y * width + x]);
                if inside || class != classes.background {
                    fov_bottom[x] = Some(y);
                    field_of_view_px += 1;
                }
                if class == classes.pleural_line {
                    pleura_rows[x].push(y);
                }
            }
        }
        ColumnView {
            fov_bottom,
            field_of_view_px,
            pleura_rows,
        }
    }
}

/// The `b-line` components of a map and the rule's verdict on each.
#[derive(Debug, Clone)]
pub struct BLineVerdicts {
    /// The components (8-neighbour) of the `b-line` class.
    pub components: crate::components::Components,
    /// Bounding box of component `k + 1`: first column, top row, last column, bottom row.
    pub boxes: Vec<(usize, usize, usize, usize)>,
    /// Whether component `k + 1` counts as a B-line.
    pub counted: Vec<bool>,
}

fn check_map(
    mask: &[u8],
    field_of_view: Option<&[bool]>,
    width: usize,
    height: usize,
) -> Result<()> {
    if mask.len() != width * height
        || width == 0
        || height == 0
        || field_of_view.is_some_and(|f| f.len() != mask.len())
    {
        return Err(MetricsError::InvalidInput(format!(
            "lung findings: a {width}x{height} map needs {} class ids (and field-of-view \
             flags), got {} ({})",
            width * height,
            mask.len(),
            field_of_view.map_or("no field of view".to_string(), |f| f.len().to_string())
        )));
    }
    Ok(())
}

fn b_line_verdicts(
    mask: &[u8],
    width: usize,
    height: usize,
    classes: &FindingClasses,
    rules: &FindingRules,
    view: &ColumnView,
) -> Result<BLineVerdicts> {
    let min_area = min_area_px(rules, width, height);
    let b = label_class(mask, width, height, classes.b_line, Connectivity::Eight)?;
    let mut boxes = vec![(usize::MAX, usize::MAX, 0usize, 0usize); b.count];
    for y in 0..height {
        for x in 0..width {
            let label = b.labels[y * width + x] as usize;
            if label > 0 {
                let bx = &mut boxes[label - 1];
                bx.0 = bx.0.min(x);
                bx.1 = bx.1.min(y);
                bx.2 = bx.2.max(x);
                bx.3 = bx.3.max(y);
            }
        }
    }
    let gap = (rules.pleura_gap * height as f64).ceil() as usize;
    let counted = boxes
        .iter()
        .zip(&b.areas)
        .map(|(&(x0, top, x1, bottom), &area)| {
            let window = x0.saturating_sub(gap)..=(x1 + gap).min(width - 1);
            let at_pleura = view.pleura_rows[window]
                .iter()
                .flatten()
                .any(|&row| row.abs_diff(top) <= gap);
            let floor = view.fov_bottom[x0..=x1]
                .iter()
                .flatten()
                .max()
                .copied()
                .unwrap_or(bottom);
            let reach = if floor > top {
                (bottom - top) as f64 / (floor - top) as f64
            } else {
                1.0
            };
            area >= min_area && at_pleura && reach >= rules.min_reach
        })
        .collect();
    Ok(BLineVerdicts {
        components: b,
        boxes,
        counted,
    })
}

fn min_area_px(rules: &FindingRules, width: usize, height: usize) -> usize {
    ((rules.min_area * (width * height) as f64).ceil() as usize).max(3)
}

/// The RMS residual of the least-squares quadratic `y = a + b x + c x^2` through the points
/// `(x, y, _)`; NaN with fewer than 4 points (3 points fit exactly: no residual to speak of).
fn quadratic_rms_residual(points: &[(f64, f64, usize)]) -> f64 {
    let n = points.len();
    if n < 4 {
        return f64::NAN;
    }
    // Centred and scaled x keeps the normal equations well conditioned at any width.
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n as f64;
    let scale = points
        .iter()
        .map(|p| (p.0 - mean_x).abs())
        .fold(0.0f64, f64::max)
        .max(1.0);
    let mut ata = [[0.0f64; 3]; 3];
    let mut aty = [0.0f64; 3];
    for &(x, y, _) in points {
        let t = (x - mean_x) / scale;
        let row = [1.0, t, t * t];
        for i in 0..3 {
            aty[i] += row[i] * y;
            for j in 0..3 {
                ata[i][j] += row[i] * row[j];
            }
        }
    }
    let Some(coef) = solve3(ata, aty) else {
        return f64::NAN;
    };
    let sum_sq: f64 = points
        .iter()
        .map(|&(x, y, _)| {
            let t = (x - mean_x) / scale;
            let fit = coef[0] + coef[1] * t + coef[2] * t * t;
            (y - fit).powi(2)
        })
        .sum();
    (sum_sq / n as f64).sqrt()
}

/// Solves the 3x3 system by Gaussian elimination with partial pivoting; `None` if singular.
fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let pivot = (col..3).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..3 {
            let f = a[row][col] / a[col][col];
            let pivot_row = a[col];
            for (value, above) in a[row].iter_mut().zip(pivot_row).skip(col) {
                *value -= f * above;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; 3];
    for row in (0..3).rev() {
        let rest: f64 = (row + 1..3).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - rest) / a[row][row];
    }
    Some(x)
}

/// A clip's summary, the numbers a clinician reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipFindings {
    pub frames: usize,
    pub b_lines_max: u32,
    pub b_lines_mean: f64,
    /// Share of frames with at least `b_pattern` B-lines.
    pub b_pattern_share: f64,
    /// Share of frames with A-lines and fewer than `b_pattern` B-lines.
    pub a_pattern_share: f64,
    /// Share of frames with any counted A-line.
    pub a_lines_share: f64,
    /// Mean over frames of the consolidation and effusion areas (shares of the field of view).
    pub consolidation_area_mean: f64,
    pub effusion_area_mean: f64,
    /// Mean over the frames where it is defined (NaN if none).
    pub pleura_irregularity_px_mean: f64,
}

/// Summarises a clip's frames (an error for none).
pub fn clip_findings(frames: &[FrameFindings], rules: &FindingRules) -> Result<ClipFindings> {
    if frames.is_empty() {
        return Err(MetricsError::InvalidInput(
            "a clip summary needs at least one frame".into(),
        ));
    }
    let n = frames.len() as f64;
    let share =
        |f: &dyn Fn(&FrameFindings) -> bool| frames.iter().filter(|x| f(x)).count() as f64 / n;
    let mean = |f: &dyn Fn(&FrameFindings) -> f64| frames.iter().map(f).sum::<f64>() / n;
    let defined: Vec<f64> = frames
        .iter()
        .map(|f| f.pleura_irregularity_px)
        .filter(|v| v.is_finite())
        .collect();
    Ok(ClipFindings {
        frames: frames.len(),
        b_lines_max: frames.iter().map(|f| f.b_lines).max().unwrap_or(0),
        b_lines_mean: mean(&|f| f64::from(f.b_lines)),
        b_pattern_share: share(&|f| f.b_pattern(rules)),
        a_pattern_share: share(&|f| f.a_pattern(rules)),
        a_lines_share: share(&|f| f.a_lines > 0),
        consolidation_area_mean: mean(&|f| f.consolidation_area),
        effusion_area_mean: mean(&|f| f.effusion_area),
        pleura_irregularity_px_mean: if defined.is_empty() {
            f64::NAN
        } else {
            defined.iter().sum::<f64>() / defined.len() as f64
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BG: u8 = 0;
    const WALL: u8 = 1;
    const RIB: u8 = 2;
    const PL: u8 = 3;
    const A: u8 = 4;
    const B: u8 = 5;
    const LUNG: u8 = 6;
    const CONS: u8 = 7;

    fn classes() -> FindingClasses {
        FindingClasses {
            background: BG,
            pleural_line: PL,
            a_line: A,
            b_line: B,
            rib: Some(RIB),
            consolidation: Some(CONS),
            effusion: Some(8),
        }
    }

    /// A 64x64 linear field of view: chest wall above row 16, pleura rows 16-17, lung below.
    fn base() -> Vec<u8> {
        let mut m = vec![LUNG; 64 * 64];
        for y in 0..16 {
            m[y * 64..(y + 1) * 64].fill(WALL);
        }
        for y in 16..18 {
            m[y * 64..(y + 1) * 64].fill(PL);
        }
        m
    }

    fn paint(m: &mut [u8], x0: usize, x1: usize, y0: usize, y1: usize, class: u8) {
        for y in y0..y1 {
            for x in x0..x1 {
                m[y * 64 + x] = class;
            }
        }
    }

    fn findings(m: &[u8]) -> FrameFindings {
        frame_findings(m, None, 64, 64, &classes(), &FindingRules::default()).unwrap()
    }

    #[test]
    fn counts_b_lines_from_the_pleura_to_the_bottom_and_rejects_short_or_floating_ones() {
        let mut m = base();
        paint(&mut m, 5, 8, 18, 64, B); // a B-line
        paint(&mut m, 20, 23, 18, 64, B); // a second
        paint(&mut m, 30, 42, 18, 64, B); // a confluent band: one
        paint(&mut m, 50, 52, 18, 26, B); // a comet tail: fades after 8 rows
        paint(&mut m, 56, 58, 40, 64, B); // floating: does not start at the pleura
        paint(&mut m, 61, 62, 30, 31, B); // a speck
        let f = findings(&m);
        assert_eq!(f.b_lines, 3);
        assert_eq!(f.b_line_rejects, 3);
        assert!((f.b_line_coverage - (3 + 3 + 12) as f64 / 64.0).abs() < 1e-12);
        assert!(!f.a_pattern(&FindingRules::default()));
        assert!(f.b_pattern(&FindingRules::default()));
    }

    #[test]
    fn a_sparse_map_measures_reach_against_the_frames_field_of_view() {
        // Sparse labels: background everywhere but on the lines.
        let mut m = vec![BG; 64 * 64];
        paint(&mut m, 0, 64, 16, 18, PL);
        paint(&mut m, 10, 12, 18, 64, B); // reaches the bottom
        paint(&mut m, 30, 32, 18, 26, B); // a comet tail
        let alone = findings(&m);
        assert_eq!(
            alone.b_lines, 2,
            "without a field of view every stroke reaches its own end"
        );
        let fov = vec![true; 64 * 64];
        let rules = FindingRules::default();
        let f = frame_findings(&m, Some(&fov), 64, 64, &classes(), &rules).unwrap();
        assert_eq!((f.b_lines, f.b_line_rejects), (1, 1));
        assert_eq!(f.field_of_view_px, 4096);
        assert!(frame_findings(&m, Some(&fov[1..]), 64, 64, &classes(), &rules).is_err());
    }

    #[test]
    fn a_b_line_beside_a_pleural_gap_still_starts_at_the_pleura() {
        let mut m = base();
        paint(&mut m, 20, 30, 16, 18, LUNG); // a 10-column gap in the pleura
        // Under the gap, 2 columns from its left end (within the 4-pixel window)...
        paint(&mut m, 22, 24, 18, 64, B);
        // ...and in its middle, 4 columns from either end plus its own width: too far.
        paint(&mut m, 25, 26, 18, 64, B);
        let f = findings(&m);
        assert_eq!((f.b_lines, f.b_line_rejects), (1, 1), "{f:?}");
        assert_eq!(f.pleura_gaps, 1);
        assert!((f.pleura_length - 54.0 / 64.0).abs() < 1e-12);
    }

    #[test]
    fn a_lines_pleura_and_areas() {
        let mut m = base();
        paint(&mut m, 4, 40, 32, 34, A);
        paint(&mut m, 50, 51, 32, 34, A); // one column: too narrow
        paint(&mut m, 10, 20, 40, 50, CONS);
        let f = findings(&m);
        assert_eq!(f.a_lines, 1);
        assert!(f.a_pattern(&FindingRules::default()));
        assert_eq!(f.b_lines, 0);
        assert!((f.pleura_thickness_px - 2.0).abs() < 1e-12);
        assert!(
            f.pleura_irregularity_px.abs() < 1e-9,
            "a flat pleura is regular"
        );
        assert_eq!(f.pleura_gaps, 0);
        assert!((f.consolidation_area - 100.0 / 4096.0).abs() < 1e-12);
        assert_eq!(f.effusion_area, 0.0);
        assert_eq!(f.field_of_view_px, 4096);
    }

    #[test]
    fn a_curved_pleura_is_regular_and_a_jagged_one_is_not() {
        let curve = |x: usize| 20.0 + 0.004 * (x as f64 - 32.0).powi(2);
        let mut smooth = vec![LUNG; 64 * 64];
        let mut jagged = vec![LUNG; 64 * 64];
        for x in 0..64 {
            let y = curve(x).round() as usize;
            smooth[y * 64 + x] = PL;
            let jag = if x % 4 < 2 { y } else { y + 3 };
            jagged[jag * 64 + x] = PL;
        }
        let s = findings(&smooth).pleura_irregularity_px;
        let j = findings(&jagged).pleura_irregularity_px;
        assert!(s < 0.35, "rounding only: {s}");
        assert!(j > 1.3, "{j}");
    }

    #[test]
    fn the_field_of_view_and_rib_shadows() {
        // A convex-like fan: background in the corners; a rib shadow splits the pleura.
        let mut m = base();
        paint(&mut m, 0, 64, 0, 4, BG);
        paint(&mut m, 28, 36, 10, 64, RIB);
        paint(&mut m, 40, 42, 18, 64, B);
        let f = findings(&m);
        assert_eq!(f.pleura_gaps, 0, "a rib shadow is not a pleural gap");
        assert_eq!(f.b_lines, 1);
        assert_eq!(f.field_of_view_px, 4096 - 4 * 64);
    }

    #[test]
    fn edge_cases_empty_and_wrong_sizes() {
        let empty = vec![BG; 64 * 64];
        let f = findings(&empty);
        assert_eq!((f.b_lines, f.a_lines, f.pleura_gaps), (0, 0, 0));
        assert!(f.pleura_thickness_px.is_nan() && f.pleura_irregularity_px.is_nan());
        assert_eq!((f.b_line_coverage, f.consolidation_area), (0.0, 0.0));
        let err = frame_findings(&empty, None, 10, 10, &classes(), &FindingRules::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("10x10"), "{err}");
        let bad = FindingRules {
            min_reach: 0.0,
            ..FindingRules::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("min_reach")
        );
        let names: Vec<String> = ["background", "lung"].map(String::from).to_vec();
        let err = FindingClasses::from_names(&names).unwrap_err().to_string();
        assert!(err.contains("pleural-line"), "{err}");
    }

    #[test]
    fn clip_summary() {
        let rules = FindingRules::default();
        let mut frames = Vec::new();
        for (b, a) in [(0, 1), (1, 1), (3, 0), (5, 1)] {
            let mut m = base();
            if a > 0 {
                paint(&mut m, 62, 64, 30, 32, A); // too narrow to count
                paint(&mut m, 1, 60, 36, 38, A);
            }
            // B-lines cut the A-lines (painted over them, as the dense recipe's layers do).
            for k in 0..b {
                paint(&mut m, 2 + 10 * k, 4 + 10 * k, 18, 64, B);
            }
            frames.push(findings(&m));
        }
        assert_eq!(
            frames.iter().map(|f| f.b_lines).collect::<Vec<_>>(),
            [0, 1, 3, 5]
        );
        let clip = clip_findings(&frames, &rules).unwrap();
        assert_eq!(clip.frames, 4);
        assert_eq!(clip.b_lines_max, 5);
        assert!((clip.b_lines_mean - 2.25).abs() < 1e-12);
        assert!((clip.b_pattern_share - 0.5).abs() < 1e-12);
        assert!((clip.a_pattern_share - 0.5).abs() < 1e-12, "{clip:?}");
        assert!((clip.a_lines_share - 0.75).abs() < 1e-12);
        assert!(clip_findings(&[], &rules).is_err());
    }
}
