//! Rasterization: one vector [`Annotation`] becomes one class-id [`Mask`], drawn by a
//! [`LabelRecipe`] (dense, sparse, or any other: see [`crate::recipe`]). Every recipe draws from
//! the same annotation, so the pretrainings see the same images and differ only in labelling.
//!
//! # Pixel rule
//! Coordinates follow [`crate::annotation`]: pixel `(i, j)` covers `[i, i+1) x [j, j+1)`. A pixel
//! belongs to a region when its **centre** `(i + 0.5, j + 0.5)` lies inside it (tiny-skia's
//! non-anti-aliased fill). A rectangle from x = 1.6 to 5.4 therefore covers columns 2, 3 and 4
//! only. tiny-skia snaps coordinates to 1/64 px, so a centre lying exactly on an edge (or within
//! 1/64 px of it) may go either way; annotations should not rely on such ties. Fills use the
//! non-zero winding rule: an annotator's polygon that loops over itself is filled, not holed.
//!
//! # Order, field of view, unknown pixels
//! - Pixels outside the field of view (`annotation.field_of_view`; `None` = the whole image) are
//!   background (id 0); everything is clipped to the field of view.
//! - Inside it, a pixel covered by no drawn shape gets [`RasterOptions::ignore_id`] when the
//!   recipe says `unlabelled = "ignore"` (dense labels do) and an ignore id is set, else
//!   background 0. A shape labelled `background` paints 0 explicitly, which is how an annotator
//!   marks "known to be nothing" under an ignore id.
//! - Shapes are painted in order of their class's schema `layer` (higher on top); shapes of equal
//!   layers keep annotation order (later on top). The mask therefore does not depend on the order
//!   an annotator drew shapes of different layers in. A class the recipe turns `off` is skipped
//!   (`off = "hidden"`) or painted at full extent with the ignore id (`off = "ignore"`), at its
//!   layer like any other. The background class is always drawn (id 0) unless the recipe
//!   names it (see [`crate::recipe`]).
//!
//! # Full extent (`full`)
//! `Polygon` -> the filled polygon. `Polyline` -> a stroke of its `width`: the points within
//! `width / 2` of the polyline, with **butt caps** (the stroke ends exactly at the first and last
//! point, which is what the extent of an A-line band means) and **round joins** (a bend never
//! throws a miter spike further than `width / 2` from the line; the join is the circular wedge
//! between the two segments' ends, as in SVG). The stroke is the union of one rectangle per
//! segment and one wedge per bend (arc within 0.005 px), each filled by tiny-skia on its own, so
//! it stays exact where a sharp turn folds the stroke over itself (neighbouring pieces overlap by
//! 1/16 px so that no crack opens between them). `Band` -> its filled `outline`, plus its
//! `centerline` stroked [`DENSE_MIN_LINE_WIDTH_PX`] wide, so that a band thinner than a pixel
//! (whose fill can miss every pixel centre) still labels a continuous object; a full-extent
//! `Polyline` is at least that wide too.
//!
//! # Strokes (`stroke`)
//! A stroke of the recipe's width (in pixels of this image: [`crate::recipe::StrokeWidth`]) along
//! the centre line, with butt caps and round joins as above; with `clip_strokes` it is cut to the
//! shape's full extent, so it is never wider than the object: every pixel a clipped stroke
//! paints, the shape's `full` render paints too (exactly: the extent is filled in the same frame
//! as a `full` render fills it). Without `clip_strokes` (the legacy sparse labels,
//! [`RasterOptions::sparse`]) a stroke wider than its object reaches beyond it. Clipping or not,
//! strokes of different shapes cover each other by layer. Centre lines: `Polyline` -> its
//! points (its `width` is not used); `Band` -> its `centerline`; `Polygon` (an annotator outlined
//! an A-line) -> the centre line [`derived_centerline`] computes from the polygon:
//! 1. the principal axis is the major axis of the polygon's **area** (second moments of the
//!    filled region, so vertex density does not tilt it); a region with equal moments (a
//!    square, a disc) gets the horizontal axis;
//! 2. at stations every [`CENTERLINE_STATION_SPACING_PX`] along the axis (centred in equal
//!    intervals between the extreme projections of the vertices), the perpendicular to the axis
//!    is intersected with the polygon's edges and the midpoint of the two **extreme** crossings
//!    is taken (so a concave outline contributes its full width; a C-shaped outline whose
//!    perpendiculars cross both arms gets a midline between the arms, not inside either);
//! 3. the line is extended along the axis to the extreme projections, keeping the first and
//!    last station's offset, so it spans the whole object (a rectangle gives exactly its long
//!    axis), and then simplified (Ramer-Douglas-Peucker, [`CENTERLINE_SIMPLIFY_TOLERANCE_PX`]).
//!
//! # Degenerate geometry
//! [`rasterize`] validates the annotation first (an invalid one is an error naming the shape).
//! Geometry that is valid but paints no pixel centre (a stroke outside the field of view, a
//! sliver polygon between two pixel centres) just paints nothing.
//!
//! # Cost
//! Each part of a shape (a band's outline and its centre line are two) is filled into a
//! coverage buffer the size of its bounding box (clipped to the image; a clipped stroke into one
//! the size of its full extent's box), not of the whole image, and composited from there; a [`Rasterizer`] keeps its
//! buffers between calls, so a worker thread that keeps one allocates little per mask.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tiny_skia::{FillRule, IntSize, PathBuilder, Transform};

use crate::annotation::{Annotation, Geometry, Point};
use crate::error::{DataError, Result};
use crate::image_io::MAX_IMAGE_SIDE;
use crate::mask::Mask;
use crate::recipe::{ClassRender, LabelRecipe, OffAs, Unlabelled};
use crate::schema::LabelSchema;

/// Smallest width (px) a line object gets at full extent (see the module documentation).
pub const DENSE_MIN_LINE_WIDTH_PX: f32 = 1.0;

/// Distance between stations along the principal axis when a centre line is derived from a
/// polygon (pixels). One pixel follows any curvature a mask can show.
pub const CENTERLINE_STATION_SPACING_PX: f32 = 1.0;

/// Largest deviation (pixels) the simplification of a derived centre line may introduce.
pub const CENTERLINE_SIMPLIFY_TOLERANCE_PX: f32 = 0.25;

/// Rasterization settings: a label recipe and the ignore id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RasterOptions {
    /// Which classes are drawn, and how (see [`crate::recipe`]).
    pub recipe: LabelRecipe,
    /// The id of pixels the recipe leaves unknown (`unlabelled = "ignore"`, `off = "ignore"`).
    /// Must not be a class id of the schema (255 is customary).
    pub ignore_id: Option<u8>,
}

impl Default for RasterOptions {
    fn default() -> Self {
        RasterOptions::dense()
    }
}

impl RasterOptions {
    /// Dense labels, no ignore id.
    pub fn dense() -> Self {
        RasterOptions::recipe(LabelRecipe::dense())
    }

    /// lus's sparse labels before recipes: strokes `sparse_width` pixels wide at any image
    /// size, not clipped to their objects ([`LabelRecipe::legacy_sparse`]).
    pub fn sparse(sparse_width: f32) -> Self {
        RasterOptions::recipe(LabelRecipe::legacy_sparse(sparse_width))
    }

    /// `recipe`, no ignore id.
    pub fn recipe(recipe: LabelRecipe) -> Self {
        RasterOptions {
            recipe,
            ignore_id: None,
        }
    }

    /// Checks the options against a schema: a valid recipe, an ignore id that is not a class
    /// id, and an ignore id wherever the recipe draws objects as ignored.
    pub fn validate(&self, schema: &LabelSchema) -> Result<()> {
        self.recipe.validate(schema)?;
        if let Some(id) = self.ignore_id
            && let Some(class) = schema.class(id)
        {
            return Err(DataError::config(
                "raster options",
                format!(
                    "ignore_id {id} is the id of class {:?} of schema {:?}; the ignore id must \
                     not be a class id (classes use 0..{}, 255 is customary)",
                    class.name,
                    schema.name(),
                    schema.num_classes()
                ),
            ));
        }
        if self.ignore_id.is_none()
            && self.recipe.off == OffAs::Ignore
            && self.recipe.renders(schema).contains(&ClassRender::Off)
        {
            return Err(DataError::config(
                "raster options",
                format!(
                    "label recipe {:?} draws its off classes with the ignore id (off = \"ignore\"), \
                     but no ignore id is set",
                    self.recipe.name
                ),
            ));
        }
        Ok(())
    }
}

/// Rasterizes `annotation` with `options` (see the module documentation for the semantics).
/// Validates the options and the annotation first. For many masks on one thread, keep a
/// [`Rasterizer`] instead: it reuses its buffers.
pub fn rasterize(
    annotation: &Annotation,
    schema: &LabelSchema,
    options: &RasterOptions,
) -> Result<Mask> {
    Rasterizer::new().rasterize(annotation, schema, options)
}

/// The centre line a stroke follows for a polygon (see the module
/// documentation for the construction), from one end of the principal axis to the other.
/// `None` when the polygon has fewer than 3 points, non-finite coordinates or no extent.
pub fn derived_centerline(polygon: &[Point]) -> Option<Vec<Point>> {
    let mut scratch = CenterlineScratch::default();
    let mut line = Vec::new();
    derive_centerline_into(polygon, &mut scratch, &mut line).then_some(line)
}

/// A rasterizer that keeps its work buffers between calls (one per worker thread).
#[derive(Default)]
pub struct Rasterizer {
    /// Coverage of the shape being painted, over its bounding box (0 or 255 per pixel).
    coverage: Vec<u8>,
    /// Coverage of the full extent a clipped stroke is cut to, over the same box.
    extent: Vec<u8>,
    /// Coverage of one part of that extent, over the part's own box.
    part: Vec<u8>,
    /// Coverage of the field of view over the whole image.
    field_of_view: Vec<u8>,
    /// A path builder whose allocations are reused.
    builder: Option<PathBuilder>,
    /// One piece (rectangle or join wedge) of a stroke, before it is added to the path.
    piece: Vec<[f64; 2]>,
    /// The vertices of the stroke being built.
    stroke_vertices: Vec<[f64; 2]>,
    /// (layer, shape index, id, how) of the shapes to paint.
    order: Vec<(i32, usize, u8, Draw)>,
    /// The schema `labels` were resolved against.
    labels_schema: Option<LabelSchema>,
    /// Labels seen so far, resolved against `labels_schema`.
    labels: Vec<ResolvedLabel>,
    centerline: Vec<Point>,
    centerline_scratch: CenterlineScratch,
}

impl fmt::Debug for Rasterizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rasterizer")
            .field("coverage_capacity", &self.coverage.capacity())
            .field("field_of_view_capacity", &self.field_of_view.capacity())
            .finish_non_exhaustive()
    }
}

/// At most this many label spellings are kept resolved (a guard against an endless stream of
/// spellings; a schema has a few dozen).
const MAX_CACHED_LABELS: usize = 1024;

/// A label as written in annotations, with what rasterization needs of its class.
struct ResolvedLabel {
    label: String,
    id: u8,
    layer: i32,
}

/// How one shape is drawn, from its class's render in the recipe.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Draw {
    /// Its full extent.
    Full,
    /// A stroke of `width` pixels along its centre line, cut to its full extent if `clip`.
    Stroke { width: f32, clip: bool },
}

/// What to paint for one part of a shape.
#[derive(Clone, Copy)]
enum Paint {
    /// Fill the closed polygon.
    Fill,
    /// Stroke the open polyline at this full width.
    Stroke(f32),
}

/// The mask being painted, with the field-of-view coverage that clips it.
struct Canvas<'a> {
    ids: &'a mut [u8],
    /// Full-image field-of-view coverage; `None` = the whole image.
    field_of_view: Option<&'a [u8]>,
    width: usize,
    height: usize,
}

impl Rasterizer {
    /// A rasterizer with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rasterizes `annotation` with `options`, like [`rasterize`].
    pub fn rasterize(
        &mut self,
        annotation: &Annotation,
        schema: &LabelSchema,
        options: &RasterOptions,
    ) -> Result<Mask> {
        options.validate(schema)?;
        let source = annotation_source(annotation);
        if annotation.width > MAX_IMAGE_SIDE || annotation.height > MAX_IMAGE_SIDE {
            return Err(DataError::Annotation {
                path: source,
                reason: format!(
                    "image size {}x{} exceeds the largest supported side of {MAX_IMAGE_SIDE} px",
                    annotation.width, annotation.height
                ),
            });
        }
        annotation.validate(schema, &source)?;
        let (width, height) = (annotation.width as usize, annotation.height as usize);
        let mut ids = vec![0u8; width * height];

        // The field of view is filled once over the whole image; every shape is clipped to it.
        let mut field_of_view = std::mem::take(&mut self.field_of_view);
        let has_field_of_view = match &annotation.field_of_view {
            Some(polygon) => {
                field_of_view.clear();
                field_of_view.resize(width * height, 0);
                field_of_view = self.fill_full_image(polygon, field_of_view, width, height);
                true
            }
            None => false,
        };

        if options.recipe.unlabelled == Unlabelled::Ignore
            && let Some(ignore) = options.ignore_id
        {
            if has_field_of_view {
                for (id, &inside) in ids.iter_mut().zip(&field_of_view) {
                    if inside != 0 {
                        *id = ignore;
                    }
                }
            } else {
                ids.fill(ignore);
            }
        }

        self.order.clear();
        // A schema lookup normalizes every class name and alias, so resolved labels are kept
        // between calls for as long as the schema stays the same.
        if self.labels_schema.as_ref() != Some(schema) || self.labels.len() > MAX_CACHED_LABELS {
            self.labels_schema = Some(schema.clone());
            self.labels.clear();
        }
        let renders = options.recipe.renders(schema);
        let stroke_width = options.recipe.stroke_width.pixels(annotation.width);
        for (index, shape) in annotation.shapes.iter().enumerate() {
            let known = self.labels.iter().find(|l| l.label == shape.label);
            let label = match known {
                Some(label) => label,
                None => {
                    // Validation resolved every label; this cannot fail, but stays an error.
                    let class =
                        schema
                            .resolve(&shape.label)
                            .map_err(|reason| DataError::Shape {
                                path: source.clone(),
                                index,
                                label: shape.label.clone(),
                                reason,
                            })?;
                    self.labels.push(ResolvedLabel {
                        label: shape.label.clone(),
                        id: class.id,
                        layer: class.layer,
                    });
                    self.labels.last().expect("just pushed")
                }
            };
            let (draw, id) = match renders[usize::from(label.id)] {
                ClassRender::Full => (Draw::Full, label.id),
                ClassRender::Stroke => (
                    Draw::Stroke {
                        width: stroke_width,
                        clip: options.recipe.clip_strokes,
                    },
                    label.id,
                ),
                ClassRender::Off => match (options.recipe.off, options.ignore_id) {
                    (OffAs::Ignore, Some(ignore)) => (Draw::Full, ignore),
                    // `validate` rejects `off = "ignore"` without an ignore id.
                    _ => continue,
                },
            };
            self.order.push((label.layer, index, id, draw));
        }
        // The index breaks ties, so equal layers keep annotation order.
        self.order
            .sort_unstable_by_key(|&(layer, index, _, _)| (layer, index));

        let mut canvas = Canvas {
            ids: &mut ids,
            field_of_view: has_field_of_view.then_some(field_of_view.as_slice()),
            width,
            height,
        };
        let order = std::mem::take(&mut self.order);
        for &(_, index, id, draw) in &order {
            self.draw_shape(&annotation.shapes[index].geometry, draw, id, &mut canvas);
        }
        self.order = order;
        self.field_of_view = field_of_view;
        Ok(Mask::from_raw(annotation.width, annotation.height, ids)
            .expect("the buffer has width * height ids"))
    }

    /// Fills `polygon` into `buffer` (zeroed, `width * height`) and returns the buffer.
    fn fill_full_image(
        &mut self,
        polygon: &[Point],
        buffer: Vec<u8>,
        width: usize,
        height: usize,
    ) -> Vec<u8> {
        let Some(path) = self.build_path(polygon, [0.0, 0.0], true) else {
            return buffer;
        };
        let Some(mut mask) = IntSize::from_wh(width as u32, height as u32)
            .and_then(|size| tiny_skia::Mask::from_vec(buffer, size))
        else {
            unreachable!("validated non-empty size and a buffer of that size")
        };
        mask.fill_path(&path, FillRule::Winding, false, Transform::identity());
        self.builder = Some(path.clear());
        mask.take()
    }

    /// Builds the path through `points` shifted by `-offset`, reusing the builder's memory.
    fn build_path(
        &mut self,
        points: &[Point],
        offset: Point,
        close: bool,
    ) -> Option<tiny_skia::Path> {
        let mut builder = self.builder.take().unwrap_or_default();
        let mut iter = points.iter();
        let first = iter.next()?;
        builder.move_to(first[0] - offset[0], first[1] - offset[1]);
        for p in iter {
            builder.line_to(p[0] - offset[0], p[1] - offset[1]);
        }
        if close {
            builder.close();
        }
        builder.finish()
    }

    /// Fills into `coverage` the stroke of half width `half` along `line` shifted by `-offset`:
    /// one rectangle per segment (butt ends) and one circular wedge per interior vertex (the
    /// round join), each filled on its own, so the coverage is their union.
    ///
    /// Neither tiny-skia's stroker (`Path::stroke`) nor one multi-contour path is used: where
    /// the legs of a sharp turn overlap, the non-zero fill of tiny-skia 0.12 dropped pixels
    /// that every overlapping contour covers on its own (found by the property tests).
    fn fill_stroke(
        &mut self,
        coverage: &mut tiny_skia::Mask,
        line: &[Point],
        half: f32,
        offset: Point,
    ) {
        let mut piece = std::mem::take(&mut self.piece);
        let mut vertices = std::mem::take(&mut self.stroke_vertices);
        let half = f64::from(half);
        // The vertices in the box's frame, without repeats (a repeated point has no direction).
        vertices.clear();
        for p in line {
            let v = [f64::from(p[0] - offset[0]), f64::from(p[1] - offset[1])];
            if vertices.last() != Some(&v) {
                vertices.push(v);
            }
        }
        let segments = vertices.len().saturating_sub(1);
        let mut incoming: Option<[f64; 2]> = None;
        for (k, w) in vertices.windows(2).enumerate() {
            let (a, b) = (w[0], w[1]);
            let d = [b[0] - a[0], b[1] - a[1]];
            let length = d[0].hypot(d[1]);
            let d = [d[0] / length, d[1] / length];
            let n = [-d[1] * half, d[0] * half];
            // Pieces that meet at a vertex would abut along edges that each fill snaps to the
            // 1/64 px grid on its own, which can leave a crack a pixel centre falls into; so a
            // rectangle reaches `STROKE_OVERLAP_PX` past each vertex it shares.
            let back = if k > 0 { STROKE_OVERLAP_PX } else { 0.0 };
            let ahead = if k + 1 < segments {
                STROKE_OVERLAP_PX
            } else {
                0.0
            };
            let (a, b) = (
                [a[0] - back * d[0], a[1] - back * d[1]],
                [b[0] + ahead * d[0], b[1] + ahead * d[1]],
            );
            piece.clear();
            piece.extend([
                [a[0] + n[0], a[1] + n[1]],
                [b[0] + n[0], b[1] + n[1]],
                [b[0] - n[0], b[1] - n[1]],
                [a[0] - n[0], a[1] - n[1]],
            ]);
            self.fill_piece(coverage, &piece);
            if let Some(incoming) = incoming {
                join_wedge(w[0], incoming, d, half, &mut piece);
                self.fill_piece(coverage, &piece);
            }
            incoming = Some(d);
        }
        self.piece = piece;
        self.stroke_vertices = vertices;
    }

    /// Fills the closed convex polygon `piece` into `coverage`.
    fn fill_piece(&mut self, coverage: &mut tiny_skia::Mask, piece: &[[f64; 2]]) {
        let mut builder = self.builder.take().unwrap_or_default();
        for (i, p) in piece.iter().enumerate() {
            let (x, y) = (p[0] as f32, p[1] as f32);
            if i == 0 {
                builder.move_to(x, y);
            } else {
                builder.line_to(x, y);
            }
        }
        builder.close();
        if let Some(path) = builder.finish() {
            coverage.fill_path(&path, FillRule::Winding, false, Transform::identity());
            self.builder = Some(path.clear());
        }
    }

    /// Draws one shape with `id`: its full extent, or a stroke along its centre line (cut to
    /// the full extent when the stroke clips), clipped to the canvas's field of view.
    fn draw_shape(&mut self, geometry: &Geometry, draw: Draw, id: u8, canvas: &mut Canvas<'_>) {
        let full = full_extent(geometry);
        let mut line = std::mem::take(&mut self.centerline);
        match draw {
            Draw::Full => self.paint(&full, None, id, canvas),
            Draw::Stroke { width, clip } => {
                let centre: Option<&[Point]> = match geometry {
                    Geometry::Polyline { points, .. } => Some(points),
                    Geometry::Band { centerline, .. } => Some(centerline),
                    Geometry::Polygon { points } => {
                        derive_centerline_into(points, &mut self.centerline_scratch, &mut line)
                            .then_some(line.as_slice())
                    }
                };
                if let Some(centre) = centre {
                    let stroke = [Some((centre, Paint::Stroke(width))), None];
                    self.paint(&stroke, clip.then_some(&full), id, canvas);
                }
            }
        }
        self.centerline = line;
    }

    /// Paints the union of `parts` (filled polygons or stroked polylines) with `id`, cut to
    /// the union of `clip_to` when given, and clipped to the canvas's field of view.
    ///
    /// Every part of a full extent is covered in its own bounding box, as lus drew it before
    /// recipes: a stroke's pieces are computed relative to the box and rounded to `f32` there,
    /// so the box decides the last bits of their corners and, at a tie, a pixel. A clipped
    /// stroke is therefore cut to the union of those same per-part coverages: it never paints a
    /// pixel its object's `full` render does not, and the dense and legacy sparse masks are
    /// those from before recipes, bit for bit.
    fn paint(
        &mut self,
        parts: &Parts<'_>,
        clip_to: Option<&Parts<'_>>,
        id: u8,
        canvas: &mut Canvas<'_>,
    ) {
        let Some(extent_parts) = clip_to else {
            for &part in parts.iter().flatten() {
                let Some(frame) = parts_box(&[Some(part), None], canvas) else {
                    continue;
                };
                let buffer = std::mem::take(&mut self.coverage);
                let coverage = self.cover(&[Some(part), None], frame, buffer);
                composite(&coverage, frame, id, canvas);
                self.coverage = coverage;
            }
            return;
        };
        // The stroke is covered over the extent's box: its pixels outside lie outside the
        // extent anyway.
        let Some(frame) = parts_box(extent_parts, canvas) else {
            return;
        };
        let buffer = std::mem::take(&mut self.coverage);
        let mut coverage = self.cover(parts, frame, buffer);
        let mut extent = std::mem::take(&mut self.extent);
        extent.clear();
        extent.resize(coverage.len(), 0);
        let [x0, y0, x1, _] = frame;
        let width = x1 - x0;
        for &part in extent_parts.iter().flatten() {
            let Some(own) = parts_box(&[Some(part), None], canvas) else {
                continue;
            };
            let buffer = std::mem::take(&mut self.part);
            let covered = self.cover(&[Some(part), None], own, buffer);
            // The part's box lies inside the union box.
            let [px0, py0, px1, py1] = own;
            let part_width = px1 - px0;
            for row in 0..py1 - py0 {
                let from = &covered[row * part_width..(row + 1) * part_width];
                let start = (py0 - y0 + row) * width + (px0 - x0);
                for (e, &c) in extent[start..start + part_width].iter_mut().zip(from) {
                    *e |= c;
                }
            }
            self.part = covered;
        }
        for (c, &e) in coverage.iter_mut().zip(&extent) {
            *c &= e;
        }
        composite(&coverage, frame, id, canvas);
        self.extent = extent;
        self.coverage = coverage;
    }

    /// The coverage (0 or 255) of the union of `parts` over the box `[x0, y0, x1, y1]` of the
    /// image, in `buffer`'s memory.
    fn cover(&mut self, parts: &Parts<'_>, frame: [usize; 4], mut buffer: Vec<u8>) -> Vec<u8> {
        let [x0, y0, x1, y1] = frame;
        let (box_width, box_height) = (x1 - x0, y1 - y0);
        // Integer shifts are exact in f32 (the image is far below 2^24 px), so a fill in the
        // box's frame gives the same pixels as one in the image's.
        let offset = [x0 as f32, y0 as f32];
        buffer.clear();
        buffer.resize(box_width * box_height, 0);
        let Some(mut mask) = IntSize::from_wh(box_width as u32, box_height as u32)
            .and_then(|size| tiny_skia::Mask::from_vec(buffer, size))
        else {
            unreachable!("the box is non-empty and the buffer has its size")
        };
        for &(points, paint) in parts.iter().flatten() {
            match paint {
                Paint::Fill => {
                    if let Some(path) = self.build_path(points, offset, true) {
                        mask.fill_path(&path, FillRule::Winding, false, Transform::identity());
                        self.builder = Some(path.clear());
                    }
                }
                Paint::Stroke(width) => self.fill_stroke(&mut mask, points, width / 2.0, offset),
            }
        }
        mask.take()
    }
}

/// Up to two pieces of geometry painted as one object.
type Parts<'a> = [Option<(&'a [Point], Paint)>; 2];

/// Paints `id` where `coverage` (over the box `[x0, y0, x1, y1]`) and the field of view are set.
fn composite(coverage: &[u8], frame: [usize; 4], id: u8, canvas: &mut Canvas<'_>) {
    let [x0, y0, x1, y1] = frame;
    let box_width = x1 - x0;
    for row in 0..y1 - y0 {
        let covered = &coverage[row * box_width..(row + 1) * box_width];
        let start = (y0 + row) * canvas.width + x0;
        let ids = &mut canvas.ids[start..start + box_width];
        // Coverage and field of view are 0 or 255; `&` keeps the loop branch-free.
        match canvas.field_of_view {
            Some(fov) => {
                let inside = &fov[start..start + box_width];
                for ((v, &c), &f) in ids.iter_mut().zip(covered).zip(inside) {
                    *v = if c & f != 0 { id } else { *v };
                }
            }
            None => {
                for (v, &c) in ids.iter_mut().zip(covered) {
                    *v = if c != 0 { id } else { *v };
                }
            }
        }
    }
}

/// The union of the [`pixel_box`]es of `parts` as `[x0, y0, x1, y1]`; `None` when empty.
fn parts_box(parts: &Parts<'_>, canvas: &Canvas<'_>) -> Option<[usize; 4]> {
    let mut bounds: Option<[usize; 4]> = None;
    for &(points, paint) in parts.iter().flatten() {
        if let Some((x0, y0, w, h)) = pixel_box(points, paint, canvas.width, canvas.height) {
            let [a0, b0, a1, b1] = bounds.unwrap_or([x0, y0, x0 + w, y0 + h]);
            bounds = Some([a0.min(x0), b0.min(y0), a1.max(x0 + w), b1.max(y0 + h)]);
        }
    }
    bounds
}

/// The full extent of a shape: a polygon's fill; a polyline stroked at its width, at least
/// [`DENSE_MIN_LINE_WIDTH_PX`]; a band's outline filled plus its centre line stroked
/// [`DENSE_MIN_LINE_WIDTH_PX`] wide. Where a band is thinner than a pixel its fill can miss
/// every pixel centre (a thin pleural line in a 64 px frame): the centre line keeps the object
/// continuous.
fn full_extent(geometry: &Geometry) -> Parts<'_> {
    match geometry {
        Geometry::Polygon { points } => [Some((points, Paint::Fill)), None],
        Geometry::Polyline { points, width } => [
            Some((points, Paint::Stroke(width.max(DENSE_MIN_LINE_WIDTH_PX)))),
            None,
        ],
        Geometry::Band {
            outline,
            centerline,
        } => [
            Some((outline, Paint::Fill)),
            Some((centerline, Paint::Stroke(DENSE_MIN_LINE_WIDTH_PX))),
        ],
    }
}

/// Largest distance (pixels) between a join's true arc and the chords that stand for it.
const JOIN_FLATNESS_PX: f64 = 0.005;

/// How far (pixels) a stroke's rectangle reaches past a vertex it shares with the next piece,
/// so that neighbours overlap instead of abutting along edges that tiny-skia snaps and walks
/// separately (each within about 0.03 px). The stroke can gain this sliver beyond its exact
/// region only where a turn meets a segment shorter than the half width.
const STROKE_OVERLAP_PX: f64 = 1.0 / 16.0;

/// Writes into `piece` the round join at `vertex` between unit directions `incoming` and
/// `outgoing`: the circular sector of radius `half` of the points past the end of the incoming
/// segment and before the start of the outgoing one (the outer side of the turn). Its arc is
/// an inscribed polyline within [`JOIN_FLATNESS_PX`] of the circle.
fn join_wedge(
    vertex: [f64; 2],
    incoming: [f64; 2],
    outgoing: [f64; 2],
    half: f64,
    piece: &mut Vec<[f64; 2]>,
) {
    let turn = f64::atan2(
        incoming[0] * outgoing[1] - incoming[1] * outgoing[0],
        incoming[0] * outgoing[0] + incoming[1] * outgoing[1],
    );
    // The sector runs from the incoming segment's normal on the outer side through the turn.
    let start = incoming[1].atan2(incoming[0]) - turn.signum() * std::f64::consts::FRAC_PI_2;
    let max_step = 2.0 * (1.0 - (JOIN_FLATNESS_PX / half).min(1.0)).acos();
    let steps = ((turn.abs() / max_step).ceil() as usize).clamp(1, 1024);
    piece.clear();
    piece.push(vertex);
    piece.extend((0..=steps).map(|k| {
        let angle = start + turn * k as f64 / steps as f64;
        [
            vertex[0] + half * angle.cos(),
            vertex[1] + half * angle.sin(),
        ]
    }));
}

/// The pixels a shape can touch: `(x0, y0, width, height)` of its bounding box widened by half
/// the stroke width (round joins and butt caps stay within it) plus a pixel to spare, clipped
/// to the image. `None` when that box is empty.
fn pixel_box(
    points: &[Point],
    paint: Paint,
    width: usize,
    height: usize,
) -> Option<(usize, usize, usize, usize)> {
    let margin = match paint {
        Paint::Fill => 0.0,
        Paint::Stroke(w) => w / 2.0 + 1.0,
    };
    let (mut min, mut max) = ([f32::INFINITY; 2], [f32::NEG_INFINITY; 2]);
    for p in points {
        for k in 0..2 {
            min[k] = min[k].min(p[k]);
            max[k] = max[k].max(p[k]);
        }
    }
    if !(min[0].is_finite() && min[1].is_finite() && max[0].is_finite() && max[1].is_finite()) {
        return None;
    }
    let clamp = |v: f32, limit: usize| v.clamp(0.0, limit as f32) as usize;
    let x0 = clamp((min[0] - margin).floor(), width);
    let y0 = clamp((min[1] - margin).floor(), height);
    let x1 = clamp((max[0] + margin).ceil(), width);
    let y1 = clamp((max[1] + margin).ceil(), height);
    (x1 > x0 && y1 > y0).then_some((x0, y0, x1 - x0, y1 - y0))
}

/// The name errors give an annotation that has no file at hand.
fn annotation_source(annotation: &Annotation) -> PathBuf {
    match &annotation.image {
        Some(image) => PathBuf::from(format!("<annotation of {image}>")),
        None => PathBuf::from("<annotation>"),
    }
}

/// Scratch buffers of [`derive_centerline_into`].
#[derive(Default)]
struct CenterlineScratch {
    /// (t, s): each vertex's coordinates along and across the principal axis.
    frame: Vec<[f64; 2]>,
    /// (t, s) of the centre line before simplification.
    line: Vec<[f64; 2]>,
    keep: Vec<bool>,
    stack: Vec<(usize, usize)>,
}

/// The area centroid and unit major axis of a polygon, from the second moments of its filled
/// region (Green's theorem). `None` when the polygon has no area.
fn principal_axis(polygon: &[Point]) -> Option<([f64; 2], [f64; 2])> {
    let n = polygon.len() as f64;
    // Moments about the vertex mean, to keep the sums well conditioned far from the origin.
    let mean = polygon.iter().fold([0.0f64; 2], |acc, p| {
        [acc[0] + f64::from(p[0]) / n, acc[1] + f64::from(p[1]) / n]
    });
    let (mut twice_area, mut sx, mut sy, mut sxx, mut syy, mut sxy) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, p) in polygon.iter().enumerate() {
        let q = polygon[(i + 1) % polygon.len()];
        let (x0, y0) = (f64::from(p[0]) - mean[0], f64::from(p[1]) - mean[1]);
        let (x1, y1) = (f64::from(q[0]) - mean[0], f64::from(q[1]) - mean[1]);
        let cross = x0 * y1 - x1 * y0;
        twice_area += cross;
        sx += (x0 + x1) * cross;
        sy += (y0 + y1) * cross;
        sxx += (x0 * x0 + x0 * x1 + x1 * x1) * cross;
        syy += (y0 * y0 + y0 * y1 + y1 * y1) * cross;
        sxy += (x0 * y1 + 2.0 * x0 * y0 + 2.0 * x1 * y1 + x1 * y0) * cross;
    }
    let area = twice_area / 2.0;
    if !(area.abs() > 1e-9 && area.is_finite()) {
        return None;
    }
    let (cx, cy) = (sx / (6.0 * area), sy / (6.0 * area));
    let cov_xx = sxx / (12.0 * area) - cx * cx;
    let cov_yy = syy / (12.0 * area) - cy * cy;
    let cov_xy = sxy / (24.0 * area) - cx * cy;
    let angle = 0.5 * f64::atan2(2.0 * cov_xy, cov_xx - cov_yy);
    Some(([cx + mean[0], cy + mean[1]], [angle.cos(), angle.sin()]))
}

/// Writes the derived centre line of `polygon` into `out` (see the module documentation);
/// false when there is none.
fn derive_centerline_into(
    polygon: &[Point],
    scratch: &mut CenterlineScratch,
    out: &mut Vec<Point>,
) -> bool {
    out.clear();
    if polygon.len() < 3
        || polygon
            .iter()
            .any(|p| !(p[0].is_finite() && p[1].is_finite()))
    {
        return false;
    }
    let Some((centre, axis)) = principal_axis(polygon) else {
        return false;
    };
    let across = [-axis[1], axis[0]];
    let frame = &mut scratch.frame;
    frame.clear();
    frame.extend(polygon.iter().map(|p| {
        let d = [f64::from(p[0]) - centre[0], f64::from(p[1]) - centre[1]];
        [
            d[0] * axis[0] + d[1] * axis[1],
            d[0] * across[0] + d[1] * across[1],
        ]
    }));
    let (t_min, t_max) = frame
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v[0]), hi.max(v[0]))
        });
    let length = t_max - t_min;
    if !length.is_finite() || length <= 0.0 {
        return false;
    }
    let stations = (length / f64::from(CENTERLINE_STATION_SPACING_PX))
        .ceil()
        .max(1.0) as usize;
    let step = length / stations as f64;
    let line = &mut scratch.line;
    line.clear();
    for k in 0..stations {
        let t = t_min + (k as f64 + 0.5) * step;
        let (mut s_min, mut s_max) = (f64::INFINITY, f64::NEG_INFINITY);
        for (i, a) in frame.iter().enumerate() {
            let b = frame[(i + 1) % frame.len()];
            let (da, db) = (a[0] - t, b[0] - t);
            // Half-open test: a vertex exactly on the perpendicular counts for one edge only.
            if (da < 0.0) != (db < 0.0) {
                let s = a[1] + (b[1] - a[1]) * da / (da - db);
                s_min = s_min.min(s);
                s_max = s_max.max(s);
            }
        }
        if s_min <= s_max {
            line.push([t, 0.5 * (s_min + s_max)]);
        }
    }
    let (Some(&first), Some(&last)) = (line.first(), line.last()) else {
        return false;
    };
    line.insert(0, [t_min, first[1]]);
    line.push([t_max, last[1]]);

    simplify(
        line,
        f64::from(CENTERLINE_SIMPLIFY_TOLERANCE_PX),
        &mut scratch.keep,
        &mut scratch.stack,
    );
    out.extend(
        line.iter()
            .zip(&scratch.keep)
            .filter(|(_, keep)| **keep)
            .map(|(v, _)| {
                [
                    (centre[0] + v[0] * axis[0] + v[1] * across[0]) as f32,
                    (centre[1] + v[0] * axis[1] + v[1] * across[1]) as f32,
                ]
            }),
    );
    out.len() >= 2
}

/// Ramer-Douglas-Peucker: marks in `keep` the points of `line` to keep so that no dropped point
/// is further than `tolerance` from the kept polyline. The end points are always kept.
fn simplify(
    line: &[[f64; 2]],
    tolerance: f64,
    keep: &mut Vec<bool>,
    stack: &mut Vec<(usize, usize)>,
) {
    keep.clear();
    keep.resize(line.len(), false);
    if line.is_empty() {
        return;
    }
    keep[0] = true;
    keep[line.len() - 1] = true;
    stack.clear();
    stack.push((0, line.len() - 1));
    while let Some((first, last)) = stack.pop() {
        if last <= first + 1 {
            continue;
        }
        let (a, b) = (line[first], line[last]);
        let d = [b[0] - a[0], b[1] - a[1]];
        let norm = d[0].hypot(d[1]);
        let distance = |p: &[f64; 2]| {
            let v = [p[0] - a[0], p[1] - a[1]];
            if norm > 0.0 {
                (v[0] * d[1] - v[1] * d[0]).abs() / norm
            } else {
                v[0].hypot(v[1])
            }
        };
        let (far, far_distance) = line[first + 1..last]
            .iter()
            .enumerate()
            .map(|(k, p)| (first + 1 + k, distance(p)))
            .fold(
                (first, -1.0),
                |best, cand| if cand.1 > best.1 { cand } else { best },
            );
        if far_distance > tolerance {
            keep[far] = true;
            stack.push((first, far));
            stack.push((far, last));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        let schema = LabelSchema::default();
        assert!(RasterOptions::default().validate(&schema).is_ok());
        let e = RasterOptions::sparse(0.0)
            .validate(&schema)
            .unwrap_err()
            .to_string();
        assert!(e.contains("stroke_width 0"), "{e}");
        let e = RasterOptions::sparse(f32::NAN)
            .validate(&schema)
            .unwrap_err()
            .to_string();
        assert!(e.contains("stroke_width NaN"), "{e}");
        let with_ignore = |id| RasterOptions {
            ignore_id: Some(id),
            ..RasterOptions::default()
        };
        let e = with_ignore(5).validate(&schema).unwrap_err().to_string();
        assert!(
            e.contains("ignore_id 5 is the id of class \"b-line\""),
            "{e}"
        );
        assert!(with_ignore(9).validate(&schema).is_ok());
        assert!(with_ignore(255).validate(&schema).is_ok());
        let parsed: RasterOptions =
            toml::from_str("ignore_id = 255\n[recipe]\nname = \"s\"\nlines = \"stroke\"\n")
                .unwrap();
        assert_eq!(parsed.recipe.lines, Some(ClassRender::Stroke));
        assert_eq!(
            parsed.recipe.stroke_width,
            crate::recipe::StrokeWidth::PxAt128(crate::recipe::DEFAULT_STROKE_PX_AT_128)
        );
        assert!(toml::from_str::<RasterOptions>("sparse_widht = 2.0\n").is_err());
        let ignore_off = RasterOptions::recipe(LabelRecipe {
            off: OffAs::Ignore,
            ..LabelRecipe::builtin("sparse").unwrap()
        });
        let e = ignore_off.validate(&schema).unwrap_err().to_string();
        assert!(e.contains("no ignore id is set"), "{e}");
    }

    #[test]
    fn principal_axis_of_a_tilted_rectangle() {
        // A 20 x 2 rectangle rotated by 30 degrees about (10, 10).
        let (c, s) = (30f32.to_radians().cos(), 30f32.to_radians().sin());
        let corners: Vec<Point> = [[-10.0, -1.0], [10.0, -1.0], [10.0, 1.0], [-10.0, 1.0]]
            .iter()
            .map(|[x, y]: &[f32; 2]| [10.0 + x * c - y * s, 10.0 + x * s + y * c])
            .collect();
        let (centre, axis) = principal_axis(&corners).unwrap();
        assert!((centre[0] - 10.0).abs() < 1e-5 && (centre[1] - 10.0).abs() < 1e-5);
        let angle = axis[1].atan2(axis[0]).to_degrees();
        assert!(
            (angle - 30.0).abs() < 1e-3 || (angle + 150.0).abs() < 1e-3,
            "{angle}"
        );
        let line = derived_centerline(&corners).unwrap();
        assert_eq!(line.len(), 2, "{line:?}");
        let length = (line[1][0] - line[0][0]).hypot(line[1][1] - line[0][1]);
        // The line runs the full long axis: from one short side's midpoint to the other's.
        assert!((length - 20.0).abs() < 1e-3, "{length}");
        let mid = [
            (line[0][0] + line[1][0]) / 2.0,
            (line[0][1] + line[1][1]) / 2.0,
        ];
        assert!(
            (mid[0] - 10.0).abs() < 1e-3 && (mid[1] - 10.0).abs() < 1e-3,
            "{mid:?}"
        );
    }

    #[test]
    fn simplify_keeps_corners_and_drops_collinear_points() {
        let line = [[0.0, 0.0], [1.0, 0.0], [2.0, 0.1], [3.0, 0.0], [3.0, 3.0]];
        let (mut keep, mut stack) = (Vec::new(), Vec::new());
        simplify(&line, 0.25, &mut keep, &mut stack);
        assert_eq!(keep, [true, false, false, true, true]);
    }
}
